//! The worker side of files: `/send-file` uploads through the SDK (which
//! resumes an upload cut off by a reconnect or a network change from the
//! bytes the server committed) and then sends the message carrying it;
//! `/save` downloads into a part file, which the SDK checks against the
//! blob's hash, and moves it to a free, safe name. Progress goes to the UI
//! as [`Input::Progress`], at most every [`PROGRESS_EVERY`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use qim_sdk::{Attachment, Client, MessageExtras, OutgoingMessage, Peer, Transfer};
use tokio::sync::mpsc;

use crate::files::{free_path, media_type_of, safe_name, valid_blob_id};
use crate::model::{Input, TransferKey};

/// Progress reports at most this often per transfer.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Forwards a transfer's progress to the UI until the transfer ends.
fn report(transfer: &Transfer, key: TransferKey, ui: mpsc::Sender<Input>) -> ProgressTask {
    let mut rx = transfer.watch();
    ProgressTask(tokio::spawn(async move {
        loop {
            let p = *rx.borrow_and_update();
            let input = Input::Progress {
                key: key.clone(),
                done: p.done.max(p.sent),
                total: p.total,
            };
            if ui.send(input).await.is_err() {
                return;
            }
            // Why a sleep: progress is drawn at most ten times a second,
            // however often the SDK moves it.
            tokio::time::sleep(PROGRESS_EVERY).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// The progress task, stopped when dropped.
struct ProgressTask(tokio::task::JoinHandle<()>);

impl Drop for ProgressTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `~/x` as `$HOME/x`, and relative paths from the current directory.
fn local_path(typed: &str) -> PathBuf {
    let path = match (typed.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(typed),
    };
    std::path::absolute(&path).unwrap_or(path)
}

/// Uploads the file at `path` and sends a message carrying it to `peer`.
pub async fn send_file(
    client: &Client,
    peer: Peer,
    client_msg_id: String,
    path: String,
    ui: &mpsc::Sender<Input>,
) -> Vec<Input> {
    let local = local_path(&path);
    let uploaded = |result| Input::Uploaded {
        client_msg_id: client_msg_id.clone(),
        result,
    };
    match std::fs::metadata(&local) {
        Ok(m) if m.is_file() => {
            let _ = ui
                .send(Input::Progress {
                    key: TransferKey::Upload(client_msg_id.clone()),
                    done: 0,
                    total: m.len(),
                })
                .await;
        }
        Ok(_) => return vec![uploaded(Err(format!("{path} is not a file")))],
        Err(e) => return vec![uploaded(Err(format!("{path}: {e}")))],
    }
    let transfer = Transfer::new();
    let progress = report(
        &transfer,
        TransferKey::Upload(client_msg_id.clone()),
        ui.clone(),
    );
    let media_type = media_type_of(&path).to_owned();
    let result = client
        .upload_file(local.to_string_lossy().into_owned(), media_type, &transfer)
        .await;
    drop(progress);
    let attachment = match result {
        Ok(a) => a,
        Err(e) => return vec![uploaded(Err(e.to_string()))],
    };
    let _ = ui.send(uploaded(Ok(attachment.clone()))).await;
    let kind = if attachment.media_type.starts_with("image/") {
        "image"
    } else {
        "file"
    };
    let message = OutgoingMessage {
        to: String::new(),
        kind: kind.into(),
        body: Vec::new(),
        client_msg_id: Some(client_msg_id.clone()),
    };
    let extras = MessageExtras {
        attachments: vec![attachment],
        ..MessageExtras::default()
    };
    send_message(client, peer, message, extras).await
}

/// Downloads a message's file into `dir` (or `downloads`) under a safe
/// name that overwrites nothing.
pub async fn save(
    client: &Client,
    msg_id: String,
    attachment: Attachment,
    dir: Option<String>,
    downloads: &Path,
    ui: &mpsc::Sender<Input>,
) -> Vec<Input> {
    let key = TransferKey::Download(msg_id.clone());
    let result = download(client, &attachment, dir, downloads, key, ui).await;
    vec![Input::Saved { msg_id, result }]
}

async fn download(
    client: &Client,
    attachment: &Attachment,
    dir: Option<String>,
    downloads: &Path,
    key: TransferKey,
    ui: &mpsc::Sender<Input>,
) -> Result<String, String> {
    if !valid_blob_id(&attachment.blob_id) {
        return Err("not a blob id".into());
    }
    let dir = dir.map_or_else(|| downloads.to_owned(), |d| local_path(&d));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One part file per blob: a download cut off goes on from it.
    let part = dir.join(format!(".{}.part", &attachment.blob_id[..16]));
    match std::fs::symlink_metadata(&part) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{} is not a plain file", part.display())),
        Err(_) => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
                .map_err(|e| format!("{}: {e}", part.display()))?;
        }
    }
    let transfer = Transfer::new();
    let progress = report(&transfer, key, ui.clone());
    let result = client
        .download(
            attachment.blob_id.clone(),
            part.to_string_lossy().into_owned(),
            &transfer,
        )
        .await;
    drop(progress);
    result.map_err(|e| e.to_string())?;
    let name = safe_name(&attachment.name, &attachment.blob_id);
    let target = free_path(&dir, &name);
    std::fs::rename(&part, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target.display().to_string())
}

/// Sends `message` (its `to` is taken from `peer`) with `extras` to a user
/// or a group; the outcome as the UI's `SendDone`.
pub async fn send_message(
    client: &Client,
    peer: Peer,
    message: OutgoingMessage,
    extras: MessageExtras,
) -> Vec<Input> {
    let client_msg_id = message.client_msg_id.clone().unwrap_or_default();
    let result = match peer {
        Peer::User(to) => {
            client
                .send_with(OutgoingMessage { to, ..message }, extras)
                .await
        }
        Peer::Group(group) => client.send_group_with(group, message, extras).await,
    };
    vec![Input::SendDone {
        client_msg_id,
        result: result.map_err(|e| e.to_string()),
    }]
}
