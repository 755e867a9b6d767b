//! Images and files through a real gateway and real SDK clients: a 50 MiB
//! upload interrupted by an app kill (a real child process), a reconnect
//! and a network change resumes each time and arrives byte-identical; the
//! recipient downloads it with a range resume; who may read a blob; dedup.
//! On a cluster the blobs live in a real S3-compatible server, the app
//! resumes its upload on another node than the one it was killed on, and
//! the recipient downloads from the first node.

mod common;

use std::path::{Path, PathBuf};

use common::{Backend, PATIENCE, TestGateway, unique};
use qim_sdk::{
    Attachment, Client, ErrorCode, GroupChange, MessageExtras, OutgoingMessage, Transfer,
};
use rand::{RngCore as _, SeedableRng as _};
use tokio::io::AsyncBufReadExt as _;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 50 * MIB;
/// Set in the child process that is killed mid-upload.
const CHILD: &str = "QIM_MEDIA_CHILD";

/// A file of `len` pseudo-random bytes in `dir`.
fn random_file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; usize::try_from(len).expect("fits")];
    rng.fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).expect("write test file");
    path
}

fn hex_of(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).expect("read"))
        .to_hex()
        .to_string()
}

fn rejected(e: &qim_sdk::Error) -> ErrorCode {
    match e {
        qim_sdk::Error::Rejected { code, .. } => *code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

/// The child: uploads the file named in the environment and prints each
/// committed offset until it is killed.
async fn child_upload() {
    let var = |n: &str| std::env::var(n).expect("child environment");
    let mut config = qim_sdk::ClientConfig::new(
        var("QIM_MEDIA_ADDR"),
        var("QIM_MEDIA_TOKEN"),
        "phone",
        std::fs::read(var("QIM_MEDIA_CA")).expect("ca"),
    );
    config.data_dir = Some(var("QIM_MEDIA_DATA").into());
    let client = Client::connect(config).await.expect("child connects");
    let transfer = Transfer::new();
    let mut progress = transfer.watch();
    tokio::spawn(async move {
        let mut last = 0;
        while progress.changed().await.is_ok() {
            let done = progress.borrow().done;
            if done != last {
                last = done;
                println!("committed {done}");
            }
        }
    });
    let result = client
        .upload_file(
            var("QIM_MEDIA_FILE"),
            "application/octet-stream".into(),
            &transfer,
        )
        .await;
    println!("finished {result:?}");
}

/// Starts this test again in a child process that uploads `file` as
/// `user`; returns the child and the committed offset it reported last
/// before it was killed (with SIGKILL) at `kill_after` bytes or more.
async fn upload_in_child_and_kill(
    gw: &TestGateway,
    test: &str,
    user: &str,
    data_dir: &Path,
    file: &Path,
    kill_after: u64,
) -> u64 {
    let ca = gw.dir.path().join("child-ca.pem");
    std::fs::write(&ca, &gw.ca_pem).expect("ca file");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("QIM_MEDIA_ADDR", gw.addr.to_string())
        .env("QIM_MEDIA_TOKEN", gw.token(user))
        .env("QIM_MEDIA_CA", &ca)
        .env("QIM_MEDIA_DATA", data_dir)
        .env("QIM_MEDIA_FILE", file)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child uploader");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let committed = tokio::time::timeout(PATIENCE * 3, async {
        while let Some(line) = lines.next_line().await.expect("child output") {
            if let Some(n) = line.strip_prefix("committed ") {
                let n: u64 = n.parse().expect("offset");
                if n >= kill_after {
                    return n;
                }
            }
            assert!(
                !line.starts_with("finished"),
                "the child finished before it was killed: {line}"
            );
        }
        panic!("the child ended without reaching {kill_after} bytes");
    })
    .await
    .expect("the child uploads");
    child.kill().await.expect("kill the child");
    committed
}

