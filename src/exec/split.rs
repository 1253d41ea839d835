//! One volume split over machines (`tessera run --split N`, `tessera submit --split N`).
//!
//! Each sample is cut into N z-blocks and its stages run as *phases*, alternately block phases
//! (one task per block of every sample) and single phases (one task per sample):
//! - runs of local stages are computed per block, from their inputs' planes with the halo they
//!   need (sources, or values earlier phases stored);
//! - a global op with a phased form ([`crate::ops::slab::Phased`]: `label`, `threshold`,
//!   `measure`) computes a partial result per block, a single task reduces them in block
//!   order, and a later block phase applies that to every block (or computes the local op it
//!   became, or the reduce gave the op's table);
//! - a separable transform (`distance`, `voronoi`) sets each block's planes aside in runs of
//!   rows after the passes within planes; a block phase of crossing tasks, one per piece of
//!   rows, takes every plane of them along z; and the next block phase gathers each block's
//!   planes back;
//! - any other global op runs in a single task in its out-of-core form, on inputs assembled
//!   from the blocks, exactly as a streamed run would run it.
//!
//! Values that later phases read are stored per block (`part-B.spill`) under
//! `.tessera/split/<sample>/<stage key>/`, and a single task joins a stage's parts into its
//! checkpoint (the compressed chunks copied, not decoded): from there the ordinary checkpoint
//! machinery takes over, and the final phase is an ordinary run of the sample that takes every
//! stage from its checkpoint and writes the outputs. So the outputs are those of a streamed
//! run on one machine, byte for byte, whatever N. Every file a task writes appears whole
//! (written aside, renamed), and a task skips what exists, so a killed or failed task is simply
//! run again.

use std::path::{Path, PathBuf};

use super::schedule;
use crate::ops::slab::Ending;
use crate::ops::{Halo, Kind};
use crate::plan::Plan;

/// One piece of work in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "work", content = "stage", rename_all = "lowercase")]
pub enum Work {
    /// A local stage, computed per block.
    Local(usize),
    /// A phased global stage's partial result of a round (0-based), per block.
    Partial(usize, usize),
    /// A phased global stage's partial results of a round reduced (one task per sample).
    Reduce(usize, usize),
    /// A phased global stage's output per block, from its reduced result (or, for one that
    /// crosses, from what its crossing tasks gave).
    Apply(usize),
    /// A phased global stage that crosses ([`crate::ops::slab::Phased::crosses`]): a task per
    /// piece of rows, every plane of them, from the blocks' partial results.
    Cross(usize),
    /// A global stage computed whole, out of core (one task per sample).
    Whole(usize),
}

impl Work {
    pub fn stage(self) -> usize {
        match self {
            Work::Local(i) | Work::Partial(i, _) | Work::Reduce(i, _) | Work::Apply(i) | Work::Cross(i) | Work::Whole(i) => i,
        }
    }
    /// Whether the work reads the stage's inputs (a reduce reads partial results; an
    /// application, what its partial phase kept).
    pub fn reads_inputs(self) -> bool {
        match self {
            Work::Local(_) | Work::Partial(..) | Work::Whole(_) => true,
            Work::Reduce(..) | Work::Apply(_) | Work::Cross(_) => false,
        }
    }
}

/// How a phase runs: `per block` or `per sample`.
pub fn how(blocks: bool) -> &'static str {
    if blocks { "per block" } else { "per sample" }
}

/// A phase: block tasks (one per block of every sample) or single tasks (one per sample).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub blocks: bool,
    pub work: Vec<Work>,
    /// Local stages of a block phase whose blocks are stored (later phases or outputs read them).
    pub stored: Vec<usize>,
    /// A block phase of crossing ops' crossing tasks or applications only, which may follow a
    /// block phase directly (it reads nothing a per-sample task joins), so no other work goes
    /// into it.
    #[serde(skip)]
    pub sealed: bool,
}

