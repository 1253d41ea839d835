//! `tessera watch` as an acquisition drives it: scans written slowly and in pieces, sentinels,
//! a corrupt scan, a manifest that grows by rows, SIGTERM and SIGKILL mid-sample, and a
//! thousand scans arriving at once. The real binary watches real folders; outputs are compared
//! byte for byte with an uninterrupted watch and with `tessera run` on the same samples.

mod common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;

fn pipeline() -> PathBuf {
    root().join("pipelines/nuclei.yaml")
}

/// A `z × y × x` u8 volume as `.npy` bytes (a seeded wave with noise: Otsu finds objects).
fn npy(z: usize, y: usize, x: usize, seed: u64) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v.npy");
    let a = wave(z, y, x, seed).mapv(|v| v as u8);
    let ndim = if z == 1 { 2 } else { 3 };
    tessera::io::write_npy(&p, &tessera::io::Data::U8(a), ndim).unwrap();
    std::fs::read(p).unwrap()
}

/// A running watch and its JSON events.
struct Watcher {
    child: Child,
    events: Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

fn start(dir_or_manifest: &[&str], out: &Path, extra: &[&str]) -> Watcher {
    start_with(&pipeline(), dir_or_manifest, out, extra)
}

fn start_with(pipeline: &Path, dir_or_manifest: &[&str], out: &Path, extra: &[&str]) -> Watcher {
    let mut args: Vec<String> = vec!["watch".into(), pipeline.display().to_string()];
    args.extend(dir_or_manifest.iter().map(|s| s.to_string()));
    args.extend(["--out".into(), out.display().to_string(), "--json".into(), "--poll".into(), "0.05".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tessera watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    Watcher { child, events: rx, seen: Vec::new() }
}

impl Watcher {
    /// Waits for an event matching `f` (panics after `secs`), keeping every event seen.
    fn wait_for(&mut self, secs: u64, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            match self.events.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if f(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {secs} s; events: {:?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => panic!("watch ended before {what}; events: {:?}", self.seen),
            }
        }
    }

    /// Waits for the process to end; its exit code and every event.
    fn finish(mut self, secs: u64) -> (Option<i32>, Vec<serde_json::Value>) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe.
                while let Ok(v) = self.events.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(v);
                }
                return (s.code(), self.seen);
            }
            assert!(Instant::now() < end, "watch still running after {secs} s; events: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

fn finished(events: &[serde_json::Value], sample: &str) -> Vec<serde_json::Value> {
    events.iter().filter(|e| e["event"] == "finished" && e["sample"] == sample).cloned().collect()
}

/// The study's files (what a user reads): everything but run.json, report.html and watch.json
/// (timings, hosts, process ids) and the checkpoints.
fn study(out: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(out).into_iter().filter(|(p, _)| !matches!(p.to_str().unwrap(), "report.html" | "watch.json" | "run.json")).collect()
}

fn assert_same_study(a: &Path, b: &Path, what: &str) -> usize {
    let (fa, fb) = (study(a), study(b));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "{what}: different files");
    for ((p, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{what}: {} differs", p.display());
    }
    fa.len()
}

/// Writes `bytes` to `path` in `pieces`, pausing `pause` between them, as an instrument does.
fn write_slowly(path: &Path, bytes: &[u8], pieces: usize, pause: Duration) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(pieces)) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(pause);
    }
}

