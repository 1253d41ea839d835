//! Writing a run's provenance (SPEC §4): `run.json` (or a task's record under `tasks/`) as a
//! [`RunRecord`], its samples serialised one at a time, and `errors.csv`.

use std::path::Path;

use serde::Serialize;

use super::{RunConfig, RunSummary, SampleResult, Status};
use crate::plan::Plan;
use crate::record::{ManifestRef, PipelineRef, RunRecord, SampleEntry, Tool, task_record};
use crate::spec::manifest::Manifest;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A path as an absolute one where it exists (so `tessera merge` finds it from any folder).
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// A run's samples, turned into record entries one at a time as they are serialised (a
/// study's record is never a tree of thousands of samples in memory).
pub struct Samples<'a>(pub &'a [SampleResult]);

impl Serialize for Samples<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.0.iter().map(entry))
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
        seconds: summary.seconds,
        threads: cfg.threads,
        tile: cfg.tile.to_string(),
        memory_budget_bytes: cfg.memory,
        host: crate::util::hostname(),
        samples_total: summary.samples.len(),
        samples_failed: summary.failed(),
        samples: Samples(&summary.samples),
        study_outputs: summary.written.clone(),
        study_errors: summary.errors.clone(),
        task: cfg.task,
        merged_from: None,
    }
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
    let rows: Vec<[String; 3]> = summary
        .samples
        .iter()
        .filter(|s| s.status != Status::Done)
        .map(|s| [s.sample.clone(), s.failed_stage.clone().unwrap_or_default(), s.error.clone().unwrap_or_default()])
        .chain(summary.errors.iter().map(|e| [String::new(), "merge".into(), e.clone()]))
        .collect();
    write_errors_csv(out, &rows)
}
