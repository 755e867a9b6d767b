//! Slash commands, in the tradition of IRC-style chat clients: each is
//! parsed here and becomes [`Request`]s or a change of the model. A
//! command with missing or bad arguments says how it is used.

use qim_sdk::{GroupChange, GroupRole, Peer};

use super::events::peer_label;
use super::{ContactOp, Model, Request};
use crate::devtoken::valid_id;

/// The `/help` text, one command a line.
pub const HELP: &[&str] = &[
    "/msg <user> [text]       open a chat with a user (and send)",
    "/join <group>            join a group (or accept its invitation) and open it",
    "/create <group> [name]   create a group and open it",
    "/invite <user>...        add or invite users to the open group",
    "/kick <user>...          remove users from the open group (admins)",
    "/members                 list the open group's members and roles",
    "/role <user> <member|admin|owner>   set a member's role (owner)",
    "/leave                   leave the open group",
    "/recall                  recall the selected message, or your last one",
    "/edit <text>             edit the selected message, or your last one",
    "/reply <text>            reply to the selected message, or the last one",
    "/send-file <path>        send a file to the open chat (also /file), with a progress bar",
    "/retry                   send the selected failed file again, or the last one",
    "/save [n|last] [dir]     save file n of the chat (as numbered [fN]) into downloads/",
    "/search <words>          search messages on this device",
    "/schedule <+10m|HH:MM> <text>   send later (times in UTC)",
    "/unschedule <id>         cancel a scheduled message",
    "/pin /unpin /mute /unmute       flag the open conversation",
    "/contacts                friends, requests, blocks and presence",
    "/friend <user> [text]    ask a user to be friends",
    "/accept <user> /reject <user>   answer a friend request",
    "/unfriend <user> /block <user> /unblock <user>",
    "/older                   load older messages (also PgUp)",
    "/help                    this list (Esc closes)",
    "/quit                    leave (also Ctrl-C)",
    "",
    "Keys: Tab/Shift-Tab switch pane · Ctrl-N/Ctrl-P next/previous chat",
    "list: ↑↓ Enter · chat: ↑↓ select, r reply, e edit, x recall · PgUp/PgDn scroll",
    "Esc closes a window or drops the reply · //text sends a line starting with /",
];

