//! Image input and output: the only module that knows about codecs.
//!
//! Everything else sees an [`Image`]: a z-stack (2D images are stacks of one slice) of one sample
//! type with its voxel spacing and unit. Readers cover multi-page TIFF and BigTIFF (strips or
//! tiles; none/LZW/Deflate/PackBits, through the `tiff` crate), PNG and JPEG (through `image`),
//! NumPy `.npy`, and folders of 2D slices. The writer produces (Big)TIFF with ImageJ hyperstack
//! metadata, so Fiji and tifffile read shape, dtype and spacing back.
//!
//! Every reader checks the declared size against a byte budget *before* allocating, so a
//! hostile header (10⁶×10⁶×10⁶ voxels, a page chain pointing at one huge page, a truncated file)
//! is an [`ImageError`], never a panic or a huge allocation.

mod npy;
mod out_file;
pub use out_file::{DIRECT_FROM, OutFile};
mod raster;
mod tiff_io;
mod tiff_stack;
pub mod zarr;

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4};

pub use npy::{NpyWriter, write as write_npy};
pub use tiff_io::{Compression, StackWriter, write_tiff, write_tiff_with_threshold as write_tiff_as};
pub use zarr::{Role, ZarrWriter, level_path};

/// The sample types an image can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    U8,
    U16,
    U32,
    F32,
    /// 8-bit RGB (2D colour images).
    Rgb8,
    /// 16-bit RGB (2D colour images).
    Rgb16,
}

impl DType {
    pub fn bytes_per_voxel(self) -> u64 {
        match self {
            DType::U8 => 1,
            DType::U16 => 2,
            DType::U32 | DType::F32 => 4,
            DType::Rgb8 => 3,
            DType::Rgb16 => 6,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::F32 => "f32",
            DType::Rgb8 => "rgb8",
            DType::Rgb16 => "rgb16",
        }
    }
    pub fn is_rgb(self) -> bool {
        matches!(self, DType::Rgb8 | DType::Rgb16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Voxel data, indexed `[z, y, x]` (and `[z, y, x, channel]` for RGB).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    U8(Array3<u8>),
    U16(Array3<u16>),
    U32(Array3<u32>),
    F32(Array3<f32>),
    Rgb8(Array4<u8>),
    Rgb16(Array4<u16>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::U8(_) => DType::U8,
            Data::U16(_) => DType::U16,
            Data::U32(_) => DType::U32,
            Data::F32(_) => DType::F32,
            Data::Rgb8(_) => DType::Rgb8,
            Data::Rgb16(_) => DType::Rgb16,
        }
    }
    /// `[z, y, x]`.
    pub fn shape(&self) -> [usize; 3] {
        fn s3(d: &[usize]) -> [usize; 3] {
            [d[0], d[1], d[2]]
        }
        match self {
            Data::U8(a) => s3(a.shape()),
            Data::U16(a) => s3(a.shape()),
            Data::U32(a) => s3(a.shape()),
            Data::F32(a) => s3(a.shape()),
            Data::Rgb8(a) => s3(a.shape()),
            Data::Rgb16(a) => s3(a.shape()),
        }
    }
}

/// Physical voxel size, `[z, y, x]`, in `unit`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spacing {
    pub zyx: [f64; 3],
    pub unit: String,
}

impl Default for Spacing {
    fn default() -> Self {
        Spacing { zyx: [1.0, 1.0, 1.0], unit: "pixel".into() }
    }
}

/// What a file says about itself before its voxels are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub shape: [usize; 3],
    pub dtype: DType,
    /// 2 for a single plane, 3 for a stack.
    pub ndim: u8,
    /// Spacing found in the file's metadata (ImageJ, OME, resolution tags), if any.
    pub spacing: Option<Spacing>,
}

/// An image in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub data: Data,
    /// 2 for a single plane, 3 for a stack (a stack of one slice read from a 3D file stays 3D).
    pub ndim: u8,
    /// Spacing from the file, if it had any.
    pub spacing: Option<Spacing>,
}

