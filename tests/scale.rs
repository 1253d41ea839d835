//! A study at the size users run: thousands of tiny samples through the real binary. A run of
//! 800 samples once aborted with a stack overflow while every test used 8; this one runs
//! 5,000, re-runs it (nothing to do), and kills a run in the middle of such a study and checks
//! that the re-run ends with the same bytes as the uninterrupted one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same, root, tessera, text, xorshift};

const SAMPLES: usize = 5000;

/// Writes `n` distinct tiny 2D images (20×24 u8: a few bright blobs on a noisy background,
/// seeded) and a manifest `sample,image,group` naming them; returns the manifest.
fn tiny_study(dir: &Path, n: usize) -> PathBuf {
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let mut next = xorshift(15);
    let mut manifest = String::from("sample,image,group\n");
    let spacing = tessera::io::Spacing { zyx: [1.0, 0.5, 0.5], unit: "um".into() };
    for i in 0..n {
        let mut a = ndarray::Array3::<u8>::from_shape_fn((1, 20, 24), |_| (next() % 40) as u8);
        for _ in 0..1 + next() % 3 {
            let (cy, cx, r) = (3 + next() % 14, 3 + next() % 18, 2 + next() % 2);
            for y in cy - r..=cy + r {
                for x in cx - r..=cx + r {
                    a[[0, y as usize, x as usize]] = 200;
                }
            }
        }
        let name = format!("s{i:05}.tif");
        tessera::io::write_tiff(&img_dir.join(&name), &tessera::io::Data::U8(a), 2, &spacing, tessera::io::Compression::None).unwrap();
        manifest.push_str(&format!("s{i:05},images/{name},g{}\n", i % 7));
    }
    let m = dir.join("study.csv");
    std::fs::write(&m, manifest).unwrap();
    m
}

fn run_args(manifest: &Path, out: &Path) -> Vec<String> {
    ["run", "pipelines/nuclei.yaml", "--samples", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"]
        .map(String::from)
        .to_vec()
}

/// Sample records in `out` (`<id>.json`, not the temporary files they are written through).
/// While a run writes them a directory listing may see a record twice or miss one (a rename
/// during the listing), so callers leave a margin.
fn finished_records(out: &Path) -> usize {
    std::fs::read_dir(out.join(".tessera").join("samples"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        .unwrap_or(0)
}

#[test]
fn a_study_of_thousands_of_samples_finishes_reruns_as_nothing_and_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tiny_study(tmp.path(), SAMPLES);

    // The whole study, then the same command again.
    let out = tmp.path().join("out");
    let mut args = run_args(&manifest, &out);
    args.push("--json".into());
    let t = Instant::now();
    let o = tessera(&args);
    let first = t.elapsed();
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["samples"], SAMPLES, "{v}");
    assert_eq!(v["done"], SAMPLES, "{v}");
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(!out.join("errors.csv").exists());
    assert_eq!(std::fs::read_dir(out.join("samples")).unwrap().count(), SAMPLES);
    let csv = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    let sampled: std::collections::BTreeSet<&str> = csv.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
    assert_eq!(sampled.len(), SAMPLES, "every sample has objects in the merged table");
    let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["samples"].as_array().map(Vec::len), Some(SAMPLES));

    let o = tessera(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["up_to_date"], SAMPLES, "a second run does nothing: {v}");

    // A run killed after a few hundred samples are finished, then run again to the end.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(run_args(&manifest, &killed))
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + first * 3 + Duration::from_secs(30);
    // A margin over the tenth that the check below needs (see `finished_records`).
    while finished_records(&killed) < SAMPLES / 10 + 20 && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = finished_records(&killed);
    assert!((SAMPLES / 10..SAMPLES).contains(&at_kill), "killed after {at_kill} samples");
    let o = tessera(&run_args(&manifest, &killed));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("{SAMPLES} of {SAMPLES} samples done")), "{}", text(&o.stdout));
    assert_same(&out, &killed, "a study killed after {at_kill} samples and re-run");
}
