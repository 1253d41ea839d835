//! `tessera watch`: the command line of [`crate::exec::watch`] — its arguments, the signals
//! that stop it, and the lines (or JSON events) it prints.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use clap::Args;

use crate::exec::watch::{Event, Source, WatchConfig};
use crate::exec::{RunConfig, Status};
use crate::spec::manifest::Manifest;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The pipeline YAML.
    pub pipeline: PathBuf,
    /// Watch this folder for scans (polled, so it works on NFS).
    #[arg(long, value_name = "FOLDER", required_unless_present = "samples", conflicts_with = "samples")]
    pub dir: Option<PathBuf>,
    /// Which entries of the folder are scans: a pattern on their path relative to it, ignoring
    /// case (`*` stops at `/`, `**` does not; `{a,b}`, `?`, `[0-9]`). Folders match too (slice
    /// stacks, OME-Zarr). Sample id: the path without its image extension, `/` as `_`.
    #[arg(long, value_name = "GLOB", default_value = "*.{tif,tiff,btf,png,jpg,jpeg,npy,zarr}", requires = "dir")]
    pub pattern: String,
    /// Watch a manifest CSV that grows by rows instead (a last line without its newline is not
    /// read yet); each row runs once its image is complete.
    #[arg(long, value_name = "MANIFEST.csv")]
    pub samples: Option<PathBuf>,
    /// A scan is complete when a file named like it plus this suffix exists (e.g. `.done`:
    /// `scan.tif.done`). Without it, a scan is complete once its size and modification time
    /// have not changed for --stable seconds.
    #[arg(long, value_name = "SUFFIX")]
    pub sentinel: Option<String>,
    /// Seconds a scan's size and modification time must stay unchanged before it is read
    /// (without --sentinel). On NFS, more than the client's attribute cache time (actimeo).
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0, value_parser = seconds)]
    pub stable: f64,
    /// Seconds between looks at the folder or manifest.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.5, value_parser = seconds)]
    pub poll: f64,
    /// Rewrite the study's tables, statistics and report after this many new samples even
    /// while more wait (they are always rewritten when none waits).
    #[arg(long, value_name = "K", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_every: u64,
    /// … or this many seconds after the last time they were rewritten.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = seconds)]
    pub publish_seconds: f64,
    /// Stop once the study has N finished samples (done or failed). This end, like --idle,
    /// exits as `run` does: 1 when a sample failed (errors.csv), else 0. SIGINT or SIGTERM
    /// stop after the running samples and exit 0; a second signal stops at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub until: Option<u64>,
    /// Stop after SECONDS with nothing pending, running or changing.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub idle: Option<f64>,
    /// Do not rewrite report.html with the tables.
    #[arg(long)]
    pub no_report: bool,
    /// Output folder. Default: tessera-out/<pipeline name>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resources: super::Resources,
    /// fsync every output before it counts as done (as `tessera run --durable`).
    #[arg(long)]
    pub durable: bool,
    /// Print one JSON object per event on stdout (seen, finished, changed, published, problem,
    /// stopped).
    #[arg(long)]
    pub json: bool,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("'{s}' is not a number of seconds")),
    }
}

