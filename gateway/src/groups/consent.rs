//! Consent: who may add a user to a group directly, and the setting that
//! says so (`SettingsRequest`).
//!
//! # Rules
//! - A user who blocked the adder is neither added nor invited: the whole
//!   create or invite is refused with `BLOCKED`; one whose account is
//!   deleted, with `USER_DELETED` (read with the same relation).
//! - Otherwise each user's `GroupAdds` decides: `ANYONE` is added at once,
//!   `CONTACTS` (the default, `groups.default_adds`) is added by friends and
//!   invited by everyone else, `NOBODY` is always invited. An invitation
//!   waits for the invitee's accept or decline.

use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;
use qim_proto::v1::{self, ErrorCode, rpc_response};
use tracing::debug;

use crate::ctx::Ctx;
use crate::reply::{Refusal, Reply};

/// Users whose relation and setting are read at once.
const CONCURRENCY: usize = 32;

/// The server's default for users who never chose.
fn default_adds(ctx: &Ctx) -> v1::GroupAdds {
    match ctx.config.groups.default_adds.as_str() {
        "anyone" => v1::GroupAdds::Anyone,
        "nobody" => v1::GroupAdds::Nobody,
        _ => v1::GroupAdds::Contacts,
    }
}

/// `user`'s setting, or the server's default.
async fn adds_of(ctx: &Ctx, user: &str) -> Result<v1::GroupAdds, Refusal> {
    Ok(ctx
        .stores
        .groups
        .group_adds(user)
        .await?
        .unwrap_or_else(|| default_adds(ctx)))
}

type Decision<'a> = Pin<Box<dyn Future<Output = Result<(String, bool), Refusal>> + Send + 'a>>;

/// Whether `adder` adds `user` directly (true) or invites them; refused
/// with `BLOCKED` when `user` blocked `adder`.
async fn decide(ctx: &Ctx, adder: &str, user: &str) -> Result<(String, bool), Refusal> {
    let relation = ctx.stores.contacts.relation(adder, user).await?;
    if relation.deleted {
        debug!(adder, user, "group add refused: deleted account");
        return Err(Refusal::new(
            ErrorCode::UserDeleted,
            "a user you named has a deleted account",
        ));
    }
    if relation.blocked {
        debug!(adder, user, "group add refused: blocked");
        return Err(Refusal::new(
            ErrorCode::Blocked,
            "a user you named has blocked you",
        ));
    }
    let direct = match adds_of(ctx, user).await? {
        v1::GroupAdds::Anyone => true,
        v1::GroupAdds::Contacts => relation.friends,
        v1::GroupAdds::Nobody => false,
    };
    Ok((user.to_owned(), direct))
}

/// Splits the users `adder` names into those added at once and those
/// invited; refused with `BLOCKED` when one of them blocked the adder.
pub(super) async fn split(
    ctx: &Ctx,
    adder: &str,
    users: &[String],
) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let mut users: Vec<&String> = users.iter().filter(|u| *u != adder).collect();
    users.sort();
    users.dedup();
    let mut decisions = Vec::with_capacity(users.len());
    for chunk in users.chunks(CONCURRENCY) {
        let reads: Vec<Decision<'_>> = chunk
            .iter()
            .map(|user| Box::pin(decide(ctx, adder, user)) as Decision<'_>)
            .collect();
        decisions.extend(join_all(reads).await);
    }
    let mut add = Vec::new();
    let mut invite = Vec::new();
    for decision in decisions {
        let (user, direct) = decision?;
        if direct {
            add.push(user);
        } else {
            invite.push(user);
        }
    }
    Ok((add, invite))
}

/// Answers a settings request of `user`: sets what it names, returns all.
pub(crate) async fn settings(ctx: &Ctx, user: &str, r: v1::SettingsRequest) -> Reply {
    if let Some(adds) = r.group_adds {
        let Ok(adds) = v1::GroupAdds::try_from(adds) else {
            return Err(Refusal::invalid("unknown group_adds value"));
        };
        ctx.stores.groups.set_group_adds(user, adds).await?;
    }
    Ok(rpc_response::Kind::Settings(v1::SettingsResponse {
        group_adds: adds_of(ctx, user).await? as i32,
    }))
}
