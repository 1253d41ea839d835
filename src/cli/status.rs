//! `tessera status DIR` and `tessera clean DIR`: what an output folder holds, and tidying its
//! checkpoints. Both read only the folder: `run.json`, the per-sample records and the
//! checkpoint store ([`crate::store`]).

use std::io::Write;
use std::path::Path;

use crate::record::{RunRecord, SampleEntry, Status};
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

/// Told the run's record, the numbers of done, failed and missing samples, and the length of
/// the longest sample id.
pub type Counts<'a> = dyn FnMut(&RunRecord<()>, [usize; 3], usize) + 'a;

/// A sample's status in the folder (done, failed, missing) and why it failed, from its
/// record entry and its checkpoint record.
fn status_of(out: &Path, store: &Store, s: &SampleEntry, rec: Option<&SampleRecord>) -> (&'static str, Option<String>) {
    let outputs_present = |r: &SampleRecord| r.outputs.keys().all(|f| out.join(f).is_file());
    match (rec, s.status) {
        (Some(r), _) if r.complete && r.failed.is_none() && outputs_present(r) => ("done", None),
        (Some(r), _) if r.failed.is_some() => ("failed", r.failed.as_ref().map(|(st, e)| format!("stage '{st}': {e}"))),
        (None, Status::Failed) => {
            ("failed", Some(format!("stage '{}': {}", s.failed_stage.as_deref().unwrap_or("?"), s.error.as_deref().unwrap_or(""))))
        }
        // A run with --no-checkpoint leaves no records: trust run.json.
        (None, Status::Done) if !store.root().join("samples").exists() => ("done", None),
        _ => ("missing", None),
    }
}

/// A sample's state, stage by stage (`stage_ids` in plan order).
fn state_of(out: &Path, store: &Store, s: SampleEntry, stage_ids: &[String]) -> SampleState {
    let rec = store.record(&s.sample);
    let rec = rec.as_ref();
    let (status, error) = status_of(out, store, &s, rec);
    let id = s.sample;
    let failed_stage = rec
        .and_then(|r| r.failed.as_ref().map(|(st, _)| st.clone()))
        .or_else(|| (status == "failed").then(|| s.failed_stage.unwrap_or_default()));
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
    SampleState { sample: id, status, stages, error }
}

/// The state of every sample the last run knew of, one at a time, after the counts of done,
/// failed and missing samples, the longest sample id and the run's record: two passes over the records (the latest
/// entry of each sample, [`crate::record::each_latest`]), so that a folder of a million samples
/// is never held.
pub fn each_state(out: &Path, counts: &mut Counts, f: &mut dyn FnMut(SampleState)) -> Result<(), String> {
    let store = Store::new(out);
    let mut n = [0usize; 3];
    let mut longest = 0;
    let (file, run) = crate::record::each_latest(out, &mut |s| {
        longest = longest.max(s.sample.len());
        let (status, _) = status_of(out, &store, &s, store.record(&s.sample).as_ref());
        n[["done", "failed", "missing"].iter().position(|k| *k == status).unwrap_or(2)] += 1;
        Ok(())
    })?;
    counts(&run, n, longest);
    let stage_ids: Vec<String> = run.plan(None, &file).map(|p| p.stages.iter().map(|s| s.id.clone()).collect()).unwrap_or_default();
    crate::record::each_latest(out, &mut |s| {
        f(state_of(out, &store, s, &stage_ids));
        Ok(())
    })?;
    Ok(())
}

/// A split run's phases, in text (`tessera status`).
fn split_text(p: &crate::exec::split::Progress) -> String {
    let mut t = format!("split into {} z-blocks per sample: {} phases, then the final run\n", p.blocks, p.phases.len());
    for ph in &p.phases {
        let (how, what) = (crate::exec::split::how(ph.blocks), &ph.work);
        let unit = if ph.blocks { "blocks" } else { "sample tasks" };
        let mark = match p.current {
            Some(c) if c == ph.phase => "  ← running or next",
            _ => "",
        };
        let failed = if ph.failed > 0 { format!(", {} failed", ph.failed) } else { String::new() };
        t +=
            &format!("  phase {} of {} ({how}: {what}): {} of {} {unit} done{failed}{mark}\n", ph.phase, p.phases.len(), ph.done, ph.units);
        for e in ph.errors.iter().take(20) {
            t += &format!("      ✗ {e}\n");
        }
        if ph.errors.len() > 20 {
            t += &format!("      … and {} more\n", ph.errors.len() - 20);
        }
    }
    if p.current.is_none() {
        t += "  every phase complete: the final run's state follows\n";
    }
    t
}

