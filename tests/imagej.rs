//! Every kind of TIFF tessera writes, opened in the real client: ImageJ 1.x (Debian's `imagej`,
//! the TIFF reader behind Fiji's File › Open) under `xvfb-run`. A macro opens each file, prints
//! its calibration (`getVoxelSize`) and saves its voxels as raw data; every voxel and the voxel
//! size and unit must equal what tessera computed. Files written the old way (each page's
//! directory between the planes) are included as a negative control: ImageJ must misread them,
//! or this test could not catch the defect it exists for.
//!
//! `bash .ci/run` installs ImageJ and sets TESSERA_IMAGEJ=1; without it the test says so and
//! does nothing. TESSERA_IMAGEJ_JAR overrides the jar (default /usr/share/java/ij.jar).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{tessera, text};
use ndarray::Array3;
use tessera::io::{Compression, Data, ReadLimits, Spacing, StackWriter, write_tiff, write_tiff_as};

fn enabled() -> bool {
    let on = std::env::var("TESSERA_IMAGEJ").is_ok_and(|v| !v.is_empty() && v != "0");
    if !on {
        eprintln!("skipped: TESSERA_IMAGEJ is not set (bash .ci/run installs Debian's imagej and sets it)");
    }
    on
}

/// What ImageJ must find in a file.
struct Case {
    file: PathBuf,
    /// Voxels in z, y, x order as ImageJ holds them (u32 labels become 32-bit float).
    values: Vec<f64>,
    shape: [usize; 3],
    bits: u32,
    /// Voxel width, height, depth (depth 1 for 2D files) and ImageJ's name of the unit.
    size: [f64; 3],
    unit: &'static str,
    /// A file ImageJ is expected to misread (the negative control).
    misread: bool,
}

fn values(d: &Data) -> (Vec<f64>, u32) {
    match d {
        Data::U8(a) => (a.iter().map(|&v| v as f64).collect(), 8),
        Data::U16(a) => (a.iter().map(|&v| v as f64).collect(), 16),
        // ImageJ 1.x has no 32-bit integer images: it opens them as 32-bit float.
        Data::U32(a) => (a.iter().map(|&v| v as f32 as f64).collect(), 32),
        Data::F32(a) => (a.iter().map(|&v| v as f64).collect(), 32),
        Data::Rgb8(_) | Data::Rgb16(_) => panic!("no RGB cases"),
    }
}

fn case(file: &Path, data: &Data, ndim: u8, spacing: &Spacing) -> Case {
    let (values, bits) = values(data);
    let shape = data.shape();
    // ImageJ names micrometres "microns" (it reads `unit=micron` from the description).
    let unit = if spacing.unit == "um" { "microns" } else { "pixel" };
    let depth = if ndim == 3 { spacing.zyx[0] } else { 1.0 };
    Case { file: file.to_path_buf(), values, shape, bits, size: [spacing.zyx[2], spacing.zyx[1], depth], unit, misread: false }
}

/// One file per voxel type, compression and dimensionality, written whole and slab by slab.
fn library_cases(dir: &Path) -> Vec<Case> {
    let base = Array3::from_shape_fn((6, 19, 23), |(z, y, x)| (z * 437 + y * 23 + x) as u32);
    let kinds: Vec<(&str, Data)> = vec![
        ("mask_u8", Data::U8(base.mapv(|v| if v % 3 == 0 { 255 } else { 0 }))),
        ("image_u8", Data::U8(base.mapv(|v| (v % 251) as u8))),
        ("image_u16", Data::U16(base.mapv(|v| (v * 37 % 65521) as u16))),
        ("labels_u16", Data::U16(base.mapv(|v| (v % 700) as u16))),
        ("labels_u32", Data::U32(base.mapv(|v| v * 6007 + 70_000))),
        ("image_f32", Data::F32(base.mapv(|v| v as f32 * 0.37 - 250.0))),
    ];
    let spacing = Spacing { zyx: [2.5, 0.325, 0.65], unit: "um".into() };
    let mut cases = Vec::new();
    for (name, data) in &kinds {
        for (cname, c) in
            [("none", Compression::None), ("lzw", Compression::Lzw), ("deflate", Compression::Deflate), ("packbits", Compression::Packbits)]
        {
            for ndim in [2u8, 3] {
                let d = if ndim == 2 { plane0(data) } else { data.clone() };
                let file = dir.join(format!("{name}_{cname}_{ndim}d.tif"));
                write_tiff(&file, &d, ndim, &spacing, c).unwrap();
                cases.push(case(&file, &d, ndim, &spacing));
                if ndim == 3 {
                    // As a streamed run writes: two planes at a time.
                    let file = dir.join(format!("{name}_{cname}_slabs.tif"));
                    write_in_slabs(&file, &d, &spacing, c, 2);
                    cases.push(case(&file, &d, 3, &spacing));
                }
            }
        }
    }
    cases
}