/// What an upload's progress showed: each (done, sent) seen.
async fn watch_and_interrupt(
    client: &Client,
    transfer: &Transfer,
    actions: Vec<(u64, &'static str)>,
) -> Vec<(u64, u64, usize)> {
    // (done, sent, interruptions so far)
    let mut samples = Vec::new();
    let mut progress = transfer.watch();
    let mut pending = actions.into_iter().peekable();
    let mut done_actions = 0;
    while progress.changed().await.is_ok() {
        let p = *progress.borrow();
        samples.push((p.done, p.sent, done_actions));
        if let Some((at, what)) = pending.peek().copied() {
            if p.done >= at {
                match what {
                    "reconnect" => client.reconnect().await.expect("reconnect"),
                    "network" => client.network_changed().expect("rebind"),
                    other => panic!("unknown action {other}"),
                }
                pending.next();
                done_actions += 1;
            }
        }
        if p.total > 0 && p.done == p.total {
            break;
        }
    }
    assert!(pending.next().is_none(), "every interruption happened");
    samples
}

async fn upload_resumes_after_kill_reconnect_and_network_change(backend: Backend) {
    let test = match backend {
        Backend::Embedded => "embedded::upload_resumes_after_kill_reconnect_and_network_change",
        Backend::Cluster => "cluster::upload_resumes_after_kill_reconnect_and_network_change",
    };
    if std::env::var_os(CHILD).is_some() {
        return child_upload().await;
    }
    let gw = common::start_media(backend, |_| {}).await;
    let (alice, bob, carol, dave) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
    );
    let files = tempfile::tempdir().expect("dir");
    let file = random_file(files.path(), "video.bin", SIZE, 7);
    let blob = hex_of(&file);
    let app_data = files.path().join("alice-app");

    // 1. The app is killed mid-upload.
    let killed_at = upload_in_child_and_kill(&gw, test, &alice, &app_data, &file, 4 * MIB).await;
    assert!(killed_at < SIZE, "the kill interrupted the upload");

    // 2. The app starts again: the journal lists the upload, which goes on
    // from the server's committed offset, through a reconnect and a
    // network change. On a cluster it goes on at another node, which finds
    // the staged bytes in the object store.
    let peer = match backend {
        Backend::Cluster => Some(common::start_peer(&gw).await),
        Backend::Embedded => None,
    };
    let resume_at = peer.as_ref().unwrap_or(&gw);
    let mut config = resume_at.client_config(&alice, "phone");
    config.data_dir = Some(app_data.clone());
    let a = Client::connect(config).await.expect("alice again");
    let pending = a.pending_uploads().expect("journal");
    assert_eq!(pending.len(), 1, "the killed upload is in the journal");
    assert_eq!(pending[0].blob_id, blob);
    let transfer = Transfer::new();
    let uploaded = {
        let upload = a.resume_upload(pending[0].clone(), &transfer);
        let watch = watch_and_interrupt(
            &a,
            &transfer,
            vec![
                (killed_at + 10 * MIB, "reconnect"),
                (killed_at + 25 * MIB, "network"),
            ],
        );
        tokio::pin!(upload, watch);
        let mut samples = None;
        let uploaded = tokio::time::timeout(PATIENCE * 6, async {
            loop {
                tokio::select! {
                    uploaded = &mut upload => break uploaded,
                    s = &mut watch, if samples.is_none() => samples = Some(s),
                }
            }
        })
        .await
        .expect("the upload finishes")
        .expect("the upload arrives");
        let samples = match samples {
            Some(samples) => samples,
            None => tokio::time::timeout(PATIENCE, watch)
                .await
                .expect("the progress ends"),
        };
        (uploaded, samples)
    };
    let (uploaded, samples) = uploaded;
    assert_eq!(
        uploaded.blob_id, blob,
        "the server's blob is the file's hash"
    );
    assert_eq!(uploaded.size, SIZE);
    let first_sent = samples
        .iter()
        .map(|s| s.1)
        .find(|s| *s > 0)
        .expect("progress");
    assert!(
        first_sent >= killed_at,
        "after the restart the upload went on from {killed_at}, not from the start (first sent {first_sent})"
    );
    let after_reconnect = samples
        .iter()
        .filter(|s| s.2 >= 1)
        .map(|s| s.1)
        .min()
        .expect("samples after the reconnect");
    assert!(
        after_reconnect > killed_at + 5 * MIB,
        "after the reconnect the upload went on (sent from {after_reconnect})"
    );
    assert!(a.stats().sessions >= 2, "the reconnect made a new session");
    assert!(
        a.pending_uploads().expect("journal").is_empty(),
        "the journal forgets a finished upload"
    );

    // 3. Bob gets it in a message, and downloads it in two parts: a range,
    // then the rest continued from the partial file.
    let b = gw.client(&bob, "phone").await;
    let attachment = Attachment {
        name: "video.bin".into(),
        ..uploaded.clone()
    };
    a.send_with(
        OutgoingMessage {
            to: bob.clone(),
            kind: "file".into(),
            body: b"see this".to_vec(),
            client_msg_id: None,
        },
        MessageExtras {
            attachments: vec![attachment],
            ..MessageExtras::default()
        },
    )
    .await
    .expect("the message with the attachment is stored");
    let got = b.next_message_timeout(PATIENCE).await.expect("bob gets it");
    assert_eq!(got.attachments.len(), 1);
    assert_eq!(got.attachments[0].blob_id, blob);
    assert_eq!(got.attachments[0].size, SIZE);
    assert_eq!(got.attachments[0].media_type, "application/octet-stream");
    let target = files.path().join("bob-copy.bin");
    let head = b
        .download_range(blob.clone(), 0, 7 * MIB + 3)
        .await
        .expect("bob reads a range");
    std::fs::write(&target, &head).expect("partial file");
    let dl = Transfer::new();
    let mut dl_watch = dl.watch();
    // The smallest progress seen: a download that started over would show
    // offsets below the partial file's length.
    let least_done = tokio::spawn(async move {
        let mut least = u64::MAX;
        while dl_watch.changed().await.is_ok() {
            least = least.min(dl_watch.borrow().done);
        }
        least
    });
    b.download(blob.clone(), target.to_string_lossy().into_owned(), &dl)
        .await
        .expect("bob's download finishes");
    drop(dl);
    assert!(
        least_done.await.expect("watch") >= 7 * MIB + 3,
        "the download continued from the partial file"
    );
    assert!(
        std::fs::read(&target).expect("copy") == std::fs::read(&file).expect("original"),
        "bob's copy is byte-identical"
    );

    // 4. Carol is in no conversation that carries it.
    let c = gw.client(&carol, "phone").await;
    let refused = c
        .download_range(blob.clone(), 0, 10)
        .await
        .expect_err("carol may not read it");
    assert_eq!(rejected(&refused), ErrorCode::PermissionDenied);

    // 5. Dave has the same bytes: one round trip and a proof, no transfer.
    let d = gw.client(&dave, "phone").await;
    let again = Transfer::new();
    let dedup = d
        .upload_file(
            file.to_string_lossy().into_owned(),
            "application/octet-stream".into(),
            &again,
        )
        .await
        .expect("dave's upload of the same bytes");
    assert_eq!(dedup.blob_id, blob);
    assert_eq!(again.progress().sent, 0, "no byte was sent again");
    // Alice uploading it again: done at once.
    let once_more = Transfer::new();
    a.upload_file(
        file.to_string_lossy().into_owned(),
        "application/octet-stream".into(),
        &once_more,
    )
    .await
    .expect("alice again");
    assert_eq!(once_more.progress().sent, 0);

    for client in [a, b, c, d] {
        client.close().await;
    }
}

