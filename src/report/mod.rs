//! What a run tells its user: progress on stderr, `run.json` provenance and `errors.csv`.

pub mod html;
pub mod plots;
pub mod preview;

use std::io::IsTerminal;
use std::path::Path;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

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

/// A running sample: stages finished, stage count, the last finished stage, its bar.
type Running = (usize, usize, String, Option<ProgressBar>);

/// What the progress display knows, shared with the log ticker.
struct State {
    total: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
    /// Running samples: sample → (stages finished, stage count, last finished stage, its bar).
    running: Mutex<BTreeMap<String, Running>>,
    started: Instant,
}

/// Progress reporting on stderr. On a terminal: an indicatif bar for the samples and one line
/// per running sample with its stages. In logs (array jobs): one line per finished sample and,
/// every `TESSERA_PROGRESS_SECONDS` (default 60; 0: never), a line saying how far the run is and
/// which stage each running sample has reached — never a carriage return.
pub struct Progress {
    multi: Option<MultiProgress>,
    bar: Option<ProgressBar>,
    lines: bool,
    state: Arc<State>,
    ticker: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

fn status_line(st: &State) -> String {
    let (done, total, failed) = (st.done.load(Ordering::SeqCst), st.total.load(Ordering::SeqCst), st.failed.load(Ordering::SeqCst));
    let running = st.running.lock().map(|r| {
        r.iter()
            .map(|(s, (k, n, stage, _))| if stage.is_empty() { format!("{s} (starting)") } else { format!("{s} ({k}/{n}: {stage})") })
            .collect::<Vec<_>>()
    });
    let running = running.unwrap_or_default();
    format!(
        "{done}/{total} samples finished{} after {:.0} s{}",
        if failed > 0 { format!(" ({failed} failed)") } else { String::new() },
        st.started.elapsed().as_secs_f64(),
        if running.is_empty() { String::new() } else { format!("; running: {}", running.join(", ")) }
    )
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = match mode {
            ProgressMode::Always => true,
            ProgressMode::Auto => tty,
            ProgressMode::Never => false,
        };
        let multi = bar.then(MultiProgress::new);
        let pb = multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new(0));
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        });
        let state = Arc::new(State {
            total: 0.into(),
            done: 0.into(),
            failed: 0.into(),
            running: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        });
        Progress { multi, bar: pb, lines: mode != ProgressMode::Never && !bar, state, ticker: Mutex::new(None) }
    }
    pub fn start(&self, n: usize) {
        self.state.total.store(n, Ordering::SeqCst);
        if let Some(b) = &self.bar {
            b.set_length(n as u64);
        }
        let secs: f64 = std::env::var("TESSERA_PROGRESS_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60.0);
        if self.lines && secs > 0.0 {
            let (tx, rx) = mpsc::channel::<()>();
            let st = self.state.clone();
            let every = std::time::Duration::from_secs_f64(secs);
            let h = std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    eprintln!("tessera: {}", status_line(&st));
                }
            });
            if let Ok(mut t) = self.ticker.lock() {
                *t = Some((tx, h));
            }
        }
    }
    /// A sample starts (it has `stages` stages).
    pub fn begin(&self, sample: &str, stages: usize) {
        let bar = self.multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new(stages as u64));
            pb.set_style(
                ProgressStyle::with_template("  {prefix:<20} {bar:20} {pos}/{len} stages {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_prefix(sample.to_string());
            pb
        });
        if let Ok(mut r) = self.state.running.lock() {
            r.insert(sample.to_string(), (0, stages, String::new(), bar));
        }
    }
    /// A sample finished a stage.
    pub fn stage(&self, sample: &str, stage: &str) {
        if let Ok(mut r) = self.state.running.lock()
            && let Some(e) = r.get_mut(sample)
        {
            e.0 += 1;
            e.2 = stage.to_string();
            if let Some(b) = &e.3 {
                b.set_position(e.0 as u64);
                b.set_message(stage.to_string());
            }
        }
    }
    pub fn sample(&self, k: usize, r: &SampleResult, secs: f64) {
        self.state.done.fetch_add(1, Ordering::SeqCst);
        if r.status == Status::Failed {
            self.state.failed.fetch_add(1, Ordering::SeqCst);
        }
        if let Ok(mut running) = self.state.running.lock()
            && let Some((_, _, _, Some(b))) = running.remove(&r.sample)
        {
            b.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&b);
            }
        }
        let n = self.state.total.load(Ordering::SeqCst);
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
        if let Ok(mut t) = self.ticker.lock()
            && let Some((tx, h)) = t.take()
        {
            drop(tx);
            let _ = h.join();
        }
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