impl Phase {
    /// A per-sample phase's lanes, each a task of its own: every whole stage alone (no two of a
    /// phase read each other), and the reduces together. A phase with no work has one lane
    /// (it joins the blocks earlier phases stored).
    pub fn lanes(&self) -> Vec<Vec<Work>> {
        let mut v: Vec<Vec<Work>> = self.work.iter().filter(|w| matches!(w, Work::Whole(_))).map(|w| vec![*w]).collect();
        let reduces: Vec<Work> = self.work.iter().filter(|w| matches!(w, Work::Reduce(..))).copied().collect();
        if !reduces.is_empty() || v.is_empty() {
            v.push(reduces);
        }
        v
    }
    /// Tasks per sample: its blocks, or its lanes.
    pub fn per_sample(&self, blocks: usize) -> usize {
        if self.blocks { blocks } else { self.lanes().len() }
    }
    /// `per block` or `per sample`.
    pub fn how(&self) -> &'static str {
        how(self.blocks)
    }
    /// `per block: smooth, clean, lacunae (partial)` and the like ([`Phase::how`], [`Phase::what`]).
    pub fn describe(&self, plan: &Plan) -> String {
        format!("{}: {}", self.how(), self.what(plan))
    }
    /// Its work: `smooth, clean, lacunae (partial)` and the like.
    pub fn what(&self, plan: &Plan) -> String {
        let names: Vec<String> = self
            .work
            .iter()
            .map(|w| {
                let id = &plan.stages[w.stage()].id;
                let rounds = plan.stages[w.stage()].op.phased().map_or(1, |p| p.rounds());
                let round = |r: usize| if rounds > 1 { format!(" {}/{rounds}", r + 1) } else { String::new() };
                match w {
                    Work::Local(_) => id.clone(),
                    Work::Partial(_, r) => format!("{id} (partial{})", round(*r)),
                    Work::Reduce(_, r) => format!("{id} (reduce{})", round(*r)),
                    Work::Apply(_) => format!("{id} (apply)"),
                    Work::Cross(_) => format!("{id} (across blocks)"),
                    Work::Whole(_) => format!("{id} (whole)"),
                }
            })
            .collect();
        if names.is_empty() { "join the blocks' values".to_string() } else { names.join(", ") }
    }
}

