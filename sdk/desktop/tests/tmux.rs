//! End to end: a real gateway, and two real `qim-desktop` processes in
//! tmux (keys in with send-keys, the screen out with capture-pane). Alice
//! and Bob chat both ways; Bob's unread count goes up and clears when he
//! reads; Alice's recall shows on Bob's side; Bob quits and starts again on
//! the same data directory, resumes where he was and finds his history,
//! and what came meanwhile arrives once. Then the gateway goes away: the
//! status bar counts down to the next attempt, keys still work, and what
//! Alice writes waits in the outbox until the gateway is back. Last, a
//! group: created, an invitation answered with `/join`, a message in it,
//! the members with their roles. Then files: a send of a missing file
//! fails and `/retry` sends it once it is there; Alice sends a few hundred
//! KiB with a progress bar, Bob saves it with one and gets the same bytes;
//! a file a hostile sender named `../../.bashrc` is saved as `bashrc` in
//! Bob's downloads folder, and nowhere else.
//!
//! A second client on a data directory in use refuses to start.
//!
//! The tmux server runs on a socket of its own and is killed at the end,
//! also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use qim_gateway::auth::unix_now;
use qim_gateway::config::Config;

/// How long one expected change of a screen may take.
const PATIENCE: Duration = Duration::from_secs(15);

/// A tmux server of this test's own; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let socket = format!("qim-desktop-test-{}-{}", std::process::id(), unix_now());
        Tmux { socket }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Starts `program` in a new session `name` of 110x30 cells.
    fn start(&self, name: &str, program: &[String]) {
        let mut args = vec!["new-session", "-d", "-s", name, "-x", "110", "-y", "30"];
        let program: Vec<&str> = program.iter().map(String::as_str).collect();
        args.extend(program);
        let out = self.cmd(&args);
        assert!(out.status.success(), "tmux new-session: {out:?}");
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, name: &str, text: &str) {
        assert!(
            self.cmd(&["send-keys", "-t", name, "-l", text])
                .status
                .success()
        );
        self.key(name, "Enter");
    }

    /// Presses one key (tmux key name: `Enter`, `C-n`, `Tab`…).
    fn key(&self, name: &str, key: &str) {
        assert!(self.cmd(&["send-keys", "-t", name, key]).status.success());
    }

    /// The screen of session `name` now.
    fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    fn alive(&self, name: &str) -> bool {
        self.cmd(&["has-session", "-t", name]).status.success()
    }

    /// Waits until `check` holds for the screen of `name`; panics with the
    /// screen after [`PATIENCE`].
    fn wait(&self, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen(name);
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} not seen within {PATIENCE:?}; the screen:\n{screen}"
            );
            // Why a sleep: the screen belongs to another process that
            // announces nothing; this is the poll interval of reading it.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until session `name` has ended.
    fn wait_gone(&self, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.alive(name) {
            assert!(
                Instant::now() < deadline,
                "{name} did not quit; the screen:\n{}",
                self.screen(name)
            );
            // Why a sleep: tmux signals no exit; the poll interval.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        // tmux leaves its socket file behind: $TMUX_TMPDIR/tmux-<uid>/<name>.
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(me) = std::fs::metadata("/proc/self") {
            let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
            let _ = std::fs::remove_file(
                PathBuf::from(dir)
                    .join(format!("tmux-{}", me.uid()))
                    .join(&self.socket),
            );
        }
    }
}