impl Model {
    /// Runs one slash command line.
    pub(super) fn command(&mut self, line: &str) {
        let (name, rest) = match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (line, ""),
        };
        let args: Vec<&str> = rest.split_whitespace().collect();
        if let Err(usage) = self.run(name, rest, &args) {
            self.error(usage);
        }
    }

    fn run(&mut self, name: &str, rest: &str, args: &[&str]) -> Result<(), String> {
        match name {
            "/help" | "/h" | "/?" => {
                self.overlay = Some(super::Overlay {
                    title: "help".into(),
                    lines: HELP.iter().map(|s| (*s).to_owned()).collect(),
                    scroll: 0,
                });
            }
            "/quit" | "/q" | "/exit" => self.quit = true,
            "/msg" | "/query" | "/open" => {
                let target = args.first().ok_or("usage: /msg <user> [text]")?;
                let peer = match target.strip_prefix('#') {
                    Some(g) => Peer::Group(id(g)?),
                    None => Peer::User(id(target)?),
                };
                self.open_peer(peer);
                let text = rest[target.len()..].trim();
                if !text.is_empty() {
                    self.send_text(text.to_owned());
                }
            }
            "/join" => {
                let group = id(args
                    .first()
                    .ok_or("usage: /join <group>")?
                    .trim_start_matches('#'))?;
                self.request(Request::Group {
                    group: group.clone(),
                    change: GroupChange::Join,
                });
                self.open_peer(Peer::Group(group));
            }
            "/create" => {
                let group = id(args
                    .first()
                    .ok_or("usage: /create <group> [name]")?
                    .trim_start_matches('#'))?;
                let name = match args.get(1..) {
                    Some(words) if !words.is_empty() => words.join(" "),
                    _ => group.clone(),
                };
                self.request(Request::CreateGroup {
                    group: group.clone(),
                    name,
                });
                self.open_peer(Peer::Group(group));
            }
            "/invite" | "/kick" | "/members" | "/leave" | "/role" | "/rename" => {
                let group = self.open_group()?;
                let users = || -> Result<Vec<String>, String> {
                    if args.is_empty() {
                        return Err(format!("usage: {name} <user>..."));
                    }
                    args.iter().map(|u| id(u)).collect()
                };
                let change = match name {
                    "/invite" => GroupChange::Invite(users()?),
                    "/kick" => GroupChange::Remove(users()?),
                    "/leave" => GroupChange::Leave,
                    "/rename" if !rest.is_empty() => GroupChange::Rename(rest.to_owned()),
                    "/rename" => return Err("usage: /rename <name>".into()),
                    "/role" => {
                        let [user, role] = args else {
                            return Err("usage: /role <user> <member|admin|owner>".into());
                        };
                        let role = match *role {
                            "member" => GroupRole::Member,
                            "admin" => GroupRole::Admin,
                            "owner" => GroupRole::Owner,
                            _ => return Err("roles: member, admin, owner".into()),
                        };
                        GroupChange::SetRole(id(user)?, role)
                    }
                    _ => {
                        self.request(Request::Members { group });
                        return Ok(());
                    }
                };
                self.request(Request::Group { group, change });
            }
            "/recall" => {
                let msg_id = self
                    .own_target()
                    .ok_or("nothing to recall: select one of your sent messages")?;
                self.request(Request::Recall { msg_id });
            }
            "/edit" => {
                if rest.is_empty() {
                    return Err("usage: /edit <new text>".into());
                }
                let msg_id = self
                    .own_target()
                    .ok_or("nothing to edit: select one of your sent messages")?;
                self.request(Request::Edit {
                    msg_id,
                    text: rest.to_owned(),
                });
            }
            "/reply" => {
                if rest.is_empty() {
                    return Err("usage: /reply <text>".into());
                }
                let quote = self
                    .open_chat()
                    .and_then(|c| c.target(|l| !l.msg_id.is_empty() && !l.recalled))
                    .map(|l| qim_sdk::Quote {
                        msg_id: l.msg_id.clone(),
                        from_user: l.from.clone(),
                        kind: "text".into(),
                        excerpt: l.body.chars().take(80).collect::<String>().into_bytes(),
                    })
                    .ok_or("nothing to reply to")?;
                self.reply_to = Some(quote);
                self.send_text(rest.to_owned());
            }
            "/search" | "/find" => {
                if rest.is_empty() {
                    return Err("usage: /search <words>".into());
                }
                self.request(Request::Search {
                    query: rest.to_owned(),
                });
            }
            "/schedule" | "/later" => {
                let peer = self.open.clone().ok_or("no conversation open")?;
                let (when, text) = rest
                    .split_once(char::is_whitespace)
                    .ok_or("usage: /schedule <+10s|+5m|+2h|HH:MM> <text>")?;
                let at_ms = when_ms(when, self.now_ms)
                    .ok_or("when: +30s, +10m, +2h, +1d or HH:MM (UTC)")?;
                self.request(Request::Schedule {
                    peer,
                    text: text.trim().to_owned(),
                    at_ms,
                });
            }
            "/unschedule" => {
                let schedule_id = args.first().ok_or("usage: /unschedule <id>")?.to_string();
                self.request(Request::CancelSchedule { schedule_id });
            }
            "/pin" | "/unpin" | "/mute" | "/unmute" => {
                let peer = self.open.clone().ok_or("no conversation open")?;
                let on = !name.starts_with("/un");
                let (pinned, muted) = if name.ends_with("pin") {
                    (Some(on), None)
                } else {
                    (None, Some(on))
                };
                let e = self.convs.entry(&peer);
                if let Some(p) = pinned {
                    e.pinned = p;
                }
                if let Some(m) = muted {
                    e.muted = m;
                }
                self.request(Request::SetFlags {
                    peer,
                    pinned,
                    muted,
                });
            }
            "/contacts" | "/friends" => self.request(Request::Contacts),
            "/friend" | "/accept" | "/reject" | "/unfriend" | "/block" | "/unblock" => {
                let user = id(args.first().ok_or(format!("usage: {name} <user>"))?)?;
                let op = match name {
                    "/friend" => {
                        ContactOp::Request(user.clone(), rest[args[0].len()..].trim().to_owned())
                    }
                    "/accept" => ContactOp::Accept(user),
                    "/reject" => ContactOp::Reject(user),
                    "/unfriend" => ContactOp::Remove(user),
                    "/block" => ContactOp::Block(user),
                    _ => ContactOp::Unblock(user),
                };
                self.request(Request::Contact(op));
            }
            "/send-file" | "/file" | "/upload" => self.send_file(rest)?,
            "/retry" => self.retry()?,
            "/save" | "/download" => self.save(args)?,
            "/older" | "/history" => self.load_older(),
            _ => return Err(format!("unknown command {name}; /help lists them")),
        }
        Ok(())
    }

    /// The server id of the selected message if it is one of this user's
    /// (stored, not recalled), or else of this user's newest such message.
    fn own_target(&self) -> Option<String> {
        self.open_chat()
            .and_then(|c| {
                c.target(|l| l.outgoing && l.from == self.me && !l.recalled && !l.msg_id.is_empty())
            })
            .map(|l| l.msg_id.clone())
    }

    fn open_group(&self) -> Result<String, String> {
        match &self.open {
            Some(Peer::Group(g)) => Ok(g.clone()),
            Some(p) => Err(format!("{} is not a group", peer_label(p))),
            None => Err("no group open: /join <group> first".into()),
        }
    }
}

/// A user or group id as typed, checked.
fn id(text: &str) -> Result<String, String> {
    if valid_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "not a valid id: {text:?} (1-64 of A-Z a-z 0-9 . _ @ -)"
        ))
    }
}

/// `+30s`, `+10m`, `+2h`, `+1d` from now, or `HH:MM` (UTC, today or
/// tomorrow), as ms since the epoch.
pub(super) fn when_ms(when: &str, now_ms: i64) -> Option<i64> {
    if let Some(rel) = when.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.len().checked_sub(1)?);
        let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        return now_ms.checked_add(n.checked_mul(unit_ms)?);
    }
    let (h, m) = when.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    let day = now_ms.div_euclid(86_400_000) * 86_400_000;
    let at = day + (h * 60 + m) * 60_000;
    Some(if at <= now_ms { at + 86_400_000 } else { at })
}
