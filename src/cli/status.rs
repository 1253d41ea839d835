//! `tessera status DIR` and `tessera clean DIR`: what an output folder holds, and tidying its
//! checkpoints. Both read only the folder: `run.json`, the per-sample records and the
//! checkpoint store ([`crate::store`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::record::{RunRecord, Status};
use crate::store::{SampleRecord, Store};

/// One sample's state in an output folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleState {
    pub sample: String,
    /// done, failed, missing.
    pub status: &'static str,
    /// Stage id → done (a checkpoint or the sample's outputs), failed, missing.
    pub stages: Vec<(String, &'static str)>,
    pub error: Option<String>,
}

/// The state of every sample the last run knew of.
pub fn states(out: &Path) -> Result<(RunRecord, Vec<SampleState>), String> {
    // run.json, and the records of sharded tasks (the latest record of a sample wins).
    let prov = crate::record::load(out)?;
    let samples = crate::record::latest_samples(&prov);
    let run = prov[0].run.clone();
    let store = Store::new(out);
    let records: BTreeMap<String, SampleRecord> = store.records().into_iter().map(|r| (r.sample.clone(), r)).collect();
    let stage_ids: Vec<String> = run.plan(None, &prov[0].file).map(|p| p.stages.iter().map(|s| s.id.clone()).collect()).unwrap_or_default();
    let mut v = Vec::new();
    for s in samples {
        let id = s.sample.clone();
        let rec = records.get(&id);
        let outputs_present = |r: &SampleRecord| r.outputs.keys().all(|f| out.join(f).is_file());
        let (status, error) = match (rec, s.status) {
            (Some(r), _) if r.complete && r.failed.is_none() && outputs_present(r) => ("done", None),
            (Some(r), _) if r.failed.is_some() => ("failed", r.failed.as_ref().map(|(st, e)| format!("stage '{st}': {e}"))),
            (None, Status::Failed) => {
                ("failed", Some(format!("stage '{}': {}", s.failed_stage.as_deref().unwrap_or("?"), s.error.as_deref().unwrap_or(""))))
            }
            // A run with --no-checkpoint leaves no records: trust run.json.
            (None, Status::Done) if !store.root().join("samples").exists() => ("done", None),
            _ => ("missing", None),
        };
        let failed_stage = rec
            .and_then(|r| r.failed.as_ref().map(|(st, _)| st.clone()))
            .or_else(|| (status == "failed").then(|| s.failed_stage.clone().unwrap_or_default()));
        let stages = stage_ids
            .iter()
            .map(|st| {
                let state = if failed_stage.as_deref() == Some(st.as_str()) {
                    "failed"
                } else if status == "done"
                    || rec.and_then(|r| r.stages.get(st)).is_some_and(|k| store.has(k))
                    || rec.is_some_and(|r| r.outputs.keys().any(|f| f.starts_with(&format!("samples/{id}/{st}."))))
                {
                    "done"
                } else {
                    "missing"
                };
                (st.clone(), state)
            })
            .collect();
        v.push(SampleState { sample: id, status, stages, error });
    }
    Ok((run, v))
}

pub fn cmd_status(out: &Path, json: bool) -> i32 {
    let (run, states) = match states(out) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let count = |k: &str| states.iter().filter(|s| s.status == k).count();
    let (done, failed, missing) = (count("done"), count("failed"), count("missing"));
    if json {
        let v = serde_json::json!({
            "out": out.display().to_string(),
            "pipeline": run.pipeline.name,
            "done": done, "failed": failed, "missing": missing,
            "samples": states.iter().map(|s| serde_json::json!({
                "sample": s.sample, "status": s.status, "error": s.error,
                "stages": s.stages.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let mut so = std::io::stdout().lock();
        let hash = &run.pipeline.hash;
        let _ = writeln!(
            so,
            "{}: pipeline '{}' ({}), {} samples: {done} done, {failed} failed, {missing} missing",
            out.display(),
            run.pipeline.name,
            &hash[..hash.len().min(16)],
            states.len()
        );
        let w = states.iter().map(|s| s.sample.len()).max().unwrap_or(6).max(6);
        for s in &states {
            let stages: Vec<String> = s
                .stages
                .iter()
                .map(|(id, st)| {
                    let mark = match *st {
                        "done" => "✓",
                        "failed" => "✗",
                        _ => "·",
                    };
                    format!("{id} {mark}")
                })
                .collect();
            let _ = writeln!(so, "  {:<w$}  {:<7}  {}", s.sample, s.status, stages.join("  "));
            if let Some(e) = &s.error {
                let _ = writeln!(so, "  {:<w$}           {e}", "");
            }
        }
        let _ = writeln!(so, "(✓ done or checkpointed, ✗ failed here, · not computed)");
        if failed + missing > 0 {
            let _ = writeln!(so, "`tessera run` again to compute only the failed and missing samples.");
        }
    }
    if failed + missing > 0 { 1 } else { 0 }
}

pub fn cmd_clean(out: &Path, all: bool) -> i32 {
    let store = Store::new(out);
    if !store.root().exists() {
        println!("{}: no checkpoints", out.display());
        return 0;
    }
    if all {
        let bytes = dir_size(store.root());
        if let Err(e) = std::fs::remove_dir_all(store.root()) {
            eprintln!("error: {}: {e}", store.root().display());
            return 1;
        }
        println!("removed {} ({}); the next run recomputes every sample", store.root().display(), crate::util::human_bytes(bytes));
        return 0;
    }
    let records = store.records();
    let referenced: std::collections::BTreeSet<&String> = records.iter().flat_map(|r| r.stages.values()).collect();
    let (stale, used): (Vec<String>, Vec<String>) = store.keys().into_iter().partition(|k| !referenced.contains(k));
    let kept = used.len();
    let (n, bytes) = store.remove(&stale);
    println!(
        "removed {n} unreferenced checkpoint file{} ({}); kept {kept} used by {} sample{}",
        if n == 1 { "" } else { "s" },
        crate::util::human_bytes(bytes),
        records.len(),
        if records.len() == 1 { "" } else { "s" }
    );
    0
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
        .sum()
}
