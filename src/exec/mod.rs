//! The executor: runs a compiled [`Plan`] over samples and writes the output folder (SPEC §4).
//!
//! Samples run in parallel on the caller's rayon pool ([`for_each_sample`]). Each sample is
//! prepared (headers, binding, checkpoint keys), then scheduled ([`schedule`]: what is reused,
//! what is computed, which local stages fuse) and run by one of two executors following that
//! schedule: in memory ([`evaluate_with`]: fused runs over tiles, [`tiled`]; global stages on
//! whole arrays; each value freed once its last consumer and its outputs are done), or, when
//! the sample does not fit `--memory`, slab by slab from disk ([`stream`]: fused runs computed
//! per slab where they are read, global ops in their own out-of-core forms, spills in
//! [`spill`]). A sample that fails — unreadable input, a bind error, an op error — is recorded
//! with its stage and message and the others go on (unless `fail_fast`). Merged tables and
//! statistics are written from the successful samples in manifest order ([`study`]), so they
//! never depend on timing; the run's record is written by [`provenance`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub mod merge;
pub mod provenance;
pub mod schedule;
pub mod shared;
pub mod spill;
pub mod split;
pub mod stream;
pub mod study;
pub mod tiled;
pub mod tiles;
pub mod watch;

pub use tiles::TileSize;

use crate::io::{self, Data, ReadLimits, Spacing};
use crate::ops::{Ctx, Kind, Labels, Meta, Value};
use crate::plan::{Bound, Format, Plan, Ref};
use crate::spec::manifest::{Manifest, SampleRow};
use crate::store::{SampleRecord, Store};
use crate::table::{Table, TableFormat};
use shared::SharedInputs;

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
    /// Recompute everything, whatever the checkpoints say (`--force`).
    pub force: bool,
    /// Keep checkpoints, records and locks under `.tessera/` (off with `--no-checkpoint`).
    pub checkpoints: bool,
    /// The shard this process runs (`--task`): only per-sample outputs are written, and the
    /// study-level ones are left to `tessera merge`.
    pub task: Option<crate::sched::Task>,
    /// The samples were split into this many z-blocks by the phases of a split run
    /// ([`split`]): their values are joined from the blocks and taken from checkpoints, and
    /// the samples run streamed, as the phases did.
    pub split: Option<usize>,
    /// Once set (a signal, by `tessera watch`), samples not yet started are not started: they
    /// end as skipped, and the running ones finish.
    pub interrupt: Option<&'static AtomicBool>,
    /// Write the study's merged tables and statistics after the samples (an unsharded `run`);
    /// `tessera watch` writes them itself, from every sample it has finished.
    pub study_outputs: bool,
}

pub use crate::record::Status;

/// What a run tells whoever watches it (the command line's progress display, `report::Progress`).
pub trait Observer: Sync {
    /// The run starts, with `samples` samples.
    fn start(&self, samples: usize);
    /// A sample starts (it has `stages` stages).
    fn begin(&self, sample: &str, stages: usize);
    /// A sample finished a stage.
    fn stage(&self, sample: &str, stage: &str);
    /// The `k`-th sample to end ended, after `seconds`.
    fn sample(&self, k: usize, result: &SampleResult, seconds: f64);
    /// The last sample ended.
    fn finish(&self);
}

/// Watches nothing (tests, library callers).
pub struct Quiet;

impl Observer for Quiet {
    fn start(&self, _: usize) {}
    fn begin(&self, _: &str, _: usize) {}
    fn stage(&self, _: &str, _: &str) {}
    fn sample(&self, _: usize, _: &SampleResult, _: f64) {}
    fn finish(&self) {}
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
    /// Nothing to do: the last run's outputs are current and verify.
    pub up_to_date: bool,
    /// Stages taken from checkpoints instead of computed.
    pub reused: Vec<String>,
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
            up_to_date: false,
            reused: Vec::new(),
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

/// How many done samples a [`RunSummary`] keeps (the first in manifest order), for a summary.
pub const FIRST_DONE: usize = 25;

/// The whole run's result. Samples' results are not held in memory: each is set aside on disk
/// as it ends, and [`RunSummary::entries`] reads them back in manifest order; counts and the
/// first few done samples are kept.
pub struct RunSummary {
    /// Samples this run took on (a task's share of the manifest).
    pub total: usize,
    pub done: usize,
    /// Samples that failed (not those skipped after a failure under `--fail-fast`).
    pub failed: usize,
    pub skipped: usize,
    /// Done samples whose outputs were current.
    pub up_to_date: usize,
    /// The first [`FIRST_DONE`] done samples, in manifest order.
    pub first_done: Vec<SampleResult>,
    /// Every sample's record entry.
    records: study::Spill,
    pub seconds: f64,
    /// Study-level files written (merged tables, statistics), relative to the output folder.
    pub written: Vec<PathBuf>,
    /// Problems writing study-level files.
    pub errors: Vec<String>,
}

impl RunSummary {
    /// Samples not done (failed or skipped).
    pub fn not_done(&self) -> usize {
        self.total - self.done
    }

    /// Every sample's record entry, in manifest order.
    pub fn entries(&self) -> impl Iterator<Item = Result<crate::record::SampleEntry, String>> + '_ {
        self.records.rows().map(|row| {
            let bytes = self.records.get(row)?.into_iter().next().map(|(_, b)| b).unwrap_or_default();
            serde_json::from_slice(&bytes).map_err(|e| format!("a set-aside record does not read back: {e}"))
        })
    }
}

