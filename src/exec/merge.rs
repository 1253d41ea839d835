//! `tessera merge DIR`: the study-level outputs (merged tables, statistics) from the per-sample
//! results already in an output folder — after a sharded array job, or to redo them.
//!
//! It reads the provenance (`run.json`, and `tasks/*.json` that sharded tasks write), compiles
//! the pipeline text recorded there, reads the manifest recorded there, and classifies every
//! manifest sample as done, failed or missing (with the shard that owned it, when sharded).
//! Tables of done samples come from the checkpoint store, or else from the sample's Parquet
//! file; then [`super::study::write`] writes exactly what an unsharded run writes.

use std::path::{Path, PathBuf};

use crate::io::Spacing;
use crate::ops::Kind;
use crate::ops::Value;
use crate::plan::Plan;
use crate::record::{SampleEntry, Status};
use crate::spec::manifest::{Manifest, SampleRow};
use crate::store::{SampleRecord, Store};
use crate::table::Table;

/// A sample that is not done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotDone {
    pub sample: String,
    /// failed or missing.
    pub status: &'static str,
    pub stage: Option<String>,
    pub error: Option<String>,
    /// The shard (1-based) that owns the sample, when the run was sharded.
    pub task: Option<usize>,
}

/// What `merge` found and wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub samples: usize,
    pub done: usize,
    pub not_done: Vec<NotDone>,
    /// Tasks (1-based) with a sample not done, and the task count.
    pub tasks_to_rerun: Vec<usize>,
    pub task_count: Option<usize>,
    pub written: Vec<PathBuf>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The latest record entry of each sample across an output folder's record files (later files
/// win, as [`crate::record::latest_samples`]), set aside on disk: memory holds a 128-bit hash of
/// each id and where its entry is (about 40 bytes per sample), so a study of a million samples
/// merges in bounded memory. The file is a temporary one in `.tessera/`.
struct Latest {
    spill: super::study::Spill,
    /// Hash of the id → (record number in the spill, from a task record).
    at: std::collections::HashMap<[u64; 2], (u32, bool)>,
    /// Each record file with its record (without samples), in reading order.
    heads: Vec<(PathBuf, crate::record::RunRecord<()>)>,
}

impl Latest {
    fn read(out: &Path) -> Result<Latest, String> {
        let files = crate::record::files(out)?;
        let spill = super::study::Spill::create(out, "merge-records", 0)?;
        let mut at = std::collections::HashMap::new();
        let mut heads = Vec::new();
        let mut n = 0u32;
        for f in files {
            let task = f.starts_with(out.join("tasks"));
            let head = crate::record::each_entry(&f, &mut |e| {
                let bytes = serde_json::to_vec(&e).map_err(|e| e.to_string())?;
                spill.put(n as usize, 0, &bytes)?;
                at.insert(crate::util::hash128(e.sample.as_bytes()), (n, task));
                n += 1;
                Ok(())
            })?;
            heads.push((f, head));
        }
        Ok(Latest { spill, at, heads })
    }

    /// The latest entry of sample `id`, and whether a task record gave it.
    fn get(&self, id: &str) -> Result<Option<(SampleEntry, bool)>, String> {
        let Some(&(n, task)) = self.at.get(&crate::util::hash128(id.as_bytes())) else { return Ok(None) };
        let bytes = self.spill.get(n as usize)?.into_iter().next().map(|(_, b)| b).unwrap_or_default();
        let e: SampleEntry = serde_json::from_slice(&bytes).map_err(|e| format!("a set-aside record does not read back: {e}"))?;
        // Two ids with one hash (a chance of about 10⁻²⁷ among a million) are told apart here.
        Ok((e.sample == id).then_some((e, task)))
    }
}

/// The pipeline and manifest a folder was made with (the manifest opened to be streamed).
fn study(latest: &Latest) -> Result<(Plan, Manifest, Vec<String>), String> {
    let (file, r) = &latest.heads[0];
    let mut warnings = Vec::new();
    let manifest = match &r.manifest.file {
        Some(m) => {
            let m = Manifest::open(Path::new(m), &r.manifest.joins)
                .map_err(|e| format!("{e} (the manifest recorded in {})", file.display()))?;
            if !r.manifest.hash.is_empty() && r.manifest.hash != m.hash() {
                warnings.push(format!(
                    "{} changed since the run: samples are merged as it lists them now",
                    m.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                ));
            }
            m
        }
        None => {
            // Images named on the command line (a short list): every record lists its samples.
            let mut images: Vec<(String, PathBuf)> = Vec::new();
            for (f, _) in &latest.heads {
                crate::record::each_entry(f, &mut |s| {
                    images.push((s.sample, PathBuf::from(&s.image)));
                    Ok(())
                })?;
            }
            images.sort();
            images.dedup();
            Manifest::from_images(&images.into_iter().map(|(_, p)| p).collect::<Vec<_>>())
        }
    };
    let plan = r.plan(Some(&manifest), file)?;
    Ok((plan, manifest, warnings))
}

