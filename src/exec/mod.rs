//! The executor: runs a compiled [`Plan`] over samples and writes the output folder (SPEC §4).
//!
//! Samples run in parallel on the caller's rayon pool; within a sample, stages run in plan
//! order on whole images, each value freed once its last consumer and its outputs are done.
//! A sample that fails — unreadable input, a bind error, an op error — is recorded with its
//! stage and message and the others go on (unless `fail_fast`). Merged tables and statistics
//! are written from the successful samples in manifest order, so they never depend on timing.
//!
//! The per-stage loop is the seam for the tiled executor: a stage's op, inputs and halo are all
//! it needs, and global ops already declare themselves as such.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

pub mod stream;
pub mod tiled;
pub mod tiles;

pub use tiles::TileSize;

use crate::io::{self, Data, ReadLimits, Spacing};
use crate::ops::{Ctx, Kind, Meta, Value};
use crate::plan::{Bound, Format, Plan, Ref};
use crate::report::Progress;
use crate::spec::manifest::{Manifest, SampleRow};
use crate::table::Table;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub out: PathBuf,
    pub threads: usize,
    /// Tile cores for runs of local stages (`--tile`, else the pipeline's `tile:`).
    pub tile: TileSize,
    /// Byte budget for one image read.
    pub memory: u64,
    pub fail_fast: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Failed,
    /// Not run because an earlier sample failed under `--fail-fast`.
    Skipped,
}

/// What happened to one sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleResult {
    pub sample: String,
    pub image: PathBuf,
    /// blake3 of each source file, in source order.
    pub input_hashes: Vec<String>,
    pub status: Status,
    /// The stage that failed (or `input`/`manifest`) and why.
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    /// Seconds per stage, in plan order.
    pub timings: Vec<(String, f64)>,
    pub spacing: Option<Spacing>,
    /// Objects per labels stage.
    pub objects: Vec<(String, u64)>,
    /// Streamed from disk in z-slabs (the sample did not fit `--memory`).
    pub streamed: bool,
    #[serde(skip)]
    pub tables: Vec<(usize, Table)>,
}

impl SampleResult {
    fn new(row: &SampleRow) -> Self {
        SampleResult {
            sample: row.id.clone(),
            image: row.image.clone(),
            input_hashes: Vec::new(),
            status: Status::Done,
            failed_stage: None,
            error: None,
            timings: Vec::new(),
            spacing: None,
            objects: Vec::new(),
            streamed: false,
            tables: Vec::new(),
        }
    }
    fn fail(mut self, stage: &str, error: impl Into<String>) -> Self {
        self.status = Status::Failed;
        self.failed_stage = Some(stage.to_string());
        self.error = Some(error.into());
        self
    }
}

/// The whole run's result.
#[derive(Debug)]
pub struct RunSummary {
    pub samples: Vec<SampleResult>,
    pub seconds: f64,
    /// Study-level files written (merged tables, statistics), relative to the output folder.
    pub written: Vec<PathBuf>,
    /// Problems writing study-level files.
    pub errors: Vec<String>,
}

impl RunSummary {
    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| s.status != Status::Done).count()
    }
}

/// Paths of a sample's sources: `image`, then each `sources:` column's file.
fn source_paths(plan: &Plan, row: &SampleRow, manifest: &Manifest) -> Result<Vec<PathBuf>, String> {
    let mut v = vec![row.image.clone()];
    let base = manifest.path.as_ref().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    for (name, col, _) in &plan.spec.sources {
        match row.value(col) {
            Some(p) if !p.is_empty() => v.push(base.join(p)),
            _ => return Err(format!("source `{name}` needs a path in manifest column `{col}`, and this sample has none")),
        }
    }
    Ok(v)
}

