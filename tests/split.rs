//! A sample split into z-blocks over tasks (`tessera run --split N`) gives the same bytes as a
//! run on one machine: pipelines drawn from the op registry (every op, random chains), any
//! number of blocks, phases run in any grouping of tasks, blocks missing and run again.

mod common;

use std::path::{Path, PathBuf};

use common::{tessera, text};
use ndarray::Array3;
use proptest::prelude::*;
use tessera::io::{Compression, Data, Spacing};

/// The study in `out` equals the one in `want` file for file, byte for byte.
fn same(want: &Path, out: &Path, what: &str) -> Result<(), String> {
    common::study_difference(want, out).map_or(Ok(()), |d| Err(format!("{what}: {d}")))
}

fn run(args: &[&str]) -> Result<(), String> {
    let o = tessera(args);
    if o.status.code() != Some(0) {
        return Err(format!("tessera {}: exit {:?}\n{}{}", args.join(" "), o.status.code(), text(&o.stdout), text(&o.stderr)));
    }
    Ok(())
}

/// Runs `pipeline` on `image` on one machine and split into `blocks` (every phase here), and
/// compares the outputs. `memory` (bytes) makes both stream from disk in slabs.
fn check(pipeline: &Path, image: &Path, blocks: usize, memory: Option<&str>, dir: &Path) -> Result<(), String> {
    let whole = dir.join("whole");
    let split = dir.join(format!("split{blocks}"));
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&split);
    let mut base = vec!["run", pipeline.to_str().unwrap(), image.to_str().unwrap(), "--progress", "never"];
    if let Some(m) = memory {
        base.extend(["--memory", m]);
    }
    let w = whole.to_str().unwrap();
    let a = tessera(&[base.clone(), vec!["--out", w]].concat());
    let n = blocks.to_string();
    let b = tessera(&[base, vec!["--out", split.to_str().unwrap(), "--split", &n]].concat());
    match (a.status.code(), b.status.code()) {
        (Some(0), Some(0)) => same(&whole, &split, &format!("--split {blocks}")),
        // A sample that fails on one machine (an op refusing this volume) fails split too.
        (Some(1), Some(1)) => Ok(()),
        (x, y) => Err(format!("exit {x:?} on one machine, {y:?} split into {blocks}:\n{}\n{}", text(&a.stderr), text(&b.stderr))),
    }
}

/// Whether each phase of `pipeline` split into `blocks` runs per block, from `tessera plan`.
fn phase_kinds(pipeline: &str, blocks: usize) -> Vec<bool> {
    let o = tessera(&["plan", pipeline, "--split", &blocks.to_string()]);
    let t = text(&o.stdout);
    let kinds: Vec<bool> = t.lines().filter(|l| l.trim_start().starts_with("phase ")).map(|l| l.contains("(per block)")).collect();
    assert!(t.contains(&format!("{} phases, then the final run", kinds.len())), "{t}");
    kinds
}

fn volume(z: usize, y: usize, x: usize, dt: u8, seed: u64) -> Data {
    let base = common::wave(z, y, x, seed);
    match dt {
        0 => Data::U8(base.mapv(|v| v as u8)),
        1 => Data::U16(base.mapv(|v| (v * 7.0) as u16)),
        _ => Data::F32(base.mapv(|v| v as f32 * 0.25 + 0.1)),
    }
}

fn write(dir: &Path, yaml: &str, img: &Data) -> (PathBuf, PathBuf) {
    let p = dir.join("p.yaml");
    // Files the examples name (a classify model) are in the repository's testdata/.
    let root = format!("{}/testdata/", common::root().display());
    std::fs::write(&p, yaml.replace("testdata/", &root)).unwrap();
    let src = dir.join("v.tif");
    tessera::io::write_tiff(&src, img, 3, &Spacing { zyx: [2.0, 0.5, 0.75], unit: "um".into() }, Compression::Lzw).unwrap();
    (p, src)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random chains of registry ops: split into 1 to 5 blocks equals one machine.
    #[test]
    fn split_registry_chains_equal_one_machine(
        steps in prop::collection::vec((0usize..64, 0usize..8), 1..5),
        dims in (5usize..12, 3usize..10, 3usize..10),
        dt in 0u8..3,
        seed in any::<u64>(),
        blocks in 1usize..6,
    ) {
        let Some(yaml) = common::registry_chain(&steps) else { return Ok(()) };
        let dir = tempfile::tempdir().unwrap();
        let (p, src) = write(dir.path(), &yaml, &volume(dims.0, dims.1, dims.2, dt, seed));
        check(&p, &src, blocks, None, dir.path()).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
    }
}