/// Table stages a study needs: merged outputs and the statistics table.
fn table_stages(plan: &Plan) -> Vec<usize> {
    let mut v: Vec<usize> = plan.outputs.iter().map(|(i, _)| *i).filter(|i| plan.stages[*i].kind == Kind::Table).collect();
    if let Some(st) = &plan.stats
        && !v.contains(&st.table)
    {
        v.push(st.table);
    }
    v
}

/// Where a done sample's tables will be read from (the checkpoint, else the sample's Parquet
/// file), or why one cannot be: (stage, error).
fn table_sources(
    plan: &Plan,
    store: &Store,
    out: &Path,
    stages: &[usize],
    row: &SampleRow,
    rec: Option<&SampleRecord>,
) -> Result<Vec<TableSource>, (String, String)> {
    stages
        .iter()
        .map(|&i| {
            let id = &plan.stages[i].id;
            let key = rec.and_then(|r| r.stages.get(id)).filter(|k| store.has(k)).cloned();
            let p = out.join("samples").join(&row.id).join(format!("{id}.parquet"));
            if key.is_none() && !p.is_file() {
                return Err((id.clone(), format!("no checkpoint and no {} for table '{id}': re-run the sample", p.display())));
            }
            Ok(TableSource { stage: i, key, parquet: p })
        })
        .collect()
}

/// Merges an output folder. When samples are failed or missing, nothing is written unless
/// `allow_missing` (then the merged outputs hold the samples that are done, as an unsharded run
/// with failures writes them). The manifest and the records are read one sample at a time.
pub fn merge(out: &Path, allow_missing: bool) -> Result<MergeReport, String> {
    let latest = Latest::read(out)?;
    let (plan, manifest, warnings) = study(&latest)?;
    let store = Store::new(out);
    let task_count = latest.heads.iter().filter_map(|(_, h)| h.task.map(|t| t.count)).next_back();
    let stages = table_stages(&plan);
    let mut not_done = Vec::new();
    // Done samples (manifest row) in order; the study record's counts.
    let mut done_rows: Vec<u32> = Vec::new();
    let (mut in_tasks, mut failed_in_tasks) = (0usize, 0usize);
    let mut spacing: Option<Spacing> = None;
    for (idx, row) in manifest.each().map_err(|e| e.to_string())?.enumerate() {
        let row = row.map_err(|e| e.to_string())?;
        let task = task_count.map(|n| idx % n + 1);
        let nd = |status: &'static str, stage: Option<String>, error: Option<String>| NotDone {
            sample: row.id.clone(),
            status,
            stage,
            error,
            task,
        };
        let prov_s = latest.get(&row.id)?;
        if let Some((s, true)) = &prov_s {
            in_tasks += 1;
            failed_in_tasks += (s.status != Status::Done) as usize;
        }
        let prov_s = prov_s.map(|(s, _)| s);
        if let Some(p) = &row.problem {
            not_done.push(nd("failed", Some("manifest".into()), Some(p.clone())));
            continue;
        }
        let rec = store.record(&row.id);
        if let Some(r) = &rec
            && let Some((st, e)) = &r.failed
        {
            not_done.push(nd("failed", Some(st.clone()), Some(e.clone())));
            continue;
        }
        let done = match &rec {
            Some(r) => r.complete && r.outputs.keys().all(|f| out.join(f).is_file()),
            None => prov_s.as_ref().is_some_and(|s| s.status == Status::Done),
        };
        if !done {
            match prov_s.filter(|s| s.status == Status::Failed) {
                Some(s) => not_done.push(nd("failed", s.failed_stage.clone(), s.error.clone())),
                None => not_done.push(nd("missing", None, None)),
            }
            continue;
        }
        // Where each table will be read from, checked here and found again when read.
        if let Err((stage, e)) = table_sources(&plan, &store, out, &stages, &row, rec.as_ref()) {
            not_done.push(nd("missing", Some(stage), Some(e)));
            continue;
        }
        if spacing.is_none() {
            spacing = prov_s.and_then(|s| s.spacing.clone());
        }
        done_rows.push(idx as u32);
    }
    // The done samples' tables, in order, found again as the manifest is read again (study::write
    // reads them in order, twice).
    let each = |visit: &mut super::study::Visit| {
        let mut want = done_rows.iter().map(|&r| r as usize).peekable();
        let rows = match manifest.each() {
            Ok(rows) => rows,
            Err(e) => {
                if let Some(first) = want.next() {
                    visit(&format!("row {}", first + 1), Err(e.to_string()));
                }
                return;
            }
        };
        for (idx, row) in rows.enumerate() {
            let Some(&next) = want.peek() else { break };
            if idx != next {
                continue;
            }
            want.next();
            let (id, tables) = match row {
                Ok(row) => {
                    let rec = store.record(&row.id);
                    let tables = table_sources(&plan, &store, out, &stages, &row, rec.as_ref())
                        .map_err(|(_, e)| e)
                        .and_then(|ts| ts.iter().map(|s| Ok((s.stage, s.read(&store, &row)?))).collect());
                    (row.id, tables)
                }
                Err(e) => (format!("row {}", idx + 1), Err(e.to_string())),
            };
            if !visit(&id, tables) {
                return;
            }
        }
        if let Some(next) = want.next() {
            visit(&format!("row {}", next + 1), Err("the manifest no longer reads as it did when merging began".into()));
        }
    };
    let (written, errors) = if not_done.is_empty() || allow_missing {
        super::study::write(&plan, out, &super::study::Samples { each: &each }, &spacing.unwrap_or_default())
    } else {
        (Vec::new(), Vec::new())
    };
    let mut errors = errors;
    if let Err(e) = write_errors_csv(out, &not_done, &errors) {
        errors.push(format!("errors.csv: {e}"));
    }
    if task_count.is_some()
        && let Err(e) = write_study_record(out, &latest, &manifest, (in_tasks, failed_in_tasks))
    {
        errors.push(format!("run.json: {e}"));
    }
    let mut tasks_to_rerun: Vec<usize> = not_done.iter().filter_map(|n| n.task).collect();
    tasks_to_rerun.sort();
    tasks_to_rerun.dedup();
    Ok(MergeReport { samples: manifest.len(), done: done_rows.len(), not_done, tasks_to_rerun, task_count, written, errors, warnings })
}

