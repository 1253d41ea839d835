//! The provenance record of a run (SPEC §4): `run.json`, and `tasks/task-K-of-N.json` for each
//! task of a sharded run. One typed structure, [`RunRecord`]: `run` writes it (its samples
//! serialised one at a time, [`crate::exec::provenance`]), `merge` rewrites it for a sharded
//! study, and `merge`, `status` and `report` read it through one loader ([`load`]) and compile
//! the pipeline recorded in it one way ([`RunRecord::plan`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::Spacing;
use crate::plan::Plan;
use crate::sched::Task;
use crate::spec::manifest::Manifest;

/// What happened to a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Failed,
    /// Not run because an earlier sample failed under `--fail-fast`.
    Skipped,
}

/// The tessera that wrote the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub version: String,
    #[serde(default)]
    pub git_commit: String,
}

/// The pipeline a run used, with its full text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineRef {
    pub name: String,
    pub file: String,
    pub hash: String,
    pub text: String,
}

/// The manifest a run used (`file` is `None` for images named on the command line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestRef {
    pub file: Option<String>,
    pub hash: String,
    #[serde(default)]
    pub columns: Vec<String>,
    /// Tables joined onto the manifest's rows (absolute paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<crate::spec::manifest::Join>,
}

/// One sample of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleEntry {
    pub sample: String,
    /// Absolute where it existed.
    pub image: String,
    #[serde(default)]
    pub input_hashes: Vec<String>,
    pub status: Status,
    #[serde(default)]
    pub failed_stage: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub spacing: Option<Spacing>,
    #[serde(default)]
    pub streamed: bool,
    #[serde(default)]
    pub up_to_date: bool,
    #[serde(default)]
    pub reused_stages: Vec<String>,
    /// Objects per labels stage, in plan order.
    #[serde(default, with = "pairs")]
    pub objects: Vec<(String, u64)>,
    /// Seconds per stage (a fused run's ids joined by `+`), in plan order.
    #[serde(default, with = "pairs")]
    pub stage_seconds: Vec<(String, f64)>,
}

/// A run's provenance. `S` is how the samples are held: a `Vec` when read, a lazy sequence when
/// a study's record is written (so it is never a tree of thousands of samples in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord<S = Vec<SampleEntry>> {
    pub tessera: Tool,
    pub pipeline: PipelineRef,
    pub manifest: ManifestRef,
    #[serde(default)]
    pub finished_unix: u64,
    #[serde(default)]
    pub command_line: Vec<String>,
    #[serde(default)]
    pub working_directory: String,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub threads: usize,
    #[serde(default)]
    pub tile: String,
    #[serde(default)]
    pub memory_budget_bytes: u64,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub samples_total: usize,
    #[serde(default)]
    pub samples_failed: usize,
    pub samples: S,
    #[serde(default)]
    pub study_outputs: Vec<PathBuf>,
    #[serde(default)]
    pub study_errors: Vec<String>,
    /// The shard this record is of (a task's record), or `None`.
    #[serde(default)]
    pub task: Option<Task>,
    /// A sharded study's record: the task records it was merged from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<Vec<String>>,
}

/// A record and the file it was read from.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub file: PathBuf,
    pub run: RunRecord,
}

/// Where a sharded task's record goes: `tasks/task-K-of-N.json` (K zero-padded so that names
/// sort in task order).
pub fn task_record(out: &Path, task: Task) -> PathBuf {
    let w = task.count.to_string().len();
    out.join("tasks").join(format!("task-{:0w$}-of-{}.json", task.index, task.count))
}

/// The record files of an output folder: `run.json` first, then task records in name order.
/// `Err` when there are none.
pub fn files(out: &Path) -> Result<Vec<PathBuf>, String> {
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
    Ok(files)
}

/// The records of an output folder: `run.json` first, then task records in name order. `Err`
/// names a file that is missing, unreadable or not a record.
pub fn load(out: &Path) -> Result<Vec<Provenance>, String> {
    files(out)?
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let run = serde_json::from_str(&text).map_err(|e| format!("{}: not a tessera run record: {e}", f.display()))?;
            Ok(Provenance { file: f, run })
        })
        .collect()
}