/// Stacks of 4 MiB and more, which tessera writes past the page cache (`O_DIRECT`, in 4 MiB
/// blocks, the header's directory offset patched in at the end): label images as a run writes
/// them, whole and in slabs of 3 planes (which end inside a block), an image compressed with
/// LZW (its expected size, uncompressed, takes the direct path too), and a mask in slabs.
fn large_cases(dir: &Path) -> Vec<Case> {
    let (nz, ny, nx) = (40, 256, 300);
    let labels = Data::U16(Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| ((z / 3 * 7919 + y / 5 * 131 + x / 4) % 60_000) as u16));
    let image = Data::F32(Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| (z * 31 + y * 7 + x) as f32 * 0.25 - 100.0));
    let mask = Data::U8(Array3::from_shape_fn((nz * 2, ny, nx), |(z, y, x)| if (z + y / 3 + x / 5) % 4 == 0 { 255 } else { 0 }));
    let spacing = Spacing { zyx: [1.2, 0.4, 0.4], unit: "um".into() };
    let mut cases = Vec::new();
    for (name, d, c, slabs) in [
        ("large_labels_u16_whole", &labels, Compression::None, None),
        ("large_labels_u16_slabs", &labels, Compression::None, Some(3)),
        ("large_image_f32_lzw", &image, Compression::Lzw, None),
        ("large_mask_u8_deflate_slabs", &mask, Compression::Deflate, Some(3)),
    ] {
        let raw = d.shape().iter().product::<usize>() as u64 * d.dtype().bytes_per_voxel();
        assert!(raw >= tessera::io::DIRECT_FROM, "{name} must take the direct path");
        let file = dir.join(format!("{name}.tif"));
        match slabs {
            None => write_tiff(&file, d, 3, &spacing, c).unwrap(),
            Some(n) => write_in_slabs(&file, d, &spacing, c, n),
        }
        cases.push(case(&file, d, 3, &spacing));
    }
    cases
}

/// `d` written as a streamed run writes it: `n` planes at a time (the last slab may be shorter).
fn write_in_slabs(file: &Path, d: &Data, spacing: &Spacing, c: Compression, n: usize) {
    let nz = d.shape()[0];
    let mut w = StackWriter::create(file, d.shape(), d.dtype(), 3, spacing, c, Some(false)).unwrap();
    for z in (0..nz).step_by(n) {
        w.append(&slab(d, z, (z + n).min(nz))).unwrap();
    }
    w.finish().unwrap();
}

fn plane0(d: &Data) -> Data {
    slab(d, 0, 1)
}

fn slab(d: &Data, z0: usize, z1: usize) -> Data {
    let s = ndarray::s![z0..z1, .., ..];
    match d {
        Data::U8(a) => Data::U8(a.slice(s).to_owned()),
        Data::U16(a) => Data::U16(a.slice(s).to_owned()),
        Data::U32(a) => Data::U32(a.slice(s).to_owned()),
        Data::F32(a) => Data::F32(a.slice(s).to_owned()),
        Data::Rgb8(_) | Data::Rgb16(_) => panic!("no RGB cases"),
    }
}

/// The layout tessera wrote before: the `tiff` crate's encoder, each page's directory after
/// its pixels, with an ImageJ description saying `images=N`.
fn old_layout(dir: &Path) -> Case {
    use tiff::encoder::{TiffEncoder, colortype};
    use tiff::tags::Tag;
    let (nz, ny, nx) = (4usize, 9usize, 11usize);
    let a = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| (z * 100 + y * 11 + x) as u16);
    let file = dir.join("old_layout_u16.tif");
    let mut enc = TiffEncoder::new(std::fs::File::create(&file).unwrap()).unwrap();
    for z in 0..nz {
        let plane: Vec<u16> = a.index_axis(ndarray::Axis(0), z).iter().copied().collect();
        let mut img = enc.new_image::<colortype::Gray16>(nx as u32, ny as u32).unwrap();
        if z == 0 {
            img.encoder().write_tag(Tag::ImageDescription, "ImageJ=1.11a\nimages=4\nslices=4\nunit=pixel\nloop=false\n").unwrap();
        }
        img.write_data(&plane).unwrap();
    }
    let d = Data::U16(a);
    let mut c = case(&file, &d, 3, &Spacing { zyx: [1.0, 1.0, 1.0], unit: "pixel".into() });
    c.misread = true;
    c
}