/// A sample's source files: its image (at the manifest's `level` for an OME-Zarr image), then
/// the `sources:` columns' paths, relative to the manifest.
pub fn source_paths(plan: &Plan, row: &SampleRow, manifest: &Manifest) -> Result<Vec<PathBuf>, String> {
    // An OME-Zarr image's resolution level: the manifest's `level` column (0, the full
    // resolution, when absent or empty). For other images `level` is ordinary metadata.
    let level = row.value("level").map(str::trim).filter(|l| !l.is_empty() && io::is_zarr(&row.image));
    let image = match level {
        Some(l) => {
            let level: usize = l.parse().map_err(|_| format!("`level` must be a whole number (0 is full resolution), found '{l}'"))?;
            io::level_path(&row.image, level).map_err(|e| e.to_string())?
        }
        None => row.image.clone(),
    };
    let mut v = vec![image];
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

/// How much larger than the sample's voxels stage `i`'s input voxels are (after a downsample).
pub(crate) fn input_scale(plan: &Plan, bound: &Bound, i: usize) -> [f64; 3] {
    match plan.stages[i].inputs.first().map(|(_, r)| *r) {
        Some(Ref::Stage(j)) => bound.metas[j].scale,
        _ => [1.0; 3],
    }
}

/// `spacing` with each axis multiplied by `scale`.
pub(crate) fn scaled(spacing: &Spacing, scale: [f64; 3]) -> Spacing {
    Spacing { zyx: [spacing.zyx[0] * scale[0], spacing.zyx[1] * scale[1], spacing.zyx[2] * scale[2]], unit: spacing.unit.clone() }
}

/// What a sample is, before anything is computed: its source files and their headers, the plan
/// bound to it, the inputs' content hashes, its spacing and every stage's checkpoint key.
struct Prepared {
    paths: Vec<PathBuf>,
    headers: Vec<io::Header>,
    bound: Bound,
    hashes: Vec<String>,
    ndim: u8,
    spacing: Spacing,
    keys: Vec<String>,
}

/// Reads what a sample needs before running; `Err` names the stage at fault (`manifest`,
/// `input` or a stage whose parameters do not bind) and says why.
fn prepare(plan: &Plan, row: &SampleRow, manifest: &Manifest, shared: &SharedInputs) -> Result<Prepared, (String, String)> {
    let input = |e: String| ("input".to_string(), e);
    if let Some(p) = &row.problem {
        return Err(("manifest".into(), p.clone()));
    }
    let paths = source_paths(plan, row, manifest).map_err(input)?;
    let headers: Vec<io::Header> = paths.iter().map(|p| shared.header(p).map_err(input)).collect::<Result<_, _>>()?;
    let bound = plan.bind(row, &headers).map_err(|e| {
        let stage = e.stage.map(|i| plan.stages[i].id.clone()).unwrap_or_else(|| "input".into());
        let d = plan.bind_diagnostic(&row.id, &e);
        let at = d.pos.map(|p| format!(" ({}:{}:{})", plan.spec.file.display(), p.line, p.col)).unwrap_or_default();
        (stage, format!("{}{at}", e.issue.message))
    })?;
    let hashes: Vec<String> = paths.iter().map(|p| shared.hash(p).map_err(input)).collect::<Result<_, _>>()?;
    let ndim = headers[0].ndim;
    let spacing = resolve_spacing(headers[0].spacing.as_ref(), plan, ndim);
    let keys = stage_keys(plan, &bound, &hashes, &spacing, ndim);
    Ok(Prepared { paths, headers, bound, hashes, ndim, spacing, keys })
}

/// Bytes running a sample whole would take (headers only; nothing is decoded): what `tessera
/// submit` asks the scheduler for.
pub fn sample_bytes(plan: &Plan, row: &SampleRow, manifest: &Manifest) -> Result<u64, String> {
    if let Some(p) = &row.problem {
        return Err(p.clone());
    }
    let paths = source_paths(plan, row, manifest)?;
    let headers: Vec<io::Header> = paths.iter().map(|p| io::read_header(p).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let bound = plan.bind(row, &headers).map_err(|e| e.issue.message)?;
    Ok(stream::whole_run_bytes(plan, &bound, &headers))
}

fn run_sample(
    plan: &Plan,
    row: &SampleRow,
    manifest: &Manifest,
    cfg: &RunConfig,
    shared: &SharedInputs,
    on_stage: &(dyn Fn(&str) + Sync),
) -> SampleResult {
    let mut res = SampleResult::new(row);
    let Prepared { paths, headers, bound, hashes, ndim, spacing, keys } = match prepare(plan, row, manifest, shared) {
        Ok(p) => p,
        Err((stage, e)) => return res.fail(&stage, e),
    };
    res.input_hashes = hashes;
    res.spacing = Some(spacing.clone());
    let store = Store::new(&cfg.out);
    let sample_dir = cfg.out.join("samples").join(&row.id);
    // One process per sample: wait while another live run on this folder works on it.
    let _lock = if cfg.checkpoints {
        match lock_sample(&store, &row.id) {
            Ok(l) => Some(l),
            Err(e) => return res.fail("input", e),
        }
    } else {
        None
    };
    // What a killed writer left in this sample's folder (we hold its lock: nobody else writes there).
    crate::util::remove_stale_tmp(&sample_dir);
    let old = if cfg.checkpoints { store.record(&row.id) } else { None };
    if cfg.checkpoints
        && !cfg.force
        && let Some(rec) = &old
        && let Some(tables) = up_to_date(plan, &store, row, rec, &keys, &cfg.out)
    {
        res.up_to_date = true;
        res.streamed = rec.streamed;
        res.tables = tables;
        res.objects = plan.stages.iter().filter_map(|st| rec.objects.get(&st.id).map(|n| (st.id.clone(), *n))).collect();
        return res;
    }
    store.remove_record(&row.id);
    // Outputs of the last run whose stage did not change and whose bytes verify stay as they are.
    let valid: Vec<bool> = (0..plan.stages.len())
        .map(|i| !cfg.force && old.as_ref().is_some_and(|rec| output_valid(plan, rec, row, i, &keys[i], &cfg.out)))
        .collect();
    let need = stream::whole_run_bytes(plan, &bound, &headers);
    if let Some(n) = cfg.split {
        // The final phase of a split run: what the block phases stored becomes checkpoints.
        let files = split::Files::new(&cfg.out, &row.id, n);
        for j in split::block_stages(&split::phases(plan)) {
            let ctx = Ctx { sample: &row.id, spacing: scaled(&spacing, input_scale(plan, &bound, j)).zyx, unit: &spacing.unit, ndim };
            let stored = bound.ops[j].stored(&ctx);
            if let Err(e) = split::join_blocks(&store, &files, &keys[j], &plan.stages[j].id, bound.metas[j].shape[0], stored.as_deref()) {
                return res.fail(&plan.stages[j].id, e);
            }
        }
    }
    if need > cfg.memory || cfg.split.is_some() {
        let ck = cfg.checkpoints.then_some(&store);
        let res = run_streamed(plan, row, cfg, &bound, &paths, &headers, need, (ck, &keys, &valid), on_stage, res);
        return finish_sample(plan, &store, row, cfg, &keys, &valid, old.as_ref(), res);
    }
    // Backward from what must exist (outputs to write, tables to merge): reuse a verified
    // checkpoint where there is one, compute otherwise (and then its inputs are needed).
    let n = plan.stages.len();
    let mut preset: Vec<Option<Value>> = vec![None; n];
    let decisions = schedule::decide(required_stages(plan, &valid), &|i| plan.stage_inputs(i), &mut |i| {
        let found = (cfg.checkpoints && !cfg.force)
            .then(|| store.load(&keys[i]).or_else(|| if valid[i] { read_back(plan, &bound, row, i, &cfg.out) } else { None }))
            .flatten();
        let hit = found.is_some();
        preset[i] = found;
        hit
    });
    res.reused = (0..n).filter(|&i| decisions[i] == schedule::Decision::Reuse).map(|i| plan.stages[i].id.clone()).collect();
    let reuse = Reuse { preset, compute: decisions.iter().map(|d| *d == schedule::Decision::Compute).collect() };
    let reads_sources = (0..n).any(|i| reuse.compute[i] && plan.stages[i].inputs.iter().any(|(_, r)| matches!(r, Ref::Source(_))));
    let limits = ReadLimits { max_bytes: cfg.memory };
    let mut sources: Vec<Arc<Value>> = Vec::new();
    if reads_sources {
        for p in &paths {
            match shared.image(p, limits) {
                Ok(v) => sources.push(v),
                Err(e) => return res.fail("input", e),
            }
        }
    }
    let opts = EvalOpts { tile: cfg.tile, memory: cfg.memory, threads: cfg.threads, keep_all: false };
    let compute = reuse.compute.clone();
    let partial = std::cell::RefCell::new(SampleRecord {
        sample: row.id.clone(),
        stages: plan.stages.iter().zip(&keys).map(|(st, k)| (st.id.clone(), k.clone())).collect(),
        outputs: old
            .as_ref()
            .map(|r| r.outputs.iter().filter(|(f, _)| (0..n).any(|i| valid[i] && output_files(plan, row, i).contains(f))))
            .into_iter()
            .flatten()
            .map(|(f, h)| (f.clone(), h.clone()))
            .collect(),
        objects: Default::default(),
        streamed: false,
        failed: None,
        complete: false,
        layout: crate::store::OUTPUT_LAYOUT,
    });
    let pending: std::cell::RefCell<Vec<(usize, Writing)>> = Default::default();
    let sink = |i: usize, shared: &Arc<Value>, res: &mut SampleResult| -> Result<(), String> {
        let value: &Value = shared;
        let st = &plan.stages[i];
        on_stage(&st.id);
        // Global stages and tables are checkpointed; local stages are cheaper to recompute from
        // their inputs than to write and verify, and a stage written as TIFF/npy is its own
        // checkpoint (read back exactly on a re-run). Saved in the background, like outputs.
        if compute[i]
            && cfg.checkpoints
            && (st.halo == crate::ops::Halo::Global || st.kind == Kind::Table)
            && voxel_output(plan, i).is_none()
        {
            let save = store.saver(&keys[i], shared);
            pending.borrow_mut().push((i, crate::util::background(move || save().map_err(|e| format!("writing a checkpoint: {e}")))));
        }
        let max_label = if let Value::Labels(l) = value { Some(l.max()) } else { None };
        if let Some(m) = max_label {
            res.objects.push((st.id.clone(), m as u64));
        }
        if let Some((_, formats)) = plan.outputs.iter().find(|(o, _)| *o == i) {
            if valid[i] {
                if let Value::Table(t) = value {
                    res.tables.push((i, t.for_sample(&row.id, &row.meta)));
                }
            } else {
                let spacing = scaled(&spacing, bound.metas[i].scale);
                let job = write_output(&sample_dir, &st.id, shared, max_label, formats, (ndim, &paths[0]), &spacing, plan, row, res, i)?;
                if let Some(job) = job {
                    // Image outputs finish in the background; they join before the record. A
                    // small one (a crop) is written here: handing it over costs more than it.
                    let small = crate::exec::tiled::bytes_per_voxel(&bound.metas[i])
                        * bound.metas[i].shape.iter().product::<usize>() as u64
                        <= SMALL_OUTPUT;
                    let h = if small { crate::util::Pending::now(job) } else { crate::util::background(job) };
                    pending.borrow_mut().push((i, h));
                } else if cfg.checkpoints {
                    // What is finished survives a crash: the outputs so far, in a partial record.
                    let mut p = partial.borrow_mut();
                    for f in output_files(plan, row, i) {
                        let fp = crate::store::file_fingerprint(&cfg.out.join(&f)).map_err(|e| format!("{f}: {e}"))?;
                        p.outputs.insert(f, fp);
                    }
                    store.write_record(&p)?;
                }
            }
        }
        Ok(())
    };
    let mut timings = Vec::new();
    let r = {
        let res_ref = &mut res;
        let sources: Vec<&Value> = sources.iter().map(|v| &**v).collect();
        evaluate_with(plan, &bound, &sources, &spacing, ndim, &row.id, &opts, reuse, &mut |i, v| sink(i, v, res_ref), &mut timings)
    };
    res.timings = timings;
    // Every output written (or failed) before the sample's outcome is recorded.
    let mut write_error = None;
    for (i, h) in pending.take() {
        let r = h.wait().unwrap_or_else(|_| Err("the output writer panicked".into()));
        if let Err(e) = r
            && write_error.is_none()
        {
            write_error = Some((i, e));
        }
    }
    if let Err((i, e)) = r.and(write_error.map_or(Ok(()), Err)) {
        let id = plan.stages[i].id.clone();
        return res.fail(&id, e);
    }
    finish_sample(plan, &store, row, cfg, &keys, &valid, old.as_ref(), res)
}

/// Voxel outputs up to this size (bytes) are written by the sample's own thread.
const SMALL_OUTPUT: u64 = 4 << 20;

/// The stages whose values a run must have: outputs not current from the last run (to write),
/// and tables (to merge, whether or not their files are current).
fn required_stages(plan: &Plan, valid: &[bool]) -> Vec<bool> {
    let mut required = vec![false; plan.stages.len()];
    for (i, _) in &plan.outputs {
        required[*i] = !valid[*i] || plan.stages[*i].kind == Kind::Table;
    }
    required
}

/// What a run into `out` would find and do for one sample: per stage whether its value is
/// stored (a checkpoint, or a current output file; every stage when the sample is up to date),
/// whether it is up to date, streamed or run in memory, and its steps ([`schedule::steps`], from
/// the same decisions the executors make).
#[derive(Debug, Clone)]
pub struct SampleSteps {
    pub hits: Vec<(String, bool)>,
    pub up_to_date: bool,
    pub streamed: bool,
    pub steps: Vec<schedule::Step>,
}

impl SampleSteps {
    /// One line: `in memory: reuse a; fuse b+c; d; …` (`out of core` for streamed global stages).
    pub fn describe(&self, plan: &Plan) -> String {
        if self.up_to_date {
            return "up to date: nothing to run".into();
        }
        let ids = |v: &[usize]| v.iter().map(|&k| plan.stages[k].id.as_str()).collect::<Vec<_>>().join("+");
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                schedule::Step::Reuse(i) => format!("reuse {}", plan.stages[*i].id),
                schedule::Step::Fused(g) if self.streamed => format!("per slab {}", ids(&g.stages)),
                schedule::Step::Fused(g) => format!("fuse {}", ids(&g.stages)),
                schedule::Step::Global(i) if self.streamed => format!("out of core {}", plan.stages[*i].id),
                schedule::Step::Global(i) => format!("whole {}", plan.stages[*i].id),
                schedule::Step::ByPlanes(g, i) => format!("{} by planes into {}", ids(&g.stages), plan.stages[*i].id),
            })
            .collect();
        format!(
            "{}: {}",
            if self.streamed { "streamed" } else { "in memory" },
            if steps.is_empty() { "nothing".into() } else { steps.join("; ") }
        )
    }
}