impl Image {
    pub fn header(&self) -> Header {
        Header { shape: self.data.shape(), dtype: self.data.dtype(), ndim: self.ndim, spacing: self.spacing.clone() }
    }
}

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable image: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: unsupported: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    #[error("{path}: declares {what} = {needed} bytes, more than the limit of {limit} bytes (raise it with --memory)")]
    TooLarge { path: PathBuf, what: String, needed: u64, limit: u64 },
}

impl ImageError {
    pub(crate) fn corrupt(path: &Path, msg: impl std::fmt::Display) -> Self {
        ImageError::Corrupt { path: path.to_path_buf(), msg: msg.to_string() }
    }
    pub(crate) fn unsupported(path: &Path, msg: impl std::fmt::Display) -> Self {
        ImageError::Unsupported { path: path.to_path_buf(), msg: msg.to_string() }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::NotFound { path: path.to_path_buf() }
        } else {
            ImageError::Io { path: path.to_path_buf(), source }
        }
    }
}

/// How much an image read may allocate.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest decoded image, in bytes.
    pub max_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { max_bytes: default_memory_budget() }
    }
}

/// A sensible share of the memory this process may use ([`memory_limit`]): three quarters of
/// it.
pub fn default_memory_budget() -> u64 {
    memory_limit().bytes / 4 * 3
}

/// The most memory this process may use, and what sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// "RAM", "the memory cgroup's limit (/process/path)" or "ulimit -v".
    pub what: String,
}

/// What this process may use: the machine's RAM, or less where a batch system or container
/// says so — the limit of its memory cgroup (v1 or v2, the smallest along the cgroup's path: a
/// Slurm job's `--mem`, a container's `--memory`) or its address-space limit (`ulimit -v`).
/// Going past a cgroup's limit gets the process killed by the kernel, with no message; staying
/// under it lets a run stream what does not fit and say what it needs. 4 GiB when nothing can
/// be read. Read once.
pub fn memory_limit() -> MemoryLimit {
    static LIMIT: std::sync::OnceLock<MemoryLimit> = std::sync::OnceLock::new();
    LIMIT
        .get_or_init(|| {
            let read = |p: &Path| std::fs::read_to_string(p).ok();
            // SAFETY: getrlimit writes the struct it is given and nothing else.
            let address_space = unsafe {
                let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                (libc::getrlimit(libc::RLIMIT_AS, &mut r) == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
            };
            memory_limit_from(&read, address_space)
        })
        .clone()
}

/// [`memory_limit`] from files read by `read` (`/proc/meminfo`, `/proc/self/cgroup`,
/// `/proc/self/mountinfo` and the cgroup files) and the address-space limit.
pub fn memory_limit_from(read: &dyn Fn(&Path) -> Option<String>, address_space: Option<u64>) -> MemoryLimit {
    let ram = read(Path::new("/proc/meminfo")).and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let mut best = MemoryLimit { bytes: ram.unwrap_or(4 << 30), what: if ram.is_some() { "RAM" } else { "assumed: RAM unknown" }.into() };
    let mut consider = |bytes: u64, what: String| {
        if bytes < best.bytes {
            best = MemoryLimit { bytes, what };
        }
    };
    for g in memory_cgroups(read) {
        // The limit is the smallest along the path, from the process's group up to the root.
        let mut path = g.path.clone();
        loop {
            let at = g.mount.join(&path);
            if let Some(v) = read(&at.join(g.limit_file())).and_then(|t| t.trim().parse::<u64>().ok()) {
                // v1 writes "no limit" as a huge page-aligned number; v2 as "max".
                if v < 1 << 60 {
                    consider(v, format!("the memory cgroup's limit ({})", at.display()));
                }
            }
            if !path.pop() {
                break;
            }
        }
    }
    if let Some(a) = address_space {
        consider(a, "ulimit -v".into());
    }
    best
}

/// A memory cgroup this process is in: the hierarchy's mount point and the process's group
/// within it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryCgroup {
    pub mount: PathBuf,
    /// Relative to the mount point (empty at the root).
    pub path: PathBuf,
    pub v2: bool,
}

impl MemoryCgroup {
    /// The process's group folder.
    pub fn dir(&self) -> PathBuf {
        self.mount.join(&self.path)
    }

    /// The file holding a group's limit in bytes.
    pub fn limit_file(&self) -> &'static str {
        if self.v2 { "memory.max" } else { "memory.limit_in_bytes" }
    }
}