/// The spacing a sample is measured in: the file's own metadata, else the pipeline's, else 1.
pub fn resolve_spacing(file: Option<&Spacing>, plan: &Plan, ndim: u8) -> Spacing {
    if let Some(s) = file {
        let mut s = s.clone();
        if ndim == 2 {
            s.zyx[0] = 1.0;
        }
        return s;
    }
    let zyx = plan.spec.spacing.unwrap_or([1.0, 1.0, 1.0]);
    let unit = plan.spec.unit.clone().unwrap_or_else(|| if plan.spec.spacing.is_some() { "um".into() } else { "pixel".into() });
    Spacing { zyx: if ndim == 2 { [1.0, zyx[1], zyx[2]] } else { zyx }, unit }
}

/// `spacing` with each axis multiplied by `scale`.
fn scaled(spacing: &Spacing, scale: [f64; 3]) -> Spacing {
    Spacing { zyx: [spacing.zyx[0] * scale[0], spacing.zyx[1] * scale[1], spacing.zyx[2] * scale[2]], unit: spacing.unit.clone() }
}

fn run_sample(plan: &Plan, row: &SampleRow, manifest: &Manifest, cfg: &RunConfig) -> SampleResult {
    let res = SampleResult::new(row);
    if let Some(p) = &row.problem {
        return res.fail("manifest", p.clone());
    }
    let mut res = res;
    let paths = match source_paths(plan, row, manifest) {
        Ok(p) => p,
        Err(e) => return res.fail("input", e),
    };
    let mut headers = Vec::new();
    for p in &paths {
        match io::read_header(p) {
            Ok(h) => headers.push(h),
            Err(e) => return res.fail("input", e.to_string()),
        }
    }
    let bound = match plan.bind(row, &headers) {
        Ok(b) => b,
        Err(e) => {
            let stage = e.stage.map(|i| plan.stages[i].id.clone()).unwrap_or_else(|| "input".into());
            let d = plan.bind_diagnostic(&row.id, &e);
            let at = d.pos.map(|p| format!(" ({}:{}:{})", plan.spec.file.display(), p.line, p.col)).unwrap_or_default();
            return res.fail(&stage, format!("{}{at}", e.issue.message));
        }
    };
    for p in &paths {
        match io::hash_input(p) {
            Ok(h) => res.input_hashes.push(h),
            Err(e) => return res.fail("input", e.to_string()),
        }
    }
    let need = stream::whole_run_bytes(plan, &bound, &headers);
    if need > cfg.memory {
        return run_streamed(plan, row, cfg, &bound, &paths, &headers, need, res);
    }
    let limits = ReadLimits { max_bytes: cfg.memory };
    let mut sources: Vec<Value> = Vec::new();
    let mut file_spacing: Option<Spacing> = None;
    let mut ndim = 3;
    for (k, p) in paths.iter().enumerate() {
        match io::read_image(p, limits) {
            Ok(img) => {
                if k == 0 {
                    ndim = img.ndim;
                    file_spacing = img.spacing;
                }
                sources.push(Value::Image(img.data));
            }
            Err(e) => return res.fail("input", e.to_string()),
        }
    }
    let spacing = resolve_spacing(file_spacing.as_ref(), plan, ndim);
    res.spacing = Some(spacing.clone());
    let sample_dir = cfg.out.join("samples").join(&row.id);
    let opts = EvalOpts { tile: cfg.tile, memory: cfg.memory, threads: cfg.threads, keep_all: false };
    let sink = |i: usize, value: &Value, res: &mut SampleResult| -> Result<(), String> {
        let st = &plan.stages[i];
        if let Value::Labels(l) = value {
            res.objects.push((st.id.clone(), l.iter().copied().max().unwrap_or(0) as u64));
        }
        if let Some((_, formats)) = plan.outputs.iter().find(|(o, _)| *o == i) {
            write_output(&sample_dir, &st.id, value, formats, ndim, &scaled(&spacing, bound.metas[i].scale), plan, row, res, i)?;
        }
        Ok(())
    };
    let mut timings = Vec::new();
    let r = {
        let res_ref = &mut res;
        evaluate(plan, &bound, &sources, &spacing, ndim, &row.id, &opts, &mut |i, v| sink(i, v, res_ref), &mut timings)
    };
    res.timings = timings;
    if let Err((i, e)) = r {
        let id = plan.stages[i].id.clone();
        return res.fail(&id, e);
    }
    res
}