fn merged_samples(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

#[test]
fn partial_files_are_never_read_sentinels_gate_scans_and_modified_scans_are_redone() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (npy(24, 48, 48, 1), npy(24, 48, 48, 2));
    let mut w = start(&["--dir", dir.to_str().unwrap()], &out, &["--stable", "1.5"]);
    // A writer that pauses mid-file (for less than --stable) twice.
    write_slowly(&dir.join("a.npy"), &a, 3, Duration::from_millis(700));
    std::fs::write(dir.join("b.npy"), &b).unwrap();
    w.wait_for(30, "both samples published", |e| e["event"] == "published" && e["samples"] == 2);
    // Modified after it was processed: redone, and the study follows.
    let a2 = npy(24, 48, 48, 3);
    write_slowly(&dir.join("a.npy"), &a2, 2, Duration::from_millis(300));
    w.wait_for(30, "a redone", |e| e["event"] == "finished" && e["sample"] == "a");
    w.wait_for(30, "republished", |e| e["event"] == "published");
    w.signal(libc::SIGTERM);
    let (code, events) = w.finish(30);
    assert_eq!(code, Some(0), "SIGTERM ends a watch with 0");
    let fa = finished(&events, "a");
    assert_eq!(fa.len(), 2, "a read once complete, then once modified: {fa:?}");
    assert!(fa.iter().all(|e| e["status"] == "done"), "never read half-written: {fa:?}");
    assert_eq!(finished(&events, "b").len(), 1);
    // The outputs are those of `tessera run` on the final files.
    let runs = tmp.path().join("run");
    let o = run_samples(pipeline(), &out.join("manifest.csv"), &runs, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for f in ["tables/shape.parquet", "tables/shape.csv", "stats/shape_within_between.csv", "samples/a/nuclei.tif"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(runs.join(f)).unwrap(), "{f} differs from tessera run");
    }
    // The pipeline edited: a restart does not take the old results as they are.
    let edited = tmp.path().join("nuclei.yaml");
    let yaml = std::fs::read_to_string(pipeline()).unwrap().replace("min_size: 10", "min_size: 12");
    std::fs::write(&edited, yaml.replace("../testdata/samples.csv", &root().join("testdata/samples.csv").display().to_string())).unwrap();
    let (code, events) = start_with(&edited, &["--dir", dir.to_str().unwrap()], &out, &["--stable", "0.2", "--idle", "1"]).finish(60);
    assert_eq!(code, Some(0));
    assert_eq!((finished(&events, "a").len(), finished(&events, "b").len()), (1, 1), "both redone with the edited pipeline: {events:?}");

    // Sentinels: a complete file waits for its sentinel, however long it has been stable.
    let out2 = tmp.path().join("out2");
    let mut w = start(&["--dir", dir.to_str().unwrap(), "--pattern", "c*.npy"], &out2, &["--sentinel", ".done", "--stable", "0"]);
    std::fs::write(dir.join("c.npy"), &b).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = tessera(&["status", out2.to_str().unwrap()]);
    let st = text(&st.stdout);
    assert!(st.contains("1 pending") && st.contains("waiting for") && st.contains("c.npy.done"), "{st}");
    assert!(w.events.try_iter().all(|e| e["event"] != "finished"), "nothing runs before its sentinel");
    let js = tessera(&["status", out2.to_str().unwrap(), "--json"]);
    let js: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(js["watch"]["running"], true, "{js}");
    assert_eq!(js["watch"]["pending"][0]["sample"], "c", "{js}");
    // The folder gone for a while (an NFS server restarting): a warning, and watching goes on.
    let moved = tmp.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    w.wait_for(30, "a problem", |e| e["event"] == "problem" && e["message"].as_str().unwrap().contains("cannot list the watched folder"));
    std::fs::rename(&moved, &dir).unwrap();
    std::fs::write(dir.join("c.npy.done"), b"").unwrap();
    w.wait_for(30, "c published", |e| e["event"] == "published" && e["new"][0] == "c");
    w.signal(libc::SIGINT);
    assert_eq!(w.finish(30).0, Some(0), "SIGINT ends a watch with 0");
    assert_eq!(merged_samples(&out2), vec!["c"], "the pattern and the sentinel file itself select only c");
}

#[test]
fn a_corrupt_scan_fails_alone_and_a_growing_manifest_is_read_row_by_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = npy(16, 40, 40, 4);
    std::fs::write(dir.join("s1.npy"), &good).unwrap();
    // Truncated mid-data: a scan the instrument never finished.
    std::fs::write(dir.join("s2.npy"), &good[..good.len() / 2]).unwrap();
    let manifest = tmp.path().join("study.csv");
    let mut m = std::fs::File::create(&manifest).unwrap();
    write!(m, "sample,image,animal\ns1,in/s1.npy,m1\ns2,in/s2.npy,m1\ns3,in/s").unwrap();
    m.flush().unwrap();
    let mut w = start(&["--samples", manifest.to_str().unwrap()], &out, &["--stable", "0.3", "--idle", "2"]);
    w.wait_for(30, "s2 failed", |e| e["event"] == "finished" && e["sample"] == "s2" && e["status"] == "failed");
    // The manifest unreadable for a while (replaced by another program): a warning, then on.
    let full = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, "sample,img\n").unwrap();
    w.wait_for(30, "a problem", |e| e["event"] == "problem" && e["message"].as_str().unwrap().contains("`sample` and `image`"));
    std::fs::write(&manifest, &full).unwrap();
    // The half-written row is completed, with its image, after the failure.
    std::fs::write(dir.join("s3.npy"), npy(16, 40, 40, 5)).unwrap();
    m.write_all(b"3.npy,m2\n").unwrap();
    m.flush().unwrap();
    w.wait_for(30, "s3 published", |e| e["event"] == "published" && e["new"].as_array().unwrap().iter().any(|s| s == "s3"));
    let (code, events) = w.finish(30);
    assert_eq!(code, Some(1), "--idle ends like run: 1 when a sample failed");
    assert_eq!(finished(&events, "s1")[0]["status"], "done");
    let s2 = &finished(&events, "s2")[0];
    assert!(s2["error"].as_str().unwrap().contains("s2.npy"), "{s2}");
    assert!(events.iter().all(|e| e["sample"] != "s3" || e["event"] != "finished" || e["status"] == "done"));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.lines().count() == 2 && errors.contains("s2,input,"), "{errors}");
    // Metadata from the manifest reaches the merged table, in manifest order.
    let csv = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&head[..3], &["sample", "label", "animal"]);
    let cells: Vec<(String, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].to_string(), c[2].to_string())
        })
        .collect();
    let first_s3 = cells.iter().position(|(s, _)| s == "s3").expect("s3 has rows");
    assert!(first_s3 > 0 && cells[..first_s3].iter().all(|(s, a)| s == "s1" && a == "m1"), "s1 first, animal m1");
    assert!(cells[first_s3..].iter().all(|(s, a)| s == "s3" && a == "m2"), "then s3, animal m2");
    assert_eq!(merged_samples(&out), vec!["s1", "s2", "s3"]);
}

