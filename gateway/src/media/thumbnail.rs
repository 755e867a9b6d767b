//! Thumbnails of uploaded images, made on the server with a bounded
//! decode.
//!
//! An upload whose declared media type is one of the formats below is
//! decoded once its hash checked: the dimensions come from the header
//! first (more than `media.thumbnail_max_pixels` is refused before a pixel
//! is decoded), then the decode runs with `image::io::Limits` (the output
//! buffer and the decoder's allocations within
//! `media.thumbnail_max_alloc_bytes`), on a blocking thread, holding one of
//! `media.thumbnail_concurrency` slots for the whole read and decode, and
//! within `media.thumbnail_timeout_ms`. An image beyond these bounds (a
//! decompression bomb, a decoder made to crawl) is refused: `IMAGE_REFUSED`,
//! nothing kept. The format is taken from the declared type, never guessed
//! from the bytes: other types are never decoded. Bytes the decoder cannot
//! read (truncated, corrupt, another format) are kept as a plain file
//! without a thumbnail, as any file is: the server never renders them, and
//! apps often label files loosely or send a photo cut short.

use std::io::Cursor;
use std::time::Duration;

use image::error::LimitErrorKind;
use image::{DynamicImage, GenericImageView as _, ImageFormat};
use qim_proto::v1::ErrorCode;
use qim_storage::media::{BlobBytes, BlobId};

use crate::ctx::Ctx;
use crate::reply::Refusal;

/// JPEG quality of the thumbnails.
const QUALITY: u8 = 80;

/// The media type of the thumbnails.
pub(super) const THUMBNAIL_TYPE: &str = "image/jpeg";

/// The format of a declared media type the server decodes, if any.
pub(super) fn format(media_type: &str) -> Option<ImageFormat> {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    match essence {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// An image decoded and its thumbnail.
pub(super) struct Thumbnail {
    /// Pixels of the image.
    pub(super) width: u32,
    pub(super) height: u32,
    /// The thumbnail, JPEG.
    pub(super) jpeg: Vec<u8>,
}

/// Why an image got no thumbnail: refused (`IMAGE_REFUSED`), or, when
/// undecodable, kept as a plain file.
#[derive(Debug, thiserror::Error)]
pub(super) enum ImageRefused {
    #[error("the image has {width}x{height} pixels, more than media.thumbnail_max_pixels")]
    TooManyPixels { width: u32, height: u32 },
    #[error("decoding the image needs more memory than media.thumbnail_max_alloc_bytes")]
    TooMuchMemory,
    #[error("decoding the image took longer than media.thumbnail_timeout_ms")]
    Timeout,
    #[error("the bytes are not a readable image of the declared type")]
    Undecodable,
}

impl ImageRefused {
    /// Whether the upload is refused (the bounds), not kept as a file.
    pub(super) fn refuses(&self) -> bool {
        !matches!(self, ImageRefused::Undecodable)
    }

    /// The outcome label of the `images` metric.
    pub(super) fn label(&self) -> &'static str {
        match self {
            ImageRefused::TooManyPixels { .. } => "too_many_pixels",
            ImageRefused::TooMuchMemory => "too_much_memory",
            ImageRefused::Timeout => "timeout",
            ImageRefused::Undecodable => "undecodable",
        }
    }
}

/// What a decode may take.
#[derive(Clone, Copy)]
struct Bounds {
    max_pixels: u64,
    max_alloc: u64,
    side: u32,
}

/// Reads blob `id` (`size` bytes) and makes its thumbnail within the
/// bounds of `media.thumbnail_*`. `Ok(Err(_))`: no thumbnail (see
/// [`ImageRefused::refuses`]); `Err(_)`: the blob could not be read.
pub(super) async fn make(
    ctx: &Ctx,
    format: ImageFormat,
    bytes: &dyn BlobBytes,
    id: &BlobId,
    size: u64,
) -> Result<Result<Thumbnail, ImageRefused>, Refusal> {
    let config = &ctx.config.media;
    let bounds = Bounds {
        max_pixels: config.thumbnail_max_pixels,
        max_alloc: config.thumbnail_max_alloc_bytes,
        side: config.thumbnail_side,
    };
    // The slot is held from the read to the end of the decode (even past
    // a timeout: the thread cannot be stopped, and it still takes a core).
    let Ok(slot) = ctx.image_slots.clone().acquire_owned().await else {
        return Err(Refusal::new(
            ErrorCode::Internal,
            "image decode slots closed",
        ));
    };
    let len = usize::try_from(size)
        .map_err(|_| Refusal::new(ErrorCode::Internal, "blob too large to read"))?;
    let data = bytes.read(id, 0, len).await?;
    let decode = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        decode(&data, format, bounds)
    });
    let timeout = Duration::from_millis(config.thumbnail_timeout_ms);
    Ok(match tokio::time::timeout(timeout, decode).await {
        Err(_) => Err(ImageRefused::Timeout),
        // A decoder that panicked: the bytes are not a readable image.
        Ok(Err(_)) => Err(ImageRefused::Undecodable),
        Ok(Ok(outcome)) => outcome,
    })
}

