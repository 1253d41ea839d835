//! What the fuzz targets share: a scratch folder per process (in memory where the machine has
//! `/dev/shm`), files written into it, the archive format of the Zarr target, and the checks
//! every target makes of an error.
//!
//! The targets call tessera's readers by path, as a run does, so what is fuzzed is exactly
//! what users reach (format detection by name, headers, then data). Each target's body is a
//! function here ([`targets`]), so that `tests/fuzz_corpus.rs` runs the committed corpus and
//! the regression inputs through the same code in the ordinary test suite.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The largest decoded image a target lets a reader allocate (the `--memory` limit that the
/// readers check declared sizes against). libFuzzer's `-malloc_limit_mb` is set above it, so a
/// reader that allocates by what a file declares, without the check, is reported.
pub const LIMIT: u64 = 64 << 20;

/// Lets tessera catch the panics it means to catch (a Parquet reader's, as an unreadable
/// file): libFuzzer's hook aborts at any panic, caught or not. A panic that reaches the target's
/// caller still fails the input (libfuzzer-sys aborts on it), with its message printed here.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
        tessera::table::read::set_limit(LIMIT);
    });
}

/// This thread's scratch folder (the regression test runs inputs on several threads).
pub fn scratch() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        root.join(format!("tessera-fuzz-{}", std::process::id()))
    });
    base.join(format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), ""))
}

/// Empties this thread's scratch folder and returns it.
pub fn reset() -> PathBuf {
    init();
    let d = scratch();
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// Writes `bytes` to `rel` under a fresh scratch folder; returns its path.
pub fn put(rel: &str, bytes: &[u8]) -> PathBuf {
    let p = reset().join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("scratch folder");
    }
    std::fs::write(&p, bytes).expect("scratch file");
    p
}

/// Asserts what every error must be: a message that names the file it is about.
pub fn check_error(msg: &str, path: &Path) {
    assert!(!msg.trim().is_empty(), "an empty error message");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    assert!(msg.contains(&name), "the error does not name the file {name}: {msg}");
}

/// The files of the Zarr target's input: entries of `[path length: u8][path][length: u32 LE]
/// [content]`, read until the bytes run out. Paths are cleaned to stay inside the store
/// (components of `[A-Za-z0-9._-]`, no `..`); entries with nothing left of their path are
/// skipped.
pub fn unpack(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = b.split_first() {
        let n = n as usize;
        if rest.len() < n + 4 {
            break;
        }
        let (name, rest) = rest.split_at(n);
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let rest = &rest[4..];
        let len = len.min(rest.len());
        let (content, rest) = rest.split_at(len);
        b = rest;
        let clean: Vec<String> = String::from_utf8_lossy(name)
            .split('/')
            .map(|c| c.chars().filter(|ch| ch.is_ascii_alphanumeric() || "._-".contains(*ch)).collect::<String>())
            .filter(|c| !c.is_empty() && c != "." && c != "..")
            .take(8)
            .collect();
        if !clean.is_empty() {
            out.push((clean.join("/"), content.to_vec()));
        }
    }
    out
}

/// The inverse of [`unpack`] (for seeding the corpus from real stores).
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (name, content) in files {
        v.push(name.len() as u8);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(content.len() as u32).to_le_bytes());
        v.extend_from_slice(content);
    }
    v
}

/// Reads an image file every way a run does and checks the answers agree: the header, the whole
/// image (within [`LIMIT`]), and plane ranges (whole-image reads and the plane reader of
/// streamed runs), which must hold the same bytes as the whole image's planes. Any read may
/// fail, with an error that names the file; none may panic or allocate past the limit.
pub fn read_every_way(path: &Path) {
    use tessera::io::{self, ReadLimits};
    let limits = ReadLimits { max_bytes: LIMIT };
    let header = io::read_header(path);
    let image = io::read_image(path, limits);
    if let Err(e) = &header {
        check_error(&e.to_string(), path);
    }
    if let Err(e) = &image {
        check_error(&e.to_string(), path);
    }
    let whole = image.ok().map(|img| {
        let bytes = io::voxel_le_bytes(&img.data).into_owned();
        assert!(bytes.len() as u64 <= LIMIT, "read {} bytes, past the limit", bytes.len());
        (img, bytes)
    });
    let Ok(h) = header else { return };
    if let Some((img, _)) = &whole {
        let got = img.header();
        assert_eq!((got.shape, got.dtype, got.ndim), (h.shape, h.dtype, h.ndim), "the header and the image disagree");
    }
    let [nz, ny, nx] = h.shape;
    let plane = (ny as u64).saturating_mul(nx as u64).saturating_mul(h.dtype.bytes_per_voxel());
    if nz == 0 || plane > LIMIT {
        return;
    }
    let reader = io::PlaneReader::open(path, limits);
    if let Err(e) = &reader {
        check_error(&e.to_string(), path);
    }
    for (z0, z1) in [(0, 1), (nz - 1, nz), (nz / 2, nz.min(nz / 2 + 2))] {
        let ranged = io::read_planes(path, z0, z1, limits);
        let streamed = reader.as_ref().ok().map(|r| r.read(z0, z1));
        for got in [Some(ranged), streamed].into_iter().flatten() {
            match got {
                Err(e) => check_error(&e.to_string(), path),
                Ok(d) => {
                    assert_eq!(d.shape(), [z1 - z0, ny, nx], "planes {z0}..{z1} have the wrong shape");
                    assert_eq!(d.dtype(), h.dtype, "planes {z0}..{z1} have another type than the header's");
                    if let Some((_, all)) = &whole {
                        let b = io::voxel_le_bytes(&d);
                        let at = z0 * plane as usize;
                        assert!(b[..] == all[at..at + b.len()], "planes {z0}..{z1} differ from the whole image's");
                    }
                }
            }
        }
    }
}

