//! Table-driven crops (pipelines/crops.yaml on testdata/crops, written by
//! testdata/make_crops.py): boxes cut exactly where PIL's `crop` cuts them, a joined photo
//! table, PNG and JPEG outputs, a broken photo failing only its rows, thousands of rows, and a
//! SIGKILLed run finishing with the same files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{root, run_samples, tessera, text};
use tessera::io::{Data, ReadLimits};

fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "pipelines/crops.yaml", "--out", out.to_str().unwrap(), "--progress", "never"];
    args.extend_from_slice(extra);
    tessera(&args)
}

fn errors(out: &Path) -> BTreeMap<String, String> {
    let t = std::fs::read_to_string(out.join("errors.csv")).unwrap_or_default();
    let mut rdr = csv::Reader::from_reader(t.as_bytes());
    rdr.records().map(|r| r.unwrap()).map(|r| (r[0].to_string(), format!("{}: {}", &r[1], &r[2]))).collect()
}

fn read(p: &Path) -> Data {
    tessera::io::read_image(p, ReadLimits { max_bytes: u64::MAX }).unwrap_or_else(|e| panic!("{}: {e}", p.display())).data
}

/// Every row's crop is the pixel box PIL's `Image.crop((xmin·w, ymin·h, xmax·w, ymax·h))` cuts
/// (its rounding: halves to even), the photo's pixels exactly; rows PIL would make empty or
/// refuse, a photo that is not in the joined table and a broken photo fail alone, each with a
/// clear error.
#[test]
fn boxes_cut_where_pil_cuts_them_and_bad_rows_fail_alone() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = run(&out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(root().join("testdata/crops/pil_boxes.json")).unwrap()).unwrap();
    let errs = errors(&out);
    let photo = |id: &str| read(&root().join(format!("testdata/crops/photo_{id}.{}", if id == "c" { "jpg" } else { "png" })));
    let photos: BTreeMap<&str, Data> = ["a", "b", "c"].iter().map(|id| (*id, photo(id))).collect();
    let (mut cut, mut failed) = (0, 0);
    for row in golden["rows"].as_array().unwrap() {
        let sample = row["sample"].as_str().unwrap();
        let crop = out.join("samples").join(sample).join("crop.png");
        if let Some(why) = row.get("error").and_then(|e| e.as_str()) {
            let e = errs.get(sample).unwrap_or_else(|| panic!("{sample} ({why}) did not fail"));
            let expected = match why {
                "no photo" => "no row of",
                "broken photo" => "broken.png",
                "empty" => "rounds to the empty range",
                _ => "is above",
            };
            assert!(e.contains(expected), "{sample} ({why}): {e}");
            assert!(!crop.exists());
            failed += 1;
            continue;
        }
        assert!(!errs.contains_key(sample), "{sample}: {:?}", errs.get(sample));
        let b: Vec<usize> = row["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let got = read(&crop);
        let src = &photos[row["photo_id"].as_str().unwrap()];
        assert_eq!(got.shape(), [1, b[3] - b[1], b[2] - b[0]], "{sample}: PIL's box {b:?}");
        let want = match src {
            Data::U8(a) => Data::U8(a.slice(ndarray::s![.., b[1]..b[3], b[0]..b[2]]).to_owned()),
            Data::Rgb8(a) => Data::Rgb8(a.slice(ndarray::s![.., b[1]..b[3], b[0]..b[2], ..]).to_owned()),
            other => panic!("{other:?}"),
        };
        assert!(got == want, "{sample}: pixels differ from the photo's box {b:?}");
        cut += 1;
    }
    assert_eq!(errs.len(), failed, "only the bad rows fail: {errs:?}");
    assert!(cut > 400 && failed == 11, "{cut} cut, {failed} failed");
    // The joined columns reach the records and the per-row metadata.
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let cols: Vec<&str> = record["manifest"]["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cols, ["photo_id", "xmin", "xmax", "ymin", "ymax", "camera", "shelf"]);
    assert_eq!(record["manifest"]["joins"][0]["on"][0], "photo_id");
}

/// `--join` from the command line: CSV or Parquet, inner or left; duplicate keys and clashing
/// columns are whole-run errors naming them.
#[test]
fn joins_from_the_command_line_parquet_left_and_their_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let photos = root().join("testdata/crops");
    // The photo table as Parquet, in another folder: its image paths are relative to it.
    let mut t = tessera::table::Table::default();
    let col = |v: &[&str]| tessera::table::Column::Str(v.iter().map(|s| s.to_string()).collect());
    t.push("photo_id", col(&["a", "b"]), None);
    t.push("image", col(&["../crops/photo_a.png", "../crops/photo_b.png"]), None);
    let pdir = dir.join("tables");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::create_dir_all(dir.join("crops")).unwrap();
    for f in ["photo_a.png", "photo_b.png"] {
        std::fs::copy(photos.join(f), dir.join("crops").join(f)).unwrap();
    }
    tessera::exec::study::write_table(&pdir.join("photos.parquet"), &t, &[]).unwrap();
    let boxes = dir.join("boxes.csv");
    std::fs::write(&boxes, "sample,photo_id,xmin,xmax,ymin,ymax\nr1,a,0.1,0.5,0.1,0.5\nr2,b,0.2,0.6,0.2,0.9\nr3,c,0.1,0.5,0.1,0.5\n")
        .unwrap();
    let go = |join: &str, out: &str| {
        let out = dir.join(out);
        let o = run(&out, &["--samples", boxes.to_str().unwrap(), "--join", join]);
        (o, out)
    };
    let pq = pdir.join("photos.parquet").display().to_string();
    let (o, out) = go(&format!("{pq}:photo_id"), "inner");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(read(&out.join("samples/r1/crop.png")).shape(), [1, 72, 96]);
    assert!(out.join("samples/r2/crop.png").exists());
    assert!(errors(&out)["r3"].contains("no row of") && errors(&out)["r3"].contains("photo_id 'c'"), "{:?}", errors(&out));
    // `merge` reads the manifest again with the joins the run recorded: the same rows.
    let m = tessera(&["merge", out.to_str().unwrap(), "--allow-missing"]);
    assert!(!text(&m.stderr).contains("changed since the run"), "{}", text(&m.stderr));
    let (_, out) = go(&format!("{pq}:photo_id:left"), "left");
    assert!(errors(&out)["r3"].contains("empty `image`"), "{:?}", errors(&out));

    std::fs::write(dir.join("dup.csv"), "photo_id,image\na,x.png\nb,y.png\na,z.png\n").unwrap();
    let (o, _) = go(&format!("{}:photo_id", dir.join("dup.csv").display()), "dup");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("repeats the key 'a'"), "{}", text(&o.stderr));
    std::fs::write(dir.join("clash.csv"), "photo_id,image,xmin\na,x.png,1\n").unwrap();
    let (o, _) = go(&format!("{}:photo_id", dir.join("clash.csv").display()), "clash");
    assert!(text(&o.stderr).contains("column `xmin` also in"), "{}", text(&o.stderr));
    let (o, _) = go(&format!("{}:shelf", dir.join("clash.csv").display()), "nokey");
    assert!(text(&o.stderr).contains("no column `shelf` to join"), "{}", text(&o.stderr));
    let o = tessera(&["run", "pipelines/crops.yaml", "--join", "photos.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("expected FILE:KEY"), "{}", text(&o.stderr));
}

/// PNG (8/16-bit, gray and RGB) and JPEG outputs; what neither holds is a clear error for the
/// sample.
#[test]
fn png_and_jpeg_outputs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.yaml");
    let img16 = d.path().join("g16.npy");
    tessera::io::write_npy(&img16, &Data::U16(ndarray::Array3::from_shape_fn((1, 20, 30), |(_, y, x)| (y * 3000 + x) as u16)), 2).unwrap();
    let manifest = d.path().join("m.csv");
    std::fs::write(
        &manifest,
        format!(
            "sample,image\nrgb,{}\ngray16,{}\nstack,{}\n",
            root().join("testdata/crops/photo_a.png").display(),
            img16.display(),
            root().join("testdata/nuclei3d.tif").display()
        ),
    )
    .unwrap();
    std::fs::write(
        &p,
        "version: 1\nname: p\njpeg_quality: 92\nstages:\n  c: {op: crop, input: image, fraction: {xmin: 0.25}}\n\
         outputs:\n  c: [png, jpeg]\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let o = run_samples(&p, &manifest, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errs = errors(&out);
    assert!(errs["gray16"].contains("JPEG holds 8-bit gray or RGB images, not u16"), "{errs:?}");
    assert!(errs["stack"].contains("holds 2D images"), "{errs:?}");
    assert_eq!(errs.len(), 2);
    let png = read(&out.join("samples/rgb/c.png"));
    let jpg = read(&out.join("samples/rgb/c.jpg"));
    assert_eq!(png.shape(), [1, 180, 180]);
    assert_eq!(jpg.shape(), [1, 180, 180]);
    let (Data::Rgb8(a), Data::Rgb8(b)) = (&png, &jpg) else { panic!("RGB expected") };
    let mean_err = a.iter().zip(b.iter()).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len() as f64;
    assert!(mean_err < 4.0, "JPEG at quality 92 is close to the PNG: mean error {mean_err}");
    // 16-bit gray as PNG, exactly.
    std::fs::write(&p, "version: 1\nname: p\nstages:\n  c: {op: crop, input: image, fraction: {xmin: 0.5}}\noutputs:\n  c: png\n").unwrap();
    std::fs::write(&manifest, format!("sample,image\ngray16,{}\n", img16.display())).unwrap();
    let o = run_samples(&p, &manifest, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let Data::U16(g) = read(&out.join("samples/gray16/c.png")) else { panic!("u16 expected") };
    assert_eq!(g[[0, 19, 14]], 19 * 3000 + 29);
    std::fs::write(&p, "version: 1\nname: p\njpeg_quality: 101\nstages:\n  c: {op: crop, input: image, fraction: {xmin: 0.5}}\n").unwrap();
    let o = tessera(&["validate", p.to_str().unwrap()]);
    assert!(text(&o.stderr).contains("`jpeg_quality` must be a whole number from 1 to 100"), "{}", text(&o.stderr));
}

/// 6,000 rows over three photos (one of them broken): every row is its own sample, the good
/// ones all cut; then runs SIGKILLed at random moments and a last run end with the same files
/// as one uninterrupted run.
#[test]
fn thousands_of_rows_and_kills_end_as_one_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let boxes = d.path().join("boxes.csv");
    let mut s = String::from("sample,photo_id,xmin,xmax,ymin,ymax\n");
    let mut next = common::xorshift(11);
    for i in 0..6000 {
        let id = ["a", "b", "c", "x"][(next() % 4) as usize];
        let x0 = (next() % 500) as f64 / 1000.0;
        let y0 = (next() % 500) as f64 / 1000.0;
        s += &format!("r{i:05},{id},{x0},{},{y0},{}\n", x0 + 0.1 + (next() % 300) as f64 / 1000.0, y0 + 0.2);
    }
    std::fs::write(&boxes, s).unwrap();
    let photos = root().join("testdata/crops/photos.csv").display().to_string();
    let join = format!("{photos}:photo_id");
    let clean = d.path().join("clean");
    let t0 = std::time::Instant::now();
    let o = run(&clean, &["--samples", boxes.to_str().unwrap(), "--join", &join]);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errs = errors(&clean);
    assert!(errs.values().all(|e| e.contains("broken.png")), "only the broken photo's rows fail");
    let good = std::fs::read_dir(clean.join("samples")).unwrap().count();
    assert_eq!(good + errs.len(), 6000);
    eprintln!("6,000 rows in {secs:.1} s");

    let killed = d.path().join("killed");
    let args: Vec<String> = [
        "run",
        "pipelines/crops.yaml",
        "--samples",
        boxes.to_str().unwrap(),
        "--join",
        &join,
        "--out",
        killed.to_str().unwrap(),
        "--progress",
        "never",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let kills = common::kill_runs(&args, 6, (secs * 1000.0) as u64, 5);
    let o = tessera(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    eprintln!("{kills} runs killed mid-way");
    common::assert_same(&clean, &killed, "after kills");
}

/// A box table is read as it runs: peak memory does not grow with its rows beyond the 24 bytes
/// per row that say where each row's record is (it grew by about 1.7 KB per row when the
/// manifest and every row's result were held; measured here 40–60 bytes, with a few MiB of
/// noise between runs, so the bound is 200), and the records still list every row — run.json
/// every sample, errors.csv every failed one; `tessera status`, `tessera report` and (after the
/// same table run as array tasks) `tessera merge` read them in bounded memory too.
#[test]
fn memory_does_not_grow_with_the_rows_of_the_table() {
    let d = tempfile::tempdir().unwrap();
    let photos = root().join("testdata/crops/photos.csv").display().to_string();
    let join = format!("{photos}:photo_id");
    let mut peaks = Vec::new();
    for n in [5_000usize, 100_000] {
        let boxes = d.path().join(format!("boxes{n}.csv"));
        let mut s = String::from("sample,photo_id,xmin,xmax,ymin,ymax\n");
        let mut next = common::xorshift(n as u64);
        let mut broken = 0;
        for i in 0..n {
            let id = ["a", "b", "c", "x"][(next() % 4) as usize];
            broken += (id == "x") as usize;
            let x0 = (next() % 500) as f64 / 1000.0;
            let y0 = (next() % 500) as f64 / 1000.0;
            s += &format!("r{i:06},{id},{x0},{},{y0},{}\n", x0 + 0.1 + (next() % 300) as f64 / 1000.0, y0 + 0.2);
        }
        std::fs::write(&boxes, s).unwrap();
        let out = d.path().join(format!("out{n}"));
        let args = ["run", "pipelines/crops.yaml", "--samples", boxes.to_str().unwrap(), "--join", &join, "--out", out.to_str().unwrap()];
        let t0 = std::time::Instant::now();
        let (code, kib) = common::tessera_peak_rss(&args);
        assert_eq!(code, Some(1), "the broken photo's rows fail");
        eprintln!("{n} rows: {:.1} s, peak {:.1} MiB", t0.elapsed().as_secs_f64(), kib as f64 / 1024.0);
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
        let samples = record["samples"].as_array().unwrap();
        assert_eq!(samples.len(), n);
        assert_eq!(record["samples_total"], n);
        assert_eq!(record["samples_failed"], broken);
        assert!(samples.iter().enumerate().all(|(i, s)| s["sample"] == format!("r{i:06}")), "run.json in table order");
        assert_eq!(errors(&out).len(), broken);
        // `tessera status` reads run.json as it prints it (it held every entry: 363 MiB for
        // 100,000 rows).
        let (code, status_kib) = common::tessera_peak_rss(&["status", out.to_str().unwrap()]);
        assert_eq!(code, Some(1), "failed samples");
        eprintln!("{n} rows: status peak {:.1} MiB", status_kib as f64 / 1024.0);
        assert!(status_kib < 64 * 1024, "status took {status_kib} KiB");
        // So does the report, which lists the failed and the first done samples of a large study.
        let (code, report_kib) = common::tessera_peak_rss(&["report", out.to_str().unwrap()]);
        assert_eq!(code, Some(0));
        eprintln!("{n} rows: report peak {:.1} MiB", report_kib as f64 / 1024.0);
        assert!(report_kib < 64 * 1024, "report took {report_kib} KiB");
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        if n > 1000 {
            assert!(
                html.contains(&format!("{n} samples: listed are the first 1000 of the {broken} failed")),
                "the report says what it lists"
            );
        }
        peaks.push(kib);
        std::fs::remove_dir_all(&out).unwrap();
        if n > 5_000 {
            // The same table as two array tasks, then `tessera merge`: it reads the task records
            // entry by entry too (386 MiB at 100,000 samples when it held them).
            let sharded = d.path().join("sharded");
            for t in ["1/2", "2/2"] {
                let mut a = args.to_vec();
                a[7] = sharded.to_str().unwrap();
                a.extend(["--task", t]);
                assert_eq!(common::tessera_peak_rss(&a).0, Some(1));
            }
            let (code, merge_kib) = common::tessera_peak_rss(&["merge", sharded.to_str().unwrap()]);
            assert_eq!(code, Some(1), "failed samples: nothing merged without --allow-missing");
            eprintln!("{n} rows: merge peak {:.1} MiB", merge_kib as f64 / 1024.0);
            assert!(merge_kib < 96 * 1024, "merge took {merge_kib} KiB");
            let merged: serde_json::Value = serde_json::from_slice(&std::fs::read(sharded.join("run.json")).unwrap()).unwrap();
            let ids: Vec<&str> = merged["samples"].as_array().unwrap().iter().map(|s| s["sample"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), n);
            assert!(ids.iter().enumerate().all(|(i, s)| *s == format!("r{i:06}")), "the study record in table order");
            assert_eq!(merged["samples_failed"], broken);
            assert_eq!(errors(&sharded).len(), broken);
        }
    }
    let per_row = (peaks[1] as f64 - peaks[0] as f64) * 1024.0 / 95_000.0;
    assert!(per_row < 200.0, "peak memory grew by {per_row:.0} bytes per row ({peaks:?} KiB)");
}
