//! OME-Zarr in and out. The inputs are stores written by ome-zarr-py and zarr-python
//! (testdata/make_zarr.py: NGFF 0.4 and 0.5, chunk shapes from single planes to shards, zstd,
//! gzip, blosc and no compression); each must read to the TIFF's voxels and run a pipeline to the
//! same bytes as the TIFF does, in memory and streamed. The outputs must read back to the TIFF
//! output's voxels, with their levels, be the same bytes in memory and streamed, and be redone
//! when a chunk is deleted or cut short. tests/py/check_zarr.py (in CI) opens them with the
//! real clients.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, root, run_samples, tessera, text};
use tessera::io::{Data, ReadLimits, read_header, read_image};

const FIXTURES: [&str; 12] = [
    "v05_default",
    "v05_zstd_8x16x16",
    "v05_gzip_7x20x19",
    "v05_blosc_lz4",
    "v05_none_planes",
    "v05_sharded",
    "v05_czyx",
    "v04_default",
    "v04_blosc_zstd_8x16x16",
    "v04_gzip",
    "v04_zstd",
    "v04_none",
];

fn fixture(name: &str) -> PathBuf {
    root().join("testdata/formats/zarr").join(format!("{name}.ome.zarr"))
}

fn read(p: &Path) -> tessera::io::Image {
    read_image(p, ReadLimits { max_bytes: 1 << 30 }).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_fixture_reads_to_the_tiff_voxels_and_spacing() {
    let want = read(&root().join("testdata/nuclei3d.tif")).data;
    for f in FIXTURES {
        let img = read(&fixture(f));
        assert_eq!(img.ndim, 3, "{f}");
        assert!(img.data == want, "{f}: voxels differ from nuclei3d.tif");
        let h = read_header(&fixture(f)).unwrap();
        let sp = h.spacing.unwrap_or_else(|| panic!("{f}: no spacing"));
        assert_eq!((sp.zyx, sp.unit.as_str()), ([2.0, 0.5, 0.5], "um"), "{f}");
        // A plane range reads only those planes.
        let part = tessera::io::read_planes(&fixture(f), 9, 17, ReadLimits { max_bytes: 1 << 30 }).unwrap();
        match (&part, &want) {
            (Data::U16(a), Data::U16(b)) => assert_eq!(a, &b.slice(ndarray::s![9..17, .., ..]), "{f}"),
            _ => panic!("{f}: not u16"),
        }
    }
    let img = read(&fixture("v05_2d"));
    assert_eq!(img.ndim, 2);
    assert!(img.data == read(&root().join("testdata/nuclei2d.tif")).data);
}

#[test]
fn a_level_is_chosen_by_path_or_by_the_manifest_level_column() {
    for f in ["v05_default", "v04_default"] {
        let l1 = tessera::io::level_path(&fixture(f), 1).unwrap();
        assert!(l1.ends_with("s1"), "{}", l1.display());
        let h = read_header(&l1).unwrap();
        assert_eq!(h.shape, [31, 30, 28], "{f}");
        // Spacing of that level: ome-zarr-py halves y and x only.
        let sp = h.spacing.unwrap();
        assert_eq!(sp.zyx[0], 2.0);
        assert!((sp.zyx[1] - 61.0 / 30.0 * 0.5).abs() < 1e-9, "{:?}", sp.zyx);
        let e = tessera::io::level_path(&fixture(f), 2).unwrap_err().to_string();
        assert!(e.contains("level 2 asked of an image with 2 levels"), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("s.csv");
    // For a TIFF, `level` is ordinary metadata.
    let tif = root().join("testdata/nuclei3d.tif");
    let rows = format!("sample,image,level\nhalf,{z},1\nbad,{z},x\ntif,{},high\n", tif.display(), z = fixture("v05_default").display());
    std::fs::write(&csv, rows).unwrap();
    let out = dir.path().join("out");
    let o = run_samples("pipelines/nuclei.yaml", &csv, &out, &[]);
    assert!(!o.status.success(), "{}", text(&o.stderr));
    let h = read_header(&out.join("samples/half/nuclei.tif")).unwrap();
    assert_eq!(h.shape, [31, 30, 28]);
    assert_eq!(read_header(&out.join("samples/tif/nuclei.tif")).unwrap().shape, [31, 61, 57]);
    let table = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    assert!(table.lines().any(|l| l.starts_with("tif,1,high,")), "{table}");
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.contains("bad,input") && errors.contains("`level` must be a whole number"), "{errors}");
}

/// A manifest of one sample `x` whose image is `image`.
fn manifest(dir: &Path, name: &str, image: &Path) -> PathBuf {
    let p = dir.join(format!("{name}.csv"));
    std::fs::write(&p, format!("sample,image\nx,{}\n", image.display())).unwrap();
    p
}

const PIPELINE: &str = "version: 1
name: nuclei-zarr
spacing: [1.0, 0.5, 0.5]
unit: um
stages:
  smooth:  {op: gaussian, input: image, sigma: 1.0}
  mask:    {op: threshold, input: smooth, method: otsu}
  filled:  {op: fill_holes, input: mask}
  nuclei:  {op: label, input: filled, min_size: 10}
  shape:   {op: measure, labels: nuclei, intensity: {raw: image}}
outputs:
  smooth: [tiff, ome-zarr]
  mask: [tiff, ome-zarr]
  nuclei: [tiff, ome-zarr]
  shape: [parquet, csv]
";

fn run(dir: &Path, samples: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let p = dir.join("p.yaml");
    if !p.exists() {
        std::fs::write(&p, PIPELINE).unwrap();
    }
    let out = dir.join(out);
    let mut args =
        vec!["run", p.to_str().unwrap(), "--samples", samples.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"];
    args.extend_from_slice(extra);
    let o = tessera(&args);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    out
}

fn same_file(a: &Path, b: &Path) {
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} and {} differ", a.display(), b.display());
}

#[test]
fn a_pipeline_on_any_fixture_gives_the_bytes_of_the_tiff_run_in_memory_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let tif = run(dir.path(), &manifest(dir.path(), "tif", &root().join("testdata/nuclei3d.tif")), "tif", &[]);
    let s = tif.join("samples/x");
    for f in FIXTURES {
        let m = manifest(dir.path(), f, &fixture(f));
        for (tag, extra) in [("mem", &[][..]), ("streamed", &["--memory", "1MiB"][..])] {
            let out = run(dir.path(), &m, &format!("{f}-{tag}"), extra);
            let streamed = std::fs::read_to_string(out.join("run.json")).unwrap().contains("\"streamed\": true");
            assert_eq!(streamed, tag == "streamed", "{f} {tag}");
            for file in ["nuclei.tif", "mask.tif", "smooth.tif", "shape.parquet", "shape.csv"] {
                same_file(&s.join(file), &out.join("samples/x").join(file));
            }
            same_file(&tif.join("tables/shape.parquet"), &out.join("tables/shape.parquet"));
        }
    }
}

#[test]
fn outputs_read_back_to_the_tiff_outputs_with_their_levels() {
    let dir = tempfile::tempdir().unwrap();
    // A 2D image large enough for a second level (512×512 → 256×256).
    let m = manifest(dir.path(), "2d", &root().join("testdata/nuclei2d.tif"));
    let whole = run(dir.path(), &m, "2d", &[]);
    for st in ["smooth", "mask", "nuclei"] {
        let z = whole.join(format!("samples/x/{st}.ome.zarr"));
        let img = read(&z);
        assert_eq!(img.ndim, 2, "{st}");
        let tif = read(&whole.join(format!("samples/x/{st}.tif")));
        assert!(img.data == tif.data, "{st}: level 0 differs from the TIFF");
        assert_eq!(img.spacing.as_ref().map(|s| s.zyx), tif.spacing.as_ref().map(|s| s.zyx), "{st}");
        let l1 = read(&tessera::io::level_path(&z, 1).unwrap());
        assert_eq!(l1.data.shape(), [1, 256, 256], "{st}");
        assert!(tessera::io::level_path(&z, 2).is_err(), "{st}: a third level");
        // Masks and labels: level 1 is every other voxel; images: the mean of 2×2 blocks.
        match (&tif.data, &l1.data) {
            (Data::U8(a), Data::U8(b)) => assert_eq!(b, &a.slice(ndarray::s![.., ..;2, ..;2]), "{st}"),
            (Data::U16(a), Data::U16(b)) => assert_eq!(b, &a.slice(ndarray::s![.., ..;2, ..;2]), "{st}"),
            (Data::F32(a), Data::F32(b)) => {
                for (y, x) in [(0, 0), (100, 37), (255, 255)] {
                    let m = (0..4).map(|k| a[[0, 2 * y + k / 2, 2 * x + k % 2]] as f64).sum::<f64>() / 4.0;
                    assert_eq!(b[[0, y, x]], m as f32, "{st} ({y}, {x})");
                }
            }
            (a, b) => panic!("{st}: {:?} {:?}", a.dtype(), b.dtype()),
        }
    }

    // 3D from a TIFF: one level (31 ≤ 256); labels carry image-label metadata with colours.
    let m = manifest(dir.path(), "3d", &root().join("testdata/nuclei3d.tif"));
    let whole = run(dir.path(), &m, "3d", &[]);
    let streamed = run(dir.path(), &m, "3d-streamed", &["--memory", "1MiB"]);
    common::assert_same(&whole.join("samples"), &streamed.join("samples"), "3D in memory vs streamed");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("samples/x/nuclei.ome.zarr/zarr.json")).unwrap()).unwrap();
    let ome = &meta["attributes"]["ome"];
    assert_eq!(ome["version"], "0.5");
    assert_eq!(ome["multiscales"][0]["axes"][2], serde_json::json!({"name": "x", "type": "space", "unit": "micrometer"}));
    assert_eq!(ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"], serde_json::json!([2.0, 0.5, 0.5]));
    let n = ome["image-label"]["colors"].as_array().unwrap().len();
    let labels = match read(&whole.join("samples/x/nuclei.tif")).data {
        Data::U16(a) => a.mapv(u32::from),
        d => panic!("{:?}", d.dtype()),
    };
    assert_eq!(n as u32, tessera::ops::labels::max3(&labels));
}

