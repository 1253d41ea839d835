//! The command line: clap definitions, argument validation, and the only place that renders
//! diagnostics for humans. Each subcommand turns its arguments into library calls and returns
//! an exit code (SPEC §1: 0 done, 1 some samples failed, 2 nothing ran).

mod classify;
pub mod render;
mod status;
mod submit;
mod tables;
pub mod watch;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::exec::{RunConfig, Status};
use crate::plan::{self, Plan};
use crate::report::{Progress, ProgressMode};
use crate::spec::manifest::Manifest;
use crate::spec::{self, Diagnostic};

pub use render::render_diagnostics;

/// Batch segmentation and measurement of 2D/3D scientific images from a YAML pipeline.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline over samples and write the output folder.
    Run(RunArgs),
    /// Check pipelines and report every error at once (exit 2 on error).
    Validate(ValidateArgs),
    /// Show the compiled stage graph: order, kinds, halos, parameters, outputs.
    Plan(PlanArgs),
    /// List the ops, or document one op's parameters.
    Ops(OpsArgs),
    /// Show which samples and stages of an output folder are done, failed or missing.
    Status(StatusArgs),
    /// Remove checkpoints no sample uses any more (or all of them with --all).
    Clean(CleanArgs),
    /// Write the merged tables and statistics of an output folder from its per-sample results
    /// (after a sharded run); list samples that are failed or missing and the tasks that own them.
    Merge(MergeArgs),
    /// Within/between statistics, ICC, ANOVA, PCA and k-means on any CSV/Parquet tables.
    Stats(StatsArgs),
    /// Train a seeded random forest on CSV/Parquet tables, evaluate it on rows it did not see
    /// (stratified hold-out or k-fold) and save it as a model file.
    Train(TrainArgs),
    /// Apply a model file to CSV/Parquet tables: adds `predicted` and `probability_<class>`.
    Predict(PredictArgs),
    /// Write a self-contained HTML report of an output folder: provenance, samples, phenotype
    /// distributions, statistics, PCA, clusters and label previews.
    Report(ReportArgs),
    /// Watch a folder (or a growing manifest) and run the pipeline on each scan once it is
    /// complete, keeping the study's tables, statistics and report current.
    Watch(watch::WatchArgs),
    /// Submit a study as an array job (one shard per task) and a merge job after it, on Slurm
    /// or SGE; or resubmit the shards of an output folder that have failed or missing samples.
    Submit(SubmitArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

/// How a sample may run: threads, tiles and memory (`run` and `watch`).
#[derive(Debug, Args)]
pub struct Resources {
    /// Worker threads (samples and ops share one pool). Default: all cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Tile cores for runs of local ops: `auto` (whole images while they fit --memory, z-slabs
    /// otherwise) or ZxYxX voxels, e.g. 64x256x256. Halos are added per op. Outputs are
    /// identical whatever the tiling. Default: the pipeline's `tile:`, else auto.
    #[arg(long, value_name = "ZxYxX|auto")]
    pub tile: Option<crate::exec::TileSize>,
    /// Memory budget for one sample, e.g. 8GiB, 512MiB. A sample whose working set is larger
    /// is streamed from disk in z-slabs that fit (identical outputs); pipelines with ops that
    /// need whole images fail for that sample with the memory they need. Samples run at once
    /// only while their working sets fit together. Default: 3/4 of what the process may use
    /// (RAM, or the limit of its memory cgroup — a Slurm job's --mem, a container's — or
    /// ulimit -v); more than that limit is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
}

impl Resources {
    /// The tile size: `--tile`, else the pipeline's `tile:`.
    pub fn tile(&self, spec: &crate::spec::PipelineSpec) -> crate::exec::TileSize {
        self.tile.unwrap_or_else(|| pipeline_tile(spec))
    }
    /// The memory budget: `--memory`, else 3/4 of what the process may use (RAM, or a
    /// cgroup's or `ulimit -v` limit: [`crate::io::memory_limit`]).
    pub fn memory(&self) -> u64 {
        self.memory.unwrap_or_else(crate::io::default_memory_budget)
    }
    /// `Err` when `--memory` is more than the process may use.
    pub fn check(&self) -> Result<(), String> {
        self.memory.map_or(Ok(()), crate::io::check_memory_flag)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline YAML.
    pub pipeline: PathBuf,
    /// Images to process, instead of a manifest. Sample id: the file name up to its first dot,
    /// made valid (accents dropped, other characters `_`) and unique (`-2`, `-3`, …).
    #[arg(conflicts_with = "samples")]
    pub images: Vec<PathBuf>,
    /// Sample manifest CSV (columns `sample`, `image`, metadata...). Default: the pipeline's `samples:`.
    #[arg(long, value_name = "MANIFEST.csv")]
    pub samples: Option<PathBuf>,
    /// A table joined onto the manifest's rows before parameters bind: CSV or Parquet, on key
    /// column(s), `inner` (default: a row without a match fails alone) or `left` (it gets empty
    /// values). Repeatable; replaces the pipeline's `samples.join`.
    #[arg(long, value_name = "FILE:KEY[,KEY][:left]", value_parser = crate::spec::manifest::Join::parse)]
    pub join: Vec<crate::spec::manifest::Join>,
    /// Output folder. Default: tessera-out/<pipeline name>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resources: Resources,
    /// Keep running other samples when one fails (the default).
    #[arg(long, conflicts_with = "fail_fast")]
    pub keep_going: bool,
    /// Stop starting samples after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Progress on stderr: a bar on a terminal, plain lines otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Recompute every stage of every sample, ignoring checkpoints and finished samples.
    #[arg(long)]
    pub force: bool,
    /// Keep no checkpoints, records or locks in DIR/.tessera (nothing is resumed or skipped).
    #[arg(long)]
    pub no_checkpoint: bool,
    /// fsync every output, table and record before it counts as done, so that finished work
    /// survives an operating-system crash or power cut, not only a killed run. Costs the time
    /// the disk takes to write each output.
    #[arg(long)]
    pub durable: bool,
    /// Run one shard of the study: K/N (1-based; sample i of the manifest, from 0, belongs to
    /// shard i mod N + 1), or `auto` from the array variables of Slurm, SGE, PBS or LSF. A
    /// shard writes per-sample outputs and DIR/tasks/task-K-of-N.json; `tessera merge DIR`
    /// writes the merged tables and statistics.
    #[arg(long, value_name = "K/N|auto")]
    pub task: Option<crate::sched::TaskArg>,
    /// Split every sample into N z-blocks and run it in phases, block tasks and per-sample
    /// tasks in turn (`tessera plan --split N` lists them), with outputs identical to a run on
    /// one machine. Alone it runs every phase here; `tessera submit --split N` runs each
    /// phase as an array job.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "no_checkpoint")]
    pub split: Option<u32>,
    /// With --split: run one phase (1-based) for the units --task owns (a block of a sample
    /// per unit in block phases, a sample in the others), `final` (every stage from its
    /// checkpoint, outputs written: an ordinary run), or `all` (every phase, then final).
    #[arg(long, value_name = "K|final|all", requires = "split", default_value = "all")]
    pub phase: crate::exec::split::PhaseArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The output folder of a run.
    pub dir: PathBuf,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The output folder of a run (sharded or not).
    pub dir: PathBuf,
    /// Merge the samples that are done even when others failed or are missing (exit 0).
    /// Without it, nothing is written and the exit code is 1 while samples are not done.
    #[arg(long)]
    pub allow_missing: bool,
    /// fsync the merged tables, statistics and run.json before exiting (see `run --durable`).
    #[arg(long)]
    pub durable: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Tables: CSV or Parquet files, folders (their .csv/.parquet files), or patterns like
    /// 'tables/*.csv'. Read in parallel; rows are taken in sorted file order.
    #[arg(required = true, value_name = "TABLE")]
    pub tables: Vec<String>,
    /// The grouping column (a sample id, an animal, a condition...).
    #[arg(long, default_value = "sample", value_name = "COL")]
    pub by: String,
    /// Phenotype columns, comma-separated. Default: every numeric column of the first table but
    /// the grouping column, `label` and `bbox_*`.
    #[arg(long, value_delimiter = ',', value_name = "A,B,..")]
    pub phenotypes: Option<Vec<String>>,
    /// Write the within/between table here (.csv or .parquet); PCA, clusters, centres and
    /// scores go beside it as <stem>_pca.csv, <stem>_clusters.csv, <stem>_centers.csv and
    /// <stem>_scores.parquet.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Principal components of the standardised phenotypes to compute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pca: Option<u32>,
    /// k-means clusters of the standardised phenotypes.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub kmeans: Option<u32>,
    /// Seed of the k-means++ starting centres and of the bootstrap.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,
    /// Bootstrap replicates for the confidence intervals of the within/between statistics
    /// (groups resampled with replacement; 0: no intervals).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub bootstrap: u32,
    /// Confidence level of those intervals.
    #[arg(long, default_value_t = 0.95, value_name = "L", value_parser = parse_level)]
    pub confidence: f64,
    /// Worker threads. Default: all cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Print every table as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Tables: CSV or Parquet files, folders (their .csv/.parquet files), or patterns like
    /// 'tables/*.csv'. Rows are taken in sorted file order.
    #[arg(required = true, value_name = "TABLE")]
    pub tables: Vec<String>,
    /// The class column (read as text: numbers are class names too).
    #[arg(long, value_name = "COL")]
    pub label: String,
    /// Where to write the model file (JSON).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Feature columns, comma-separated. Default: every numeric column of the first table but
    /// the class column, `sample`, `label`, `object`, `id`, `*_label`, `bbox_*` and `centroid_*`.
    #[arg(long, value_delimiter = ',', value_name = "A,B,..")]
    pub features: Option<Vec<String>>,
    /// Trees in the forest.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub trees: u32,
    /// Deepest split level of a tree. Default: grown until leaves are pure.
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_depth: Option<u32>,
    /// Fewest training rows in a leaf.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_samples_leaf: u32,
    /// Features drawn at each split. Default: √(features), as scikit-learn.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_features: Option<u32>,
    /// Seed of the bootstrap samples, the features drawn and the evaluation split.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,
    /// Fraction of each class's rows held out for testing (the saved model is grown on the rest).
    #[arg(long, default_value_t = 0.2, value_name = "F", conflicts_with = "folds")]
    pub test_fraction: f64,
    /// Stratified k-fold cross-validation instead of a hold-out (the saved model is then grown
    /// on all rows).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(2..))]
    pub folds: Option<u32>,
    /// Missing values (NaN, empty cells): refuse, drop those rows, or fill features with the
    /// training median.
    #[arg(long, value_enum, default_value = "error")]
    pub missing: crate::classify::Missing,
    /// Worker threads (the model is the same for any number). Default: all cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Print the evaluation as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model file `tessera train` wrote.
    pub model: PathBuf,
    /// Tables to classify (CSV or Parquet files, folders, patterns), every column kept.
    #[arg(required = true, value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Write the tables, concatenated, with the added columns (.csv or .parquet). Default: CSV
    /// on stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Worker threads. Default: all cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The output folder of a run (merged, when it was sharded).
    pub dir: PathBuf,
    /// Where to write the HTML. Default: DIR/report.html.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The pipeline YAML (not with --resubmit-failed, which reads DIR/jobs/submit.json).
    #[arg(required_unless_present = "resubmit_failed")]
    pub pipeline: Option<PathBuf>,
    /// The scheduler to submit to.
    #[arg(long, value_enum, required_unless_present = "resubmit_failed")]
    pub scheduler: Option<crate::sched::submit::Scheduler>,
    /// Array tasks (shards); at most the number of samples. With --split: the most tasks of
    /// any one array (default: one per block of every sample in block phases, one per sample in
    /// the others).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), required_unless_present_any = ["resubmit_failed", "split"])]
    pub tasks: Option<u32>,
    /// Split every sample into N z-blocks: the pipeline runs as a chain of array jobs, one per
    /// phase (`tessera plan --split N` lists them), then the final array and the merge, with
    /// outputs identical to one machine's. --memory then defaults to what a block needs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub split: Option<u32>,
    /// Sample manifest. Default: the pipeline's `samples:`.
    #[arg(long, value_name = "MANIFEST.csv")]
    pub samples: Option<PathBuf>,
    /// A table joined onto the manifest's rows before parameters bind: CSV or Parquet, on key
    /// column(s), `inner` (default: a row without a match fails alone) or `left` (it gets empty
    /// values). Repeatable; replaces the pipeline's `samples.join`.
    #[arg(long, value_name = "FILE:KEY[,KEY][:left]", value_parser = crate::spec::manifest::Join::parse)]
    pub join: Vec<crate::spec::manifest::Join>,
    /// Output folder (shared by all tasks). Default: tessera-out/<pipeline name>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Threads per task (Slurm --cpus-per-task; SGE -pe PE N when above 1).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// --memory of each task. Default: what the largest sample needs in memory (read from the
    /// image headers), at least 256 MiB. The scheduler is asked for 5/4 of it plus 256 MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// SGE parallel environment used when --threads is above 1.
    #[arg(long, default_value = "smp", value_name = "PE")]
    pub pe: String,
    /// The tasks and the merge job run with --durable (see `run --durable`). Kept for
    /// --resubmit-failed, where giving it turns it on.
    #[arg(long)]
    pub durable: bool,
    /// Write the job scripts to DIR/jobs/ and print the commands, without submitting.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the job ids and scripts as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Resubmit only the shards of DIR with failed or missing samples (and a merge job after
    /// them), with the settings of the first submission.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["pipeline", "tasks", "samples", "out", "split"])]
    pub resubmit_failed: Option<PathBuf>,
    /// Extra arguments for sbatch/qsub (after `--`), e.g. `-- --partition=long` or `-- -q all.q`.
    #[arg(last = true, value_name = "SCHEDULER ARGS")]
    pub extra: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// The output folder of a run.
    pub dir: PathBuf,
    /// Remove every checkpoint and record (DIR/.tessera): the next run recomputes everything.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true)]
    pub pipelines: Vec<PathBuf>,
    /// Also check against the samples of this manifest (dimensionality, dtypes, `${column}`s).
    /// Default: the pipeline's `samples:` when it has one.
    #[arg(long, value_name = "MANIFEST.csv")]
    pub samples: Option<PathBuf>,
    /// A table joined onto the manifest's rows before parameters bind: CSV or Parquet, on key
    /// column(s), `inner` (default: a row without a match fails alone) or `left` (it gets empty
    /// values). Repeatable; replaces the pipeline's `samples.join`.
    #[arg(long, value_name = "FILE:KEY[,KEY][:left]", value_parser = crate::spec::manifest::Join::parse)]
    pub join: Vec<crate::spec::manifest::Join>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Dot,
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The pipeline YAML.
    pub pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// An output folder: also show, per sample and stage, whether a run into it would find the
    /// stage stored (hit: a checkpoint or a current output) or compute it (miss).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Samples for --out (default: the pipeline's `samples:`).
    #[arg(long, value_name = "MANIFEST.csv")]
    pub samples: Option<PathBuf>,
    /// A table joined onto the manifest's rows before parameters bind: CSV or Parquet, on key
    /// column(s), `inner` (default: a row without a match fails alone) or `left` (it gets empty
    /// values). Repeatable; replaces the pipeline's `samples.join`.
    #[arg(long, value_name = "FILE:KEY[,KEY][:left]", value_parser = crate::spec::manifest::Join::parse)]
    pub join: Vec<crate::spec::manifest::Join>,
    /// The memory budget a run would have (with --out: which samples would stream). Default:
    /// 3/4 of what the process may use, as `run`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Also list the phases of a run split into N z-blocks per sample (`run --split N`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub split: Option<u32>,
}

#[derive(Debug, Args)]
pub struct OpsArgs {
    /// An op to document in full.
    pub op: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Parses sizes like `512MiB`, `8GiB`, `2G`, `64MB`, `1000000`.
/// A confidence level: a number strictly between 0 and 1.
fn parse_level(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!("'{s}' is not a confidence level between 0 and 1 (e.g. 0.95)")),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a size like 512MiB or 8GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit '{other}' in '{s}' (use B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB)")),
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v >= 1.0) {
        return Err(format!("'{s}' is not a positive size"));
    }
    Ok(v as u64)
}

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Watch(a) => watch::cmd_watch(a),
        Command::Validate(a) => cmd_validate(a),
        Command::Plan(a) => cmd_plan(a),
        Command::Ops(a) => cmd_ops(a),
        Command::Status(a) => status::cmd_status(&a.dir, a.json),
        Command::Clean(a) => status::cmd_clean(&a.dir, a.all),
        Command::Merge(a) => {
            crate::util::set_durable(a.durable);
            tables::cmd_merge(&a.dir, a.allow_missing, a.json)
        }
        Command::Submit(a) => submit::cmd_submit(a),
        Command::Report(a) => {
            let html = match crate::report::html::render(&a.dir) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            let path = a.output.unwrap_or_else(|| a.dir.join("report.html"));
            match crate::util::write_atomic(&path, html.as_bytes()) {
                Ok(()) => {
                    println!("wrote {} ({})", path.display(), crate::util::human_bytes(html.len() as u64));
                    0
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    2
                }
            }
        }
        Command::Stats(a) => {
            let req = crate::stats::analysis::Request {
                by: a.by.clone(),
                phenotypes: a.phenotypes.clone(),
                pca: a.pca.unwrap_or(0) as usize,
                kmeans: a.kmeans.unwrap_or(0) as usize,
                seed: a.seed,
                bootstrap: a.bootstrap as usize,
                confidence: a.confidence,
            };
            tables::cmd_stats(&a.tables, req, a.out.as_deref(), a.json)
        }
        Command::Train(a) => classify::cmd_train(a),
        Command::Predict(a) => classify::cmd_predict(a),
        Command::Completions(a) => {
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "tessera", &mut std::io::stdout());
            0
        }
    }
}

