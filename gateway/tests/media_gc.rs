//! Blobs no message carries any more are collected, on both backends:
//! bytes (files, or objects in the S3-compatible server) and thumbnail
//! gone, downloads refused with NOT_FOUND; a blob still carried by any
//! message stays, whatever another user does to their own copy.

mod common;

use std::io::Cursor;
use std::sync::Arc;

use common::{ADMIN_SECRET, Backend, PATIENCE, TestGateway, http_request, unique};
use qim_proto::v1::ErrorCode;
use qim_sdk::{Attachment, Client, MessageExtras, OutgoingMessage, Transfer};
use qim_storage::media::{BlobBytes, BlobId};

/// The grace after a blob's last use; a collection pass runs every second.
const GRACE_MS: u64 = 500;

async fn gateway(backend: Backend, sync_sent: bool) -> TestGateway {
    common::start_media(backend, |c| {
        c.media.collect_grace_ms = GRACE_MS;
        c.im.sync_sent = sync_sent;
    })
    .await
}

/// The gateway's blob bytes, opened as the gateway opens them.
fn bytes_of(gw: &TestGateway) -> Arc<dyn BlobBytes> {
    let media = &gw.config.media;
    match media.s3_options().expect("s3 options") {
        Some(options) => Arc::new(qim_storage::media::s3::S3Blobs::new(&options).expect("s3")),
        None => {
            let dir = media
                .blob_dir
                .clone()
                .unwrap_or_else(|| gw.config.server.data_dir.join("store").join("media"));
            Arc::new(qim_storage::media::files::FileBlobs::open(&dir).expect("files"))
        }
    }
}

fn id_of(hex: &str) -> BlobId {
    BlobId(*blake3::Hash::from_hex(hex).expect("hex id").as_bytes())
}

fn png(side: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(side, side, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, seed, 255])
    });
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a test png");
    out.into_inner()
}