#[test]
fn a_volume_with_levels_is_written_the_same_in_memory_and_streamed() {
    // 261×263×259 (odd and even sides): levels 0 and 1 (131×132×130); streamed, the pairs of
    // planes averaged for level 1 straddle slabs.
    let dir = tempfile::tempdir().unwrap();
    let (nz, ny, nx) = (261, 263, 259);
    let mut next = common::xorshift(11);
    let noise: Vec<u16> = (0..nz * ny * nx).map(|_| (next() % 1000) as u16).collect();
    let img = ndarray::Array3::from_shape_vec((nz, ny, nx), noise).unwrap();
    let path = dir.path().join("vol.npy");
    tessera::io::write_npy(&path, &Data::U16(img), 3).unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: levels\nspacing: [2.0, 0.5, 0.5]\nunit: um\nstages:\n  smooth: {op: gaussian, input: image, sigma: 2.0}\n  mask: {op: threshold, input: smooth, method: otsu}\n  objects: {op: label, input: mask}\noutputs:\n  smooth: ome-zarr\n  mask: ome-zarr\n  objects: [ome-zarr, tiff]\n",
    )
    .unwrap();
    let m = manifest(dir.path(), "vol", &path);
    let whole = run(dir.path(), &m, "whole", &[]);
    let streamed = run(dir.path(), &m, "streamed", &["--memory", "24MiB"]);
    assert!(std::fs::read_to_string(streamed.join("run.json")).unwrap().contains("\"streamed\": true"));
    common::assert_same(&whole.join("samples"), &streamed.join("samples"), "in memory vs streamed");
    let s = whole.join("samples/x");
    let smooth = match read(&s.join("smooth.ome.zarr")).data {
        Data::F32(a) => a,
        d => panic!("{:?}", d.dtype()),
    };
    let l1 = read(&tessera::io::level_path(&s.join("smooth.ome.zarr"), 1).unwrap());
    assert_eq!(l1.data.shape(), [131, 132, 130]);
    assert_eq!(l1.spacing.unwrap().zyx, [4.0, 1.0, 1.0]);
    let Data::F32(l1) = l1.data else { panic!() };
    for (z, y, x) in [(0, 0, 0), (65, 70, 12), (130, 131, 129)] {
        let mut v = Vec::new();
        for zz in 2 * z..(2 * z + 2).min(nz) {
            for yy in 2 * y..(2 * y + 2).min(ny) {
                for xx in 2 * x..(2 * x + 2).min(nx) {
                    v.push(smooth[[zz, yy, xx]] as f64);
                }
            }
        }
        assert_eq!(l1[[z, y, x]], (v.iter().sum::<f64>() / v.len() as f64) as f32, "({z}, {y}, {x})");
    }
    let objects = read(&s.join("objects.tif")).data;
    let o1 = read(&tessera::io::level_path(&s.join("objects.ome.zarr"), 1).unwrap()).data;
    match (objects, o1) {
        (Data::U16(a), Data::U16(b)) => assert_eq!(b, a.slice(ndarray::s![..;2, ..;2, ..;2])),
        (Data::U32(a), Data::U32(b)) => assert_eq!(b, a.slice(ndarray::s![..;2, ..;2, ..;2])),
        (a, b) => panic!("{:?} {:?}", a.dtype(), b.dtype()),
    }
}

