//! NumPy `.npy` arrays (format versions 1–3), 2D `(y, x)` or 3D `(z, y, x)`, C order.
//!
//! Supported element types: `u1`, `u2`, `u4`, `f4`, and `i1`/`i2`/`f8` converted to f32.
//! The header is checked against the file length before anything is allocated.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ndarray::Array3;

use super::{DType, Data, Header, Image, ImageError, ReadLimits, check_budget};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    U1,
    U2,
    U4,
    F4,
    I1,
    I2,
    F8,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::U1 | Elem::I1 => 1,
            Elem::U2 | Elem::I2 => 2,
            Elem::U4 | Elem::F4 => 4,
            Elem::F8 => 8,
        }
    }
    fn dtype(self) -> DType {
        match self {
            Elem::U1 => DType::U8,
            Elem::U2 => DType::U16,
            Elem::U4 => DType::U32,
            _ => DType::F32,
        }
    }
}

struct NpyHeader {
    elem: Elem,
    big_endian: bool,
    shape: [usize; 3],
    ndim: u8,
    data_offset: u64,
}

fn parse_header(path: &Path, r: &mut impl Read) -> Result<NpyHeader, ImageError> {
    let bad = |m: &str| ImageError::corrupt(path, format!("not a valid .npy file: {m}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad("shorter than its magic number"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (hlen, pre) = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => return Err(ImageError::unsupported(path, format!(".npy format version {v}"))),
    };
    if hlen > 1 << 20 {
        return Err(bad("header longer than 1 MiB"));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h).map_err(|_| bad("truncated header"))?;
    let h = String::from_utf8_lossy(&h);
    let field = |key: &str| -> Option<String> {
        let i = h.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = h[i..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(stripped) = rest.strip_prefix('(') {
            Some(stripped[..stripped.find(')')?].to_string())
        } else {
            let end = rest.find(',').or_else(|| rest.find('}'))?;
            Some(rest[..end].trim().trim_matches('\'').to_string())
        }
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr'"))?;
    let fortran = field("fortran_order").ok_or_else(|| bad("no 'fortran_order'"))?;
    let shape_s = field("shape").ok_or_else(|| bad("no 'shape'"))?;
    if fortran.trim() != "False" {
        return Err(ImageError::unsupported(path, "Fortran-ordered .npy (save with np.ascontiguousarray)"));
    }
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let elem = match code {
        "u1" | "b1" => Elem::U1,
        "u2" => Elem::U2,
        "u4" => Elem::U4,
        "f4" => Elem::F4,
        "i1" => Elem::I1,
        "i2" => Elem::I2,
        "f8" => Elem::F8,
        other => {
            return Err(ImageError::unsupported(
                path,
                format!(".npy element type '{other}' (supported: u1 u2 u4 f4, and i1 i2 f8 read as f32)"),
            ));
        }
    };
    let dims: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(&format!("shape entry '{s}'"))))
        .collect::<Result<_, _>>()?;
    let (shape, ndim) = match dims.as_slice() {
        [y, x] => ([1, *y, *x], 2),
        [z, y, x] => ([*z, *y, *x], 3),
        other => {
            return Err(ImageError::unsupported(path, format!(".npy with {} dimensions (expected 2 or 3)", other.len())));
        }
    };
    if shape.contains(&0) {
        return Err(bad("an axis of length 0"));
    }
    Ok(NpyHeader { elem, big_endian, shape, ndim, data_offset: (pre + hlen) as u64 })
}

fn open(path: &Path) -> Result<(BufReader<File>, NpyHeader, u64), ImageError> {
    let f = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let len = f.metadata().map_err(|e| ImageError::io(path, e))?.len();
    let mut r = BufReader::new(f);
    let h = parse_header(path, &mut r)?;
    Ok((r, h, len))
}

pub fn read_header(path: &Path) -> Result<Header, ImageError> {
    let (_, h, _) = open(path)?;
    Ok(Header { shape: h.shape, dtype: h.elem.dtype(), ndim: h.ndim, spacing: None })
}

pub fn read(path: &Path, limits: ReadLimits) -> Result<Image, ImageError> {
    read_range(path, limits, None)
}

/// Reads planes `z0..z1` (all with `None`), seeking past the ones before.
pub fn read_range(path: &Path, limits: ReadLimits, range: Option<(usize, usize)>) -> Result<Image, ImageError> {
    let (mut r, h, len) = open(path)?;
    let (z0, z1) = range.unwrap_or((0, h.shape[0]));
    if z0 > z1 || z1 > h.shape[0] {
        return Err(ImageError::corrupt(path, format!("planes {z0}..{z1} asked of {}", h.shape[0])));
    }
    let shape = [z1 - z0, h.shape[1], h.shape[2]];
    check_budget(path, shape, h.elem.dtype(), limits)?;
    // Saturating: a crafted header's three axes can pass 2^128 bytes.
    let need = h.shape.iter().fold(h.elem.size() as u128, |a, &n| a.saturating_mul(n as u128)).saturating_add(h.data_offset as u128);
    if need > len as u128 {
        return Err(ImageError::corrupt(path, format!("file is truncated: header declares {need} bytes, file has {len}")));
    }
    // Within the file now (an empty stack aside, whose planes may be any size: nothing is read).
    let plane = h.shape[1].saturating_mul(h.shape[2]);
    r.seek_relative(z0.saturating_mul(plane).saturating_mul(h.elem.size()) as i64).map_err(|e| ImageError::io(path, e))?;
    let n = shape.iter().product::<usize>();
    let mut raw = vec![0u8; n * h.elem.size()];
    r.read_exact(&mut raw).map_err(|e| ImageError::io(path, e))?;
    let sh = (shape[0], shape[1], shape[2]);
    macro_rules! conv {
        ($t:ty, $w:expr) => {{
            raw.chunks_exact($w)
                .map(|c| {
                    let a: [u8; $w] = c.try_into().expect("chunk size");
                    if h.big_endian { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }
                })
                .collect::<Vec<$t>>()
        }};
    }
    let data = match h.elem {
        Elem::U1 => Data::U8(Array3::from_shape_vec(sh, raw).expect("length checked")),
        Elem::U2 => Data::U16(Array3::from_shape_vec(sh, conv!(u16, 2)).expect("length checked")),
        Elem::U4 => Data::U32(Array3::from_shape_vec(sh, conv!(u32, 4)).expect("length checked")),
        Elem::F4 => Data::F32(Array3::from_shape_vec(sh, conv!(f32, 4)).expect("length checked")),
        Elem::I1 => Data::F32(Array3::from_shape_vec(sh, raw.iter().map(|&b| b as i8 as f32).collect()).expect("length checked")),
        Elem::I2 => Data::F32(Array3::from_shape_vec(sh, conv!(i16, 2).into_iter().map(f32::from).collect()).expect("length checked")),
        Elem::F8 => Data::F32(Array3::from_shape_vec(sh, conv!(f64, 8).into_iter().map(|v| v as f32).collect()).expect("length checked")),
    };
    Ok(Image { data, ndim: h.ndim, spacing: None })
}

/// Writes a 2D or 3D array as `.npy` (little-endian, C order).
pub fn write(path: &Path, data: &Data, ndim: u8) -> Result<(), ImageError> {
    let mut out = header_bytes(path, data.shape(), data.dtype(), ndim)?;
    out.extend_from_slice(&super::data_le_bytes(data).ok_or_else(|| rgb_refused(path))?);
    crate::util::write_atomic(path, &out).map_err(|e| ImageError::io(path, e))
}

fn rgb_refused(path: &Path) -> ImageError {
    ImageError::unsupported(path, "RGB images are written as TIFF only")
}

/// Writes a `.npy` a slab at a time (temporary file, renamed into place by `finish`).
pub struct NpyWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    w: Option<super::out_file::OutFile>,
    planes: usize,
    written: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, shape: [usize; 3], dtype: DType, ndim: u8) -> Result<NpyWriter, ImageError> {
        use std::io::Write;
        let head = header_bytes(path, shape, dtype, ndim)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        let tmp = crate::util::tmp_sibling(path);
        let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * dtype.bytes_per_voxel();
        let mut w = super::out_file::OutFile::create(&tmp, head.len() as u64 + bytes).map_err(|e| ImageError::io(&tmp, e))?;
        w.write_all(&head).map_err(|e| ImageError::io(&tmp, e))?;
        Ok(NpyWriter { path: path.to_path_buf(), tmp, w: Some(w), planes: shape[0], written: 0 })
    }
    pub fn append(&mut self, data: &Data) -> Result<(), ImageError> {
        use std::io::Write;
        if self.written + data.shape()[0] > self.planes {
            return Err(ImageError::corrupt(&self.path, format!("internal: more than {} planes appended", self.planes)));
        }
        let bytes = super::data_le_bytes(data).ok_or_else(|| rgb_refused(&self.path))?;
        if let Some(w) = self.w.as_mut() {
            w.write_all(&bytes).map_err(|e| ImageError::io(&self.tmp, e))?;
        }
        self.written += data.shape()[0];
        Ok(())
    }
    pub fn finish(mut self) -> Result<(), ImageError> {
        if self.written != self.planes {
            return Err(ImageError::corrupt(&self.path, format!("internal: {} of {} planes written", self.written, self.planes)));
        }
        if let Some(w) = self.w.take() {
            let f = w.finish().map_err(|e| ImageError::io(&self.tmp, e))?;
            crate::util::finish_file(f).map_err(|e| ImageError::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| ImageError::io(&self.path, e))?;
        self.written = usize::MAX;
        Ok(())
    }
}