/// Every registry op with every one of its examples runs split (3 blocks) with the bytes of one
/// machine, on each voxel type.
#[test]
fn every_registry_op_runs_split() {
    use tessera::ops::REGISTRY;
    let dir = tempfile::tempdir().unwrap();
    for (op, info) in REGISTRY.iter().enumerate() {
        for ex in 0..info.examples.len() {
            let yaml = common::registry_chain(&[(op, ex)]).unwrap();
            for dt in 0..3 {
                let (p, src) = write(dir.path(), &yaml, &volume(9, 11, 12, dt, 7));
                check(&p, &src, 3, None, dir.path()).unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", info.name));
            }
        }
    }
}

/// The bone-lacunae analysis on the bundled scan (distance and territories included), split
/// into 1, 2, 4 and 7 blocks, in memory and streamed in slabs within the blocks.
#[test]
fn bone_lacunae_split_equals_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::root().join("pipelines/bone-lacunae-scan.yaml");
    let img = common::root().join("testdata/bone3d.tif");
    for blocks in [1, 2, 4, 7] {
        check(&p, &img, blocks, None, dir.path()).unwrap();
    }
    // A budget far below the scan: every stage streams in slabs, inside every block too.
    check(&p, &img, 4, Some("2MiB"), dir.path()).unwrap();
}

