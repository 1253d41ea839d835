//! TIFF and BigTIFF stacks written as ImageJ reads them, a slab at a time, every codec.
//!
//! ImageJ 1.x (and so Fiji's File › Open) reads an uncompressed file whose description says
//! `images=N` from its first directory only: it takes the first page's first strip offset and
//! reads the N planes as one contiguous block from there, ignoring the other directories. A
//! writer that puts each page's directory between the planes (as the `tiff` crate's encoder
//! does) gives ImageJ a correct first plane and garbage after it. This writer puts the 8- or
//! 16-byte header first, then every plane's strips back to back, then all directories at the
//! end, so that both ImageJ's shortcut and an ordinary reader that follows the directory chain
//! (tifffile, libtiff, this crate's reader) see the same voxels. Compressed stacks (LZW,
//! deflate, PackBits) are laid out the same way; ImageJ follows their directories (it takes the
//! shortcut only for uncompressed files).
//!
//! Planes are appended as they come, so a stack is written slab by slab in bounded memory; only
//! the strips' offsets and lengths (16 bytes a strip) are kept until [`Stack::finish`]. The
//! strips of an append are compressed in parallel, each on its own, so the bytes written do
//! not depend on the number of threads or on how the stack was cut into slabs.

use std::io::{Seek, SeekFrom, Write};

use rayon::prelude::*;
use tiff::encoder::compression::{CompressionAlgorithm, Deflate, DeflateLevel, Lzw, Packbits};

use super::DType;
use super::tiff_io::Compression;

/// TIFF field types used here.
const SHORT: u16 = 3;
const LONG: u16 = 4;
const RATIONAL: u16 = 5;
const ASCII: u16 = 2;
const LONG8: u16 = 16;

/// Strips hold at most this many bytes before compression (whole rows; a single row may be
/// larger).
const STRIP_BYTES: usize = 1 << 20;
/// An append compresses at most this many bytes of planes at a time (so a whole volume written
/// at once does not hold all of its compressed strips).
const BATCH_BYTES: usize = 64 << 20;

/// What every page's directory says besides its strips.
pub struct PageTags {
    /// ImageJ's description (first page only).
    pub description: String,
    pub software: String,
    /// X and Y resolution as rationals (pixels per unit).
    pub x_resolution: (u32, u32),
    pub y_resolution: (u32, u32),
}

/// A stack being written ([module docs](self)).
pub struct Stack<W: Write + Seek> {
    out: W,
    big: bool,
    dtype: DType,
    compression: Compression,
    ny: usize,
    nx: usize,
    nz: usize,
    /// Planes appended so far.
    written: usize,
    /// Where the next strip goes.
    pos: u64,
    /// Compressed stacks: every strip's (offset, length) so far, in page order.
    strips: Vec<(u64, u64)>,
    tags: PageTags,
}

fn samples(dtype: DType) -> (u16, u16, u16) {
    // (samples per pixel, bits per sample, sample format: 1 unsigned, 3 float)
    match dtype {
        DType::U8 => (1, 8, 1),
        DType::U16 => (1, 16, 1),
        DType::U32 => (1, 32, 1),
        DType::F32 => (1, 32, 3),
        DType::Rgb8 => (3, 8, 1),
        DType::Rgb16 => (3, 16, 1),
    }
}

/// The Compression tag's value.
fn compression_code(c: Compression) -> u16 {
    match c {
        Compression::None => 1,
        Compression::Lzw => 5,
        Compression::Deflate => 8,
        Compression::Packbits => 32773,
    }
}

/// One strip (whole rows of `row_bytes`) compressed on its own. PackBits packs each row
/// separately, as TIFF requires.
fn compress(c: Compression, strip: &[u8], row_bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(strip.len() / 4 + 64);
    match c {
        Compression::None => out.extend_from_slice(strip),
        Compression::Lzw => {
            Lzw.write_to(&mut out, strip)?;
        }
        Compression::Deflate => {
            Deflate::with_level(DeflateLevel::Balanced).write_to(&mut out, strip)?;
        }
        Compression::Packbits => {
            for row in strip.chunks(row_bytes.max(1)) {
                Packbits.write_to(&mut out, row)?;
            }
        }
    }
    Ok(out)
}

