//! TIFF and BigTIFF: multi-page z-stacks in, ImageJ-hyperstack z-stacks out.
//!
//! Reading walks the page chain once to check that every page has the same size and sample type
//! (and to count the slices) before a single voxel is allocated. Strips and tiles and the usual
//! compressions (none, LZW, Deflate, PackBits, JPEG) are decoded by the `tiff` crate, with its
//! per-page limits set from our byte budget. Signed 8/16-bit and 64-bit float samples are
//! converted to f32 (exact for the integers).
//!
//! Spacing comes, in this order, from an ImageJ description (`spacing=`, `unit=` and the
//! X/YResolution tags), an OME-XML description (`PhysicalSizeX/Y/Z`), or resolution tags in
//! centimetres. Resolution in inches (the 72-dpi default of most writers) is ignored.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::{Array3, Array4};
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::encoder::Rational;
use tiff::tags::Tag;

use super::tiff_stack::{PageTags, Stack};
use super::{DType, Data, Header, Image, ImageError, ReadLimits, Spacing, check_budget};

/// Compression of written TIFFs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lzw,
    Deflate,
    Packbits,
}

type Dec = Decoder<BufReader<File>>;

/// Opens a TIFF for reading its tags: while they are read, no tag may hold more values than
/// the file has bytes (the `tiff` crate sizes a tag's value list by the count the file declares,
/// bounded only by its decoding limit), nor more than `limits` allow. [`for_data`] then raises
/// the limit to what decoding a page needs.
fn open(path: &Path, limits: ReadLimits) -> Result<Dec, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let tags = tag_bytes(&file);
    let dec = Decoder::new(BufReader::new(file)).map_err(|e| tiff_err(path, e))?;
    Ok(dec.with_limits(limits_of(limits.max_bytes.min(tags))))
}

/// The most a file's tag values may take in memory: a value for each byte of the file.
fn tag_bytes(file: &File) -> u64 {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0).max(4096);
    len.saturating_mul(std::mem::size_of::<tiff::decoder::ifd::Value>() as u64)
}

/// `dec` (its first page's tags read) allowed to decode pages of `header`'s size within
/// `limits`; later pages' tags stay within that too.
fn for_data(path: &Path, dec: Dec, header: &Header, limits: ReadLimits) -> Dec {
    let [_, ny, nx] = header.shape;
    let channels = if header.dtype.is_rgb() { 3 } else { 1 };
    // Pages decode to up to 8 bytes a sample (f64) before conversion.
    let page = (ny as u64).saturating_mul(nx as u64).saturating_mul(channels * 8);
    let tags = File::open(path).map(|f| tag_bytes(&f)).unwrap_or(0);
    dec.with_limits(limits_of(limits.max_bytes.min(page.max(tags))))
}

fn limits_of(bytes: u64) -> Limits {
    let mut tl = Limits::default();
    tl.decoding_buffer_size = usize::try_from(bytes).unwrap_or(usize::MAX);
    tl.ifd_value_size = 64 << 20;
    tl
}

fn tiff_err(path: &Path, e: tiff::TiffError) -> ImageError {
    match e {
        tiff::TiffError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::corrupt(path, "file is truncated (unexpected end of file)")
        }
        tiff::TiffError::IoError(io) => ImageError::io(path, io),
        tiff::TiffError::UnsupportedError(u) => ImageError::unsupported(path, u),
        tiff::TiffError::LimitsExceeded => {
            ImageError::TooLarge { path: path.to_path_buf(), what: "a page".into(), needed: u64::MAX, limit: 0 }
        }
        other => ImageError::corrupt(path, other),
    }
}

/// What one page looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageInfo {
    width: u32,
    height: u32,
    dtype: DType,
}

