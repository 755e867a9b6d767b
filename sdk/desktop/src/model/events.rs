//! What the SDK reported, applied to the model: messages and inbox events,
//! history pages, send results, signals, and answers to requests. Nothing
//! here trusts the server's input to be sensible: unknown ids, empty
//! peers, stale or repeated events change nothing or little, never panic.

use qim_sdk::{Event, GroupRole, IncomingMessage, OutboxStatus, Peer, Signal};

use super::{Input, Line, Link, Model, Overlay, SendState, TYPING_HOLDS_MS};
use crate::text::body_text;

/// Entries shown in a list overlay at most.
const MAX_OVERLAY_LINES: usize = 500;

impl Model {
    pub(super) fn apply(&mut self, input: Input) {
        match input {
            Input::Key(_) | Input::Tick(_) => {}
            Input::Link(link) => {
                let was_connected = matches!(self.link, Link::Connected(_));
                self.link = link;
                if !was_connected && matches!(self.link, Link::Connected(_)) {
                    self.reload_open_chat();
                }
            }
            Input::LoggedIn(user) => {
                if !user.is_empty() {
                    self.me = user;
                }
            }
            Input::Conversations(list) => {
                self.convs.replace(&list);
                self.clamp_selection();
                self.mark_open_read();
            }
            Input::Conversation(c) => {
                self.convs.update(&c);
                if self.open.as_ref() == Some(&c.peer)
                    && let Some(e) = self.convs.get(&c.peer)
                    && e.unread > 0
                {
                    // The server counted messages this pane shows: read.
                    self.mark_open_read();
                }
            }
            Input::Message(m) => self.message(m),
            Input::History { peer, page, older } => {
                if matches!(&peer, Peer::User(id) | Peer::Group(id) if id.is_empty()) {
                    return;
                }
                let chat = self.chats.entry(peer.clone()).or_default();
                chat.loading = false;
                chat.loaded = true;
                if older || chat.lines.is_empty() || page.more {
                    chat.more_before = page.more;
                }
                for m in &page.messages {
                    if m.event.is_none() && m.conversation == peer {
                        chat.upsert(Line::from_message(m));
                    }
                }
                if self.open.as_ref() == Some(&peer) {
                    self.mark_open_read();
                }
            }
            Input::SendDone {
                client_msg_id,
                result,
            } => self.send_done(&client_msg_id, result),
            Input::Outbox {
                client_msg_id,
                status,
            } => match status {
                OutboxStatus::Sent(receipt) => self.send_done(&client_msg_id, Ok(receipt)),
                OutboxStatus::Failed(e) => self.send_done(&client_msg_id, Err(e.to_string())),
                _ => {}
            },
            input @ (Input::Progress { .. } | Input::Uploaded { .. } | Input::Saved { .. }) => {
                self.transfer_input(input);
            }
            Input::Signal(signal) => self.signal(signal),
            Input::Presence(list) => {
                for p in list {
                    if !p.user.is_empty() {
                        self.presence.insert(p.user.clone(), p);
                    }
                }
            }
            Input::SearchResults { query, results } => {
                let lines = results
                    .iter()
                    .take(MAX_OVERLAY_LINES)
                    .map(|m| {
                        format!(
                            "{} {} {}: {}",
                            crate::text::short_time(m.server_time_ms, self.now_ms),
                            peer_label(&m.conversation),
                            m.from_user,
                            body_text(&m.body)
                        )
                    })
                    .collect::<Vec<_>>();
                let title = format!("search \"{query}\": {} found", results.len());
                self.show(title, lines);
            }
            Input::Members { group, members } => {
                let lines = members
                    .iter()
                    .take(MAX_OVERLAY_LINES)
                    .map(|m| {
                        let role = match m.role {
                            GroupRole::Owner => "owner",
                            GroupRole::Admin => "admin",
                            _ => "member",
                        };
                        let muted = if m.muted { " (muted)" } else { "" };
                        format!("{} {role}{muted}", m.user)
                    })
                    .collect();
                self.show(format!("#{group} members"), lines);
            }
            Input::Contacts(c) => {
                let mut lines = Vec::new();
                for f in &c.friends {
                    let state = match self.presence.get(f) {
                        Some(p) if p.online => "online".to_owned(),
                        Some(p) if p.last_seen_ms > 0 => format!(
                            "last seen {}",
                            crate::text::short_time(p.last_seen_ms, self.now_ms)
                        ),
                        _ => "offline".to_owned(),
                    };
                    lines.push(format!("friend {f} · {state}"));
                }
                for r in &c.incoming {
                    lines.push(format!(
                        "asks you {}: \"{}\" · /accept {0} or /reject {0}",
                        r.user, r.message
                    ));
                }
                for u in &c.outgoing {
                    lines.push(format!("you asked {u}"));
                }
                for u in &c.blocked {
                    lines.push(format!("blocked {u} · /unblock {u}"));
                }
                lines.truncate(MAX_OVERLAY_LINES);
                if lines.is_empty() {
                    lines.push("no contacts yet: /friend <user> [message]".to_owned());
                }
                self.show("contacts".to_owned(), lines);
            }
            Input::Synced(seq) => self.synced = self.synced.max(seq),
            Input::Done(text) => self.say(text),
            Input::Failed { what, error } => self.error(format!("{what}: {error}")),
        }
    }