fn report(diags: &[Diagnostic]) {
    eprint!("{}", render_diagnostics(diags, std::io::IsTerminal::is_terminal(&std::io::stderr())));
}

/// Loads and compiles a pipeline with an optional manifest; `Err` holds every diagnostic.
fn load_plan(file: &Path, manifest: Option<&Manifest>) -> Result<Plan, Vec<Diagnostic>> {
    let (spec, mut diags) = spec::load(file);
    let Some(spec) = spec else { return Err(diags) };
    let first = manifest.and_then(Manifest::first_good);
    let (plan, d2) = plan::compile(spec, manifest.map(|m| m.columns.as_slice()), first);
    diags.extend(d2);
    diags.sort_by_key(|d| d.pos.map(|p| (p.line, p.col)).unwrap_or((0, 0)));
    match plan {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(diags),
    }
}

/// The pipeline's own `samples:` manifest, if it names one.
fn default_manifest(file: &Path) -> Option<PathBuf> {
    let (spec, _) = spec::load(file);
    spec.and_then(|s| s.samples)
}

/// The joins a run uses: those given with `--join`, else the pipeline's `samples.join`.
pub(crate) fn joins_for(given: &[crate::spec::manifest::Join], pipeline: &Path) -> Vec<crate::spec::manifest::Join> {
    if !given.is_empty() {
        return given.to_vec();
    }
    spec::load(pipeline).0.map(|s| s.joins).unwrap_or_default()
}