fn page_info(path: &Path, dec: &mut Dec) -> Result<PageInfo, ImageError> {
    let (width, height) = dec.dimensions().map_err(|e| tiff_err(path, e))?;
    if width == 0 || height == 0 {
        return Err(ImageError::corrupt(path, format!("page of {width}×{height} pixels")));
    }
    let ct = dec.colortype().map_err(|e| tiff_err(path, e))?;
    let fmt: u16 =
        dec.find_tag_unsigned_vec::<u16>(Tag::SampleFormat).map_err(|e| tiff_err(path, e))?.and_then(|v| v.first().copied()).unwrap_or(1);
    use tiff::ColorType as C;
    let dtype = match (ct, fmt) {
        (C::Gray(8), 1) | (C::Palette(8), 1) => DType::U8,
        (C::Gray(16), 1) => DType::U16,
        (C::Gray(32), 1) => DType::U32,
        (C::Gray(32), 3) | (C::Gray(64), 3) | (C::Gray(8), 2) | (C::Gray(16), 2) => DType::F32,
        (C::RGB(8), 1) => DType::Rgb8,
        (C::RGB(16), 1) => DType::Rgb16,
        (C::Gray(1), _) => return Err(ImageError::unsupported(path, "1-bit (bilevel) TIFF: save it as 8-bit")),
        (ct, fmt) => {
            let kind = match fmt {
                1 => "unsigned",
                2 => "signed",
                3 => "float",
                _ => "unknown-format",
            };
            return Err(ImageError::unsupported(
                path,
                format!("{ct:?} {kind} samples (supported: 8/16/32-bit unsigned, 8/16-bit signed, 32/64-bit float gray; 8/16-bit RGB)"),
            ));
        }
    };
    Ok(PageInfo { width, height, dtype })
}

/// ImageJ `key=value` description lines.
fn imagej_value<'a>(desc: &'a str, key: &str) -> Option<&'a str> {
    desc.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::trim))
}

/// An XML attribute's value within the first element named `element`.
fn xml_attr<'a>(xml: &'a str, element: &str, attr: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{element} ")).or_else(|| xml.find(&format!(":{element} ")))?;
    let end = start + xml[start..].find('>')?;
    let tag = &xml[start..end];
    let needle = format!(" {attr}=\"");
    let i = tag.find(&needle)? + needle.len();
    let j = tag[i..].find('"')?;
    Some(&tag[i..i + j])
}

struct FileMeta {
    pages: usize,
    info: PageInfo,
    spacing: Option<Spacing>,
}

fn inspect(path: &Path, dec: &mut Dec) -> Result<FileMeta, ImageError> {
    let info = page_info(path, dec)?;
    let desc: Option<String> = match dec.find_tag(Tag::ImageDescription) {
        Ok(Some(v)) => v.into_string().ok(),
        Ok(None) => None,
        Err(e) => return Err(tiff_err(path, e)),
    };
    // Pixel size (1 / resolution), computed as d/n so spacings written as rationals read back exactly.
    let size = |dec: &mut Dec, tag: Tag| -> Option<f64> {
        use tiff::decoder::ifd::Value as V;
        let v = match dec.find_tag(tag).ok().flatten()? {
            V::Rational(n, d) if n > 0 => d as f64 / n as f64,
            V::Double(r) => 1.0 / r,
            V::Float(r) => 1.0 / r as f64,
            V::Unsigned(r) if r > 0 => 1.0 / r as f64,
            V::List(items) => match items.into_iter().next()? {
                V::Rational(n, d) if n > 0 => d as f64 / n as f64,
                _ => return None,
            },
            _ => return None,
        };
        (v.is_finite() && v > 0.0).then_some(v)
    };
    let xsize = size(dec, Tag::XResolution);
    let ysize = size(dec, Tag::YResolution).or(xsize);
    let runit: u16 = dec.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok().flatten().unwrap_or(2);

    // Count pages, checking each is like the first. The tiff crate refuses IFD cycles.
    let mut pages = 1usize;
    while dec.more_images() {
        dec.next_image().map_err(|e| tiff_err(path, e))?;
        let p = page_info(path, dec)?;
        if p != info {
            return Err(ImageError::unsupported(
                path,
                format!(
                    "page {} is {}×{} {} but page 1 is {}×{} {}: only stacks of equal pages are images",
                    pages + 1,
                    p.width,
                    p.height,
                    p.dtype,
                    info.width,
                    info.height,
                    info.dtype
                ),
            ));
        }
        pages += 1;
    }

    let mut spacing = None;
    if let Some(d) = desc.as_deref() {
        if d.starts_with("ImageJ=") {
            for key in ["channels", "frames"] {
                if let Some(n) = imagej_value(d, key).and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 1) {
                    return Err(ImageError::unsupported(
                        path,
                        format!("ImageJ hyperstack with {key}={n}: split it into single-channel z-stacks first"),
                    ));
                }
            }
            if let Some(n) = imagej_value(d, "images").and_then(|v| v.parse::<usize>().ok())
                && n > pages
            {
                return Err(ImageError::unsupported(
                    path,
                    format!(
                        "ImageJ description declares images={n} but the file has {pages} page(s) \
                             (ImageJ's contiguous >4 GiB layout): re-save as BigTIFF"
                    ),
                ));
            }
            let unit = imagej_value(d, "unit").map(super::normalise_unit).unwrap_or_else(|| "pixel".into());
            let sz = imagej_value(d, "spacing").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0);
            // An ImageJ file in pixels without sizes is uncalibrated: leave spacing to the pipeline.
            if unit != "pixel" || sz.is_some() || xsize.is_some_and(|x| x != 1.0) {
                let sx = xsize.unwrap_or(1.0);
                let sy = ysize.unwrap_or(sx);
                spacing = Some(Spacing { zyx: [sz.unwrap_or(1.0), sy, sx], unit });
            }
        } else if d.contains("<OME") {
            let attr = |a: &str| xml_attr(d, "Pixels", a);
            for key in ["SizeC", "SizeT"] {
                if let Some(n) = attr(key).and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 1) {
                    return Err(ImageError::unsupported(
                        path,
                        format!("OME-TIFF with {key}={n}: only single-channel, single-timepoint z-stacks are read"),
                    ));
                }
            }
            let num = |a: &str| attr(a).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0);
            if let Some(sx) = num("PhysicalSizeX") {
                let sy = num("PhysicalSizeY").unwrap_or(sx);
                let sz = num("PhysicalSizeZ").unwrap_or(1.0);
                let unit = super::normalise_unit(attr("PhysicalSizeXUnit").unwrap_or("µm"));
                spacing = Some(Spacing { zyx: [sz, sy, sx], unit });
            }
        }
    }
    if spacing.is_none()
        && runit == 3
        && let (Some(x), Some(y)) = (xsize, ysize)
    {
        spacing = Some(Spacing { zyx: [1.0, y * 1e4, x * 1e4], unit: "um".into() });
    }
    Ok(FileMeta { pages, info, spacing })
}