/// The targets, one function each: what every input must satisfy.
pub mod targets {
    use super::*;
    use tessera::io::{DType, Header};
    use tessera::spec::manifest::Manifest;
    use tessera::spec::manifest::SampleRow;
    use tessera::store::Store;
    const KEY: &str = "ab0123456789";

    /// The TIFF reader: classic and BigTIFF headers, IFD chains, strips and tiles, every codec
    /// the `tiff` crate decodes, predictors, ImageJ and OME metadata, multi-page stacks.
    pub fn tiff(data: &[u8]) {
        let path = put("input.tif", data);
        read_every_way(&path);
    }

    /// The PNG and JPEG readers. The first byte picks the file name's extension (as a run picks
    /// the decoder by it); the rest is the file.
    pub fn raster(data: &[u8]) {
        let Some((&pick, file)) = data.split_first() else { return };
        let name = if pick & 1 == 0 { "input.png" } else { "input.jpg" };
        let path = put(name, file);
        read_every_way(&path);
    }

    /// The NumPy `.npy` reader: versions 1–3, header dictionaries, every element type, and
    /// plane ranges read by seeking.
    pub fn npy(data: &[u8]) {
        let path = put("input.npy", data);
        read_every_way(&path);
    }

    /// The OME-Zarr reader: NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) metadata, every chunk codec,
    /// sharding. The input is a store's files ([`tessera_fuzz::unpack`]), written under
    /// `input.ome.zarr/`; the image read is the group, or its first array when a path names one.
    pub fn zarr(data: &[u8]) {
        let dir = reset().join("input.ome.zarr");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in unpack(data) {
            let p = dir.join(&name);
            if let Some(parent) = p.parent()
                && std::fs::create_dir_all(parent).is_err()
            {
                continue;
            }
            // A path that is already a folder (or under a file) is skipped, as a real store cannot
            // hold both.
            let _ = std::fs::write(&p, content);
        }
        read_every_way(&dir);
        // Another level, as the manifest's `level` column asks (only inside the store: a dataset
        // path may say anything).
        if let Ok(level) = tessera::io::zarr::level_path(&dir, 1)
            && level.starts_with(&dir)
            && !level.components().any(|c| c == std::path::Component::ParentDir)
        {
            read_every_way(&level);
        }
    }

    /// The pipeline compiler: YAML text → structural checks → typed stage graph → diagnostics as
    /// users see them (with the source line and caret), then the plan bound to a sample (the
    /// manifest's placeholders substituted, ops checked against the image) and rendered as
    /// `tessera plan` shows it. Every problem must come back as a diagnostic, never a panic.
    pub fn pipeline(data: &[u8]) {
        let file = put("pipeline.yaml", data);
        let (spec, diags) = tessera::spec::load(&file);
        let shown = tessera::cli::render::render_diagnostics(&diags, true);
        assert!(diags.is_empty() || shown.contains("pipeline.yaml"), "diagnostics that do not name the file");
        let Some(spec) = spec else {
            assert!(!diags.is_empty(), "no pipeline and no diagnostic");
            return;
        };
        let columns: Vec<String> = ["group", "dose", "sigma"].map(String::from).to_vec();
        let row = SampleRow {
            line: 2,
            id: "s1".into(),
            image: file.with_file_name("s1.tif"),
            meta: vec![("group".into(), "ctrl".into()), ("dose".into(), "2".into()), ("sigma".into(), "1.5".into())],
            problem: None,
        };
        let (plan, diags) = tessera::plan::compile(spec, Some(&columns), Some(&row));
        let _ = tessera::cli::render::render_diagnostics(&diags, false);
        let Some(plan) = plan else {
            assert!(!diags.is_empty(), "no plan and no diagnostic");
            return;
        };
        let _ = tessera::plan::render::text(&plan);
        let _ = tessera::plan::render::dot(&plan);
        let _ = tessera::plan::render::json(&plan);
        for (shape, ndim) in [([12, 20, 24], 3), ([1, 20, 24], 2)] {
            let headers: Vec<Header> = plan.sources.iter().map(|_| Header { shape, dtype: DType::U8, ndim, spacing: None }).collect();
            if let Err(e) = plan.bind(&row, &headers) {
                let d = plan.bind_diagnostic("s1", &e);
                assert!(!d.message.is_empty(), "an empty bind error");
            }
        }
    }

