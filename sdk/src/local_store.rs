//! The device's local copy of what it received, in SQLite (bundled), so
//! history and keyword search work without a connection.
//!
//! Enabled by [`ClientConfig::local_store`](crate::ClientConfig::local_store).
//! A message is recorded when it is handed to the app by
//! [`Client::next_message`](crate::Client::next_message), and so are the changes to it: an edit replaces
//! the local text, a recall empties it, a delete-for-me removes the row.
//!
//! Invariants:
//! - one row per `msg_id` (a message received again is ignored);
//! - the full-text table `messages_fts` holds exactly the text of the rows
//!   that are neither recalled nor deleted, under the same rowid, so a
//!   recalled message is never found by [`Client::search`](crate::Client::search);
//! - a conversation's history is ordered by `(server_time_ms, rowid)`.
//!
//! Writes are small and synchronous (one row, WAL journal); a failed write
//! is logged and the message still reaches the app: the local store is a
//! cache of the server's history, never the only copy.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};
use tracing::warn;

use crate::message::{Event, HistoryAnchor, HistoryPage, IncomingMessage, Peer, SendReceipt};
use crate::sync::lock;
use crate::{ClientConfig, Error};

/// Longest page or search result returned at once.
const MAX_LIMIT: u32 = 1000;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS messages (
    rowid INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    group_seq INTEGER NOT NULL,
    from_user TEXT NOT NULL,
    from_device TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    server_time_ms INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    mentions_me INTEGER NOT NULL,
    edited_at_ms INTEGER NOT NULL,
    recalled INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (conversation, server_time_ms, rowid);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (text);
";

/// The SQLite file and its connection.
pub(crate) struct LocalStore {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

fn store_err(e: rusqlite::Error) -> Error {
    Error::Storage(e.to_string())
}

/// `u:alice` / `g:team`: one text key per conversation.
fn conversation_key(peer: &Peer) -> String {
    match peer {
        Peer::User(u) => format!("u:{u}"),
        Peer::Group(g) => format!("g:{g}"),
    }
}

fn peer_of(key: &str) -> Peer {
    match key.split_once(':') {
        Some(("g", g)) => Peer::Group(g.to_owned()),
        Some((_, u)) => Peer::User(u.to_owned()),
        None => Peer::User(key.to_owned()),
    }
}

/// The searchable text of a body: bodies that are UTF-8 text.
fn text_of(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body).ok().filter(|t| !t.is_empty())
}

/// A user's words as an FTS5 query: each word quoted (so `"` `*` `:` and
/// operators are plain text), all words required.
fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

const COLUMNS: &str = "msg_id, conversation, seq, group_seq, from_user, from_device, \
    client_msg_id, kind, body, server_time_ms, outgoing, mentions_me, edited_at_ms, recalled";

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<IncomingMessage> {
    let conversation: String = row.get(1)?;
    Ok(IncomingMessage {
        msg_id: row.get(0)?,
        conversation: peer_of(&conversation),
        seq: row.get::<_, i64>(2)? as u64,
        group_seq: row.get::<_, i64>(3)? as u64,
        from_user: row.get(4)?,
        from_device: row.get(5)?,
        client_msg_id: row.get(6)?,
        kind: row.get(7)?,
        body: row.get(8)?,
        server_time_ms: row.get(9)?,
        outgoing: row.get(10)?,
        mentions_me: row.get(11)?,
        edited_at_ms: row.get(12)?,
        recalled: row.get(13)?,
        ..IncomingMessage::default()
    })
}

impl LocalStore {
    /// Opens (creating if needed) the store at `path`.
    pub(crate) fn open(path: &Path) -> Result<LocalStore, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
        }
        let db = Connection::open(path).map_err(store_err)?;
        db.execute_batch(SCHEMA).map_err(store_err)?;
        Ok(LocalStore { db: Mutex::new(db) })
    }

    /// Opens the store configured in `config`, if any.
    pub(crate) fn from_config(config: &ClientConfig) -> Result<Option<LocalStore>, Error> {
        config
            .local_store
            .as_deref()
            .map(LocalStore::open)
            .transpose()
    }

    /// Records a message or applies an event, as handed to the app. Errors
    /// are logged, never returned: the app gets the message regardless.
    pub(crate) fn record(&self, message: &IncomingMessage) {
        if let Err(e) = self.try_record(message) {
            warn!(msg_id = %message.msg_id, error = %e, "local store write failed");
        }
    }

    /// Records a message this device sent, once the server stored it.
    pub(crate) fn record_sent(
        &self,
        me: &str,
        device: &str,
        to: Peer,
        kind: String,
        body: Vec<u8>,
        receipt: &SendReceipt,
    ) {
        self.record(&IncomingMessage {
            msg_id: receipt.msg_id.clone(),
            from_user: me.to_owned(),
            from_device: device.to_owned(),
            client_msg_id: receipt.client_msg_id.clone(),
            kind,
            body,
            server_time_ms: receipt.server_time_ms,
            conversation: to,
            outgoing: true,
            ..IncomingMessage::default()
        });
    }

    fn try_record(&self, m: &IncomingMessage) -> rusqlite::Result<()> {
        let mut db = lock(&self.db);
        let tx = db.transaction()?;
        match &m.event {
            None => {
                let inserted = tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO messages ({COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                    ),
                    params![
                        m.msg_id,
                        conversation_key(&m.conversation),
                        m.seq as i64,
                        m.group_seq as i64,
                        m.from_user,
                        m.from_device,
                        m.client_msg_id,
                        m.kind,
                        m.body,
                        m.server_time_ms,
                        m.outgoing,
                        m.mentions_me,
                        m.edited_at_ms,
                        m.recalled,
                    ],
                )?;
                if inserted == 1
                    && !m.recalled
                    && let Some(text) = text_of(&m.body)
                {
                    tx.execute(
                        "INSERT INTO messages_fts (rowid, text) VALUES (?1, ?2)",
                        params![tx.last_insert_rowid(), text],
                    )?;
                }
            }
            Some(Event::Recalled { msg_id, .. }) => {
                if let Some(rowid) = rowid_of(&tx, msg_id)? {
                    tx.execute(
                        "UPDATE messages SET recalled = 1, body = x'' WHERE rowid = ?1",
                        [rowid],
                    )?;
                    tx.execute("DELETE FROM messages_fts WHERE rowid = ?1", [rowid])?;
                }
            }
            Some(Event::Edited {
                msg_id,
                kind,
                body,
                edited_at_ms,
                ..
            }) => {
                if let Some(rowid) = rowid_of(&tx, msg_id)? {
                    let updated = tx.execute(
                        "UPDATE messages SET kind = ?2, body = ?3, edited_at_ms = ?4 \
                         WHERE rowid = ?1 AND recalled = 0",
                        params![rowid, kind, body, edited_at_ms],
                    )?;
                    tx.execute("DELETE FROM messages_fts WHERE rowid = ?1", [rowid])?;
                    if updated == 1
                        && let Some(text) = text_of(body)
                    {
                        tx.execute(
                            "INSERT INTO messages_fts (rowid, text) VALUES (?1, ?2)",
                            params![rowid, text],
                        )?;
                    }
                }
            }
            Some(Event::Deleted { msg_id, .. }) => {
                if let Some(rowid) = rowid_of(&tx, msg_id)? {
                    tx.execute("DELETE FROM messages WHERE rowid = ?1", [rowid])?;
                    tx.execute("DELETE FROM messages_fts WHERE rowid = ?1", [rowid])?;
                }
            }
            Some(_) => {}
        }
        tx.commit()
    }

    /// A page of one conversation, like the server's history: backward
    /// from the newest end or before the anchor, or forward from the
    /// oldest or after it.
    pub(crate) fn history(
        &self,
        peer: &Peer,
        anchor: HistoryAnchor,
        forward: bool,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        let db = lock(&self.db);
        let key = conversation_key(peer);
        let limit = limit.clamp(1, MAX_LIMIT);
        // The anchor as a position (server_time_ms, rowid).
        let from: Option<(i64, i64)> = match anchor {
            HistoryAnchor::End => None,
            HistoryAnchor::Time(t) => Some(if forward { (t, i64::MAX) } else { (t, 0) }),
            HistoryAnchor::Seq(s) => {
                let found = db
                    .query_row(
                        "SELECT server_time_ms, rowid FROM messages WHERE conversation = ?1 \
                         AND (seq = ?2 OR group_seq = ?2) ORDER BY seq = ?2 DESC LIMIT 1",
                        params![key, s as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(store_err)?;
                Some(found.ok_or_else(|| {
                    Error::Storage(format!("no message with seq {s} in the local store"))
                })?)
            }
        };
        let (cmp, order) = if forward { (">", "ASC") } else { ("<", "DESC") };
        let (time, rowid) = from.unwrap_or(if forward {
            (i64::MIN, i64::MIN)
        } else {
            (i64::MAX, i64::MAX)
        });
        let mut stmt = db
            .prepare(&format!(
                "SELECT {COLUMNS} FROM messages WHERE conversation = ?1 \
                 AND (server_time_ms, rowid) {cmp} (?2, ?3) \
                 ORDER BY server_time_ms {order}, rowid {order} LIMIT ?4"
            ))
            .map_err(store_err)?;
        let mut messages = stmt
            .query_map(
                params![key, time, rowid, i64::from(limit) + 1],
                row_to_message,
            )
            .map_err(store_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(store_err)?;
        let more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        let next_seq = messages.last().map_or(0, |m| m.group_seq.max(m.seq));
        Ok(HistoryPage {
            messages,
            more,
            expired: false,
            next_seq,
        })
    }

    /// Messages whose text holds every word of `query`, newest first.
    pub(crate) fn search(&self, query: &str, limit: u32) -> Result<Vec<IncomingMessage>, Error> {
        let Some(query) = fts_query(query) else {
            return Ok(Vec::new());
        };
        let db = lock(&self.db);
        let columns = COLUMNS
            .split(", ")
            .map(|c| format!("m.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = db
            .prepare(&format!(
                "SELECT {columns} FROM messages_fts f JOIN messages m ON m.rowid = f.rowid \
                 WHERE messages_fts MATCH ?1 AND m.recalled = 0 \
                 ORDER BY m.server_time_ms DESC, m.rowid DESC LIMIT ?2"
            ))
            .map_err(store_err)?;
        stmt.query_map(
            params![query, i64::from(limit.clamp(1, MAX_LIMIT))],
            row_to_message,
        )
        .map_err(store_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(store_err)
    }
}

fn rowid_of(db: &Connection, msg_id: &str) -> rusqlite::Result<Option<i64>> {
    db.query_row(
        "SELECT rowid FROM messages WHERE msg_id = ?1",
        [msg_id],
        |r| r.get(0),
    )
    .optional()
}