/// Where a done sample's table is: its checkpoint, else its Parquet file.
struct TableSource {
    stage: usize,
    key: Option<String>,
    parquet: PathBuf,
}

impl TableSource {
    fn read(&self, store: &Store, row: &crate::spec::manifest::SampleRow) -> Result<Table, String> {
        if let Some(Value::Table(t)) = self.key.as_ref().and_then(|k| store.load(k)) {
            return Ok(t.for_sample(&row.id, &row.meta));
        }
        // A sample's Parquet holds `sample`, `label`, metadata as written; rebuild it from the
        // measurements so the current manifest's metadata is used.
        let t = crate::table::read::read_exact(&self.parquet)?;
        let mut bare = Table::default();
        for (n, c, u) in t.columns {
            if n != "sample" && !row.meta.iter().any(|(k, _)| *k == n) {
                bare.columns.push((n, c, u));
            }
        }
        Ok(bare.for_sample(&row.id, &row.meta))
    }
}

/// `errors.csv` (SPEC §4) for the study: every sample not done (with its task), and problems
/// merging; removed when there are none.
fn write_errors_csv(out: &Path, not_done: &[NotDone], errors: &[String]) -> std::io::Result<()> {
    let rows: Vec<[String; 3]> = not_done
        .iter()
        .map(|n| {
            let task = n.task.map(|t| format!(" (task {t})")).unwrap_or_default();
            let error = match (&n.error, n.status) {
                (Some(e), "failed") => format!("{e}{task}"),
                (Some(e), _) => format!("missing: {e}{task}"),
                (None, _) => format!("missing: no result{task}"),
            };
            [n.sample.clone(), n.stage.clone().unwrap_or_default(), error]
        })
        .chain(errors.iter().map(|e| [String::new(), "merge".into(), e.clone()]))
        .collect();
    super::provenance::write_errors_csv(out, rows.into_iter().map(Ok))
}

/// The study's `run.json` after a sharded run: the tasks' provenance with every sample in
/// manifest order (the latest task record entry of each, read back one at a time), and the task
/// records it came from. `counts`: the samples the tasks list, and how many of them failed.
fn write_study_record(out: &Path, latest: &Latest, manifest: &Manifest, counts: (usize, usize)) -> std::io::Result<()> {
    struct InOrder<'a>(&'a Latest, &'a Manifest);
    impl serde::Serialize for InOrder<'_> {
        fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeSeq};
            let mut seq = ser.serialize_seq(None)?;
            for row in self.1.each().map_err(S::Error::custom)? {
                let row = row.map_err(S::Error::custom)?;
                if let Some((e, true)) = self.0.get(&row.id).map_err(S::Error::custom)? {
                    seq.serialize_element(&e)?;
                }
            }
            seq.end()
        }
    }
    let tasks: Vec<&(PathBuf, crate::record::RunRecord<()>)> = latest.heads.iter().filter(|(_, h)| h.task.is_some()).collect();
    let Some((_, last)) = tasks.last() else { return Ok(()) };
    let (listed, failed) = counts;
    let mut base = last.clone().with_samples(InOrder(latest, manifest));
    base.samples_total = manifest.len();
    base.samples_failed = failed + manifest.len() - listed;
    base.task = None;
    base.merged_from = Some(tasks.iter().map(|(f, _)| f.strip_prefix(out).unwrap_or(f).display().to_string()).collect());
    super::provenance::write_record(&out.join("run.json"), &base)
}