async fn group_members_read_while_they_are_members(backend: Backend) {
    let gw = common::start_media(backend, |_| {}).await;
    let (owner, member, group) = (unique("owner"), unique("member"), unique("g"));
    let o = gw.client(&owner, "phone").await;
    let m = gw.client(&member, "phone").await;
    m.group_adds(Some(qim_sdk::GroupAdds::Anyone))
        .await
        .expect("settings");
    o.create_group(group.clone(), "g".into(), vec![member.clone()])
        .await
        .expect("group");
    let picture = b"\x89PNG not really, but bytes".to_vec();
    let blob = o
        .upload_bytes(picture.clone(), "image/png".into(), &Transfer::new())
        .await
        .expect("upload");
    o.send_group_with(
        group.clone(),
        OutgoingMessage {
            kind: "image".into(),
            body: Vec::new(),
            ..OutgoingMessage::default()
        },
        MessageExtras {
            attachments: vec![blob.clone()],
            ..MessageExtras::default()
        },
    )
    .await
    .expect("group message with a picture");
    let got = m
        .next_message_timeout(PATIENCE)
        .await
        .expect("member gets it");
    assert_eq!(got.attachments[0].blob_id, blob.blob_id);
    assert_eq!(
        m.download_range(blob.blob_id.clone(), 0, 0)
            .await
            .expect("a member reads it"),
        picture
    );
    m.change_group(group.clone(), GroupChange::Leave)
        .await
        .expect("leave");
    let refused = m
        .download_range(blob.blob_id.clone(), 0, 0)
        .await
        .expect_err("a former member may not read it");
    assert_eq!(rejected(&refused), ErrorCode::PermissionDenied);
    // Forwarding: the member cannot share what they may no longer read.
    let forward = m
        .send_with(
            OutgoingMessage {
                to: owner.clone(),
                kind: "image".into(),
                ..OutgoingMessage::default()
            },
            MessageExtras {
                attachments: vec![blob.clone()],
                ..MessageExtras::default()
            },
        )
        .await
        .expect_err("no forwarding of a blob one cannot read");
    assert_eq!(rejected(&forward), ErrorCode::PermissionDenied);
    // A cancelled transfer ends with Cancelled.
    let cancelled = Transfer::new();
    cancelled.cancel();
    let e = o
        .upload_bytes(vec![1; 1000], "image/png".into(), &cancelled)
        .await
        .expect_err("cancelled");
    assert_eq!(e, qim_sdk::Error::Cancelled);
    o.close().await;
    m.close().await;
}

