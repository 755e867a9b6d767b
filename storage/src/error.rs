//! The errors of the storage traits: [`StoreError`], a backend failing,
//! and [`OpError`], an IM operation refused (or failing with the store).

use thiserror::Error;

/// Why a storage operation failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot serve now (IO error, server unreachable); the
    /// operation may succeed if retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The input breaks a store rule (e.g. an id the key scheme refuses).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The store was shut down.
    #[error("store closed")]
    Closed,
    /// The backend failed in a way only a restart repairs (a durable commit
    /// failed and the embedded database refuses further writes). The
    /// operation may succeed on a restarted or another node.
    #[error("store failed, restart required: {0}")]
    Failed(String),
    /// The disk under the store is nearly full: the write was refused
    /// before it reached the database, which stays healthy. Reads go on;
    /// writes succeed again once space is freed.
    #[error("store full: {0}")]
    Full(String),
    /// The backend refused the server's credentials or permissions (an
    /// object store answering 401/403): a configuration error that
    /// retrying does not cure.
    #[error("store denied access: {0}")]
    Denied(String),
}

impl StoreError {
    /// Whether the same operation may succeed later (here or elsewhere).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Closed
                | StoreError::Failed(_)
                | StoreError::Full(_)
        )
    }

    /// Whether this store instance can no longer write; the process should
    /// drain and restart.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Failed(_))
    }
}

/// Why an operation of the IM stores (conversations, groups, contacts,
/// schedules) was refused, or that the store failed under it.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum OpError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such conversation or message for this user.
    #[error("not found")]
    NotFound,
    /// A resend whose first attempt was claimed and never stored, after the
    /// fill window, when the sender's later messages to the conversation
    /// are stored since: storing it now would break the sender's order.
    #[error("superseded by the sender's later messages")]
    Superseded,
    /// The user did not send the message.
    #[error("only the sender may do this")]
    NotSender,
    /// The recall window has passed.
    #[error("the recall window has passed")]
    WindowPassed,
    /// The message was recalled already.
    #[error("the message was recalled")]
    Recalled,
    /// The user is not a member of the group.
    #[error("not a member of the group")]
    NotAMember,
    /// The sender is muted in the group (or the whole group is).
    #[error("muted in this group")]
    Muted,
    /// The user's role does not allow this.
    #[error("not allowed for this role")]
    NotAllowed,
    /// The group id is taken.
    #[error("the group exists already")]
    Exists,
    /// The group was dissolved.
    #[error("the group was dissolved")]
    Dissolved,
    /// The other user has blocked this one.
    #[error("blocked by the recipient")]
    Blocked,
    /// The user is banned from the group.
    #[error("banned from the group")]
    Banned,
    /// The group has no room for more members and invitations.
    #[error("the group is full")]
    GroupFull,
    /// The group admits new members only by invitation.
    #[error("the group is invite-only")]
    InviteOnly,
    /// The `(sender, client_msg_id)` of a post names a stored message with
    /// another recipient or body; the stored message stands.
    #[error("the client_msg_id was used for another message")]
    Conflict,
    /// The same request is already waiting for an answer.
    #[error("a request is already pending")]
    Pending,
    /// The same request was refused recently; it may be made again after
    /// `retry_after_ms`.
    #[error("refused recently; wait before asking again")]
    Cooldown {
        /// Milliseconds until the request may be made again.
        retry_after_ms: u64,
    },
    /// A per-user or per-group amount is used up; names which.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(Quota),
}

/// The amounts a store bounds per user or per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Groups a user owns.
    GroupsOwned,
    /// Scheduled sends a user has waiting.
    PendingSchedules,
    /// Friend requests a user has waiting for an answer.
    PendingFriendRequests,
    /// Group invitations a user has waiting for an answer.
    PendingInvitations,
    /// Join requests a group has waiting for its admins.
    JoinRequests,
    /// Devices of a user with a push token.
    PushDevices,
    /// Conversations with a preview setting of their own.
    PreviewOverrides,
}

impl Quota {
    /// The setting that bounds it, as named in the gateway's config (and
    /// in the label of its refusal metric).
    pub fn config_name(self) -> &'static str {
        match self {
            Quota::GroupsOwned => "groups_owned",
            Quota::PendingSchedules => "pending_schedules",
            Quota::PendingFriendRequests | Quota::PendingInvitations => "pending_requests",
            Quota::JoinRequests => "max_join_requests",
            Quota::PushDevices => "max_devices",
            Quota::PreviewOverrides => "max_preview_overrides",
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quota::GroupsOwned => "groups owned",
            Quota::PendingSchedules => "pending scheduled sends",
            Quota::PendingFriendRequests => "pending friend requests",
            Quota::PendingInvitations => "pending invitations",
            Quota::JoinRequests => "join requests",
            Quota::PushDevices => "devices with a push token",
            Quota::PreviewOverrides => "conversations with a preview setting",
        })
    }
}