/// The phases of a split run of `plan`: stages in plan order, each in the first phase where
/// its inputs can be read (a local stage beside the local stages it reads; a block phase after
/// the per-sample phase that joined what it reads from earlier block phases). A block phase
/// always follows a per-sample phase, so every block phase reads values a per-sample task
/// joined; per-sample phases may follow one another. The same for every sample (plan-level),
/// so a study's phases are one chain of jobs.
pub fn phases(plan: &Plan) -> Vec<Phase> {
    let n = plan.stages.len();
    let needed = schedule::decide(super::required_stages(plan, &vec![false; n]), &|i| plan.stage_inputs(i), &mut |_| false);
    let mut phases: Vec<Phase> = Vec::new();
    // Per stage: the first phase a block task can read it in, and the first a single task can.
    let mut block_ready = vec![0usize; n];
    let mut single_ready = vec![0usize; n];
    let place = |phases: &mut Vec<Phase>, from: usize, blocks: bool, w: Work| -> usize {
        let mut p = from;
        loop {
            while p >= phases.len() {
                // A block phase always follows a per-sample one, which joins what the blocks
                // before stored; per-sample phases may follow one another.
                let kind = match phases.last() {
                    Some(l) if l.blocks && blocks => false,
                    _ => blocks,
                };
                phases.push(Phase { blocks: kind, work: Vec::new(), stored: Vec::new(), sealed: false });
            }
            if phases[p].blocks == blocks && !phases[p].sealed {
                phases[p].work.push(w);
                return p;
            }
            p += 1;
        }
    };
    // A crossing op's crossing tasks and applications: in the first sealed block phase after
    // `from` holding the same step of another crossing op, else a new one at the end.
    let place_sealed = |phases: &mut Vec<Phase>, from: usize, w: Work| -> usize {
        let same = |p: &Phase| p.work.first().is_some_and(|x| std::mem::discriminant(x) == std::mem::discriminant(&w));
        if let Some(p) = (from..phases.len()).find(|&p| phases[p].sealed && same(&phases[p])) {
            phases[p].work.push(w);
            return p;
        }
        phases.push(Phase { blocks: true, work: vec![w], stored: Vec::new(), sealed: true });
        phases.len() - 1
    };
    for i in 0..n {
        if needed[i] != schedule::Decision::Compute {
            continue;
        }
        let st = &plan.stages[i];
        let ins = plan.stage_inputs(i);
        let reads_tables = ins.iter().any(|&j| plan.stages[j].kind == Kind::Table);
        let from_blocks = ins.iter().map(|&j| block_ready[j]).max().unwrap_or(0);
        let from_single = ins.iter().map(|&j| single_ready[j]).max().unwrap_or(0);
        if st.halo != Halo::Global && !reads_tables && st.kind != Kind::Table && st.op.keeps_shape() {
            let p = place(&mut phases, from_blocks, true, Work::Local(i));
            block_ready[i] = p;
            single_ready[i] = p + 1;
        } else if let Some(op) = st.op.phased().filter(|op| {
            let table = op.ending() == Ending::Table;
            !reads_tables && (st.kind == Kind::Table) == table && (table || st.op.keeps_shape())
        }) {
            // Rounds of partial results per block and a reduce per sample; then a local op
            // computed per block where it is read, an application per block, or the table the
            // last reduce gave.
            if op.crosses() {
                // Pieces of rows set aside per block, every plane of them crossed per piece,
                // then each block gathered back.
                let p = place(&mut phases, from_blocks, true, Work::Partial(i, 0));
                let c = place_sealed(&mut phases, p + 1, Work::Cross(i));
                let a = place_sealed(&mut phases, c + 1, Work::Apply(i));
                block_ready[i] = a + 1;
                single_ready[i] = a + 1;
                continue;
            }
            let mut from = from_blocks;
            for r in 0..=op.last_round() {
                let p = place(&mut phases, from, true, Work::Partial(i, r));
                from = place(&mut phases, p + 1, false, Work::Reduce(i, r)) + 1;
            }
            let (b, s) = match op.ending() {
                Ending::Local => {
                    let p = place(&mut phases, from, true, Work::Local(i));
                    (p, p + 1)
                }
                Ending::Apply => {
                    let p = place(&mut phases, from, true, Work::Apply(i)) + 1;
                    (p, p)
                }
                Ending::Table => (from, from),
            };
            block_ready[i] = b;
            single_ready[i] = s;
        } else {
            // Whole stages of one phase run as separate tasks, so one that reads another goes
            // to a later phase.
            let q = place(&mut phases, from_single, false, Work::Whole(i));
            block_ready[i] = q + 1;
            single_ready[i] = q + 1;
        }
    }
    // A local stage that a later block phase reads is computed again there, from its own inputs
    // (with the local stages they come from): recomputing a filter costs less than storing its
    // float values for other machines to read back (a Gaussian of a u8 scan is 4 bytes a voxel).
    let is_local = |j: usize, phases: &[Phase]| phases.iter().any(|p| p.work.contains(&Work::Local(j)));
    for q in 0..phases.len() {
        if !phases[q].blocks {
            continue;
        }
        let mut todo: Vec<usize> = phases[q].work.iter().filter(|w| w.reads_inputs()).flat_map(|w| plan.stage_inputs(w.stage())).collect();
        while let Some(j) = todo.pop() {
            if is_local(j, &phases) && !phases[q].work.contains(&Work::Local(j)) {
                phases[q].work.push(Work::Local(j));
                todo.extend(plan.stage_inputs(j));
            }
        }
        phases[q].work.sort_by_key(|w| (w.stage(), matches!(w, Work::Apply(_)), matches!(w, Work::Local(_))));
    }
    // A local stage's blocks are stored (in the first phase that computes it) when a per-sample
    // task reads it, or it is written.
    let first_phase = |i: usize| phases.iter().position(|p| p.work.contains(&Work::Local(i)));
    let read_whole =
        |j: usize| phases.iter().any(|p| !p.blocks && p.work.iter().any(|w| w.reads_inputs() && plan.stage_inputs(w.stage()).contains(&j)));
    let mut stored = vec![Vec::new(); phases.len()];
    for i in 0..n {
        if let Some(p) = first_phase(i) {
            let written = plan.outputs.iter().any(|(o, _)| *o == i);
            if written || read_whole(i) {
                stored[p].push(i);
            }
        }
    }
    for (p, s) in phases.iter_mut().zip(stored) {
        p.stored = s;
    }
    phases
}