/// Reads a record file, handing its samples to `f` one at a time as they are parsed (a
/// million-sample `run.json` is never held); returns the record without them.
pub fn each_entry(file: &Path, f: &mut dyn FnMut(SampleEntry) -> Result<(), String>) -> Result<RunRecord<()>, String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    type Sink<'f> = &'f mut dyn FnMut(SampleEntry) -> Result<(), String>;
    struct Head<'f>(Sink<'f>);
    struct Each<'f>(Sink<'f>);
    impl<'de> DeserializeSeed<'de> for Head<'_> {
        type Value = serde_json::Map<String, serde_json::Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Head<'_> {
        type Value = serde_json::Map<String, serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a run record (an object)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let sink = self.0;
            let mut out = serde_json::Map::new();
            while let Some(k) = m.next_key::<String>()? {
                if k == "samples" {
                    m.next_value_seed(Each(&mut *sink))?;
                    out.insert(k, serde_json::Value::Null);
                } else {
                    out.insert(k, m.next_value()?);
                }
            }
            Ok(out)
        }
    }
    impl<'de> DeserializeSeed<'de> for Each<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Each<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of samples")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(e) = seq.next_element::<SampleEntry>()? {
                (self.0)(e).map_err(A::Error::custom)?;
            }
            Ok(())
        }
    }
    let bad = |e: serde_json::Error| format!("{}: not a tessera run record: {e}", file.display());
    let reader = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let head = Head(f).deserialize(&mut de).map_err(bad)?;
    de.end().map_err(bad)?;
    if !head.contains_key("samples") {
        return Err(format!("{}: not a tessera run record: missing field `samples`", file.display()));
    }
    serde_json::from_value(serde_json::Value::Object(head)).map_err(bad)
}

/// Every sample of an output folder's records, the latest entry of each, in the order samples
/// first appear ([`latest_samples`]), handed to `f` one at a time; returns the first record
/// file and its record without samples. A folder with one record file (`run.json` of an
/// unsharded run) is streamed; several are read whole (task records each hold a task's share).
pub fn each_latest(out: &Path, f: &mut dyn FnMut(SampleEntry) -> Result<(), String>) -> Result<(PathBuf, RunRecord<()>), String> {
    if let [only] = files(out)?.as_slice() {
        let head = each_entry(only, f)?;
        return Ok((only.clone(), head));
    }
    let prov = load(out)?;
    for s in latest_samples(&prov) {
        f(s)?;
    }
    let first = &prov[0];
    Ok((first.file.clone(), first.run.clone().with_samples(())))
}

/// Every sample the records list, the latest entry of each (later files win), in the order
/// samples first appear.
pub fn latest_samples(prov: &[Provenance]) -> Vec<SampleEntry> {
    let mut order: Vec<SampleEntry> = Vec::new();
    let mut at: std::collections::BTreeMap<String, usize> = Default::default();
    for p in prov {
        for s in &p.run.samples {
            match at.get(&s.sample) {
                Some(&k) => order[k] = s.clone(),
                None => {
                    at.insert(s.sample.clone(), order.len());
                    order.push(s.clone());
                }
            }
        }
    }
    order
}

impl<S> RunRecord<S> {
    /// The same record with other samples.
    pub fn with_samples<T>(self, samples: T) -> RunRecord<T> {
        RunRecord {
            tessera: self.tessera,
            pipeline: self.pipeline,
            manifest: self.manifest,
            finished_unix: self.finished_unix,
            command_line: self.command_line,
            working_directory: self.working_directory,
            seconds: self.seconds,
            threads: self.threads,
            tile: self.tile,
            memory_budget_bytes: self.memory_budget_bytes,
            host: self.host,
            samples_total: self.samples_total,
            samples_failed: self.samples_failed,
            samples,
            study_outputs: self.study_outputs,
            study_errors: self.study_errors,
            task: self.task,
            merged_from: self.merged_from,
        }
    }

    /// The recorded pipeline, compiled (against `manifest` when given: its columns and first
    /// usable row, as `run` compiled it). `Err` says why it no longer parses or compiles.
    pub fn plan(&self, manifest: Option<&Manifest>, file: &Path) -> Result<Plan, String> {
        let mut pfile = PathBuf::from(if self.pipeline.file.is_empty() { "pipeline.yaml" } else { &self.pipeline.file });
        if pfile.is_relative() && !self.working_directory.is_empty() {
            // Files the pipeline names (a `classify` model) resolve as they did in the run.
            pfile = Path::new(&self.working_directory).join(pfile);
        }
        let (spec, diags) = crate::spec::parse_str(&pfile, self.pipeline.text.clone());
        let spec = spec.ok_or_else(|| {
            let msgs: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
            format!("the pipeline recorded in {} no longer parses: {}", file.display(), msgs.join("; "))
        })?;
        let columns = manifest.map(|m| m.columns.as_slice());
        let first = manifest.and_then(Manifest::first_good);
        match crate::plan::compile(spec, columns, first) {
            (Some(plan), d) if d.is_empty() || manifest.is_none() => Ok(plan),
            (_, d) => Err(format!(
                "the pipeline recorded in {} does not compile{}: {}",
                file.display(),
                if manifest.is_some() { " against the manifest" } else { "" },
                d.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("; ")
            )),
        }
    }
}

