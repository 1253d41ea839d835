//! `tessera watch`: runs a pipeline on scans as an instrument delivers them, and keeps the
//! study's outputs current while it does.
//!
//! Every poll (no inotify: it works on NFS and other network file systems) lists the watched
//! folder's files matching a pattern, or the complete rows of a growing manifest, and tracks
//! each candidate's signature (size, modification time; for a folder image, those of the files
//! under it). A candidate is complete when its sentinel file exists, or when its signature has
//! not changed for `stable` and it is not empty; only then is it read. Complete samples run in
//! batches through the same executor as `tessera run` ([`super::run`]: checkpoints, per-sample
//! records, locks), and a sample whose file changed while it ran is not taken: it is tracked
//! again and redone once complete. A file that changes after it was processed is redone too.
//!
//! The study's outputs are those of an ordinary run on the finished samples, in a canonical
//! order that does not depend on when files arrived (natural order of their paths, or the
//! manifest's row order): `manifest.csv` (the finished samples), `run.json`, then the merged
//! tables, statistics and `errors.csv` ([`super::merge::merge`]) and `report.html`, each
//! replaced atomically. They are published when no complete sample waits, after every
//! `publish_every` samples, or `publish_seconds` after the last publication. `watch.json`
//! (typed: [`WatchRecord`]) says what is pending and why, for `tessera status`, and which file
//! signatures each finished sample was computed from, so a restart neither redoes nor re-reads
//! them. A killed watch restarts from its records and publishes the same bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::plan::Plan;
use crate::record::{SampleEntry, Status};
use crate::spec::manifest::{Manifest, SampleRow};

/// What is watched.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files (or folders: slice stacks, OME-Zarr) under `dir` whose path relative to it
    /// matches `pattern` ([`crate::util::glob_match`]).
    Dir { dir: PathBuf, pattern: String },
    /// A manifest CSV that grows by rows; a last line without its newline is not read yet.
    Manifest(PathBuf),
}

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub source: Source,
    /// A candidate is complete when `<its name><sentinel>` exists beside it (e.g. `.done`).
    pub sentinel: Option<String>,
    /// Without a sentinel: complete once size and modification time are unchanged this long.
    pub stable: Duration,
    pub poll: Duration,
    /// Publish after this many newly finished samples even while others wait.
    pub publish_every: usize,
    /// … or this long after the last publication.
    pub publish_seconds: Duration,
    /// Stop once the study has this many finished samples (done or failed).
    pub until: Option<usize>,
    /// Stop after this long with nothing pending, running or changing.
    pub idle: Option<Duration>,
    /// Write `report.html` with each publication.
    pub report: bool,
}

/// What a watch tells whoever runs it (the command line prints it).
pub enum Event<'a> {
    /// A new candidate, not complete yet.
    Seen { sample: &'a str, image: &'a Path },
    /// A sample finished (done or failed), after `seconds`.
    Finished { entry: &'a SampleEntry, seconds: f64 },
    /// A sample's file changed while it ran: it will run again once complete.
    Changed { sample: &'a str },
    /// The study's outputs were rewritten with `samples` finished samples, of which `new` were
    /// not in the last publication; at `unix` seconds, after `seconds`.
    Published { samples: usize, new: &'a [String], unix: f64, seconds: f64, errors: &'a [String] },
    /// The folder or manifest could not be read this time (a network file system's hiccup, a
    /// manifest being replaced): said once per new message; the next poll tries again.
    Problem { message: &'a str },
    /// The watch ends.
    Stopped { reason: &'a str },
}

/// A file's (or a folder's) signature: bytes, newest modification (ns since the epoch), files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sig {
    pub size: u64,
    pub mtime_ns: u64,
    pub files: u64,
}

/// A sample `tessera watch` finished, and the signature of the file it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchedFile {
    /// The path relative to the watched folder, or the manifest's sample id.
    pub key: String,
    pub sample: String,
    #[serde(flatten)]
    pub sig: Sig,
}

/// A candidate not processed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingFile {
    pub key: String,
    pub sample: String,
    pub image: String,
    /// Why it waits, in words.
    pub reason: String,
    /// When its current signature was first seen.
    pub since_unix: u64,
}

