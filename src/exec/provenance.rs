//! Writing a run's provenance (SPEC §4): `run.json` (or a task's record under `tasks/`) as a
//! [`RunRecord`], its samples serialised one at a time, and `errors.csv`.

use std::path::Path;

use serde::Serialize;

use super::{RunConfig, RunSummary, SampleResult, Status};
use crate::plan::Plan;
use crate::record::{ManifestRef, PipelineRef, RunRecord, SampleEntry, Tool, task_record};
use crate::spec::manifest::Manifest;

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A path as an absolute one where it exists (so `tessera merge` finds it from any folder).
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// A run's samples, their record entries read back one at a time as they are serialised (a
/// study's record is never a tree of its samples in memory).
pub struct Samples<'a>(pub &'a RunSummary);

impl Serialize for Samples<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = ser.serialize_seq(Some(self.0.total))?;
        for e in self.0.entries() {
            seq.serialize_element(&e.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// The record entry of one sample.
pub fn entry(s: &SampleResult) -> SampleEntry {
    SampleEntry {
        sample: s.sample.clone(),
        image: absolute(&s.image),
        input_hashes: s.input_hashes.clone(),
        status: s.status,
        failed_stage: s.failed_stage.clone(),
        error: s.error.clone(),
        spacing: s.spacing.clone(),
        streamed: s.streamed,
        up_to_date: s.up_to_date,
        reused_stages: s.reused.clone(),
        objects: s.objects.clone(),
        stage_seconds: s.timings.clone(),
    }
}

/// The provenance record of a run.
pub fn run_record<'a>(plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &'a RunSummary) -> RunRecord<Samples<'a>> {
    let mut r = record_head(plan, manifest, cfg).with_samples(Samples(summary));
    r.seconds = summary.seconds;
    r.samples_total = summary.total;
    r.samples_failed = summary.not_done();
    r.study_outputs = summary.written.clone();
    r.study_errors = summary.errors.clone();
    r
}

/// A record of `plan` run on `manifest` with `cfg`, finished now, before its samples and
/// counts are filled in (by `run`, and by `tessera watch` for the samples it has finished).
pub fn record_head(plan: &Plan, manifest: &Manifest, cfg: &RunConfig) -> RunRecord<()> {
    RunRecord {
        tessera: Tool { version: env!("CARGO_PKG_VERSION").into(), git_commit: env!("TESSERA_GIT_COMMIT").into() },
        pipeline: PipelineRef {
            name: plan.spec.name.clone(),
            file: absolute(&plan.spec.file),
            hash: plan.hash.clone(),
            text: plan.spec.text.clone(),
        },
        manifest: ManifestRef {
            file: manifest.path.as_ref().map(|p| absolute(p)),
            hash: manifest.hash(),
            columns: manifest.columns.clone(),
            joins: manifest
                .joins
                .iter()
                .map(|j| crate::spec::manifest::Join { table: std::path::PathBuf::from(absolute(&j.table)), ..j.clone() })
                .collect(),
        },
        finished_unix: unix_now(),
        command_line: std::env::args().collect(),
        working_directory: std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        seconds: 0.0,
        threads: cfg.threads,
        tile: cfg.tile.to_string(),
        memory_budget_bytes: cfg.memory,
        host: crate::util::hostname(),
        samples_total: 0,
        samples_failed: 0,
        samples: (),
        study_outputs: Vec::new(),
        study_errors: Vec::new(),
        task: cfg.task,
        merged_from: None,
    }
}

/// Writes `DIR/errors.csv` (SPEC §4: `sample,stage,error`), or removes a stale one when there
/// is nothing to report. Used by `run` and `merge`; the rows are written as they come.
pub fn write_errors_csv(out: &Path, rows: impl Iterator<Item = std::io::Result<[String; 3]>>) -> std::io::Result<()> {
    let path = out.join("errors.csv");
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        return Ok(());
    }
    crate::util::write_atomic_with(&path, |w: &mut dyn std::io::Write| {
        let mut w = csv::Writer::from_writer(w);
        w.write_record(["sample", "stage", "error"]).map_err(std::io::Error::other)?;
        for r in rows {
            w.write_record(&r?).map_err(std::io::Error::other)?;
        }
        w.flush()
    })
}

/// Writes a record as pretty JSON, atomically.
pub fn write_record<S: Serialize>(path: &Path, record: &RunRecord<S>) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    crate::util::write_atomic_with(path, |w: &mut dyn std::io::Write| {
        serde_json::to_writer_pretty(w, record).map_err(std::io::Error::other)
    })
}

/// Writes `run.json`, and `errors.csv` when something failed (removing a stale one otherwise).
/// A sharded task writes its own record under `tasks/` instead, and no `errors.csv`: `tessera
/// merge` writes the study's.
pub fn write_records(out: &Path, plan: &Plan, manifest: &Manifest, cfg: &RunConfig, summary: &RunSummary) -> std::io::Result<()> {
    let record = run_record(plan, manifest, cfg, summary);
    if let Some(task) = cfg.task {
        return write_record(&task_record(out, task), &record);
    }
    write_record(&out.join("run.json"), &record)?;
    // Every sample not done, read back from the run's records (none when all are done).
    let mut entries = (summary.not_done() > 0).then(|| summary.entries()).into_iter().flatten();
    let failed = std::iter::from_fn(move || {
        entries.find_map(|e| match e {
            Ok(s) if s.status == Status::Done => None,
            Ok(s) => Some(Ok([s.sample, s.failed_stage.unwrap_or_default(), s.error.unwrap_or_default()])),
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    });
    write_errors_csv(out, failed.chain(summary.errors.iter().map(|e| Ok([String::new(), "merge".into(), e.clone()]))))
}