impl Drop for NpyWriter {
    fn drop(&mut self) {
        if self.written != usize::MAX {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The `.npy` header (magic, version, padded dict) for an array of `shape` and `dtype`.
fn header_bytes(path: &Path, shape: [usize; 3], dtype: DType, ndim: u8) -> Result<Vec<u8>, ImageError> {
    let [z, y, x] = shape;
    let descr = match dtype {
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::F32 => "<f4",
        DType::Rgb8 | DType::Rgb16 => return Err(rgb_refused(path)),
    };
    let shape = if ndim == 2 { format!("({y}, {x})") } else { format!("({z}, {y}, {x})") };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = Data::U16(Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as u16));
        write(&p, &a, 3).unwrap();
        let img = read(&p, ReadLimits::default()).unwrap();
        assert_eq!(img.data, a);
        assert_eq!(img.ndim, 3);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&p, ReadLimits::default()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn axes_whose_product_passes_2_to_the_128_are_too_large_not_wrapped() {
        // 2^63 · 2^63 · 4 bytes is 2^128: a wrapping product would be 0 and pass every check
        // (found by the npy fuzz target; release builds wrap instead of panicking).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.npy");
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (9223372036854775808, 9223372036854775808, 4), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 64]);
        std::fs::write(&p, &bytes).unwrap();
        for range in [None, Some((0, 1)), Some((0, 0))] {
            match read_range(&p, ReadLimits::default(), range) {
                Err(ImageError::TooLarge { .. }) if range != Some((0, 0)) => {}
                Err(ImageError::Corrupt { msg, .. }) if range == Some((0, 0)) => assert!(msg.contains("truncated"), "{msg}"),
                other => panic!("{range:?}: {:?}", other.map(|i| i.ndim)),
            }
        }
    }
}