#[test]
fn labels_of_an_ome_zarr_image_go_into_a_linked_store_that_leaves_the_input_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the input, so that its hash before and after can be compared.
    let input = dir.path().join("scan.ome.zarr");
    copy_dir(&fixture("v05_default"), &input);
    let before = tessera::io::hash_input(&input, tessera::io::Hashing::Parallel).unwrap();
    let m = manifest(dir.path(), "z", &input);
    let whole = run(dir.path(), &m, "z", &[]);
    let streamed = run(dir.path(), &m, "z-streamed", &["--memory", "1MiB"]);
    assert_eq!(tessera::io::hash_input(&input, tessera::io::Hashing::Parallel).unwrap(), before, "the input store changed");
    assert!(!input.join("labels").exists(), "labels were written into the input");
    let store = whole.join("samples/x/nuclei.ome.zarr");
    for level in ["s0", "s1"] {
        let l = std::fs::read_link(store.join(level)).unwrap();
        assert_eq!(l, std::fs::canonicalize(&input).unwrap().join(level));
    }
    let labels: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("labels/zarr.json")).unwrap()).unwrap();
    assert_eq!(labels["attributes"]["ome"]["labels"], serde_json::json!(["nuclei"]));
    let lab: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("labels/nuclei/zarr.json")).unwrap()).unwrap();
    let ome = &lab["attributes"]["ome"];
    assert_eq!(ome["image-label"]["source"]["image"], "../../");
    let img: serde_json::Value = serde_json::from_slice(&std::fs::read(input.join("zarr.json")).unwrap()).unwrap();
    let want = &img["attributes"]["ome"]["multiscales"][0]["datasets"];
    let got = &ome["multiscales"][0]["datasets"];
    assert_eq!(got.as_array().unwrap().len(), 2, "as many levels as the image");
    for k in 0..2 {
        assert_eq!(got[k]["coordinateTransformations"], want[k]["coordinateTransformations"], "level {k}");
        let shape = read_header(&store.join(format!("labels/nuclei/{k}"))).unwrap().shape;
        assert_eq!(shape, read_header(&input.join(format!("s{k}"))).unwrap().shape, "level {k}");
    }
    // Level 0 of the labels is the TIFF output; reading the store back gives the labels.
    let tif = read(&whole.join("samples/x/nuclei.tif")).data;
    assert!(read(&store.join("labels/nuclei")).data == tif);
    assert!(read(&tessera::io::output_voxels(&store)).data == tif);
    common::assert_same(&whole.join("samples"), &streamed.join("samples"), "linked store in memory vs streamed");
}

