//! What a hostile server or sender can put on the screen: escape
//! sequences, bells, bidirectional overrides, enormous bodies, and input
//! that makes no sense. None of it reaches the terminal as anything but
//! inert symbols, and none of it panics the UI.

use qim_desktop::model::{Input, Key, Link, Model, Transport};
use qim_desktop::view;
use qim_sdk::{
    Contacts, Conversation, Event, FriendRequest, GroupMember, HistoryPage, IncomingMessage,
    OutboxStatus, Peer, PresenceStatus, SendReceipt, Signal,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: i64 = 1_796_306_700_000;

fn draw(m: &Model, w: u16, h: u16) -> ratatui::buffer::Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    terminal.draw(|f| view::draw(f, m)).expect("draw");
    terminal.backend().buffer().clone()
}

fn text_of(buffer: &ratatui::buffer::Buffer) -> String {
    buffer.content().iter().map(|c| c.symbol()).collect()
}

const NASTY: &str = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[31mred\u{9b}31m\r\u{202e}evil\u{8}\u{0}end";

#[test]
fn escape_sequences_in_bodies_names_and_notices_are_drawn_inert() {
    let mut m = Model::new("bob", NOW, 0, "t");
    let nasty_user = format!("mal{NASTY}");
    m.handle(Input::Link(Link::Closed(format!("refused: {NASTY}"))));
    m.handle(Input::Message(IncomingMessage {
        seq: 1,
        msg_id: "m1".into(),
        from_user: nasty_user.clone(),
        body: format!("hi {NASTY}\nsecond line {NASTY}").into_bytes(),
        server_time_ms: NOW,
        conversation: Peer::User(nasty_user.clone()),
        ..IncomingMessage::default()
    }));
    m.open_peer(Peer::User(nasty_user.clone()));
    m.handle(Input::Failed {
        what: "x".into(),
        error: NASTY.into(),
    });
    let buffer = draw(&m, 160, 30);
    for cell in buffer.content() {
        assert!(
            !cell
                .symbol()
                .chars()
                .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "a control character reached a cell: {:?}",
            cell.symbol()
        );
    }
    let shown = text_of(&buffer);
    assert!(shown.contains("␛[2J␛]0;owned␇␛[31mred"), "{shown}");
    assert!(shown.contains("second line"), "{shown}");

    // And through the real terminal backend's bytes: the only escape
    // sequences written are the backend's own (cursor moves, colours).
    let mut out = Vec::new();
    {
        let backend = ratatui::backend::CrosstermBackend::new(&mut out);
        let viewport = ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, 160, 30));
        let mut terminal = Terminal::with_options(backend, ratatui::TerminalOptions { viewport })
            .expect("terminal");
        terminal.draw(|f| view::draw(f, &m)).expect("draw");
    }
    let bytes = String::from_utf8_lossy(&out);
    assert!(
        !bytes.contains("\u{1b}]0;"),
        "an OSC title sequence got through"
    );
    assert!(!bytes.contains('\u{7}'), "a bell got through");
    assert!(!bytes.contains("\u{1b}[2J"), "a clear-screen got through");
}

#[test]
fn huge_and_many_line_bodies_are_cut_and_wrapped() {
    let mut m = Model::new("bob", NOW, 0, "t");
    let alice = Peer::User("alice".into());
    let long = "word ".repeat(50_000) + &"\n".repeat(10_000) + "寛".repeat(5000).as_str();
    m.handle(Input::Message(IncomingMessage {
        seq: 1,
        msg_id: "m1".into(),
        from_user: "alice".into(),
        body: long.into_bytes(),
        server_time_ms: NOW,
        conversation: alice.clone(),
        ..IncomingMessage::default()
    }));
    m.open_peer(alice);
    for (w, h) in [(100, 30), (20, 8), (4, 3), (1, 1)] {
        let shown = text_of(&draw(&m, w, h));
        if w == 100 {
            assert!(shown.contains("word word"), "{shown}");
        }
    }
}

/// A tiny deterministic generator (no dependency for one test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() as usize) % from.len()]
    }
}