fn header_of(meta: &FileMeta) -> Header {
    Header {
        shape: [meta.pages, meta.info.height as usize, meta.info.width as usize],
        dtype: meta.info.dtype,
        ndim: if meta.pages > 1 { 3 } else { 2 },
        spacing: meta.spacing.clone(),
    }
}

pub fn read_header(path: &Path) -> Result<Header, ImageError> {
    let mut dec = open(path, ReadLimits::default())?;
    Ok(header_of(&inspect(path, &mut dec)?))
}

pub fn read(path: &Path, limits: ReadLimits) -> Result<Image, ImageError> {
    read_range(path, limits, None)
}

/// Reads pages `z0..z1` of a stack (all pages with `None`); only those pages are decoded and
/// only they count against `limits`.
pub fn read_range(path: &Path, limits: ReadLimits, range: Option<(usize, usize)>) -> Result<Image, ImageError> {
    let mut dec = open(path, limits)?;
    let meta = inspect(path, &mut dec)?;
    let header = header_of(&meta);
    let mut dec = for_data(path, dec, &header, limits);
    let (z0, z1) = range.unwrap_or((0, header.shape[0]));
    let data = decode_range(path, &mut dec, &header, z0, z1, limits)?;
    Ok(Image { data, ndim: header.ndim, spacing: meta.spacing })
}

/// An open stack read by page ranges: the decoder remembers where each page it has passed
/// starts, so reading a range costs only that range's pages (not a walk from the first page).
pub struct Pages {
    path: std::path::PathBuf,
    dec: Dec,
    header: Header,
    limits: ReadLimits,
}

impl Pages {
    /// Opens a stack whose page ranges are each read within `limits`.
    pub fn open(path: &Path, limits: ReadLimits) -> Result<Pages, ImageError> {
        let mut dec = open(path, limits)?;
        let meta = inspect(path, &mut dec)?;
        let header = header_of(&meta);
        Ok(Pages { path: path.to_path_buf(), dec: for_data(path, dec, &header, limits), header, limits })
    }
    pub fn read(&mut self, z0: usize, z1: usize) -> Result<Data, ImageError> {
        decode_range(&self.path, &mut self.dec, &self.header, z0, z1, self.limits)
    }
}