/// Whether a stage's value is made of stored blocks (its blocks must be joined into its
/// checkpoint before a single task or the final run reads it).
pub fn block_stages(phases: &[Phase]) -> Vec<usize> {
    let mut v: Vec<usize> = phases
        .iter()
        .flat_map(|p| p.stored.iter().copied().chain(p.work.iter().filter_map(|w| if let Work::Apply(i) = w { Some(*i) } else { None })))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Where a sample's split files live: `.tessera/split/<sample>/`.
#[derive(Debug, Clone)]
pub struct Files {
    pub root: PathBuf,
    pub blocks: usize,
}

impl Files {
    pub fn new(out: &Path, sample: &str, blocks: usize) -> Files {
        Files { root: out.join(".tessera").join("split").join(sample), blocks }
    }
    fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
    /// Block `b`'s planes of a stage value.
    pub fn part(&self, key: &str, b: usize) -> PathBuf {
        self.dir(key).join(format!("part-{b}-of-{}.spill", self.blocks))
    }
    /// What a phased op kept of block `b` between its partial and apply phases.
    pub fn kept(&self, key: &str, b: usize) -> PathBuf {
        self.dir(key).join(format!("kept-{b}-of-{}.spill", self.blocks))
    }
    /// What the partial of a crossing op set aside of block `b` for piece `p`: rows `y0..y1`.
    pub fn kept_run(&self, key: &str, b: usize, p: usize, (y0, y1): (usize, usize)) -> PathBuf {
        self.dir(key).join(format!("{}{y0}-{y1}-of-{}.spill", run_prefix(b, p), self.blocks))
    }
    /// The runs of rows block `b` set aside for piece `p` (rows `rows`), in order; `Err` unless
    /// they cover the piece exactly.
    pub fn kept_runs(&self, key: &str, b: usize, p: usize, rows: (usize, usize)) -> Result<Vec<(usize, usize, PathBuf)>, String> {
        let prefix = run_prefix(b, p);
        let suffix = format!("-of-{}.spill", self.blocks);
        let mut v: Vec<(usize, usize, PathBuf)> = std::fs::read_dir(self.dir(key))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (a, b) = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?, e.path()))
            })
            .collect();
        v.sort_by_key(|r| r.0);
        let covers =
            v.first().is_some_and(|r| r.0 == rows.0) && v.last().is_some_and(|r| r.1 == rows.1) && v.windows(2).all(|w| w[0].1 == w[1].0);
        if !covers {
            return Err(format!(
                "what block {} of {} set aside for piece {} is missing or incomplete: run that block's partial phase again",
                b + 1,
                self.blocks,
                p + 1
            ));
        }
        Ok(v)
    }
    /// Removes what block `b` set aside for any piece (before its partial runs again).
    pub fn remove_kept_runs(&self, key: &str, b: usize) {
        let prefix = format!("kept-{b}-piece-");
        for e in std::fs::read_dir(self.dir(key)).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    /// Run `run` of rows of piece `p`, block `b`'s planes, from a crossing task.
    pub fn crossed(&self, key: &str, p: usize, run: usize, b: usize) -> PathBuf {
        self.dir(key).join(format!("crossed-{p}-{run}-{b}-of-{}.spill", self.blocks))
    }
    /// Written last by the crossing task of piece `p`: how many runs of rows it gave.
    pub fn cross_done(&self, key: &str, p: usize) -> PathBuf {
        self.dir(key).join(format!("crossed-{p}-of-{}.txt", self.blocks))
    }
    /// The runs of rows the crossing task of piece `p` gave.
    pub fn cross_runs(&self, key: &str, p: usize) -> Result<usize, String> {
        let path = self.cross_done(key, p);
        let t = std::fs::read_to_string(&path).map_err(|e| {
            format!("piece {} of {} has not been crossed ({}: {e}): run its crossing phase first", p + 1, self.blocks, path.display())
        })?;
        t.trim().parse().map_err(|_| format!("{}: damaged (run the crossing phase again)", path.display()))
    }
    /// A phased op's partial result of block `b` in round `r`.
    pub fn partial(&self, key: &str, b: usize, r: usize) -> PathBuf {
        self.dir(key).join(format!("partial{r}-{b}-of-{}.bin", self.blocks))
    }
    /// A phased op's reduced result of round `r`.
    pub fn reduced(&self, key: &str, r: usize) -> PathBuf {
        self.dir(key).join(format!("reduced{r}-of-{}.bin", self.blocks))
    }
    /// What a task says of its unit `u` (a block, or a lane) of phase `phase` (1-based).
    pub fn unit(&self, phase: usize, blocks: bool, u: usize) -> PathBuf {
        let name = if blocks { format!("block-{u}.json") } else { format!("lane-{u}.json") };
        self.root.join(format!("phase-{phase}-of-{}", self.blocks)).join(name)
    }
    /// A phased op's reduced result of round `r` (stage `stage`, for the message).
    pub fn read_reduced(&self, key: &str, r: usize, stage: &str) -> Result<Vec<u8>, String> {
        let path = self.reduced(key, r);
        std::fs::read(&path).map_err(|e| {
            format!(
                "the reduced result of stage '{stage}' (round {}) is missing ({}: {e}): run its reduce phase first",
                r + 1,
                path.display()
            )
        })
    }
}

