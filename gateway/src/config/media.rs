//! The `[media]` section: blob sizes and types, upload chunking, the
//! per-user quotas of uploads, how long abandoned uploads stay, and where
//! blob bytes live (files, or an S3-compatible object store: `s3_*`).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::sections::{example_line, section};

section! {
    /// Images and files: uploads on their own streams below chat, content-addressed blobs.
    /// Refusals: BLOB_TOO_LARGE, MEDIA_TYPE_REFUSED, QUOTA_EXCEEDED, HASH_MISMATCH, OUT_OF_RANGE,
    /// IMAGE_REFUSED.
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
        /// How long a blob stays after its last use (published, proven by a dedup upload, checked
        /// for a send) with no stored message carrying it, in milliseconds; then its bytes, its
        /// thumbnail and its records are collected. Also how often a blob still carried is looked
        /// at again; a pass runs every quarter of it (1 s to 1 h).
        collect_grace_ms: u64 = 24 * 3_600_000,
        /// Attachments one message may carry. Sent in Welcome.
        max_attachments: u32 = 10,
        /// Largest inline thumbnail of an attachment, in bytes.
        inline_thumbnail_bytes: u32 = 8 * 1024,
        /// Longest side of the thumbnails the server makes of uploaded images (PNG, JPEG, GIF,
        /// WebP), in pixels; 0: the server decodes no image and makes no thumbnail.
        thumbnail_side: u32 = 320,
        /// Largest image the server decodes, in pixels (width times height, read from the header
        /// before any pixel is decoded); a larger one is refused with IMAGE_REFUSED.
        thumbnail_max_pixels: u64 = 50_000_000,
        /// Memory one decode may allocate (image::io::Limits::max_alloc), in bytes; an image that
        /// needs more is refused with IMAGE_REFUSED.
        thumbnail_max_alloc_bytes: u64 = 256 << 20,
        /// Time one decode and thumbnail may take, in milliseconds; a slower one is refused with
        /// IMAGE_REFUSED (its thread finishes in the background, holding its decode slot).
        thumbnail_timeout_ms: u64 = 10_000,
        /// Images decoded at once on this node (each on a blocking thread); further uploads wait
        /// their turn, so a flood of images cannot take every core.
        thumbnail_concurrency: u32 = 2,
        /// Directory of blob files. Unset: `<server.data_dir>/store/media` with the embedded
        /// store; with a cluster store media is off unless this names a directory every node
        /// shares (a network file system) or `s3_endpoint` is set.
        blob_dir: Option<std::path::PathBuf> = None,
        /// Blob bytes in an S3-compatible object store (any backend; a cluster's nodes then share
        /// them): the base URL of its API, e.g. "https://s3.eu-west-1.amazonaws.com" (http:// only
        /// for a store on a trusted network). Needs s3_bucket, s3_access_key_id and one of
        /// s3_secret_key_file or s3_secret_key_env; not with blob_dir.
        s3_endpoint: Option<String> = None,
        /// The bucket of the blobs (it must exist).
        s3_bucket: Option<String> = None,
        /// Region the requests are signed for (SigV4).
        s3_region: String = "us-east-1".to_owned(),
        /// Access key id.
        s3_access_key_id: Option<String> = None,
        /// File holding the secret access key (surrounding whitespace ignored); keep it readable by
        /// the gateway's user only.
        s3_secret_key_file: Option<std::path::PathBuf> = None,
        /// Name of the environment variable holding the secret access key (instead of a file).
        s3_secret_key_env: Option<String> = None,
        /// Path-style requests (endpoint/bucket/key), as most self-hosted stores want; false:
        /// virtual-hosted style (bucket.endpoint/key).
        s3_path_style: bool = true,
        /// Prefix of every object key ("qim/media/"), so a bucket can be shared; letters, digits,
        /// '-', '_', '.' and '/'.
        s3_key_prefix: String = String::new(),
    }
}

