//! Server-made thumbnails: an uploaded image is decoded within bounds and
//! gets a thumbnail blob that exactly its readers may read; picture bombs
//! (too many pixels, too much memory) are refused with `IMAGE_REFUSED`,
//! nothing is kept, and bystanders chat on unharmed; so is a decode that
//! takes too long; bytes that are not a readable image stay a plain file;
//! other types are never decoded.

mod common;

use std::io::Cursor;

use bytes::Bytes;
use common::{Backend, Bystanders, PATIENCE, Raw, RawSession, TestGateway, unique};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, upload_client, upload_server};
use qim_sdk::{Attachment, Client, MessageExtras, OutgoingMessage, Transfer};

/// The decode's memory bound in these tests.
const MAX_ALLOC: u64 = 64 << 20;

async fn gateway(backend: Backend) -> TestGateway {
    common::start_media(backend, |c| {
        c.media.thumbnail_max_alloc_bytes = MAX_ALLOC;
    })
    .await
}

fn rejected(e: &qim_sdk::Error) -> ErrorCode {
    match e {
        qim_sdk::Error::Rejected { code, .. } => *code,
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

/// A real PNG of `width` x `height` (a gradient with some transparency).
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 200])
    });
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a test png");
    out.into_inner()
}

/// One PNG chunk with its CRC.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("short").to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A picture bomb: a valid PNG header declaring `width` x `height` pixels
/// of `color` (0: gray, 6: RGBA; 8 bits), then a few bytes of image data.
/// A few dozen bytes on the wire; a decoder that believed it would
/// allocate width x height x channels bytes.
fn bomb(width: u32, height: u32, color: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    // A zlib stream of one stored block of zeros (the first row).
    png_chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x10, 0x00, 0xef, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0,
        ],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn id(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(blake3::hash(bytes).as_bytes())
}

/// The code a `BlobInfoRequest` is answered with, and the record.
async fn blob_info(s: &RawSession, blob: Bytes) -> Result<v1::BlobInfo, ErrorCode> {
    let request = v1::rpc_request::Kind::BlobInfo(v1::BlobInfoRequest { blob_id: blob });
    match s.rpc(request).await {
        v1::rpc_response::Kind::BlobInfo(info) => Ok(info),
        v1::rpc_response::Kind::Error(e) => Err(ErrorCode::try_from(e.code).expect("code")),
        other => panic!("unexpected {other:?}"),
    }
}

/// The first answer to an `UploadStart` of `data` as `media_type` on a raw
/// session (the stream is then reset).
async fn start_answer(s: &RawSession, data: &[u8], media_type: &str) -> upload_server::Kind {
    let (send, recv) = s.raw.conn.open_bi().await.expect("open upload");
    let mut send = FramedSend::new(send, StreamKind::Upload, 64 * 1024);
    let mut recv = FramedRecv::new(recv, 64 * 1024);
    send.send(&v1::UploadClient {
        kind: Some(upload_client::Kind::Start(v1::UploadStart {
            blob_id: id(data),
            size: data.len() as u64,
            media_type: media_type.into(),
        })),
    })
    .await
    .expect("start");
    let answer = tokio::time::timeout(PATIENCE, recv.next::<v1::UploadServer>())
        .await
        .expect("the server answers")
        .expect("a frame")
        .and_then(|f| f.kind)
        .expect("not empty");
    send.reset(ErrorCode::NoError);
    answer
}

async fn send_to(from: &Client, to: &str, attachment: Attachment) {
    from.send_with(
        OutgoingMessage {
            to: to.to_owned(),
            kind: "image".into(),
            ..OutgoingMessage::default()
        },
        MessageExtras {
            attachments: vec![attachment],
            ..MessageExtras::default()
        },
    )
    .await
    .expect("a message with a picture");
}