/// `watch.json` in the output folder: who watches what, what is pending, what is finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchRecord {
    pub pid: u32,
    pub host: String,
    /// The watched folder or manifest (absolute).
    pub source: String,
    pub pattern: Option<String>,
    pub sentinel: Option<String>,
    pub stable_seconds: f64,
    pub started_unix: u64,
    pub updated_unix: u64,
    /// `watching`, or why the watch stopped.
    pub state: String,
    pub pending: Vec<PendingFile>,
    pub finished: Vec<WatchedFile>,
}

impl WatchRecord {
    /// `DIR/watch.json`, if a watch wrote one.
    pub fn load(out: &Path) -> Option<Result<WatchRecord, String>> {
        let p = out.join("watch.json");
        let text = std::fs::read_to_string(&p).ok()?;
        Some(serde_json::from_str(&text).map_err(|e| format!("{}: not a tessera watch record: {e}", p.display())))
    }
}

/// Image extensions a sample id leaves out (the longest first).
const IMAGE_EXTENSIONS: [&str; 11] =
    [".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".btf", ".png", ".jpeg", ".jpg", ".npy", ".zarr"];

/// The sample id of a file found in the watched folder: its path relative to the folder without
/// its image extension, folders joined by `_`, made a valid id.
pub fn sample_id(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    let stem = IMAGE_EXTENSIONS.iter().find(|e| lower.ends_with(*e)).map_or(key, |e| &key[..key.len() - e.len()]);
    crate::spec::manifest::sample_id_from(&stem.replace('/', "_"))
}

fn mtime_ns(m: &std::fs::Metadata) -> u64 {
    m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64)
}

/// The signature of a file, or of everything under a folder; `None` when it is not there.
pub fn signature(path: &Path) -> Option<Sig> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_dir() {
        return Some(Sig { size: m.len(), mtime_ns: mtime_ns(&m), files: 1 });
    }
    let mut sig = Sig { size: 0, mtime_ns: mtime_ns(&m), files: 0 };
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(m) = e.metadata() else { continue };
            sig.mtime_ns = sig.mtime_ns.max(mtime_ns(&m));
            if m.is_dir() {
                stack.push(e.path());
            } else {
                sig.size += m.len();
                sig.files += 1;
            }
        }
    }
    Some(sig)
}

/// A candidate: a sample row and where it sorts.
#[derive(Debug, Clone)]
struct Candidate {
    key: String,
    row: SampleRow,
}

/// The candidates of a folder: entries whose relative path matches the pattern (hidden names
/// and sentinels left out; the walk goes into sub-folders only when the pattern has a `/`).
fn list_dir(dir: &Path, pattern: &str, sentinel: Option<&str>) -> Result<Vec<Candidate>, String> {
    let deep = pattern.contains('/');
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if rel.is_empty() => return Err(format!("cannot list the watched folder {}: {e}", dir.display())),
            Err(_) => continue,
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || sentinel.is_some_and(|s| name.ends_with(s)) {
                continue;
            }
            let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if crate::util::glob_match(pattern, &key) {
                let id = sample_id(&key);
                out.push(Candidate { row: SampleRow { line: 0, id, image: e.path(), meta: Vec::new(), problem: None }, key });
            } else if deep && e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), key));
            }
        }
    }
    Ok(out)
}

/// The complete rows of a growing manifest (up to its last newline), with metadata columns;
/// image and source paths made absolute. `Ok(None)`: no complete header yet.
/// A manifest's metadata columns and its rows.
type Listed = (Vec<String>, Vec<Candidate>);

