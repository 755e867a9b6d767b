//! The UI model driven without a terminal: inputs in, state and requests
//! out, and the screen drawn into a test buffer.

use qim_desktop::model::{Focus, Input, Key, Link, Mark, Model, Request, Transport};
use qim_desktop::view;
use qim_sdk::{Conversation, Event, IncomingMessage, Peer, SendReceipt, Signal};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: i64 = 1_796_306_700_000;

fn model() -> Model {
    let mut m = Model::new("bob", NOW, 0, "t");
    m.handle(Input::Link(Link::Connected(Transport::Quic)));
    m
}

fn incoming(from: &str, seq: u64, text: &str) -> IncomingMessage {
    IncomingMessage {
        seq,
        msg_id: format!("m{seq}"),
        from_user: from.into(),
        from_device: format!("{from}-d"),
        client_msg_id: format!("c{seq}"),
        kind: "text".into(),
        body: text.as_bytes().to_vec(),
        server_time_ms: NOW + seq as i64,
        conversation: Peer::User(from.into()),
        ..IncomingMessage::default()
    }
}

fn typed(m: &mut Model, text: &str) {
    for c in text.chars() {
        m.handle(Input::Key(Key::Char(c)));
    }
    m.handle(Input::Key(Key::Enter));
}

/// The screen as text, one row a line.
pub fn screen(m: &Model) -> String {
    let mut terminal = Terminal::new(TestBackend::new(100, 24)).expect("terminal");
    terminal.draw(|f| view::draw(f, m)).expect("draw");
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn unread_counts_go_up_and_clear_when_the_chat_is_opened() {
    let mut m = model();
    m.handle(Input::Message(incoming("alice", 1, "hello")));
    m.handle(Input::Message(incoming("alice", 2, "again")));
    let alice = Peer::User("alice".into());
    assert_eq!(m.convs.get(&alice).map(|e| e.unread), Some(2));
    assert!(screen(&m).contains("[2]"), "{}", screen(&m));

    m.handle(Input::Key(Key::Ctrl('n')));
    assert_eq!(m.open, Some(alice.clone()));
    assert_eq!(m.convs.get(&alice).map(|e| e.unread), Some(0));
    let requests = m.take_requests();
    assert!(requests.contains(&Request::MarkRead {
        peer: alice.clone(),
        up_to_seq: 2
    }));
    assert!(
        requests
            .iter()
            .any(|r| matches!(r, Request::History { older: false, .. }))
    );
    // While it is open, a new message is read at once.
    m.handle(Input::Message(incoming("alice", 3, "third")));
    assert_eq!(m.convs.get(&alice).map(|e| e.unread), Some(0));
    assert!(m.take_requests().contains(&Request::MarkRead {
        peer: alice,
        up_to_seq: 3
    }));
}

#[test]
fn a_message_the_servers_list_already_counts_is_not_counted_twice() {
    let mut m = model();
    let alice = Peer::User("alice".into());
    m.handle(Input::Conversations(vec![Conversation {
        peer: alice.clone(),
        last_seq: 5,
        unread: 1,
        updated_ms: NOW,
        ..Conversation::default()
    }]));
    m.handle(Input::Message(incoming("alice", 5, "counted")));
    assert_eq!(m.convs.get(&alice).map(|e| e.unread), Some(1));
    m.handle(Input::Message(incoming("alice", 6, "new")));
    assert_eq!(m.convs.get(&alice).map(|e| e.unread), Some(2));
}

#[test]
fn a_send_goes_from_sending_to_sent_to_delivered_to_read_or_failed() {
    let mut m = model();
    typed(&mut m, "/msg alice hi @alice");
    let alice = Peer::User("alice".into());
    let requests = m.take_requests();
    let Some(Request::Send {
        client_msg_id,
        extras,
        text,
        ..
    }) = requests
        .iter()
        .find(|r| matches!(r, Request::Send { .. }))
        .cloned()
    else {
        panic!("no send in {requests:?}");
    };
    assert_eq!(text, "hi @alice");
    assert_eq!(extras.mentions, vec!["alice".to_owned()]);
    let chat = &m.chats[&alice];
    assert_eq!(chat.mark(&chat.lines[0]), Some(Mark::Sending));
    assert!(screen(&m).contains("· sending"));

    m.handle(Input::SendDone {
        client_msg_id: client_msg_id.clone(),
        result: Ok(SendReceipt {
            client_msg_id,
            msg_id: "s1".into(),
            seq: 9,
            server_time_ms: NOW + 10,
        }),
    });
    let chat = &m.chats[&alice];
    assert_eq!(chat.mark(&chat.lines[0]), Some(Mark::Sent));
    for (event, mark) in [
        (
            Event::DeliveryReceipt {
                recipient: "alice".into(),
                msg_id: "s1".into(),
                sent_ms: NOW + 10,
            },
            Mark::Delivered,
        ),
        (
            Event::ReadReceipt {
                reader: "alice".into(),
                msg_id: "s1".into(),
                sent_ms: NOW + 10,
            },
            Mark::Read,
        ),
    ] {
        m.handle(Input::Message(IncomingMessage {
            event: Some(event),
            ..IncomingMessage::default()
        }));
        let chat = &m.chats[&alice];
        assert_eq!(chat.mark(&chat.lines[0]), Some(mark));
    }
    assert!(screen(&m).contains("✓✓ read"), "{}", screen(&m));

    typed(&mut m, "refused");
    let Some(Request::Send { client_msg_id, .. }) = m
        .take_requests()
        .into_iter()
        .find(|r| matches!(r, Request::Send { .. }))
    else {
        panic!("no send");
    };
    m.handle(Input::SendDone {
        client_msg_id,
        result: Err("refused (Blocked): blocked".into()),
    });
    let chat = &m.chats[&alice];
    assert_eq!(chat.mark(&chat.lines[1]), Some(Mark::Failed));
    assert!(screen(&m).contains("✗ failed"), "{}", screen(&m));
}

#[test]
fn recalls_edits_and_replies_show_in_the_pane() {
    let mut m = model();
    let alice = Peer::User("alice".into());
    m.handle(Input::Message(incoming("alice", 1, "first")));
    m.handle(Input::Message(incoming("alice", 2, "oops")));
    m.open_peer(alice.clone());
    m.handle(Input::Message(IncomingMessage {
        event: Some(Event::Recalled {
            conversation: alice.clone(),
            msg_id: "m2".into(),
            seq: 2,
            by_user: "alice".into(),
        }),
        ..IncomingMessage::default()
    }));
    m.handle(Input::Message(IncomingMessage {
        event: Some(Event::Edited {
            conversation: alice.clone(),
            msg_id: "m1".into(),
            seq: 1,
            kind: "text".into(),
            body: b"first, fixed".to_vec(),
            edited_at_ms: NOW + 5,
        }),
        ..IncomingMessage::default()
    }));
    let shown = screen(&m);
    assert!(shown.contains("message recalled"), "{shown}");
    assert!(!shown.contains("oops"), "{shown}");
    assert!(shown.contains("first, fixed (edited)"), "{shown}");

    // Select the first message in the chat pane and reply to it.
    m.handle(Input::Key(Key::Tab));
    m.handle(Input::Key(Key::Tab));
    assert_eq!(m.focus, Focus::Chat);
    m.handle(Input::Key(Key::Up));
    m.handle(Input::Key(Key::Up));
    m.handle(Input::Key(Key::Char('r')));
    assert_eq!(m.focus, Focus::Input);
    typed(&mut m, "indeed");
    let send = m
        .take_requests()
        .into_iter()
        .find(|r| matches!(r, Request::Send { .. }));
    let Some(Request::Send { extras, .. }) = send else {
        panic!("no send");
    };
    assert_eq!(extras.reply_to.map(|q| q.msg_id), Some("m1".to_owned()));
    assert!(
        screen(&m).contains("↪ alice: first, fixed"),
        "{}",
        screen(&m)
    );
}

#[test]
fn slash_commands_ask_the_sdk_or_say_how_they_are_used() {
    let mut m = model();
    typed(&mut m, "/create team The Team");
    typed(&mut m, "/invite alice carol");
    typed(&mut m, "/role alice admin");
    typed(&mut m, "/schedule +10m see you");
    typed(&mut m, "/search hello world");
    typed(&mut m, "/pin");
    let requests = m.take_requests();
    let team = "team".to_owned();
    assert!(requests.contains(&Request::CreateGroup {
        group: team.clone(),
        name: "The Team".into()
    }));
    assert!(requests.contains(&Request::Group {
        group: team.clone(),
        change: qim_sdk::GroupChange::Invite(vec!["alice".into(), "carol".into()]),
    }));
    assert!(requests.contains(&Request::Group {
        group: team.clone(),
        change: qim_sdk::GroupChange::SetRole("alice".into(), qim_sdk::GroupRole::Admin),
    }));
    assert!(requests.contains(&Request::Schedule {
        peer: Peer::Group(team.clone()),
        text: "see you".into(),
        at_ms: NOW + 600_000,
    }));
    assert!(requests.contains(&Request::Search {
        query: "hello world".into()
    }));
    assert!(requests.contains(&Request::SetFlags {
        peer: Peer::Group(team),
        pinned: Some(true),
        muted: None
    }));

    for (line, says) in [
        ("/recall", "nothing to recall"),
        ("/role alice king", "roles:"),
        ("/schedule tomorrow hi", "when:"),
        ("/msg bad!id", "not a valid id"),
        ("/frobnicate", "unknown command"),
    ] {
        typed(&mut m, line);
        let notice = m.notice.clone().expect("a notice");
        assert!(
            notice.error && notice.text.contains(says),
            "{line}: {notice:?}"
        );
    }
    assert!(m.take_requests().is_empty());
    typed(&mut m, "/help");
    assert!(screen(&m).contains("/schedule"), "{}", screen(&m));
    m.handle(Input::Key(Key::Esc));
    assert!(m.overlay.is_none());
    typed(&mut m, "/quit");
    assert!(m.quit);
}

#[test]
fn the_status_bar_shows_the_connection_and_typing_shows_in_the_title() {
    let mut m = model();
    assert!(screen(&m).contains("● connected over QUIC"));
    m.handle(Input::Link(Link::Reconnecting {
        next_attempt_ms: NOW + 2_500,
        reason: "network: timed out".into(),
    }));
    assert!(
        screen(&m).contains("reconnecting in 3s (network: timed out)"),
        "{}",
        screen(&m)
    );
    m.handle(Input::Link(Link::Connected(Transport::Tcp)));
    assert!(screen(&m).contains("connected over TCP"));

    let alice = Peer::User("alice".into());
    m.open_peer(alice.clone());
    m.handle(Input::Signal(Signal::Typing {
        conversation: alice.clone(),
        from: "alice".into(),
        typing: true,
    }));
    assert!(screen(&m).contains("alice typing…"), "{}", screen(&m));
    m.handle(Input::Tick(NOW + 7_000));
    assert!(!screen(&m).contains("typing…"));
    m.handle(Input::Signal(Signal::Presence(qim_sdk::PresenceStatus {
        user: "alice".into(),
        online: true,
        last_seen_ms: 0,
    })));
    assert!(screen(&m).contains("alice · online"), "{}", screen(&m));
}

#[test]
fn history_pages_merge_with_live_lines_and_page_backwards() {
    let mut m = model();
    let alice = Peer::User("alice".into());
    m.open_peer(alice.clone());
    m.take_requests();
    let page = |seqs: std::ops::RangeInclusive<u64>, more| qim_sdk::HistoryPage {
        messages: seqs
            .rev()
            .map(|s| incoming("alice", s, &format!("msg {s}")))
            .collect(),
        more,
        expired: false,
        next_seq: 0,
    };
    m.handle(Input::History {
        peer: alice.clone(),
        page: page(51..=100, true),
        older: false,
    });
    // The same page again (local store, then server): no duplicates.
    m.handle(Input::History {
        peer: alice.clone(),
        page: page(51..=100, true),
        older: false,
    });
    assert_eq!(m.chats[&alice].lines.len(), 50);
    assert!(screen(&m).contains("msg 100"));
    for _ in 0..12 {
        m.handle(Input::Key(Key::PageUp));
    }
    let requests = m.take_requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| matches!(
                r,
                Request::History {
                    older: true,
                    before_seq: 51,
                    ..
                }
            ))
            .count(),
        1,
        "one page asked for at a time: {requests:?}"
    );
    m.handle(Input::History {
        peer: alice.clone(),
        page: page(1..=50, false),
        older: true,
    });
    let chat = &m.chats[&alice];
    assert_eq!(chat.lines.len(), 100);
    assert_eq!(chat.lines[0].seq, 1);
    assert!(!chat.more_before);
}
