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
use crate::spec::manifest::Manifest;
use crate::store::Store;
use crate::table::Table;

/// What a run (or a task of a sharded run) recorded: run.json or tasks/<k>-of-<n>.json.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub file: PathBuf,
    pub json: serde_json::Value,
}

/// The provenance files of an output folder: `run.json` first, then task files in name order.
pub fn provenance(out: &Path) -> Result<Vec<Provenance>, String> {
    let mut files = Vec::new();
    let run = out.join("run.json");
    if run.is_file() {
        files.push(run);
    }
    if let Ok(rd) = std::fs::read_dir(out.join("tasks")) {
        let mut tasks: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        tasks.sort();
        files.extend(tasks);
    }
    if files.is_empty() {
        return Err(format!("{}: no run.json or tasks/*.json (is this a tessera output folder? `tessera run` writes them)", out.display()));
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            Ok(Provenance { file: f, json })
        })
        .collect()
}

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
    let j = &first.json;
    let text = j["pipeline"]["text"].as_str().ok_or_else(|| format!("{}: no pipeline text", first.file.display()))?;
    let pfile = PathBuf::from(j["pipeline"]["file"].as_str().unwrap_or("pipeline.yaml"));
    let mut warnings = Vec::new();
    let manifest = match j["manifest"]["file"].as_str() {
        Some(m) => {
            let m = Manifest::read(Path::new(m)).map_err(|e| format!("{e} (the manifest recorded in {})", first.file.display()))?;
            if let Some(h) = j["manifest"]["hash"].as_str()
                && h != m.hash()
            {
                warnings.push(format!(
                    "{} changed since the run: samples are merged as it lists them now",
                    m.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                ));
            }
            m
        }
        None => {
            // Images named on the command line: every provenance file lists its samples.
            let mut images = Vec::new();
            for p in prov {
                for s in p.json["samples"].as_array().into_iter().flatten() {
                    images.push((s["sample"].as_str().unwrap_or("").to_string(), PathBuf::from(s["image"].as_str().unwrap_or(""))));
                }
            }
            images.sort();
            images.dedup();
            Manifest::from_images(&images.into_iter().map(|(_, p)| p).collect::<Vec<_>>())
        }
    };
    let (spec, diags) = crate::spec::parse_str(&pfile, text.to_string());
    let spec = spec.ok_or_else(|| {
        let msgs: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
        format!("the pipeline recorded in {} no longer parses: {}", first.file.display(), msgs.join("; "))
    })?;
    let firstrow = manifest.rows.iter().find(|r| r.problem.is_none());
    match crate::plan::compile(spec, Some(&manifest.columns), firstrow) {
        (Some(plan), d) if d.is_empty() => Ok((plan, manifest, warnings)),
        (_, d) => Err(format!(
            "the pipeline recorded in {} does not compile against the manifest: {}",
            first.file.display(),
            d.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("; ")
        )),
    }
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
    let prov = provenance(out)?;
    let (plan, manifest, warnings) = study(&prov)?;
    let store = Store::new(out);
    // Provenance per sample: the latest file that lists it wins (tasks re-run later come last
    // by name only when re-submitted under the same name; status comes from records first).
    let mut recorded: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut task_count = None;
    for p in &prov {
        if let Some(n) = p.json["task"]["count"].as_u64() {
            task_count = Some(n as usize);
        }
        for s in p.json["samples"].as_array().into_iter().flatten() {
            recorded.insert(s["sample"].as_str().unwrap_or("").to_string(), s.clone());
        }
    }
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
            None => prov_s.is_some_and(|s| s["status"] == "done"),
        };
        if !done {
            match prov_s.filter(|s| s["status"] == "failed") {
                Some(s) => {
                    not_done.push(nd("failed", s["failed_stage"].as_str().map(str::to_string), s["error"].as_str().map(str::to_string)))
                }
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
        if spacing.is_none()
            && let Some(sp) = prov_s.map(|s| &s["spacing"])
            && let (Some(z), Some(u)) = (sp["zyx"].as_array(), sp["unit"].as_str())
        {
            let v: Vec<f64> = z.iter().filter_map(|x| x.as_f64()).collect();
            if v.len() == 3 {
                spacing = Some(Spacing { zyx: [v[0], v[1], v[2]], unit: u.to_string() });
            }
        }
        tables.push((idx, ts));
    }
    let load = |k: usize| -> Result<Vec<(usize, Table)>, String> {
        let (idx, sources) = &tables[k];
        let row = &manifest.rows[*idx];
        sources.iter().map(|s| Ok((s.stage, s.read(&store, row)?))).collect()
    };
    let ids = tables.iter().map(|(idx, _)| manifest.rows[*idx].id.as_str()).collect();
    let (written, errors) = if not_done.is_empty() || allow_missing {
        super::study::write(&plan, out, &super::study::Samples { ids, tables: &load }, &spacing.unwrap_or_default())
    } else {
        (Vec::new(), Vec::new())
    };
    let mut errors = errors;
    if let Err(e) = write_errors_csv(out, &not_done, &errors) {
        errors.push(format!("errors.csv: {e}"));
    }
    if prov.iter().any(|p| p.json["task"].is_object())
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
    crate::report::write_errors_csv(out, &rows)
}

/// The study's `run.json` after a sharded run: the tasks' provenance with every sample in
/// manifest order (the latest record of each), and the task records it came from.
fn write_study_record(out: &Path, prov: &[Provenance], manifest: &Manifest) -> std::io::Result<()> {
    let tasks: Vec<&Provenance> = prov.iter().filter(|p| p.json["task"].is_object()).collect();
    let mut base = tasks.last().map(|p| p.json.clone()).unwrap_or_default();
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for p in &tasks {
        for s in p.json["samples"].as_array().into_iter().flatten() {
            latest.insert(s["sample"].as_str().unwrap_or("").to_string(), s.clone());
        }
    }
    let samples: Vec<serde_json::Value> = manifest.rows.iter().filter_map(|r| latest.get(&r.id).cloned()).collect();
    let failed = samples.iter().filter(|s| s["status"] != "done").count();
    base["samples_total"] = serde_json::json!(manifest.rows.len());
    base["samples_failed"] = serde_json::json!(failed + manifest.rows.len() - samples.len());
    base["samples"] = serde_json::Value::Array(samples);
    base["task"] = serde_json::Value::Null;
    base["merged_from"] =
        serde_json::json!(tasks.iter().map(|p| p.file.strip_prefix(out).unwrap_or(&p.file).display().to_string()).collect::<Vec<_>>());
    let text = serde_json::to_string_pretty(&base).map_err(std::io::Error::other)?;
    crate::util::write_atomic(&out.join("run.json"), text.as_bytes())
}