/// What a run into `out` with budget `memory` would find and do for `row` (nothing is
/// computed). `Err` says why the sample cannot be planned (a missing or unreadable input, a
/// bind error).
pub fn sample_steps(plan: &Plan, row: &SampleRow, manifest: &Manifest, out: &Path, memory: u64) -> Result<SampleSteps, String> {
    let Prepared { headers, bound, keys, spacing, ndim, .. } = prepare(plan, row, manifest, &SharedInputs::none()).map_err(|(_, e)| e)?;
    let store = Store::new(out);
    let rec = store.record(&row.id);
    let n = plan.stages.len();
    let hits = |all: bool, valid: &[bool]| {
        plan.stages.iter().enumerate().map(|(i, st)| (st.id.clone(), all || store.has(&keys[i]) || valid[i])).collect()
    };
    if rec.as_ref().is_some_and(|r| up_to_date(plan, &store, row, r, &keys, out).is_some()) {
        return Ok(SampleSteps {
            hits: hits(true, &vec![true; n]),
            up_to_date: true,
            streamed: rec.is_some_and(|r| r.streamed),
            steps: Vec::new(),
        });
    }
    let valid: Vec<bool> = (0..n).map(|i| rec.as_ref().is_some_and(|r| output_valid(plan, r, row, i, &keys[i], out))).collect();
    let streamed = stream::whole_run_bytes(plan, &bound, &headers) > memory;
    let decisions = schedule::decide(required_stages(plan, &valid), &|i| plan.stage_inputs(i), &mut |i| {
        // As the executors take them: in memory, any checkpoint or a current output read back;
        // streamed, a table's checkpoint or a global stage's spill.
        match (streamed, plan.stages[i].kind) {
            (false, _) => store.has(&keys[i]) || valid[i],
            (true, Kind::Table) => store.has(&keys[i]),
            (true, _) => store.has_raw(&keys[i]),
        }
    });
    let src_meta = |k: usize| Meta { kind: Kind::Image, dtype: Some(headers[k].dtype), shape: headers[k].shape, ndim, scale: [1.0; 3] };
    let local = |i: usize| {
        let ins: Vec<Meta> = plan.stages[i]
            .inputs
            .iter()
            .map(|(_, r)| match r {
                Ref::Source(k) => src_meta(*k),
                Ref::Stage(j) => bound.metas[*j].clone(),
            })
            .collect();
        let refs: Vec<&Meta> = ins.iter().collect();
        let ctx = Ctx { sample: &row.id, spacing: scaled(&spacing, input_scale(plan, &bound, i)).zyx, unit: &spacing.unit, ndim };
        tiled::is_local(bound.ops[i].as_ref(), &ctx, &bound.metas[i], &refs)
    };
    let last_use = plan.last_use();
    let by_planes = |g: &tiled::Group, i: usize| !streamed && reads_by_planes(plan, &bound, &last_use, g, i);
    let steps = schedule::steps(&decisions, &local, &|a, b| bound.metas[a].shape == bound.metas[b].shape, &by_planes);
    Ok(SampleSteps { hits: hits(false, &valid), up_to_date: false, streamed, steps })
}

/// Every stage's checkpoint key for one sample (SPEC §5: what can change a stage's output).
pub fn stage_keys(plan: &Plan, bound: &Bound, input_hashes: &[String], spacing: &Spacing, ndim: u8) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(plan.stages.len());
    for (i, st) in plan.stages.iter().enumerate() {
        let op = &bound.ops[i];
        let scale = input_scale(plan, bound, i);
        let parts = crate::store::KeyParts {
            tessera: env!("CARGO_PKG_VERSION"),
            op: op.info().name,
            op_version: op.info().version,
            params: op.params_json(),
            inputs: st
                .inputs
                .iter()
                .map(|(_, r)| match r {
                    Ref::Source(k) => format!("file:{}", input_hashes.get(*k).map(String::as_str).unwrap_or("")),
                    Ref::Stage(j) => keys[*j].clone(),
                })
                .collect(),
            spacing: scaled(spacing, scale).zyx,
            unit: &spacing.unit,
            ndim,
        };
        keys.push(crate::store::stage_key(&parts));
    }
    keys
}

