//! Label previews for the report: one plane of an image as a gray PNG (contrast stretched
//! between its 0.5th and 99.5th percentiles) and of a label image as a colour PNG (each label
//! its own colour from a hash of its number, background black), inlined as base64 data URIs.

use ndarray::Array2;

use crate::io::Data;

/// One plane as f64 values (RGB as luminance, weights 299/587/114 per mille), at most
/// `max_side` pixels on its longer side (nearest sampling).
fn plane(data: &Data, z: usize, max_side: usize) -> Array2<f64> {
    let [_, h, w] = data.shape();
    let step = h.max(w).div_ceil(max_side.max(1)).max(1);
    let (oh, ow) = (h.div_ceil(step), w.div_ceil(step));
    Array2::from_shape_fn((oh, ow), |(y, x)| {
        let (y, x) = (y * step, x * step);
        match data {
            Data::U8(a) => a[[z, y, x]] as f64,
            Data::U16(a) => a[[z, y, x]] as f64,
            Data::U32(a) => a[[z, y, x]] as f64,
            Data::F32(a) => a[[z, y, x]] as f64,
            Data::Rgb8(a) => (299.0 * a[[z, y, x, 0]] as f64 + 587.0 * a[[z, y, x, 1]] as f64 + 114.0 * a[[z, y, x, 2]] as f64) / 1000.0,
            Data::Rgb16(a) => (299.0 * a[[z, y, x, 0]] as f64 + 587.0 * a[[z, y, x, 1]] as f64 + 114.0 * a[[z, y, x, 2]] as f64) / 1000.0,
        }
    })
}

fn png(width: usize, height: usize, pixels: &[u8], color: image::ExtendedColorType) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(pixels, width as u32, height as u32, color)
        .map_err(|e| format!("encoding a preview: {e}"))?;
    Ok(out)
}

/// The middle plane of an image, contrast stretched, as PNG.
pub fn gray(data: &Data, z: usize, max_side: usize) -> Result<Vec<u8>, String> {
    let p = plane(data, z, max_side);
    let mut v: Vec<f64> = p.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let (lo, hi) = if v.is_empty() { (0.0, 1.0) } else { (v[v.len() * 5 / 1000], v[(v.len() * 995 / 1000).min(v.len() - 1)]) };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let px: Vec<u8> =
        p.iter().map(|&x| if x.is_finite() { ((x - lo) / span * 255.0).clamp(0.0, 255.0).round() as u8 } else { 0 }).collect();
    png(p.ncols(), p.nrows(), &px, image::ExtendedColorType::L8)
}

/// A bright colour for a label (black for 0), the same in every report.
pub fn label_color(l: u64) -> [u8; 3] {
    if l == 0 {
        return [0, 0, 0];
    }
    let mut z = l.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 27;
    [64 + (z & 0xBF) as u8, 64 + ((z >> 8) & 0xBF) as u8, 64 + ((z >> 16) & 0xBF) as u8]
}

/// A plane of a label image in distinct colours, as PNG.
pub fn labels(data: &Data, z: usize, max_side: usize) -> Result<Vec<u8>, String> {
    let p = plane(data, z, max_side);
    let px: Vec<u8> = p.iter().flat_map(|&l| label_color(l as u64)).collect();
    png(p.ncols(), p.nrows(), &px, image::ExtendedColorType::Rgb8)
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        s.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn previews_are_pngs() {
        let a = ndarray::Array3::from_shape_fn((3, 40, 60), |(z, y, x)| (z * 100 + y + x) as u16);
        let g = gray(&Data::U16(a.clone()), 1, 32).unwrap();
        assert_eq!(&g[1..4], b"PNG");
        let img = image::load_from_memory(&g).unwrap();
        assert_eq!((img.width(), img.height()), (30, 20));
        let l = labels(&Data::U16(a), 1, 1000).unwrap();
        assert_eq!(image::load_from_memory(&l).unwrap().width(), 60);
        assert_ne!(label_color(1), label_color(2));
        assert_eq!(label_color(0), [0, 0, 0]);
    }
}
