//! Chaos on whole studies: a study that mixes samples run in memory, samples streamed from disk
//! and samples that fail, killed with SIGKILL at 20 random moments and re-run, must end with
//! the bytes of an uninterrupted run; so must two runs working on one folder at once while
//! both are killed again and again. Run with `--nocapture` to see the figures the README
//! quotes (kills survived, files compared).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SmallDisk, assert_same, copy_dir, files, root, tessera, text, wave, xorshift};
use tessera::io::{Compression, Data, Spacing, write_tiff};

const PIPELINE: &str = "version: 1
name: chaos
stages:
  smooth:  {op: gaussian, input: image, sigma: 1.0}
  mask:    {op: threshold, input: smooth, method: otsu}
  clean:   {op: opening, input: mask, radius: 1}
  objects: {op: label, input: clean, connectivity: 26}
  shape:   {op: measure, labels: objects, intensity: {raw: image}}
outputs:
  objects: tiff
  shape: [parquet, csv]
stats:
  table: shape
  by: group
";

/// The memory budget of every run: the small samples fit it, the large ones are streamed.
const MEMORY: &str = "1MiB";

/// Writes the study: 16 small volumes (in memory), 4 large ones (streamed at [`MEMORY`]) and 4
/// that fail (a truncated TIFF, a file that is not an image, a missing file, a 2D image that
/// 26-connectivity cannot label). Returns the pipeline and the manifest.
fn study(dir: &Path) -> (PathBuf, PathBuf) {
    let img = dir.join("images");
    std::fs::create_dir_all(&img).unwrap();
    let spacing = Spacing { zyx: [2.0, 0.5, 0.5], unit: "um".into() };
    let mut manifest = String::from("sample,image,group\n");
    let mut add = |id: &str, file: &str, group: &str| manifest.push_str(&format!("{id},images/{file},{group}\n"));
    for i in 0..20 {
        let (shape, id) = if i < 16 { ((10, 40, 40), format!("small{i:02}")) } else { ((48, 96, 96), format!("large{i:02}")) };
        let a = wave(shape.0, shape.1, shape.2, 1000 + i as u64).mapv(|v| v as u8);
        write_tiff(&img.join(format!("{id}.tif")), &Data::U8(a), 3, &spacing, Compression::None).unwrap();
        add(&id, &format!("{id}.tif"), ["a", "b", "c"][i % 3]);
    }
    let good = std::fs::read(img.join("small00.tif")).unwrap();
    std::fs::write(img.join("truncated.tif"), &good[..good.len() / 3]).unwrap();
    add("truncated", "truncated.tif", "a");
    std::fs::write(img.join("notimage.tif"), b"this is a text file, not a TIFF\n").unwrap();
    add("notimage", "notimage.tif", "b");
    add("missing", "missing.tif", "c");
    let flat = wave(1, 40, 40, 7).mapv(|v| v as u8);
    write_tiff(&img.join("flat.tif"), &Data::U8(flat), 2, &spacing, Compression::None).unwrap();
    add("flat", "flat.tif", "a");
    let m = dir.join("study.csv");
    std::fs::write(&m, manifest).unwrap();
    let p = dir.join("chaos.yaml");
    std::fs::write(&p, PIPELINE).unwrap();
    (p, m)
}

fn args(pipeline: &Path, manifest: &Path, out: &Path) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into(), pipeline.display().to_string(), "--samples".into(), manifest.display().to_string()];
    v.extend(["--out", out.to_str().unwrap(), "--memory", MEMORY, "--threads", "2", "--progress", "never"].map(String::from));
    v
}

fn spawn(args: &[String], force: bool) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .args(if force { &["--force"][..] } else { &[][..] })
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The uninterrupted run, which fails for the 4 bad samples (exit 1) and streams the large
/// ones; returns how long it took.
fn reference(pipeline: &Path, manifest: &Path, out: &Path) -> Duration {
    let t0 = Instant::now();
    let o = tessera(&args(pipeline, manifest, out));
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let samples = run["samples"].as_array().unwrap();
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| samples.iter().filter(|s| f(s)).count();
    assert_eq!(count(&|s| s["status"] == "failed"), 4, "{run}");
    assert_eq!(count(&|s| s["status"] == "done" && s["streamed"] == true), 4, "the large samples stream: {run}");
    assert_eq!(count(&|s| s["status"] == "done" && s["streamed"] == false), 16, "the small ones do not: {run}");
    took
}