/// Decodes pages `z0..z1` of an inspected stack.
fn decode_range(path: &Path, dec: &mut Dec, header: &Header, z0: usize, z1: usize, limits: ReadLimits) -> Result<Data, ImageError> {
    if z0 > z1 || z1 > header.shape[0] {
        return Err(ImageError::corrupt(path, format!("pages {z0}..{z1} asked of a stack of {}", header.shape[0])));
    }
    let [_, ny, nx] = header.shape;
    let nz = z1 - z0;
    check_budget(path, [nz, ny, nx], header.dtype, limits)?;
    let mut buf = DecodingResult::U8(Vec::new());
    let channels = if header.dtype.is_rgb() { 3 } else { 1 };
    let plane = ny * nx * channels;

    macro_rules! fill {
        ($variant:ident, $t:ty, $conv:expr) => {{
            let mut out: Vec<$t> = Vec::with_capacity(nz * plane);
            crate::util::advise_huge_raw(out.as_ptr() as usize, nz * plane * std::mem::size_of::<$t>());
            for z in z0..z1 {
                dec.seek_to_image(z).map_err(|e| tiff_err(path, e))?;
                read_page(path, dec, &mut buf, header.dtype)?;
                let before = out.len();
                match &buf {
                    DecodingResult::U8(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, x as u64))),
                    DecodingResult::U16(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, x as u64))),
                    DecodingResult::U32(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, x as u64))),
                    DecodingResult::I8(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, 0))),
                    DecodingResult::I16(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, 0))),
                    DecodingResult::F32(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x as f64, 0))),
                    DecodingResult::F64(v) => out.extend(v.iter().take(plane).map(|&x| $conv(x, 0))),
                    _ => return Err(ImageError::unsupported(path, "sample type")),
                }
                if out.len() - before != plane {
                    return Err(ImageError::corrupt(path, format!("page {} decoded to fewer pixels than declared", z + 1)));
                }
            }
            out
        }};
    }
    let err_shape = |e: ndarray::ShapeError| ImageError::corrupt(path, e);
    let data = match header.dtype {
        DType::U8 => Data::U8(Array3::from_shape_vec((nz, ny, nx), fill!(U8, u8, |_f, u| u as u8)).map_err(err_shape)?),
        DType::U16 => Data::U16(Array3::from_shape_vec((nz, ny, nx), fill!(U16, u16, |_f, u| u as u16)).map_err(err_shape)?),
        DType::U32 => Data::U32(Array3::from_shape_vec((nz, ny, nx), fill!(U32, u32, |_f, u| u as u32)).map_err(err_shape)?),
        DType::F32 => Data::F32(Array3::from_shape_vec((nz, ny, nx), fill!(F32, f32, |f: f64, _u| f as f32)).map_err(err_shape)?),
        DType::Rgb8 => Data::Rgb8(Array4::from_shape_vec((nz, ny, nx, 3), fill!(U8, u8, |_f, u| u as u8)).map_err(err_shape)?),
        DType::Rgb16 => Data::Rgb16(Array4::from_shape_vec((nz, ny, nx, 3), fill!(U16, u16, |_f, u| u as u16)).map_err(err_shape)?),
    };
    Ok(data)
}

/// Decodes the current page into `buf`. Tiled LZW pages are decoded here, tile by tile, since
/// the `tiff` crate fails on some of them (image-rs/image-tiff#395: tiles that end without the
/// LZW end code); everything else goes through the crate.
fn read_page(path: &Path, dec: &mut Dec, buf: &mut DecodingResult, dtype: DType) -> Result<(), ImageError> {
    let compression: u16 = dec.find_tag_unsigned(Tag::Compression).map_err(|e| tiff_err(path, e))?.unwrap_or(1);
    if compression == 5 && dec.get_chunk_type() == tiff::decoder::ChunkType::Tile {
        return read_lzw_tiles(path, dec, buf, dtype);
    }
    dec.read_image_to_buffer(buf).map_err(|e| tiff_err(path, e))?;
    Ok(())
}