/// The memory cgroups of this process (the v2 group, and each v1 hierarchy with the memory
/// controller) whose hierarchy is mounted, from `/proc/self/cgroup` and `/proc/self/mountinfo`
/// as read by `read`.
pub fn memory_cgroups(read: &dyn Fn(&Path) -> Option<String>) -> Vec<MemoryCgroup> {
    let (Some(groups), Some(mounts)) = (read(Path::new("/proc/self/cgroup")), read(Path::new("/proc/self/mountinfo"))) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in groups.lines() {
        // `0::/path` (v2) or `N:memory[,…]:/path` (v1).
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        let v2 = id == "0" && controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        // The mount point of that hierarchy (mountinfo: field 5 is the mount point; after
        // ` - ` come the type and, for v1, the options naming the controllers).
        let mount = mounts.lines().find_map(|m| {
            let (head, tail) = m.split_once(" - ")?;
            let mut t = tail.split_whitespace();
            let (fstype, _src, opts) = (t.next()?, t.next()?, t.next().unwrap_or(""));
            let ok = if v2 { fstype == "cgroup2" } else { fstype == "cgroup" && opts.split(',').any(|o| o == "memory") };
            ok.then(|| head.split_whitespace().nth(4).map(PathBuf::from)).flatten()
        });
        if let Some(mount) = mount {
            found.push(MemoryCgroup { mount, path: PathBuf::from(path.trim().trim_start_matches('/')), v2 });
        }
    }
    found
}

/// Checks a `--memory` against what this process may use: a budget past it would have samples
/// killed by the kernel (out of memory) instead of streamed or failed with a message.
pub fn check_memory_flag(memory: u64) -> Result<(), String> {
    let limit = memory_limit();
    if memory <= limit.bytes {
        return Ok(());
    }
    Err(format!(
        "--memory {} is more than this process may use: {} ({}); samples held to that budget would be killed \
         by the kernel. Use at most {} (the default is 3/4 of it: {})",
        crate::util::human_bytes(memory),
        crate::util::human_bytes(limit.bytes),
        limit.what,
        crate::util::human_bytes(limit.bytes),
        crate::util::human_bytes(limit.bytes / 4 * 3)
    ))
}

pub(crate) fn check_budget(path: &Path, shape: [usize; 3], dtype: DType, limits: ReadLimits) -> Result<(), ImageError> {
    // Saturating: three axes of a crafted header can pass 2^128 bytes.
    let needed = shape.iter().fold(dtype.bytes_per_voxel() as u128, |a, &n| a.saturating_mul(n as u128));
    if needed > limits.max_bytes as u128 {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            what: format!("{}×{}×{} {}", shape[0], shape[1], shape[2], dtype),
            needed: needed.min(u64::MAX as u128) as u64,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// A voxel file format tessera writes (images, masks, labels). Reading recognises these and
/// more (PNG/JPEG, folders of slices). Adding a format: a variant here, its name and extension,
/// and its writer in [`VoxelWriter`]; the compiler points at every match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VoxelFormat {
    Tiff,
    Npy,
    /// OME-Zarr 0.5: a folder `<stage>.ome.zarr`.
    #[serde(rename = "ome-zarr")]
    OmeZarr,
    /// PNG: 2D, 8/16-bit gray or RGB.
    Png,
    /// JPEG: 2D, 8-bit gray or RGB, lossy at `quality` (1–100; the pipeline's `jpeg_quality`).
    Jpeg {
        quality: u8,
    },
}

/// JPEG quality when a pipeline does not set `jpeg_quality` (PIL's default).
pub const DEFAULT_JPEG_QUALITY: u8 = 75;

impl VoxelFormat {
    pub fn ext(self) -> &'static str {
        match self {
            VoxelFormat::Tiff => "tif",
            VoxelFormat::Npy => "npy",
            VoxelFormat::OmeZarr => "ome.zarr",
            VoxelFormat::Png => "png",
            VoxelFormat::Jpeg { .. } => "jpg",
        }
    }
    /// Whether reading the file back gives the voxels written (every format but JPEG), so the
    /// file can stand for the stage's checkpoint.
    pub fn exact(self) -> bool {
        !matches!(self, VoxelFormat::Jpeg { .. })
    }
    /// The format a pipeline's `outputs:` names.
    pub fn parse(name: &str) -> Option<VoxelFormat> {
        match name {
            "tiff" | "tif" => Some(VoxelFormat::Tiff),
            "npy" => Some(VoxelFormat::Npy),
            "ome-zarr" | "zarr" => Some(VoxelFormat::OmeZarr),
            "png" => Some(VoxelFormat::Png),
            "jpeg" | "jpg" => Some(VoxelFormat::Jpeg { quality: DEFAULT_JPEG_QUALITY }),
            _ => None,
        }
    }
}