/// The TIFF or `.npy` output format of stage `i`, if it has one (such a file holds the value
/// exactly, so it doubles as the stage's checkpoint).
fn voxel_output(plan: &Plan, i: usize) -> Option<Format> {
    plan.outputs
        .iter()
        .filter(|(o, _)| *o == i)
        .flat_map(|(_, fs)| fs.iter().copied())
        .find(|f| matches!(f, Format::Voxels(v) if v.exact()))
}

/// Stage `i`'s value read back from its (verified) TIFF/npy output: masks from 0/255, labels
/// from u16/u32, images as written. `None` if there is no such output or it does not fit.
fn read_back(plan: &Plan, bound: &Bound, row: &SampleRow, i: usize, out: &Path) -> Option<Value> {
    let f = voxel_output(plan, i)?;
    let path = io::output_voxels(&out.join("samples").join(&row.id).join(format!("{}.{}", plan.stages[i].id, f.ext())));
    let data = io::read_image(&path, ReadLimits { max_bytes: u64::MAX }).ok()?.data;
    if data.shape() != bound.metas[i].shape {
        return None;
    }
    match (plan.stages[i].kind, data) {
        (Kind::Mask, Data::U8(a)) => Some(Value::Mask(a.mapv(|v| (v != 0) as u8))),
        (Kind::Labels, Data::U16(a)) => Some(Value::Labels(a.into())),
        (Kind::Labels, Data::U32(a)) => Some(Value::Labels(a.into())),
        (Kind::Image, d) if Some(d.dtype()) == bound.metas[i].dtype => Some(Value::Image(d)),
        _ => None,
    }
}

/// The output files of stage `i` for a sample, relative to the output folder.
fn output_files(plan: &Plan, row: &SampleRow, i: usize) -> Vec<String> {
    plan.outputs
        .iter()
        .filter(|(o, _)| *o == i)
        .flat_map(|(_, fs)| fs.iter().map(|f| format!("samples/{}/{}.{}", row.id, plan.stages[i].id, f.ext())))
        .collect()
}

/// Whether stage `i`'s output files are those of `rec` with the same key, in the current
/// layout, and verify.
fn output_valid(plan: &Plan, rec: &SampleRecord, row: &SampleRow, i: usize, key: &str, out: &Path) -> bool {
    let files = output_files(plan, row, i);
    !files.is_empty()
        && rec.layout == crate::store::OUTPUT_LAYOUT
        && rec.stages.get(&plan.stages[i].id).map(String::as_str) == Some(key)
        && files.iter().all(|f| rec.outputs.get(f).is_some_and(|h| crate::store::file_fingerprint(&out.join(f)).ok().as_ref() == Some(h)))
}

/// The merged-table inputs of a sample whose last run is still valid: same stage keys, the same
/// output files, every one verifying, and its tables in the checkpoint store. `None` otherwise.
fn up_to_date(
    plan: &Plan,
    store: &Store,
    row: &SampleRow,
    rec: &SampleRecord,
    keys: &[String],
    out: &Path,
) -> Option<Vec<(usize, crate::table::Table)>> {
    let want: std::collections::BTreeMap<String, String> = plan.stages.iter().zip(keys).map(|(st, k)| (st.id.clone(), k.clone())).collect();
    if rec.stages != want || rec.failed.is_some() || !rec.complete || rec.layout != crate::store::OUTPUT_LAYOUT {
        return None;
    }
    let files: Vec<String> = plan.outputs.iter().flat_map(|(i, _)| output_files(plan, row, *i)).collect();
    if files.len() != rec.outputs.len()
        || !(0..plan.stages.len()).all(|i| output_files(plan, row, i).is_empty() || output_valid(plan, rec, row, i, &keys[i], out))
    {
        return None;
    }
    let mut tables = Vec::new();
    for (i, _) in &plan.outputs {
        if plan.stages[*i].kind == Kind::Table {
            let Some(Value::Table(t)) = store.load(&keys[*i]) else { return None };
            tables.push((*i, t.for_sample(&row.id, &row.meta)));
        }
    }
    Some(tables)
}

/// Takes a sample's lock, waiting while a live process on this machine holds it.
fn lock_sample(store: &Store, sample: &str) -> Result<crate::store::Lock, String> {
    loop {
        match store.lock(sample) {
            Ok(l) => return Ok(l),
            Err(h) if h.pid != 0 && (h.host.is_empty() || h.host == crate::util::hostname()) => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(h) if h.pid == 0 => {
                return Err(format!("cannot open the lock file {}", store.root().join("locks").join(format!("{sample}.lock")).display()));
            }
            Err(h) => {
                return Err(format!(
                    "sample '{sample}' is locked by process {} on host {} ({}): another run is working on it",
                    h.pid,
                    h.host,
                    store.root().join("locks").join(format!("{sample}.lock")).display()
                ));
            }
        }
    }
}

/// After a sample ran: objects in plan order (from the last run for stages not recomputed), the
/// record of what it left (for the next run to skip it), unless it failed.
#[allow(clippy::too_many_arguments)]
fn finish_sample(
    plan: &Plan,
    store: &Store,
    row: &SampleRow,
    cfg: &RunConfig,
    keys: &[String],
    valid: &[bool],
    old: Option<&SampleRecord>,
    mut res: SampleResult,
) -> SampleResult {
    if res.status != Status::Done {
        // How far it got, for `tessera status` (never taken as up to date).
        if cfg.checkpoints {
            let rec = SampleRecord {
                sample: row.id.clone(),
                stages: plan.stages.iter().zip(keys).map(|(st, k)| (st.id.clone(), k.clone())).collect(),
                outputs: Default::default(),
                objects: Default::default(),
                streamed: res.streamed,
                failed: Some((res.failed_stage.clone().unwrap_or_default(), res.error.clone().unwrap_or_default())),
                complete: false,
                layout: crate::store::OUTPUT_LAYOUT,
            };
            let _ = store.write_record(&rec);
        }
        return res;
    }
    let seen: std::collections::BTreeMap<String, u64> = res.objects.iter().cloned().collect();
    res.objects = plan
        .stages
        .iter()
        .enumerate()
        .filter(|(_, st)| st.kind == Kind::Labels)
        .filter_map(|(i, st)| {
            let n = seen
                .get(&st.id)
                .copied()
                .or_else(|| old.filter(|r| r.stages.get(&st.id) == Some(&keys[i])).and_then(|r| r.objects.get(&st.id).copied()));
            n.map(|n| (st.id.clone(), n))
        })
        .collect();
    if !cfg.checkpoints {
        return res;
    }
    let mut outputs = std::collections::BTreeMap::new();
    for (i, _) in &plan.outputs {
        for f in output_files(plan, row, *i) {
            let old_hash = old.filter(|_| valid[*i]).and_then(|r| r.outputs.get(&f).cloned());
            let h = match old_hash {
                Some(h) => h,
                None => match crate::store::file_fingerprint(&cfg.out.join(&f)) {
                    Ok(h) => h,
                    Err(e) => return res.fail("output", format!("{f}: {e}")),
                },
            };
            outputs.insert(f, h);
        }
    }
    let rec = SampleRecord {
        sample: row.id.clone(),
        stages: plan.stages.iter().zip(keys).map(|(st, k)| (st.id.clone(), k.clone())).collect(),
        outputs,
        objects: res.objects.iter().cloned().collect(),
        streamed: res.streamed,
        failed: None,
        complete: true,
        layout: crate::store::OUTPUT_LAYOUT,
    };
    if let Err(e) = store.write_record(&rec) {
        return res.fail("output", format!("writing the sample's record: {e}"));
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
    (checkpoints, keys, valid): (Option<&Store>, &[String], &[bool]),
    on_stage: &(dyn Fn(&str) + Sync),
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
        checkpoints,
        keys,
        valid,
        force: cfg.force,
        on_stage,
        targets: None,
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
        let mut reused = Vec::new();
        let mut sink = |i: usize, value: &Value| -> Result<(), String> {
            match plan.outputs.iter().find(|(o, _)| *o == i) {
                Some((_, _)) if valid[i] => {
                    if let Value::Table(t) = value {
                        res_ref.tables.push((i, t.for_sample(&row.id, &row.meta)));
                    }
                    Ok(())
                }
                // Streamed samples are already disk-bound: write here, in order.
                // (Voxel stages are written slab by slab by the streamer; what reaches here is
                // a table, so the copy for sharing is small.) Its spacing is its input's, as in
                // memory (after a downsample, the coarser one).
                Some((_, formats)) => write_output(
                    &sample_dir,
                    &plan.stages[i].id,
                    &Arc::new(value.clone()),
                    None,
                    formats,
                    (ndim, &paths[0]),
                    &scaled(&spacing, bound.metas[i].scale),
                    plan,
                    row,
                    res_ref,
                    i,
                )
                .and_then(|job| job.map_or(Ok(()), |job| job())),
                None => Ok(()),
            }
        };
        let r = stream::evaluate_streamed(&s, &mut sink, &mut objects, &mut timings, &mut reused);
        res_ref.reused = reused;
        r
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

/// Which stages [`evaluate_with`] computes, and the values it is given instead (checkpoints).
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    /// Per stage: a value to use instead of computing it.
    pub preset: Vec<Option<Value>>,
    /// Per stage: compute it (stages neither computed nor preset are not needed and skipped).
    pub compute: Vec<bool>,
}

/// Where [`evaluate`] hands each stage value (with its plan index) as it is computed; an error
/// fails the stage.
pub type ValueSink<'a> = dyn FnMut(usize, &Arc<Value>) -> Result<(), String> + 'a;

/// [`evaluate_with`] computing every stage.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    plan: &Plan,
    bound: &Bound,
    sources: &[Value],
    spacing: &Spacing,
    ndim: u8,
    sample: &str,
    opts: &EvalOpts,
    sink: &mut ValueSink,
    timings: &mut Vec<(String, f64)>,
) -> Result<(), (usize, String)> {
    let reuse = Reuse { preset: vec![None; plan.stages.len()], compute: vec![true; plan.stages.len()] };
    let sources: Vec<&Value> = sources.iter().collect();
    evaluate_with(plan, bound, &sources, spacing, ndim, sample, opts, reuse, sink, timings)
}

