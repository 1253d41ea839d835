//! PNG and JPEG through the `image` crate: 8/16-bit gray and RGB, always 2D.
//! Alpha is dropped; palette PNGs are expanded by the decoder.

use std::path::Path;

use image::{DynamicImage, ImageReader};
use ndarray::{Array3, Array4};

use super::{DType, Data, Header, Image, ImageError, ReadLimits, check_budget};

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, ImageError> {
    ImageReader::open(path).map_err(|e| ImageError::io(path, e))?.with_guessed_format().map_err(|e| ImageError::io(path, e))
}

fn dtype_of(ct: image::ColorType, path: &Path) -> Result<DType, ImageError> {
    use image::ColorType as C;
    Ok(match ct {
        C::L8 | C::La8 => DType::U8,
        C::L16 | C::La16 => DType::U16,
        C::Rgb8 | C::Rgba8 => DType::Rgb8,
        C::Rgb16 | C::Rgba16 => DType::Rgb16,
        other => return Err(ImageError::unsupported(path, format!("{other:?} pixels"))),
    })
}

pub fn read_header(path: &Path) -> Result<Header, ImageError> {
    let dec = reader(path)?.into_decoder().map_err(|e| img_err(path, e))?;
    use image::ImageDecoder;
    let (w, h) = dec.dimensions();
    let dtype = dtype_of(dec.color_type(), path)?;
    Ok(Header { shape: [1, h as usize, w as usize], dtype, ndim: 2, spacing: None })
}

fn img_err(path: &Path, e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::IoError(io) => ImageError::io(path, io),
        image::ImageError::Unsupported(u) => ImageError::unsupported(path, u),
        image::ImageError::Limits(l) => ImageError::TooLarge { path: path.to_path_buf(), what: l.to_string(), needed: u64::MAX, limit: 0 },
        other => ImageError::corrupt(path, other),
    }
}

pub fn read(path: &Path, limits: ReadLimits) -> Result<Image, ImageError> {
    let h = read_header(path)?;
    check_budget(path, h.shape, h.dtype, limits)?;
    let mut r = reader(path)?;
    let mut il = image::Limits::default();
    il.max_alloc = Some(limits.max_bytes.saturating_mul(2));
    il.max_image_width = None;
    il.max_image_height = None;
    r.limits(il);
    let img = r.decode().map_err(|e| img_err(path, e))?;
    let (w, hgt) = (img.width() as usize, img.height() as usize);
    let data = match (h.dtype, img) {
        (DType::U8, DynamicImage::ImageLuma8(b)) => Data::U8(Array3::from_shape_vec((1, hgt, w), b.into_raw()).expect("size")),
        (DType::U8, other) => Data::U8(Array3::from_shape_vec((1, hgt, w), other.into_luma8().into_raw()).expect("size")),
        (DType::U16, other) => Data::U16(Array3::from_shape_vec((1, hgt, w), other.into_luma16().into_raw()).expect("size")),
        (DType::Rgb8, other) => Data::Rgb8(Array4::from_shape_vec((1, hgt, w, 3), other.into_rgb8().into_raw()).expect("size")),
        (_, other) => Data::Rgb16(Array4::from_shape_vec((1, hgt, w, 3), other.into_rgb16().into_raw()).expect("size")),
    };
    Ok(Image { data, ndim: 2, spacing: None })
}

/// Writes a 2D image as PNG (8/16-bit gray or RGB) or, with `jpeg_quality`, as JPEG (8-bit gray
/// or RGB; quality 1–100), under a temporary name renamed into place.
pub fn write(path: &Path, data: &Data, ndim: u8, jpeg_quality: Option<u8>) -> Result<(), ImageError> {
    use image::{ExtendedColorType as C, ImageEncoder};
    let [z, h, w] = data.shape();
    let what = if jpeg_quality.is_some() { "JPEG" } else { "PNG" };
    if z != 1 || ndim != 2 {
        return Err(ImageError::unsupported(
            path,
            format!("{what} holds 2D images; this one has {z} planes (write it as tiff, npy or ome-zarr)"),
        ));
    }
    let (bytes, color): (std::borrow::Cow<[u8]>, C) = match data {
        Data::U8(a) => (super::le_bytes(a), C::L8),
        Data::Rgb8(a) => (super::le_bytes(a), C::Rgb8),
        Data::U16(a) if jpeg_quality.is_none() => (a.iter().flat_map(|v| v.to_ne_bytes()).collect(), C::L16),
        Data::Rgb16(a) if jpeg_quality.is_none() => (a.iter().flat_map(|v| v.to_ne_bytes()).collect(), C::Rgb16),
        other => {
            let holds = if jpeg_quality.is_some() { "8-bit gray or RGB" } else { "8- or 16-bit gray or RGB" };
            return Err(ImageError::unsupported(
                path,
                format!("{what} holds {holds} images, not {} (rescale it first, or write tiff)", other.dtype()),
            ));
        }
    };
    crate::util::write_atomic_with(path, |f| {
        let r = match jpeg_quality {
            Some(q) => image::codecs::jpeg::JpegEncoder::new_with_quality(f, q).write_image(&bytes, w as u32, h as u32, color),
            None => image::codecs::png::PngEncoder::new(f).write_image(&bytes, w as u32, h as u32, color),
        };
        r.map_err(std::io::Error::other)
    })
    .map_err(|e| ImageError::io(path, e))
}
