//! Attacks on media: uploads that lie (hash, size, type), claims of bytes
//! the attacker does not have, downloads of what the attacker may not
//! read, sends that reference other users' blobs, and a flood of
//! unfinished uploads. Each is refused with a typed code, nothing is
//! stored, and bystanders chat on unharmed.

mod common;

use bytes::Bytes;
use common::{Backend, Bystanders, PATIENCE, Raw, RawSession, TestGateway, unique};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, upload_client, upload_server};
use qim_sdk::{Attachment, MessageExtras, OutgoingMessage, Transfer};

const MAX_BLOB: u64 = 1 << 20;

async fn gateway(backend: Backend) -> TestGateway {
    common::start_media(backend, |c| {
        c.media.max_blob_bytes = MAX_BLOB;
        c.media.media_types = vec!["image/*".into(), "application/octet-stream".into()];
        c.media.pending_uploads = 2;
    })
    .await
}

fn id(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(blake3::hash(bytes).as_bytes())
}

/// An upload stream of a raw session.
async fn open_upload(s: &RawSession) -> (FramedSend, FramedRecv) {
    let (send, recv) = s.raw.conn.open_bi().await.expect("open upload");
    (
        FramedSend::new(send, StreamKind::Upload, 64 * 1024),
        FramedRecv::new(recv, 64 * 1024),
    )
}

async fn say(send: &mut FramedSend, kind: upload_client::Kind) {
    send.send(&v1::UploadClient { kind: Some(kind) })
        .await
        .expect("send upload frame");
}

async fn hear(recv: &mut FramedRecv) -> upload_server::Kind {
    tokio::time::timeout(PATIENCE, recv.next::<v1::UploadServer>())
        .await
        .expect("the server answers")
        .expect("a frame")
        .and_then(|f| f.kind)
        .expect("not empty")
}

fn code_of(kind: &upload_server::Kind) -> ErrorCode {
    match kind {
        upload_server::Kind::Error(e) => ErrorCode::try_from(e.code).expect("known code"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn start(blob: Bytes, size: u64, media_type: &str) -> upload_client::Kind {
    upload_client::Kind::Start(v1::UploadStart {
        blob_id: blob,
        size,
        media_type: media_type.into(),
    })
}

fn chunk(offset: u64, data: &[u8]) -> upload_client::Kind {
    upload_client::Kind::Chunk(v1::UploadChunk {
        offset,
        data: Bytes::copy_from_slice(data),
    })
}

/// The code a `BlobInfoRequest` for `blob` is answered with (NoError when
/// the record is returned).
async fn blob_info(s: &RawSession, blob: Bytes) -> ErrorCode {
    let request = v1::rpc_request::Kind::BlobInfo(v1::BlobInfoRequest { blob_id: blob });
    match s.rpc(request).await {
        v1::rpc_response::Kind::BlobInfo(_) => ErrorCode::NoError,
        v1::rpc_response::Kind::Error(e) => ErrorCode::try_from(e.code).expect("code"),
        other => panic!("unexpected {other:?}"),
    }
}

/// The first frame of a download of `blob`: its refusal code, or NoError.
async fn download_code(s: &RawSession, blob: Bytes) -> ErrorCode {
    let (send, recv) = s.raw.conn.open_bi().await.expect("download");
    let mut send = FramedSend::new(send, StreamKind::Download, 64 * 1024);
    let mut recv = FramedRecv::new(recv, 64 * 1024);
    send.send(&v1::DownloadRequest {
        blob_id: blob,
        offset: 0,
        length: 0,
    })
    .await
    .expect("request");
    match recv
        .next::<v1::DownloadServer>()
        .await
        .expect("answer")
        .and_then(|f| f.kind)
    {
        Some(v1::download_server::Kind::Head(_)) => ErrorCode::NoError,
        Some(v1::download_server::Kind::Error(e)) => ErrorCode::try_from(e.code).expect("code"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Lying uploads: wrong hash, a chunk beyond the declared size, too large,
/// a refused type; and downloads of an unknown blob.
async fn lying_uploads_are_refused_and_keep_nothing(backend: Backend) {
    let gw = gateway(backend).await;
    let bystanders = Bystanders::start(&gw).await;
    let mallory = Raw::login(&gw, &unique("mallory"), "m", 0).await;
    assert_eq!(
        mallory.welcome.limits.as_ref().map(|l| l.max_blob_bytes),
        Some(MAX_BLOB),
        "the limit is in Welcome"
    );

    // Wrong hash: declares the hash of other bytes.
    let (real, claimed) = (vec![7u8; 5000], vec![8u8; 5000]);
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(&claimed), 5000, "image/png")).await;
    assert!(matches!(hear(&mut recv).await, upload_server::Kind::Ready(r) if r.committed == 0));
    say(&mut send, chunk(0, &real)).await;
    assert!(matches!(hear(&mut recv).await, upload_server::Kind::Committed(c) if c.offset == 5000));
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::HashMismatch);
    assert_eq!(
        blob_info(&mallory, id(&claimed)).await,
        ErrorCode::NotFound,
        "nothing published"
    );
    assert_eq!(blob_info(&mallory, id(&real)).await, ErrorCode::NotFound);
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(&claimed), 5000, "image/png")).await;
    assert!(
        matches!(hear(&mut recv).await, upload_server::Kind::Ready(r) if r.committed == 0),
        "the staged bytes were discarded"
    );
    send.reset(ErrorCode::NoError);

    // A chunk beyond the declared size.
    let small = vec![1u8; 10];
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(&small), 10, "image/png")).await;
    assert!(matches!(
        hear(&mut recv).await,
        upload_server::Kind::Ready(_)
    ));
    say(&mut send, chunk(0, &[1u8; 20])).await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::OutOfRange);
    assert_eq!(blob_info(&mallory, id(&small)).await, ErrorCode::NotFound);

    // Too large, and a refused type: answered before any byte.
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(b"big"), MAX_BLOB + 1, "image/png")).await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::BlobTooLarge);
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(b"exe"), 3, "application/x-msdownload")).await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::MediaTypeRefused);
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(
        &mut send,
        start(Bytes::from_static(b"short"), 3, "image/png"),
    )
    .await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::InvalidArgument);

    // Downloads of a blob that does not exist.
    assert_eq!(
        download_code(&mallory, id(b"nothing")).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        download_code(&mallory, Bytes::from_static(b"x")).await,
        ErrorCode::InvalidArgument
    );

    // The session survived every refusal.
    assert_eq!(
        blob_info(&mallory, id(b"nothing")).await,
        ErrorCode::NotFound
    );
    bystanders.finish().await;
}