/// Runs a bound plan's stages on a sample's sources, in plan order. Runs of local stages are
/// fused and evaluated over tiles ([`tiled`]); other stages run on whole arrays. `sink` sees
/// every stage value that exists at full size, in plan order, once, before it may be freed.
/// Timings are pushed per stage (a fused group's as one entry, its ids joined by `+`).
/// An error names the failing stage's plan index. With `reuse`, preset values stand in for
/// their stages (and are given to `sink` too), and stages marked neither are skipped.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    plan: &Plan,
    bound: &Bound,
    sources: &[&Value],
    spacing: &Spacing,
    ndim: u8,
    sample: &str,
    opts: &EvalOpts,
    reuse: Reuse,
    sink: &mut ValueSink,
    timings: &mut Vec<(String, f64)>,
) -> Result<(), (usize, String)> {
    let Reuse { mut preset, compute } = reuse;
    let n = plan.stages.len();
    let last_use = plan.last_use();
    // Buffers freed stages gave back are for this sample's later stages only.
    struct ClearPool;
    impl Drop for ClearPool {
        fn drop(&mut self) {
            crate::util::clear_pool();
        }
    }
    let _pool = ClearPool;
    let ctx = Ctx { sample, spacing: spacing.zyx, unit: &spacing.unit, ndim };
    // Stages after a downsample see larger voxels.
    let ctx_of = |i: usize| Ctx { spacing: scaled(spacing, input_scale(plan, bound, i)).zyx, ..ctx.clone() };
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
    let reads = |i: usize| plan.stage_inputs(i);
    let is_output = |i: usize| plan.outputs.iter().any(|(o, _)| *o == i);
    // Shared, so that an output writer running in the background can hold a value that later
    // stages no longer need.
    let mut values: Vec<Option<Arc<Value>>> = vec![None; n];
    // Free what no later stage reads (unless every stage is to be kept).
    // A value held nowhere else (no output writer has it) gives its buffer back for reuse.
    let free = |values: &mut Vec<Option<Arc<Value>>>, i: usize| {
        if !opts.keep_all {
            for (k, v) in values.iter_mut().enumerate().take(i + 1) {
                if last_use[k] <= i
                    && let Some(Ok(v)) = v.take().map(Arc::try_unwrap)
                {
                    v.recycle();
                }
            }
        }
    };
    let decisions: Vec<schedule::Decision> = (0..n)
        .map(|i| match (compute[i], preset[i].is_some()) {
            (true, _) => schedule::Decision::Compute,
            (false, true) => schedule::Decision::Reuse,
            (false, false) => schedule::Decision::Skip,
        })
        .collect();
    let same_shape = |a: usize, b: usize| bound.metas[a].shape == bound.metas[b].shape;
    let by_planes = |g: &tiled::Group, i: usize| !opts.keep_all && reads_by_planes(plan, bound, &last_use, g, i);
    for step in schedule::steps(&decisions, &local_halo, &same_shape, &by_planes) {
        let t0 = Instant::now();
        if let schedule::Step::ByPlanes(g, i) = &step {
            let (g, i) = (g, *i);
            let last = *g.stages.last().expect("a group has stages");
            let out = {
                let (full, inputs) = group_feeds(plan, g, &values, sources);
                let run = tiled::GroupRun {
                    group: g,
                    ops: g.stages.iter().map(|&k| bound.ops[k].as_ref()).collect(),
                    inputs,
                    ctxs: g.stages.iter().map(|&k| ctx_of(k)).collect(),
                    keep: g.stages.iter().map(|&k| k == last).collect(),
                    shape: bound.metas[g.stages[0]].shape,
                    tiles: Vec::new(),
                    threads: opts.threads,
                };
                let names = g.stages.iter().map(|&k| plan.stages[k].id.clone()).collect();
                let planes = tiled::GroupPlanes { run: &run, full: &full, reads: &reads, meta: bound.metas[last].clone(), names };
                let rest: Vec<&Value> = plan.stages[i].inputs[1..].iter().map(|(_, r)| input_value(r, sources, &values)).collect();
                Arc::new(bound.ops[i].run_planes(&planes, &rest, &ctx_of(i)).map_err(|e| (i, e))?)
            };
            sink(i, &out).map_err(|e| (i, e))?;
            let ids: Vec<&str> = g.stages.iter().chain([&i]).map(|&k| plan.stages[k].id.as_str()).collect();
            timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
            values[i] = Some(out);
            free(&mut values, i);
            continue;
        }
        let group = match step {
            schedule::Step::Reuse(i) => {
                if let Some(v) = preset[i].take() {
                    let v = Arc::new(v);
                    sink(i, &v).map_err(|e| (i, e))?;
                    values[i] = Some(v);
                }
                free(&mut values, i);
                continue;
            }
            schedule::Step::Global(i) => tiled::Group { stages: vec![i], halos: Vec::new() },
            schedule::Step::Fused(g) => g,
            schedule::Step::ByPlanes(..) => unreachable!("taken above"),
        };
        let first = group.stages[0];
        let last = *group.stages.last().expect("a step has stages");
        let tiles = if group.halos.is_empty() {
            Vec::new()
        } else {
            let bpv = group.stages.iter().map(|&k| tiled::bytes_per_voxel(&bound.metas[k])).sum::<u64>()
                + plan.stages[first].inputs.iter().map(|(_, r)| tiled::bytes_per_voxel(meta_of(r))).sum::<u64>();
            let down = group.downstream(&reads);
            tiles::plan_tiles(bound.metas[first].shape, opts.tile, group.total_halo(&down), bpv, opts.memory, opts.threads)
        };
        if tiles.len() > 1 {
            let (full, feeds) = group_feeds(plan, &group, &values, sources);
            let keep: Vec<bool> = group.stages.iter().map(|&k| opts.keep_all || last_use[k] > last || is_output(k) || k == last).collect();
            let run = tiled::GroupRun {
                group: &group,
                ops: group.stages.iter().map(|&k| bound.ops[k].as_ref()).collect(),
                inputs: feeds,
                ctxs: group.stages.iter().map(|&k| ctx_of(k)).collect(),
                keep,
                shape: bound.metas[first].shape,
                tiles,
                threads: opts.threads,
            };
            let out = tiled::run_group(&run, &full, &reads).map_err(|(p, e)| (group.stages[p], e))?;
            drop(full);
            for (p, v) in out.into_iter().enumerate() {
                let k = group.stages[p];
                if let Some(v) = v {
                    let v = Arc::new(v);
                    sink(k, &v).map_err(|e| (k, e))?;
                    values[k] = Some(v);
                }
            }
            let ids: Vec<&str> = group.stages.iter().map(|&k| plan.stages[k].id.as_str()).collect();
            timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
            free(&mut values, last);
        } else {
            // One tile (or a global stage): each stage on whole arrays, in turn.
            for &i in &group.stages {
                let t0 = Instant::now();
                let op = bound.ops[i].as_ref();
                // The first input's value, when this stage may write over it: its last reader,
                // reading it once, and nothing else (an output or checkpoint writer) holding it.
                let over = match plan.stages[i].inputs.split_first() {
                    Some(((_, Ref::Stage(j)), rest))
                        if op.writes_over_input()
                            && !opts.keep_all
                            && last_use[*j] == i
                            && !rest.iter().any(|(_, r)| *r == Ref::Stage(*j)) =>
                    {
                        match values[*j].take().map(Arc::try_unwrap) {
                            Some(Ok(v)) => Some(v),
                            Some(Err(held)) => {
                                values[*j] = Some(held);
                                None
                            }
                            None => None,
                        }
                    }
                    _ => None,
                };
                let out = {
                    let value = |r: &Ref| input_value(r, sources, &values);
                    let inputs = &plan.stages[i].inputs;
                    let run = match over {
                        Some(first) => {
                            let rest: Vec<&Value> = inputs[1..].iter().map(|(_, r)| value(r)).collect();
                            op.run_over(first, &rest, &ctx_of(i))
                        }
                        None => op.run(&inputs.iter().map(|(_, r)| value(r)).collect::<Vec<_>>(), &ctx_of(i)),
                    };
                    Arc::new(run.map_err(|e| (i, e))?)
                };
                sink(i, &out).map_err(|e| (i, e))?;
                timings.push((plan.stages[i].id.clone(), t0.elapsed().as_secs_f64()));
                values[i] = Some(out);
                free(&mut values, i);
            }
        }
    }
    Ok(())
}

