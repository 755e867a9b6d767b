//! Which devices a durable entry is pushed to, with what: for a chat
//! message, the addressee's devices (write diffusion: the entry's inbox;
//! read diffusion: each member of the group whose read cursor is behind
//! the entry, blockers of the sender left out); for a friend request, the
//! requested user's. A muted conversation, a read one, a user without
//! push tokens and a device with a live session send nothing. The badge is
//! the user's exact unread total, muted conversations excluded; the text is
//! previewed as the user's settings say. Each reason a notification is not
//! made is counted ([`not_sent`]).
//!
//! Every delivered chat message comes here, and most go to users who are
//! online: the cheap questions come first (any token? any device without
//! a live session?), so such a message costs one token read and no
//! conversation, settings or unread reads (BENCHMARKS, "Offline push
//! decided after the live devices").

use qim_proto::v1::{self, inbox_event};
use qim_storage::StoredMessage;
use qim_storage::conversations::peer_key;
use qim_storage::notify::preview_of;

use super::provider::Notification;
use crate::ctx::Ctx;

/// Conversation list entries read per page for the badge.
const BADGE_PAGE: usize = 200;
/// Pages read for the badge at most (conversations beyond are not counted).
const BADGE_PAGES: usize = 100;
/// Members of a read-diffusion group looked at per entry at most.
const GROUP_MEMBERS: usize = 10_000;
/// Characters of a previewed text at most.
const PREVIEW_CHARS: usize = 180;

/// Counts and logs a notification that was not sent, with its reason.
pub(crate) fn not_sent(ctx: &Ctx, reason: &'static str, user: &str, device: &str) {
    ctx.metrics
        .pushes_not_sent
        .get_or_create(&vec![("reason", reason)])
        .inc();
    tracing::debug!(user, device, reason, "push not sent");
}

/// What the entry says, for the notification's text.
struct About {
    conversation: Option<v1::Peer>,
    key: String,
    title: String,
    body: String,
    neutral: &'static str,
}

fn about_message(owner: &str, m: &v1::Message) -> About {
    let conversation = qim_storage::conversations::conversation_of(owner, m);
    let title = match m.to.as_ref().and_then(|p| p.target.as_ref()) {
        Some(v1::peer::Target::Group(g)) => format!("{} in {g}", m.from_user),
        _ => m.from_user.clone(),
    };
    let body = if m.kind == "text" {
        String::from_utf8_lossy(&m.body)
            .chars()
            .take(PREVIEW_CHARS)
            .collect()
    } else {
        format!("[{}]", m.kind)
    };
    About {
        key: peer_key(&conversation).unwrap_or_default(),
        conversation: Some(conversation),
        title,
        body,
        neutral: "New message",
    }
}

/// The notifications `entry` makes.
pub(crate) async fn notifications(ctx: &Ctx, entry: &StoredMessage) -> Vec<Notification> {
    let m = &entry.message;
    if let Some(g) = entry.inbox.strip_prefix('#') {
        return group_entry(ctx, g, entry).await;
    }
    let owner = &entry.inbox;
    match m.event.as_ref().and_then(|e| e.kind.as_ref()) {
        None if m.from_user != *owner && !m.from_user.is_empty() => {
            for_user(ctx, owner, || about_message(owner, m), entry.seq, None).await
        }
        Some(inbox_event::Kind::FriendRequest(r)) => {
            let about = || About {
                conversation: None,
                key: "contacts".to_owned(),
                title: "Friend request".to_owned(),
                body: format!("{} wants to be friends", r.from),
                neutral: "New friend request",
            };
            for_user(ctx, owner, about, entry.seq, None).await
        }
        _ => Vec::new(),
    }
}

/// A read-diffusion group's entry: every member behind it.
async fn group_entry(ctx: &Ctx, g: &str, entry: &StoredMessage) -> Vec<Notification> {
    let m = &entry.message;
    if m.event.is_some() || m.from_user.is_empty() {
        return Vec::new();
    }
    let hidden = match ctx.stores.contacts.blockers(&m.from_user).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(group = g, error = %e, "reading who blocked a group sender failed; no pushes for the entry");
            not_sent(ctx, "store_error", "", "");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut after = String::new();
    let mut seen = 0;
    while seen < GROUP_MEMBERS {
        let members = match ctx.stores.groups.members(g, &after, 500).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(group = g, error = %e, "listing group members for pushes failed");
                not_sent(ctx, "store_error", "", "");
                break;
            }
        };
        let Some(last) = members.last() else { break };
        after = last.user.clone();
        seen += members.len();
        for member in members {
            if member.user == m.from_user || hidden.contains(&member.user) {
                continue;
            }
            let about = || about_message(&member.user, m);
            out.extend(for_user(ctx, &member.user, about, entry.seq, Some(entry.seq)).await);
        }
    }
    out
}