fn odd_input(r: &mut Lcg) -> Input {
    let users = ["", "alice", "bob", NASTY, "a\u{1b}b"];
    let ids = ["", "m1", "m2", "zz", NASTY];
    let peer = |r: &mut Lcg| {
        if r.next() % 2 == 0 {
            Peer::User(r.pick(&users).to_owned())
        } else {
            Peer::Group(r.pick(&users).to_owned())
        }
    };
    let seq = |r: &mut Lcg| match r.next() % 4 {
        0 => 0,
        1 => u64::MAX,
        _ => r.next() % 10,
    };
    let time = |r: &mut Lcg| match r.next() % 4 {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => -5,
        _ => NOW + (r.next() % 100_000) as i64,
    };
    let message = |r: &mut Lcg, event| IncomingMessage {
        seq: seq(r),
        msg_id: r.pick(&ids).to_owned(),
        from_user: r.pick(&users).to_owned(),
        client_msg_id: r.pick(&ids).to_owned(),
        body: NASTY
            .as_bytes()
            .iter()
            .copied()
            .chain([0xff, 0xfe])
            .collect(),
        server_time_ms: time(r),
        conversation: peer(r),
        outgoing: r.next() % 2 == 0,
        event,
        edited_at_ms: time(r),
        recalled: r.next() % 3 == 0,
        mentions_me: r.next() % 2 == 0,
        ..IncomingMessage::default()
    };
    match r.next() % 22 {
        0 => Input::Message(message(r, None)),
        1 => {
            let e = Event::Recalled {
                conversation: peer(r),
                msg_id: r.pick(&ids).into(),
                seq: seq(r),
                by_user: r.pick(&users).into(),
            };
            Input::Message(message(r, Some(e)))
        }
        2 => {
            let e = Event::Edited {
                conversation: peer(r),
                msg_id: r.pick(&ids).into(),
                seq: seq(r),
                kind: "".into(),
                body: vec![0x1b, 0xff, b'x'],
                edited_at_ms: time(r),
            };
            Input::Message(message(r, Some(e)))
        }
        3 => {
            let e = Event::Read {
                conversation: peer(r),
                read_seq: seq(r),
                unread: u32::MAX,
            };
            Input::Message(message(r, Some(e)))
        }
        4 => {
            let e = Event::Deleted {
                conversation: peer(r),
                msg_id: r.pick(&ids).into(),
                seq: seq(r),
            };
            Input::Message(message(r, Some(e)))
        }
        5 => {
            let e = Event::ReadReceipt {
                reader: r.pick(&users).into(),
                msg_id: r.pick(&ids).into(),
                sent_ms: time(r),
            };
            Input::Message(message(r, Some(e)))
        }
        6 => {
            let e = Event::Flags {
                conversation: peer(r),
                pinned: r.next() % 2 == 0,
                muted: r.next() % 2 == 0,
            };
            Input::Message(message(r, Some(e)))
        }
        7 => {
            let e = Event::FriendRequest {
                from: r.pick(&users).into(),
                message: NASTY.into(),
            };
            Input::Message(message(r, Some(e)))
        }
        8 => Input::History {
            peer: peer(r),
            page: HistoryPage {
                messages: (0..r.next() % 5).map(|_| message(r, None)).collect(),
                more: r.next() % 2 == 0,
                expired: true,
                next_seq: seq(r),
            },
            older: r.next() % 2 == 0,
        },
        9 => Input::Conversations(
            (0..r.next() % 5)
                .map(|_| Conversation {
                    peer: peer(r),
                    last_message: Some(message(r, None)),
                    last_seq: seq(r),
                    unread: u32::MAX,
                    updated_ms: time(r),
                    ..Conversation::default()
                })
                .collect(),
        ),
        10 => Input::SendDone {
            client_msg_id: r.pick(&ids).into(),
            result: Ok(SendReceipt {
                client_msg_id: String::new(),
                msg_id: r.pick(&ids).into(),
                seq: seq(r),
                server_time_ms: time(r),
            }),
        },
        11 => Input::Outbox {
            client_msg_id: r.pick(&ids).into(),
            status: OutboxStatus::Failed(qim_sdk::Error::Network(NASTY.into())),
        },
        12 => Input::Signal(Signal::Typing {
            conversation: peer(r),
            from: r.pick(&users).into(),
            typing: r.next() % 2 == 0,
        }),
        13 => Input::Presence(vec![PresenceStatus {
            user: r.pick(&users).into(),
            online: true,
            last_seen_ms: time(r),
        }]),
        14 => Input::Members {
            group: r.pick(&users).into(),
            members: vec![GroupMember::default(); (r.next() % 700) as usize],
        },
        15 => Input::Contacts(Contacts {
            friends: vec![r.pick(&users).into()],
            blocked: vec![NASTY.into()],
            incoming: vec![FriendRequest {
                user: NASTY.into(),
                message: NASTY.into(),
                at_ms: time(r),
            }],
            outgoing: vec![],
        }),
        16 => Input::Link(Link::Reconnecting {
            next_attempt_ms: time(r),
            reason: NASTY.into(),
        }),
        17 => Input::Tick(time(r)),
        18 => Input::Synced(seq(r)),
        19 => Input::Conversation(Conversation {
            peer: peer(r),
            unread: r.next() as u32,
            last_seq: seq(r),
            ..Conversation::default()
        }),
        20 => Input::SearchResults {
            query: NASTY.into(),
            results: vec![message(r, None)],
        },
        _ => Input::Key(
            *[
                Key::Up,
                Key::Down,
                Key::PageUp,
                Key::PageDown,
                Key::Tab,
                Key::BackTab,
                Key::Enter,
                Key::Esc,
                Key::Ctrl('n'),
                Key::Ctrl('p'),
                Key::Char('x'),
                Key::Char('r'),
                Key::Char('e'),
                Key::Char('/'),
                Key::Backspace,
                Key::Delete,
                Key::Home,
                Key::End,
                Key::Left,
            ]
            .get((r.next() % 19) as usize)
            .unwrap_or(&Key::Esc),
        ),
    }
}

#[test]
fn odd_server_input_and_key_mashing_never_panic_the_ui() {
    for seed in 0..20u64 {
        let mut r = Lcg(seed);
        let mut m = Model::new("bob", NOW, 0, "t");
        m.handle(Input::Link(Link::Connected(Transport::Quic)));
        for step in 0..400 {
            m.handle(odd_input(&mut r));
            let _ = m.take_requests();
            if step % 25 == 0 {
                draw(&m, 80 + (r.next() % 60) as u16, 10 + (r.next() % 30) as u16);
            }
            if m.quit {
                break;
            }
        }
        // Still usable afterwards: a command still works.
        m.overlay = None;
        m.focus = qim_desktop::model::Focus::Input;
        m.input.clear();
        m.cursor = 0;
        for c in "/msg carol hi".chars() {
            m.handle(Input::Key(Key::Char(c)));
        }
        m.handle(Input::Key(Key::Enter));
        assert_eq!(m.open, Some(Peer::User("carol".into())), "seed {seed}");
        draw(&m, 100, 30);
    }
}