/// Whether the global stage `i` reads the fused run `g` just before it by planes, in memory
/// ([`schedule::Step::ByPlanes`]): `g`'s last stage is `i`'s first input, nothing after `i`
/// reads a stage of `g`, none is written, `i` reads nothing else of `g`, and `i`'s op reads that
/// kind of input by planes.
fn reads_by_planes(plan: &Plan, bound: &Bound, last_use: &[usize], g: &tiled::Group, i: usize) -> bool {
    let Some(&last) = g.stages.last() else { return false };
    let inputs = &plan.stages[i].inputs;
    g.stages.iter().all(|&k| last_use[k] <= i && !plan.outputs.iter().any(|(o, _)| *o == k))
        && inputs.first().is_some_and(|(_, r)| *r == Ref::Stage(last))
        && !inputs[1..].iter().any(|(_, r)| matches!(r, Ref::Stage(k) if g.stages.contains(k)))
        && bound.ops[i].reads_planes(&bound.metas[last])
}

/// A stage input's value: a source, or an earlier stage's (computed before it is read).
fn input_value<'v>(r: &Ref, sources: &[&'v Value], values: &'v [Option<Arc<Value>>]) -> &'v Value {
    match r {
        Ref::Source(s) => sources[*s],
        Ref::Stage(j) => values[*j].as_deref().expect("inputs computed before use"),
    }
}

/// Where each stage of a fused group takes its inputs from ([`tiled::Feed`]), and the full-size
/// values (sources, earlier stages) it reads.
fn group_feeds<'v>(
    plan: &Plan,
    group: &tiled::Group,
    values: &'v [Option<Arc<Value>>],
    sources: &[&'v Value],
) -> (Vec<&'v Value>, Vec<Vec<tiled::Feed>>) {
    let pos = |k: usize| group.stages.iter().position(|&g| g == k);
    let mut full: Vec<&Value> = Vec::new();
    let mut feeds = Vec::new();
    for &k in &group.stages {
        let mut f = Vec::new();
        for (_, r) in &plan.stages[k].inputs {
            f.push(match r {
                Ref::Stage(x) if let Some(p) = pos(*x) => tiled::Feed::Group(p),
                _ => {
                    full.push(input_value(r, sources, values));
                    tiled::Feed::Full(full.len() - 1)
                }
            });
        }
        feeds.push(f);
    }
    (full, feeds)
}

/// The data a stage value is written as (SPEC §4): images as they are, masks 0/255, labels
/// u16 when `labels_u16` (every id ≤ 65535), else u32; `None` for tables.
fn file_data(v: &Value, labels_u16: bool) -> Option<Data> {
    match v {
        Value::Image(d) => Some(d.clone()),
        Value::Mask(m) => Some(Data::U8(crate::util::map3(m, mask_in_file))),
        Value::Labels(Labels::U16(l)) => Some(if labels_u16 { Data::U16(l.clone()) } else { Data::U32(crate::util::map3(l, u32::from)) }),
        Value::Labels(Labels::U32(l)) if labels_u16 => Some(Data::U16(crate::util::map3(l, |x| x as u16))),
        Value::Labels(Labels::U32(l)) => Some(Data::U32(l.clone())),
        Value::Table(_) => None,
    }
}

/// A mask voxel as files hold it: 0 or 255.
fn mask_in_file(x: u8) -> u8 {
    if x != 0 { 255 } else { 0 }
}

/// How a value of `kind` is written as voxels ([`io::Role`]).
pub(crate) fn voxel_role(kind: Kind) -> io::Role {
    match kind {
        Kind::Mask => io::Role::Mask,
        Kind::Labels => io::Role::Labels,
        Kind::Image | Kind::Table => io::Role::Image,
    }
}

/// Writes a voxel value (image, mask or labels) to `path` in a voxel format. Masks and labels
/// are converted to the file's type ([`file_data`]) a few MiB of planes at a time, so writing
/// one takes no copy of the whole value.
fn write_voxels(path: &Path, value: &Value, labels_u16: bool, format: Format, meta: &io::VoxelMeta) -> Result<(), String> {
    let err = |e: io::ImageError| e.to_string();
    let Format::Voxels(vf) = format else { return Err(format!("internal: a {} cannot be written as {}", value.kind(), format.ext())) };
    let (dim, dtype) = match value {
        Value::Image(d) => return io::write_voxels(path, vf, d, meta).map_err(err),
        Value::Mask(m) => (m.dim(), io::DType::U8),
        Value::Labels(l) => (l.dim(), if labels_u16 { io::DType::U16 } else { io::DType::U32 }),
        Value::Table(_) => return Err("internal: a table has no voxels to write".into()),
    };
    let shape = [dim.0, dim.1, dim.2];
    let mut out = io::VoxelWriter::create(path, vf, shape, dtype, meta).map_err(err)?;
    let plane_bytes = (shape[1] * shape[2]).max(1) * dtype.bytes_per_voxel() as usize;
    let block = ((4usize << 20) / plane_bytes).max(1);
    for z0 in (0..shape[0]).step_by(block) {
        let z = ndarray::s![z0..(z0 + block).min(shape[0]), .., ..];
        let slab = match value {
            Value::Mask(m) => Data::U8(m.slice(z).mapv(mask_in_file)),
            Value::Labels(Labels::U16(l)) if labels_u16 => Data::U16(l.slice(z).to_owned()),
            Value::Labels(Labels::U16(l)) => Data::U32(l.slice(z).mapv(u32::from)),
            Value::Labels(Labels::U32(l)) if labels_u16 => Data::U16(l.slice(z).mapv(|x| x as u16)),
            Value::Labels(Labels::U32(l)) => Data::U32(l.slice(z).to_owned()),
            Value::Image(_) | Value::Table(_) => unreachable!("handled above"),
        };
        out.append(&slab).map_err(err)?;
    }
    out.finish().map_err(err)
}