/// A manifest opened to be streamed ([`Manifest::open`]): its rows are read one at a time,
/// so a command's memory does not grow with them; `Err` is the exit code after the message.
pub(crate) fn open_manifest(path: &Path, joins: &[crate::spec::manifest::Join]) -> Result<Manifest, i32> {
    Manifest::open(path, joins).map_err(|e| {
        eprintln!("error: {e}");
        2
    })
}

/// Calls `f` with each row of a manifest, in order; `Err` is the exit code after saying why the
/// manifest no longer reads (it changed since it was opened).
pub(crate) fn each_row(m: &Manifest, mut f: impl FnMut(crate::spec::manifest::SampleRow)) -> Result<(), i32> {
    let fail = |e: crate::spec::manifest::ManifestError| {
        eprintln!("error: {e}");
        2
    };
    for row in m.each().map_err(fail)? {
        f(row.map_err(fail)?);
    }
    Ok(())
}

fn cmd_validate(a: ValidateArgs) -> i32 {
    let mut failed = false;
    for file in &a.pipelines {
        let mpath = a.samples.clone().or_else(|| default_manifest(file));
        let joins = joins_for(&a.join, file);
        let manifest = match mpath.as_deref().map(|p| open_manifest(p, &joins)).transpose() {
            Ok(m) => m,
            Err(code) => return code,
        };
        match load_plan(file, manifest.as_ref()) {
            Err(diags) => {
                report(&diags);
                eprintln!("{}: {} error{}", file.display(), diags.len(), if diags.len() == 1 { "" } else { "s" });
                failed = true;
            }
            Ok(plan) => {
                let mut diags = Vec::new();
                let mut warnings = Vec::new();
                // The rows are read one at a time (a table of a million crops is never held).
                if let Some(m) = &manifest
                    && let Err(code) = each_row(m, |row| {
                        let row = &row;
                        if let Some(p) = &row.problem {
                            warnings.push(format!("sample '{}': {p}", row.id));
                            return;
                        }
                        let mut headers = Vec::new();
                        let paths = match crate::exec::source_paths(&plan, row, m) {
                            Ok(p) => p,
                            Err(e) => {
                                warnings.push(format!("sample '{}': {e}", row.id));
                                return;
                            }
                        };
                        let mut readable = true;
                        for p in &paths {
                            match crate::io::read_header(p) {
                                Ok(h) => headers.push(h),
                                Err(e) => {
                                    warnings.push(format!("sample '{}': {e}", row.id));
                                    readable = false;
                                    break;
                                }
                            }
                        }
                        if readable && let Err(e) = plan.bind(row, &headers) {
                            diags.push(plan.bind_diagnostic(&row.id, &e));
                        }
                    })
                {
                    return code;
                }
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                if diags.is_empty() {
                    let n = manifest.as_ref().map(|m| format!(", {} samples checked", m.len())).unwrap_or_default();
                    println!("{}: ok ({} stages{n})", file.display(), plan.stages.len());
                } else {
                    report(&diags);
                    eprintln!("{}: {} error{}", file.display(), diags.len(), if diags.len() == 1 { "" } else { "s" });
                    failed = true;
                }
            }
        }
    }
    if failed { 2 } else { 0 }
}