/// Every file under `dir` but the metadata (`zarr.json`), sorted; links are not followed.
fn chunks(dir: &Path) -> Vec<PathBuf> {
    tessera::util::files_under(dir).unwrap().into_iter().filter(|p| p.file_name().unwrap() != "zarr.json").collect()
}

#[test]
fn a_deleted_or_cut_chunk_is_rewritten_and_a_killed_writer_leaves_nothing_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), "2d", &root().join("testdata/nuclei2d.tif"));
    let out = run(dir.path(), &m, "out", &[]);
    let reference = dir.path().join("reference");
    copy_dir(&out.join("samples"), &reference);
    let cs = chunks(&out.join("samples/x/smooth.ome.zarr"));
    // One shard per row of chunks: a file per level here.
    assert_eq!(cs.len(), 2, "{cs:?}");
    // Deleted.
    std::fs::remove_file(&cs[0]).unwrap();
    run(dir.path(), &m, "out", &[]);
    common::assert_same(&reference, &out.join("samples"), "after a deleted chunk");
    // Cut short (what a crash in the middle of a write leaves).
    let b = std::fs::read(&cs[1]).unwrap();
    std::fs::write(&cs[1], &b[..b.len() / 2]).unwrap();
    let o = run(dir.path(), &m, "out", &[]);
    common::assert_same(&reference, &o.join("samples"), "after a cut chunk");
    // A store a killed run was writing (a dead process's temporary folder) is removed.
    let stale = out.join("samples/x/nuclei.ome.zarr.tmp999999999-0");
    std::fs::create_dir_all(stale.join("0/c/0")).unwrap();
    std::fs::write(stale.join("0/c/0/0"), b"half").unwrap();
    run(dir.path(), &m, "out", &["--force"]);
    assert!(!stale.exists(), "a stale store was left behind");
    common::assert_same(&reference, &out.join("samples"), "after --force");
}

