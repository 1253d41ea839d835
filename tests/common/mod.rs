//! Helpers shared by the integration tests: the real binary, output folders compared byte for
//! byte, pipelines compiled from text, and a seeded generator. Each test file uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the tessera binary in the crate folder; a run that has not ended after 10 minutes (none
/// of the tests' takes one) is killed and fails the test, naming it, instead of hanging the
/// suite.
pub fn tessera<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    tessera_within(args, PATIENCE)
}

/// [`tessera`], killed and failing after `limit` instead.
pub fn tessera_within<S: AsRef<std::ffi::OsStr>>(args: &[S], limit: Duration) -> Output {
    output_within(Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(root()), limit)
}

/// How long a test waits for one tessera run before it kills it and fails.
pub const PATIENCE: Duration = Duration::from_secs(600);

/// `cmd`'s output, like [`Command::output`], but killed (and the test failed, with what it
/// printed so far) if it has not ended within `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the program");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = std::time::Instant::now();
    let mut nap = Duration::from_micros(500);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the program") {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!("{cmd:?} had not ended after {limit:?}: killed. It printed:\n{}", text(&err));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `tessera run pipelines/nuclei.yaml --out OUT --progress never EXTRA…`.
pub fn run_example(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never"];
    args.extend_from_slice(extra);
    tessera(&args)
}

/// `tessera run PIPELINE --samples MANIFEST --out OUT --progress never EXTRA…`.
pub fn run_samples(pipeline: impl AsRef<Path>, manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    run_samples_within(pipeline, manifest, out, extra, PATIENCE)
}

/// [`run_samples`], killed and failing after `limit`.
pub fn run_samples_within(pipeline: impl AsRef<Path>, manifest: &Path, out: &Path, extra: &[&str], limit: Duration) -> Output {
    let pipeline = pipeline.as_ref();
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--samples",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--progress",
        "never",
    ];
    args.extend_from_slice(extra);
    tessera_within(&args, limit)
}

/// The first difference between two output folders' studies ([`files`] without the job
/// scripts and task records): a file one has and the other not, or different bytes.
pub fn study_difference(a: &Path, b: &Path) -> Option<String> {
    let study = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        files(d).into_iter().filter(|(p, _)| !p.starts_with("jobs") && !p.starts_with("tasks")).collect()
    };
    let (fa, fb) = (study(a), study(b));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>();
    if names(&fa) != names(&fb) {
        return Some(format!("different files: {:?} vs {:?}", names(&fa), names(&fb)));
    }
    fa.iter().zip(&fb).find(|((_, x), (_, y))| x != y).map(|((p, _), _)| format!("{} differs", p.display()))
}

/// A smooth wave plus seeded noise in [0, 255] (`z × y × x`): the test volumes of the
/// streamed and split property tests, before each picks its voxel type.
pub fn wave(z: usize, y: usize, x: usize, seed: u64) -> ndarray::Array3<f64> {
    let mut next = xorshift(seed);
    ndarray::Array3::from_shape_fn((z, y, x), |(a, b, c)| {
        let wave = ((a as f64 * 1.1).sin() + (b as f64 * 0.8).cos() + (c as f64 * 0.6).sin()) * 55.0 + 128.0;
        (wave + (next() % 70) as f64 - 35.0).clamp(0.0, 255.0)
    })
}

/// Every file under `dir` except run.json and the checkpoint folder .tessera/ (internal state,
/// SPEC §4), relative path → bytes.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != ".tessera" {
                    stack.push(p);
                }
            } else if p.file_name().unwrap() != "run.json" {
                v.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    v.sort();
    v
}

/// The same files with the same bytes in both folders ([`files`]).
pub fn assert_same(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files(a), files(b));
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "{what}: different files");
    for ((p, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{what}: {} differs", p.display());
    }
}

/// A pipeline compiled from YAML text (panics on any diagnostic).
pub fn compile(yaml: &str) -> tessera::plan::Plan {
    let (spec, d) = tessera::spec::parse_str(Path::new("t.yaml"), yaml.to_string());
    assert!(d.is_empty(), "{yaml}\n{d:?}");
    let (plan, d) = tessera::plan::compile(spec.expect("parsed"), None, None);
    assert!(d.is_empty(), "{yaml}\n{d:?}");
    plan.expect("compiled")
}