fn cmd_plan(a: PlanArgs) -> i32 {
    match load_plan(&a.pipeline, None) {
        Err(d) => {
            report(&d);
            2
        }
        Ok(p) => {
            let phases = a.split.map(|n| (n, crate::exec::split::phases(&p)));
            let s = match a.format {
                PlanFormat::Text => {
                    let mut t = plan::render::text(&p);
                    if let Some((n, phases)) = &phases {
                        t += &format!(
                            "\nsplit into {n} z-blocks per sample (run --split {n}): {} phases, then the final run\n",
                            phases.len()
                        );
                        for (k, ph) in phases.iter().enumerate() {
                            let per = ph.per_sample(*n as usize);
                            let tasks = format!("{per} task{} a sample", if per == 1 { "" } else { "s" });
                            t += &format!("  phase {} ({}): {}   [{tasks}]\n", k + 1, ph.how(), ph.what(&p));
                        }
                        t += "  final (per sample): outputs written from the checkpoints   [1 task a sample]\n";
                        let whole: Vec<&str> = phases
                            .iter()
                            .flat_map(|ph| &ph.work)
                            .filter_map(|w| match w {
                                crate::exec::split::Work::Whole(i) => Some(p.stages[*i].id.as_str()),
                                _ => None,
                            })
                            .collect();
                        if !whole.is_empty() {
                            t += &format!(
                                "  ({} ha{} no per-block form: each runs in one task per sample, out of core, on inputs joined from the blocks)\n",
                                whole.join(", "),
                                if whole.len() == 1 { "s" } else { "ve" }
                            );
                        }
                    }
                    t
                }
                PlanFormat::Dot => plan::render::dot(&p),
                PlanFormat::Json => {
                    let mut v = plan::render::json(&p);
                    if let (Some((n, phases)), Some(o)) = (&phases, v.as_object_mut()) {
                        o.insert("split".into(), serde_json::json!({"blocks": n, "phases": phases}));
                    }
                    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
                }
            };
            print!("{s}");
            match &a.out {
                Some(out) => plan_hits(&a, &p, out),
                None => 0,
            }
        }
    }
}

