//! Array jobs on a real Slurm cluster and SGE cell (started by `.ci/run` with
//! ../shared/scheduler/*-up.sh, which sets TESSERA_SCHEDULERS=slurm,sge). For each: a
//! five-sample study submitted as a 3-task array with a merge job after it, waited for by
//! polling the scheduler, must equal an unsharded run byte for byte; a corrupt sample fails its
//! task, `tessera merge` names the sample and its task, and after the file is fixed
//! `tessera submit --resubmit-failed` completes the study, again equal to an unsharded run.
//! Without TESSERA_SCHEDULERS naming the scheduler, the test says so and does nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_samples, tessera, text};

fn enabled(s: &str) -> bool {
    let on = std::env::var("TESSERA_SCHEDULERS").unwrap_or_default().split(',').any(|x| x.trim() == s);
    if !on {
        eprintln!("skipped: TESSERA_SCHEDULERS does not name {s} (bash .ci/run starts a real {s} and sets it)");
    }
    on
}

fn assert_same_study(a: &Path, b: &Path, what: &str) {
    if let Some(d) = common::study_difference(a, b) {
        panic!("{what}: {d}");
    }
}

/// A study of five samples (the bundled images, two of them twice) and a manifest naming them;
/// `broken` replaces the last one by a file that is not a TIFF.
fn study_inputs(dir: &Path, broken: bool) -> PathBuf {
    let r = common::root().join("testdata");
    let img = dir.join("extra.tif");
    if broken {
        std::fs::write(&img, b"II*\0 not a TIFF at all").unwrap();
    } else {
        std::fs::copy(r.join("nuclei2d.tif"), &img).unwrap();
    }
    let m = dir.join("samples.csv");
    std::fs::write(
        &m,
        format!(
            "sample,image,source,dims\nnuclei2d,{r}/nuclei2d.tif,real,2d\nneuron3d,{r}/neuron3d.tif,real,3d\nnuclei3d,{r}/nuclei3d.tif,synthetic,3d\nnuclei3d_b,{r}/nuclei3d.tif,synthetic,3d\nextra,{i},real,2d\n",
            r = r.display(),
            i = img.display()
        ),
    )
    .unwrap();
    m
}

fn reference(dir: &Path, manifest: &Path) -> PathBuf {
    let out = dir.join("reference");
    let _ = std::fs::remove_dir_all(&out);
    let o = run_samples("pipelines/nuclei.yaml", manifest, &out, &[]);
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{}", text(&o.stderr));
    out
}

