//! Who may read a blob, and the check of a send's attachments.
//!
//! A blob is readable by its uploaders (who uploaded the bytes, or proved
//! having them), by both sides of a one-to-one message that carries it,
//! and by the current members of a group whose message carries it (a
//! member who leaves loses access; one who joins gains it). A send may
//! attach a blob its sender may read: uploaded, or received (forwarding).
//! The thumbnail the server made of an image is readable by everyone who
//! may read the image: its uploaders are the image's (at upload and at a
//! proven dedup), and every send of the image references it too.

use qim_proto::v1::{self, ErrorCode};
use qim_storage::media::{BlobId, BlobMeta, Scope};

use crate::ctx::Ctx;
use crate::post::Target;
use crate::reply::Refusal;

/// Groups referencing one blob that a read checks membership of; a blob
/// shared into more groups is still readable by uploaders and by direct
/// recipients, and by members of the first ones.
const MAX_GROUP_REFS: usize = 256;

/// Longest attachment name, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Whether `user` may read `id`.
pub(super) async fn may_read(ctx: &Ctx, user: &str, id: &BlobId) -> Result<bool, Refusal> {
    let media = &ctx.stores.media;
    if media.is_uploader(id, user).await? {
        return Ok(true);
    }
    if media.has_ref(id, &Scope::User(user.to_owned())).await? {
        return Ok(true);
    }
    for group in media.group_refs(id, MAX_GROUP_REFS).await? {
        if ctx.stores.groups.member(&group, user).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The blob's record when `user` may read it; `NOT_FOUND` for a blob the
/// server does not have, `PERMISSION_DENIED` for one `user` may not read.
pub(super) async fn readable(ctx: &Ctx, user: &str, id: &BlobId) -> Result<BlobMeta, Refusal> {
    let Some(meta) = ctx.stores.media.blob(id).await? else {
        return Err(Refusal::new(ErrorCode::NotFound, "no such blob"));
    };
    if !may_read(ctx, user, id).await? {
        return Err(Refusal::new(
            ErrorCode::PermissionDenied,
            "no message you can see carries this blob",
        ));
    }
    Ok(meta)
}

/// Checks `attachments` of a send by `sender` to `target` and records the
/// references that let its recipients read them; size and media type are
/// set from each blob's record. Refusals: `INVALID_ARGUMENT` (too many,
/// bad id, name or thumbnail too long), `NOT_FOUND` (no such blob),
/// `PERMISSION_DENIED` (a blob the sender may not share).
///
/// The references are recorded before the post is stored: a post that
/// then fails leaves a reference that grants its recipients what the
/// sender could have sent them anyway.
pub(crate) async fn check_attachments(
    ctx: &Ctx,
    sender: &str,
    to: &Option<v1::Peer>,
    target: &Target,
    attachments: &mut [v1::Attachment],
) -> Result<(), Refusal> {
    if attachments.is_empty() {
        return Ok(());
    }
    let config = &ctx.config.media;
    if attachments.len() > config.max_attachments as usize {
        return Err(Refusal::invalid(
            "too many attachments (media.max_attachments)",
        ));
    }
    let scopes = match (target, to.as_ref().and_then(|p| p.target.as_ref())) {
        (Target::User(recipient), _) => vec![
            Scope::User(sender.to_owned()),
            Scope::User(recipient.clone()),
        ],
        (Target::Group, Some(v1::peer::Target::Group(group))) => vec![Scope::Group(group.clone())],
        (Target::Group, _) => return Err(Refusal::invalid("attachments need a recipient")),
    };
    let until = super::hold_until(ctx);
    let media = &ctx.stores.media;
    let mut ids = Vec::with_capacity(attachments.len() * 2);
    for a in attachments.iter_mut() {
        if a.name.len() > MAX_NAME_BYTES {
            return Err(Refusal::invalid("attachment name too long"));
        }
        if a.thumbnail.len() > config.inline_thumbnail_bytes as usize {
            return Err(Refusal::invalid(
                "inline thumbnail too large (media.inline_thumbnail_bytes)",
            ));
        }
        let id = super::blob_id(&a.blob_id)?;
        let meta = shareable(ctx, sender, &id).await?;
        // Held before it is referenced: no collection takes it between
        // this check and the post's copies being recorded.
        if !media.hold(&id, until).await? {
            return Err(Refusal::new(ErrorCode::NotFound, "no such blob"));
        }
        a.size = meta.size;
        a.media_type = meta.media_type;
        ids.push(id);
        if !a.thumbnail_blob_id.is_empty() {
            let thumb = super::blob_id(&a.thumbnail_blob_id)?;
            shareable(ctx, sender, &thumb).await?;
            if !media.hold(&thumb, until).await? {
                return Err(Refusal::new(ErrorCode::NotFound, "no such blob"));
            }
            ids.push(thumb);
        }
        // The server's thumbnail of an image goes wherever the image goes,
        // and fills in what the sender left out.
        // A server thumbnail already collected is left out.
        if let Some(image) = meta.image
            && media.hold(&image.thumbnail, until).await?
        {
            ids.push(image.thumbnail);
            if a.width == 0 && a.height == 0 {
                a.width = image.width;
                a.height = image.height;
            }
            if a.thumbnail_blob_id.is_empty() {
                a.thumbnail_blob_id = image.thumbnail.0.to_vec().into();
            }
        }
    }
    for id in ids {
        media.add_refs(&id, &scopes).await?;
    }
    Ok(())
}

/// The record of a blob `sender` may attach.
async fn shareable(ctx: &Ctx, sender: &str, id: &BlobId) -> Result<BlobMeta, Refusal> {
    readable(ctx, sender, id).await.map_err(|r| match r.code {
        ErrorCode::PermissionDenied => Refusal::new(
            ErrorCode::PermissionDenied,
            "an attachment is a blob you did not upload and cannot see",
        ),
        _ => r,
    })
}
