//! Memory limits as batch systems set them: runs inside a real memory cgroup (what Slurm's
//! `--mem` and a container's `--memory` make), which kills a process that passes its limit
//! with no message. tessera must read the limit, keep samples in flight within it, stream what
//! does not fit, and fail with a message — never be killed. The cgroup tests need root and a
//! writable memory controller (v1 or v2), as on the development and CI machines; where there
//! is none they say so and do nothing else.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{assert_same, root, tessera, text, wave};
use tessera::io::{Compression, Data, Spacing, write_tiff};

const PIPELINE: &str = "version: 1
name: limits
stages:
  smooth:  {op: gaussian, input: image, sigma: 1.0}
  mask:    {op: threshold, input: smooth, method: otsu}
  objects: {op: label, input: mask, connectivity: 26}
  shape:   {op: measure, labels: objects, intensity: {raw: image}}
outputs:
  objects: tiff
  shape: csv
";

/// A child of this process's memory cgroup with a limit, removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// `None` (with the reason printed) where no memory cgroup can be made here.
    fn new(limit: u64, name: &str) -> Option<Cgroup> {
        for g in tessera::io::memory_cgroups(&|p: &Path| std::fs::read_to_string(p).ok()) {
            let dir = g.dir().join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir(&dir);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join(g.limit_file()), limit.to_string()).is_ok() {
                if g.v2 {
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                return Some(Cgroup { dir });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        eprintln!("SKIPPED: no writable memory cgroup here (needs root and a memory controller)");
        None
    }

    /// Runs tessera inside the cgroup (a shell moves itself in, then becomes tessera).
    fn tessera(&self, args: &[String]) -> Output {
        let exe = env!("CARGO_BIN_EXE_tessera");
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("echo $$ > '{}/cgroup.procs' && exec '{exe}' {}", self.dir.display(), quoted.join(" "));
        Command::new("sh").args(["-c", &script]).current_dir(root()).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its processes have ended; retried briefly while the kernel lets go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Writes `n` volumes of `shape` and a manifest naming them; returns pipeline and manifest.
fn study(dir: &Path, shape: (usize, usize, usize), n: usize) -> (PathBuf, PathBuf) {
    let spacing = Spacing { zyx: [1.0, 1.0, 1.0], unit: "um".into() };
    let mut manifest = String::from("sample,image\n");
    for i in 0..n {
        let a = wave(shape.0, shape.1, shape.2, 40 + i as u64).mapv(|v| v as u8);
        write_tiff(&dir.join(format!("v{i}.tif")), &Data::U8(a), 3, &spacing, Compression::None).unwrap();
        manifest.push_str(&format!("v{i},v{i}.tif\n"));
    }
    let (p, m) = (dir.join("limits.yaml"), dir.join("study.csv"));
    std::fs::write(&p, PIPELINE).unwrap();
    std::fs::write(&m, manifest).unwrap();
    (p, m)
}

fn args(p: &Path, m: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into(), p.display().to_string(), "--samples".into(), m.display().to_string()];
    v.extend(["--out", out.to_str().unwrap(), "--progress", "never", "--json"].map(String::from));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// What tessera estimates one sample of the study needs in memory.
fn need(p: &Path, m: &Path) -> u64 {
    let (spec, _) = tessera::spec::load(p);
    let (plan, d) = tessera::plan::compile(spec.unwrap(), None, None);
    assert!(d.is_empty(), "{d:?}");
    let manifest = tessera::spec::manifest::Manifest::open(m, &[]).unwrap();
    let row = manifest.first_good().unwrap().clone();
    tessera::exec::sample_bytes(&plan.unwrap(), &row, &manifest).unwrap()
}

/// Per sample of the run in `out` (run.json, manifest order): whether it was streamed.
fn streamed(out: &Path) -> Vec<bool> {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    j["samples"].as_array().unwrap().iter().map(|s| s["streamed"] == true).collect()
}

#[test]
fn inside_a_job_memory_limit_samples_are_admitted_together_only_while_they_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, m) = study(tmp.path(), (64, 512, 512), 4);
    let n = need(&p, &m);
    let reference = tmp.path().join("reference");
    let o = tessera(&args(&p, &m, &reference, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // A limit where each sample fits the default budget (3/4 of it) alone, and two at once do
    // not: with 2 threads, samples must take turns, in memory. (The process itself takes about
    // 48 MiB before any sample.)
    let limit = n * 27 / 20 + (48 << 20);
    let Some(cg) = Cgroup::new(limit, "tessera-admit") else { return };
    let out = tmp.path().join("limited");
    let o = cg.tessera(&args(&p, &m, &out, &["--threads", "2"]));
    assert_eq!(o.status.code(), Some(0), "killed or failed inside a {limit}-byte cgroup (need {n} a sample): {}", text(&o.stderr));
    assert_eq!(streamed(&out), vec![false; 4], "each sample fits alone: none streams");
    assert_same(&out, &reference, "inside the cgroup");
}

#[test]
fn inside_a_job_memory_limit_a_sample_larger_than_it_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, m) = study(tmp.path(), (128, 512, 512), 1);
    let n = need(&p, &m);
    let reference = tmp.path().join("reference");
    let o = tessera(&args(&p, &m, &reference, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The whole working set is twice the limit; without reading the limit the default budget
    // is 3/4 of RAM and the sample would run in memory and be killed.
    let limit = n / 2 + (64 << 20);
    let Some(cg) = Cgroup::new(limit, "tessera-stream") else { return };
    let out = tmp.path().join("limited");
    let o = cg.tessera(&args(&p, &m, &out, &[]));
    assert_eq!(o.status.code(), Some(0), "killed or failed inside a {limit}-byte cgroup (need {n}): {}", text(&o.stderr));
    assert_eq!(streamed(&out), vec![true], "the sample streams");
    assert_same(&out, &reference, "streamed inside the cgroup");
}

#[test]
fn a_memory_budget_past_the_limit_and_a_sample_that_cannot_stream_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, m) = study(tmp.path(), (8, 64, 64), 1);
    let Some(cg) = Cgroup::new(256 << 20, "tessera-flag") else { return };
    // --memory above the cgroup's limit: refused before anything runs (exit 2).
    let o = cg.tessera(&args(&p, &m, &tmp.path().join("flag"), &["--memory", "1GiB"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("--memory 1.0 GiB is more than this process may use: 256.0 MiB") && err.contains("cgroup"), "{err}");
    // A 2D image (2D images are not streamed) whose working set is past the budget: the sample
    // fails with what it needs, and the process is not killed.
    let plane = wave(1, 6000, 6000, 3).mapv(|v| v as u8);
    let spacing = Spacing { zyx: [1.0, 1.0, 1.0], unit: "um".into() };
    write_tiff(&tmp.path().join("big2d.tif"), &Data::U8(plane), 2, &spacing, Compression::None).unwrap();
    let p2 = tmp.path().join("flat.yaml");
    std::fs::write(&p2, PIPELINE.replace("connectivity: 26", "connectivity: 8")).unwrap();
    let out = tmp.path().join("big2d");
    let o = cg.tessera(&[
        "run".into(),
        p2.display().to_string(),
        tmp.path().join("big2d.tif").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--progress".into(),
        "never".into(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.contains("in memory, more than --memory 192.0 MiB, and cannot be streamed"), "{errors}");
}

#[test]
fn the_memory_limit_is_the_smallest_of_ram_cgroups_along_the_path_and_ulimit() {
    use tessera::io::memory_limit_from;
    let files = |extra: &'static [(&'static str, &'static str)]| {
        move |p: &Path| -> Option<String> {
            let base: &[(&str, &str)] = &[
                ("/proc/meminfo", "MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
                ("/proc/self/cgroup", "4:memory:/jobs/job7/step0\n0::/\n"),
                (
                    "/proc/self/mountinfo",
                    "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                     31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
                ),
            ];
            base.iter().chain(extra).find(|(k, _)| Path::new(k) == p).map(|(_, v)| v.to_string())
        }
    };
    let ram = memory_limit_from(&files(&[]), None);
    assert_eq!((ram.bytes, ram.what.as_str()), (24576000 * 1024, "RAM"));
    // A job's limit two levels up; its step's "no limit" (v1's huge number) does not count.
    let job = memory_limit_from(
        &files(&[
            ("/sys/fs/cgroup/memory/jobs/job7/memory.limit_in_bytes", "4294967296\n"),
            ("/sys/fs/cgroup/memory/jobs/job7/step0/memory.limit_in_bytes", "9223372036854771712\n"),
        ]),
        None,
    );
    assert_eq!(job.bytes, 4 << 30);
    assert!(job.what.contains("cgroup") && job.what.contains("job7"), "{}", job.what);
    // v2 ("max" is no limit) and ulimit -v, the smaller wins.
    let v2 = |p: &Path| -> Option<String> {
        match p.to_str()? {
            "/proc/meminfo" => Some("MemTotal: 8000000 kB\n".into()),
            "/proc/self/cgroup" => Some("0::/user.slice/app\n".into()),
            "/proc/self/mountinfo" => Some("28 1 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n".into()),
            "/sys/fs/cgroup/user.slice/app/memory.max" => Some("max\n".into()),
            "/sys/fs/cgroup/user.slice/memory.max" => Some("1073741824\n".into()),
            _ => None,
        }
    };
    assert_eq!(memory_limit_from(&v2, None).bytes, 1 << 30);
    let u = memory_limit_from(&v2, Some(512 << 20));
    assert_eq!((u.bytes, u.what.as_str()), (512 << 20, "ulimit -v"));
    // Nothing readable: 4 GiB, said as assumed.
    assert_eq!(memory_limit_from(&|_| None, None).bytes, 4 << 30);
}