fn read_lzw_tiles(path: &Path, dec: &mut Dec, buf: &mut DecodingResult, dtype: DType) -> Result<(), ImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let terr = |e| tiff_err(path, e);
    let (w, h) = dec.dimensions().map_err(terr)?;
    let (tw, th) = dec.chunk_dimensions();
    let planar: u16 = dec.find_tag_unsigned(Tag::PlanarConfiguration).map_err(terr)?.unwrap_or(1);
    let predictor: u16 = dec.find_tag_unsigned(Tag::Predictor).map_err(terr)?.unwrap_or(1);
    if planar != 1 || predictor > 2 {
        return Err(ImageError::unsupported(path, format!("tiled LZW with planar configuration {planar} / predictor {predictor}")));
    }
    let offsets: Vec<u64> = dec.find_tag_unsigned_vec(Tag::TileOffsets).map_err(terr)?.unwrap_or_default();
    let counts: Vec<u64> = dec.find_tag_unsigned_vec(Tag::TileByteCounts).map_err(terr)?.unwrap_or_default();
    let (spp, bps) = match dtype {
        DType::U8 => (1usize, 1usize),
        DType::U16 => (1, 2),
        DType::U32 => (1, 4),
        DType::Rgb8 => (3, 1),
        DType::Rgb16 => (3, 2),
        DType::F32 => return Err(ImageError::unsupported(path, "tiled LZW float or signed samples")),
    };
    let (w, h, tw, th) = (w as usize, h as usize, tw as usize, th as usize);
    let across = w.div_ceil(tw);
    let down = h.div_ceil(th);
    if offsets.len() < across * down || counts.len() < across * down {
        return Err(ImageError::corrupt(path, format!("{} tile offsets for {} tiles", offsets.len().min(counts.len()), across * down)));
    }
    let big_endian = matches!(dec.byte_order(), tiff::tags::ByteOrder::BigEndian);
    let file_len = dec.inner().get_ref().metadata().map_err(|e| ImageError::io(path, e))?.len();
    let px = spp * bps;
    let mut page = vec![0u8; w * h * px];
    let mut tile = vec![0u8; tw * th * px];
    let mut raw = Vec::new();
    for ty in 0..down {
        for tx in 0..across {
            let i = ty * across + tx;
            let (off, len) = (offsets[i], counts[i]);
            if off.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(ImageError::corrupt(path, format!("tile {i} lies past the end of the file")));
            }
            raw.resize(len as usize, 0);
            let r = dec.inner();
            r.seek(SeekFrom::Start(off)).map_err(|e| ImageError::io(path, e))?;
            r.read_exact(&mut raw).map_err(|e| ImageError::io(path, e))?;
            let mut lzw = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
            let (mut inp, mut out) = (0usize, 0usize);
            // Decode until the tile is full; codes after that (or a missing end code) don't matter.
            while out < tile.len() {
                let res = lzw.decode_bytes(&raw[inp..], &mut tile[out..]);
                inp += res.consumed_in;
                out += res.consumed_out;
                match res.status {
                    Ok(weezl::LzwStatus::Ok) if res.consumed_in + res.consumed_out > 0 => {}
                    Ok(_) => break,
                    Err(e) => return Err(ImageError::corrupt(path, format!("tile {i}: {e}"))),
                }
            }
            if out < tile.len() {
                return Err(ImageError::corrupt(path, format!("tile {i} decodes to {out} of {} bytes", tile.len())));
            }
            if predictor == 2 {
                undo_horizontal(&mut tile, tw, spp, bps, big_endian);
            }
            let rows = th.min(h - ty * th);
            let cols = tw.min(w - tx * tw);
            for r in 0..rows {
                let src = &tile[r * tw * px..(r * tw + cols) * px];
                let dst = ((ty * th + r) * w + tx * tw) * px;
                page[dst..dst + cols * px].copy_from_slice(src);
            }
        }
    }
    *buf = match bps {
        1 => DecodingResult::U8(page),
        2 => DecodingResult::U16(
            page.chunks_exact(2)
                .map(|c| if big_endian { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) })
                .collect(),
        ),
        _ => DecodingResult::U32(
            page.chunks_exact(4)
                .map(|c| {
                    let a = [c[0], c[1], c[2], c[3]];
                    if big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
                })
                .collect(),
        ),
    };
    Ok(())
}

/// Undoes TIFF horizontal differencing (predictor 2) on rows of `width` pixels.
fn undo_horizontal(tile: &mut [u8], width: usize, spp: usize, bps: usize, big_endian: bool) {
    let row = width * spp * bps;
    for r in tile.chunks_exact_mut(row) {
        match bps {
            1 => {
                for i in spp..r.len() {
                    r[i] = r[i].wrapping_add(r[i - spp]);
                }
            }
            2 => {
                let get = |r: &[u8], i: usize| {
                    if big_endian { u16::from_be_bytes([r[2 * i], r[2 * i + 1]]) } else { u16::from_le_bytes([r[2 * i], r[2 * i + 1]]) }
                };
                for i in spp..width * spp {
                    let v = get(r, i).wrapping_add(get(r, i - spp));
                    let b = if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
                    r[2 * i..2 * i + 2].copy_from_slice(&b);
                }
            }
            _ => {
                let get = |r: &[u8], i: usize| {
                    let a = [r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]];
                    if big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
                };
                for i in spp..width * spp {
                    let v = get(r, i).wrapping_add(get(r, i - spp));
                    let b = if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
                    r[4 * i..4 * i + 4].copy_from_slice(&b);
                }
            }
        }
    }
}