/// A sample too large for `--memory`, streamed from disk in z-slabs ([`stream`]).
#[allow(clippy::too_many_arguments)]
fn run_streamed(
    plan: &Plan,
    row: &SampleRow,
    cfg: &RunConfig,
    bound: &Bound,
    paths: &[PathBuf],
    headers: &[io::Header],
    need: u64,
    mut res: SampleResult,
) -> SampleResult {
    let ndim = headers[0].ndim;
    let spacing = resolve_spacing(headers[0].spacing.as_ref(), plan, ndim);
    res.spacing = Some(spacing.clone());
    res.streamed = true;
    let sample_dir = cfg.out.join("samples").join(&row.id);
    let s = stream::Streamed {
        plan,
        bound,
        paths,
        headers,
        spacing: &spacing,
        ndim,
        sample: &row.id,
        memory: cfg.memory,
        threads: cfg.threads,
        spill_dir: cfg.out.join(".tessera").join("spill").join(&row.id),
        sample_dir: sample_dir.clone(),
        compression: plan.spec.compression,
        slab: None,
    };
    if let Some((i, why)) = stream::not_streamable(&s) {
        let stage = plan.stages.get(i).map(|s| s.id.clone()).unwrap_or_else(|| "input".into());
        return res.fail(
            &stage,
            format!(
                "this sample needs about {} in memory, more than --memory {}, and cannot be streamed from disk: {why}; \
                 raise --memory to at least {}",
                crate::util::human_bytes(need),
                crate::util::human_bytes(cfg.memory),
                crate::util::human_bytes(need)
            ),
        );
    }
    let mut objects = Vec::new();
    let mut timings = Vec::new();
    let r = {
        let res_ref = &mut res;
        let mut sink = |i: usize, value: &Value| -> Result<(), String> {
            match plan.outputs.iter().find(|(o, _)| *o == i) {
                Some((_, formats)) => write_output(&sample_dir, &plan.stages[i].id, value, formats, ndim, &spacing, plan, row, res_ref, i),
                None => Ok(()),
            }
        };
        stream::evaluate_streamed(&s, &mut sink, &mut objects, &mut timings)
    };
    res.objects = objects;
    res.timings = timings;
    if let Err((i, e)) = r {
        let id = plan.stages.get(i).map(|s| s.id.clone()).unwrap_or_else(|| "input".into());
        return res.fail(&id, e);
    }
    res
}

/// How [`evaluate`] runs a sample's stages.
#[derive(Debug, Clone, Copy)]
pub struct EvalOpts {
    pub tile: TileSize,
    /// Byte budget (for `auto` tiles).
    pub memory: u64,
    pub threads: usize,
    /// Materialise every stage at full size, even fused intermediates nothing else reads
    /// (for tests that compare every stage).
    pub keep_all: bool,
}