/// What a voxel output is, beyond its shape and type: what each format records of it.
#[derive(Debug, Clone, Copy)]
pub struct VoxelMeta<'a> {
    /// 2 for a single plane, 3 for a stack.
    pub ndim: u8,
    pub spacing: &'a Spacing,
    /// TIFF compression.
    pub compression: Compression,
    /// Image, mask or labels (OME-Zarr: how levels are downsampled, `image-label` metadata).
    pub role: Role,
    /// The sample's image (OME-Zarr: labels of an OME-Zarr image are written as its labels).
    pub source: Option<&'a Path>,
}

/// A voxel file being written slab by slab in z order; it appears at its path only when
/// finished.
pub enum VoxelWriter {
    Tiff(StackWriter),
    Npy(NpyWriter),
    Zarr(Box<ZarrWriter>),
    /// PNG (`jpeg_quality: None`) or JPEG: one plane, encoded when finished.
    Raster {
        path: PathBuf,
        jpeg_quality: Option<u8>,
        ndim: u8,
        plane: Option<Data>,
    },
}

impl VoxelWriter {
    /// A file of `shape` voxels of `dtype`, described by `meta` where the format records it.
    pub fn create(path: &Path, format: VoxelFormat, shape: [usize; 3], dtype: DType, meta: &VoxelMeta) -> Result<VoxelWriter, ImageError> {
        Ok(match format {
            VoxelFormat::Tiff => {
                VoxelWriter::Tiff(StackWriter::create(path, shape, dtype, meta.ndim, meta.spacing, meta.compression, None)?)
            }
            VoxelFormat::Npy => VoxelWriter::Npy(NpyWriter::create(path, shape, dtype, meta.ndim)?),
            VoxelFormat::OmeZarr => {
                VoxelWriter::Zarr(Box::new(ZarrWriter::create(path, shape, dtype, meta.ndim, meta.spacing, meta.role, meta.source)?))
            }
            VoxelFormat::Png | VoxelFormat::Jpeg { .. } => {
                if shape[0] != 1 {
                    return Err(ImageError::unsupported(
                        path,
                        format!("{} holds 2D images; this one has {} planes", format.ext(), shape[0]),
                    ));
                }
                let jpeg_quality = match format {
                    VoxelFormat::Jpeg { quality } => Some(quality),
                    _ => None,
                };
                VoxelWriter::Raster { path: path.to_path_buf(), jpeg_quality, ndim: meta.ndim, plane: None }
            }
        })
    }
    /// The next planes.
    pub fn append(&mut self, d: &Data) -> Result<(), ImageError> {
        match self {
            VoxelWriter::Tiff(w) => w.append(d),
            VoxelWriter::Npy(w) => w.append(d),
            VoxelWriter::Zarr(w) => w.append(d),
            VoxelWriter::Raster { path, plane, .. } => match plane {
                None => {
                    *plane = Some(d.clone());
                    Ok(())
                }
                Some(_) => Err(ImageError::unsupported(path, "PNG and JPEG hold one plane")),
            },
        }
    }
    pub fn finish(self) -> Result<(), ImageError> {
        match self {
            VoxelWriter::Tiff(w) => w.finish(),
            VoxelWriter::Npy(w) => w.finish(),
            VoxelWriter::Zarr(w) => w.finish(),
            VoxelWriter::Raster { path, jpeg_quality, ndim, plane } => match plane {
                Some(d) => raster::write(&path, &d, ndim, jpeg_quality),
                None => Err(ImageError::unsupported(&path, "no plane was written")),
            },
        }
    }
}