#[test]
fn stores_tessera_cannot_read_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("plain.zarr");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::write(g.join("zarr.json"), r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#).unwrap();
    let e = read_image(&g, ReadLimits::default()).unwrap_err().to_string();
    assert!(e.contains("without OME-NGFF `multiscales`"), "{e}");
    let e = read_image(&dir.path().join("missing.ome.zarr"), ReadLimits::default()).unwrap_err().to_string();
    assert!(e.contains("file not found"), "{e}");
    // Three channels.
    let c = dir.path().join("rgb.ome.zarr");
    copy_dir(&fixture("v05_czyx"), &c);
    let meta = c.join("s0/zarr.json");
    let j = std::fs::read_to_string(&meta).unwrap().replacen("\"shape\": [\n    1,", "\"shape\": [\n    3,", 1);
    std::fs::write(&meta, j).unwrap();
    let e = read_image(&c, ReadLimits::default()).unwrap_err().to_string();
    assert!(e.contains("axis `c` has 3 entries"), "{e}");
    // The budget is checked before any chunk is read.
    let e = read_image(&fixture("v05_default"), ReadLimits { max_bytes: 1000 }).unwrap_err().to_string();
    assert!(e.contains("more than the limit"), "{e}");
    // So is the size of one chunk as decoded (chunks are decoded whole, and metadata may give a
    // chunk far larger than the image), for whole reads and for streamed plane ranges.
    let big = dir.path().join("big.ome.zarr");
    copy_dir(&fixture("v05_default"), &big);
    let meta = big.join("s0/zarr.json");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let mut j = j;
    j["chunk_grid"]["configuration"]["chunk_shape"] = serde_json::json!([4096, 4096, 4096]);
    std::fs::write(&meta, j.to_string()).unwrap();
    for e in [
        read_image(&big, ReadLimits::default()).unwrap_err().to_string(),
        tessera::io::PlaneReader::open(&big, ReadLimits::default()).err().unwrap().to_string(),
    ] {
        assert!(e.contains("declares its chunks (4096×4096×4096 uint16) = 137438953472 bytes, more than the limit"), "{e}");
    }
    // A chunk that does not decode names the store.
    let bad = dir.path().join("bad.ome.zarr");
    copy_dir(&fixture("v05_zstd_8x16x16"), &bad);
    let cs = chunks(&bad.join("s0"));
    std::fs::write(&cs[0], b"not zstd").unwrap();
    let e = read_image(&bad, ReadLimits::default()).unwrap_err().to_string();
    assert!(e.contains("bad.ome.zarr"), "{e}");
}

