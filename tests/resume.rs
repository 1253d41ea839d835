//! Checkpoints and resumption with real faults: re-runs that do nothing, parameter changes that
//! recompute only what depends on them, corrupted checkpoints, deleted outputs, SIGKILL at random
//! moments, two runs on one folder, and a full filesystem. Every recovered output folder must be
//! byte-identical to an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{SmallDisk, assert_same, copy_dir, files, kill_runs, root, run_example as run, run_samples, tessera, text};

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&text(&o.stdout)).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(out.join(".tessera/ckpt")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            v.push(f.path());
        }
    }
    v.sort();
    v
}

/// A fresh, uninterrupted run of the example to compare against.
fn reference(tmp: &Path) -> PathBuf {
    let r = tmp.join("reference");
    assert_eq!(run(&r, &[]).status.code(), Some(0));
    r
}

#[test]
fn rerun_does_nothing_and_a_parameter_change_recomputes_only_what_depends_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = run(&out, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json(&o)["up_to_date"], 0);
    let before = files(&out);
    let o = run(&out, &[]);
    assert!(text(&o.stdout).starts_with("3 samples up to date"), "{}", text(&o.stdout));
    let o = run(&out, &["--json"]);
    assert_eq!(json(&o)["up_to_date"], 3);
    assert!(files(&out) == before, "a no-op re-run changed the outputs");

    // min_size of `nuclei` changes: `filled` (and what it needs) comes from checkpoints.
    let text_p = std::fs::read_to_string(root().join("pipelines/nuclei.yaml")).unwrap();
    let changed = text_p.replace("min_size: 10", "min_size: 30");
    assert_ne!(changed, text_p, "the example pipeline has min_size: 10");
    let p2 = root().join("pipelines").join(format!(".resume-test-{}.yaml", std::process::id()));
    std::fs::write(&p2, &changed).unwrap();
    let o = tessera(&["run", p2.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"]);
    let fresh = tmp.path().join("fresh");
    let o2 = tessera(&["run", p2.to_str().unwrap(), "--out", fresh.to_str().unwrap(), "--progress", "never"]);
    std::fs::remove_file(&p2).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(o2.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    for s in report["samples"].as_array().unwrap() {
        assert_eq!(s["reused_stages"], serde_json::json!(["filled"]), "{s}");
        let timed: Vec<&String> = s["stage_seconds"].as_object().unwrap().keys().collect();
        assert_eq!(timed, vec!["nuclei", "shape"], "only the label and measure stages ran: {s}");
    }
    assert_same(&out, &fresh, "after a parameter change");
    // --force recomputes everything and still gives the same bytes.
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never", "--force", "--json"]);
    assert_eq!(json(&o)["up_to_date"], 0);
    assert_same(&out, &reference(tmp.path()), "after --force");
}

#[test]
fn corrupt_checkpoints_and_deleted_outputs_are_recomputed_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    assert_eq!(run(&out, &[]).status.code(), Some(0));
    let ck = checkpoints(&out);
    assert_eq!(ck.len(), 6, "filled and shape of every sample are checkpointed (mask and nuclei are their own TIFF outputs)");
    // Flip one byte in the middle of every checkpoint, truncate one, and delete label images.
    for (k, p) in ck.iter().enumerate() {
        let mut b = std::fs::read(p).unwrap();
        if k == 0 {
            b.truncate(b.len() / 2);
        } else {
            let n = b.len() / 2 + k % 7;
            b[n] ^= 0x5a;
        }
        std::fs::write(p, b).unwrap();
    }
    for s in ["nuclei2d", "neuron3d", "nuclei3d"] {
        std::fs::remove_file(out.join("samples").join(s).join("nuclei.tif")).unwrap();
    }
    // And an output altered in place: its hash no longer matches the record.
    let mask = out.join("samples/nuclei2d/mask.tif");
    let mut b = std::fs::read(&mask).unwrap();
    let n = b.len() - 10;
    b[n] ^= 1;
    std::fs::write(&mask, b).unwrap();
    let o = run(&out, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json(&o)["up_to_date"], 0);
    assert_same(&out, &reference(tmp.path()), "after corruption");
    // The damaged checkpoints were replaced by good ones: the next run has nothing to do.
    assert_eq!(json(&run(&out, &["--json"]))["up_to_date"], 3);
}

#[test]
fn sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let reference = reference(tmp.path());
    let length = (t0.elapsed().as_millis() as u64).max(20);
    let out = tmp.path().join("killed");
    let args: Vec<String> = ["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never", "--threads", "1"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let kills = kill_runs(&args, 10, length, 0x2545_f491_4f6c_dd1d);
    assert!(kills >= 3, "only {kills} runs were killed mid-way");
    let o = run(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_same(&out, &reference, "after SIGKILLs");
    // No temporary files were left where users look.
    assert!(files(&out).iter().all(|(p, _)| !p.to_string_lossy().contains(".tmp")), "temporary files left");
}

#[test]
fn two_runs_on_one_folder_at_once_finish_with_correct_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("shared");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never", "--threads", "2"])
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    assert_same(&out, &reference(tmp.path()), "two concurrent runs");
    for l in std::fs::read_dir(out.join(".tessera/locks")).unwrap() {
        assert_eq!(std::fs::metadata(l.unwrap().path()).unwrap().len(), 0, "a lock still held");
    }
}

#[test]
fn a_full_filesystem_is_a_clear_error_and_nothing_half_written_is_accepted_later() {
    let tmp = tempfile::tempdir().unwrap();
    // A 640 KiB disk: enough for some outputs and checkpoints, not all (see common::SmallDisk).
    let disk = SmallDisk::new(&tmp.path().join("small"), 640 * 1024, 640 * 1024);
    let out = tmp.path().join("small/o");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never"]).current_dir(root());
    disk.limit(&mut cmd);
    let o = common::output_within(&mut cmd, common::PATIENCE);
    assert_eq!(o.status.code(), Some(1), "stdout {}\nstderr {}", text(&o.stdout), text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap_or_default();
    let all = format!("{errors}{}", text(&o.stderr));
    assert!(all.contains(disk.full_error()), "{all}");
    // Space comes back (the outputs move to a roomy disk): the re-run completes and matches.
    let roomy = tmp.path().join("roomy");
    copy_dir(&out, &roomy);
    drop(disk);
    let o = run(&roomy, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!roomy.join("errors.csv").exists());
    assert_same(&roomy, &reference(tmp.path()), "after a full disk");
}

#[test]
fn status_shows_done_failed_and_missing_and_clean_keeps_what_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&root().join("testdata"), &data);
    std::fs::write(data.join("m.csv"), "sample,image\ngood,nuclei3d.tif\nbad,bad/truncated.tif\nalso,neuron3d.tif\n").unwrap();
    let out = tmp.path().join("o");
    let manifest = data.join("m.csv");
    let go = |pipeline: &str| run_samples(pipeline, &manifest, &out, &[]);
    assert_eq!(go("pipelines/nuclei.yaml").status.code(), Some(1));
    let o = tessera(&["status", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o.stdout);
    assert!(t.contains("3 samples: 2 done, 1 failed, 0 missing"), "{t}");
    assert!(t.contains("stage 'input'") && t.contains("truncated"), "{t}");
    let o = tessera(&["status", out.to_str().unwrap(), "--json"]);
    let j = json(&o);
    assert_eq!(j["samples"][0]["stages"]["shape"], "done");
    assert_eq!(j["samples"][1]["status"], "failed");
    // The bad file is fixed: only that sample runs.
    std::fs::copy(data.join("nuclei2d.tif"), data.join("bad/truncated.tif")).unwrap();
    let o = run_samples("pipelines/nuclei.yaml", &manifest, &out, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json(&o)["up_to_date"], 2);
    assert_eq!(tessera(&["status", out.to_str().unwrap()]).status.code(), Some(0));
    // A parameter change leaves the old checkpoints unreferenced; clean removes just those.
    let changed = root().join("pipelines").join(format!(".clean-test-{}.yaml", std::process::id()));
    std::fs::write(&changed, std::fs::read_to_string(root().join("pipelines/nuclei.yaml")).unwrap().replace("sigma: 1.0", "sigma: 1.5"))
        .unwrap();
    let o = go(changed.to_str().unwrap());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let before = checkpoints(&out).len();
    let o = tessera(&["clean", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).starts_with("removed 6 unreferenced checkpoint files"), "{}", text(&o.stdout));
    assert_eq!(checkpoints(&out).len(), before - 6);
    let o = run_samples(&changed, &manifest, &out, &["--json"]);
    std::fs::remove_file(&changed).unwrap();
    assert_eq!(json(&o)["up_to_date"], 3, "clean kept what the current run uses");
    assert!(tessera(&["clean", out.to_str().unwrap(), "--all"]).status.success());
    assert!(!out.join(".tessera").exists());
}

#[test]
fn streamed_samples_resume_from_stage_checkpoints_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["run", "testdata/stream/chain.yaml", "testdata/bone3d.tif", "testdata/nuclei3d.tif", "--progress", "never", "--out"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.push(out.to_str().unwrap().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let reference = tmp.path().join("whole");
    let o = tessera(&args(&reference, &[]));
    assert_eq!(o.status.code(), Some(0));
    // How long one streamed run takes, to kill the others within it.
    let timing = tmp.path().join("timing");
    let t0 = std::time::Instant::now();
    let o = tessera(&args(&timing, &["--memory", "150KiB", "--threads", "1"]));
    assert_eq!(o.status.code(), Some(0));
    let length = (t0.elapsed().as_millis() as u64).max(20);
    let out = tmp.path().join("streamed");
    let kills = kill_runs(&args(&out, &["--memory", "150KiB", "--threads", "1"]), 12, length, 0x9e37_79b9_7f4a_7c15);
    assert!(kills >= 3, "only {kills} runs were killed mid-way");
    let o = tessera(&args(&out, &["--memory", "150KiB", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_same(&out, &reference, "streamed, killed and resumed");
    let o = tessera(&args(&out, &["--memory", "150KiB", "--json"]));
    assert_eq!(json(&o)["up_to_date"], 2, "a finished streamed run is up to date");
    assert!(!out.join(".tessera/spill").exists(), "spill files left behind");
    // A deleted label file is rewritten from the labels' checkpoint (the spill `shape` read),
    // not recomputed, and the run says so.
    std::fs::remove_file(out.join("samples/bone3d/objects.npy")).unwrap();
    let o = tessera(&args(&out, &["--memory", "150KiB", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_same(&out, &reference, "a deleted streamed output rewritten");
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let bone = run["samples"].as_array().unwrap().iter().find(|s| s["sample"] == "bone3d").unwrap().clone();
    assert_eq!(bone["streamed"], true);
    assert_eq!(bone["reused_stages"], serde_json::json!(["objects", "shape"]), "{bone}");
    assert!(bone["stage_seconds"].get("smooth").is_none(), "nothing before the labels was recomputed: {bone}");
}

#[test]
fn verified_outputs_serve_as_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    assert_eq!(run(&out, &[]).status.code(), Some(0));
    // No checkpoint files at all: the label TIFFs (and masks) of the last run must serve.
    std::fs::remove_dir_all(out.join(".tessera/ckpt")).unwrap();
    let p = root().join("pipelines").join(format!(".outputs-test-{}.yaml", std::process::id()));
    let text_p = std::fs::read_to_string(root().join("pipelines/nuclei.yaml")).unwrap();
    std::fs::write(&p, text_p.replace("intensity: {raw: image}", "intensity: {raw: image, sm: smooth}")).unwrap();
    let o = tessera(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"]);
    let fresh = tmp.path().join("fresh");
    let o2 = tessera(&["run", p.to_str().unwrap(), "--out", fresh.to_str().unwrap(), "--progress", "never"]);
    std::fs::remove_file(&p).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(o2.status.code(), Some(0));
    assert!(text(&o.stdout).contains("(from checkpoints: nuclei)"), "{}", text(&o.stdout));
    assert_same(&out, &fresh, "labels read back from their TIFF");
}

#[test]
fn plan_out_shows_hits_and_misses_per_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let plan = || text(&tessera(&["plan", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap()]).stdout);
    assert!(plan().contains("nuclei2d  smooth miss  mask miss  filled miss  nuclei miss  shape miss"), "{}", plan());
    assert_eq!(run(&out, &[]).status.code(), Some(0));
    assert!(plan().contains("neuron3d  smooth hit  mask hit  filled hit  nuclei hit  shape hit"), "{}", plan());
    std::fs::remove_file(out.join("samples/nuclei2d/nuclei.tif")).unwrap();
    assert!(plan().contains("nuclei2d  smooth miss  mask hit  filled hit  nuclei miss  shape hit"), "{}", plan());
    // The steps the run would take: the deleted label image is recomputed from the filled mask,
    // which its TIFF output gives back; the other samples are up to date.
    assert!(plan().contains("in memory: reuse filled; whole nuclei; reuse shape"), "{}", plan());
    assert!(plan().contains("up to date: nothing to run"), "{}", plan());
}

#[test]
fn outputs_of_an_earlier_layout_are_rewritten_not_kept() {
    // A folder written before uncompressed TIFF stacks were laid out as ImageJ reads them: the
    // sample's record has no `layout` and its label TIFF has each page's directory between the
    // planes (the `tiff` crate's own encoder). A re-run must not call that sample up to date.
    use tiff::encoder::{TiffEncoder, colortype};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    assert_eq!(run(&out, &[]).status.code(), Some(0));
    let tif = out.join("samples/nuclei3d/nuclei.tif");
    let img = tessera::io::read_image(&tif, tessera::io::ReadLimits { max_bytes: u64::MAX }).unwrap();
    let tessera::io::Data::U16(a) = img.data else { panic!("u16 labels") };
    let (nz, ny, nx) = a.dim();
    let mut enc = TiffEncoder::new(std::fs::File::create(&tif).unwrap()).unwrap();
    for z in 0..nz {
        let plane: Vec<u16> = a.index_axis(ndarray::Axis(0), z).iter().copied().collect();
        let mut page = enc.new_image::<colortype::Gray16>(nx as u32, ny as u32).unwrap();
        if z == 0 {
            let desc = format!("ImageJ=1.11a\nimages={nz}\nslices={nz}\nunit=micron\nspacing=2.0\nloop=false\n");
            page.encoder().write_tag(tiff::tags::Tag::ImageDescription, desc.as_str()).unwrap();
        }
        page.write_data(&plane).unwrap();
    }
    drop(enc);
    let rec_path = out.join(".tessera/samples/nuclei3d.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(rec["layout"], 1, "records say their layout");
    rec.as_object_mut().unwrap().remove("layout");
    let fp = tessera::store::file_fingerprint(&tif).unwrap();
    rec["outputs"]["samples/nuclei3d/nuclei.tif"] = serde_json::json!(fp);
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();

    let o = run(&out, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json(&o)["up_to_date"], 2, "the other two samples are current");
    assert_same(&out, &reference(tmp.path()), "after rewriting the old layout");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(rec["layout"], 1);
}

#[test]
fn no_checkpoint_keeps_nothing_in_the_state_folder_and_writes_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = run(&out, &["--no-checkpoint"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!out.join(".tessera").exists(), "--no-checkpoint left .tessera/ behind");
    assert_same(&out, &reference(tmp.path()), "with --no-checkpoint");
}