impl<W: Write + Seek> Stack<W> {
    /// Writes the header of a stack of `shape` (`[nz, ny, nx]`) planes of `dtype`.
    pub fn new(mut out: W, shape: [usize; 3], dtype: DType, big: bool, compression: Compression, tags: PageTags) -> std::io::Result<Self> {
        let (spp, bits, _) = samples(dtype);
        let pixels = shape.iter().map(|&d| d as u64).product::<u64>() * u64::from(spp) * u64::from(bits / 8);
        // Classic TIFF offsets are 32-bit; leave room for the directories after the pixels
        // (compressed strips are checked as they are written).
        if !big && compression == Compression::None && pixels > u64::from(u32::MAX) - (64 << 20) {
            return Err(std::io::Error::other(format!("{pixels} bytes of pixels do not fit a classic TIFF; write BigTIFF")));
        }
        // The first directory's offset is patched in by `finish`.
        if big {
            out.write_all(b"II\x2b\x00\x08\x00\x00\x00")?;
            out.write_all(&0u64.to_le_bytes())?;
        } else {
            out.write_all(b"II\x2a\x00")?;
            out.write_all(&0u32.to_le_bytes())?;
        }
        let pos = if big { 16 } else { 8 };
        Ok(Stack { out, big, dtype, compression, nz: shape[0], ny: shape[1], nx: shape[2], written: 0, pos, strips: Vec::new(), tags })
    }

    /// Bytes of one plane.
    fn plane_bytes(&self) -> usize {
        let (spp, bits, _) = samples(self.dtype);
        self.ny * self.nx * usize::from(spp) * usize::from(bits / 8)
    }

    /// Bytes of one row, and rows per strip.
    fn strip_rows(&self) -> (usize, usize) {
        let row_bytes = self.plane_bytes() / self.ny.max(1);
        (row_bytes, (STRIP_BYTES / row_bytes.max(1)).clamp(1, self.ny.max(1)))
    }

    /// Appends the next planes' pixels (little-endian, C order, whole planes).
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let pb = self.plane_bytes();
        let planes = bytes.len().checked_div(pb).unwrap_or(0);
        if pb == 0 || !bytes.len().is_multiple_of(pb) || self.written + planes > self.nz {
            return Err(std::io::Error::other(format!(
                "internal: {} bytes after plane {} of {}, expected whole planes of {pb} bytes",
                bytes.len(),
                self.written,
                self.nz,
            )));
        }
        if self.compression == Compression::None {
            self.out.write_all(bytes)?;
            self.pos += bytes.len() as u64;
        } else {
            let (row_bytes, rows) = self.strip_rows();
            let c = self.compression;
            for batch in bytes.chunks((BATCH_BYTES / pb).max(1) * pb) {
                let strips: Vec<&[u8]> = batch.chunks(pb).flat_map(|plane| plane.chunks(rows * row_bytes)).collect();
                let packed: Vec<std::io::Result<Vec<u8>>> = strips.into_par_iter().map(|s| compress(c, s, row_bytes)).collect();
                for p in packed {
                    let p = p?;
                    if !self.big && self.pos + p.len() as u64 > u64::from(u32::MAX) - (64 << 20) {
                        return Err(std::io::Error::other("compressed pixels do not fit a classic TIFF; write BigTIFF"));
                    }
                    self.out.write_all(&p)?;
                    self.strips.push((self.pos, p.len() as u64));
                    self.pos += p.len() as u64;
                }
            }
        }
        self.written += planes;
        Ok(())
    }

    /// Writes every page's directory after the pixels, links the header to the first, and
    /// returns the writer (positioned at the end of the file).
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.written != self.nz {
            return Err(std::io::Error::other(format!("internal: {} of {} planes written", self.written, self.nz)));
        }
        let (spp, bits, format) = samples(self.dtype);
        let (row_bytes, rows_per_strip) = self.strip_rows();
        let strips = self.ny.div_ceil(rows_per_strip).max(1);
        let data_start = if self.big { 16 } else { 8 };
        let mut pos = self.pos;
        // Directories start on a word boundary.
        let pad = pos % 2;
        self.out.write_all(&vec![0u8; pad as usize])?;
        pos += pad;
        let first_ifd = pos;
        let mut ifd = Vec::new();
        for z in 0..self.nz {
            let (offsets, counts): (Vec<u64>, Vec<u64>) = if self.compression == Compression::None {
                let plane0 = data_start + (self.plane_bytes() * z) as u64;
                (0..strips)
                    .map(|s| {
                        (
                            plane0 + (s * rows_per_strip * row_bytes) as u64,
                            ((self.ny - s * rows_per_strip).min(rows_per_strip) * row_bytes) as u64,
                        )
                    })
                    .unzip()
            } else {
                self.strips.get(z * strips..(z + 1) * strips).unwrap_or_default().iter().copied().unzip()
            };
            let mut d = Dir::new(self.big);
            d.longs(256, &[self.nx as u64]);
            d.longs(257, &[self.ny as u64]);
            d.shorts(258, &vec![bits; spp as usize]);
            d.shorts(259, &[compression_code(self.compression)]);
            d.shorts(262, &[if spp == 3 { 2 } else { 1 }]);
            if z == 0 {
                d.ascii(270, &self.tags.description);
            }
            d.offsets(273, &offsets);
            d.shorts(277, &[spp]);
            d.longs(278, &[rows_per_strip as u64]);
            d.offsets(279, &counts);
            d.rational(282, self.tags.x_resolution);
            d.rational(283, self.tags.y_resolution);
            d.shorts(284, &[1]);
            d.shorts(296, &[1]);
            d.ascii(305, &self.tags.software);
            d.shorts(339, &vec![format; spp as usize]);
            let last = z + 1 == self.nz;
            ifd.clear();
            pos = d.encode(pos, last, &mut ifd);
            self.out.write_all(&ifd)?;
        }
        self.out.seek(SeekFrom::Start(if self.big { 8 } else { 4 }))?;
        if self.big {
            self.out.write_all(&first_ifd.to_le_bytes())?;
        } else {
            let off = u32::try_from(first_ifd).map_err(|_| std::io::Error::other("internal: classic TIFF past 4 GiB"))?;
            self.out.write_all(&off.to_le_bytes())?;
        }
        self.out.seek(SeekFrom::End(0))?;
        Ok(self.out)
    }
}