/// Writes a whole image in a voxel format.
pub fn write_voxels(path: &Path, format: VoxelFormat, data: &Data, meta: &VoxelMeta) -> Result<(), ImageError> {
    match format {
        VoxelFormat::Tiff => write_tiff(path, data, meta.ndim, meta.spacing, meta.compression),
        VoxelFormat::Npy => write_npy(path, data, meta.ndim),
        VoxelFormat::Png => raster::write(path, data, meta.ndim, None),
        VoxelFormat::Jpeg { quality } => raster::write(path, data, meta.ndim, Some(quality)),
        VoxelFormat::OmeZarr => {
            let mut w = VoxelWriter::create(path, format, data.shape(), data.dtype(), meta)?;
            w.append(data)?;
            w.finish()
        }
    }
}

/// A unit as tessera spells it, whatever spelling a file used (ImageJ, OME-XML, NGFF's
/// UDUNITS-2 names): `um`, `nm`, `mm`, `cm`, `m`, `pixel`; others as they are.
pub(crate) fn normalise_unit(u: &str) -> String {
    match u.trim() {
        "micron" | "microns" | "µm" | "μm" | "\\u00B5m" | "um" | "micrometer" | "micrometre" => "um".into(),
        "nanometer" | "nanometre" | "nm" => "nm".into(),
        "mm" | "millimeter" | "millimetre" => "mm".into(),
        "centimeter" | "centimetre" => "cm".into(),
        "meter" | "metre" => "m".into(),
        "" | "pixel" | "pixels" => "pixel".into(),
        other => other.to_string(),
    }
}

/// Whether `path` is a Zarr group or array (an OME-Zarr image or one of its levels).
pub fn is_zarr(path: &Path) -> bool {
    zarr::is_zarr(path)
}

/// The path to read a voxel output back from: the labels inside a store tessera wrote linked to
/// an OME-Zarr image, the path itself otherwise.
pub fn output_voxels(path: &Path) -> PathBuf {
    zarr::linked_labels(path).unwrap_or_else(|| path.to_path_buf())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tiff,
    Raster,
    Npy,
    Folder,
    Zarr,
}

fn format_of(path: &Path) -> Result<Format, ImageError> {
    if zarr::is_zarr(path) {
        return Ok(Format::Zarr);
    }
    if path.is_dir() {
        return Ok(Format::Folder);
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "tif" | "tiff" | "btf" | "tf8" => Ok(Format::Tiff),
        "png" | "jpg" | "jpeg" => Ok(Format::Raster),
        "npy" => Ok(Format::Npy),
        "zarr" if !path.exists() => Err(ImageError::NotFound { path: path.to_path_buf() }),
        "zarr" => Err(ImageError::corrupt(path, "not a Zarr store: no zarr.json, .zarray, .zgroup or .zattrs")),
        _ => {
            if !path.exists() {
                return Err(ImageError::NotFound { path: path.to_path_buf() });
            }
            Err(ImageError::unsupported(
                path,
                format!(
                    "unknown image type '.{ext}' (expected .tif/.tiff, .png, .jpg/.jpeg, .npy, an OME-Zarr .zarr or a folder of slices)"
                ),
            ))
        }
    }
}

/// Reads only what a file says about itself: shape, dtype, dimensionality, spacing.
pub fn read_header(path: &Path) -> Result<Header, ImageError> {
    match format_of(path)? {
        Format::Tiff => tiff_io::read_header(path),
        Format::Raster => raster::read_header(path),
        Format::Npy => npy::read_header(path),
        Format::Zarr => zarr::read_header(path),
        Format::Folder => {
            let slices = folder_slices(path)?;
            let first = read_header(&slices[0])?;
            if first.ndim != 2 {
                return Err(ImageError::unsupported(&slices[0], "a slice folder must hold 2D images"));
            }
            Ok(Header { shape: [slices.len(), first.shape[1], first.shape[2]], ndim: 3, ..first })
        }
    }
}

