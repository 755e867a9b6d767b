//! Files: `/send-file` puts a line with the file and an upload bar in the
//! chat and asks the worker to upload and send; the worker reports
//! progress ([`Input::Progress`]), the upload's end ([`Input::Uploaded`])
//! and the send's ([`Input::SendDone`]). A failed upload or send shows
//! `✗ failed` with the reason, and `/retry` starts it again under the same
//! send id (the SDK goes on from the bytes the server has). `/save` asks
//! for a received file with a download bar.

use std::path::Path;

use qim_sdk::Attachment;

use super::{Input, Line, Model, Request, SendState, Transfer, TransferKey};

impl Model {
    /// `/send-file <path>`: a line with the file and an upload bar, and
    /// the request to upload and send it.
    pub(super) fn send_file(&mut self, path: &str) -> Result<(), String> {
        let peer = self
            .open
            .clone()
            .ok_or("no conversation open: /msg <user> or /join <group> first")?;
        let path = unquote(path);
        if path.is_empty() {
            return Err("usage: /send-file <path>".into());
        }
        self.next_id += 1;
        let client_msg_id = format!("{}f{}", self.id_prefix, self.next_id);
        let name = Path::new(path)
            .file_name()
            .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
        let chat = self.chats.entry(peer.clone()).or_default();
        let time_ms = chat
            .lines
            .last()
            .map_or(self.now_ms, |l| l.time_ms.max(self.now_ms));
        let mut line = Line::outgoing(&self.me, &client_msg_id, String::new(), time_ms);
        line.attachments.push(Attachment {
            name: name.clone(),
            media_type: crate::files::media_type_of(path).to_owned(),
            ..Attachment::default()
        });
        line.transfer = Some(Transfer::Uploading { done: 0, total: 0 });
        chat.upsert(line);
        chat.scroll = 0;
        let e = self.convs.entry(&peer);
        e.last_from = self.me.clone();
        e.last_text = format!("[file] {name}");
        e.last_ms = self.now_ms;
        self.uploads
            .insert(client_msg_id.clone(), (peer.clone(), path.to_owned()));
        self.sends.insert(client_msg_id.clone(), peer.clone());
        self.say(format!("uploading {name}…"));
        self.request(Request::SendFile {
            peer,
            client_msg_id,
            path: path.to_owned(),
        });
        Ok(())
    }

    /// `/retry`: the selected failed file send, or the newest one, again.
    pub(super) fn retry(&mut self) -> Result<(), String> {
        let peer = self.open.clone().ok_or("no conversation open")?;
        let id = self
            .open_chat()
            .and_then(|c| {
                c.target(|l| {
                    l.outgoing
                        && matches!(l.state, SendState::Failed(_))
                        && self.uploads.contains_key(&l.client_msg_id)
                })
            })
            .map(|l| l.client_msg_id.clone())
            .ok_or("nothing to retry: no failed file here")?;
        let Some((_, path)) = self.uploads.get(&id).cloned() else {
            return Err("nothing to retry".into());
        };
        if let Some(line) = self.chats.get_mut(&peer).and_then(|c| c.by_client_id(&id)) {
            line.state = SendState::Sending;
            line.transfer = Some(Transfer::Uploading { done: 0, total: 0 });
        }
        self.sends.insert(id.clone(), peer.clone());
        self.say("trying again…");
        self.request(Request::SendFile {
            peer,
            client_msg_id: id,
            path,
        });
        Ok(())
    }