/// On TLS over TCP an upload goes on through two reconnects (each a new TCP
/// connection, the old one's stream cut mid-frame) and a network change:
/// the server reads the cut stream as abandoned, not as a malformed frame
/// that would end the session, and the upload completes byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_tcp_goes_on_through_reconnects_and_a_network_change() {
    let gw = common::start_media(Backend::Embedded, |_| {}).await;
    let alice = unique("alice");
    let files = tempfile::tempdir().expect("dir");
    let len = 12 * MIB;
    let file = random_file(files.path(), "tcp.bin", len, 11);
    let mut config = gw.client_config(&alice, "laptop");
    config.transport = qim_sdk::TransportPolicy::TcpOnly;
    let a = Client::connect(config).await.expect("alice over tcp");
    assert_eq!(a.transport(), Some(qim_sdk::Transport::Tcp));
    let transfer = Transfer::new();
    let upload = a.upload_file(
        file.display().to_string(),
        "application/octet-stream".into(),
        &transfer,
    );
    let watch = watch_and_interrupt(
        &a,
        &transfer,
        vec![
            (3 * MIB, "reconnect"),
            (6 * MIB, "network"),
            (9 * MIB, "reconnect"),
        ],
    );
    let (uploaded, samples) =
        tokio::time::timeout(PATIENCE * 4, async { tokio::join!(upload, watch) })
            .await
            .expect("the upload finishes in time");
    let uploaded = uploaded.expect("the upload arrives");
    assert_eq!(uploaded.blob_id, hex_of(&file), "byte-identical");
    assert_eq!(uploaded.size, len);
    assert_eq!(
        samples.last().map(|s| s.2),
        Some(3),
        "every interruption happened during the upload"
    );
    // Each reconnect made a new session; the network change probed the
    // TCP connection, which on loopback keeps working.
    assert!(a.stats().sessions >= 3, "each reconnect made a new session");
    assert_eq!(a.transport(), Some(qim_sdk::Transport::Tcp));
    a.close().await;
    gw.stop().await;
}

on_both_backends!(
    upload_resumes_after_kill_reconnect_and_network_change,
    group_members_read_while_they_are_members,
);