fn rejected(e: &qim_sdk::Error) -> ErrorCode {
    match e {
        qim_sdk::Error::Rejected { code, .. } => *code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

async fn send(from: &Client, to: &str, blob: &Attachment) -> qim_sdk::SendReceipt {
    from.send_with(
        OutgoingMessage {
            to: to.to_owned(),
            kind: "image".into(),
            ..OutgoingMessage::default()
        },
        MessageExtras {
            attachments: vec![blob.clone()],
            ..MessageExtras::default()
        },
    )
    .await
    .expect("a message carrying the blob")
}

/// Waits until `who`'s download of `blob` is refused as NOT_FOUND (the
/// collection runs on the gateway's own timer and tells no client).
async fn until_collected(who: &Client, blob: &str) {
    common::poll_until("the blob's collection", || async {
        match who.download_range(blob.to_owned(), 0, 0).await {
            Err(e) if rejected(&e) == ErrorCode::NotFound => Some(()),
            Ok(_) => None,
            Err(e) => panic!("unexpected refusal while waiting: {e:?}"),
        }
    })
    .await;
}

/// A sweep pass ran after now: a blob uploaded now and never sent (held
/// later than every blob used before it) is collected.
async fn a_pass_ran(who: &Client, seed: u8) {
    let canary = who
        .upload_bytes(
            vec![seed; 100],
            "application/octet-stream".into(),
            &Transfer::new(),
        )
        .await
        .expect("canary upload");
    until_collected(who, &canary.blob_id).await;
}

/// A blob sent in two conversations survives the recall of one message
/// and the attempts of a recipient (deleting their copy, recalling the
/// sender's message); it is collected, thumbnail included, once the
/// second message is recalled.
async fn a_blob_goes_with_the_last_message_carrying_it(backend: Backend) {
    let gw = gateway(backend, false).await;
    let bytes = bytes_of(&gw);
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let a = gw.client(&alice, "phone").await;
    let b = gw.client(&bob, "phone").await;
    let c = gw.client(&carol, "phone").await;
    let picture = png(64, 7);
    let blob = a
        .upload_bytes(picture.clone(), "image/png".into(), &Transfer::new())
        .await
        .expect("upload");
    let to_bob = send(&a, &bob, &blob).await;
    let to_carol = send(&a, &carol, &blob).await;
    let got = b.next_message_timeout(PATIENCE).await.expect("bob gets it");
    let thumb = got.attachments[0]
        .thumbnail_blob_id
        .clone()
        .expect("the server made a thumbnail");
    c.next_message_timeout(PATIENCE)
        .await
        .expect("carol gets it");
    let (id, thumb_id) = (id_of(&blob.blob_id), id_of(&thumb));
    assert!(bytes.has(&id).await.expect("has") && bytes.has(&thumb_id).await.expect("has"));

    // Bob can only drop his own copy; the sender's recall is not his.
    b.delete_for_me(got.seq).await.expect("delete for me");
    let refused = b
        .recall(to_carol.msg_id.clone())
        .await
        .expect_err("only the sender recalls");
    assert_eq!(rejected(&refused), ErrorCode::PermissionDenied);
    a.recall(to_bob.msg_id.clone()).await.expect("recall one");
    a_pass_ran(&a, 1).await;
    assert_eq!(
        c.download_range(blob.blob_id.clone(), 0, 0)
            .await
            .expect("still carried by the message to carol"),
        picture
    );
    assert!(bytes.has(&id).await.expect("has"), "the bytes stay");

    a.recall(to_carol.msg_id.clone()).await.expect("recall two");
    until_collected(&c, &blob.blob_id).await;
    let e = a
        .download_range(blob.blob_id.clone(), 0, 0)
        .await
        .expect_err("gone for its uploader too");
    assert_eq!(rejected(&e), ErrorCode::NotFound);
    let e = c
        .download_range(thumb.clone(), 0, 0)
        .await
        .expect_err("the thumbnail went with it");
    assert_eq!(rejected(&e), ErrorCode::NotFound);
    assert!(!bytes.has(&id).await.expect("has"), "the bytes are gone");
    assert!(
        !bytes.has(&thumb_id).await.expect("has"),
        "the thumbnail's bytes are gone"
    );
    // A send of the collected blob is refused as not found.
    let e = a
        .send_with(
            OutgoingMessage {
                to: carol.clone(),
                kind: "image".into(),
                ..OutgoingMessage::default()
            },
            MessageExtras {
                attachments: vec![blob.clone()],
                ..MessageExtras::default()
            },
        )
        .await
        .expect_err("no such blob any more");
    assert_eq!(rejected(&e), ErrorCode::NotFound);
    // The same bytes may be uploaded again: a new blob under the same id.
    let again = a
        .upload_bytes(picture.clone(), "image/png".into(), &Transfer::new())
        .await
        .expect("upload again");
    assert_eq!(again.blob_id, blob.blob_id);
    assert_eq!(
        a.download_range(again.blob_id.clone(), 0, 0)
            .await
            .expect("readable again"),
        picture
    );
    for client in [a, b, c] {
        client.close().await;
    }
}

/// The uploader's deletion (DELETE /v1/users/{user}) takes their inbox,
/// and with it the last copy carrying their blob: the blob is collected.
async fn a_deleted_uploaders_last_copy_takes_the_blob(backend: Backend) {
    let gw = gateway(backend, true).await;
    let bytes = bytes_of(&gw);
    let (alice, bob) = (unique("alice"), unique("bob"));
    let r = gw
        .api_json(
            "/v1/users",
            &format!(r#"{{"users": ["{alice}", "{bob}"]}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = gw.client(&alice, "phone").await;
    let b = gw.client(&bob, "phone").await;
    let data = vec![42u8; 5000];
    let blob = a
        .upload_bytes(
            data.clone(),
            "application/octet-stream".into(),
            &Transfer::new(),
        )
        .await
        .expect("upload");
    send(&a, &bob, &blob).await;
    let got = b.next_message_timeout(PATIENCE).await.expect("bob gets it");
    b.delete_for_me(got.seq).await.expect("delete for me");
    a_pass_ran(&b, 2).await;
    assert_eq!(
        a.download_range(blob.blob_id.clone(), 0, 0)
            .await
            .expect("alice's own copy still carries it"),
        data
    );
    a.close().await;
    let api = gw.api.expect("admin api");
    let r = http_request(
        api,
        "DELETE",
        &format!("/v1/users/{alice}"),
        Some(ADMIN_SECRET),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until_collected(&b, &blob.blob_id).await;
    assert!(!bytes.has(&id_of(&blob.blob_id)).await.expect("has"));
    b.close().await;
}

on_both_backends!(
    a_blob_goes_with_the_last_message_carrying_it,
    a_deleted_uploaders_last_copy_takes_the_blob,
);