/// Decodes `data` as `format` and makes its thumbnail (blocking).
fn decode(data: &[u8], format: ImageFormat, bounds: Bounds) -> Result<Thumbnail, ImageRefused> {
    let reader = || image::io::Reader::with_format(Cursor::new(data), format);
    let (width, height) = reader().into_dimensions().map_err(refused)?;
    if u64::from(width) * u64::from(height) > bounds.max_pixels || width == 0 || height == 0 {
        return Err(ImageRefused::TooManyPixels { width, height });
    }
    let mut limits = image::io::Limits::default();
    let max_side = u32::try_from(bounds.max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(bounds.max_alloc);
    let mut reader = reader();
    reader.limits(limits);
    let image = reader.decode().map_err(refused)?;
    let small = if width <= bounds.side && height <= bounds.side {
        image
    } else {
        image.thumbnail(bounds.side, bounds.side)
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&on_white(&small))
        .map_err(|_| ImageRefused::Undecodable)?;
    Ok(Thumbnail {
        width,
        height,
        jpeg,
    })
}

/// The image as RGB, transparent pixels laid on white (JPEG has no alpha).
fn on_white(image: &DynamicImage) -> image::RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let (width, height) = image.dimensions();
    let rgba = image.to_rgba8();
    image::RgbImage::from_fn(width, height, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| {
            let c = u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a));
            u8::try_from(c / 255).unwrap_or(u8::MAX)
        };
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

fn refused(e: image::ImageError) -> ImageRefused {
    match e {
        image::ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => ImageRefused::TooManyPixels {
                width: 0,
                height: 0,
            },
            _ => ImageRefused::TooMuchMemory,
        },
        _ => ImageRefused::Undecodable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_pixels: 1_000_000,
        max_alloc: 64 << 20,
        side: 32,
    };

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 0, 128])
        });
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, ImageFormat::Png)
            .expect("encode test png");
        out.into_inner()
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_the_real_size() {
        let t = decode(&png(200, 100), ImageFormat::Png, BOUNDS).expect("decodes");
        assert_eq!((t.width, t.height), (200, 100));
        let thumb = image::load_from_memory_with_format(&t.jpeg, ImageFormat::Jpeg).expect("jpeg");
        assert_eq!(thumb.dimensions(), (32, 16));
        let t = decode(&png(10, 20), ImageFormat::Png, BOUNDS).expect("decodes");
        let thumb = image::load_from_memory_with_format(&t.jpeg, ImageFormat::Jpeg).expect("jpeg");
        assert_eq!(
            thumb.dimensions(),
            (10, 20),
            "a small image is not enlarged"
        );
    }

    #[test]
    fn bounds_refuse_before_decoding() {
        assert!(matches!(
            decode(&png(2000, 1000), ImageFormat::Png, BOUNDS),
            Err(ImageRefused::TooManyPixels {
                width: 2000,
                height: 1000
            })
        ));
        let tight = Bounds {
            max_alloc: 1000,
            ..BOUNDS
        };
        assert!(matches!(
            decode(&png(100, 100), ImageFormat::Png, tight),
            Err(ImageRefused::TooMuchMemory)
        ));
        let mut cut = png(100, 100);
        cut.truncate(cut.len() / 2);
        assert!(matches!(
            decode(&cut, ImageFormat::Png, BOUNDS),
            Err(ImageRefused::Undecodable)
        ));
        assert!(matches!(
            decode(&png(10, 10), ImageFormat::Jpeg, BOUNDS),
            Err(ImageRefused::Undecodable)
        ));
    }

    #[test]
    fn only_declared_image_types_are_decoded() {
        assert_eq!(format("image/png"), Some(ImageFormat::Png));
        assert_eq!(format("image/jpeg; q=1"), Some(ImageFormat::Jpeg));
        assert_eq!(format("image/svg+xml"), None);
        assert_eq!(format("application/octet-stream"), None);
    }
}
