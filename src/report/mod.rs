//! What a run tells its user: progress on stderr, `run.json` provenance and `errors.csv`.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::exec::{RunConfig, RunSummary, SampleResult, Status};
use crate::plan::Plan;
use crate::spec::manifest::Manifest;

/// When to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// A bar even when stderr is not a terminal.
    Always,
    /// Nothing but errors.
    Never,
}

/// Progress reporting: an indicatif bar on a terminal; plain one-line-per-sample messages
/// (no carriage returns) in logs, as array jobs write them.
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    total: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = match mode {
            ProgressMode::Always => true,
            ProgressMode::Auto => tty,
            ProgressMode::Never => false,
        };
        let pb = bar.then(|| {
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        });
        Progress { bar: pb, lines: mode != ProgressMode::Never && !bar, total: 0.into() }
    }
    pub fn start(&self, n: usize) {
        self.total.store(n, std::sync::atomic::Ordering::SeqCst);
        if let Some(b) = &self.bar {
            b.set_length(n as u64);
        }
    }
    pub fn sample(&self, k: usize, r: &SampleResult, secs: f64) {
        let n = self.total.load(std::sync::atomic::Ordering::SeqCst);
        let line = match r.status {
            Status::Done => format!("[{k}/{n}] {} done in {secs:.2} s", r.sample),
            Status::Failed => format!(
                "[{k}/{n}] {} FAILED at stage '{}': {}",
                r.sample,
                r.failed_stage.as_deref().unwrap_or("?"),
                r.error.as_deref().unwrap_or("")
            ),
            Status::Skipped => format!("[{k}/{n}] {} skipped", r.sample),
        };
        if let Some(b) = &self.bar {
            if r.status != Status::Done {
                b.println(&line);
            }
            b.set_message(r.sample.clone());
            b.inc(1);
        } else if self.lines || r.status == Status::Failed {
            eprintln!("tessera: {line}");
        }
    }
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A path as an absolute one where it exists (so `tessera merge` finds it from any folder).
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// The provenance record of a run (SPEC §4).
pub fn run_json(plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &RunSummary) -> serde_json::Value {
    serde_json::json!({
        "tessera": {"version": env!("CARGO_PKG_VERSION"), "git_commit": option_env!("TESSERA_GIT_COMMIT").unwrap_or("unknown")},
        "pipeline": {
            "name": plan.spec.name,
            "file": absolute(&plan.spec.file),
            "hash": plan.hash,
            "text": plan.spec.text,
        },
        "manifest": {
            "file": manifest.path.as_ref().map(|p| absolute(p)),
            "hash": manifest.hash(),
            "columns": manifest.columns,
        },
        "finished_unix": unix_now(),
        "seconds": summary.seconds,
        "threads": cfg.threads,
        "tile": cfg.tile.to_string(),
        "memory_budget_bytes": cfg.memory,
        "host": crate::util::hostname(),
        "samples_total": summary.samples.len(),
        "samples_failed": summary.failed(),
        "samples": summary.samples.iter().map(|s| serde_json::json!({
            "sample": s.sample,
            "image": s.image.display().to_string(),
            "input_hashes": s.input_hashes,
            "status": s.status,
            "failed_stage": s.failed_stage,
            "error": s.error,
            "spacing": s.spacing,
            "streamed": s.streamed,
            "up_to_date": s.up_to_date,
            "reused_stages": s.reused,
            "objects": s.objects.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "stage_seconds": s.timings.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "study_outputs": summary.written,
        "study_errors": summary.errors,
        "task": cfg.task,
    })
}

/// Where a sharded task's provenance goes: `tasks/task-K-of-N.json` (K zero-padded so that
/// names sort in task order).
pub fn task_record(out: &Path, task: crate::sched::Task) -> std::path::PathBuf {
    let w = task.count.to_string().len();
    out.join("tasks").join(format!("task-{:0w$}-of-{}.json", task.index, task.count))
}

/// Writes `run.json`, and `errors.csv` when something failed (removing a stale one otherwise).
/// A sharded task writes its own record under `tasks/` instead, and no `errors.csv`: `tessera
/// merge` writes the study's.
pub fn write_records(out: &Path, plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &RunSummary) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(&run_json(plan, manifest, cfg, summary)).map_err(std::io::Error::other)?;
    if let Some(task) = cfg.task {
        let p = task_record(out, task);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        return crate::util::write_atomic(&p, json.as_bytes());
    }
    crate::util::write_atomic(&out.join("run.json"), json.as_bytes())?;
    let failed: Vec<&SampleResult> = summary.samples.iter().filter(|s| s.status != Status::Done).collect();
    let errors_path = out.join("errors.csv");
    if failed.is_empty() && summary.errors.is_empty() {
        if errors_path.exists() {
            std::fs::remove_file(&errors_path)?;
        }
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["sample", "stage", "error"]).map_err(std::io::Error::other)?;
    for s in failed {
        w.write_record([s.sample.as_str(), s.failed_stage.as_deref().unwrap_or(""), s.error.as_deref().unwrap_or("")])
            .map_err(std::io::Error::other)?;
    }
    for e in &summary.errors {
        w.write_record(["", "merge", e.as_str()]).map_err(std::io::Error::other)?;
    }
    let bytes = w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::util::write_atomic(&errors_path, &bytes)
}