/// Phases run one at a time as array tasks would: a block whose task did not run stops the
/// next phase with a message naming it; running that task alone then finishes the job with
/// the same bytes. A leftover half-written file of a killed task is ignored.
#[test]
fn a_missing_block_is_named_and_run_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::root().join("pipelines/bone-lacunae-scan.yaml");
    let img = common::root().join("testdata/bone3d.tif");
    let whole = dir.path().join("whole");
    run(&["run", p.to_str().unwrap(), img.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--progress", "never"]).unwrap();
    let out = dir.path().join("split");
    let o = out.to_str().unwrap();
    let base = ["run", p.to_str().unwrap(), img.to_str().unwrap(), "--out", o, "--split", "4", "--progress", "never"];
    let phase = |k: &str, task: &str| tessera(&[&base[..], &["--phase", k, "--task", task]].concat());
    // Phase 1 is per block: 4 units over 2 tasks; only task 1 (blocks 1 and 3) runs.
    assert_eq!(phase("1", "1/2").status.code(), Some(0));
    // A killed writer's leftover.
    let part_dir = std::fs::read_dir(out.join(".tessera/split/bone3d")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    std::fs::write(part_dir.join("part-1-of-4.spill.tmp999999"), b"half").unwrap();
    let o2 = phase("2", "1/1");
    assert_eq!(o2.status.code(), Some(1), "{}", text(&o2.stderr));
    let e = text(&o2.stderr);
    assert!(e.contains("bone: the partial results of blocks 2, 4 of 4 are missing: their block tasks failed or have not run"), "{e}");
    let status = tessera(&["status", o]);
    let st = text(&status.stdout);
    let kinds = phase_kinds(p.to_str().unwrap(), 4);
    assert!(st.contains(&format!("phase 1 of {}", kinds.len())) && st.contains("2 of 4 blocks done  ← running or next"), "{st}");
    assert_eq!(phase("1", "2/2").status.code(), Some(0));
    for k in 2..=kinds.len() {
        let tasks = if kinds[k - 1] { 3 } else { 1 };
        for t in 1..=tasks {
            let o = phase(&k.to_string(), &format!("{t}/{tasks}"));
            assert_eq!(o.status.code(), Some(0), "phase {k}: {}", text(&o.stderr));
        }
    }
    let fin = phase("final", "1/1");
    assert_eq!(fin.status.code(), Some(0), "{}", text(&fin.stderr));
    run(&["merge", o]).unwrap();
    same(&whole, &out, "phases run as tasks").unwrap();
}

/// `tessera plan --split N` lists the phases; a volume with fewer planes than blocks is cut into
/// a block per plane, with the same bytes.
#[test]
fn phases_are_listed_and_more_blocks_than_planes_work() {
    let p = common::root().join("pipelines/bone-lacunae-scan.yaml");
    let o = tessera(&["plan", p.to_str().unwrap(), "--split", "4"]);
    let s = text(&o.stdout);
    assert!(s.contains("phase 1 (per block): smooth, bone (partial 1/2)"), "{s}");
    // 'smooth' is computed again where it is read rather than stored.
    assert!(s.contains("phase 3 (per block): smooth, bone (partial 2/2)"), "{s}");
    assert!(s.contains("phase 5 (per block): smooth, bone, pores, clean, lacunae (partial), canals (partial)"), "{s}");
    assert!(s.contains("phase 6 (per sample): lacunae (reduce), canals (reduce)"), "{s}");
    assert!(s.contains("phase 8 (per sample): join the blocks' values   [1 task a sample]"), "{s}");
    // The separable transforms: planes per block, every plane of pieces of rows across the
    // blocks, then gathered back per block.
    assert!(s.contains("phase 9 (per block): smooth, bone, territory (partial), to_canal (partial)   [4 tasks a sample]"), "{s}");
    assert!(s.contains("phase 10 (per block): territory (across blocks), to_canal (across blocks)   [4 tasks a sample]"), "{s}");
    assert!(s.contains("phase 11 (per block): territory (apply), to_canal (apply)"), "{s}");
    assert!(s.contains("phase 13 (per block): shape (partial)"), "{s}");
    assert!(s.contains("phase 14 (per sample): shape (reduce)   [1 task a sample]"), "{s}");
    assert!(!s.contains("no per-block form"), "{s}");
    let dir = tempfile::tempdir().unwrap();
    check(&p, &common::root().join("testdata/bone3d.tif"), 70, None, dir.path()).unwrap();
}

/// A block phase killed (SIGKILL) mid-way, then the whole split run again: the same bytes as
/// one machine; what the killed process left half-written is never taken.
#[test]
fn a_killed_phase_runs_again_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::root().join("pipelines/bone-lacunae-scan.yaml");
    // A scan large enough for phase 1 to take a while: the bundled one, tiled 4×4 in the plane.
    let img = tessera::io::read_image(&common::root().join("testdata/bone3d.tif"), Default::default()).unwrap();
    let Data::U8(a) = img.data else { panic!("bone3d is u8") };
    let (nz, ny, nx) = a.dim();
    let big = Array3::from_shape_fn((nz, ny * 4, nx * 4), |(z, y, x)| a[[z, y % ny, x % nx]]);
    let src = dir.path().join("scan.tif");
    let sp = Spacing { zyx: [0.7, 0.7, 0.7], unit: "um".into() };
    tessera::io::write_tiff(&src, &Data::U8(big), 3, &sp, Compression::None).unwrap();
    let whole = dir.path().join("whole");
    run(&["run", p.to_str().unwrap(), src.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--progress", "never"]).unwrap();
    let out = dir.path().join("split");
    let o = out.to_str().unwrap();
    let mut killed = 0;
    for delay in [150u64, 400, 900] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", p.to_str().unwrap(), src.to_str().unwrap(), "--out", o, "--split", "4", "--progress", "never"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let st = child.wait().unwrap();
        killed += usize::from(st.code().is_none());
    }
    assert!(killed >= 1, "no run was killed mid-way: the test saw nothing");
    run(&["run", p.to_str().unwrap(), src.to_str().unwrap(), "--out", o, "--split", "4", "--progress", "never"]).unwrap();
    same(&whole, &out, "killed and run again").unwrap();
}

/// Mistakes with --split and --phase are clear errors (exit 2), before anything runs.
#[test]
fn phase_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let p = "pipelines/bone-lacunae-scan.yaml";
    let img = "testdata/bone3d.tif";
    for (args, msg) in [
        (
            vec!["run", p, img, "--out", o, "--split", "4", "--phase", "16"],
            "runs in 14 phases (then `--phase final`); there is no phase 16",
        ),
        (vec!["run", p, img, "--out", o, "--split", "4", "--phase", "0"], "'0' is not a phase"),
        (vec!["run", p, img, "--out", o, "--split", "4", "--task", "1/2"], "--task runs one phase: give --phase K or --phase final"),
        (vec!["run", p, img, "--out", o, "--phase", "1"], "--split"),
        (vec!["run", p, img, "--out", o, "--split", "0"], "0 is not in 1.."),
        (vec!["run", p, img, "--out", o, "--split", "2", "--no-checkpoint"], "cannot be used with"),
    ] {
        let r = tessera(&args);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", text(&r.stderr));
        assert!(text(&r.stderr).contains(msg), "{args:?}: {}", text(&r.stderr));
    }
    assert!(!out.join("samples").exists(), "nothing ran");
}

/// A study of two samples cut from one scan by `${z0}`/`${z1}` (a crop, which runs whole, first),
/// split into 3 blocks, every phase run as 4 array tasks over the study's units, the final run
/// as 2 tasks and a merge: the same bytes as one machine, merged tables and statistics too.
#[test]
fn a_study_split_over_tasks_and_merged_equals_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let p = "pipelines/bone-lacunae.yaml";
    let whole = dir.path().join("whole");
    run(&["run", p, "--out", whole.to_str().unwrap(), "--progress", "never"]).unwrap();
    let out = dir.path().join("split");
    let o = out.to_str().unwrap();
    let plan = text(&tessera(&["plan", p, "--split", "3"]).stdout);
    assert!(plan.contains("phase 1 (per sample): roi (whole)"), "{plan}");
    for k in 1..=phase_kinds(p, 3).len() {
        for t in 1..=4 {
            let task = format!("{t}/4");
            let r = tessera(&["run", p, "--out", o, "--split", "3", "--phase", &k.to_string(), "--task", &task, "--progress", "never"]);
            assert_eq!(r.status.code(), Some(0), "phase {k} task {task}: {}", text(&r.stderr));
        }
    }
    for t in ["1/2", "2/2"] {
        let r = tessera(&["run", p, "--out", o, "--split", "3", "--phase", "final", "--task", t, "--progress", "never"]);
        assert_eq!(r.status.code(), Some(0), "final {t}: {}", text(&r.stderr));
    }
    run(&["merge", o]).unwrap();
    same(&whole, &out, "a study in 3 blocks, 4 tasks a phase").unwrap();
}