fn list_manifest(path: &Path, plan: &Plan) -> Result<Option<Listed>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else { return Ok(None) };
    let base = std::fs::canonicalize(path.parent().unwrap_or(Path::new("."))).unwrap_or_default();
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(&bytes[..=end]);
    let bad = |e: String| format!("{}: {e}", path.display());
    let headers: Vec<String> = rdr.headers().map_err(|e| bad(e.to_string()))?.iter().map(|h| h.trim().to_string()).collect();
    let col = |n: &str| headers.iter().position(|h| h == n);
    let (Some(si), Some(ii)) = (col("sample"), col("image")) else {
        return Err(bad(format!("a manifest needs the columns `sample` and `image`; found {}", headers.join(", "))));
    };
    let columns: Vec<String> = headers.iter().enumerate().filter(|(i, _)| *i != si && *i != ii).map(|(_, h)| h.clone()).collect();
    let sources: Vec<&str> = plan.spec.sources.iter().map(|(_, c, _)| c.as_str()).collect();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::new();
    for (k, rec) in rdr.records().enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| bad(format!("line {line}: {e}")))?;
        let cell = |i: usize| rec.get(i).unwrap_or("").trim().to_string();
        let id = cell(si);
        let image = cell(ii);
        let abs = |p: &str| if p.is_empty() { String::new() } else { base.join(p).display().to_string() };
        let meta: Vec<(String, String)> = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != si && *i != ii)
            .map(|(i, h)| (h.clone(), if sources.contains(&h.as_str()) { abs(&cell(i)) } else { cell(i) }))
            .collect();
        let repeats = seen.get(&id).map(|first| format!("{}: line {line}: sample id '{id}' repeats line {first}", path.display()));
        let problem = if rec.len() != headers.len() {
            Some(format!("{}: line {line}: {} cells, the header has {}", path.display(), rec.len(), headers.len()))
        } else if !crate::spec::is_valid_name(&id) {
            Some(format!("{}: line {line}: invalid sample id '{id}' (use letters, digits, '.', '_', '-')", path.display()))
        } else if image.is_empty() {
            Some(format!("{}: line {line}: empty `image` for sample '{id}'", path.display()))
        } else {
            repeats.clone()
        };
        // A repeated id fails under an id of its own, so that errors.csv shows it.
        let id = if repeats.is_some() { format!("{id}.line{line}") } else { id };
        seen.entry(id.clone()).or_insert(line);
        let row = SampleRow { line, id: id.clone(), image: PathBuf::from(abs(&image)), meta, problem };
        out.push(Candidate { key: id, row });
    }
    Ok(Some((columns, out)))
}

/// A candidate being watched until it is complete.
struct Tracked {
    cand: Candidate,
    sig: Option<Sig>,
    /// When `sig` was first seen (and in unix seconds, for `watch.json`).
    since: Instant,
    since_unix: u64,
}

/// A finished sample of the study.
struct Finished {
    row: SampleRow,
    sig: Sig,
    key: String,
    entry: SampleEntry,
}

/// The same sample, wherever its row is.
fn same_row(a: &SampleRow, b: &SampleRow) -> bool {
    a.id == b.id && a.image == b.image && a.meta == b.meta && a.problem == b.problem
}

/// The canonical order of the study's samples: manifest rows in order, files in natural order
/// of their paths.
fn canonical(a: (&SampleRow, &str), b: (&SampleRow, &str)) -> std::cmp::Ordering {
    a.0.line.cmp(&b.0.line).then_with(|| crate::io::natural_cmp(a.1, b.1))
}

/// The watch's state.
struct Watch<'a> {
    plan: &'a Plan,
    cfg: &'a RunConfig,
    w: &'a WatchConfig,
    columns: Vec<String>,
    tracked: std::collections::BTreeMap<String, Tracked>,
    finished: std::collections::BTreeMap<String, Finished>,
    /// Sample id → key of the candidate that holds it (the first one seen keeps an id).
    ids: std::collections::HashMap<String, String>,
    /// Finished since the last publication.
    unpublished: Vec<String>,
    started_unix: u64,
    /// The last `watch.json` pending list written (rewritten when it changes).
    last_pending: Vec<PendingFile>,
    /// The report being rendered, and whether a publication came after the one it shows.
    report_job: Option<std::thread::JoinHandle<Option<String>>>,
    report_stale: bool,
}