/// Files at least this large are written as BigTIFF (classic TIFF offsets end at 4 GiB).
const BIGTIFF_FROM: u64 = (4 << 30) - (64 << 20);

/// Writes `data` as a (Big)TIFF z-stack with ImageJ metadata, atomically (temporary file, then
/// rename). 3D data becomes an ImageJ stack of `nz` slices; 2D data a single page.
pub fn write_tiff(path: &Path, data: &Data, ndim: u8, spacing: &Spacing, compression: Compression) -> Result<(), ImageError> {
    let shape = data.shape();
    let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * data.dtype().bytes_per_voxel();
    write_tiff_with_threshold(path, data, ndim, spacing, compression, bytes >= BIGTIFF_FROM)
}

/// As [`write_tiff`], choosing classic TIFF or BigTIFF explicitly.
pub fn write_tiff_with_threshold(
    path: &Path,
    data: &Data,
    ndim: u8,
    spacing: &Spacing,
    compression: Compression,
    big: bool,
) -> Result<(), ImageError> {
    let mut w = StackWriter::create(path, data.shape(), data.dtype(), ndim, spacing, compression, Some(big))?;
    w.append(data)?;
    w.finish()
}

/// Writes a (Big)TIFF z-stack with ImageJ metadata a slab at a time ([`Stack`]): the same bytes
/// as [`write_tiff`] of the whole stack. The file appears (temporary file, checked close —
/// fsync first when durable — and rename) only when [`StackWriter::finish`] is called after
/// every plane was appended; a writer dropped earlier leaves nothing behind.
pub struct StackWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    stack: Option<Stack<super::out_file::OutFile>>,
    shape: [usize; 3],
    dtype: DType,
    written: usize,
}

impl StackWriter {
    /// Starts `path` for a stack of `shape` and `dtype`. `big`: BigTIFF or not; `None` chooses
    /// BigTIFF for stacks of 4 GiB and more.
    pub fn create(
        path: &Path,
        shape: [usize; 3],
        dtype: DType,
        ndim: u8,
        spacing: &Spacing,
        compression: Compression,
        big: Option<bool>,
    ) -> Result<StackWriter, ImageError> {
        let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * dtype.bytes_per_voxel();
        let big = big.unwrap_or(bytes >= BIGTIFF_FROM);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        let tmp = crate::util::tmp_sibling(path);
        let f = super::out_file::OutFile::create(&tmp, bytes).map_err(|e| ImageError::io(&tmp, e))?;
        let tags = PageTags {
            description: imagej_description(shape[0], ndim, spacing, dtype),
            software: SOFTWARE.into(),
            x_resolution: {
                let r = resolution(spacing.zyx[2]);
                (r.n, r.d)
            },
            y_resolution: {
                let r = resolution(spacing.zyx[1]);
                (r.n, r.d)
            },
        };
        let stack = Stack::new(f, shape, dtype, big, compression, tags).map_err(|e| ImageError::io(&tmp, e))?;
        Ok(StackWriter { path: path.to_path_buf(), tmp, stack: Some(stack), shape, dtype, written: 0 })
    }

    /// Appends the next planes (a slab of the stack's plane shape and type).
    pub fn append(&mut self, data: &Data) -> Result<(), ImageError> {
        let [nz, ny, nx] = data.shape();
        if data.dtype() != self.dtype || [ny, nx] != [self.shape[1], self.shape[2]] || self.written + nz > self.shape[0] {
            return Err(ImageError::corrupt(
                &self.path,
                format!(
                    "internal: slab of {nz}×{ny}×{nx} {} does not continue a {:?} {} stack at plane {}",
                    data.dtype(),
                    self.shape,
                    self.dtype,
                    self.written
                ),
            ));
        }
        let stack = self.stack.as_mut().ok_or_else(|| ImageError::corrupt(&self.path, "internal: appended after finishing"))?;
        stack.append(&super::voxel_le_bytes(data)).map_err(|e| ImageError::io(&self.tmp, e))?;
        self.written += nz;
        Ok(())
    }