/// Someone else's blob: not by its id, not by a claim of its bytes, not in
/// a message; and unfinished uploads are bounded.
async fn other_users_blobs_stay_theirs(backend: Backend) {
    let gw = gateway(backend).await;
    let bystanders = Bystanders::start(&gw).await;
    let (alice, bob, mallory_id) = (unique("alice"), unique("bob"), unique("mallory"));
    let a = gw.client(&alice, "phone").await;
    let picture = vec![42u8; 100_000];
    let blob = a
        .upload_bytes(picture.clone(), "image/jpeg".into(), &Transfer::new())
        .await
        .expect("alice uploads");
    let blob_bytes = id(&picture);
    let mallory = Raw::login(&gw, &mallory_id, "m", 0).await;

    // By id: refused.
    assert_eq!(
        download_code(&mallory, blob_bytes.clone()).await,
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        blob_info(&mallory, blob_bytes.clone()).await,
        ErrorCode::PermissionDenied
    );

    // Claiming the bytes without having them: the proof fails.
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(
        &mut send,
        start(blob_bytes.clone(), picture.len() as u64, "image/jpeg"),
    )
    .await;
    assert!(matches!(
        hear(&mut recv).await,
        upload_server::Kind::Challenge(_)
    ));
    say(
        &mut send,
        upload_client::Kind::Proof(v1::UploadProof {
            mac: Bytes::from_static(&[0u8; 32]),
        }),
    )
    .await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::HashMismatch);
    assert_eq!(
        download_code(&mallory, blob_bytes.clone()).await,
        ErrorCode::PermissionDenied
    );

    // In a message: refused, and bob gets nothing.
    let m = gw.client(&mallory_id, "phone2").await;
    let b = gw.client(&bob, "phone").await;
    let send_with = |attachment: Attachment| {
        m.send_with(
            OutgoingMessage {
                to: bob.clone(),
                kind: "image".into(),
                ..OutgoingMessage::default()
            },
            MessageExtras {
                attachments: vec![attachment],
                ..MessageExtras::default()
            },
        )
    };
    let refused = send_with(blob.clone())
        .await
        .expect_err("not mallory's blob");
    assert!(
        matches!(
            refused,
            qim_sdk::Error::Rejected {
                code: ErrorCode::PermissionDenied,
                ..
            }
        ),
        "{refused:?}"
    );
    let unknown = Attachment {
        blob_id: blake3::hash(b"never uploaded").to_hex().to_string(),
        ..Attachment::default()
    };
    let refused = send_with(unknown).await.expect_err("no such blob");
    assert!(
        matches!(
            refused,
            qim_sdk::Error::Rejected {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{refused:?}"
    );
    common::assert_quiet(&b, std::time::Duration::from_millis(300)).await;
    assert_eq!(
        download_code(&Raw::login(&gw, &bob, "raw", 0).await, blob_bytes).await,
        ErrorCode::PermissionDenied,
        "a refused send grants nothing"
    );

    // Unfinished uploads are bounded (media.pending_uploads = 2).
    for n in 0..2u8 {
        let (mut send, mut recv) = open_upload(&mallory).await;
        say(&mut send, start(id(&[n; 64]), 64, "image/png")).await;
        assert!(matches!(
            hear(&mut recv).await,
            upload_server::Kind::Ready(_)
        ));
        send.reset(ErrorCode::NoError);
    }
    let (mut send, mut recv) = open_upload(&mallory).await;
    say(&mut send, start(id(&[9u8; 64]), 64, "image/png")).await;
    assert_eq!(code_of(&hear(&mut recv).await), ErrorCode::QuotaExceeded);

    a.close().await;
    b.close().await;
    m.close().await;
    bystanders.finish().await;
}

on_both_backends!(
    lying_uploads_are_refused_and_keep_nothing,
    other_users_blobs_stay_theirs,
);