    /// The manifest reader: CSV (any delimiter sniffing, quoting, encodings the csv crate takes) and
    /// Parquet manifests, every row read as a run reads them. The first byte picks the extension.
    pub fn manifest(data: &[u8]) {
        let Some((&pick, file)) = data.split_first() else { return };
        let name = if pick & 1 == 0 { "samples.csv" } else { "samples.parquet" };
        let path = put(name, file);
        let m = match Manifest::open(&path, &[]) {
            Ok(m) => m,
            Err(e) => return check_error(&e.to_string(), &path),
        };
        let _ = m.first_good();
        let _ = m.hash();
        let rows = match m.each() {
            Ok(rows) => rows,
            Err(e) => return check_error(&e.to_string(), &path),
        };
        let mut n = 0;
        for row in rows {
            match row {
                Ok(r) => {
                    n += 1;
                    assert!(!r.id.is_empty() || r.problem.is_some(), "a row without a sample id and no problem said");
                }
                Err(e) => check_error(&e.to_string(), &path),
            }
        }
        assert!(n <= m.len(), "more rows read ({n}) than the manifest counted ({})", m.len());
    }

    /// The checkpoint reader. The first byte picks how the rest is used: as a whole checkpoint
    /// file (magic, length, blake3 and payload as found after a crash or by a stray write), or as a
    /// payload wrapped in a correct header and hash, so that the value decoder sees every input.
    /// A checkpoint is taken or refused (and removed); one taken must save and load back the same.
    pub fn checkpoint(data: &[u8]) {
        let Some((&pick, rest)) = data.split_first() else { return };
        let out = reset().join("out");
        let store = Store::new(&out);
        let file = store.root().join("ckpt").join(&KEY[..2]).join(format!("{KEY}.ckpt"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let bytes = if pick & 1 == 0 {
            rest.to_vec()
        } else {
            let mut b = b"TSRACK01".to_vec();
            b.extend_from_slice(&(rest.len() as u64).to_le_bytes());
            b.extend_from_slice(blake3::hash(rest).as_bytes());
            b.extend_from_slice(rest);
            b
        };
        std::fs::write(&file, &bytes).unwrap();
        let _ = tessera::store::decode_table(rest);
        match store.load(KEY) {
            None => assert!(!file.exists(), "a refused checkpoint was left in place"),
            Some(v) => {
                store.save("cd0000", &v).expect("saving a loaded value");
                let again = store.load("cd0000").expect("loading a value just saved");
                store.save("ef0000", &again).expect("saving it again");
                let a = std::fs::read(store.root().join("ckpt/cd/cd0000.ckpt")).unwrap();
                let b = std::fs::read(store.root().join("ckpt/ef/ef0000.ckpt")).unwrap();
                assert!(a == b, "a checkpoint does not load back as it was saved");
            }
        }
    }

    /// The record readers: a run record (`run.json`, read whole and streamed sample by sample, and
    /// its recorded pipeline recompiled, as `report`, `status` and `tables` do), and a sample's
    /// completion record under `.tessera/samples/`.
    pub fn record(data: &[u8]) {
        let run = put("out/run.json", data);
        let out = run.parent().unwrap().to_path_buf();
        match tessera::record::load(&out) {
            Ok(prov) => {
                let _ = tessera::record::latest_samples(&prov);
                for p in &prov {
                    if let Err(e) = p.run.plan(None, &p.file) {
                        assert!(e.contains("run.json"), "a recompile error that does not name the record: {e}");
                    }
                }
            }
            Err(e) => check_error(&e, &run),
        }
        let mut n = 0usize;
        match tessera::record::each_entry(&run, &mut |_| {
            n += 1;
            Ok(())
        }) {
            Ok(_) => {}
            Err(e) => check_error(&e, &run),
        }
        let samples = out.join(".tessera/samples");
        std::fs::create_dir_all(&samples).unwrap();
        std::fs::write(samples.join("s1.json"), data).unwrap();
        let store = tessera::store::Store::new(&out);
        let _ = store.record("s1");
        let _ = store.records();
    }
}