/// The notifications for `user`'s devices, `about` the entry;
/// `group_seq`: the entry is a group log's, behind which the member's
/// group cursor must be.
async fn for_user(
    ctx: &Ctx,
    user: &str,
    about: impl FnOnce() -> About,
    seq: u64,
    group_seq: Option<u64>,
) -> Vec<Notification> {
    let stores = &ctx.stores;
    let tokens = offline_tokens(ctx, user).await;
    if tokens.is_empty() {
        return Vec::new();
    }
    let about = about();
    if let Some(peer) = &about.conversation {
        match stores.conversations.conversation(user, peer).await {
            Ok(Some(c)) if c.muted => {
                not_sent(ctx, "muted", user, "");
                return Vec::new();
            }
            Ok(Some(c)) if group_seq.map_or(c.read_seq >= seq, |g| c.group_read_seq >= g) => {
                not_sent(ctx, "already_read", user, "");
                return Vec::new();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(user, error = %e, "reading the conversation failed");
                not_sent(ctx, "store_error", user, "");
                return Vec::new();
            }
        }
    }
    let (settings, badge) = match (
        stores.notify.push_settings(user).await,
        unread_total(ctx, user).await,
    ) {
        (Ok(s), Ok(b)) => (s, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(user, error = %e, "reading push settings or unread counts failed");
            not_sent(ctx, "store_error", user, "");
            return Vec::new();
        }
    };
    let preview = match &about.conversation {
        Some(peer) => preview_of(&settings, peer),
        None => settings.preview,
    };
    tokens
        .into_iter()
        .map(|token| Notification {
            user: user.to_owned(),
            token,
            conversation: about.key.clone(),
            title: preview.then(|| about.title.clone()),
            body: if preview {
                about.body.clone()
            } else {
                about.neutral.to_owned()
            },
            badge,
            seq,
            group_log: group_seq.is_some(),
        })
        .collect()
}

/// `user`'s push tokens of devices without a live session here or on
/// another node; each one left out is counted (`no_token`, `online`,
/// `store_error`). The entry reaches a live device through its session
/// (and `send.rs` asks again when the notification goes out).
async fn offline_tokens(ctx: &Ctx, user: &str) -> Vec<v1::PushToken> {
    let mut tokens = match ctx.stores.notify.push_tokens(user).await {
        Ok(t) if t.is_empty() => {
            not_sent(ctx, "no_token", user, "");
            return t;
        }
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(user, error = %e, "reading push tokens failed");
            not_sent(ctx, "store_error", user, "");
            return Vec::new();
        }
    };
    let devices: Vec<&str> = tokens.iter().map(|t| t.device.as_str()).collect();
    let live = live_among(ctx, user, &devices).await;
    tokens.retain(|t| {
        let is_live = live.contains(&t.device);
        if is_live {
            not_sent(ctx, "online", user, &t.device);
        }
        !is_live
    });
    tokens
}

/// `user`'s exact unread total over their conversations, muted ones
/// excluded.
pub(crate) async fn unread_total(ctx: &Ctx, user: &str) -> Result<u32, qim_storage::StoreError> {
    let mut total = 0u32;
    let mut after = Vec::new();
    for _ in 0..BADGE_PAGES {
        let page = ctx
            .stores
            .conversations
            .conversations(user, &after, BADGE_PAGE)
            .await?;
        total = page
            .conversations
            .iter()
            .filter(|c| !c.muted)
            .fold(total, |sum, c| sum.saturating_add(c.unread));
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    Ok(total)
}

/// Whether `user`'s `device` has a live session (on any node).
pub(crate) async fn is_live(ctx: &Ctx, user: &str, device: &str) -> bool {
    !live_among(ctx, user, &[device]).await.is_empty()
}

/// Those of `asked` (devices of `user`) with a live session: on this
/// node, then, for the rest, in a cluster's presence records. Presence
/// unknown counts as not live: rather a push than silence.
async fn live_among(ctx: &Ctx, user: &str, asked: &[&str]) -> Vec<String> {
    let here = ctx.routes.devices(user);
    let mut live: Vec<String> = here
        .into_iter()
        .filter(|d| asked.contains(&d.as_str()))
        .collect();
    if let (true, Some(cluster)) = (live.len() < asked.len(), &ctx.cluster) {
        if let Ok(presence) = cluster.presence(user).await {
            for d in presence.devices {
                if asked.contains(&d.as_str()) && !live.contains(&d) {
                    live.push(d);
                }
            }
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use qim_storage::conversations::{group, user as user_peer};

    #[test]
    fn group_titles_name_the_group_and_texts_are_cut() {
        let m = v1::Message {
            from_user: "ann".into(),
            to: Some(group("team")),
            kind: "text".into(),
            body: "x".repeat(500).into(),
            ..v1::Message::default()
        };
        let about = about_message("ben", &m);
        assert_eq!(about.title, "ann in team");
        assert_eq!(about.key, "g:team");
        assert_eq!(about.body.chars().count(), PREVIEW_CHARS);
        let direct = v1::Message {
            to: Some(user_peer("ben")),
            kind: "image".into(),
            ..m
        };
        let about = about_message("ben", &direct);
        assert_eq!((about.title.as_str(), about.key.as_str()), ("ann", "u:ann"));
        assert_eq!(about.body, "[image]");
    }
}
