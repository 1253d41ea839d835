//! `tessera merge DIR`: the study-level outputs (merged tables, statistics) from the per-sample
//! results already in an output folder — after a sharded array job, or to redo them.
//!
//! It reads the provenance (`run.json`, and `tasks/*.json` that sharded tasks write), compiles
//! the pipeline text recorded there, reads the manifest recorded there, and classifies every
//! manifest sample as done, failed or missing (with the shard that owned it, when sharded).
//! Tables of done samples come from the checkpoint store, or else from the sample's Parquet
//! file; then [`super::study::write`] writes exactly what an unsharded run writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::io::Spacing;
use crate::ops::Kind;
use crate::ops::Value;
use crate::plan::Plan;
use crate::record::{Provenance, SampleEntry, Status, latest_samples};
use crate::spec::manifest::Manifest;
use crate::store::Store;
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

/// The pipeline and manifest a folder was made with.
pub fn study(prov: &[Provenance]) -> Result<(Plan, Manifest, Vec<String>), String> {
    let first = &prov[0];
    let r = &first.run;
    let mut warnings = Vec::new();
    let manifest = match &r.manifest.file {
        Some(m) => {
            let m = Manifest::read_joined(Path::new(m), &r.manifest.joins)
                .map_err(|e| format!("{e} (the manifest recorded in {})", first.file.display()))?;
            if !r.manifest.hash.is_empty() && r.manifest.hash != m.hash() {
                warnings.push(format!(
                    "{} changed since the run: samples are merged as it lists them now",
                    m.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                ));
            }
            m
        }
        None => {
            // Images named on the command line: every provenance file lists its samples.
            let mut images: Vec<(String, PathBuf)> =
                prov.iter().flat_map(|p| p.run.samples.iter().map(|s| (s.sample.clone(), PathBuf::from(&s.image)))).collect();
            images.sort();
            images.dedup();
            Manifest::from_images(&images.into_iter().map(|(_, p)| p).collect::<Vec<_>>())
        }
    };
    let plan = r.plan(Some(&manifest), &first.file)?;
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

/// Merges an output folder. When samples are failed or missing, nothing is written unless
/// `allow_missing` (then the merged outputs hold the samples that are done, as an unsharded run
/// with failures writes them).
pub fn merge(out: &Path, allow_missing: bool) -> Result<MergeReport, String> {
    let prov = crate::record::load(out)?;
    let (plan, manifest, warnings) = study(&prov)?;
    let store = Store::new(out);
    // Provenance per sample: the latest file that lists it wins (tasks re-run later come last
    // by name only when re-submitted under the same name; status comes from records first).
    let task_count = prov.iter().filter_map(|p| p.run.task.map(|t| t.count)).next_back();
    let recorded: BTreeMap<String, SampleEntry> = latest_samples(&prov).into_iter().map(|s| (s.sample.clone(), s)).collect();
    let stages = table_stages(&plan);
    let mut not_done = Vec::new();
    // Done samples (manifest index) and where their tables are.
    let mut tables: Vec<(usize, Vec<TableSource>)> = Vec::new();
    let mut spacing: Option<Spacing> = None;
    for (idx, row) in manifest.rows.iter().enumerate() {
        let task = task_count.map(|n| idx % n + 1);
        let nd = |status: &'static str, stage: Option<String>, error: Option<String>| NotDone {
            sample: row.id.clone(),
            status,
            stage,
            error,
            task,
        };
        if let Some(p) = &row.problem {
            not_done.push(nd("failed", Some("manifest".into()), Some(p.clone())));
            continue;
        }
        let rec = store.record(&row.id);
        let prov_s = recorded.get(&row.id);
        if let Some(r) = &rec
            && let Some((st, e)) = &r.failed
        {
            not_done.push(nd("failed", Some(st.clone()), Some(e.clone())));
            continue;
        }
        let done = match &rec {
            Some(r) => r.complete && r.outputs.keys().all(|f| out.join(f).is_file()),
            None => prov_s.is_some_and(|s| s.status == Status::Done),
        };
        if !done {
            match prov_s.filter(|s| s.status == Status::Failed) {
                Some(s) => not_done.push(nd("failed", s.failed_stage.clone(), s.error.clone())),
                None => not_done.push(nd("missing", None, None)),
            }
            continue;
        }
        // Where each table will be read from (checked here, read when the study is written):
        // the checkpoint, else the sample's Parquet file.
        let mut ts = Vec::new();
        for &i in &stages {
            let id = &plan.stages[i].id;
            let key = rec.as_ref().and_then(|r| r.stages.get(id)).filter(|k| store.has(k)).cloned();
            let p = out.join("samples").join(&row.id).join(format!("{id}.parquet"));
            if key.is_none() && !p.is_file() {
                not_done.push(nd(
                    "missing",
                    Some(id.clone()),
                    Some(format!("no checkpoint and no {} for table '{id}': re-run the sample", p.display())),
                ));
                ts.clear();
                break;
            }
            ts.push(TableSource { stage: i, key, parquet: p });
        }
        if ts.len() != stages.len() {
            continue;
        }
        if spacing.is_none() {
            spacing = prov_s.and_then(|s| s.spacing.clone());
        }
        tables.push((idx, ts));
    }
    let load = |k: usize| {
        let (idx, sources) = &tables[k];
        let row = &manifest.rows[*idx];
        (row.id.clone(), sources.iter().map(|s| Ok((s.stage, s.read(&store, row)?))).collect())
    };
    let (written, errors) = if not_done.is_empty() || allow_missing {
        super::study::write(&plan, out, &super::study::Samples { count: tables.len(), get: &load }, &spacing.unwrap_or_default())
    } else {
        (Vec::new(), Vec::new())
    };
    let mut errors = errors;
    if let Err(e) = write_errors_csv(out, &not_done, &errors) {
        errors.push(format!("errors.csv: {e}"));
    }
    if prov.iter().any(|p| p.run.task.is_some())
        && let Err(e) = write_study_record(out, &prov, &manifest)
    {
        errors.push(format!("run.json: {e}"));
    }
    let mut tasks_to_rerun: Vec<usize> = not_done.iter().filter_map(|n| n.task).collect();
    tasks_to_rerun.sort();
    tasks_to_rerun.dedup();
    Ok(MergeReport { samples: manifest.rows.len(), done: tables.len(), not_done, tasks_to_rerun, task_count, written, errors, warnings })
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
/// manifest order (the latest record of each), and the task records it came from.
fn write_study_record(out: &Path, prov: &[Provenance], manifest: &Manifest) -> std::io::Result<()> {
    let tasks: Vec<Provenance> = prov.iter().filter(|p| p.run.task.is_some()).cloned().collect();
    let Some(last) = tasks.last() else { return Ok(()) };
    let latest: BTreeMap<String, SampleEntry> = latest_samples(&tasks).into_iter().map(|s| (s.sample.clone(), s)).collect();
    let samples: Vec<SampleEntry> = manifest.rows.iter().filter_map(|r| latest.get(&r.id).cloned()).collect();
    let failed = samples.iter().filter(|s| s.status != Status::Done).count();
    let mut base = last.run.clone();
    base.samples_total = manifest.rows.len();
    base.samples_failed = failed + manifest.rows.len() - samples.len();
    base.samples = samples;
    base.task = None;
    base.merged_from = Some(tasks.iter().map(|p| p.file.strip_prefix(out).unwrap_or(&p.file).display().to_string()).collect());
    super::provenance::write_record(&out.join("run.json"), &base)
}