/// The provenance record of a run (SPEC §4), serialised as it is written: a study's samples
/// are turned into JSON one at a time, never held as a JSON tree.
#[derive(serde::Serialize)]
pub struct RunJson<'a> {
    tessera: serde_json::Value,
    pipeline: serde_json::Value,
    manifest: serde_json::Value,
    finished_unix: u64,
    command_line: Vec<String>,
    working_directory: String,
    seconds: f64,
    threads: usize,
    tile: String,
    memory_budget_bytes: u64,
    host: String,
    samples_total: usize,
    samples_failed: usize,
    #[serde(serialize_with = "sample_entries")]
    samples: &'a [SampleResult],
    study_outputs: &'a [std::path::PathBuf],
    study_errors: &'a [String],
    task: Option<crate::sched::Task>,
}

/// One sample of run.json.
#[derive(serde::Serialize)]
struct SampleEntry<'a> {
    sample: &'a str,
    image: String,
    input_hashes: &'a [String],
    status: Status,
    failed_stage: &'a Option<String>,
    error: &'a Option<String>,
    spacing: &'a Option<crate::io::Spacing>,
    streamed: bool,
    up_to_date: bool,
    reused_stages: &'a [String],
    #[serde(serialize_with = "pairs_as_map")]
    objects: &'a [(String, u64)],
    #[serde(serialize_with = "pairs_as_map")]
    stage_seconds: &'a [(String, f64)],
}

fn sample_entries<S: serde::Serializer>(samples: &&[SampleResult], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(samples.iter().map(|s| SampleEntry {
        sample: &s.sample,
        image: absolute(&s.image),
        input_hashes: &s.input_hashes,
        status: s.status,
        failed_stage: &s.failed_stage,
        error: &s.error,
        spacing: &s.spacing,
        streamed: s.streamed,
        up_to_date: s.up_to_date,
        reused_stages: &s.reused,
        objects: &s.objects,
        stage_seconds: &s.timings,
    }))
}

fn pairs_as_map<S: serde::Serializer, V: serde::Serialize>(pairs: &&[(String, V)], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The provenance record of a run (SPEC §4).
pub fn run_json<'a>(plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &'a RunSummary) -> RunJson<'a> {
    RunJson {
        tessera: serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "git_commit": env!("TESSERA_GIT_COMMIT")}),
        pipeline: serde_json::json!({
            "name": plan.spec.name,
            "file": absolute(&plan.spec.file),
            "hash": plan.hash,
            "text": plan.spec.text,
        }),
        manifest: serde_json::json!({
            "file": manifest.path.as_ref().map(|p| absolute(p)),
            "hash": manifest.hash(),
            "columns": manifest.columns,
        }),
        finished_unix: unix_now(),
        command_line: std::env::args().collect(),
        working_directory: std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        seconds: summary.seconds,
        threads: cfg.threads,
        tile: cfg.tile.to_string(),
        memory_budget_bytes: cfg.memory,
        host: crate::util::hostname(),
        samples_total: summary.samples.len(),
        samples_failed: summary.failed(),
        samples: &summary.samples,
        study_outputs: &summary.written,
        study_errors: &summary.errors,
        task: cfg.task,
    }
}

/// Where a sharded task's provenance goes: `tasks/task-K-of-N.json` (K zero-padded so that
/// names sort in task order).
pub fn task_record(out: &Path, task: crate::sched::Task) -> std::path::PathBuf {
    let w = task.count.to_string().len();
    out.join("tasks").join(format!("task-{:0w$}-of-{}.json", task.index, task.count))
}

/// Writes `DIR/errors.csv` (SPEC §4: `sample,stage,error`), or removes a stale one when there
/// is nothing to report. Used by `run` and `merge`.
pub fn write_errors_csv(out: &Path, rows: &[[String; 3]]) -> std::io::Result<()> {
    let path = out.join("errors.csv");
    if rows.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["sample", "stage", "error"]).map_err(std::io::Error::other)?;
    for r in rows {
        w.write_record(r).map_err(std::io::Error::other)?;
    }
    let bytes = w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::util::write_atomic(&path, &bytes)
}

/// Writes `run.json`, and `errors.csv` when something failed (removing a stale one otherwise).
/// A sharded task writes its own record under `tasks/` instead, and no `errors.csv`: `tessera
/// merge` writes the study's.
pub fn write_records(out: &Path, plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &RunSummary) -> std::io::Result<()> {
    let record = run_json(plan, manifest, cfg, summary);
    let write = |w: &mut dyn std::io::Write| serde_json::to_writer_pretty(w, &record).map_err(std::io::Error::other);
    if let Some(task) = cfg.task {
        let p = task_record(out, task);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        return crate::util::write_atomic_with(&p, write);
    }
    crate::util::write_atomic_with(&out.join("run.json"), write)?;
    let rows: Vec<[String; 3]> = summary
        .samples
        .iter()
        .filter(|s| s.status != Status::Done)
        .map(|s| [s.sample.clone(), s.failed_stage.clone().unwrap_or_default(), s.error.clone().unwrap_or_default()])
        .chain(summary.errors.iter().map(|e| [String::new(), "merge".into(), e.clone()]))
        .collect();
    write_errors_csv(out, &rows)
}
