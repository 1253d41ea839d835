//! What a run tells its user: progress on stderr, and the HTML report of an output folder.

pub mod html;
pub mod plots;
pub mod preview;

use std::io::IsTerminal;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::exec::{Observer, SampleResult, Status};

/// When to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Observer for Progress {
    fn start(&self, n: usize) {
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
    fn begin(&self, sample: &str, stages: usize) {
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
    fn stage(&self, sample: &str, stage: &str) {
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
    fn sample(&self, k: usize, r: &SampleResult, secs: f64) {
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
    fn finish(&self) {
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