/// Reads a whole image.
pub fn read_image(path: &Path, limits: ReadLimits) -> Result<Image, ImageError> {
    match format_of(path)? {
        Format::Tiff => tiff_io::read(path, limits),
        Format::Raster => raster::read(path, limits),
        Format::Npy => npy::read(path, limits),
        Format::Zarr => zarr::read(path, limits, None),
        Format::Folder => read_folder(path, limits),
    }
}

/// A plain number type that files and checkpoints store little-endian.
pub trait LeNumber: Copy {
    fn extend_le(self, out: &mut Vec<u8>);
    /// The value whose native bytes are these little-endian ones.
    fn le_to_native(self) -> Self;
}

macro_rules! le_number {
    ($($t:ty),*) => {$(
        impl LeNumber for $t {
            fn extend_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn le_to_native(self) -> Self {
                <$t>::from_le_bytes(self.to_ne_bytes())
            }
        }
    )*};
}
le_number!(u8, u16, u32, f32);

/// An array's values as little-endian bytes in C order: borrowed from the array's memory when
/// it is contiguous on a little-endian machine (no copy), converted otherwise.
pub fn le_bytes<T: LeNumber, S: ndarray::Data<Elem = T>, D: ndarray::Dimension>(
    a: &ndarray::ArrayBase<S, D>,
) -> std::borrow::Cow<'_, [u8]> {
    view_le_bytes(a.view())
}

/// A slice's memory as bytes, to be filled with the values' little-endian bytes and then
/// passed to [`fix_le`].
pub fn bytes_mut<T: LeNumber>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: T is u8, u16, u32 or f32: every byte pattern is a valid T, and u8 has alignment
    // 1, so the slice's memory may be written as bytes.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) }
}

/// Values whose memory was filled with little-endian bytes ([`bytes_mut`]) made native: nothing
/// to do on a little-endian machine.
pub fn fix_le<T: LeNumber>(s: &mut [T]) {
    if cfg!(target_endian = "big") {
        s.iter_mut().for_each(|x| *x = x.le_to_native());
    }
}

/// [`le_bytes`] of a view, borrowing for the view's lifetime.
pub fn view_le_bytes<T: LeNumber, D: ndarray::Dimension>(a: ndarray::ArrayView<'_, T, D>) -> std::borrow::Cow<'_, [u8]> {
    match a.to_slice() {
        Some(s) if cfg!(target_endian = "little") => {
            // SAFETY: T is u8, u16, u32 or f32: any byte pattern is a valid u8 and u8 has
            // alignment 1, so viewing the slice's memory as bytes is sound.
            std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) })
        }
        _ => {
            let mut out = Vec::with_capacity(a.len() * std::mem::size_of::<T>());
            a.iter().for_each(|&x| x.extend_le(&mut out));
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The voxels of `data` (RGB samples interleaved) as little-endian bytes in C order
/// ([`le_bytes`]).
pub fn voxel_le_bytes(data: &Data) -> std::borrow::Cow<'_, [u8]> {
    match data {
        Data::U8(a) => le_bytes(a),
        Data::U16(a) => le_bytes(a),
        Data::U32(a) => le_bytes(a),
        Data::F32(a) => le_bytes(a),
        Data::Rgb8(a) => le_bytes(a),
        Data::Rgb16(a) => le_bytes(a),
    }
}

/// [`voxel_le_bytes`] of gray `data`; `None` for RGB.
pub fn data_le_bytes(data: &Data) -> Option<std::borrow::Cow<'_, [u8]>> {
    (!data.dtype().is_rgb()).then(|| voxel_le_bytes(data))
}

/// Reads planes `z0..z1` of a stack without decoding the others (TIFF pages, `.npy` by seeking,
/// the files of a slice folder). PNG/JPEG are single planes: only `0..1`.
pub fn read_planes(path: &Path, z0: usize, z1: usize, limits: ReadLimits) -> Result<Data, ImageError> {
    let img = match format_of(path)? {
        Format::Tiff => tiff_io::read_range(path, limits, Some((z0, z1)))?,
        Format::Npy => npy::read_range(path, limits, Some((z0, z1)))?,
        Format::Zarr => zarr::read(path, limits, Some((z0, z1)))?,
        Format::Raster if (z0, z1) == (0, 1) => raster::read(path, limits)?,
        Format::Raster => return Err(ImageError::corrupt(path, format!("planes {z0}..{z1} asked of a single-plane image"))),
        Format::Folder => {
            let slices = folder_slices(path)?;
            if z0 > z1 || z1 > slices.len() {
                return Err(ImageError::corrupt(path, format!("planes {z0}..{z1} asked of a folder of {} slices", slices.len())));
            }
            read_slices(path, &slices, z0, z1, limits)?
        }
    };
    Ok(img.data)
}