/// Runs a bound plan's stages on a sample's sources, in plan order. Runs of local stages are
/// fused and evaluated over tiles ([`tiled`]); other stages run on whole arrays. `sink` sees
/// every stage value that exists at full size, in plan order, once, before it may be freed.
/// Timings are pushed per stage (a fused group's as one entry, its ids joined by `+`).
/// An error names the failing stage's plan index.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    plan: &Plan,
    bound: &Bound,
    sources: &[Value],
    spacing: &Spacing,
    ndim: u8,
    sample: &str,
    opts: &EvalOpts,
    sink: &mut dyn FnMut(usize, &Value) -> Result<(), String>,
    timings: &mut Vec<(String, f64)>,
) -> Result<(), (usize, String)> {
    let n = plan.stages.len();
    let last_use = plan.last_use();
    let ctx = Ctx { sample, spacing: spacing.zyx, unit: &spacing.unit, ndim };
    // Stages after a downsample see larger voxels.
    let ctx_of = |i: usize| {
        let scale = match plan.stages[i].inputs.first().map(|(_, r)| *r) {
            Some(Ref::Stage(j)) => bound.metas[j].scale,
            _ => [1.0; 3],
        };
        Ctx { spacing: scaled(spacing, scale).zyx, ..ctx.clone() }
    };
    let src_meta: Vec<Meta> = sources
        .iter()
        .map(|v| match v {
            Value::Image(d) => Meta { kind: Kind::Image, dtype: Some(d.dtype()), shape: d.shape(), ndim, scale: [1.0; 3] },
            other => Meta { kind: other.kind(), dtype: None, shape: [0; 3], ndim, scale: [1.0; 3] },
        })
        .collect();
    let meta_of = |r: &Ref| match r {
        Ref::Source(s) => &src_meta[*s],
        Ref::Stage(j) => &bound.metas[*j],
    };
    let local_halo = |i: usize| {
        let ins: Vec<&Meta> = plan.stages[i].inputs.iter().map(|(_, r)| meta_of(r)).collect();
        tiled::is_local(bound.ops[i].as_ref(), &ctx_of(i), &bound.metas[i], &ins)
    };
    let reads = |i: usize| -> Vec<usize> {
        plan.stages[i].inputs.iter().filter_map(|(_, r)| if let Ref::Stage(j) = r { Some(*j) } else { None }).collect()
    };
    let is_output = |i: usize| plan.outputs.iter().any(|(o, _)| *o == i);
    let mut values: Vec<Option<Value>> = vec![None; n];
    let mut i = 0;
    while i < n {
        let t0 = Instant::now();
        // The run of local stages starting here, if any.
        let mut group = tiled::Group { stages: Vec::new(), halos: Vec::new() };
        let mut j = i;
        while j < n
            && let Some(h) = local_halo(j)
        {
            group.stages.push(j);
            group.halos.push(h);
            j += 1;
        }
        let shape = bound.metas[i].shape;
        let tiles = if group.stages.is_empty() {
            Vec::new()
        } else {
            let bpv = group.stages.iter().map(|&k| tiled::bytes_per_voxel(&bound.metas[k])).sum::<u64>()
                + plan.stages[i].inputs.iter().map(|(_, r)| tiled::bytes_per_voxel(meta_of(r))).sum::<u64>();
            let down = group.downstream(&reads);
            tiles::plan_tiles(shape, opts.tile, group.total_halo(&down), bpv, opts.memory, opts.threads)
        };
        if tiles.len() > 1 {
            let last = *group.stages.last().expect("a group has stages");
            let pos = |k: usize| group.stages.iter().position(|&g| g == k);
            let mut full: Vec<&Value> = Vec::new();
            let mut feeds = Vec::new();
            for &k in &group.stages {
                let mut f = Vec::new();
                for (_, r) in &plan.stages[k].inputs {
                    f.push(match r {
                        Ref::Stage(x) if pos(*x).is_some() => tiled::Feed::Group(pos(*x).unwrap_or(0)),
                        Ref::Stage(x) => {
                            full.push(values[*x].as_ref().expect("inputs computed before use"));
                            tiled::Feed::Full(full.len() - 1)
                        }
                        Ref::Source(s) => {
                            full.push(&sources[*s]);
                            tiled::Feed::Full(full.len() - 1)
                        }
                    });
                }
                feeds.push(f);
            }
            let keep: Vec<bool> = group.stages.iter().map(|&k| opts.keep_all || last_use[k] > last || is_output(k) || k == last).collect();
            let run = tiled::GroupRun {
                group: &group,
                ops: group.stages.iter().map(|&k| bound.ops[k].as_ref()).collect(),
                inputs: feeds,
                ctxs: group.stages.iter().map(|&k| ctx_of(k)).collect(),
                keep,
                shape,
                tiles,
                threads: opts.threads,
            };
            let out = tiled::run_group(&run, &full, &reads).map_err(|(p, e)| (group.stages[p], e))?;
            drop(full);
            for (p, v) in out.into_iter().enumerate() {
                let k = group.stages[p];
                if let Some(v) = v {
                    sink(k, &v).map_err(|e| (k, e))?;
                    values[k] = Some(v);
                }
            }
            let ids: Vec<&str> = group.stages.iter().map(|&k| plan.stages[k].id.as_str()).collect();
            timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
            i = last;
        } else {
            let out = {
                let ins: Vec<&Value> = plan.stages[i]
                    .inputs
                    .iter()
                    .map(|(_, r)| match r {
                        Ref::Source(s) => &sources[*s],
                        Ref::Stage(j) => values[*j].as_ref().expect("inputs computed before use"),
                    })
                    .collect();
                bound.ops[i].run(&ins, &ctx_of(i)).map_err(|e| (i, e))?
            };
            sink(i, &out).map_err(|e| (i, e))?;
            timings.push((plan.stages[i].id.clone(), t0.elapsed().as_secs_f64()));
            values[i] = Some(out);
        }
        // Free what no later stage reads (unless every stage is to be kept).
        if !opts.keep_all {
            for (k, v) in values.iter_mut().enumerate().take(i + 1) {
                if last_use[k] <= i {
                    *v = None;
                }
            }
        }
        i += 1;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_output(
    dir: &Path,
    stage: &str,
    value: &Value,
    formats: &[Format],
    ndim: u8,
    spacing: &Spacing,
    plan: &Plan,
    row: &SampleRow,
    res: &mut SampleResult,
    index: usize,
) -> Result<(), String> {
    let data = match value {
        Value::Image(d) => Some(d.clone()),
        Value::Mask(m) => Some(Data::U8(m.mapv(|v| if v != 0 { 255 } else { 0 }))),
        Value::Labels(l) => {
            let max = l.iter().copied().max().unwrap_or(0);
            Some(if max <= u16::MAX as u32 { Data::U16(l.mapv(|v| v as u16)) } else { Data::U32(l.clone()) })
        }
        Value::Table(_) => None,
    };
    for f in formats {
        let path = dir.join(format!("{stage}.{}", f.ext()));
        match (f, &data, value) {
            (Format::Tiff, Some(d), _) => io::write_tiff(&path, d, ndim, spacing, plan.spec.compression).map_err(|e| e.to_string())?,
            (Format::Npy, Some(d), _) => io::write_npy(&path, d, ndim).map_err(|e| e.to_string())?,
            (Format::Parquet | Format::Csv, None, Value::Table(t)) => {
                let t = t.for_sample(&row.id, &row.meta);
                let mut df = t.to_frame().map_err(|e| e.to_string())?;
                if *f == Format::Parquet {
                    crate::table::write_parquet(&path, &mut df, &table_metadata(plan, &t, spacing)).map_err(|e| e.to_string())?;
                } else {
                    crate::table::write_csv(&path, &mut df).map_err(|e| e.to_string())?;
                }
            }
            _ => return Err(format!("cannot write a {} as {}", value.kind(), f.ext())),
        }
    }
    if let Value::Table(t) = value
        && !res.tables.iter().any(|(i, _)| *i == index)
    {
        res.tables.push((index, t.for_sample(&row.id, &row.meta)));
    }
    Ok(())
}

/// Parquet key-value metadata: units, unit of the sample, pipeline hash, tessera version.
fn table_metadata(plan: &Plan, t: &Table, spacing: &Spacing) -> Vec<(String, String)> {
    let units: serde_json::Map<String, serde_json::Value> = t.units().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    vec![
        ("tessera.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("tessera.pipeline".into(), plan.spec.name.clone()),
        ("tessera.pipeline_hash".into(), plan.hash.clone()),
        ("tessera.unit".into(), spacing.unit.clone()),
        ("tessera.units".into(), serde_json::Value::Object(units).to_string()),
    ]
}

/// Runs every sample of `manifest` and writes the output folder.
pub fn run(plan: &Plan, manifest: &Manifest, cfg: &RunConfig, progress: &Progress) -> RunSummary {
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let lock = Mutex::new(());
    progress.start(manifest.rows.len());
    let samples: Vec<SampleResult> = manifest
        .rows
        .par_iter()
        .map(|row| {
            if stop.load(Ordering::SeqCst) {
                let mut r = SampleResult::new(row);
                r.status = Status::Skipped;
                r.error = Some("not run: an earlier sample failed and --fail-fast is set".into());
                return r;
            }
            let t = Instant::now();
            let r = run_sample(plan, row, manifest, cfg);
            if r.status == Status::Failed && cfg.fail_fast {
                stop.store(true, Ordering::SeqCst);
            }
            let k = done.fetch_add(1, Ordering::SeqCst) + 1;
            let _g = lock.lock();
            progress.sample(k, &r, t.elapsed().as_secs_f64());
            r
        })
        .collect();
    progress.finish();

    let mut written = Vec::new();
    let mut errors = Vec::new();
    // Merged tables and statistics, from the samples that finished, in manifest order.
    for (i, formats) in &plan.outputs {
        if plan.stages[*i].kind != crate::ops::Kind::Table {
            continue;
        }
        let tables: Vec<&Table> = samples
            .iter()
            .filter(|s| s.status == Status::Done)
            .filter_map(|s| s.tables.iter().find(|(j, _)| j == i).map(|(_, t)| t))
            .collect();
        let stage = &plan.stages[*i].id;
        let result = (|| -> Result<(), String> {
            let mut df = crate::table::concat(&tables).map_err(|e| e.to_string())?;
            let spacing = samples.iter().find_map(|s| s.spacing.clone()).unwrap_or_default();
            let meta = tables.first().map(|t| table_metadata(plan, t, &spacing)).unwrap_or_default();
            let p = PathBuf::from("tables").join(format!("{stage}.parquet"));
            crate::table::write_parquet(&cfg.out.join(&p), &mut df, &meta).map_err(|e| e.to_string())?;
            written.push(p);
            if formats.contains(&Format::Csv) {
                let p = PathBuf::from("tables").join(format!("{stage}.csv"));
                crate::table::write_csv(&cfg.out.join(&p), &mut df).map_err(|e| e.to_string())?;
                written.push(p);
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(format!("merged table '{stage}': {e}"));
        }
    }
    if let Some(st) = &plan.stats {
        let stage = &plan.stages[st.table].id;
        let tables: Vec<&Table> = samples
            .iter()
            .filter(|s| s.status == Status::Done)
            .filter_map(|s| s.tables.iter().find(|(j, _)| *j == st.table).map(|(_, t)| t))
            .collect();
        let result = (|| -> Result<(), String> {
            let t = crate::stats::within_between(&tables, &st.by, st.phenotypes.as_deref())?;
            let mut df = t.to_frame().map_err(|e| e.to_string())?;
            let base = PathBuf::from("stats").join(format!("{stage}_within_between"));
            let csv = base.with_extension("csv");
            crate::table::write_csv(&cfg.out.join(&csv), &mut df).map_err(|e| e.to_string())?;
            let pq = base.with_extension("parquet");
            crate::table::write_parquet(&cfg.out.join(&pq), &mut df, &[("tessera.pipeline_hash".into(), plan.hash.clone())])
                .map_err(|e| e.to_string())?;
            written.push(csv);
            written.push(pq);
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(format!("statistics of '{stage}': {e}"));
        }
    }
    RunSummary { samples, seconds: t0.elapsed().as_secs_f64(), written, errors }
}