    /// Completes the file: every plane must have been appended.
    pub fn finish(mut self) -> Result<(), ImageError> {
        if self.written != self.shape[0] {
            return Err(ImageError::corrupt(&self.path, format!("internal: {} of {} planes written", self.written, self.shape[0])));
        }
        let tmp = self.tmp.clone();
        let stack = self.stack.take().ok_or_else(|| ImageError::corrupt(&self.path, "internal: finished twice"))?;
        let w = stack.finish().map_err(|e| ImageError::io(&tmp, e))?;
        let f = w.finish().map_err(|e| ImageError::io(&tmp, e))?;
        crate::util::finish_file(f).map_err(|e| ImageError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| ImageError::io(&self.path, e))?;
        self.written = usize::MAX;
        Ok(())
    }
}

impl Drop for StackWriter {
    fn drop(&mut self) {
        if self.written != usize::MAX {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The Software tag of every page written.
const SOFTWARE: &str = concat!("tessera ", env!("CARGO_PKG_VERSION"));

/// `1/spacing` as a rational that reads back exactly for spacings with up to six decimals.
fn resolution(spacing: f64) -> Rational {
    if !(spacing.is_finite() && spacing > 0.0) {
        return Rational { n: 1, d: 1 };
    }
    let mut scale = 1_000_000f64;
    while (spacing * scale).round() > u32::MAX as f64 && scale > 1.0 {
        scale /= 10.0;
    }
    let d = (spacing * scale).round().max(1.0) as u32;
    Rational { n: scale as u32, d }
}

/// The ImageJ image description for a stack of `nz` slices.
pub(crate) fn imagej_description(nz: usize, ndim: u8, spacing: &Spacing, dtype: DType) -> String {
    let mut d = String::from("ImageJ=1.11a\n");
    if ndim == 3 {
        d.push_str(&format!("images={nz}\nslices={nz}\n"));
    }
    let unit = match spacing.unit.as_str() {
        "um" => "micron",
        "pixel" => "pixel",
        other => other,
    };
    d.push_str(&format!("unit={unit}\n"));
    if ndim == 3 {
        d.push_str(&format!("spacing={:?}\n", spacing.zyx[0]));
    }
    if dtype == DType::Rgb8 || dtype == DType::Rgb16 {
        d.push_str("mode=composite\n");
    }
    d.push_str("loop=false\n");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: Data, ndim: u8, compression: Compression, big: bool) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tif");
        let sp = Spacing { zyx: [2.5, 0.74, 0.74], unit: "um".into() };
        write_tiff_with_threshold(&p, &data, ndim, &sp, compression, big).unwrap();
        let img = read(&p, ReadLimits::default()).unwrap();
        assert_eq!(img.data, data);
        assert_eq!(img.ndim, ndim);
        let got = img.spacing.unwrap();
        assert_eq!(got.unit, "um");
        assert_eq!(got.zyx[1], 0.74);
        assert_eq!(got.zyx[2], 0.74);
        if ndim == 3 {
            assert_eq!(got.zyx[0], 2.5);
        }
    }

    #[test]
    fn roundtrips_every_dtype_and_compression() {
        let a = Array3::from_shape_fn((3, 5, 7), |(z, y, x)| (z * 35 + y * 7 + x) as u16 * 300);
        for c in [Compression::None, Compression::Lzw, Compression::Deflate, Compression::Packbits] {
            roundtrip(Data::U8(a.mapv(|v| (v % 251) as u8)), 3, c, false);
            roundtrip(Data::U16(a.clone()), 3, c, false);
            roundtrip(Data::U32(a.mapv(|v| v as u32 * 70_000)), 3, c, false);
            roundtrip(Data::F32(a.mapv(|v| v as f32 * 0.5 - 3.0)), 3, c, false);
        }
        roundtrip(Data::U16(a.slice(ndarray::s![0..1, .., ..]).to_owned()), 2, Compression::None, false);
        roundtrip(Data::Rgb8(Array4::from_shape_fn((1, 4, 6, 3), |(_, y, x, c)| (y * 18 + x * 3 + c) as u8)), 2, Compression::Lzw, false);
    }

    #[test]
    fn slab_writes_equal_whole_writes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Array3::from_shape_fn((7, 5, 6), |(z, y, x)| (z * 31 + y * 7 + x) as u16);
        let sp = Spacing { zyx: [2.0, 0.5, 0.5], unit: "um".into() };
        for (c, big) in [(Compression::None, false), (Compression::Lzw, false), (Compression::Deflate, true)] {
            let whole = dir.path().join("whole.tif");
            write_tiff_with_threshold(&whole, &Data::U16(a.clone()), 3, &sp, c, big).unwrap();
            let slabs = dir.path().join("slabs.tif");
            let mut w = StackWriter::create(&slabs, [7, 5, 6], DType::U16, 3, &sp, c, Some(big)).unwrap();
            for (z0, z1) in [(0, 3), (3, 4), (4, 7)] {
                w.append(&Data::U16(a.slice(ndarray::s![z0..z1, .., ..]).to_owned())).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&slabs).unwrap());
            // Page ranges read back.
            let part = read_range(&slabs, ReadLimits::default(), Some((2, 5))).unwrap();
            assert_eq!(part.data, Data::U16(a.slice(ndarray::s![2..5, .., ..]).to_owned()));
        }
        // An unfinished writer leaves no file; a short one is an error.
        let p = dir.path().join("short.tif");
        let mut w = StackWriter::create(&p, [7, 5, 6], DType::U16, 3, &sp, Compression::None, None).unwrap();
        w.append(&Data::U16(a.slice(ndarray::s![0..2, .., ..]).to_owned())).unwrap();
        assert!(w.finish().is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary files left");
    }