fn unix_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Watch<'_> {
    fn sentinel_of(&self, image: &Path) -> Option<PathBuf> {
        let s = self.w.sentinel.as_ref()?;
        let mut name = image.file_name()?.to_os_string();
        name.push(s);
        Some(image.with_file_name(name))
    }

    /// Lists the source and updates the tracked candidates. Returns the complete ones, in
    /// canonical order, and whether anything changed.
    fn poll(&mut self, on: &mut dyn FnMut(Event)) -> Result<(Vec<Candidate>, bool), String> {
        let cands = match &self.w.source {
            Source::Dir { dir, pattern } => list_dir(dir, pattern, self.w.sentinel.as_deref())?,
            Source::Manifest(p) => match list_manifest(p, self.plan)? {
                Some((cols, c)) => {
                    self.columns = cols;
                    c
                }
                None => Vec::new(),
            },
        };
        let mut changed = false;
        let now = Instant::now();
        let mut present = std::collections::HashSet::new();
        for mut c in cands {
            present.insert(c.key.clone());
            // One id, one file: a second file with the same id waits under a longer one.
            match self.ids.get(&c.row.id) {
                Some(k) if *k != c.key => {
                    c.row.id = format!("{}-{}", c.row.id, &blake3::hash(c.key.as_bytes()).to_hex()[..8]);
                }
                Some(_) => {}
                None => {
                    self.ids.insert(c.row.id.clone(), c.key.clone());
                }
            }
            let sig = if c.row.problem.is_some() { Some(Sig::default()) } else { signature(&c.row.image) };
            if let Some(f) = self.finished.get_mut(&c.key)
                && Some(f.sig) == sig
                && same_row(&f.row, &c.row)
            {
                // (A restart read the row from the study's manifest: its line is the source's now.)
                f.row.line = c.row.line;
                self.tracked.remove(&c.key);
                continue;
            }
            match self.tracked.get_mut(&c.key) {
                Some(t) if t.sig == sig && same_row(&t.cand.row, &c.row) => t.cand.row.line = c.row.line,
                Some(t) => {
                    t.sig = sig;
                    t.cand = c;
                    t.since = now;
                    t.since_unix = super::provenance::unix_now();
                    changed = true;
                }
                None => {
                    on(Event::Seen { sample: &c.row.id, image: &c.row.image });
                    self.tracked.insert(c.key.clone(), Tracked { cand: c, sig, since: now, since_unix: super::provenance::unix_now() });
                    changed = true;
                }
            }
        }
        // A candidate that went away (renamed, deleted) is no longer waited for.
        let before = self.tracked.len();
        self.tracked.retain(|k, _| present.contains(k));
        changed |= self.tracked.len() != before;
        let mut ready: Vec<Candidate> = self.tracked.values().filter(|t| self.complete(t, now).is_ok()).map(|t| t.cand.clone()).collect();
        ready.sort_by(|a, b| canonical((&a.row, &a.key), (&b.row, &b.key)));
        Ok((ready, changed))
    }

    /// `Ok` when a tracked candidate is complete, else why it waits.
    fn complete(&self, t: &Tracked, now: Instant) -> Result<(), String> {
        if t.cand.row.problem.is_some() {
            return Ok(());
        }
        let Some(sig) = t.sig else { return Err(format!("{} is not there yet", t.cand.row.image.display())) };
        if let Some(s) = self.sentinel_of(&t.cand.row.image) {
            return if s.exists() { Ok(()) } else { Err(format!("waiting for {}", s.display())) };
        }
        if sig.size == 0 {
            return Err("empty so far".into());
        }
        let still = now.duration_since(t.since);
        if still >= self.w.stable {
            Ok(())
        } else {
            Err(format!("unchanged for {:.1} s of {:.1} s", still.as_secs_f64(), self.w.stable.as_secs_f64()))
        }
    }

    /// Runs complete candidates through the executor; returns how many finished.
    fn run_batch(&mut self, batch: Vec<Candidate>, on: &mut dyn FnMut(Event)) -> Result<usize, String> {
        let t0 = Instant::now();
        let rows: Vec<SampleRow> = batch.iter().map(|c| c.row.clone()).collect();
        let before: Vec<Option<Sig>> = batch.iter().map(|c| self.tracked.get(&c.key).and_then(|t| t.sig)).collect();
        let manifest = Manifest::from_rows(self.columns.clone(), rows);
        let summary = super::run(self.plan, &manifest, self.cfg, &super::Quiet)?;
        let mut n = 0;
        for (c, (entry, sig)) in batch.into_iter().zip(summary.entries().zip(before)) {
            let entry = entry?;
            if entry.status == Status::Skipped {
                continue;
            }
            // The file must be the one that was read: unchanged since it was found complete.
            let now_sig = if c.row.problem.is_some() { Some(Sig::default()) } else { signature(&c.row.image) };
            if now_sig != sig {
                on(Event::Changed { sample: &c.row.id });
                if let Some(t) = self.tracked.get_mut(&c.key) {
                    t.sig = now_sig;
                    t.since = Instant::now();
                }
                continue;
            }
            self.tracked.remove(&c.key);
            // The sample's own time (its stages), not its batch's.
            let seconds =
                if entry.stage_seconds.is_empty() { t0.elapsed().as_secs_f64() } else { entry.stage_seconds.iter().map(|(_, s)| s).sum() };
            on(Event::Finished { entry: &entry, seconds });
            self.unpublished.push(entry.sample.clone());
            self.finished.insert(c.key.clone(), Finished { row: c.row, sig: sig.unwrap_or_default(), key: c.key, entry });
            n += 1;
        }
        Ok(n)
    }

    /// The finished samples in canonical order.
    fn in_order(&self) -> Vec<&Finished> {
        let mut v: Vec<&Finished> = self.finished.values().collect();
        v.sort_by(|a, b| canonical((&a.row, &a.key), (&b.row, &b.key)));
        v
    }

    /// Rewrites the study's outputs from the finished samples.
    fn publish(&mut self, on: &mut dyn FnMut(Event)) -> Result<(), String> {
        let t0 = Instant::now();
        let out = &self.cfg.out;
        let order = self.in_order();
        // The study's manifest: the finished samples, paths absolute.
        let mpath = out.join("manifest.csv");
        crate::util::write_atomic_with(&mpath, |w: &mut dyn std::io::Write| {
            let mut w = csv::Writer::from_writer(w);
            let mut head = vec!["sample".to_string(), "image".to_string()];
            head.extend(self.columns.iter().cloned());
            w.write_record(&head).map_err(std::io::Error::other)?;
            for f in &order {
                let mut rec =
                    vec![f.row.id.clone(), std::path::absolute(&f.row.image).unwrap_or(f.row.image.clone()).display().to_string()];
                rec.extend(self.columns.iter().map(|c| f.row.value(c).unwrap_or("").to_string()));
                w.write_record(&rec).map_err(std::io::Error::other)?;
            }
            w.flush()
        })
        .map_err(|e| format!("{}: {e}", mpath.display()))?;
        let manifest = Manifest::open(&mpath, &[]).map_err(|e| e.to_string())?;
        let entries: Vec<&SampleEntry> = order.iter().map(|f| &f.entry).collect();
        let mut record = super::provenance::record_head(self.plan, &manifest, self.cfg).with_samples(entries);
        record.samples_total = order.len();
        record.samples_failed = order.iter().filter(|f| f.entry.status != Status::Done).count();
        super::provenance::write_record(&out.join("run.json"), &record).map_err(|e| format!("{}: {e}", out.join("run.json").display()))?;
        let samples = order.len();
        drop(record);
        let report = super::merge::merge(out, true)?;
        let mut errors = report.errors;
        if self.w.report {
            self.report_stale = true;
            errors.extend(self.report(false));
        }
        let new = std::mem::take(&mut self.unpublished);
        on(Event::Published { samples, new: &new, unix: unix_f64(), seconds: t0.elapsed().as_secs_f64(), errors: &errors });
        self.write_record("watching", true)
    }

    /// Brings `report.html` up to date with the last publication: on a thread of its own, so
    /// that the tables of the next scans need not wait for it (a publication while it renders
    /// asks for another when it is done), or here and now when `wait` (the last publication).
    /// Returns what went wrong with the report that ended.
    fn report(&mut self, wait: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(job) = self.report_job.take() {
            if job.is_finished() || wait {
                errors.extend(job.join().unwrap_or_else(|_| Some("report.html: rendering panicked".into())));
            } else {
                self.report_job = Some(job);
                return errors;
            }
        }
        if !self.report_stale {
            return errors;
        }
        self.report_stale = false;
        let out = self.cfg.out.clone();
        let render = move || match crate::report::html::render(&out) {
            Ok(html) => crate::util::write_atomic(&out.join("report.html"), html.as_bytes()).err().map(|e| format!("report.html: {e}")),
            Err(e) => Some(format!("report.html: {e}")),
        };
        if wait {
            errors.extend(render());
        } else {
            self.report_job = Some(std::thread::spawn(render));
        }
        errors
    }

    /// Writes `watch.json` (the pending list only when it changed, unless `force`).
    fn write_record(&mut self, state: &str, force: bool) -> Result<(), String> {
        let now = Instant::now();
        let mut pending: Vec<PendingFile> = self
            .tracked
            .values()
            .map(|t| PendingFile {
                key: t.cand.key.clone(),
                sample: t.cand.row.id.clone(),
                image: t.cand.row.image.display().to_string(),
                reason: match self.complete(t, now) {
                    Ok(()) => "complete: queued".into(),
                    // The seconds counted change at every poll; the file says since when.
                    Err(r) if r.starts_with("unchanged for") => {
                        format!(
                            "unchanged since {}; complete after {:.1} s",
                            crate::util::utc_time(t.since_unix),
                            self.w.stable.as_secs_f64()
                        )
                    }
                    Err(r) => r,
                },
                since_unix: t.since_unix,
            })
            .collect();
        pending.sort_by(|a, b| crate::io::natural_cmp(&a.key, &b.key));
        if !force && pending == self.last_pending {
            return Ok(());
        }
        let rec = WatchRecord {
            pid: std::process::id(),
            host: crate::util::hostname(),
            source: match &self.w.source {
                Source::Dir { dir, .. } => std::path::absolute(dir).unwrap_or(dir.clone()).display().to_string(),
                Source::Manifest(p) => std::path::absolute(p).unwrap_or(p.clone()).display().to_string(),
            },
            pattern: match &self.w.source {
                Source::Dir { pattern, .. } => Some(pattern.clone()),
                Source::Manifest(_) => None,
            },
            sentinel: self.w.sentinel.clone(),
            stable_seconds: self.w.stable.as_secs_f64(),
            started_unix: self.started_unix,
            updated_unix: super::provenance::unix_now(),
            state: state.to_string(),
            pending: pending.clone(),
            finished: self.in_order().iter().map(|f| WatchedFile { key: f.key.clone(), sample: f.row.id.clone(), sig: f.sig }).collect(),
        };
        self.last_pending = pending;
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| e.to_string())?;
        crate::util::write_atomic(&self.cfg.out.join("watch.json"), &bytes).map_err(|e| format!("watch.json: {e}"))
    }

    /// What an earlier watch of this folder finished: samples in its `run.json` and
    /// `manifest.csv` whose file signatures its `watch.json` recorded. Anything else is found
    /// again and run (its checkpoints make that quick).
    fn resume(&mut self) -> Result<(), String> {
        let out = self.cfg.out.clone();
        let Some(Ok(prev)) = WatchRecord::load(&out) else { return Ok(()) };
        let mpath = out.join("manifest.csv");
        if !mpath.is_file() || !out.join("run.json").is_file() {
            return Ok(());
        }
        let sigs: std::collections::HashMap<String, &WatchedFile> = prev.finished.iter().map(|f| (f.sample.clone(), f)).collect();
        let mut entries: std::collections::HashMap<String, SampleEntry> = Default::default();
        let head = crate::record::each_entry(&out.join("run.json"), &mut |e| {
            entries.insert(e.sample.clone(), e);
            Ok(())
        })?;
        // Results of another pipeline or another tessera are not taken as they are: every scan
        // is found again and run, and its checkpoints decide what is redone.
        if head.pipeline.hash != self.plan.hash || head.tessera.version != env!("CARGO_PKG_VERSION") {
            return Ok(());
        }
        let manifest = Manifest::open(&mpath, &[]).map_err(|e| e.to_string())?;
        if matches!(self.w.source, Source::Manifest(_)) {
            self.columns = manifest.columns.clone();
        }
        for row in manifest.each().map_err(|e| e.to_string())? {
            let mut row = row.map_err(|e| e.to_string())?;
            let (Some(f), Some(entry)) = (sigs.get(&row.id), entries.remove(&row.id)) else { continue };
            // The row as the source gives it (a manifest's rows take their lines at the first
            // poll; until then the study manifest's order is theirs).
            if let Source::Dir { dir, .. } = &self.w.source {
                row.image = dir.join(&f.key);
                row.line = 0;
            }
            self.ids.insert(row.id.clone(), f.key.clone());
            self.finished.insert(f.key.clone(), Finished { row, sig: f.sig, key: f.key.clone(), entry });
        }
        Ok(())
    }
}

