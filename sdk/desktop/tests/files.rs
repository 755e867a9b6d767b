//! Files in the UI model, without a terminal: `/send-file` with its upload
//! bar, a failure and `/retry`, received files listed and `/save`d with a
//! download bar, and what a hostile attachment draws as.

use qim_desktop::model::{
    Input, Key, Link, Mark, Model, Request, Transfer, TransferKey, Transport,
};
use qim_desktop::view;
use qim_sdk::{Attachment, IncomingMessage, Peer, SendReceipt};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: i64 = 1_796_306_700_000;
const BLOB: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn model() -> Model {
    let mut m = Model::new("bob", NOW, 0, "t");
    m.handle(Input::Link(Link::Connected(Transport::Quic)));
    m
}

fn typed(m: &mut Model, text: &str) {
    for c in text.chars() {
        m.handle(Input::Key(Key::Char(c)));
    }
    m.handle(Input::Key(Key::Enter));
}

fn screen(m: &Model) -> String {
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

fn with_file(from: &str, seq: u64, name: &str, size: u64) -> IncomingMessage {
    IncomingMessage {
        seq,
        msg_id: format!("m{seq}"),
        from_user: from.into(),
        client_msg_id: format!("c{seq}"),
        kind: "file".into(),
        server_time_ms: NOW + seq as i64,
        conversation: Peer::User(from.into()),
        attachments: vec![Attachment {
            blob_id: BLOB.into(),
            size,
            media_type: "application/pdf".into(),
            name: name.into(),
            ..Attachment::default()
        }],
        ..IncomingMessage::default()
    }
}

/// The one `SendFile` request among `requests`: its send id and path.
fn send_file(requests: &[Request]) -> (String, String) {
    let files: Vec<_> = requests
        .iter()
        .filter_map(|r| match r {
            Request::SendFile {
                client_msg_id,
                path,
                ..
            } => Some((client_msg_id.clone(), path.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(files.len(), 1, "{requests:?}");
    files[0].clone()
}

#[test]
fn a_file_send_shows_its_upload_bar_then_is_sent() {
    let mut m = model();
    typed(&mut m, "/send-file notes.pdf");
    assert!(m.notice.as_ref().is_some_and(|n| n.error), "no chat open");
    typed(&mut m, "/msg alice");
    m.take_requests();
    typed(&mut m, "/send-file \"/tmp/my notes.pdf\"");
    let (id, path) = send_file(&m.take_requests());
    assert_eq!(path, "/tmp/my notes.pdf");
    m.handle(Input::Progress {
        key: TransferKey::Upload(id.clone()),
        done: 100 * 1024,
        total: 400 * 1024,
    });
    let s = screen(&m);
    assert!(
        s.contains("[f1] my notes.pdf · 400.0 KiB · application/pdf"),
        "{s}"
    );
    assert!(
        s.contains("█████░░░░░░░░░░░░░░░ 100.0 KiB / 400.0 KiB  25% uploading"),
        "{s}"
    );
    assert!(s.contains("· sending"), "{s}");

    let attachment = Attachment {
        blob_id: BLOB.into(),
        size: 400 * 1024,
        media_type: "application/pdf".into(),
        name: "my notes.pdf".into(),
        ..Attachment::default()
    };
    m.handle(Input::Uploaded {
        client_msg_id: id.clone(),
        result: Ok(attachment),
    });
    m.handle(Input::SendDone {
        client_msg_id: id.clone(),
        result: Ok(SendReceipt {
            client_msg_id: id.clone(),
            msg_id: "s1".into(),
            seq: 3,
            server_time_ms: NOW,
        }),
    });
    let chat = m.open_chat().expect("open");
    let line = chat.lines.last().expect("the line");
    assert_eq!(chat.mark(line), Some(Mark::Sent));
    assert_eq!(
        line.transfer,
        Some(Transfer::Uploaded { total: 400 * 1024 })
    );
    let s = screen(&m);
    assert!(s.contains("400.0 KiB / 400.0 KiB 100% uploaded"), "{s}");
    assert!(
        s.contains("you: [file] my notes.pdf"),
        "the list previews it:\n{s}"
    );
    // Nothing failed, nothing to retry.
    typed(&mut m, "/retry");
    assert!(m.notice.as_ref().is_some_and(|n| n.error));
    assert!(m.take_requests().is_empty());
}

#[test]
fn a_failed_upload_or_send_shows_why_and_retry_sends_it_again_under_the_same_id() {
    let mut m = model();
    typed(&mut m, "/msg alice");
    typed(&mut m, "/file a.txt");
    let (id, _) = send_file(&m.take_requests());
    m.handle(Input::Uploaded {
        client_msg_id: id.clone(),
        result: Err("a.txt: No such file or directory".into()),
    });
    let s = screen(&m);
    assert!(s.contains("✗ failed: a.txt: No such file"), "{s}");
    assert!(s.contains("/retry tries again"), "{s}");

    typed(&mut m, "/retry");
    assert_eq!(send_file(&m.take_requests()), (id.clone(), "a.txt".into()));
    assert!(screen(&m).contains("· sending"));
    // Uploaded, but the send is refused: /retry again.
    m.handle(Input::Uploaded {
        client_msg_id: id.clone(),
        result: Ok(Attachment {
            blob_id: BLOB.into(),
            size: 3,
            media_type: "text/plain".into(),
            name: "a.txt".into(),
            ..Attachment::default()
        }),
    });
    m.handle(Input::SendDone {
        client_msg_id: id.clone(),
        result: Err("refused (Blocked)".into()),
    });
    assert!(screen(&m).contains("✗ failed: refused (Blocked)"));
    typed(&mut m, "/retry");
    assert_eq!(send_file(&m.take_requests()).0, id);
}

#[test]
fn received_files_are_listed_numbered_and_saved_with_a_download_bar() {
    let mut m = model();
    m.handle(Input::Message(with_file(
        "alice",
        1,
        "report.pdf",
        2 * 1024 * 1024,
    )));
    m.handle(Input::Message(with_file("alice", 2, "slides.pdf", 5000)));
    typed(&mut m, "/msg alice");
    m.take_requests();
    let s = screen(&m);
    assert!(
        s.contains("[f1] report.pdf · 2.0 MiB · application/pdf"),
        "{s}"
    );
    assert!(
        s.contains("[f2] slides.pdf · 4.9 KiB · application/pdf"),
        "{s}"
    );
    assert!(s.contains("alice: [file] slides.pdf"), "{s}");

    typed(&mut m, "/save 3");
    assert!(
        m.notice
            .as_ref()
            .is_some_and(|n| n.error && n.text.contains("no file 3"))
    );
    typed(&mut m, "/save 1 /tmp/in here");
    let requests = m.take_requests();
    let [Request::Save { msg_id, dir, .. }] = requests.as_slice() else {
        panic!("{requests:?}");
    };
    assert_eq!(
        (msg_id.as_str(), dir.as_deref()),
        ("m1", Some("/tmp/in here"))
    );
    m.handle(Input::Progress {
        key: TransferKey::Download("m1".into()),
        done: 1024 * 1024,
        total: 2 * 1024 * 1024,
    });
    assert!(screen(&m).contains("1.0 MiB / 2.0 MiB  50% saving"));
    m.handle(Input::Saved {
        msg_id: "m1".into(),
        result: Ok("/tmp/in here/report.pdf".into()),
    });
    let s = screen(&m);
    assert!(
        s.contains("2.0 MiB / 2.0 MiB 100% saved /tmp/in here/"),
        "{s}"
    );

    typed(&mut m, "/save");
    let requests = m.take_requests();
    assert!(
        matches!(requests.as_slice(), [Request::Save { msg_id, dir: None, .. }] if msg_id == "m2"),
        "{requests:?}"
    );
    m.handle(Input::Saved {
        msg_id: "m2".into(),
        result: Err("refused (PermissionDenied)".into()),
    });
    let s = screen(&m);
    assert!(s.contains("✗ not saved: refused (PermissionDenied)"), "{s}");
    // Reports for transfers never asked for change nothing.
    m.handle(Input::Saved {
        msg_id: "nope".into(),
        result: Ok("/x".into()),
    });
    m.handle(Input::Progress {
        key: TransferKey::Upload("nope".into()),
        done: 1,
        total: 2,
    });
    assert_eq!(screen(&m), s);
}

#[test]
fn a_hostile_attachment_draws_inert_and_a_bad_blob_id_is_not_saved() {
    let mut m = model();
    let mut evil = with_file(
        "mallory",
        1,
        "\u{1b}]0;pwned\u{7}../../.bashrc\u{202e}fdp.exe",
        u64::MAX,
    );
    evil.attachments[0].media_type = "text/\u{1b}[2J".into();
    let mut bad = with_file("mallory", 2, "x", 1);
    bad.attachments[0].blob_id = "../../etc".into();
    m.handle(Input::Message(evil));
    m.handle(Input::Message(bad));
    typed(&mut m, "/msg mallory");
    let s = screen(&m);
    assert!(
        !s.contains('\u{1b}') && !s.contains('\u{7}') && !s.contains('\u{202e}'),
        "{s}"
    );
    assert!(s.contains("␛]0;pwned␇../../.bashrc�fdp.exe"), "{s}");
    m.take_requests();
    typed(&mut m, "/save 2");
    assert!(m.take_requests().is_empty());
    assert!(m.notice.as_ref().is_some_and(|n| n.error));
}