/// Writing a voxel output, handed to its own thread so that encoding and writing overlap the
/// stages after it; joined before the sample's record is written.
type WriteJob = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// A [`WriteJob`] or a checkpoint being saved, running.
type Writing = crate::util::Pending<Result<(), String>>;

#[allow(clippy::too_many_arguments)]
fn write_output(
    dir: &Path,
    stage: &str,
    shared: &Arc<Value>,
    // The largest label of a labels value, when the caller has it already.
    max_label: Option<u32>,
    formats: &[Format],
    // The sample's dimensionality and image.
    (ndim, image): (u8, &Path),
    spacing: &Spacing,
    plan: &Plan,
    row: &SampleRow,
    res: &mut SampleResult,
    index: usize,
) -> Result<Option<WriteJob>, String> {
    let value: &Value = shared;
    let labels_u16 = match value {
        Value::Labels(l) => max_label.unwrap_or_else(|| l.max()) <= u16::MAX as u32,
        _ => false,
    };
    if let Some(bad) = formats.iter().find(|f| f.holds_voxels() == matches!(value, Value::Table(_))) {
        return Err(format!("cannot write a {} as {}", value.kind(), bad.ext()));
    }
    if !matches!(value, Value::Table(_)) {
        let jobs: Vec<(PathBuf, Format)> = formats.iter().map(|f| (dir.join(format!("{stage}.{}", f.ext())), *f)).collect();
        let (spacing, compression, value) = (spacing.clone(), plan.spec.compression, Arc::clone(shared));
        let (role, image) = (voxel_role(value.kind()), image.to_path_buf());
        return Ok(Some(Box::new(move || {
            for (path, f) in jobs {
                let meta = io::VoxelMeta { ndim, spacing: &spacing, compression, role, source: Some(&image) };
                write_voxels(&path, &value, labels_u16, f, &meta)?;
            }
            Ok(())
        })));
    }
    for f in formats {
        let path = dir.join(format!("{stage}.{}", f.ext()));
        if let Value::Table(t) = value {
            let t = t.for_sample(&row.id, &row.meta);
            let mut df = t.to_frame().map_err(|e| e.to_string())?;
            match f {
                Format::Table(TableFormat::Parquet) => {
                    let mut meta = table_metadata(plan, &t, spacing);
                    meta.push(("tessera.spacing".into(), serde_json::json!(spacing.zyx).to_string()));
                    crate::table::write_parquet(&path, &mut df, &meta).map_err(|e| e.to_string())?;
                }
                Format::Table(TableFormat::Csv) => crate::table::write_csv(&path, &mut df).map_err(|e| e.to_string())?,
                Format::Voxels(_) => return Err(format!("internal: a table cannot be written as {}", f.ext())),
            }
        }
    }
    if let Value::Table(t) = value
        && !res.tables.iter().any(|(i, _)| *i == index)
    {
        res.tables.push((index, t.for_sample(&row.id, &row.meta)));
    }
    Ok(None)
}

/// Parquet key-value metadata: units, unit of the sample, pipeline hash, tessera version.
pub(crate) fn table_metadata(plan: &Plan, t: &Table, spacing: &Spacing) -> Vec<(String, String)> {
    let units: serde_json::Map<String, serde_json::Value> = t.units().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    vec![
        ("tessera.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("tessera.pipeline".into(), plan.spec.name.clone()),
        ("tessera.pipeline_hash".into(), plan.hash.clone()),
        ("tessera.unit".into(), spacing.unit.clone()),
        ("tessera.units".into(), serde_json::Value::Object(units).to_string()),
    ]
}

/// The memory that samples in flight hold together, kept within what the process may use: a
/// sample is admitted when its working set fits beside those running (or when none runs), and
/// waits otherwise. Each sample keeps to `--memory` on its own (streaming what does not fit);
/// without this, `--threads` samples at once could each take their budget and together pass
/// the machine's memory or the job's cgroup limit, and the kernel would kill the run.
pub struct Admission {
    capacity: u64,
    used: Mutex<u64>,
    freed: std::sync::Condvar,
}

/// A sample's admitted memory, given back when dropped.
pub struct Admitted<'a> {
    gate: &'a Admission,
    bytes: u64,
}

impl Admission {
    pub fn new(capacity: u64) -> Admission {
        Admission { capacity, used: Mutex::new(0), freed: std::sync::Condvar::new() }
    }
    /// Waits until `bytes` fit beside what is admitted (or nothing is), then holds them.
    pub fn admit(&self, bytes: u64) -> Admitted<'_> {
        let bytes = bytes.min(self.capacity);
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *used > 0 && *used + bytes > self.capacity {
            used = self.freed.wait(used).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += bytes;
        Admitted { gate: self, bytes }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut used = self.gate.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= self.bytes;
        self.gate.freed.notify_all();
    }
}

/// `run` applied to every row, at most `in_flight` rows at a time, rows taken from `rows` in
/// order as earlier ones finish (the manifest is read as it runs). Called from outside the
/// rayon pool (the command line's main thread); rows run on the global pool.
///
/// Each row is handed to the rayon pool by one of `in_flight` feeder threads, which waits for it
/// before taking the next row. A pool thread that waits inside a sample (a parallel loop, a
/// background writer) may run another queued job meanwhile; because no more than `in_flight`
/// samples are ever queued or running, that nesting, the stack it takes and the memory held by
/// unfinished samples are bounded by `in_flight`, whatever the number of rows. (A `par_iter`
/// over the rows queues all of them, and a waiting thread could start sample after sample on
/// its own stack: a study of 800 samples overflowed it.)
fn for_each_sample(
    rows: impl Iterator<Item = (usize, SampleRow)> + Send,
    in_flight: usize,
    gate: &Admission,
    weigh: impl Fn(&SampleRow) -> u64 + Sync,
    run: impl Fn(usize, &SampleRow) + Sync,
) {
    let rows = Mutex::new(rows);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..in_flight.max(1))
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let next = rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
                        let Some((i, row)) = next else { break };
                        // The sample's memory is admitted here, outside the pool: a pool thread
                        // waiting for it could be holding, lower on its stack, the sample that
                        // would free it.
                        let _admitted = gate.admit(if in_flight > 1 { weigh(&row) } else { 0 });
                        // Runs on a pool thread; this feeder sleeps until it is done.
                        rayon::scope(|_| run(i, &row));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
}

/// What a run keeps of its samples while it runs (see [`RunSummary`]).
#[derive(Default)]
struct Tally {
    total: usize,
    done: usize,
    failed: usize,
    skipped: usize,
    up_to_date: usize,
    /// The first done samples by manifest row.
    first_done: std::collections::BTreeMap<usize, SampleResult>,
    /// The spacing of the first sample (by manifest row) that has one.
    spacing: Option<(usize, Spacing)>,
    errors: Vec<String>,
}