/// Reads plane ranges of one image again and again: a TIFF or Zarr store stays open (each range
/// costs only its own pages or chunks); other formats are read per range with [`read_planes`].
pub struct PlaneReader {
    path: PathBuf,
    open: OpenImage,
    limits: ReadLimits,
}

/// What a [`PlaneReader`] keeps open.
enum OpenImage {
    Tiff(Box<std::sync::Mutex<tiff_io::Pages>>),
    Zarr(Box<zarr::Reader>),
    /// Read per range.
    Closed,
}

impl std::fmt::Debug for PlaneReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlaneReader({})", self.path.display())
    }
}

impl PlaneReader {
    /// Opens an image whose plane ranges are each read within `limits`.
    pub fn open(path: &Path, limits: ReadLimits) -> Result<PlaneReader, ImageError> {
        PlaneReader::open_cached(path, 0, limits)
    }
    /// As [`open`](Self::open); a Zarr image may hold `cache_bytes` of decoded chunks: the rows
    /// of chunks the last read decoded (consecutive ranges then decode each chunk once) and the
    /// next row, decoded ahead on the thread pool.
    pub fn open_cached(path: &Path, cache_bytes: u64, limits: ReadLimits) -> Result<PlaneReader, ImageError> {
        let open = match format_of(path)? {
            Format::Tiff => OpenImage::Tiff(Box::new(std::sync::Mutex::new(tiff_io::Pages::open(path, limits)?))),
            Format::Zarr => OpenImage::Zarr(Box::new(zarr::Reader::open_cached(path, cache_bytes, limits)?)),
            Format::Raster | Format::Npy | Format::Folder => OpenImage::Closed,
        };
        Ok(PlaneReader { path: path.to_path_buf(), open, limits })
    }
    /// Planes `z0..z1`.
    pub fn read(&self, z0: usize, z1: usize) -> Result<Data, ImageError> {
        match &self.open {
            OpenImage::Tiff(m) => m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).read(z0, z1),
            OpenImage::Zarr(z) => z.read(z0, z1),
            OpenImage::Closed => read_planes(&self.path, z0, z1, self.limits),
        }
    }
}

/// The image files of a slice folder, in natural name order (`z2` before `z10`).
pub fn folder_slices(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| ImageError::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.starts_with('.') && matches!(format_of(&p), Ok(Format::Tiff | Format::Raster | Format::Npy)) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(ImageError::corrupt(dir, "folder holds no .tif/.png/.jpg/.npy slices"));
    }
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

fn read_folder(dir: &Path, limits: ReadLimits) -> Result<Image, ImageError> {
    let slices = folder_slices(dir)?;
    read_slices(dir, &slices, 0, slices.len(), limits)
}

/// Slices `z0..z1` of a folder, each checked against the folder's first slice.
fn read_slices(dir: &Path, slices: &[PathBuf], z0: usize, z1: usize, limits: ReadLimits) -> Result<Image, ImageError> {
    let first = read_header(&slices[0])?;
    if z1 <= z0 {
        return Err(ImageError::corrupt(dir, format!("no slices in {z0}..{z1}")));
    }
    let shape = [z1 - z0, first.shape[1], first.shape[2]];
    check_budget(dir, shape, first.dtype, limits)?;
    let mut planes = Vec::with_capacity(z1 - z0);
    for s in &slices[z0..z1] {
        let img = read_image(s, limits)?;
        let h = img.header();
        if h.ndim != 2 || h.dtype != first.dtype || h.shape[1..] != first.shape[1..] {
            return Err(ImageError::corrupt(
                s,
                format!(
                    "slice differs from the folder's first slice {}: expected 2D {}×{} {}, found {}D {}×{} {}",
                    slices[0].display(),
                    first.shape[1],
                    first.shape[2],
                    first.dtype,
                    h.ndim,
                    h.shape[1],
                    h.shape[2],
                    h.dtype
                ),
            ));
        }
        planes.push(img.data);
    }
    Ok(Image { data: stack(planes), ndim: 3, spacing: first.spacing })
}