/// One directory's entries (tag, type, count, value bytes), sorted by tag as TIFF requires.
struct Dir {
    big: bool,
    entries: Vec<(u16, u16, u64, Vec<u8>)>,
}

impl Dir {
    fn new(big: bool) -> Self {
        Dir { big, entries: Vec::new() }
    }
    fn shorts(&mut self, tag: u16, v: &[u16]) {
        self.entries.push((tag, SHORT, v.len() as u64, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    fn longs(&mut self, tag: u16, v: &[u64]) {
        self.entries.push((tag, LONG, v.len() as u64, v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()));
    }
    /// Strip offsets and byte counts: LONG in classic TIFF, LONG8 in BigTIFF.
    fn offsets(&mut self, tag: u16, v: &[u64]) {
        if self.big {
            self.entries.push((tag, LONG8, v.len() as u64, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        } else {
            self.longs(tag, v);
        }
    }
    fn rational(&mut self, tag: u16, (n, d): (u32, u32)) {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(&d.to_le_bytes());
        self.entries.push((tag, RATIONAL, 1, b));
    }
    fn ascii(&mut self, tag: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.entries.push((tag, ASCII, b.len() as u64, b));
    }

    /// The directory as it is written at file offset `at`: entries, the next directory's offset
    /// (0 when `last`), then the values too large for an entry. Returns the offset after it.
    fn encode(&mut self, at: u64, last: bool, out: &mut Vec<u8>) -> u64 {
        self.entries.sort_by_key(|e| e.0);
        let (count_len, entry_len, inline, next_len) = if self.big { (8u64, 20u64, 8usize, 8u64) } else { (2, 12, 4, 4) };
        let n = self.entries.len() as u64;
        let mut extra_at = at + count_len + n * entry_len + next_len;
        let mut extra = Vec::new();
        if self.big {
            out.extend_from_slice(&n.to_le_bytes());
        } else {
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        for (tag, ty, count, value) in &self.entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            if self.big {
                out.extend_from_slice(&count.to_le_bytes());
            } else {
                out.extend_from_slice(&(*count as u32).to_le_bytes());
            }
            if value.len() <= inline {
                let mut v = value.clone();
                v.resize(inline, 0);
                out.extend_from_slice(&v);
            } else {
                if self.big {
                    out.extend_from_slice(&extra_at.to_le_bytes());
                } else {
                    out.extend_from_slice(&(extra_at as u32).to_le_bytes());
                }
                extra.extend_from_slice(value);
                if value.len() % 2 == 1 {
                    extra.push(0);
                }
                extra_at += value.len().next_multiple_of(2) as u64;
            }
        }
        let next = if last { 0 } else { extra_at };
        if self.big {
            out.extend_from_slice(&next.to_le_bytes());
        } else {
            out.extend_from_slice(&(next as u32).to_le_bytes());
        }
        out.extend_from_slice(&extra);
        extra_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> PageTags {
        PageTags { description: "ImageJ=1.11a\nimages=3\n".into(), software: "t".into(), x_resolution: (2, 1), y_resolution: (2, 1) }
    }

    #[test]
    fn pixels_are_contiguous_after_the_header_and_the_directories_follow() {
        for big in [false, true] {
            let (nz, ny, nx) = (3usize, 5usize, 7usize);
            let planes: Vec<Vec<u8>> = (0..nz).map(|z| (0..ny * nx * 2).map(|i| (z * 31 + i) as u8).collect()).collect();
            let mut w = Stack::new(std::io::Cursor::new(Vec::new()), [nz, ny, nx], DType::U16, big, Compression::None, tags()).unwrap();
            for p in &planes {
                w.append(p).unwrap();
            }
            let bytes = w.finish().unwrap().into_inner();
            let start = if big { 16 } else { 8 };
            // What ImageJ reads for an `images=N` file: every plane back to back from the first strip.
            assert_eq!(&bytes[start..start + planes.concat().len()], &planes.concat()[..], "big={big}");
            let first_ifd = if big {
                u64::from_le_bytes(bytes[8..16].try_into().unwrap())
            } else {
                u64::from(u32::from_le_bytes(bytes[4..8].try_into().unwrap()))
            };
            assert_eq!(first_ifd, (start + planes.concat().len()) as u64, "directories start after the pixels");
            assert_eq!(first_ifd % 2, 0);
        }
    }

    /// A compressed stack of planes of several strips, appended in slabs of `cuts`, under a pool
    /// of `threads`.
    fn compressed(c: Compression, planes: &[Vec<u8>], ny: usize, nx: usize, cuts: &[usize], threads: usize) -> Vec<u8> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut w = Stack::new(std::io::Cursor::new(Vec::new()), [planes.len(), ny, nx], DType::U16, false, c, tags()).unwrap();
            let mut z = 0;
            for &n in cuts {
                w.append(&planes[z..z + n].concat()).unwrap();
                z += n;
            }
            w.finish().unwrap().into_inner()
        })
    }

    #[test]
    fn compressed_strips_are_the_same_bytes_whatever_the_threads_or_slabs_and_decode() {
        // 600 rows of 1,000 u16: 524 rows a strip, two strips a plane.
        let (nz, ny, nx) = (5usize, 600usize, 1000usize);
        let planes: Vec<Vec<u8>> =
            (0..nz).map(|z| (0..ny * nx).flat_map(|i| (((i / 97) * 13 + z * 1000 + (i % 7)) as u16).to_le_bytes()).collect()).collect();
        for c in [Compression::Lzw, Compression::Deflate, Compression::Packbits] {
            let one = compressed(c, &planes, ny, nx, &[5], 1);
            assert_eq!(one, compressed(c, &planes, ny, nx, &[2, 1, 2], 4), "{c:?}");
            if c != Compression::Packbits {
                assert!(one.len() < planes.concat().len(), "{c:?} compresses");
            }
            let mut dec = tiff::decoder::Decoder::new(std::io::Cursor::new(&one)).unwrap();
            for (z, plane) in planes.iter().enumerate() {
                if z > 0 {
                    dec.next_image().unwrap();
                }
                let want: Vec<u16> = plane.chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
                match dec.read_image().unwrap() {
                    tiff::decoder::DecodingResult::U16(v) => assert_eq!(v, want, "{c:?} plane {z}"),
                    _ => panic!("not u16"),
                }
            }
            assert!(!dec.more_images());
        }
    }

    #[test]
    fn planes_of_the_wrong_size_or_count_are_refused() {
        let mut w = Stack::new(std::io::Cursor::new(Vec::new()), [2, 2, 2], DType::U8, false, Compression::None, tags()).unwrap();
        assert!(w.append(&[0; 3]).is_err());
        w.append(&[0; 4]).unwrap();
        assert!(w.finish().is_err(), "one of two planes");
        assert!(
            Stack::new(std::io::Cursor::new(Vec::new()), [1 << 20, 1 << 10, 1 << 10], DType::U8, false, Compression::None, tags()).is_err(),
            "1 TiB in a classic TIFF"
        );
    }
}
