//! The `[backend]` section: what the business backend's admin API may do
//! and how much at once (the system account, batch and query sizes).

use serde::{Deserialize, Serialize};

use super::sections::{example_line, section};

section! {
    /// The business backend's side of the admin API (/v1/messages, /v1/notifications, groups,
    /// presence queries). See docs/backend.md.
    "backend" => Backend {
        /// The user id business notifications and system messages come from (from_user of the
        /// message). Give no user a token for it.
        system_user: String = "system".to_owned(),
        /// Most recipients of one POST /v1/messages/batch (each gets its own result).
        max_batch_recipients: u32 = 1_000,
        /// Most users of one POST /v1/presence/query.
        max_presence_users: u32 = 500,
        /// Recipients a broadcast reaches per second at most (it is paced, so a broadcast to every
        /// user never crowds out chat).
        broadcast_per_second: u32 = 2_000,
        /// Registered users a broadcast reads and stores per step (one store call each).
        broadcast_page: u32 = 500,
        /// Broadcasts under way at once; more are refused with 429.
        max_broadcasts: u32 = 4,
    }
}

impl Backend {
    /// Checks the section's values.
    pub(super) fn validate(&self) -> Result<(), &'static str> {
        if !qim_proto::ids::is_valid_id(&self.system_user) {
            return Err("backend.system_user must be 1-64 of [A-Za-z0-9._@-]");
        }
        if self.max_batch_recipients == 0 || self.max_batch_recipients > 100_000 {
            return Err("backend.max_batch_recipients must be 1-100000");
        }
        if self.max_presence_users == 0 || self.max_presence_users > 10_000 {
            return Err("backend.max_presence_users must be 1-10000");
        }
        if self.broadcast_per_second == 0 || self.broadcast_page == 0 || self.broadcast_page > 5_000
        {
            return Err("backend.broadcast_per_second must be above 0, broadcast_page 1-5000");
        }
        if self.max_broadcasts == 0 {
            return Err("backend.max_broadcasts must be above 0");
        }
        Ok(())
    }
}