/// An image gets its dimensions and a thumbnail blob at upload; the
/// thumbnail is readable by whoever may read the image (its uploaders, a
/// proven dedup, the recipients of a message carrying the image even when
/// the sender left the thumbnail out) and by nobody else.
async fn images_get_a_thumbnail_their_readers_may_read(backend: Backend) {
    let gw = gateway(backend).await;
    let (alice, bob, carol, mallory) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("mallory"),
    );
    let a = gw.client(&alice, "phone").await;
    let picture = png(1000, 600);
    let photo = a
        .upload_bytes(picture.clone(), "image/png".into(), &Transfer::new())
        .await
        .expect("alice uploads a picture");
    assert_eq!((photo.width, photo.height), (1000, 600), "the real size");
    let thumb_id = photo.thumbnail_blob_id.clone().expect("a thumbnail");
    let thumb = a
        .download_range(thumb_id.clone(), 0, 0)
        .await
        .expect("the uploader reads the thumbnail");
    let decoded = image::load_from_memory_with_format(&thumb, image::ImageFormat::Jpeg)
        .expect("the thumbnail is a JPEG");
    assert_eq!(
        image::GenericImageView::dimensions(&decoded),
        (320, 192),
        "longest side 320, aspect kept"
    );
    let thumb_bytes = Bytes::copy_from_slice(&qim_sdk_blob(&thumb_id));

    // Nobody else reads it: not by id, not by its record.
    let m = Raw::login(&gw, &mallory, "m", 0).await;
    assert_eq!(
        blob_info(&m, thumb_bytes.clone()).await.err(),
        Some(ErrorCode::PermissionDenied)
    );
    let b = gw.client(&bob, "phone").await;
    let refused = b
        .download_range(thumb_id.clone(), 0, 0)
        .await
        .expect_err("bob has no message with it yet");
    assert_eq!(rejected(&refused), ErrorCode::PermissionDenied);

    // A message that carries the image without naming the thumbnail: the
    // server fills it in, and the recipient reads both.
    send_to(
        &a,
        &bob,
        Attachment {
            thumbnail_blob_id: None,
            width: 0,
            height: 0,
            thumbnail: b"inline preview of the app's own".to_vec(),
            ..photo.clone()
        },
    )
    .await;
    let got = b.next_message_timeout(PATIENCE).await.expect("bob gets it");
    let att = &got.attachments[0];
    assert_eq!(att.thumbnail_blob_id.as_deref(), Some(thumb_id.as_str()));
    assert_eq!((att.width, att.height), (1000, 600));
    assert_eq!(
        att.thumbnail, b"inline preview of the app's own",
        "the app's own inline thumbnail travels as before"
    );
    assert_eq!(
        b.download_range(thumb_id.clone(), 0, 0)
            .await
            .expect("a recipient reads the thumbnail"),
        thumb
    );
    assert_eq!(
        blob_info(&m, thumb_bytes.clone()).await.err(),
        Some(ErrorCode::PermissionDenied),
        "still nobody else"
    );

    // Carol has the same bytes: a proven dedup answers the image's record
    // with the thumbnail, which she may then read.
    let c = gw.client(&carol, "phone").await;
    let same = c
        .upload_bytes(picture, "image/png".into(), &Transfer::new())
        .await
        .expect("carol proves having the bytes");
    assert_eq!(same.thumbnail_blob_id.as_deref(), Some(thumb_id.as_str()));
    assert_eq!((same.width, same.height), (1000, 600));
    assert!(c.download_range(thumb_id.clone(), 0, 0).await.is_ok());

    // Types the server does not decode are never decoded: PNG bytes as a
    // plain file, an image type it has no decoder for.
    let file = c
        .upload_bytes(
            png(50, 50),
            "application/octet-stream".into(),
            &Transfer::new(),
        )
        .await
        .expect("a file");
    assert_eq!((file.width, file.thumbnail_blob_id), (0, None));
    let svg = c
        .upload_bytes(b"<svg/>".to_vec(), "image/svg+xml".into(), &Transfer::new())
        .await
        .expect("an svg is a file");
    assert_eq!(svg.thumbnail_blob_id, None);

    a.close().await;
    b.close().await;
    c.close().await;
}

/// The raw id of a blob's hex.
fn qim_sdk_blob(hex: &str) -> [u8; 32] {
    *blake3::Hash::from_hex(hex).expect("hex").as_bytes()
}