/// The start of the names of what block `b` sets aside for piece `p`.
fn run_prefix(b: usize, p: usize) -> String {
    format!("kept-{b}-piece-{p}-rows-")
}

/// How many blocks a stage of `nz` planes is cut into when samples are split into `n`: `n`, or
/// one per plane when it has fewer planes (after a downsample, say).
pub fn blocks_for(nz: usize, n: usize) -> usize {
    n.min(nz).max(1)
}

/// Every block of an axis of `len` in a split into `n` ([`block_of`]), in order: a stage's
/// z-blocks, or the pieces of rows of a crossing op's tasks.
pub fn cuts(len: usize, n: usize) -> Vec<(usize, usize)> {
    (0..blocks_for(len, n)).filter_map(|b| block_of(len, n, b)).collect()
}

/// Block `b` of a stage of `nz` planes in a split into `n`: planes `[z0, z1)`, block sizes
/// differing by at most one plane; `None` for a block the stage does not have
/// ([`blocks_for`]).
pub fn block_of(nz: usize, n: usize, b: usize) -> Option<(usize, usize)> {
    let m = blocks_for(nz, n);
    (b < m).then(|| (b * nz / m, (b + 1) * nz / m))
}

/// Joins the stored blocks of stage `key` into its checkpoint (the blocks' compressed chunks
/// copied in order), unless it has a verified one; then removes the stage's split files but
/// its reduced results (a later block phase that computes the stage again, a threshold finished
/// local, reads them). `Err` names the blocks that are missing.
pub fn join_blocks(
    store: &crate::store::Store,
    files: &Files,
    key: &str,
    stage: &str,
    planes: usize,
    stored: Option<&dyn crate::ops::slab::Stored>,
) -> Result<(), String> {
    // Tasks of one sample that start together (its lanes) join each stage once.
    let _lock = store.lock_waiting(&format!("join-{key}"));
    if store.raw(key).is_some() {
        remove_joined(&files.dir(key));
        return Ok(());
    }
    let parts: Vec<PathBuf> = (0..blocks_for(planes, files.blocks)).map(|b| files.part(key, b)).collect();
    let missing: Vec<String> = parts.iter().enumerate().filter(|(_, p)| !p.is_file()).map(|(b, _)| (b + 1).to_string()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "stage '{stage}': block{} {} of {} not computed (their block tasks failed or have not run; `tessera status` lists them)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            files.blocks
        ));
    }
    let dir = files.dir(key);
    let tmp = crate::util::tmp_sibling(&dir.join("joined"));
    let mut w = super::spill::Writer::create(&dir, &tmp.file_name().unwrap_or_default().to_string_lossy())?;
    for p in &parts {
        let r = super::spill::Reader::open(p).map_err(|e| format!("stage '{stage}': {e} (run its block task again)"))?;
        w.append_file(&r)?;
    }
    if w.elem().is_none() {
        return Err(format!("stage '{stage}': its blocks hold no planes"));
    }
    // In the op's stored form if it has one (the blocks of a crossing op that has one hold it).
    drop(super::stream::adopt(w, store, key, stored)?);
    remove_joined(&dir);
    Ok(())
}

/// A joined stage's split files but its reduced results (the folder too once empty).
fn remove_joined(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("reduced") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Which phase `tessera run --split N` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseArg {
    /// Every phase in order, then the final run (one machine).
    All,
    /// Phase K (1-based).
    One(usize),
    /// The final run: every stage from its checkpoint, outputs written (per sample).
    Final,
}

impl std::str::FromStr for PhaseArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(PhaseArg::All),
            "final" => Ok(PhaseArg::Final),
            _ => match s.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(PhaseArg::One(k)),
                _ => Err(format!("'{s}' is not a phase: a number from 1 (see `tessera plan --split N`), final or all")),
            },
        }
    }
}