    fn show(&mut self, title: String, lines: Vec<String>) {
        self.overlay = Some(Overlay {
            title,
            lines,
            scroll: 0,
        });
    }

    fn clamp_selection(&mut self) {
        self.selected = self
            .selected
            .min(self.convs.entries.len().saturating_sub(1));
    }

    /// After a reconnect, what the open chat missed comes with history.
    fn reload_open_chat(&mut self) {
        if let Some(peer) = self.open.clone() {
            let chat = self.chats.entry(peer.clone()).or_default();
            if !chat.loading {
                chat.loading = true;
                self.request(super::Request::History {
                    peer,
                    before_seq: 0,
                    before_ms: 0,
                    older: false,
                });
            }
        }
    }

    fn send_done(&mut self, client_msg_id: &str, result: Result<qim_sdk::SendReceipt, String>) {
        let Some(peer) = self.sends.get(client_msg_id).cloned() else {
            // A send restored from the outbox after a restart: its line
            // comes with history.
            if let Err(e) = result {
                self.error(format!("a message queued before the restart failed: {e}"));
            }
            return;
        };
        let Some(line) = self
            .chats
            .get_mut(&peer)
            .and_then(|c| c.by_client_id(client_msg_id))
        else {
            return;
        };
        match result {
            Ok(receipt) => {
                line.state = SendState::Sent;
                if line.msg_id.is_empty() {
                    line.msg_id = receipt.msg_id.clone();
                }
                if receipt.server_time_ms > 0 {
                    line.time_ms = receipt.server_time_ms;
                }
                let msg_id = receipt.msg_id;
                let e = self.convs.entry(&peer);
                if e.last_text == line.body || line.body.is_empty() {
                    e.last_msg_id = msg_id;
                }
                self.sends.remove(client_msg_id);
                self.upload_sent(client_msg_id, true);
            }
            Err(e) => {
                line.state = SendState::Failed(e.clone());
                line.transfer = None;
                self.sends.remove(client_msg_id);
                if self.upload_sent(client_msg_id, false) {
                    self.error(format!("not sent: {e} · /retry tries again"));
                } else {
                    self.error(format!("not sent: {e}"));
                }
            }
        }
    }

    fn message(&mut self, m: IncomingMessage) {
        match m.event.clone() {
            None => self.chat_message(m),
            Some(event) => self.event(event),
        }
    }