    /// A stack large enough to be written directly (past the page cache) has the bytes a stack
    /// written to memory has, whole or in slabs that end mid-block, classic and BigTIFF, and
    /// reads back.
    #[test]
    fn large_stacks_are_written_directly_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [41, 512, 1001];
        let a = Array3::from_shape_fn((41, 512, 1001), |(z, y, x)| (z * 7919 + y * 31 + x) as u16);
        let bytes = 41 * 512 * 1001 * 2;
        assert!(bytes as u64 >= crate::io::out_file::DIRECT_FROM);
        let sp = Spacing { zyx: [2.0, 0.5, 0.5], unit: "um".into() };
        for big in [false, true] {
            let tags = PageTags {
                description: imagej_description(41, 3, &sp, DType::U16),
                software: SOFTWARE.into(),
                x_resolution: (resolution(0.5).n, resolution(0.5).d),
                y_resolution: (resolution(0.5).n, resolution(0.5).d),
            };
            let mut mem = Stack::new(std::io::Cursor::new(Vec::new()), shape, DType::U16, big, Compression::None, tags).unwrap();
            mem.append(&crate::io::voxel_le_bytes(&Data::U16(a.clone()))).unwrap();
            let expected = mem.finish().unwrap().into_inner();
            let whole = dir.path().join("whole.tif");
            write_tiff_with_threshold(&whole, &Data::U16(a.clone()), 3, &sp, Compression::None, big).unwrap();
            assert!(std::fs::read(&whole).unwrap() == expected, "whole, big {big}");
            let slabs = dir.path().join("slabs.tif");
            let mut w = StackWriter::create(&slabs, shape, DType::U16, 3, &sp, Compression::None, Some(big)).unwrap();
            for (z0, z1) in [(0, 3), (3, 4), (4, 40), (40, 41)] {
                w.append(&Data::U16(a.slice(ndarray::s![z0..z1, .., ..]).to_owned())).unwrap();
            }
            w.finish().unwrap();
            assert!(std::fs::read(&slabs).unwrap() == expected, "slabs, big {big}");
            assert_eq!(read(&slabs, ReadLimits::default()).unwrap().data, Data::U16(a.clone()));
        }
    }

    #[test]
    fn bigtiff_roundtrip() {
        let a = Array3::from_shape_fn((4, 9, 11), |(z, y, x)| (z + y * x) as u32);
        roundtrip(Data::U32(a), 3, Compression::Deflate, true);
    }

    #[test]
    fn resolution_is_exact_for_decimal_spacings() {
        for s in [0.74, 0.1, 1.0, 0.325, 6.5, 0.000_15, 12345.678] {
            let r = resolution(s);
            assert_eq!(r.d as f64 / r.n as f64, s, "{s}");
        }
    }

    #[test]
    fn ome_attributes() {
        let xml = r#"<?xml?><OME><Image><Pixels DimensionOrder="XYZCT" PhysicalSizeX="0.5" PhysicalSizeY="0.25" PhysicalSizeXUnit="µm" SizeC="1"></Pixels></Image></OME>"#;
        assert_eq!(xml_attr(xml, "Pixels", "PhysicalSizeX"), Some("0.5"));
        assert_eq!(xml_attr(xml, "Pixels", "PhysicalSizeY"), Some("0.25"));
        assert_eq!(xml_attr(xml, "Pixels", "PhysicalSizeZ"), None);
    }
}