/// What a task did in one phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseSummary {
    pub phase: usize,
    pub phases: usize,
    pub describe: String,
    pub units: usize,
    pub done: usize,
    pub failed: usize,
    /// `sample (block B): stage: error`, per failed unit.
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// What a unit's status file says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnitState {
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    /// The array task that ran it (`K/N`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// Units of a phase for `rows` samples: a block of a sample per task in block phases
/// (sample-major), a sample in single ones. What `tessera submit --split` sizes its arrays by.
pub fn units(phase: &Phase, rows: usize, blocks: usize) -> usize {
    rows * phase.per_sample(blocks)
}

/// Runs phase `k` (1-based) of a split run into `blocks` blocks for the units `cfg.task` owns
/// (every unit without a task). A unit that fails fails alone and is reported.
pub fn run_phase(
    plan: &Plan,
    manifest: &crate::spec::manifest::Manifest,
    cfg: &super::RunConfig,
    blocks: usize,
    k: usize,
) -> Result<PhaseSummary, String> {
    let t0 = std::time::Instant::now();
    let all = phases(plan);
    let phase = all
        .get(k.wrapping_sub(1))
        .ok_or_else(|| format!("this pipeline split runs in {} phases (then `--phase final`); there is no phase {k}", all.len()))?;
    let joined = block_stages(&all[..k - 1]);
    let info =
        SplitInfo { blocks, samples: manifest.len(), phases: all.iter().map(|p| (p.what(plan), p.blocks, p.per_sample(blocks))).collect() };
    let text = serde_json::to_vec_pretty(&info).map_err(|e| e.to_string())?;
    crate::util::write_atomic(&info_path(&cfg.out), &text).map_err(|e| format!("{}: {e}", info_path(&cfg.out).display()))?;
    let per = phase.per_sample(blocks);
    let lanes = phase.lanes();
    let owns = |u: usize| cfg.task.is_none_or(|t| t.owns(u));
    let mut summary = PhaseSummary { phase: k, phases: all.len(), describe: phase.describe(plan), ..Default::default() };
    let store = crate::store::Store::new(&cfg.out);
    let shared = super::shared::SharedInputs::new(std::iter::empty(), cfg.memory / 4).hashing_once(store.clone());
    let rows = manifest.each().map_err(|e| e.to_string())?;
    let results = std::sync::Mutex::new(Vec::new());
    let run_unit = |row: &crate::spec::manifest::SampleRow, u: usize| -> Result<(), (String, String)> {
        let b = phase.blocks.then_some(u);
        let work: &[Work] = if phase.blocks { &phase.work } else { lanes.get(u).map_or(&[], Vec::as_slice) };
        let p = super::prepare(plan, row, manifest, &shared)?;
        let files = Files::new(&cfg.out, &row.id, blocks);
        let fail_at = |i: usize, e: String| (plan.stages.get(i).map_or_else(|| "input".to_string(), |s| s.id.clone()), e);
        let n = plan.stages.len();
        let valid = vec![true; n];
        let targets: Vec<bool> = (0..n).map(|i| work.contains(&Work::Whole(i))).collect();
        let s = super::stream::Streamed {
            plan,
            bound: &p.bound,
            paths: &p.paths,
            headers: &p.headers,
            spacing: &p.spacing,
            ndim: p.ndim,
            sample: &row.id,
            memory: cfg.memory,
            threads: cfg.threads,
            // One per unit: a sample's lanes may run at once in one process.
            spill_dir: files.root.join(format!("spill-{}-{u}", std::process::id())),
            sample_dir: cfg.out.join("samples").join(&row.id),
            compression: plan.spec.compression,
            slab: None,
            checkpoints: Some(&store),
            keys: &p.keys,
            valid: &valid,
            force: false,
            on_stage: &|_| {},
            targets: Some(&targets),
        };
        if let Some(b) = b {
            return super::stream::run_block(&s, phase, b, &files).map_err(|(i, e)| fail_at(i, e));
        }
        // A single task: the blocks earlier phases stored become checkpoints first.
        for &j in &joined {
            let stored = super::stream::stored_form(&s, j);
            join_blocks(&store, &files, &p.keys[j], &plan.stages[j].id, p.bound.metas[j].shape[0], stored.as_deref())
                .map_err(|e| fail_at(j, e))?;
        }
        for w in work {
            if let Work::Reduce(i, r) = *w {
                let key = &p.keys[i];
                let out = files.reduced(key, r);
                let op = p.bound.ops[i].phased().ok_or_else(|| fail_at(i, "internal: no phased form".into()))?;
                let ctx = super::stream::ctx_of(&s, i);
                // An op that ends in a table gives it from its last reduced result, as a checkpoint.
                let table = op.ending() == Ending::Table && r == op.last_round();
                let save_table = |reduced: &[u8]| -> Result<(), (String, String)> {
                    let t = op.table(reduced, &ctx).map_err(|e| fail_at(i, e))?;
                    store.save(key, &t).map_err(|e| fail_at(i, format!("writing a checkpoint: {e}")))
                };
                if out.is_file() {
                    if table && !store.has(key) {
                        save_table(&files.read_reduced(key, r, &plan.stages[i].id).map_err(|e| fail_at(i, e))?)?;
                    }
                    continue;
                }
                let before = match r {
                    0 => None,
                    _ => Some(files.read_reduced(key, r - 1, &plan.stages[i].id).map_err(|e| fail_at(i, e))?),
                };
                // Every block's partial result must be there before any is read.
                let count = blocks_for(p.bound.metas[i].shape[0], blocks);
                let missing: Vec<String> =
                    (0..count).filter(|&b| !files.partial(key, b, r).is_file()).map(|b| (b + 1).to_string()).collect();
                if !missing.is_empty() {
                    return Err(fail_at(
                        i,
                        format!(
                            "the partial result{} of block{} {} of {blocks} {} missing: {} block task{} failed or {} not run",
                            if missing.len() == 1 { "" } else { "s" },
                            if missing.len() == 1 { "" } else { "s" },
                            missing.join(", "),
                            if missing.len() == 1 { "is" } else { "are" },
                            if missing.len() == 1 { "its" } else { "their" },
                            if missing.len() == 1 { "" } else { "s" },
                            if missing.len() == 1 { "has" } else { "have" },
                        ),
                    ));
                }
                let mut partials = (0..count).map(|b| {
                    let path = files.partial(key, b, r);
                    std::fs::read(&path).map_err(|e| format!("{}: {e} (run block {} of {blocks} again)", path.display(), b + 1))
                });
                let reduced = op.reduce(r, &mut partials, before.as_deref(), &ctx).map_err(|e| fail_at(i, e))?;
                if table {
                    save_table(&reduced)?;
                }
                crate::util::write_atomic(&out, &reduced).map_err(|e| fail_at(i, format!("{}: {e}", out.display())))?;
            }
        }
        if targets.contains(&true) {
            let (mut objects, mut timings, mut reused) = (Vec::new(), Vec::new(), Vec::new());
            super::stream::evaluate_streamed(&s, &mut |_, _| Ok(()), &mut objects, &mut timings, &mut reused)
                .map_err(|(i, e)| fail_at(i, e))?;
        }
        Ok(())
    };
    // Units in manifest order (a sample's blocks together); the task owns some of them.
    let each = rows
        .enumerate()
        .filter_map(|(r, row)| row.ok().map(|row| (r, row)))
        .flat_map(move |(r, row)| (0..per).map(move |b| (r * per + b, row.clone())))
        .filter(|(u, _)| owns(*u));
    // Each unit streams within --memory.
    let gate = super::Admission::new(crate::io::default_memory_budget());
    super::for_each_sample(
        each,
        cfg.threads,
        &gate,
        |_| cfg.memory,
        |u, row| {
            let b = u % per;
            let t = std::time::Instant::now();
            let r = run_unit(row, b);
            let files = Files::new(&cfg.out, &row.id, blocks);
            let state = UnitState {
                done: r.is_ok(),
                stage: r.as_ref().err().map(|e| e.0.clone()),
                error: r.as_ref().err().map(|e| e.1.clone()),
                seconds: t.elapsed().as_secs_f64(),
                task: cfg.task.map(|t| t.to_string()),
            };
            let path = files.unit(k, phase.blocks, b);
            let _ = serde_json::to_vec_pretty(&state).map(|j| crate::util::write_atomic(&path, &j));
            results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((row.id.clone(), phase.blocks.then_some(b), r));
        },
    );
    let mut results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    results.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (id, b, r) in results {
        summary.units += 1;
        match r {
            Ok(()) => summary.done += 1,
            Err((stage, e)) => {
                summary.failed += 1;
                let at = b.map(|b| format!(" (block {} of {blocks})", b + 1)).unwrap_or_default();
                summary.errors.push(format!("{id}{at}: {stage}: {e}"));
            }
        }
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// What a split run into a folder is (`.tessera/split/split.json`, written by every phase):
/// what `tessera status` reads to show the phases' progress.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SplitInfo {
    pub blocks: usize,
    pub samples: usize,
    /// Each phase's work ([`Phase::what`]), whether it runs per block, and its tasks per
    /// sample.
    pub phases: Vec<(String, bool, usize)>,
}

fn info_path(out: &Path) -> PathBuf {
    out.join(".tessera").join("split").join("split.json")
}

/// One phase's progress over the study.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseProgress {
    pub phase: usize,
    /// Whether it runs per block (else per sample), and its work ([`Phase::what`]).
    pub blocks: bool,
    pub work: String,
    /// Units (a block of a sample, or a sample) in all, done, failed.
    pub units: usize,
    pub done: usize,
    pub failed: usize,
    /// `sample (block B of N): stage: error` per failed unit.
    pub errors: Vec<String>,
}