/// Watches until `stop` is set (a signal), `--until` or `--idle`; returns why it stopped.
/// `Err`: the source cannot be read at all, or the output folder cannot be written.
pub fn watch(plan: &Plan, cfg: &RunConfig, w: &WatchConfig, stop: &AtomicBool, on: &mut dyn FnMut(Event)) -> Result<String, String> {
    let mut st = Watch {
        plan,
        cfg,
        w,
        columns: Vec::new(),
        tracked: Default::default(),
        finished: Default::default(),
        ids: Default::default(),
        unpublished: Vec::new(),
        started_unix: super::provenance::unix_now(),
        last_pending: Vec::new(),
        report_job: None,
        report_stale: false,
    };
    st.resume()?;
    if !st.finished.is_empty() {
        // What a killed watch may not have published.
        st.publish(on)?;
    }
    let mut last_publish = Instant::now();
    let mut last_activity = Instant::now();
    let batch_max = cfg.threads.max(1) * 2;
    let mut last_problem: Option<String> = None;
    let reason = loop {
        if stop.load(Ordering::SeqCst) {
            break "interrupted".to_string();
        }
        if let Some(n) = w.until
            && st.finished.len() >= n
        {
            break format!("{n} samples finished (--until)");
        }
        let (ready, changed) = match st.poll(on) {
            Ok(r) => {
                last_problem = None;
                r
            }
            Err(e) => {
                // Nothing finished is lost and nothing pending is forgotten: try again later.
                if last_problem.as_deref() != Some(e.as_str()) {
                    on(Event::Problem { message: &e });
                    last_problem = Some(e);
                }
                (Vec::new(), false)
            }
        };
        if changed {
            last_activity = Instant::now();
        }
        let publish_due = !st.unpublished.is_empty()
            && (ready.is_empty() || st.unpublished.len() >= w.publish_every || last_publish.elapsed() >= w.publish_seconds);
        if publish_due {
            st.publish(on)?;
            last_publish = Instant::now();
            continue;
        }
        if !ready.is_empty() {
            let batch: Vec<Candidate> = ready.into_iter().take(batch_max).collect();
            st.run_batch(batch, on)?;
            last_activity = Instant::now();
            continue;
        }
        st.write_record("watching", false)?;
        // A report asked for while another rendered.
        if w.report {
            for e in st.report(false) {
                on(Event::Published { samples: st.finished.len(), new: &[], unix: unix_f64(), seconds: 0.0, errors: &[e] });
            }
        }
        if let Some(idle) = w.idle
            && st.tracked.is_empty()
            && last_activity.elapsed() >= idle
        {
            break format!("idle for {:.1} s (--idle)", idle.as_secs_f64());
        }
        // Sleep a poll interval, waking for a signal.
        let t = Instant::now();
        while t.elapsed() < w.poll && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(w.poll.min(Duration::from_millis(50)));
        }
    };
    if !st.unpublished.is_empty() {
        st.publish(on)?;
    }
    if w.report {
        // The report of the last publication, before the watch ends.
        let errors = st.report(true);
        if !errors.is_empty() {
            on(Event::Published { samples: st.finished.len(), new: &[], unix: unix_f64(), seconds: 0.0, errors: &errors });
        }
    }
    st.write_record(&format!("stopped: {reason}"), true)?;
    on(Event::Stopped { reason: &reason });
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_ids_of_watched_files() {
        assert_eq!(sample_id("scan_0001.tif"), "scan_0001");
        assert_eq!(sample_id("day 2/Scan.OME.TIFF"), "day_2_Scan");
        assert_eq!(sample_id("a.b.npy"), "a.b");
        assert_eq!(sample_id("plate.zarr"), "plate");
        assert_eq!(sample_id("notes"), "notes");
    }

    #[test]
    fn signatures_see_growth_in_files_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.tif");
        assert_eq!(signature(&f), None);
        std::fs::write(&f, b"abc").unwrap();
        let s1 = signature(&f).unwrap();
        assert_eq!((s1.size, s1.files), (3, 1));
        let z = d.path().join("b.zarr");
        std::fs::create_dir_all(z.join("0")).unwrap();
        std::fs::write(z.join("zarr.json"), b"{}").unwrap();
        let s2 = signature(&z).unwrap();
        std::fs::write(z.join("0").join("c0"), b"chunk").unwrap();
        let s3 = signature(&z).unwrap();
        assert_eq!((s2.files, s3.files, s3.size), (1, 2, 7));
    }

    #[test]
    fn a_growing_manifest_is_read_up_to_its_last_newline() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m.csv");
        let (spec, _) = crate::spec::parse_str(
            Path::new("p.yaml"),
            "version: 1\nname: t\nstages:\n  s: {op: gaussian, input: image, sigma: 1}\n".into(),
        );
        let (plan, _) = crate::plan::compile(spec.unwrap(), None, None);
        let plan = plan.unwrap();
        assert!(list_manifest(&m, &plan).unwrap().is_none(), "no file yet");
        std::fs::write(&m, "sample,image,animal").unwrap();
        assert!(list_manifest(&m, &plan).unwrap().is_none(), "no complete header yet");
        std::fs::write(&m, "sample,image,animal\na,a.tif,m1\nb,b.tif,m1\na,c.tif,m2\nbad id,d.tif,m2\nc,c.t").unwrap();
        let (cols, rows) = list_manifest(&m, &plan).unwrap().unwrap();
        assert_eq!(cols, vec!["animal"]);
        let ids: Vec<&str> = rows.iter().map(|c| c.row.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "a.line4", "bad id"], "the half-written row is not read yet");
        assert!(rows[2].row.problem.as_ref().unwrap().contains("sample id 'a' repeats line 2"));
        assert!(rows[3].row.problem.as_ref().unwrap().contains("invalid sample id"));
        assert!(rows[0].row.image.is_absolute() && rows[0].row.value("animal") == Some("m1"));
        std::fs::write(&m, "image,animal\n").unwrap();
        assert!(list_manifest(&m, &plan).unwrap_err().contains("`sample` and `image`"));
    }
}
