//! The SDK side of the app: tasks that feed what the client reports into
//! the model's [`Input`] channel, and carry out the model's [`Request`]s,
//! each in its own task. Nothing here runs on the draw loop: a request
//! waiting for a connection, a slow server or a dead network never holds
//! up a key press or a redraw.
//!
//! Channels: `Input`s go to the UI through a bounded channel (a task that
//! finds it full waits: the SDK holds further messages, the server holds
//! the rest); requests come through one bounded to
//! [`MAX_PENDING_REQUESTS`](crate::model::MAX_PENDING_REQUESTS).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qim_sdk::{
    Client, ClientConfig, ClientEvent, ConnectionState, GroupChange, HistoryAnchor, NewGroup,
    OutgoingMessage, Peer,
};
use tokio::sync::mpsc;

use crate::datadir::DataDir;
use crate::model::{ContactOp, Input, Link, Request, Transport};
use crate::settings::Settings;
use crate::text::clock;
use crate::transfers;

/// Messages per history page.
const PAGE: u32 = 50;
/// Search results at most.
const SEARCH_LIMIT: u32 = 100;
/// Members listed at most.
const MEMBERS_LIMIT: u32 = 500;

/// Milliseconds since the epoch, by the local clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The transport of the client's connection: the one place the app asks.
fn transport_of(client: &Client) -> Transport {
    match client.transport() {
        Some(qim_sdk::Transport::Tcp) => Transport::Tcp,
        _ => Transport::Quic,
    }
}

/// The client for `settings`, started without waiting for the network
/// (it connects and reconnects in the background), resumed at the saved
/// resume point.
pub async fn start(
    settings: &Settings,
    data: &DataDir,
) -> Result<(Arc<Client>, u64), qim_sdk::Error> {
    let resume_from = data.resume_point();
    let mut config = ClientConfig::new(
        settings.server.clone(),
        settings.token.clone(),
        settings.device.clone(),
        settings.ca_pem.clone(),
    );
    config.fallback_servers = settings.fallback_servers.clone();
    config.server_name = settings.server_name.clone();
    config.data_dir = Some(data.outbox());
    config.local_store = Some(data.local_store());
    config.resume_from = resume_from;
    config.reconnect_max = Duration::from_secs(15);
    let client = Client::start(config).await?;
    Ok((Arc::new(client), resume_from))
}

/// Starts the tasks that feed `ui` and serve `requests`.
pub fn spawn(
    client: Arc<Client>,
    data: DataDir,
    ui: mpsc::Sender<Input>,
    mut requests: mpsc::Receiver<Request>,
) {
    let downloads = data.downloads();
    tokio::spawn(messages(Arc::clone(&client), data, ui.clone()));
    tokio::spawn(signals(Arc::clone(&client), ui.clone()));
    tokio::spawn(outbox_events(Arc::clone(&client), ui.clone()));
    tokio::spawn(connection(Arc::clone(&client), ui.clone()));
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let (client, ui) = (Arc::clone(&client), ui.clone());
            match request {
                Request::SendFile {
                    peer,
                    client_msg_id,
                    path,
                } => tokio::spawn(async move {
                    let out = transfers::send_file(&client, peer, client_msg_id, path, &ui).await;
                    report(out, &ui).await;
                }),
                Request::Save {
                    msg_id,
                    attachment,
                    dir,
                } => {
                    let downloads = downloads.clone();
                    tokio::spawn(async move {
                        let out =
                            transfers::save(&client, msg_id, attachment, dir, &downloads, &ui)
                                .await;
                        report(out, &ui).await;
                    })
                }
                request => tokio::spawn(serve(client, request, ui)),
            };
        }
    });
}

/// Received messages and events, in inbox order; the resume point saved
/// after each.
async fn messages(client: Arc<Client>, data: DataDir, ui: mpsc::Sender<Input>) {
    while let Some(m) = client.next_message().await {
        if ui.send(Input::Message(m)).await.is_err() {
            return;
        }
        let seq = client.last_taken_seq();
        match data.save_resume_point(seq) {
            Ok(()) => {
                let _ = ui.send(Input::Synced(seq)).await;
            }
            Err(e) => tracing::warn!(error = %e, "saving the resume point failed"),
        }
    }
}

async fn signals(client: Arc<Client>, ui: mpsc::Sender<Input>) {
    loop {
        if client.state() == ConnectionState::Closed {
            return;
        }
        if let Some(signal) = client.next_signal(Duration::from_secs(1)).await
            && ui.send(Input::Signal(signal)).await.is_err()
        {
            return;
        }
    }
}