#[test]
fn sigterm_stops_after_the_running_samples_and_sigkill_resumes_with_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let n = 10;
    for i in 0..n {
        std::fs::write(dir.join(format!("scan_{i}.npy")), npy(128, 192, 192, 10 + i as u64)).unwrap();
        std::fs::write(dir.join(format!("scan_{i}.npy.done")), b"").unwrap();
    }
    let d = dir.to_str().unwrap();
    let args = ["--sentinel", ".done"];
    let reference = tmp.path().join("ref");
    let (code, _) = start(&["--dir", d], &reference, &[&args[..], &["--until", "10"]].concat()).finish(120);
    assert_eq!(code, Some(0));
    assert_eq!(merged_samples(&reference).len(), n);

    let out = tmp.path().join("out");
    // The interrupted watches stream every sample from disk (4.7 MB each, past --memory); the
    // reference ran them in memory: the same bytes either way.
    let args = ["--sentinel", ".done", "--memory", "3MiB"];
    // SIGTERM as soon as the first samples finished: the running ones finish, the rest wait.
    let mut w = start(&["--dir", d], &out, &args);
    w.wait_for(60, "a sample finished", |e| e["event"] == "finished");
    w.signal(libc::SIGTERM);
    let t = Instant::now();
    let (code, events) = w.finish(60);
    assert_eq!(code, Some(0));
    assert!(t.elapsed() < Duration::from_secs(30), "stopped in {:?}", t.elapsed());
    let done: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "finished").collect();
    let published = merged_samples(&out);
    assert_eq!(published.len(), done.len(), "every finished sample is published before the exit");
    assert!(published.len() < n, "SIGTERM stopped the watch before the end ({} of {n})", published.len());
    assert!(std::fs::read_to_string(out.join("watch.json")).unwrap().contains("stopped: interrupted"));

    // SIGKILL mid-sample (several times), then a restart that finishes: the same bytes.
    let mut kills = 0;
    for k in 0..3 {
        let w = start(&["--dir", d], &out, &args);
        std::thread::sleep(Duration::from_millis(120 + 60 * k));
        w.signal(libc::SIGKILL);
        let (code, _) = w.finish(30);
        kills += (code.is_none()) as usize;
    }
    assert!(kills >= 1, "at least one watch was killed");
    let before = merged_samples(&out).len();
    assert!(before < n, "the kills left work for the restart ({before} of {n} published)");
    let (code, _) = start(&["--dir", d], &out, &[&args[..], &["--until", "10"]].concat()).finish(120);
    assert_eq!(code, Some(0));
    let compared = assert_same_study(&out, &reference, "killed and resumed vs uninterrupted");
    let record = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(record.contains("\"streamed\": true") && !record.contains("\"streamed\": false"), "every sample streamed");
    assert!(compared > 3 * n, "{compared} files compared");
    // A finished watch restarted redoes nothing.
    let (code, events) = start(&["--dir", d], &out, &[&args[..], &["--idle", "0.5"]].concat()).finish(60);
    assert_eq!(code, Some(0));
    assert!(events.iter().all(|e| e["event"] != "finished"), "{events:?}");
    assert_same_study(&out, &reference, "after a restart with nothing new");
}

#[test]
fn a_thousand_scans_arriving_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 1000;
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..n {
        std::fs::write(staging.join(format!("img{i}.npy")), npy(1, 24, 24, 100 + i as u64)).unwrap();
    }
    let mut w = start(&["--dir", dir.to_str().unwrap()], &out, &["--stable", "0.5", "--idle", "2", "--no-report"]);
    // All at once: a rename each, as a copy tool that writes elsewhere first does.
    for i in 0..n {
        std::fs::rename(staging.join(format!("img{i}.npy")), dir.join(format!("img{i}.npy"))).unwrap();
    }
    w.wait_for(600, "all published", |e| e["event"] == "published" && e["samples"] == n);
    let (code, events) = w.finish(120);
    assert_eq!(code, Some(0));
    let finished = events.iter().filter(|e| e["event"] == "finished" && e["status"] == "done").count();
    assert_eq!(finished, n);
    let publications = events.iter().filter(|e| e["event"] == "published").count();
    assert!(publications <= n / 50 + 3, "a backlog is published every 50 samples, not after each: {publications}");
    // Natural order of the names, whatever the order they were processed in.
    let ids = merged_samples(&out);
    assert_eq!(ids, (0..n).map(|i| format!("img{i}")).collect::<Vec<_>>());
    let rows = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap().lines().count() - 1;
    let per_sample: usize =
        (0..n).map(|i| std::fs::read_to_string(out.join(format!("samples/img{i}/shape.csv"))).unwrap().lines().count() - 1).sum();
    assert_eq!(rows, per_sample);
}