#[test]
fn a_cached_reader_gives_every_plane_range_as_read_whole() {
    // Chunks of 8 planes (and shards of 8): ranges inside a row, across rows, overlapping the
    // last one (a halo) and out of order all equal the same planes of the whole read.
    for f in ["v05_zstd_8x16x16", "v05_sharded", "v04_gzip"] {
        let whole = read(&fixture(f)).data;
        let Data::U16(whole) = whole else { panic!() };
        let r = tessera::io::PlaneReader::open_cached(&fixture(f), 1 << 20, Default::default()).unwrap();
        for (z0, z1) in [(0, 3), (1, 9), (7, 20), (18, 31), (0, 31), (5, 6), (30, 31), (2, 2), (8, 16), (3, 12)] {
            let Data::U16(got) = r.read(z0, z1).unwrap() else { panic!() };
            assert_eq!(got, whole.slice(ndarray::s![z0..z1, .., ..]), "{f} {z0}..{z1}");
        }
        assert!(r.read(5, 32).is_err(), "{f}: past the last plane");
    }
}

#[test]
fn other_sample_types_read_as_float32_and_chunks_never_stored_as_the_fill_value() {
    // int16 in chunks and float64 in shards, both with the first 8 planes zero: the chunk row
    // (and shards, and subchunks) holding only zeros were not stored by zarr-python.
    let Data::U16(tif) = read(&root().join("testdata/nuclei3d.tif")).data else { panic!("nuclei3d.tif is u16") };
    let mut want = tif.mapv(f32::from);
    want.slice_mut(ndarray::s![..8, .., ..]).fill(0.0);
    for f in ["v05_int16_sparse", "v05_float64_sharded_sparse"] {
        let Data::F32(got) = read(&fixture(f)).data else { panic!("{f}: not read as f32") };
        assert_eq!(got, want, "{f}");
        let r = tessera::io::PlaneReader::open_cached(&fixture(f), 1 << 20, Default::default()).unwrap();
        for (z0, z1) in [(0, 5), (3, 12), (10, 25), (24, 31), (6, 9)] {
            let Data::F32(part) = r.read(z0, z1).unwrap() else { panic!() };
            assert_eq!(part, want.slice(ndarray::s![z0..z1, .., ..]), "{f} {z0}..{z1}");
        }
    }
}