/// Picture bombs are refused with `IMAGE_REFUSED` and leave nothing (no
/// blob, no thumbnail, no pending upload), with a metric; bytes that are
/// not a readable image are kept as a plain file; bystanders chat on.
async fn picture_bombs_are_refused_and_keep_nothing(backend: Backend) {
    let gw = gateway(backend).await;
    let bystanders = Bystanders::start(&gw).await;
    let mallory = unique("mallory");
    let m = gw.client(&mallory, "phone").await;
    let raw = Raw::login(&gw, &mallory, "raw", 0).await;

    // 100000 x 100000 gray pixels (10 GB decoded) in about 80 bytes.
    let pixels = bomb(100_000, 100_000, 0);
    // 6000 x 6000 RGBA: within the pixel bound, 144 MB decoded, beyond the
    // 64 MiB memory bound.
    let memory = bomb(6000, 6000, 6);
    for (bomb, outcome) in [(&pixels, "too_many_pixels"), (&memory, "too_much_memory")] {
        assert!(bomb.len() < 200, "a few bytes on the wire");
        let refused = m
            .upload_bytes(bomb.clone(), "image/png".into(), &Transfer::new())
            .await
            .expect_err("a picture bomb is refused");
        assert_eq!(rejected(&refused), ErrorCode::ImageRefused);
        assert_eq!(
            blob_info(&raw, id(bomb)).await.err(),
            Some(ErrorCode::NotFound),
            "no blob"
        );
        assert!(
            matches!(
                start_answer(&raw, bomb, "image/png").await,
                upload_server::Kind::Ready(v1::UploadReady { committed: 0 })
            ),
            "no pending upload and no bytes: it starts from zero"
        );
        assert_eq!(
            gw.metric(&format!("qim_images_total{{outcome=\"{outcome}\"}}"))
                .await,
            1.0
        );
        if backend == Backend::Embedded {
            let hex = blake3::hash(bomb).to_hex().to_string();
            let blob_file = gw
                .config
                .server
                .data_dir
                .join("store/media/blobs")
                .join(&hex[..2])
                .join(&hex);
            assert!(!blob_file.exists(), "the bomb's bytes are gone");
        }
    }
    assert_eq!(
        gw.metric("qim_images_total{outcome=\"thumbnail\"}").await,
        0.0
    );

    // Bytes that are not a readable image of the declared type: a file.
    let mut cut = png(400, 300);
    cut.truncate(cut.len() / 2);
    let kept = m
        .upload_bytes(cut, "image/png".into(), &Transfer::new())
        .await
        .expect("a truncated picture is kept as a file");
    assert_eq!((kept.width, kept.thumbnail_blob_id), (0, None));
    let wrong = m
        .upload_bytes(png(40, 30), "image/jpeg".into(), &Transfer::new())
        .await
        .expect("a PNG declared as JPEG is kept as a file");
    assert_eq!(wrong.thumbnail_blob_id, None);
    assert_eq!(
        gw.metric("qim_images_total{outcome=\"undecodable\"}").await,
        2.0
    );

    // A control character in a media type is refused before any byte.
    let answer = start_answer(&raw, b"x", "image/png\0").await;
    assert!(
        matches!(&answer, upload_server::Kind::Error(e) if e.code == ErrorCode::InvalidArgument as i32),
        "{answer:?}"
    );

    // The session survived every refusal.
    let fine = m
        .upload_bytes(png(64, 64), "image/png".into(), &Transfer::new())
        .await
        .expect("a real picture after the bombs");
    assert!(fine.thumbnail_blob_id.is_some());
    m.close().await;
    bystanders.finish().await;
}

/// A decode slower than `media.thumbnail_timeout_ms` is refused and
/// leaves nothing.
async fn slow_decodes_are_refused(backend: Backend) {
    let gw = common::start_media(backend, |c| {
        c.media.thumbnail_timeout_ms = 1;
        c.media.thumbnail_concurrency = 1;
    })
    .await;
    let m = gw.client(&unique("mallory"), "phone").await;
    let raw = Raw::login(&gw, &unique("raw"), "raw", 0).await;
    // Decoding 2,500 x 2,500 pixels and scaling them down takes far more
    // than a millisecond.
    let big = png(2500, 2500);
    let refused = m
        .upload_bytes(big.clone(), "image/png".into(), &Transfer::new())
        .await
        .expect_err("too slow to decode");
    assert_eq!(rejected(&refused), ErrorCode::ImageRefused);
    assert_eq!(
        blob_info(&raw, id(&big)).await.err(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        gw.metric("qim_images_total{outcome=\"timeout\"}").await,
        1.0
    );
    m.close().await;
}

on_both_backends!(
    images_get_a_thumbnail_their_readers_may_read,
    picture_bombs_are_refused_and_keep_nothing,
    slow_decodes_are_refused,
);