async fn outbox_events(client: Arc<Client>, ui: mpsc::Sender<Input>) {
    let mut events = client.events();
    while let Some(event) = events.next().await {
        if let ClientEvent::Outbox {
            client_msg_id,
            status,
        } = event
            && ui
                .send(Input::Outbox {
                    client_msg_id,
                    status,
                })
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Connection states as the status bar shows them; on each login, the
/// conversation list and contacts' presence afresh.
async fn connection(client: Arc<Client>, ui: mpsc::Sender<Input>) {
    let mut states = client.watch_state();
    let mut state = states.current();
    loop {
        let link = match state {
            ConnectionState::Connected => {
                tokio::spawn(logged_in(Arc::clone(&client), ui.clone()));
                Link::Connected(transport_of(&client))
            }
            ConnectionState::Backoff => Link::Reconnecting {
                next_attempt_ms: client
                    .next_attempt_in()
                    .map_or(0, |d| now_ms() + d.as_millis() as i64),
                reason: client
                    .last_error()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            },
            ConnectionState::Closed => Link::Closed(
                client
                    .last_error()
                    .map_or_else(|| "closed".to_owned(), |e| e.to_string()),
            ),
            _ => Link::Connecting,
        };
        if ui.send(Input::Link(link)).await.is_err() {
            return;
        }
        match states.changed().await {
            Some(next) => state = next,
            None => return,
        }
    }
}

async fn logged_in(client: Arc<Client>, ui: mpsc::Sender<Input>) {
    let _ = ui.send(Input::LoggedIn(client.user_id())).await;
    serve(Arc::clone(&client), Request::Conversations, ui.clone()).await;
    if let Ok(contacts) = client.contacts().await
        && !contacts.friends.is_empty()
        && let Ok(presence) = client.subscribe_presence(contacts.friends).await
    {
        let _ = ui.send(Input::Presence(presence)).await;
    }
}

/// Carries out one request and reports what came of it.
async fn serve(client: Arc<Client>, request: Request, ui: mpsc::Sender<Input>) {
    report(run(&client, request).await, &ui).await;
}

async fn report(inputs: Vec<Input>, ui: &mpsc::Sender<Input>) {
    for input in inputs {
        if ui.send(input).await.is_err() {
            return;
        }
    }
}

fn failed(what: &str, e: qim_sdk::Error) -> Vec<Input> {
    vec![Input::Failed {
        what: what.to_owned(),
        error: e.to_string(),
    }]
}

fn done(result: Result<String, qim_sdk::Error>, what: &str) -> Vec<Input> {
    match result {
        Ok(text) => vec![Input::Done(text)],
        Err(e) => failed(what, e),
    }
}

async fn run(client: &Client, request: Request) -> Vec<Input> {
    match request {
        Request::Send {
            peer,
            client_msg_id,
            text,
            extras,
        } => {
            let message = OutgoingMessage {
                to: String::new(),
                kind: "text".into(),
                body: text.into_bytes(),
                client_msg_id: Some(client_msg_id),
            };
            transfers::send_message(client, peer, message, extras).await
        }
        Request::History {
            peer,
            before_seq,
            before_ms,
            older,
        } => history(client, peer, before_seq, before_ms, older).await,
        Request::MarkRead { peer, up_to_seq } => match client.mark_read(peer, up_to_seq).await {
            Ok(c) => vec![Input::Conversation(c)],
            Err(e) => failed("marking read", e),
        },
        Request::SetFlags {
            peer,
            pinned,
            muted,
        } => match client.set_flags(peer, pinned, muted).await {
            Ok(c) => vec![Input::Conversation(c), Input::Done("flags set".into())],
            Err(e) => failed("setting flags", e),
        },
        Request::Recall { msg_id } => done(
            client.recall(msg_id).await.map(|_| "recalled".to_owned()),
            "recall",
        ),
        Request::Edit { msg_id, text } => done(
            client.edit(msg_id, text).await.map(|_| "edited".to_owned()),
            "edit",
        ),
        Request::Schedule { peer, text, at_ms } => done(
            client.schedule(peer, text, at_ms).await.map(|id| {
                format!(
                    "scheduled for {} UTC · /unschedule {id} cancels",
                    clock(at_ms)
                )
            }),
            "schedule",
        ),
        Request::CancelSchedule { schedule_id } => done(
            client
                .cancel_scheduled(schedule_id)
                .await
                .map(|()| "scheduled message cancelled".to_owned()),
            "unschedule",
        ),
        Request::Typing { peer, typing } => {
            // Best effort: a lost typing signal is not worth a notice.
            let _ = client.typing(peer, typing).await;
            Vec::new()
        }
        Request::Search { query } => match client.search(&query, SEARCH_LIMIT) {
            Ok(results) => vec![Input::SearchResults { query, results }],
            Err(e) => failed("search", e),
        },
        Request::CreateGroup { group, name } => done(
            client
                .create_group_with(NewGroup {
                    group: group.clone(),
                    name,
                    ..NewGroup::default()
                })
                .await
                .map(|_| format!("created #{group}; /invite <user> adds people")),
            "create",
        ),
        Request::Group { group, change } => group_change(client, group, change).await,
        Request::Members { group } => {
            match client
                .group_members(group.clone(), String::new(), MEMBERS_LIMIT)
                .await
            {
                Ok((members, _)) => vec![Input::Members { group, members }],
                Err(e) => failed("members", e),
            }
        }
        Request::Contacts => match client.contacts().await {
            Ok(contacts) => {
                let mut out = Vec::new();
                if !contacts.friends.is_empty()
                    && let Ok(p) = client.presence(contacts.friends.clone()).await
                {
                    out.push(Input::Presence(p));
                }
                out.push(Input::Contacts(contacts));
                out
            }
            Err(e) => failed("contacts", e),
        },
        Request::Contact(op) => {
            let (result, what) = match op {
                ContactOp::Request(u, m) => (
                    client.request_friend(u.clone(), m).await,
                    format!("asked {u} to be friends"),
                ),
                ContactOp::Accept(u) => (
                    client.accept_friend(u.clone()).await,
                    format!("{u} is a friend now"),
                ),
                ContactOp::Reject(u) => (
                    client.reject_friend(u.clone()).await,
                    format!("declined {u}"),
                ),
                ContactOp::Remove(u) => (
                    client.remove_friend(u.clone()).await,
                    format!("{u} is no longer a friend"),
                ),
                ContactOp::Block(u) => (client.block(u.clone()).await, format!("blocked {u}")),
                ContactOp::Unblock(u) => {
                    (client.unblock(u.clone()).await, format!("unblocked {u}"))
                }
            };
            done(result.map(|_| what), "contacts")
        }
        // Carried out by `spawn` (they report progress as they go).
        Request::SendFile { .. } | Request::Save { .. } => Vec::new(),
        Request::Conversations => match client.all_conversations().await {
            Ok(list) => vec![Input::Conversations(list)],
            Err(e) => failed("conversation list", e),
        },
    }
}

/// A page from the local store (at once, also offline), then, when
/// connected, from the server.
async fn history(
    client: &Client,
    peer: Peer,
    before_seq: u64,
    before_ms: i64,
    older: bool,
) -> Vec<Input> {
    let mut out = Vec::new();
    let local_anchor = if before_ms > 0 {
        HistoryAnchor::Time(before_ms)
    } else {
        HistoryAnchor::End
    };
    if let Ok(page) = client.local_history(peer.clone(), local_anchor, false, PAGE) {
        out.push(Input::History {
            peer: peer.clone(),
            page,
            older,
        });
    }
    if client.state() == ConnectionState::Connected {
        let anchor = if before_seq > 0 {
            HistoryAnchor::Seq(before_seq)
        } else if before_ms > 0 {
            HistoryAnchor::Time(before_ms)
        } else {
            HistoryAnchor::End
        };
        match client.history(peer.clone(), anchor, false, PAGE).await {
            Ok(page) => out.push(Input::History { peer, page, older }),
            Err(e) => out.extend(failed("history", e)),
        }
    } else if out.is_empty() {
        out.push(Input::History {
            peer,
            page: qim_sdk::HistoryPage::default(),
            older,
        });
    }
    out
}

async fn group_change(client: &Client, group: String, change: GroupChange) -> Vec<Input> {
    let what = match &change {
        GroupChange::Join => "join",
        GroupChange::Leave => "leave",
        GroupChange::Invite(_) => "invite",
        GroupChange::Remove(_) => "remove",
        GroupChange::SetRole(..) => "role",
        GroupChange::Rename(_) => "rename",
        _ => "group",
    };
    match client.update_group(group.clone(), change).await {
        Ok(outcome) => {
            let text = match what {
                "join" if outcome.requested => {
                    format!("asked to join #{group}; an admin will answer")
                }
                "join" => format!("you are in #{group}"),
                "leave" => format!("you left #{group}"),
                "invite" if !outcome.invited.is_empty() => format!(
                    "invited {} to #{group} (they accept with /join {group})",
                    outcome.invited.join(", ")
                ),
                _ => format!(
                    "#{group}: {what} done ({} members)",
                    outcome.group.member_count
                ),
            };
            vec![Input::Done(text)]
        }
        Err(e) => failed(what, e),
    }
}