/// What `watch.json` says, for `tessera status`: the watch, whether its process still runs,
/// and the pending samples (as text, or a JSON value).
fn watch_status(out: &Path) -> Option<(String, serde_json::Value)> {
    let rec = match crate::exec::watch::WatchRecord::load(out)? {
        Ok(r) => r,
        Err(e) => return Some((format!("watch: {e}\n"), serde_json::json!({"error": e}))),
    };
    let alive = rec.host == crate::util::hostname() && crate::util::pid_alive(rec.pid) && rec.state == "watching";
    let how = if alive { format!("process {} running", rec.pid) } else { format!("not running ({})", rec.state) };
    let what = match &rec.pattern {
        Some(p) => format!("{} ({p})", rec.source),
        None => rec.source.clone(),
    };
    let mut t = format!("watch of {what}: {how}; {} finished, {} pending\n", rec.finished.len(), rec.pending.len());
    let w = rec.pending.iter().map(|p| p.sample.len()).max().unwrap_or(0).max(6);
    for p in rec.pending.iter().take(50) {
        t += &format!("  {:<w$}  pending  {}\n", p.sample, p.reason);
    }
    if rec.pending.len() > 50 {
        t += &format!("  … and {} more pending (watch.json lists them)\n", rec.pending.len() - 50);
    }
    let v = serde_json::json!({
        "source": rec.source, "pattern": rec.pattern, "sentinel": rec.sentinel, "pid": rec.pid, "host": rec.host,
        "running": alive, "state": rec.state, "finished": rec.finished.len(), "pending": rec.pending,
    });
    Some((t, v))
}

pub fn cmd_status(out: &Path, json: bool) -> i32 {
    let watch = watch_status(out);
    if let Some((text, v)) = &watch
        && !out.join("run.json").is_file()
    {
        // A watch that has not finished a sample yet.
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"out": out.display().to_string(), "watch": v})).unwrap_or_default()
            );
        } else {
            print!("{}: {text}", out.display());
        }
        return 0;
    }
    let split = crate::exec::split::progress(out);
    if let Some(p) = &split
        && !out.join("run.json").is_file()
    {
        // Phases of a split run, before its final run wrote run.json.
        if json {
            let v = serde_json::json!({"out": out.display().to_string(), "split": p});
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print!("{}: {}", out.display(), split_text(p));
        }
        return 1;
    }
    if let (Some(p), false) = (&split, json) {
        print!("{}", split_text(p));
    }
    let so = std::cell::RefCell::new(std::io::stdout().lock());
    let mut totals = [0usize; 3];
    let mut first = true;
    let w = std::cell::Cell::new(6);
    let res = each_state(
        out,
        &mut |run, [done, failed, missing], longest| {
            let mut so = so.borrow_mut();
            totals = [done, failed, missing];
            w.set(longest.max(6));
            if json {
                let mut head = serde_json::json!({
                    "out": out.display().to_string(),
                    "pipeline": run.pipeline.name,
                    "done": done, "failed": failed, "missing": missing,
                });
                if let (Some(p), Some(o)) = (&split, head.as_object_mut()) {
                    o.insert("split".into(), serde_json::json!(p));
                }
                if let (Some((_, v)), Some(o)) = (&watch, head.as_object_mut()) {
                    o.insert("watch".into(), v.clone());
                }
                // The object without its closing brace: the samples follow, one at a time.
                let text = serde_json::to_string_pretty(&head).unwrap_or_default();
                let _ = write!(so, "{},\n  \"samples\": [", text.trim_end().trim_end_matches('}').trim_end());
            } else {
                let hash = &run.pipeline.hash;
                let _ = writeln!(
                    so,
                    "{}: pipeline '{}' ({}), {} samples: {done} done, {failed} failed, {missing} missing",
                    out.display(),
                    run.pipeline.name,
                    &hash[..hash.len().min(16)],
                    done + failed + missing
                );
            }
        },
        &mut |s| {
            let mut so = so.borrow_mut();
            if json {
                let v = serde_json::json!({
                    "sample": s.sample, "status": s.status, "error": s.error,
                    "stages": s.stages.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                });
                let _ = write!(so, "{}\n    {}", if first { "" } else { "," }, serde_json::to_string(&v).unwrap_or_default());
            } else {
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
                let w = w.get();
                let _ = writeln!(so, "  {:<w$}  {:<7}  {}", s.sample, s.status, stages.join("  "));
                if let Some(e) = &s.error {
                    let _ = writeln!(so, "  {:<w$}           {e}", "");
                }
            }
            first = false;
        },
    );
    let mut so = so.into_inner();
    if let Err(e) = res {
        drop(so);
        eprintln!("error: {e}");
        return 2;
    }
    let [_, failed, missing] = totals;
    if json {
        let _ = writeln!(so, "{}]\n}}", if first { "" } else { "\n  " });
    } else {
        let _ = writeln!(so, "(✓ done or checkpointed, ✗ failed here, · not computed)");
        if let Some((text, _)) = &watch {
            let _ = write!(so, "{text}");
        }
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
    // A split run's files of samples it finished go; while a sample is still in its phases, its
    // checkpoints are not referenced by a record yet, so none is removed.
    let split = store.root().join("split");
    let (mut split_bytes, mut unfinished) = (0u64, 0usize);
    for e in std::fs::read_dir(&split).into_iter().flatten().flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let sample = e.file_name().to_string_lossy().into_owned();
        if store.record(&sample).is_some_and(|r| r.complete && r.failed.is_none()) {
            split_bytes += dir_size(&path);
            let _ = std::fs::remove_dir_all(&path);
        } else {
            unfinished += 1;
        }
    }
    if split_bytes > 0 {
        println!("removed the split-run files of finished samples ({})", crate::util::human_bytes(split_bytes));
    }
    if unfinished > 0 {
        println!(
            "{unfinished} sample{} of a split run {} not finished: every checkpoint kept (their phases need them)",
            if unfinished == 1 { "" } else { "s" },
            if unfinished == 1 { "is" } else { "are" }
        );
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
