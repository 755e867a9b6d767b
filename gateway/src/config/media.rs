//! The `[media]` section: blob sizes and types, upload chunking, the
//! per-user quotas of uploads, and how long abandoned uploads stay.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::sections::{example_line, section};

section! {
    /// Images and files: uploads on their own streams below chat, content-addressed blobs.
    /// Refusals: BLOB_TOO_LARGE, MEDIA_TYPE_REFUSED, QUOTA_EXCEEDED, HASH_MISMATCH, OUT_OF_RANGE.
    "media" => Media {
        /// Largest blob, in bytes (0: uploads and downloads are refused). Sent in Welcome.
        max_blob_bytes: u64 = 100 << 20,
        /// Media types accepted for blobs; "image/*" accepts a family; empty: every type. Sent in
        /// Welcome.
        media_types: Vec<String> = ["image/*", "video/*", "audio/*", "text/*", "application/*"]
            .map(str::to_owned)
            .to_vec(),
        /// Largest data of one upload or download chunk, in bytes; at least 1 KiB below
        /// limits.max_frame_bytes. Sent in Welcome.
        chunk_bytes: u32 = 60 * 1024,
        /// Bytes an upload gathers before they are made durable and their offset answered.
        commit_bytes: u32 = 1 << 20,
        /// Bytes a user may upload per UTC day (declared sizes of new uploads; a resumed upload
        /// is not charged again); beyond it QUOTA_EXCEEDED.
        upload_bytes_per_day: u64 = 2 << 30,
        /// Uploads a user may have started and not finished at once; beyond it QUOTA_EXCEEDED.
        pending_uploads: u32 = 20,
        /// Upload and download streams one session may have open at once; a further one is
        /// refused with RATE_LIMITED.
        streams_per_session: u32 = 4,
        /// How long an unfinished upload is kept for a resume, in milliseconds; then its staged
        /// bytes and record are removed.
        pending_expiry_ms: u64 = 24 * 3_600_000,
        /// Attachments one message may carry. Sent in Welcome.
        max_attachments: u32 = 10,
        /// Largest inline thumbnail of an attachment, in bytes.
        inline_thumbnail_bytes: u32 = 8 * 1024,
        /// Directory of blob files. Unset: `<server.data_dir>/store/media` with the embedded
        /// store; with a cluster store media is off unless this names a directory every node
        /// shares (a network file system).
        blob_dir: Option<std::path::PathBuf> = None,
    }
}

impl Media {
    /// Checks the section against the frame limit.
    pub(super) fn validate(&self, max_frame_bytes: u32) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        if self.chunk_bytes == 0 || self.chunk_bytes.saturating_add(1024) > max_frame_bytes {
            return invalid(
                "media.chunk_bytes must be above 0 and 1 KiB below limits.max_frame_bytes",
            );
        }
        if self.commit_bytes < self.chunk_bytes {
            return invalid("media.commit_bytes must be at least media.chunk_bytes");
        }
        if self.streams_per_session == 0 {
            return invalid("media.streams_per_session must be above 0");
        }
        if self
            .media_types
            .iter()
            .any(|t| t.is_empty() || t.len() > 127 || !t.contains('/'))
        {
            return invalid("media.media_types: each entry is type/subtype or type/*");
        }
        Ok(())
    }

    /// Whether blobs of `media_type` are accepted.
    pub fn accepts(&self, media_type: &str) -> bool {
        let media_type = media_type.to_ascii_lowercase();
        self.media_types.is_empty()
            || self.media_types.iter().any(|t| match t.strip_suffix("/*") {
                Some(family) => media_type
                    .split_once('/')
                    .is_some_and(|(f, sub)| f == family && !sub.is_empty()),
                None => *t == media_type,
            })
    }
}