/// Concatenates data along z (all pieces have the same type and plane shape).
fn stack(planes: Vec<Data>) -> Data {
    use ndarray::{Axis, concatenate};
    macro_rules! cat {
        ($v:ident) => {{
            let views: Vec<_> = planes
                .iter()
                .map(|p| match p {
                    Data::$v(a) => a.view(),
                    _ => unreachable!("stack() is given planes of one type"),
                })
                .collect();
            Data::$v(concatenate(Axis(0), &views).expect("planes have equal shapes"))
        }};
    }
    match planes[0] {
        Data::U8(_) => cat!(U8),
        Data::U16(_) => cat!(U16),
        Data::U32(_) => cat!(U32),
        Data::F32(_) => cat!(F32),
        Data::Rgb8(_) => cat!(Rgb8),
        Data::Rgb16(_) => cat!(Rgb16),
    }
}

/// Compares strings so that runs of digits order by value: `s2 < s10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut ai, mut bi) = (a.chars().peekable(), b.chars().peekable());
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let mut na = String::new();
                while let Some(c) = ai.peek().copied().filter(char::is_ascii_digit) {
                    na.push(c);
                    ai.next();
                }
                let mut nb = String::new();
                while let Some(c) = bi.peek().copied().filter(char::is_ascii_digit) {
                    nb.push(c);
                    bi.next();
                }
                let (ta, tb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                ai.next();
                bi.next();
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; how much was read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where [`hash_input`] hashes: the same hash either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashing {
    /// Each piece on every thread of the pool.
    Parallel,
    /// On the calling thread only, never on the pool: for a hash that other rows or tasks wait
    /// for. A pool thread waiting on a parallel loop runs other queued work meanwhile, which
    /// could be a row that waits for this very hash, beneath which the hash could never end.
    ThisThread,
}

/// Content hash of a file, of every file of a slice folder, or of the files an OME-Zarr image
/// is read from (its group's metadata and its array's files, each with its path in the store)
/// (blake3, hex).
pub fn hash_input(path: &Path, how: Hashing) -> Result<String, ImageError> {
    let mut hasher = blake3::Hasher::new();
    let files = if zarr::is_zarr(path) {
        let files = zarr::input_files(path)?;
        let root = path.parent().unwrap_or(path);
        for f in &files {
            hasher.update(f.strip_prefix(root).unwrap_or(f).to_string_lossy().as_bytes());
            hasher.update(&[0]);
        }
        files
    } else if path.is_dir() {
        folder_slices(path)?
    } else {
        vec![path.to_path_buf()]
    };
    // Read in pieces of 2 MiB (a buffer that stays in cache), each hashed on every thread
    // (blake3 hashes a file's pieces in any grouping to the same value): a 0.2 GB scan took
    // 0.05 s on one thread, the others idle.
    let mut buf = Vec::new();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| ImageError::io(&f, e))?;
        let len = file.metadata().map_err(|e| ImageError::io(&f, e))?.len();
        buf.resize((len as usize).clamp(1 << 16, 2 << 20), 0);
        loop {
            let n = read_full(&mut file, &mut buf).map_err(|e| ImageError::io(&f, e))?;
            if n >= 1 << 17 && how == Hashing::Parallel {
                hasher.update_rayon(&buf[..n]);
            } else {
                hasher.update(&buf[..n]);
            }
            if n < buf.len() {
                break;
            }
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["z10.tif", "z2.tif", "z1.tif", "z02.tif", "a.tif"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["a.tif", "z1.tif", "z02.tif", "z2.tif", "z10.tif"]);
    }

    #[test]
    fn budget_rejects_absurd_sizes_without_overflow() {
        let e =
            check_budget(Path::new("x.tif"), [1_000_000, 1_000_000, 1_000_000], DType::F32, ReadLimits { max_bytes: 1 << 30 }).unwrap_err();
        assert!(e.to_string().contains("1000000×1000000×1000000 f32"), "{e}");
    }
}