/// `(name, value)` pairs as a JSON object, keeping their order both ways.
mod pairs {
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, V: Serialize>(pairs: &[(String, V)], ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(pairs.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(de: D) -> Result<Vec<(String, V)>, D::Error> {
        struct Pairs<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = Vec<(String, V)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    v.push(kv);
                }
                Ok(v)
            }
        }
        de.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, status: Status) -> SampleEntry {
        SampleEntry {
            sample: id.into(),
            image: format!("/data/{id}.tif"),
            input_hashes: vec!["ab".into()],
            status,
            failed_stage: (status == Status::Failed).then(|| "label".into()),
            error: None,
            spacing: Some(Spacing { zyx: [2.0, 0.5, 0.5], unit: "um".into() }),
            streamed: false,
            up_to_date: false,
            reused_stages: vec![],
            objects: vec![("nuclei".into(), 12), ("cells".into(), 3)],
            stage_seconds: vec![("smooth+mask".into(), 0.5), ("nuclei".into(), 0.25)],
        }
    }

    fn record(samples: Vec<SampleEntry>) -> RunRecord {
        RunRecord {
            tessera: Tool { version: "0.1.0".into(), git_commit: "abc".into() },
            pipeline: PipelineRef { name: "p".into(), file: "/p.yaml".into(), hash: "h".into(), text: "version: 1\n".into() },
            manifest: ManifestRef { file: None, hash: "m".into(), columns: vec!["sample".into()], joins: Vec::new() },
            finished_unix: 1,
            command_line: vec!["tessera".into()],
            working_directory: "/".into(),
            seconds: 1.5,
            threads: 2,
            tile: "auto".into(),
            memory_budget_bytes: 1 << 30,
            host: "h".into(),
            samples_total: 2,
            samples_failed: 1,
            samples,
            study_outputs: vec![],
            study_errors: vec![],
            task: Some(Task { index: 1, count: 2 }),
            merged_from: None,
        }
    }

    #[test]
    fn a_record_round_trips_with_its_maps_in_order() {
        let r = record(vec![entry("a", Status::Done), entry("b", Status::Failed)]);
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert!(text.find("\"nuclei\": 12").unwrap() < text.find("\"cells\": 3").unwrap(), "plan order kept");
        assert!(!text.contains("merged_from"));
        let back: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn later_records_win_and_order_is_first_seen() {
        let rec = |samples| RunRecord {
            tessera: Tool::default(),
            pipeline: PipelineRef::default(),
            manifest: ManifestRef::default(),
            finished_unix: 0,
            command_line: vec![],
            working_directory: String::new(),
            seconds: 0.0,
            threads: 1,
            tile: String::new(),
            memory_budget_bytes: 0,
            host: String::new(),
            samples_total: 0,
            samples_failed: 0,
            samples,
            study_outputs: vec![],
            study_errors: vec![],
            task: None,
            merged_from: None,
        };
        let p = |f: &str, s| Provenance { file: f.into(), run: rec(s) };
        let prov = vec![p("run.json", vec![entry("a", Status::Failed), entry("b", Status::Done)]), p("t2", vec![entry("a", Status::Done)])];
        let l = latest_samples(&prov);
        assert_eq!(l.iter().map(|s| (s.sample.as_str(), s.status)).collect::<Vec<_>>(), vec![("a", Status::Done), ("b", Status::Done)]);
    }

    #[test]
    fn a_file_that_is_not_a_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.json"), "{\"samples\": 3}").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("run.json: not a tessera run record"), "{e}");
    }

    #[test]
    fn a_record_streamed_entry_by_entry_reads_as_it_loads() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(vec![entry("a", Status::Failed), entry("b", Status::Done)]);
        let path = dir.path().join("run.json");
        std::fs::write(&path, serde_json::to_string_pretty(&rec).unwrap()).unwrap();
        let mut seen = Vec::new();
        let head = each_entry(&path, &mut |e| {
            seen.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, rec.samples);
        assert_eq!(head, rec.clone().with_samples(()));
        let e = each_entry(&path, &mut |_| Err("stop".into())).unwrap_err();
        assert!(e.contains("stop"), "{e}");
        std::fs::write(&path, "{\"samples\": [], \"tessera\": 1}").unwrap();
        assert!(each_entry(&path, &mut |_| Ok(())).unwrap_err().contains("not a tessera run record"));
    }
}