#[test]
fn sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_zarr_outputs() {
    // A study of OME-Zarr inputs (0.5 with linked labels, 0.4, sharded) and a TIFF, every voxel
    // output as OME-Zarr: killed at seeded moments, then run once more.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("study.csv");
    let rows: Vec<String> = ["v05_default", "v04_gzip", "v05_sharded", "v05_2d"]
        .iter()
        .map(|f| format!("{f},{}", fixture(f).display()))
        .chain([format!("tif,{}", root().join("testdata/nuclei3d.tif").display())])
        .collect();
    std::fs::write(&m, format!("sample,image\n{}\n", rows.join("\n"))).unwrap();
    let t0 = std::time::Instant::now();
    let reference = run(dir.path(), &m, "reference", &["--threads", "1"]);
    let length = (t0.elapsed().as_millis() as u64).max(20);
    let out = dir.path().join("killed");
    let args: Vec<String> = [
        "run",
        dir.path().join("p.yaml").to_str().unwrap(),
        "--samples",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--progress",
        "never",
        "--threads",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let kills = common::kill_runs(&args, 10, length, 0x5851_f42d_4c95_7f2d);
    assert!(kills >= 3, "only {kills} runs were killed mid-way");
    run(dir.path(), &m, "killed", &["--threads", "1"]);
    common::assert_same(&reference.join("samples"), &out.join("samples"), "after SIGKILLs");
    common::assert_same(&reference.join("tables"), &out.join("tables"), "after SIGKILLs");
    let leftovers = chunks(&out.join("samples"));
    let tmp: Vec<_> = leftovers.iter().filter(|p| p.strip_prefix(&out).unwrap().to_string_lossy().contains(".tmp")).collect();
    assert!(tmp.is_empty(), "temporary stores left: {tmp:?}");
}

/// A shard of `n` subchunks whose first holds `bytes` and the rest are missing, its index at
/// the end with a CRC-32C (the layout of `v05_sharded`).
fn shard_of(bytes: &[u8], n: usize) -> Vec<u8> {
    let mut index = Vec::new();
    index.extend_from_slice(&0u64.to_le_bytes());
    index.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    for _ in 1..n {
        index.extend_from_slice(&[0xff; 16]);
    }
    let mut crc = !0u32;
    for &b in &index {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    let mut out = bytes.to_vec();
    out.extend_from_slice(&index);
    out.extend_from_slice(&(!crc).to_le_bytes());
    out
}

#[test]
fn a_chunk_that_decodes_to_more_than_it_can_hold_is_refused_before_it_is_decoded() {
    // zarrs' codecs size their output by what the compressed bytes declare (blosc's header,
    // zstd's frame) or read a gzip stream to its end: a chunk of a few kilobytes could ask for
    // gigabytes. tessera holds each to the chunk's size (io::zarr::bounded), in Zarr v2 and v3
    // and inside shards.
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 64 << 20];
    let zstd_bomb = zstd::bulk::compress(&zeros, 1).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&zeros).unwrap();
    let gzip_bomb = gz.finish().unwrap();
    assert!(zstd_bomb.len() < 1 << 20 && gzip_bomb.len() < 1 << 20);
    // (fixture, codec, the chunk's bytes (None: the first chunk with its blosc header saying
    // 2 GiB), the bytes the chunk holds)
    let cases: [(&str, &str, Option<Vec<u8>>, u64); 7] = [
        ("v05_blosc_lz4", "blosc", None, 4 * 32 * 32 * 2),
        ("v04_blosc_zstd_8x16x16", "blosc", None, 8 * 16 * 16 * 2),
        ("v05_zstd_8x16x16", "zstd", Some(zstd_bomb.clone()), 8 * 16 * 16 * 2),
        ("v04_zstd", "zstd", Some(zstd_bomb.clone()), 0),
        ("v05_gzip_7x20x19", "gzip", Some(gzip_bomb.clone()), 7 * 20 * 19 * 2),
        ("v04_gzip", "gzip", Some(gzip_bomb), 0),
        ("v05_sharded", "zstd", Some(shard_of(&zstd_bomb, 8)), 4 * 16 * 16 * 2),
    ];
    for (f, codec, bytes, holds) in cases {
        let store = dir.path().join(format!("{f}.ome.zarr"));
        copy_dir(&fixture(f), &store);
        let mut cs: Vec<PathBuf> =
            chunks(&store.join("s0")).into_iter().filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
        cs.sort();
        let bytes = bytes.unwrap_or_else(|| {
            let mut b = std::fs::read(&cs[0]).unwrap();
            b[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
            b
        });
        std::fs::write(&cs[0], bytes).unwrap();
        for e in [
            read_image(&store, ReadLimits::default()).unwrap_err().to_string(),
            tessera::io::PlaneReader::open(&store, ReadLimits::default()).unwrap().read(0, 31).unwrap_err().to_string(),
        ] {
            assert!(e.contains(&format!("a {codec} chunk decodes to")), "{f}: {e}");
            assert!(e.contains(f), "{f}: the store is named: {e}");
            if holds > 0 {
                assert!(e.contains(&format!("more than the {holds} bytes it can hold")), "{f}: {e}");
            }
            if codec == "blosc" {
                assert!(e.contains("decodes to 2147483648 bytes"), "{f}: {e}");
            }
        }
    }
}