/// Why the S3 options could not be made into a client's.
#[derive(Debug, thiserror::Error)]
pub enum S3SecretError {
    /// The secret key file could not be read.
    #[error("media.s3_secret_key_file {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The environment variable is unset or not unicode.
    #[error("media.s3_secret_key_env: the variable {0} is not set")]
    Env(String),
    /// The secret is empty.
    #[error("media.s3_secret_key_file/_env: the secret key is empty")]
    Empty,
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
        if self.thumbnail_side > 0
            && (self.thumbnail_concurrency == 0
                || self.thumbnail_timeout_ms == 0
                || self.thumbnail_max_pixels == 0)
        {
            return invalid(
                "media.thumbnail_concurrency, _timeout_ms and _max_pixels must be above 0",
            );
        }
        self.validate_s3()?;
        if self
            .media_types
            .iter()
            .any(|t| t.is_empty() || t.len() > 127 || !t.contains('/'))
        {
            return invalid("media.media_types: each entry is type/subtype or type/*");
        }
        Ok(())
    }

    fn validate_s3(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        let secret_file = self.s3_secret_key_file.is_some();
        let secret_env = self.s3_secret_key_env.is_some();
        let any = self.s3_endpoint.is_some()
            || self.s3_bucket.is_some()
            || self.s3_access_key_id.is_some()
            || secret_file
            || secret_env;
        if !any {
            return Ok(());
        }
        let Some(endpoint) = &self.s3_endpoint else {
            return invalid("media.s3_* options are set without media.s3_endpoint");
        };
        if self.s3_bucket.as_deref().is_none_or(str::is_empty)
            || self.s3_access_key_id.as_deref().is_none_or(str::is_empty)
        {
            return invalid("media.s3_endpoint needs media.s3_bucket and media.s3_access_key_id");
        }
        if secret_file == secret_env {
            return invalid(
                "media.s3_endpoint needs exactly one of media.s3_secret_key_file and \
                 media.s3_secret_key_env",
            );
        }
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return invalid("media.s3_endpoint is an https:// (or http://) URL");
        }
        if self.s3_region.is_empty() {
            return invalid("media.s3_region must not be empty");
        }
        if self.blob_dir.is_some() {
            return invalid("media.blob_dir and media.s3_endpoint exclude each other");
        }
        let prefix_ok = self.s3_key_prefix.split('/').all(|part| {
            part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
        if !prefix_ok {
            return invalid("media.s3_key_prefix takes letters, digits, '-', '_', '.' and '/'");
        }
        Ok(())
    }

    /// The object store's options when `s3_endpoint` is set, with the
    /// secret key read from its file or variable (after [`validate`]).
    ///
    /// [`validate`]: Media::validate
    pub fn s3_options(&self) -> Result<Option<qim_storage::media::s3::S3Options>, S3SecretError> {
        let (Some(endpoint), Some(bucket), Some(key_id)) =
            (&self.s3_endpoint, &self.s3_bucket, &self.s3_access_key_id)
        else {
            return Ok(None);
        };
        let secret = match (&self.s3_secret_key_file, &self.s3_secret_key_env) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|source| S3SecretError::File {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| S3SecretError::Env(var.clone()))?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        if secret.is_empty() {
            return Err(S3SecretError::Empty);
        }
        Ok(Some(qim_storage::media::s3::S3Options {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            region: self.s3_region.clone(),
            access_key_id: key_id.clone(),
            secret_access_key: secret,
            path_style: self.s3_path_style,
            key_prefix: self.s3_key_prefix.clone(),
        }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(secret_file: &std::path::Path) -> Media {
        Media {
            s3_endpoint: Some("https://s3.example.test".into()),
            s3_bucket: Some("blobs".into()),
            s3_access_key_id: Some("key-id".into()),
            s3_secret_key_file: Some(secret_file.to_owned()),
            s3_key_prefix: "qim/media/".into(),
            ..Media::default()
        }
    }

    #[test]
    fn half_set_s3_options_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "  s3cr3t-value\n").expect("write");
        let frame = 64 * 1024;
        s3(&secret).validate(frame).expect("a full set is valid");
        let refused = |m: Media| {
            assert!(
                matches!(m.validate(frame), Err(ConfigError::Invalid(_))),
                "{m:?}"
            );
        };
        refused(Media {
            s3_endpoint: None,
            ..s3(&secret)
        });
        refused(Media {
            s3_bucket: None,
            ..s3(&secret)
        });
        refused(Media {
            s3_access_key_id: Some(String::new()),
            ..s3(&secret)
        });
        refused(Media {
            s3_secret_key_file: None,
            ..s3(&secret)
        });
        refused(Media {
            s3_secret_key_env: Some("QIM_S3_SECRET".into()),
            ..s3(&secret)
        });
        refused(Media {
            s3_endpoint: Some("s3.example.test".into()),
            ..s3(&secret)
        });
        refused(Media {
            blob_dir: Some(dir.path().to_owned()),
            ..s3(&secret)
        });
        refused(Media {
            s3_key_prefix: "a/../b".into(),
            ..s3(&secret)
        });
        refused(Media {
            s3_secret_key_file: None,
            s3_endpoint: None,
            s3_bucket: None,
            s3_access_key_id: None,
            s3_secret_key_env: Some("QIM_S3_SECRET".into()),
            ..Media::default()
        });

        let options = s3(&secret).s3_options().expect("read").expect("set");
        assert_eq!(options.secret_access_key, "s3cr3t-value", "trimmed");
        assert!(!format!("{options:?}").contains("s3cr3t"), "redacted");
        assert_eq!(Media::default().s3_options().expect("unset"), None);
        std::fs::write(&secret, "\n").expect("write");
        assert!(matches!(
            s3(&secret).s3_options(),
            Err(S3SecretError::Empty)
        ));
        let missing = Media {
            s3_secret_key_file: None,
            s3_secret_key_env: Some("QIM_TEST_UNSET_S3_SECRET_VARIABLE".into()),
            ..s3(&secret)
        };
        assert!(matches!(missing.s3_options(), Err(S3SecretError::Env(_))));
    }
}