/// `tessera plan --out DIR`: hit or miss per sample and stage.
fn plan_hits(a: &PlanArgs, p: &Plan, out: &Path) -> i32 {
    let Some(mpath) = a.samples.clone().or_else(|| default_manifest(&a.pipeline)) else {
        eprintln!("error: --out needs samples: give --samples MANIFEST.csv or `samples:` in the pipeline");
        return 2;
    };
    let manifest = match open_manifest(&mpath, &joins_for(&a.join, &a.pipeline)) {
        Ok(m) => m,
        Err(code) => return code,
    };
    // The rows are read twice, one at a time: for the width of the ids, then to plan each.
    let w = match manifest.each() {
        Ok(r) => r.filter_map(Result::ok).map(|r| r.id.len()).max().unwrap_or(6),
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let memory = a.memory.unwrap_or_else(crate::io::default_memory_budget);
    let mut so = std::io::stdout().lock();
    let _ = writeln!(
        so,
        "in {} (hit: stored and reused; miss: computed when needed), and the steps a run with --memory {} would take:",
        out.display(),
        crate::util::human_bytes(memory)
    );
    let planned = each_row(&manifest, |row| match crate::exec::sample_steps(p, &row, &manifest, out, memory) {
        Ok(sp) => {
            let cols: Vec<String> = sp.hits.iter().map(|(id, h)| format!("{id} {}", if *h { "hit" } else { "miss" })).collect();
            let _ = writeln!(so, "  {:<w$}  {}", row.id, cols.join("  "));
            let _ = writeln!(so, "  {:<w$}  {}", "", sp.describe(p));
        }
        Err(e) => {
            let _ = writeln!(so, "  {:<w$}  cannot plan: {e}", row.id);
        }
    });
    match planned {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// `tessera ops` text.
pub fn ops_text(op: Option<&str>) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    match op {
        None => {
            let _ = writeln!(s, "ops (tessera ops OP for parameters):");
            for o in crate::ops::REGISTRY {
                let out = if o.same_kind { "same" } else { o.output.name() };
                let _ = writeln!(s, "  {:<12} → {:<7} {}", o.name, out, o.summary);
            }
        }
        Some(name) => {
            let o = crate::ops::lookup(name).ok_or_else(|| {
                let names = crate::ops::REGISTRY.iter().map(|o| o.name);
                match crate::util::did_you_mean(name, names) {
                    Some(m) => format!("unknown op '{name}': did you mean '{m}'?"),
                    None => format!("unknown op '{name}' (tessera ops lists them)"),
                }
            })?;
            let out = if o.same_kind { "the input's kind" } else { o.output.name() };
            let _ = writeln!(s, "{} (version {}) → {}\n  {}\n", o.name, o.version, out, o.summary);
            let _ = writeln!(s, "parameters:");
            for p in o.params {
                let d = p.default.map(|d| format!(" (default: {d})")).unwrap_or_else(|| " (required)".into());
                let _ = writeln!(s, "  {:<13} {}{}\n      {}", p.name, p.ty, d, p.doc);
            }
            let _ = writeln!(s, "\n{}", o.doc);
            let _ = writeln!(s, "\nout of core (a sample larger than --memory):");
            for l in crate::ops::out_of_core(o) {
                let _ = writeln!(s, "  {l}");
            }
        }
    }
    Ok(s)
}

fn cmd_ops(a: OpsArgs) -> i32 {
    if a.json {
        let v = match &a.op {
            None => serde_json::to_value(crate::ops::REGISTRY).unwrap_or_default(),
            Some(n) => match crate::ops::lookup(n) {
                Some(o) => serde_json::to_value(o).unwrap_or_default(),
                None => {
                    eprintln!("error: {}", ops_text(Some(n)).err().unwrap_or_default());
                    return 2;
                }
            },
        };
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    match ops_text(a.op.as_deref()) {
        Ok(s) => {
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// The pipeline's `tile:` (validated when the pipeline was compiled), else `auto`.
fn pipeline_tile(spec: &crate::spec::PipelineSpec) -> crate::exec::TileSize {
    let Some(node) = spec.tile.as_ref() else { return crate::exec::TileSize::Auto };
    let text = match node.as_seq() {
        Some(items) => items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join("x"),
        None => node.as_str().unwrap_or("auto").to_string(),
    };
    text.parse().unwrap_or_default()
}

fn cmd_run(a: RunArgs) -> i32 {
    crate::util::set_durable(a.durable);
    if let Err(e) = a.resources.check() {
        eprintln!("error: {e}");
        return 2;
    }
    let manifest = if !a.images.is_empty() {
        for p in &a.images {
            if p.extension().is_some_and(|e| e == "csv") {
                eprintln!("error: {} looks like a manifest: pass it with --samples", p.display());
                return 2;
            }
        }
        Manifest::from_images(&a.images)
    } else {
        match a.samples.clone().or_else(|| default_manifest(&a.pipeline)) {
            Some(p) => match open_manifest(&p, &joins_for(&a.join, &a.pipeline)) {
                Ok(m) => m,
                Err(code) => return code,
            },
            None => {
                // Report pipeline errors first, if any; then the missing samples.
                if let Err(d) = load_plan(&a.pipeline, None) {
                    report(&d);
                    return 2;
                }
                eprintln!("error: no samples: give image paths, --samples MANIFEST.csv, or `samples:` in the pipeline");
                return 2;
            }
        }
    };
    if manifest.is_empty() {
        eprintln!("error: the manifest lists no samples");
        return 2;
    }
    let plan = match load_plan(&a.pipeline, Some(&manifest)) {
        Ok(p) => p,
        Err(d) => {
            report(&d);
            return 2;
        }
    };
    let task = match a.task {
        None => None,
        Some(crate::sched::TaskArg::Fixed(t)) => Some(t),
        Some(crate::sched::TaskArg::Auto) => match crate::sched::detect_env() {
            Ok((t, sched)) => {
                eprintln!("tessera: task {t} ({sched} array)");
                Some(t)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    if let Some(t) = task
        && !(0..manifest.len()).any(|i| t.owns(i))
    {
        eprintln!("tessera: task {t} owns no sample (fewer samples than tasks); nothing to do");
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("tessera-out").join(&plan.spec.name));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: cannot create output folder {}: {e}", out.display());
        return 2;
    }
    let cfg = RunConfig {
        task,
        out: out.clone(),
        threads: rayon::current_num_threads(),
        tile: a.resources.tile(&plan.spec),
        memory: a.resources.memory(),
        fail_fast: a.fail_fast,
        force: a.force,
        checkpoints: !a.no_checkpoint,
        split: a.split.map(|n| n as usize),
        interrupt: None,
        study_outputs: true,
    };
    if let Some(n) = cfg.split {
        use crate::exec::split::{PhaseArg, run_phase};
        let count = crate::exec::split::phases(&plan).len();
        let list: Vec<usize> = match a.phase {
            PhaseArg::All if cfg.task.is_some() => {
                eprintln!("error: --task runs one phase: give --phase K or --phase final (`tessera plan --split {n}` lists the phases)");
                return 2;
            }
            PhaseArg::All => (1..=count).collect(),
            PhaseArg::One(k) => vec![k],
            PhaseArg::Final => Vec::new(),
        };
        let mut failed = false;
        for k in list {
            match run_phase(&plan, &manifest, &cfg, n, k) {
                Ok(s) => {
                    if a.json {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    } else if a.progress != ProgressArg::Never || s.failed > 0 {
                        eprintln!(
                            "phase {} of {} ({}): {} of {} units done in {:.2} s",
                            s.phase, s.phases, s.describe, s.done, s.units, s.seconds
                        );
                    }
                    for e in &s.errors {
                        eprintln!("error: {e}");
                    }
                    if s.failed > 0 {
                        // Later phases need this one's results.
                        failed = true;
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            }
        }
        if failed {
            return 1;
        }
        if a.phase != PhaseArg::All && a.phase != PhaseArg::Final {
            return 0;
        }
    }
    let progress = Progress::new(a.progress.into());
    let summary = match crate::exec::run(&plan, &manifest, &cfg, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot run in {}: {e}", out.display());
            return 2;
        }
    };
    if let Err(e) = crate::exec::provenance::write_records(&out, &plan, &manifest, &cfg, &summary) {
        eprintln!("error: writing run records in {}: {e}", out.display());
        return 1;
    }
    for e in &summary.errors {
        eprintln!("error: {e}");
    }
    let failed = summary.not_done();
    let done = summary.done;
    if a.json {
        // The failed samples, read back from the run's records.
        let failures: Vec<serde_json::Value> = if summary.failed == 0 {
            Vec::new()
        } else {
            summary
                .entries()
                .filter_map(Result::ok)
                .filter(|s| s.status == Status::Failed)
                .map(|s| serde_json::json!({"sample": s.sample, "stage": s.failed_stage, "error": s.error}))
                .collect()
        };
        let v = serde_json::json!({
            "out": out.display().to_string(),
            "samples": summary.total,
            "done": done,
            "up_to_date": summary.up_to_date,
            "failed": failures,
            "skipped": summary.skipped,
            "seconds": summary.seconds,
            "outputs": summary.written,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let mut so = std::io::stdout().lock();
        let current = summary.up_to_date;
        if current == summary.total {
            let _ = writeln!(so, "{current} samples up to date (nothing to do; --force recomputes) → {}", out.display());
        } else {
            let note = if current > 0 { format!(" ({current} up to date)") } else { String::new() };
            let _ = writeln!(so, "{done} of {} samples done{note} in {:.2} s → {}", summary.total, summary.seconds, out.display());
        }
        // One line per sample for a small study; a large one lists the first few (run.json and
        // `tessera status` have every sample).
        const LISTED: usize = 20;
        let listed = if done > crate::exec::FIRST_DONE { LISTED } else { done };
        for s in summary.first_done.iter().take(listed) {
            let objs: Vec<String> = s.objects.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let how = if s.up_to_date {
                "  (up to date)".to_string()
            } else if !s.reused.is_empty() {
                format!("  (from checkpoints: {})", s.reused.join(", "))
            } else {
                String::new()
            };
            let _ = writeln!(so, "  {:<20} {}{how}", s.sample, objs.join(", "));
        }
        if done > listed {
            let _ = writeln!(so, "  … and {} more samples (run.json lists every one; `tessera status` too)", done - listed);
        }
        for p in &summary.written {
            let _ = writeln!(so, "  wrote {}", out.join(p).display());
        }
        if failed > 0 {
            let _ = writeln!(so, "{failed} sample{} failed: see {}", if failed == 1 { "" } else { "s" }, out.join("errors.csv").display());
        }
    }
    if failed > 0 || !summary.errors.is_empty() { 1 } else { 0 }
}

/// Man pages for `tessera` and each subcommand: (file name, roff text).
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let cmd = Cli::command();
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    if clap_mangen::Man::new(cmd.clone()).render(&mut buf).is_ok() {
        pages.push(("tessera.1".to_string(), buf));
    }
    for sub in cmd.get_subcommands() {
        let name = format!("tessera-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        if clap_mangen::Man::new(sub).render(&mut buf).is_ok() {
            pages.push((format!("{name}.1"), buf));
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}

/// `--progress`: when to show progress (the command line's spelling of [`ProgressMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// A bar even when stderr is not a terminal.
    Always,
    /// Nothing but errors.
    Never,
}

impl From<ProgressArg> for ProgressMode {
    fn from(a: ProgressArg) -> ProgressMode {
        match a {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Always => ProgressMode::Always,
            ProgressArg::Never => ProgressMode::Never,
        }
    }
}
