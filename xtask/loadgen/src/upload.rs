//! Uploads flat out on a chat sender's connection (the chat scenario's
//! `--upload-mib`): fresh random blobs, one after another, on upload
//! streams at the media priority, so the chat latency under a full-speed
//! upload can be compared with the same run without one.

use anyhow::{Context as _, Result, bail};
use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, upload_client, upload_server};
use rand::RngCore as _;
use tokio::sync::watch;

/// The priority the SDK gives media streams (below chat's 0).
const PRIORITY: i32 = -10;

/// Uploads blobs of `mib` MiB on `conn` until `stop` turns true; returns
/// the bytes the server committed.
pub(crate) async fn flat_out(
    conn: qim_proto::transport::Connection,
    welcome: v1::Welcome,
    max_frame: usize,
    mib: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<u64> {
    let limits = welcome.limits.unwrap_or_default();
    if limits.max_blob_bytes == 0 {
        bail!("the gateway takes no uploads");
    }
    let chunk = (limits.upload_chunk_bytes as usize).max(1024);
    let size = (mib << 20).min(limits.max_blob_bytes);
    let mut committed = 0;
    let mut bytes = vec![0u8; usize::try_from(size)?];
    while !*stop.borrow() {
        rand::rng().fill_bytes(&mut bytes);
        let id = blake3::hash(&bytes);
        let (send, recv) = conn.open_bi().await.context("open upload")?;
        send.set_priority(PRIORITY);
        let mut send = FramedSend::new(send, StreamKind::Upload, max_frame);
        let mut recv = FramedRecv::new(recv, max_frame);
        let frame = |kind| v1::UploadClient { kind: Some(kind) };
        send.send(&frame(upload_client::Kind::Start(v1::UploadStart {
            blob_id: id.as_bytes().to_vec().into(),
            size,
            media_type: "application/octet-stream".into(),
        })))
        .await?;
        match recv.next::<v1::UploadServer>().await?.and_then(|f| f.kind) {
            Some(upload_server::Kind::Ready(_)) => {}
            other => bail!("upload not accepted: {other:?}"),
        }
        let mut offset = 0usize;
        let sending = async {
            while offset < bytes.len() {
                let end = (offset + chunk).min(bytes.len());
                send.send(&frame(upload_client::Kind::Chunk(v1::UploadChunk {
                    offset: offset as u64,
                    data: bytes::Bytes::copy_from_slice(&bytes[offset..end]),
                })))
                .await?;
                offset = end;
            }
            anyhow::Ok(())
        };
        let answers = async {
            loop {
                match recv.next::<v1::UploadServer>().await?.and_then(|f| f.kind) {
                    Some(upload_server::Kind::Committed(_)) => {}
                    Some(upload_server::Kind::Done(_)) => return anyhow::Ok(()),
                    other => bail!("upload failed: {other:?}"),
                }
            }
        };
        tokio::select! {
            r = async { tokio::try_join!(sending, answers) } => { r?; committed += size; }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    Ok(committed)
}