/// The command line of a client.
fn client(gw: &Gateway, data: &Path, auth: &[String]) -> Vec<String> {
    // Nothing of the environment the test runs in: no QIM_TOKEN, and an
    // empty config file instead of the user's.
    let config = data.with_extension("toml");
    std::fs::write(&config, "").expect("write the config file");
    let mut args = vec![
        "env".to_owned(),
        "-u".into(),
        "QIM_TOKEN".into(),
        env!("CARGO_BIN_EXE_qim-desktop").to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--server".into(),
        gw.addr.clone(),
        "--ca".into(),
        gw.ca.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    args.extend(auth.iter().cloned());
    args
}

struct Gateway {
    addr: String,
    ca: PathBuf,
    secret: PathBuf,
    key: qim_gateway::auth::TokenKey,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A gateway on the data in `dir`, at `listen` (port 0: any).
async fn gateway(dir: &Path, listen: std::net::SocketAddr) -> Gateway {
    let mut config = Config::for_tests(dir);
    config.server.listen = listen;
    let gw = qim_gateway::Gateway::bind(config)
        .await
        .expect("bind gateway");
    let info = gw.info().clone();
    let key = gw.token_key();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = gw
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    Gateway {
        addr: info.quic_addr.to_string(),
        ca: info.dev_ca.expect("development CA"),
        secret: info.dev_secret.unwrap_or_else(|| dir.join("token-secret")),
        key,
        stop: Some(stop),
        task,
    }
}

impl Gateway {
    /// Shuts down gracefully (clients are told to go) and waits until done.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task");
    }
}

/// The `inbox #N` of a status bar.
fn inbox_seq(screen: &str) -> u64 {
    let at = screen
        .find("inbox #")
        .expect("status bar shows the inbox seq")
        + "inbox #".len();
    screen[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

/// The chat pane of a screen (right of the 30-column list).
fn chat_pane(screen: &str) -> String {
    screen
        .lines()
        .map(|l| l.chars().skip(30).collect::<String>() + "\n")
        .collect()
}

/// The row of the conversation list naming `peer` (the list is the left
/// 30 columns).
fn list_row(screen: &str, peer: &str) -> String {
    screen
        .lines()
        .map(|l| l.chars().take(30).collect::<String>())
        .find(|l| l.contains(&format!(" {peer} ")) || l.contains(&format!(" {peer}\u{a0}")))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_desktop_clients_chat_recall_resume_after_a_restart_and_ride_out_an_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_dir = dir.path().join("gateway");
    let gw = gateway(&gw_dir, ([127, 0, 0, 1], 0).into()).await;
    let tmux = Tmux::new();
    let alice_data = dir.path().join("alice");
    let bob_data = dir.path().join("bob");
    // Alice mints her token from the development secret; Bob is given one.
    let alice_auth = vec![
        "--user".to_owned(),
        "alice".to_owned(),
        "--dev-secret".to_owned(),
        gw.secret.display().to_string(),
    ];
    let bob_token = gw.key.mint("bob", unix_now() + 3600).expect("mint");
    let bob_auth = vec!["--token".to_owned(), bob_token];
    let connected = |s: &str| s.contains("connected over QUIC");

    tmux.start("alice", &client(&gw, &alice_data, &alice_auth));
    tmux.start("bob", &client(&gw, &bob_data, &bob_auth));
    tmux.wait("alice", "connected", connected);
    tmux.wait("bob", "connected", connected);

    // A second client on Alice's data directory refuses to start.
    let second = client(&gw, &alice_data, &alice_auth);
    let out = Command::new(&second[0])
        .args(&second[1..])
        .output()
        .expect("the second client runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("in use by another qim-desktop"),
        "{out:?}"
    );

    // Alice writes twice; Bob's list counts two unread.
    tmux.type_line("alice", "/msg bob hello bob");
    tmux.wait("alice", "her message stored", |s| {
        s.contains("you: hello bob") && s.contains("✓")
    });
    tmux.wait("bob", "one unread from alice", |s| {
        list_row(s, "alice").contains("[1]")
    });
    tmux.type_line("alice", "second one");
    let screen = tmux.wait("bob", "two unread from alice", |s| {
        list_row(s, "alice").contains("[2]")
    });
    assert!(
        screen.contains("alice: second one"),
        "the list previews the newest:\n{screen}"
    );

    // Bob opens the chat: both messages, the count gone; Alice sees "read".
    tmux.key("bob", "C-n");
    tmux.wait("bob", "the chat with alice, read", |s| {
        s.contains("alice: hello bob")
            && s.contains("alice: second one")
            && !list_row(s, "alice").contains('[')
    });
    tmux.wait("alice", "a read receipt", |s| s.contains("✓✓ read"));

    // Bob answers; Alice has the chat open and sees it.
    tmux.type_line("bob", "hi alice");
    tmux.wait("alice", "bob's answer", |s| s.contains("bob: hi alice"));

    // Alice recalls her last message; Bob's pane says so.
    tmux.type_line("alice", "/recall");
    let screen = tmux.wait("bob", "the recall", |s| {
        s.contains("message recalled") && !s.contains("second one")
    });
    assert!(screen.contains("alice: hello bob"), "{screen}");

    // Bob quits; Alice writes meanwhile; Bob starts again on his data.
    let before = tmux.wait("bob", "the inbox position", |s| inbox_seq(s) > 0);
    let seq = inbox_seq(&before);
    tmux.type_line("bob", "/quit");
    tmux.wait_gone("bob");
    let saved: u64 = std::fs::read_to_string(bob_data.join("resume"))
        .expect("resume point saved")
        .trim()
        .parse()
        .expect("a seq");
    assert!(saved >= seq, "saved {saved}, shown {seq}");
    tmux.type_line("alice", "while you were away");
    tmux.wait("alice", "stored", |s| {
        s.contains("you: while you were away")
    });

    tmux.start("bob", &client(&gw, &bob_data, &bob_auth));
    tmux.wait("bob", "resumed where he was", |s| {
        s.contains(&format!("resumed at inbox #{saved}"))
    });
    tmux.wait("bob", "reconnected, one new unread", |s| {
        connected(s) && list_row(s, "alice").contains("[1]")
    });
    tmux.key("bob", "C-n");
    let screen = tmux.wait("bob", "his history and the new message", |s| {
        s.contains("alice: hello bob")
            && s.contains("you: hi alice")
            && s.contains("message recalled")
            && s.contains("alice: while you were away")
    });
    assert_eq!(
        chat_pane(&screen).matches("while you were away").count(),
        1,
        "the message that came meanwhile shows once:\n{screen}"
    );
    assert!(
        !screen.contains("second one"),
        "the recall holds:\n{screen}"
    );

    // The gateway goes away: the UI says so, counts down to the next
    // attempt, still answers keys, and keeps what Alice writes meanwhile in
    // the outbox; when the gateway is back, it goes out.
    let addr: std::net::SocketAddr = gw.addr.parse().expect("address");
    gw.stop().await;
    tmux.wait("alice", "reconnecting with the next attempt time", |s| {
        s.contains("↻ reconnecting in ")
    });
    tmux.type_line("alice", "/help");
    tmux.wait("alice", "help while offline", |s| {
        s.contains("(Esc closes)")
    });
    tmux.key("alice", "Escape");
    tmux.wait("alice", "help closed", |s| !s.contains("(Esc closes)"));
    tmux.type_line("alice", "written offline");
    let offline = tmux.wait("alice", "queued", |s| {
        s.contains("you: written offline  · sending") && !s.contains("(Esc closes)")
    });
    if std::env::var_os("QIM_DESKTOP_SHOW").is_some() {
        // The text captures in README.md and docs/desktop.md come from here.
        println!("{offline}\n{screen}");
    }
    let gw = gateway(&gw_dir, addr).await;
    // Back over either transport: on a busy machine the first attempt
    // over QUIC may time out, and the client then takes TCP until QUIC
    // answers again (the fallback's subject is elsewhere).
    tmux.wait("alice", "back, and the queued message sent", |s| {
        s.contains("● connected over ") && s.contains("you: written offline  ✓")
    });
    tmux.wait("bob", "the message written offline", |s| {
        s.contains("alice: written offline")
    });

    // A group: Alice creates it and invites Bob (not her friend: he is
    // invited, not added); he joins; both write in it; roles are listed.
    tmux.type_line("alice", "/create team The Team");
    tmux.wait("alice", "the group made", |s| s.contains("created #team"));
    tmux.type_line("alice", "/invite bob");
    tmux.wait("alice", "bob invited", |s| {
        s.contains("invited bob to #team")
    });
    tmux.wait("bob", "the invitation", |s| {
        s.contains("alice invites you to #team (The Team)")
    });
    tmux.type_line("bob", "/join team");
    tmux.wait("bob", "in the group", |s| s.contains("you are in #team"));
    tmux.type_line("alice", "welcome @bob");
    tmux.wait("bob", "the group message, mentioning him", |s| {
        chat_pane(s).contains("alice: welcome @bob")
    });
    tmux.type_line("bob", "/members");
    tmux.wait("bob", "the members and roles", |s| {
        s.contains("alice owner") && s.contains("bob member")
    });
    tmux.key("bob", "Escape");
    tmux.wait("bob", "the list closed", |s| !s.contains("(Esc closes)"));

    files(&tmux, &gw, dir.path(), &bob_data).await;

    tmux.type_line("bob", "/quit");
    tmux.type_line("alice", "/quit");
    tmux.wait_gone("bob");
    tmux.wait_gone("alice");
}

/// Bytes that do not compress and do not repeat: `n` of a simple
/// generator's output.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Files between Alice and Bob (both running), and a hostile sender's
/// file name.
async fn files(tmux: &Tmux, gw: &Gateway, dir: &Path, bob_data: &Path) {
    tmux.type_line("alice", "/msg bob");
    tmux.type_line("bob", "/msg alice");

    // A file that is not there fails, with the reason; /retry sends it
    // once it is.
    let later = dir.join("later.txt");
    tmux.type_line("alice", &format!("/send-file {}", later.display()));
    tmux.wait("alice", "the failed upload", |s| {
        s.contains("✗ failed") && s.contains("upload failed") && s.contains("/retry")
    });
    std::fs::write(&later, "written later\n").expect("write the file");
    tmux.type_line("alice", "/retry");
    tmux.wait("alice", "the retried file sent", |s| {
        chat_pane(s).contains("[f1] later.txt · 14 B · text/plain") && s.contains("✓")
    });
    tmux.wait("bob", "the retried file", |s| {
        chat_pane(s).contains("later.txt · 14 B · text/plain")
    });

    // A few hundred KiB with a progress bar; Bob saves it with one.
    let bytes = noise(300 * 1024, 7);
    let report = dir.join("report.bin");
    std::fs::write(&report, &bytes).expect("write the file");
    tmux.type_line("alice", &format!("/send-file {}", report.display()));
    let sent = tmux.wait("alice", "the upload bar at 100% and the file sent", |s| {
        s.contains("300.0 KiB / 300.0 KiB 100% uploaded")
            && s.contains("report.bin · 300.0 KiB · application/octet-stream")
    });
    tmux.wait("bob", "the file, named with size and type", |s| {
        chat_pane(s).contains("[f2] report.bin · 300.0 KiB · application/octet-stream")
    });
    tmux.type_line("bob", "/save 2");
    let saved = tmux.wait("bob", "the download bar at 100%, saved", |s| {
        s.contains("300.0 KiB / 300.0 KiB 100% saved")
    });
    assert_eq!(
        std::fs::read(bob_data.join("downloads/report.bin")).expect("saved file"),
        bytes,
        "the saved file holds the sent bytes"
    );
    if std::env::var_os("QIM_DESKTOP_SHOW").is_some() {
        println!("{sent}\n{saved}");
    }

    // A hostile sender names a file `../../.bashrc`.
    let token = gw.key.mint("mallory", unix_now() + 3600).expect("mint");
    let ca = std::fs::read(&gw.ca).expect("the development CA");
    let mallory = qim_sdk::Client::start(qim_sdk::ClientConfig::new(
        gw.addr.clone(),
        token,
        "mallory-laptop",
        ca,
    ))
    .await
    .expect("mallory connects");
    let transfer = qim_sdk::Transfer::new();
    let mut attachment = tokio::time::timeout(
        PATIENCE,
        mallory.upload_bytes(b"echo owned\n".to_vec(), "text/plain".into(), &transfer),
    )
    .await
    .expect("upload in time")
    .expect("upload");
    attachment.name = "../../.bashrc".into();
    let message = qim_sdk::OutgoingMessage {
        to: "bob".into(),
        kind: "file".into(),
        ..Default::default()
    };
    let extras = qim_sdk::MessageExtras {
        attachments: vec![attachment],
        ..Default::default()
    };
    tokio::time::timeout(PATIENCE, mallory.send_with(message, extras))
        .await
        .expect("send in time")
        .expect("send");
    tmux.type_line("bob", "/msg mallory");
    tmux.wait("bob", "mallory's file", |s| {
        chat_pane(s).contains("[f1] ../../.bashrc · 11 B · text/plain")
    });
    tmux.type_line("bob", "/save last");
    tmux.wait("bob", "saved under a safe name", |s| {
        s.contains("100% saved") && s.contains("downloads/bashrc")
    });
    assert_eq!(
        std::fs::read(bob_data.join("downloads/bashrc")).expect("saved file"),
        b"echo owned\n"
    );
    for escaped in [
        dir.join(".bashrc"),
        bob_data.join(".bashrc"),
        bob_data.join("downloads/.bashrc"),
    ] {
        assert!(!escaped.exists(), "{} was written", escaped.display());
    }
    let _ = tokio::time::timeout(PATIENCE, mallory.close()).await;
}