/// A seeded xorshift64 generator (the seed is made odd, so never zero).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Starts `attempts` runs of tessera with `args` (every other one with `--force`, so that runs
/// after a finished one still have work), and SIGKILLs each at a seeded moment within the first
/// half of `length_ms` unless it ended. Returns how many were killed mid-way.
pub fn kill_runs(args: &[String], attempts: usize, length_ms: u64, seed: u64) -> usize {
    let mut next = xorshift(seed);
    let mut kills = 0;
    for attempt in 0..attempts {
        let delay = Duration::from_millis(2 + next() % (length_ms / 2 + 1));
        let force: &[&str] = if attempt % 2 == 0 { &["--force"] } else { &[] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(force)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    kills
}

/// A pipeline built from registry ops: a prelude gives a mask `m0` (Otsu on the image) and labels
/// `l0`; then each step `(op index in REGISTRY, example index)` runs that op's example with
/// `{image}`, `{mask}`, `{labels}` replaced by the latest stage of that kind, and `{table}` by
/// `t0`, a `measure` of `l0` added when first needed. Every voxel stage is
/// written as `.npy` and every table as Parquet. `None` when a step's example needs nothing of
/// that kind, or the pipeline does not compile.
pub fn registry_chain(steps: &[(usize, usize)]) -> Option<String> {
    use tessera::ops::{Kind, REGISTRY};
    let mut y = String::from(
        "version: 1\nname: chain\nstages:\n  m0: {op: threshold, input: image, method: otsu}\n  l0: {op: label, input: m0, connectivity: 26}\n",
    );
    let mut latest = vec![(Kind::Image, "image".to_string()), (Kind::Mask, "m0".to_string()), (Kind::Labels, "l0".to_string())];
    let mut kinds = vec![("m0".to_string(), Kind::Mask), ("l0".to_string(), Kind::Labels)];
    for (k, &(op, ex)) in steps.iter().enumerate() {
        let info = REGISTRY[op % REGISTRY.len()];
        let mut body = info.examples[ex % info.examples.len()].to_string();
        if body.contains("{table}") {
            if !kinds.iter().any(|(id, _)| id == "t0") {
                y += "  t0: {op: measure, labels: l0}\n";
                kinds.push(("t0".to_string(), Kind::Table));
            }
            body = body.replace("{table}", "t0");
        }
        let mut first: Option<(usize, Kind)> = None;
        for (kind, stage) in &latest {
            let ph = format!("{{{}}}", kind.name());
            if let Some(at) = body.find(&ph) {
                first = Some(match first {
                    Some((p, fk)) if p < at => (p, fk),
                    _ => (at, *kind),
                });
                body = body.replace(&ph, stage);
            }
        }
        let out = if info.same_kind { first.map(|(_, k)| k).unwrap_or(info.output) } else { info.output };
        let id = format!("s{k}");
        y += &format!("  {id}: {{op: {}, {body}}}\n", info.name);
        kinds.push((id.clone(), out));
        if out != Kind::Table {
            latest.iter_mut().filter(|(k, _)| *k == out).for_each(|(_, s)| *s = id.clone());
        }
    }
    y += "outputs:\n";
    for (id, kind) in &kinds {
        y += &format!("  {id}: {}\n", if *kind == Kind::Table { "parquet" } else { "npy" });
    }
    let (spec, d) = tessera::spec::parse_str(Path::new("chain.yaml"), y.clone());
    if !d.is_empty() {
        return None;
    }
    let (plan, d) = tessera::plan::compile(spec?, None, None);
    plan.filter(|_| d.is_empty()).map(|_| y)
}

/// Runs the tessera binary (output discarded) and returns its exit code and its own peak
/// resident memory in KiB: the largest `VmHWM` of /proc/PID/status read every 5 ms while it
/// runs (growth in its last few milliseconds may be missed). Not `wait4`'s `ru_maxrss`: after a
/// vfork and exec that includes the peak of this test process, which other tests share.
pub fn tessera_peak_rss<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tessera");
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kib) =
                text.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(st) = child.try_wait().expect("wait for tessera") {
            return (st.code(), peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copies the folder `from` to `to`, recursively (files and folders only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() { copy_dir(&p, &dst) } else { std::fs::copy(&p, &dst).map(|_| ()).unwrap() }
    }
}

/// A disk with room for `size` bytes, at `dir`: a tmpfs when this process may mount one (root,
/// as in CI). Elsewhere commands prepared by [`SmallDisk::limit`] have each file they write held
/// to `per_file` bytes by RLIMIT_FSIZE, so that writes past it fail (EFBIG). Unmounted on drop.
pub struct SmallDisk {
    dir: PathBuf,
    mounted: bool,
    per_file: u64,
}

impl SmallDisk {
    pub fn new(dir: &Path, size: usize, per_file: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        SmallDisk { dir: dir.to_path_buf(), mounted, per_file }
    }

    /// Holds `cmd`'s files to the per-file size when no tmpfs could be mounted.
    pub fn limit(&self, cmd: &mut Command) {
        if self.mounted {
            return;
        }
        use std::os::unix::process::CommandExt;
        let lim = self.per_file;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit { rlim_cur: lim, rlim_max: lim };
                libc::setrlimit(libc::RLIMIT_FSIZE, &r);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }

    /// What a write past the room says.
    pub fn full_error(&self) -> &'static str {
        if self.mounted { "No space left on device" } else { "File too large" }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}