/// The end of a run after kills: completes with the reference's exit code and bytes, and
/// leaves no temporary file, spill or held lock.
fn finish_and_compare(pipeline: &Path, manifest: &Path, out: &Path, reference: &Path, what: &str) -> usize {
    let o = tessera(&args(pipeline, manifest, out));
    assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o.stderr));
    assert_same(out, reference, what);
    let all = files(out);
    assert!(all.iter().all(|(p, _)| !p.to_string_lossy().contains(".tmp")), "{what}: temporary files left");
    assert!(!out.join(".tessera/spill").exists(), "{what}: spill files left");
    for l in std::fs::read_dir(out.join(".tessera/locks")).unwrap() {
        assert_eq!(std::fs::metadata(l.unwrap().path()).unwrap().len(), 0, "{what}: a lock still held");
    }
    all.len()
}

#[test]
fn a_mixed_study_killed_at_20_random_moments_ends_with_the_uninterrupted_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (pipeline, manifest) = study(tmp.path());
    let whole = tmp.path().join("whole");
    let length = reference(&pipeline, &manifest, &whole).as_millis() as u64;
    let out = tmp.path().join("killed");
    let mut next = xorshift(0x5eed_c4a0_5001);
    let (mut kills, mut attempts) = (0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(attempts <= 80, "only {kills} of {attempts} runs were killed mid-way (a run takes {length} ms)");
        // Every other run starts over (--force), so that late runs still have work to lose.
        let mut child = spawn(&args(&pipeline, &manifest, &out), attempts % 2 == 0);
        std::thread::sleep(Duration::from_millis(5 + next() % (length * 2 / 3).max(20)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let compared = finish_and_compare(&pipeline, &manifest, &out, &whole, "after 20 SIGKILLs");
    eprintln!("chaos: {kills} kills survived in {attempts} runs; {compared} files compared byte for byte");
}

#[test]
fn two_runs_on_one_folder_killed_again_and_again_end_with_the_uninterrupted_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (pipeline, manifest) = study(tmp.path());
    let whole = tmp.path().join("whole");
    let length = reference(&pipeline, &manifest, &whole).as_millis() as u64;
    let out = tmp.path().join("shared");
    let a = args(&pipeline, &manifest, &out);
    let mut next = xorshift(0xc0c0_2222);
    let mut kills = 0;
    for round in 0..12 {
        // One starts over (--force) and one resumes; each is killed at its own moment, and now
        // and then one of them is left to finish.
        let mut pair = [spawn(&a, true), spawn(&a, false)];
        let when = [5 + next() % (length * 2 / 3).max(20), 5 + next() % (length * 2 / 3).max(20)];
        let t0 = Instant::now();
        for (k, child) in pair.iter_mut().enumerate() {
            if round % 5 == 4 && k == 1 {
                continue;
            }
            let at = Duration::from_millis(when[k]);
            std::thread::sleep(at.saturating_sub(t0.elapsed()));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
        }
        for child in &mut pair {
            child.wait().unwrap();
        }
    }
    assert!(kills >= 12, "only {kills} runs were killed mid-way (a run takes {length} ms)");
    // Then two runs at once to the end: both see the same finished folder.
    let (x, y) = (spawn(&a, false), spawn(&a, false));
    let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
    assert_eq!((x.status.code(), y.status.code()), (Some(1), Some(1)), "both end with the failed samples' exit code");
    let compared = finish_and_compare(&pipeline, &manifest, &out, &whole, "two runs at once under SIGKILL");
    eprintln!("chaos: two runs at once, {kills} kills survived; {compared} files compared byte for byte");
}

#[test]
fn a_mixed_study_that_fills_its_disk_fails_clearly_and_a_later_run_trusts_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (pipeline, manifest) = study(tmp.path());
    let whole = tmp.path().join("whole");
    reference(&pipeline, &manifest, &whole);
    let total: usize = files(&whole).iter().map(|(_, b)| b.len()).sum();
    // A disk with room for about half of the outputs (see common::SmallDisk).
    let size = total / 2;
    let disk = SmallDisk::new(&tmp.path().join("small"), size, (total / 8) as u64);
    let out = tmp.path().join("small/o");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args(&pipeline, &manifest, &out)).current_dir(root());
    disk.limit(&mut cmd);
    let o = common::output_within(&mut cmd, common::PATIENCE);
    assert_eq!(o.status.code(), Some(1), "stderr {}", text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap_or_default();
    let all = format!("{errors}{}", text(&o.stderr));
    assert!(all.contains(disk.full_error()), "{all}");
    // Space comes back (the folder moves to a roomy disk): the re-run completes the study with
    // the uninterrupted run's bytes, whatever the full disk left half written.
    let roomy = tmp.path().join("roomy");
    copy_dir(&out, &roomy);
    drop(disk);
    let compared = finish_and_compare(&pipeline, &manifest, &roomy, &whole, "after a full disk");
    eprintln!("chaos: a full disk at {size} bytes (of {total}): {compared} files compared byte for byte after the re-run");
}