fn submit(args: &[&str]) -> serde_json::Value {
    let o = tessera(args);
    assert_eq!(o.status.code(), Some(0), "submit: {}{}", text(&o.stdout), text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `tessera submit` of the nuclei pipeline over `manifest` as a 3-task array into `out`.
fn submit_study(scheduler: &str, manifest: &Path, out: &Path) -> serde_json::Value {
    submit(&[
        "submit",
        "pipelines/nuclei.yaml",
        "--scheduler",
        scheduler,
        "--tasks",
        "3",
        "--samples",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ])
}

/// Polls until none of the jobs is known to the scheduler any more. Only the scheduler's own
/// "no such job" answers count as gone: a busy controller's transient error means "ask again".
fn wait_for(scheduler: &str, jobs: &[String]) {
    let t0 = Instant::now();
    loop {
        let busy = match scheduler {
            "slurm" => {
                let o = Command::new("squeue").args(["-h", "-o", "%i %T", "-j", &jobs.join(",")]).output().unwrap();
                let err = String::from_utf8_lossy(&o.stderr);
                // Every job done and purged: "Invalid job id specified" (exit 1).
                !(o.status.success() && String::from_utf8_lossy(&o.stdout).trim().is_empty() || err.contains("Invalid job id"))
            }
            _ => jobs.iter().any(|j| {
                let o = Command::new("qstat").args(["-j", j]).output().unwrap();
                let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                o.status.success() || !said.contains("do not exist")
            }),
        };
        if !busy {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "jobs {jobs:?} still in {scheduler} after 300 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut j: Vec<String> = v["array_jobs"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    if let Some(m) = v["merge_job"].as_str() {
        j.push(m.to_string());
    }
    j
}

fn round_trip(scheduler: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 1. A good study: the merged array job equals the unsharded run.
    let manifest = study_inputs(dir, false);
    let want = reference(dir, &manifest);
    let out = dir.join("sharded");
    let sub = submit_study(scheduler, &manifest, &out);
    assert_eq!(sub["shards"], serde_json::json!([1, 2, 3]));
    wait_for(scheduler, &ids(&sub));
    for k in 1..=3 {
        assert!(out.join(format!("tasks/task-{k}-of-3.json")).is_file(), "task {k} left no record");
    }
    assert!(
        out.join("tables/shape.parquet").is_file(),
        "the merge job did not run: {:?}",
        std::fs::read_dir(out.join("jobs/logs")).map(|d| d.count())
    );
    assert_same_study(&out, &want, &format!("{scheduler}: merged 3-task array vs unsharded run"));
    let status = tessera(&["status", out.to_str().unwrap()]);
    assert!(text(&status.stdout).contains("5 done"), "{}", text(&status.stdout));

    // 2. A corrupt sample fails its task; merge names it and the task; resubmission completes.
    let dir2 = dir.join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let manifest = study_inputs(&dir2, true);
    let out = dir2.join("sharded");
    let sub = submit_study(scheduler, &manifest, &out);
    wait_for(scheduler, &ids(&sub));
    let m = tessera(&["merge", out.to_str().unwrap(), "--json"]);
    assert_eq!(m.status.code(), Some(1), "{}", text(&m.stdout));
    let r: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    // `extra` is sample 5 (index 4): shard 4 mod 3 + 1 = 2.
    assert_eq!(r["not_done"][0]["sample"], "extra");
    assert_eq!(r["not_done"][0]["status"], "failed");
    assert_eq!(r["not_done"][0]["task"], 2);
    assert_eq!(r["tasks_to_rerun"], serde_json::json!([2]));
    assert!(!out.join("tables/shape.parquet").exists(), "merge wrote tables with a sample failed");
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.contains("extra,input,") && errors.contains("(task 2)"), "{errors}");
    // Fix the file, resubmit only the failed shard.
    study_inputs(&dir2, false);
    let sub = submit(&["submit", "--resubmit-failed", out.to_str().unwrap(), "--json"]);
    assert_eq!(sub["shards"], serde_json::json!([2]));
    wait_for(scheduler, &ids(&sub));
    let want = reference(&dir2, &manifest);
    assert_same_study(&out, &want, &format!("{scheduler}: resubmitted study vs unsharded run"));
    let again = tessera(&["submit", "--resubmit-failed", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again.stdout).contains("nothing to resubmit"), "{}", text(&again.stdout));
}

#[test]
fn slurm_array_job_equals_the_unsharded_run() {
    if enabled("slurm") {
        round_trip("slurm");
    }
}

#[test]
fn sge_array_job_equals_the_unsharded_run() {
    if enabled("sge") {
        round_trip("sge");
    }
}

/// The bone-lacunae analysis (distance and territories included) on the bundled scan split into
/// 4 z-blocks: a chain of phase arrays, the final array and the merge on the real scheduler
/// equal the one-machine run byte for byte. Then again with one block task made to fail (its
/// part file's place taken by a folder): `tessera status` shows the phase and the block,
/// `submit --resubmit-failed` runs that task alone and the phases after it, and the study
/// equals the one-machine run.
fn split_round_trip(scheduler: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let manifest = dir.join("bone.csv");
    std::fs::write(&manifest, format!("sample,image\nbone3d,{}/testdata/bone3d.tif\n", common::root().display())).unwrap();
    let want = dir.join("one-machine");
    let o = run_samples("pipelines/bone-lacunae-scan.yaml", &manifest, &want, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let submit_split = |out: &Path| {
        submit(&[
            "submit",
            "pipelines/bone-lacunae-scan.yaml",
            "--scheduler",
            scheduler,
            "--split",
            "4",
            "--samples",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
    };
    // 1. Every phase as an array job: the same bytes as one machine.
    let out = dir.join("split");
    let sub = submit_split(&out);
    // Fourteen phases (eight of 4 block tasks), the final array, the merge.
    assert_eq!(sub["array_jobs"].as_array().unwrap().len(), 15, "{sub}");
    wait_for(scheduler, &ids(&sub));
    assert_same_study(&out, &want, &format!("{scheduler}: split into 4 blocks vs one machine"));
    let st = text(&tessera(&["status", out.to_str().unwrap()]).stdout);
    assert!(
        st.contains("phase 5 of 14 (per block: smooth, bone, pores, clean, lacunae (partial), canals (partial)): 4 of 4 blocks done"),
        "{st}"
    );
    assert!(st.contains("1 done"), "{st}");

    // 2. Block 3's task of phase 1 fails; resubmitting runs it alone, then the later phases.
    let out = dir.join("failing");
    // The checkpoint key of stage 'bone' names the folder its blocks' histograms go to: the
    // same in any output folder, so a local run of phase 1 shows it.
    let probe = dir.join("probe");
    let o = run_samples("pipelines/bone-lacunae-scan.yaml", &manifest, &probe, &["--split", "4", "--phase", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let key = std::fs::read_dir(probe.join(".tessera/split/bone3d"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("partial0-0-of-4.bin").is_file())
        .unwrap()
        .file_name();
    let blocker = out.join(".tessera/split/bone3d").join(&key).join("partial0-2-of-4.bin");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let sub = submit_split(&out);
    wait_for(scheduler, &ids(&sub));
    let st = tessera(&["status", out.to_str().unwrap()]);
    let st = text(&st.stdout);
    assert!(st.contains("phase 1 of 14 (per block: smooth, bone (partial 1/2)): 3 of 4 blocks done, 1 failed  ← running or next"), "{st}");
    assert!(st.contains("bone3d (block 3 of 4): bone:"), "{st}");
    assert!(!out.join("tables/shape.parquet").exists());
    std::fs::remove_dir_all(&blocker).unwrap();
    let sub = submit(&["submit", "--resubmit-failed", out.to_str().unwrap(), "--json"]);
    // Phase 1's task 3 alone (SGE: one job), phases 2 to 14, the final array, the merge.
    assert_eq!(sub["array_jobs"].as_array().unwrap().len(), 15, "{sub}");
    let first = std::fs::read_to_string(sub["scripts"][0].as_str().unwrap()).unwrap();
    assert!(first.contains("--phase 1") && (first.contains("--array=3\n") || first.contains("--task 3/4")), "{first}");
    wait_for(scheduler, &ids(&sub));
    assert_same_study(&out, &want, &format!("{scheduler}: split with a block resubmitted vs one machine"));
}

#[test]
fn slurm_split_volume_equals_one_machine() {
    if enabled("slurm") {
        split_round_trip("slurm");
    }
}

#[test]
fn sge_split_volume_equals_one_machine() {
    if enabled("sge") {
        split_round_trip("sge");
    }
}

#[test]
fn task_flags_outside_an_array_and_submit_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    // --task auto with no array variables: exit 2, nothing written.
    let o = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--task", "auto"])
            .current_dir(common::root())
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SGE_TASK_ID")
            .env_remove("PBS_ARRAYID")
            .env_remove("PBS_ARRAY_INDEX")
            .env_remove("LSB_JOBINDEX"),
        common::PATIENCE,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not inside an array job"), "{}", text(&o.stderr));
    // --task auto inside a (simulated) SGE array task 2 of 2; then --task 1/2; merge equals a whole run.
    let o = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--task", "auto", "--progress", "never"])
            .current_dir(common::root())
            .env("SGE_TASK_ID", "2")
            .env("SGE_TASK_FIRST", "1")
            .env("SGE_TASK_LAST", "2")
            .env("SGE_TASK_STEPSIZE", "1"),
        common::PATIENCE,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(out.join("tasks/task-2-of-2.json").is_file() && !out.join("tables").exists());
    assert!(out.join("samples/neuron3d").is_dir() && !out.join("samples/nuclei2d").exists(), "shard 2 of 2 owns sample index 1 only");
    let m = tessera(&["merge", out.to_str().unwrap()]);
    assert_eq!(m.status.code(), Some(1));
    assert!(text(&m.stdout).contains("task 1/2"), "{}", text(&m.stdout));
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--task", "1/2", "--progress", "never"]);
    assert_eq!(o.status.code(), Some(0));
    let m = tessera(&["merge", out.to_str().unwrap()]);
    assert_eq!(m.status.code(), Some(0), "{}", text(&m.stdout));
    let whole = tmp.path().join("whole");
    assert_eq!(common::run_example(&whole, &[]).status.code(), Some(0));
    assert_same_study(&out, &whole, "--task 1/2 + --task 2/2 + merge vs one run");
    let st = tessera(&["status", out.to_str().unwrap()]);
    assert!(text(&st.stdout).contains("3 done"), "{}", text(&st.stdout));
    // Bad --task values and submissions.
    for (args, msg) in [
        (vec!["run", "pipelines/nuclei.yaml", "--task", "3/2"], "numbered 1 to 2"),
        (vec!["run", "pipelines/nuclei.yaml", "--task", "0/2"], "numbered 1 to 2"),
        (vec!["submit", "pipelines/nuclei.yaml", "--scheduler", "slurm", "--tasks", "0"], "0 is not in 1.."),
        (vec!["submit", "pipelines/nuclei.yaml", "--scheduler", "slurm", "--tasks", "4", "--dry-run"], "more than the 3 samples"),
        (vec!["submit", "pipelines/nuclei.yaml", "--tasks", "2"], "--scheduler"),
    ] {
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(text(&o.stderr).contains(msg), "{args:?}: {}", text(&o.stderr));
    }
    // A dry run writes the scripts and submits nothing, whether or not a scheduler is installed.
    let d = tmp.path().join("dry");
    let o = tessera(&[
        "submit",
        "pipelines/nuclei.yaml",
        "--scheduler",
        "sge",
        "--tasks",
        "2",
        "--out",
        d.to_str().unwrap(),
        "--dry-run",
        "--",
        "-q",
        "all.q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let array = std::fs::read_to_string(d.join("jobs/array.sh")).unwrap();
    assert!(array.contains("#$ -t 1-2") && array.contains("--task auto"), "{array}");
    assert!(text(&o.stdout).contains("qsub -terse -hold_jid '<array job id>' -q all.q"), "{}", text(&o.stdout));
}