/// Set by the first SIGINT or SIGTERM: start no more samples, publish, exit.
static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second signal: stop now. Everything on disk is already safe to resume from (as
        // after a kill); `_exit` is async-signal-safe.
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(128 + sig) };
    }
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask; the handler only
        // touches atomics and calls _exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn cmd_watch(a: WatchArgs) -> i32 {
    if let Err(e) = a.resources.check() {
        eprintln!("error: {e}");
        return 2;
    }
    crate::util::set_durable(a.durable);
    let source = match (&a.dir, &a.samples) {
        (Some(d), _) => {
            if !d.is_dir() {
                eprintln!("error: --dir {}: not a folder", d.display());
                return 2;
            }
            // Absolute, so that records and messages name the same files from any folder.
            Source::Dir { dir: std::path::absolute(d).unwrap_or(d.clone()), pattern: a.pattern.clone() }
        }
        (None, Some(m)) => Source::Manifest(std::path::absolute(m).unwrap_or(m.clone())),
        (None, None) => {
            eprintln!("error: give --dir FOLDER or --samples MANIFEST.csv");
            return 2;
        }
    };
    // The pipeline is checked against the columns the samples will have: none but `sample` and
    // `image` for a folder, the manifest's header (once it has one) for a manifest.
    let columns = match &source {
        Source::Manifest(m) => match std::fs::read_to_string(m) {
            Ok(t) => match t.split_once('\n') {
                Some((head, _)) => head.split(',').map(|c| c.trim().to_string()).filter(|c| c != "sample" && c != "image").collect(),
                None => Vec::new(),
            },
            Err(_) => Vec::new(),
        },
        Source::Dir { .. } => Vec::new(),
    };
    let plan = match super::load_plan(&a.pipeline, Some(&Manifest::from_rows(columns, Vec::new()))) {
        Ok(p) => p,
        Err(d) => {
            super::report(&d);
            return 2;
        }
    };
    if matches!(source, Source::Dir { .. }) && !plan.spec.sources.is_empty() {
        eprintln!(
            "error: the pipeline reads further images from manifest columns (`sources:`); a watched folder gives only `image`: watch a manifest with --samples"
        );
        return 2;
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("tessera-out").join(&plan.spec.name));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: cannot create output folder {}: {e}", out.display());
        return 2;
    }
    // One watch per output folder.
    let store = crate::store::Store::new(&out);
    let _lock = match store.lock("@watch") {
        Ok(l) => l,
        Err(h) if h.pid == 0 => {
            eprintln!("error: cannot create a lock file in {}", store.root().display());
            return 2;
        }
        Err(h) => {
            eprintln!("error: another tessera watch (process {} on {}) is writing to {}", h.pid, h.host, out.display());
            return 2;
        }
    };
    install_handlers();
    let cfg = RunConfig {
        out: out.clone(),
        threads: rayon::current_num_threads(),
        tile: a.resources.tile(&plan.spec),
        memory: a.resources.memory(),
        fail_fast: false,
        force: false,
        checkpoints: true,
        task: None,
        split: None,
        interrupt: Some(&STOP),
        study_outputs: false,
    };
    let w = WatchConfig {
        source,
        sentinel: a.sentinel.clone(),
        stable: std::time::Duration::from_secs_f64(a.stable),
        poll: std::time::Duration::from_secs_f64(a.poll.max(0.01)),
        publish_every: a.publish_every as usize,
        publish_seconds: std::time::Duration::from_secs_f64(a.publish_seconds),
        until: a.until.map(|n| n as usize),
        idle: a.idle.map(std::time::Duration::from_secs_f64),
        report: !a.no_report,
    };
    let what = match &w.source {
        Source::Dir { dir, pattern } => format!("{} ({pattern})", dir.display()),
        Source::Manifest(m) => m.display().to_string(),
    };
    if !a.json {
        eprintln!("tessera: watching {what} → {} (Ctrl-C or SIGTERM stops after the running samples)", out.display());
    }
    let (mut done, mut failed, mut study_errors) = (0usize, 0usize, 0usize);
    let json = a.json;
    let mut on = |e: Event| {
        let mut so = std::io::stdout().lock();
        match e {
            Event::Seen { sample, image } => {
                if json {
                    let _ = writeln!(so, "{}", serde_json::json!({"event": "seen", "sample": sample, "image": image}));
                }
            }
            Event::Finished { entry, seconds } => {
                if entry.status == Status::Done {
                    done += 1;
                } else {
                    failed += 1;
                }
                if json {
                    let _ = writeln!(
                        so,
                        "{}",
                        serde_json::json!({"event": "finished", "sample": entry.sample, "status": entry.status,
                            "stage": entry.failed_stage, "error": entry.error, "seconds": seconds, "objects": entry.objects})
                    );
                } else if entry.status == Status::Done {
                    let objs: Vec<String> = entry.objects.iter().map(|(k, v)| format!("{v} {k}")).collect();
                    eprintln!("  {:<24} done   {:.2} s  {}", entry.sample, seconds, objs.join(", "));
                } else {
                    eprintln!(
                        "  {:<24} FAILED at {}: {}",
                        entry.sample,
                        entry.failed_stage.as_deref().unwrap_or("?"),
                        entry.error.as_deref().unwrap_or("")
                    );
                }
            }
            Event::Changed { sample } => {
                if json {
                    let _ = writeln!(so, "{}", serde_json::json!({"event": "changed", "sample": sample}));
                } else {
                    eprintln!("  {sample:<24} changed while it ran: again once complete");
                }
            }
            Event::Published { samples, new, unix, seconds, errors } => {
                study_errors = errors.len();
                if json {
                    let _ = writeln!(
                        so,
                        "{}",
                        serde_json::json!({"event": "published", "samples": samples, "new": new, "unix": unix,
                            "seconds": seconds, "errors": errors})
                    );
                } else {
                    eprintln!("  published {samples} samples ({} new) in {seconds:.2} s", new.len());
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                }
            }
            Event::Problem { message } => {
                if json {
                    let _ = writeln!(so, "{}", serde_json::json!({"event": "problem", "message": message}));
                } else {
                    eprintln!("warning: {message} (trying again)");
                }
            }
            Event::Stopped { reason } => {
                if json {
                    let _ = writeln!(so, "{}", serde_json::json!({"event": "stopped", "reason": reason}));
                }
            }
        }
        let _ = so.flush();
    };
    match crate::exec::watch::watch(&plan, &cfg, &w, &STOP, &mut on) {
        Ok(reason) => {
            let signalled = SIGNAL.load(Ordering::SeqCst);
            if !json {
                println!("stopped ({reason}): {done} samples done, {failed} failed in this watch → {}", out.display());
            }
            if study_errors > 0 {
                1
            } else if signalled != 0 {
                // The end of an acquisition: failed samples are in errors.csv.
                0
            } else if out.join("errors.csv").is_file() {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