/// The progress of the split run in `out`, if there is one: per phase, its units done and
/// failed (from the units' status files), and the first phase not complete (the one running
/// or next).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub blocks: usize,
    pub phases: Vec<PhaseProgress>,
    /// 1-based; `None` when every phase is complete (the final run's state is `run.json`'s).
    pub current: Option<usize>,
}

/// Reads the progress of the split run in `out`; `None` without one.
pub fn progress(out: &Path) -> Option<Progress> {
    let info: SplitInfo = serde_json::from_slice(&std::fs::read(info_path(out)).ok()?).ok()?;
    let root = out.join(".tessera").join("split");
    let mut phases: Vec<PhaseProgress> = info
        .phases
        .iter()
        .enumerate()
        .map(|(k, (what, blocks, per))| PhaseProgress {
            phase: k + 1,
            blocks: *blocks,
            work: what.clone(),
            units: info.samples * per,
            done: 0,
            failed: 0,
            errors: Vec::new(),
        })
        .collect();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&root).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    samples.sort();
    for s in samples {
        let sample = s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for p in &mut phases {
            let Ok(rd) = std::fs::read_dir(s.join(format!("phase-{}-of-{}", p.phase, info.blocks))) else { continue };
            let mut units: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|f| f.extension().is_some_and(|e| e == "json")).collect();
            units.sort();
            for u in units {
                let Some(st) = std::fs::read(&u).ok().and_then(|b| serde_json::from_slice::<UnitState>(&b).ok()) else { continue };
                if st.done {
                    p.done += 1;
                } else {
                    p.failed += 1;
                    let name = u.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let at = name
                        .strip_prefix("block-")
                        .and_then(|b| b.parse::<usize>().ok())
                        .map(|b| format!(" (block {} of {})", b + 1, info.blocks))
                        .unwrap_or_default();
                    p.errors.push(format!("{sample}{at}: {}: {}", st.stage.as_deref().unwrap_or("?"), st.error.as_deref().unwrap_or("")));
                }
            }
        }
    }
    let current = phases.iter().find(|p| p.done < p.units).map(|p| p.phase);
    Some(Progress { blocks: info.blocks, phases, current })
}

/// The units of phase `k` (1-based) of the split run in `out` that are not done (no status
/// file, or a failed one), by unit number (see [`units`]): what `submit --resubmit-failed`
/// runs again.
pub fn unfinished_units(
    out: &Path,
    manifest: &crate::spec::manifest::Manifest,
    phase: &Phase,
    blocks: usize,
    k: usize,
) -> Result<Vec<usize>, String> {
    let per = phase.per_sample(blocks);
    let mut v = Vec::new();
    for (r, row) in manifest.each().map_err(|e| e.to_string())?.enumerate() {
        let row = row.map_err(|e| e.to_string())?;
        let files = Files::new(out, &row.id, blocks);
        for b in 0..per {
            let done = std::fs::read(files.unit(k, phase.blocks, b))
                .ok()
                .and_then(|t| serde_json::from_slice::<UnitState>(&t).ok())
                .is_some_and(|u| u.done);
            if !done {
                v.push(r * per + b);
            }
        }
    }
    Ok(v)
}