/// Runs every sample of `manifest` (a task's share of it, for a sharded run) and writes the
/// output folder. The manifest's rows are read as they run; each sample's tables and record
/// entry are set aside on disk, so memory does not grow with the rows. `Err`: the output
/// folder cannot take the run's working files.
pub fn run(plan: &Plan, manifest: &Manifest, cfg: &RunConfig, progress: &dyn Observer) -> Result<RunSummary, String> {
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let lock = Mutex::new(());
    let owns = |i: usize| cfg.task.is_none_or(|t| t.owns(i));
    let total = (0..manifest.len()).filter(|&i| owns(i)).count();
    progress.start(total);
    let records = study::Spill::create(&cfg.out, "run-records", total)?;
    // Study outputs are written from the samples' tables after the last sample; meanwhile the
    // tables wait on disk, so memory does not grow with the number of samples. A sharded task
    // writes no study outputs.
    let merges = plan.stats.is_some() || plan.outputs.iter().any(|(i, _)| plan.stages[*i].kind == Kind::Table);
    let spill = match cfg.task {
        None if merges && cfg.study_outputs => {
            // Per sample: its id, its table outputs and the statistics' table.
            let per = plan.outputs.iter().filter(|(i, _)| plan.stages[*i].kind == Kind::Table).count() + 2;
            Some(study::Spill::create(&cfg.out, "study-tables", total * per))
        }
        _ => None,
    };
    // The manifest's rows, read as they are needed; a manifest that stops reading mid-way (it
    // changed since it was opened) ends the run after the rows before it.
    let broken: Mutex<Option<String>> = Mutex::new(None);
    let rows = |what: &'static str| -> Result<_, String> {
        let broken = &broken;
        Ok(manifest
            .each()
            .map_err(|e| e.to_string())?
            .enumerate()
            .map_while(move |(i, r)| match r {
                Ok(r) => Some((i, r)),
                Err(e) => {
                    let mut b = broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    b.get_or_insert_with(|| format!("manifest ({what}): {e}: the rows after it were not run"));
                    None
                }
            })
            .filter(move |(i, _)| owns(*i)))
    };
    // Files that several rows read (crops of one photo) are read once (`shared`): a first pass
    // over the rows counts the rows of each file.
    let row_paths =
        |row: &SampleRow| if row.problem.is_some() { Vec::new() } else { source_paths(plan, row, manifest).unwrap_or_default() };
    let shared = SharedInputs::new(rows("counting the rows per file")?.flat_map(|(_, r)| row_paths(&r)), cfg.memory / 4);
    // The final run of a split one takes the hashes its phases computed.
    let shared = if cfg.split.is_some() { shared.hashing_once(Store::new(&cfg.out)) } else { shared };
    let tally = Mutex::new(Tally::default());
    let run_row = |k: usize, row: &SampleRow| {
        let interrupted = cfg.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        if stop.load(Ordering::SeqCst) || interrupted {
            let mut r = SampleResult::new(row);
            r.status = Status::Skipped;
            r.error = Some(
                if interrupted { "not run: the run was interrupted" } else { "not run: an earlier sample failed and --fail-fast is set" }
                    .into(),
            );
            return r;
        }
        let t = Instant::now();
        progress.begin(&row.id, plan.stages.len());
        let mut r = run_sample(plan, row, manifest, cfg, &shared, &|stage| progress.stage(&row.id, stage));
        let tables = std::mem::take(&mut r.tables);
        if r.status == Status::Done
            && let Some(Ok(spill)) = &spill
            && let Err(e) = spill.put_tables(k, &row.id, &tables)
        {
            r = r.fail("output", format!("setting its tables aside for the merged tables: {e}"));
        }
        if r.status == Status::Failed && cfg.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
        let k = done.fetch_add(1, Ordering::SeqCst) + 1;
        let _g = lock.lock();
        progress.sample(k, &r, t.elapsed().as_secs_f64());
        r
    };
    let run_one = |k: usize, row: &SampleRow| {
        let r = run_row(k, row);
        shared.done(&row_paths(row));
        let put = serde_json::to_vec(&provenance::entry(&r)).map_err(|e| e.to_string()).and_then(|b| records.put(k, 0, &b));
        let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = put {
            t.errors.push(format!("run.json: the record of sample '{}' could not be set aside: {e}", r.sample));
        }
        t.total += 1;
        match r.status {
            Status::Done => t.done += 1,
            Status::Failed => t.failed += 1,
            Status::Skipped => t.skipped += 1,
        }
        t.up_to_date += r.up_to_date as usize;
        if let Some(sp) = &r.spacing
            && t.spacing.as_ref().is_none_or(|(j, _)| k < *j)
        {
            t.spacing = Some((k, sp.clone()));
        }
        if r.status == Status::Done && (t.first_done.len() < FIRST_DONE || t.first_done.last_key_value().is_some_and(|(j, _)| k < *j)) {
            t.first_done.insert(k, r);
            if t.first_done.len() > FIRST_DONE {
                t.first_done.pop_last();
            }
        }
    };
    // What a sample holds: its whole working set in memory, or its budget when streamed.
    let weigh = |row: &SampleRow| {
        if cfg.split.is_some() {
            return cfg.memory;
        }
        sample_bytes(plan, row, manifest).map(|need| need.min(cfg.memory)).unwrap_or(0)
    };
    let gate = Admission::new(io::default_memory_budget());
    for_each_sample(rows("reading the rows to run")?, cfg.threads, &gate, weigh, run_one);
    progress.finish();
    let mut t = tally.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    t.errors.extend(broken.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));

    // Merged tables and statistics, from the samples that finished, in manifest order.
    let spacing = t.spacing.take().map(|(_, s)| s).unwrap_or_default();
    let (written, errors) = match &spill {
        None if cfg.task.is_some() || !cfg.study_outputs => (Vec::new(), Vec::new()),
        // Nothing to merge: no tables are set aside, and study::write has no table to write.
        None => study::write(plan, &cfg.out, &study::Samples { each: &|_| {} }, &spacing),
        Some(Err(e)) => (Vec::new(), vec![format!("merged tables and statistics not written: {e}")]),
        Some(Ok(spill)) => {
            let each = |visit: &mut study::Visit| {
                for row in spill.rows() {
                    let (id, tables) = spill.tables(row);
                    if !visit(&id, tables) {
                        break;
                    }
                }
            };
            study::write(plan, &cfg.out, &study::Samples { each: &each }, &spacing)
        }
    };
    t.errors.extend(errors);
    Ok(RunSummary {
        total: t.total,
        done: t.done,
        failed: t.failed,
        skipped: t.skipped,
        up_to_date: t.up_to_date,
        first_done: t.first_done.into_values().collect(),
        records,
        seconds: t0.elapsed().as_secs_f64(),
        written,
        errors: t.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<SampleRow> {
        (0..n).map(|i| SampleRow { line: i + 2, id: format!("s{i}"), image: PathBuf::new(), meta: Vec::new(), problem: None }).collect()
    }

    #[test]
    fn samples_are_admitted_together_only_while_their_memory_fits() {
        let gate = Admission::new(100);
        let first = gate.admit(60);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _second = gate.admit(60);
                tx.send(()).unwrap();
            });
            // The second waits while the first holds its 60 of 100.
            assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "admitted past the capacity");
            drop(first);
            rx.recv_timeout(std::time::Duration::from_secs(5)).expect("admitted once the first ended");
        });
        // More than the capacity runs alone; nothing runs beside it.
        let big = gate.admit(500);
        assert_eq!(big.bytes, 100);
        drop(big);
        let a = gate.admit(30);
        let b = gate.admit(70);
        drop((a, b));
        assert_eq!(*gate.used.lock().unwrap(), 0);
    }

    #[test]
    fn samples_nest_no_deeper_than_the_samples_in_flight() {
        // Each "sample" waits for a background job, as a sample waits for its output writers;
        // a waiting pool thread may run another sample meanwhile. Queuing every sample at once
        // (a par_iter over the rows) let that nest without bound: 800 samples overflowed the
        // stack. However many rows, the nesting stays within the samples in flight.
        thread_local!(static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
        let deepest = AtomicUsize::new(0);
        let rows = rows(3000);
        // As `run` does, from a thread outside the pool (the test's own): samples run on the
        // global pool.
        let out = Mutex::new(Vec::new());
        for_each_sample(
            rows.into_iter().enumerate(),
            2,
            &Admission::new(1),
            |_| 0,
            |k, row| {
                let d = DEPTH.with(|c| {
                    c.set(c.get() + 1);
                    c.get()
                });
                deepest.fetch_max(d, Ordering::SeqCst);
                let job = crate::util::background(move || {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    k * 2
                });
                let v = job.wait().unwrap();
                DEPTH.with(|c| c.set(c.get() - 1));
                out.lock().unwrap().push((k, v, row.id.clone()));
            },
        );
        let mut out = out.into_inner().unwrap();
        out.sort();
        assert_eq!(out.len(), 3000);
        assert!(out.iter().enumerate().all(|(k, (i, v, id))| *i == k && *v == k * 2 && *id == format!("s{k}")), "every row once");
        let d = deepest.load(Ordering::SeqCst);
        assert!(d <= 2, "samples nested {d} deep on one thread");
    }
}