    fn chat_message(&mut self, m: IncomingMessage) {
        let peer = m.conversation.clone();
        if matches!(&peer, Peer::User(id) | Peer::Group(id) if id.is_empty()) {
            return;
        }
        let open = self.open.as_ref() == Some(&peer);
        if let Some(v) = self.typing.get_mut(&peer) {
            v.retain(|(u, _)| *u != m.from_user);
        }
        let chat = self.chats.entry(peer.clone()).or_default();
        let new = chat.upsert(Line::from_message(&m));
        if !new {
            return;
        }
        self.convs.on_message(&m, open);
        if open {
            self.mark_open_read();
        } else if m.mentions_me {
            self.say(format!(
                "{} mentioned you in {}",
                m.from_user,
                peer_label(&peer)
            ));
        }
        self.clamp_selection();
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Read {
                conversation,
                read_seq,
                unread,
            } => {
                if let Some(e) = self.convs.get_mut(&conversation) {
                    e.unread = unread;
                }
                if let Some(chat) = self.chats.get_mut(&conversation) {
                    chat.marked_read = chat.marked_read.max(read_seq);
                }
            }
            Event::Recalled {
                conversation,
                msg_id,
                by_user,
                ..
            } => {
                if let Some(line) = self
                    .chats
                    .get_mut(&conversation)
                    .and_then(|c| c.by_msg_id(&msg_id))
                {
                    line.recalled = true;
                    line.body.clear();
                }
                self.convs.on_recall(&conversation, &msg_id);
                if by_user != self.me {
                    self.say(format!("{by_user} recalled a message"));
                }
            }
            Event::Edited {
                conversation,
                msg_id,
                body,
                ..
            } => {
                if let Some(line) = self
                    .chats
                    .get_mut(&conversation)
                    .and_then(|c| c.by_msg_id(&msg_id))
                    && !line.recalled
                {
                    line.body = body_text(&body);
                    line.edited = true;
                }
            }
            Event::Deleted {
                conversation,
                msg_id,
                ..
            } => {
                if let Some(chat) = self.chats.get_mut(&conversation) {
                    chat.lines
                        .retain(|l| l.msg_id != msg_id || msg_id.is_empty());
                    chat.selected = None;
                }
            }
            Event::ReadReceipt {
                reader, sent_ms, ..
            } => {
                let chat = self.chats.entry(Peer::User(reader)).or_default();
                chat.read_ms = chat.read_ms.max(sent_ms);
                chat.delivered_ms = chat.delivered_ms.max(sent_ms);
            }
            Event::DeliveryReceipt {
                recipient, sent_ms, ..
            } => {
                let chat = self.chats.entry(Peer::User(recipient)).or_default();
                chat.delivered_ms = chat.delivered_ms.max(sent_ms);
            }
            Event::Flags {
                conversation,
                pinned,
                muted,
            } => {
                if let Some(e) = self.convs.get_mut(&conversation) {
                    e.pinned = pinned;
                    e.muted = muted;
                }
            }
            Event::FriendRequest { from, message } => self.say(format!(
                "{from} asks to be friends: \"{message}\" · /accept {from} or /reject {from}"
            )),
            Event::FriendResponse { from, accepted } => self.say(if accepted {
                format!("{from} accepted your friend request")
            } else {
                format!("{from} declined your friend request")
            }),
            Event::GroupInvitation { group, name, by } => self.say(format!(
                "{by} invites you to #{group} ({name}) · /join {group}"
            )),
            Event::JoinRequest {
                group,
                user,
                message,
            } => self.say(format!("{user} asks to join #{group}: \"{message}\"")),
            Event::JoinAnswer { group, accepted } => self.say(if accepted {
                format!("you are in #{group} now")
            } else {
                format!("your request to join #{group} was declined")
            }),
            Event::ScheduleRefused { to, message, .. } => self.error(format!(
                "a scheduled message to {} was refused: {message}",
                peer_label(&to)
            )),
            _ => {}
        }
    }

    fn signal(&mut self, signal: Signal) {
        match signal {
            Signal::Typing {
                conversation,
                from,
                typing,
            } => {
                if from.is_empty() || from == self.me {
                    return;
                }
                let v = self.typing.entry(conversation).or_default();
                v.retain(|(u, _)| *u != from);
                if typing && v.len() < 16 {
                    v.push((from, self.now_ms.saturating_add(TYPING_HOLDS_MS)));
                }
            }
            Signal::Presence(p) if !p.user.is_empty() => {
                self.presence.insert(p.user.clone(), p);
            }
            _ => {}
        }
    }
}

/// How a conversation is named: `bob`, `#team`.
pub fn peer_label(peer: &Peer) -> String {
    match peer {
        Peer::User(u) => u.clone(),
        Peer::Group(g) => format!("#{g}"),
    }
}