/// Label, mask and smoothed-image outputs of real runs (in memory, tiled, streamed), checked
/// against tessera's own reading of the same files and the spacing the run recorded.
fn run_cases(dir: &Path) -> Vec<Case> {
    // A 3D image with more than 65535 objects (isolated voxels), so its labels are u32.
    let input = Array3::from_shape_fn((34, 128, 128), |(z, y, x)| if z % 2 == 0 && y % 2 == 0 && x % 2 == 0 { 200u8 } else { 10 });
    let spacing = Spacing { zyx: [1.5, 0.25, 0.25], unit: "um".into() };
    write_tiff(&dir.join("dots.tif"), &Data::U8(input), 3, &spacing, Compression::None).unwrap();
    std::fs::write(dir.join("study.csv"), "sample,image\ndots,dots.tif\n").unwrap();
    std::fs::write(
        dir.join("dots.yaml"),
        "version: 1\nname: dots\nstages:\n  smooth: {op: gaussian, input: image, sigma: 0.5}\n  mask: {op: threshold, input: image, method: fixed, value: 100}\n  \
         dots: {op: label, input: mask, connectivity: 6}\noutputs:\n  smooth: tiff\n  mask: tiff\n  dots: tiff\n",
    )
    .unwrap();
    let mut cases = Vec::new();
    let runs: [(&str, &[&str]); 3] = [("whole", &[]), ("tiled", &["--tile", "8x32x64"]), ("streamed", &["--memory", "4MiB"])];
    for (name, extra) in runs {
        let out = dir.join(format!("out_{name}"));
        let mut args = vec!["run", "--progress", "never", "--out", out.to_str().unwrap()];
        let yaml = dir.join("dots.yaml");
        let manifest = dir.join("study.csv");
        args.extend_from_slice(&[yaml.to_str().unwrap(), "--samples", manifest.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = tessera(&args);
        assert!(o.status.success(), "{name}: {}\n{}", text(&o.stdout), text(&o.stderr));
        if name == "streamed" {
            let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
            assert_eq!(run["samples"][0]["streamed"], true, "{name}: the sample must have been streamed");
        }
        for stage in ["smooth", "mask", "dots"] {
            let file = out.join("samples/dots").join(format!("{stage}.tif"));
            let img = tessera::io::read_image(&file, ReadLimits { max_bytes: u64::MAX }).unwrap();
            if stage == "dots" {
                assert!(matches!(img.data, Data::U32(_)), "more than 65535 labels are written as u32");
            }
            cases.push(case(&file, &img.data, 3, &spacing));
        }
    }
    // The bundled example: 2D and 3D samples, u16 labels and u8 masks.
    let out = dir.join("out_nuclei");
    let o = common::run_example(&out, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    for s in run["samples"].as_array().unwrap() {
        let id = s["sample"].as_str().unwrap();
        let zyx: Vec<f64> = s["spacing"]["zyx"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let sp = Spacing { zyx: [zyx[0], zyx[1], zyx[2]], unit: s["spacing"]["unit"].as_str().unwrap().into() };
        for stage in ["nuclei", "mask"] {
            let file = out.join("samples").join(id).join(format!("{stage}.tif"));
            let img = tessera::io::read_image(&file, ReadLimits { max_bytes: u64::MAX }).unwrap();
            cases.push(case(&file, &img.data, img.ndim, &sp));
        }
    }
    cases
}

const MACRO: &str = r#"
setBatchMode(true);
lines = split(File.openAsString(getArgument()), "\n");
for (i = 0; i < lines.length; i++) {
    if (lengthOf(lines[i]) == 0) continue;
    parts = split(lines[i], "\t");
    open(parts[0]);
    getVoxelSize(w, h, d, unit);
    print("FILE\t" + parts[0] + "\t" + bitDepth() + "\t" + getWidth() + "\t" + getHeight() + "\t" + nSlices + "\t" + d2s(w, 9) + "\t" + d2s(h, 9) + "\t" + d2s(d, 9) + "\t" + unit);
    saveAs("Raw Data", parts[1]);
    close();
}
print("DONE");
"#;

#[test]
fn imagej_opens_every_tiff_tessera_writes_with_its_voxels_and_calibration() {
    if !enabled() {
        return;
    }
    let jar = std::env::var("TESSERA_IMAGEJ_JAR").unwrap_or_else(|_| "/usr/share/java/ij.jar".into());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cases = library_cases(dir);
    cases.extend(large_cases(dir));
    cases.push(old_layout(dir));
    cases.extend(run_cases(dir));
    let list: String = cases.iter().enumerate().map(|(k, c)| format!("{}\t{}/raw{k}.raw\n", c.file.display(), dir.display())).collect();
    std::fs::write(dir.join("list.txt"), list).unwrap();
    std::fs::write(dir.join("check.ijm"), MACRO).unwrap();
    let o = Command::new("timeout")
        .args(["600", "xvfb-run", "-a", "java", "-Xmx1g", "-jar", &jar, "-batch"])
        .arg(dir.join("check.ijm"))
        .arg(dir.join("list.txt"))
        .output()
        .expect("run ImageJ (xvfb-run and java must be installed)");
    let out = text(&o.stdout);
    assert!(out.contains("DONE"), "ImageJ did not finish the macro:\n{out}\n{}", text(&o.stderr));
    let seen: Vec<Vec<&str>> = out.lines().filter(|l| l.starts_with("FILE\t")).map(|l| l.split('\t').collect()).collect();
    assert_eq!(seen.len(), cases.len(), "ImageJ opened {} of {} files:\n{out}", seen.len(), cases.len());
    let mut wrong = Vec::new();
    for (k, (c, s)) in cases.iter().zip(&seen).enumerate() {
        let name = c.file.strip_prefix(dir).unwrap().display().to_string();
        assert_eq!(s[1], c.file.to_str().unwrap(), "ImageJ's output is in list order");
        let num = |i: usize| s[i].trim().parse::<f64>().unwrap();
        let [nz, ny, nx] = c.shape;
        let mut problems = Vec::new();
        if (num(2) as u32, num(3) as usize, num(4) as usize, num(5) as usize) != (c.bits, nx, ny, nz) {
            problems.push(format!("bits/width/height/slices {:?} != {:?}", &s[2..6], (c.bits, nx, ny, nz)));
        }
        for (i, want) in c.size.iter().enumerate() {
            if (num(6 + i) - want).abs() > 1e-6 * want {
                problems.push(format!("voxel size {:?} != {:?}", &s[6..9], c.size));
                break;
            }
        }
        if s[9] != c.unit {
            problems.push(format!("unit {:?} != {:?}", s[9], c.unit));
        }
        // Raw data as ImageJ saves it: big-endian.
        let raw = std::fs::read(dir.join(format!("raw{k}.raw"))).unwrap();
        let got: Vec<f64> = match c.bits {
            8 => raw.iter().map(|&b| b as f64).collect(),
            16 => raw.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as f64).collect(),
            _ => raw.chunks_exact(4).map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        };
        let differ = if got.len() == c.values.len() { got.iter().zip(&c.values).filter(|(a, b)| a != b).count() } else { usize::MAX };
        if differ != 0 {
            problems.push(format!("{differ} of {} voxels differ ({} read)", c.values.len(), got.len()));
        }
        match (c.misread, problems.is_empty()) {
            (false, false) => wrong.push(format!("{name}: {}", problems.join("; "))),
            (true, true) => wrong.push(format!("{name}: the old layout read correctly, so this test cannot see the defect")),
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{} of {} files wrong in ImageJ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    eprintln!("ImageJ read {} files with every voxel and calibration right (and misread the old layout)", cases.len() - 1);
}

#[test]
fn bigtiff_is_written_past_the_classic_limit_and_reads_back() {
    // ImageJ 1.x cannot open BigTIFF (the README says what a Fiji user does); tessera's reader
    // (and tifffile in .ci/run's check) read it, uncompressed and compressed.
    let tmp = tempfile::tempdir().unwrap();
    let a = Array3::from_shape_fn((5, 7, 9), |(z, y, x)| (z * 63 + y * 9 + x) as u16);
    let sp = Spacing { zyx: [3.0, 0.5, 0.5], unit: "um".into() };
    for c in [Compression::None, Compression::Deflate] {
        let p = tmp.path().join(format!("big_{c:?}.tif"));
        write_tiff_as(&p, &Data::U16(a.clone()), 3, &sp, c, true).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..4], b"II\x2b\x00", "BigTIFF header");
        let img = tessera::io::read_image(&p, ReadLimits { max_bytes: u64::MAX }).unwrap();
        assert_eq!(img.data, Data::U16(a.clone()));
        assert_eq!(img.spacing.unwrap().zyx, sp.zyx);
    }
}