    /// `/save [n|last] [dir]`: file `n` of the open chat (numbered as the
    /// pane shows them), the selected message's, or the newest.
    pub(super) fn save(&mut self, args: &[&str]) -> Result<(), String> {
        const USAGE: &str = "usage: /save [n|last] [dir]";
        let peer = self.open.clone().ok_or("no conversation open")?;
        let chat = self.open_chat().ok_or("no files here")?;
        let files = chat.files();
        let (pick, dir) = match args.first() {
            Some(&"last") => (files.last().copied(), &args[1..]),
            Some(n) if n.parse::<usize>().is_ok() => {
                let n: usize = n.parse().map_err(|_| USAGE)?;
                let found = n.checked_sub(1).and_then(|i| files.get(i)).copied();
                (
                    Some(found.ok_or(format!("no file {n} here ({} shown)", files.len()))?),
                    &args[1..],
                )
            }
            _ => {
                let selected = chat
                    .selected
                    .and_then(|s| files.iter().find(|(i, _)| *i == s).copied());
                (selected.or(files.last().copied()), args)
            }
        };
        let (i, k) = pick.ok_or("no files here")?;
        let line = &chat.lines[i];
        if line.msg_id.is_empty() {
            return Err("that file is not stored yet".into());
        }
        let attachment = line.attachments[k].clone();
        if !crate::files::valid_blob_id(&attachment.blob_id) {
            return Err("that file has no valid blob id".into());
        }
        let msg_id = line.msg_id.clone();
        let dir = (!dir.is_empty()).then(|| unquote(&dir.join(" ")).to_owned());
        if let Some(line) = self.chats.get_mut(&peer).and_then(|c| c.by_msg_id(&msg_id)) {
            line.transfer = Some(Transfer::Downloading {
                done: 0,
                total: attachment.size,
            });
        }
        self.downloads.insert(msg_id.clone(), peer);
        self.request(Request::Save {
            msg_id,
            attachment,
            dir,
        });
        Ok(())
    }

    /// Progress, upload and download results applied.
    pub(super) fn transfer_input(&mut self, input: Input) {
        match input {
            Input::Progress { key, done, total } => {
                let Some(line) = self.transfer_line(&key) else {
                    return;
                };
                match key {
                    TransferKey::Upload(_) => {
                        if let Some(a) = line.attachments.first_mut()
                            && a.size == 0
                        {
                            a.size = total;
                        }
                        line.transfer = Some(Transfer::Uploading { done, total });
                    }
                    TransferKey::Download(_) => {
                        line.transfer = Some(Transfer::Downloading { done, total });
                    }
                }
            }
            Input::Uploaded {
                client_msg_id,
                result,
            } => {
                let key = TransferKey::Upload(client_msg_id.clone());
                let Some(line) = self.transfer_line(&key) else {
                    return;
                };
                match result {
                    Ok(attachment) => {
                        line.transfer = Some(Transfer::Uploaded {
                            total: attachment.size,
                        });
                        line.attachments = vec![attachment];
                    }
                    Err(e) => {
                        line.transfer = None;
                        line.state = SendState::Failed(e.clone());
                        self.sends.remove(&client_msg_id);
                        self.error(format!("upload failed: {e} · /retry tries again"));
                    }
                }
            }
            Input::Saved { msg_id, result } => {
                let Some(peer) = self.downloads.remove(&msg_id) else {
                    return;
                };
                let Some(line) = self.chats.get_mut(&peer).and_then(|c| c.by_msg_id(&msg_id))
                else {
                    return;
                };
                let total = line.attachments.first().map_or(0, |a| a.size);
                match result {
                    Ok(path) => {
                        line.transfer = Some(Transfer::Saved {
                            path: path.clone(),
                            total,
                        });
                        self.say(format!("saved {path}"));
                    }
                    Err(e) => {
                        line.transfer = Some(Transfer::SaveFailed(e.clone()));
                        self.error(format!("saving failed: {e} · /save again goes on"));
                    }
                }
            }
            _ => {}
        }
    }

    /// The line a transfer belongs to.
    fn transfer_line(&mut self, key: &TransferKey) -> Option<&mut Line> {
        match key {
            TransferKey::Upload(id) => {
                let (peer, _) = self.uploads.get(id)?;
                self.chats.get_mut(peer)?.by_client_id(id)
            }
            TransferKey::Download(msg_id) => {
                let peer = self.downloads.get(msg_id)?;
                self.chats.get_mut(peer)?.by_msg_id(msg_id)
            }
        }
    }

    /// A send finished: a file send is done with (or kept for `/retry`).
    pub(super) fn upload_sent(&mut self, client_msg_id: &str, ok: bool) -> bool {
        if ok {
            self.uploads.remove(client_msg_id).is_some()
        } else {
            self.uploads.contains_key(client_msg_id)
        }
    }
}

/// A path as typed, without surrounding quotes.
fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}