/// `tessera clean` during a split run keeps every checkpoint (no record references them yet);
/// after the final run it removes the split files, and a run again is up to date.
#[test]
fn clean_keeps_an_unfinished_split_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::root().join("pipelines/bone-lacunae-scan.yaml");
    let img = common::root().join("testdata/bone3d.tif");
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let base = ["run", p.to_str().unwrap(), img.to_str().unwrap(), "--out", o, "--split", "2", "--progress", "never"];
    let last = phase_kinds(p.to_str().unwrap(), 2).len();
    for k in 1..last {
        let r = tessera(&[&base[..], &["--phase", &k.to_string()]].concat());
        assert_eq!(r.status.code(), Some(0), "phase {k}: {}", text(&r.stderr));
    }
    let ckpt = |out: &Path| common::files(&out.join(".tessera/ckpt")).len();
    let before = ckpt(&out);
    assert!(before > 0);
    let c = tessera(&["clean", o]);
    assert!(text(&c.stdout).contains("1 sample of a split run is not finished: every checkpoint kept"), "{}", text(&c.stdout));
    assert_eq!(ckpt(&out), before, "clean removed checkpoints an unfinished split run needs");
    for k in [last.to_string().as_str(), "final"] {
        let r = tessera(&[&base[..], &["--phase", k]].concat());
        assert_eq!(r.status.code(), Some(0), "phase {k}: {}", text(&r.stderr));
    }
    let c = tessera(&["clean", o]);
    assert!(text(&c.stdout).contains("removed the split-run files of finished samples"), "{}", text(&c.stdout));
    assert!(!out.join(".tessera/split/bone3d").exists());
    let again = tessera(&[&base[..], &["--phase", "final"]].concat());
    assert!(text(&again.stdout).contains("up to date"), "{}", text(&again.stdout));
}
