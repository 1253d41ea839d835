//! `tessera submit`: job scripts for Slurm and SGE under `DIR/jobs/`, and their submission.
//!
//! An array job runs `tessera run … --task auto` (one shard per array task), and a merge job
//! depending on it runs `tessera merge DIR` (Slurm `--dependency=afterok` with
//! `--kill-on-invalid-dep=yes`; SGE `-hold_jid`). Resubmitting failed shards cannot use `auto`:
//! Slurm is given the list of shards and each task passes `--task $SLURM_ARRAY_TASK_ID/N`; SGE
//! takes one range per `-t`, so each shard is its own job with `--task K/N`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The grid engines `submit` talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Slurm,
    Sge,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Slurm => "slurm",
            Scheduler::Sge => "sge",
        }
    }
    fn submit_command(self) -> &'static str {
        match self {
            Scheduler::Slurm => "sbatch",
            Scheduler::Sge => "qsub",
        }
    }
}

/// Everything the job scripts need; kept in `DIR/jobs/submit.json` for `--resubmit-failed`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub scheduler: Scheduler,
    /// Job name: `tessera-<pipeline name>`.
    pub name: String,
    pub tessera: PathBuf,
    pub pipeline: PathBuf,
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub workdir: PathBuf,
    pub tasks: usize,
    pub threads: usize,
    /// `--memory` of each task, bytes.
    pub run_memory: u64,
    /// Memory asked of the scheduler per task, MiB.
    pub request_mib: u64,
    /// SGE parallel environment for more than one thread.
    pub pe: String,
    /// Scheduler arguments given after `--`, passed to every submission.
    pub extra: Vec<String>,
    /// The tasks and the merge run with `--durable` (absent in older submit.json: off).
    #[serde(default)]
    pub durable: bool,
    /// `--join` tables given to `submit`, passed to every task (absolute paths).
    #[serde(default)]
    pub joins: Vec<crate::spec::manifest::Join>,
    /// `--split N`: every sample in N z-blocks, run as a chain of phase arrays
    /// ([`crate::exec::split`]) before the final array (`tasks` tasks) and the merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<usize>,
    /// With `split`: the array size of each phase, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_tasks: Vec<usize>,
}

/// What was submitted (or, with `--dry-run`, would be).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Submission {
    pub scheduler: String,
    pub array_jobs: Vec<String>,
    pub merge_job: Option<String>,
    pub shards: Vec<usize>,
    pub scripts: Vec<PathBuf>,
    pub commands: Vec<Vec<String>>,
    pub dry_run: bool,
}

/// Single-quotes a word for bash.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn qp(p: &Path) -> String {
    quote(&p.display().to_string())
}

fn jobs_dir(spec: &JobSpec) -> PathBuf {
    spec.out.join("jobs")
}

/// Which array job a script belongs to: the final one (the study's shards; `--phase final` of
/// a split run) or phase `k` (1-based) of a split run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Array {
    Final,
    Phase(usize),
}

impl Array {
    /// Its job name, its number of tasks, and what its `tessera run` line adds.
    fn of(self, spec: &JobSpec) -> (String, usize, String) {
        let n = spec.split.unwrap_or(1);
        match self {
            Array::Final => (spec.name.clone(), spec.tasks, spec.split.map(|n| format!(" --split {n} --phase final")).unwrap_or_default()),
            Array::Phase(k) => {
                (format!("{}-phase{k}", spec.name), spec.phase_tasks.get(k - 1).copied().unwrap_or(1), format!(" --split {n} --phase {k}"))
            }
        }
    }
    /// Its scripts' file stems: the array, and a resubmission of some of its tasks.
    fn stems(self) -> (String, String) {
        match self {
            Array::Final => ("array".into(), "rerun".into()),
            Array::Phase(k) => (format!("phase-{k}"), format!("phase-{k}-rerun")),
        }
    }
}

fn run_line(spec: &JobSpec, task: &str, split: &str) -> String {
    format!(
        "exec {} run {} --samples {}{} --out {} --task {task}{split} --threads {} --memory {} --progress never{}\n",
        qp(&spec.tessera),
        qp(&spec.pipeline),
        qp(&spec.manifest),
        spec.joins
            .iter()
            .map(|j| format!(
                " --join {}",
                quote(&format!(
                    "{}:{}:{}",
                    j.table.display(),
                    j.on.join(","),
                    if j.how == crate::spec::manifest::How::Left { "left" } else { "inner" }
                ))
            ))
            .collect::<String>(),
        qp(&spec.out),
        spec.threads,
        spec.run_memory,
        durable_flag(spec)
    )
}

fn durable_flag(spec: &JobSpec) -> &'static str {
    if spec.durable { " --durable" } else { "" }
}

fn header(spec: &JobSpec, name: &str, array: Option<&str>, log: &str, cpus: usize, mib: u64) -> String {
    let logs = jobs_dir(spec).join("logs");
    let mut s = String::from("#!/bin/bash\n");
    match spec.scheduler {
        Scheduler::Slurm => {
            s.push_str(&format!("#SBATCH --job-name={}\n", quote(name)));
            if let Some(a) = array {
                s.push_str(&format!("#SBATCH --array={a}\n"));
            }
            s.push_str(&format!("#SBATCH --cpus-per-task={cpus}\n#SBATCH --mem={mib}M\n"));
            s.push_str(&format!("#SBATCH --output={}\n", qp(&logs.join(log))));
            s.push_str(&format!("#SBATCH --chdir={}\n", qp(&spec.workdir)));
        }
        Scheduler::Sge => {
            s.push_str(&format!("#$ -N {}\n#$ -S /bin/bash\n", quote(name)));
            if let Some(a) = array {
                s.push_str(&format!("#$ -t {a}\n"));
            }
            if cpus > 1 {
                s.push_str(&format!("#$ -pe {} {cpus}\n", quote(&spec.pe)));
            }
            s.push_str(&format!("#$ -l mem_free={mib}M\n"));
            s.push_str(&format!("#$ -o {}/\n#$ -j y\n", qp(&logs)));
            s.push_str(&format!("#$ -wd {}\n", qp(&spec.workdir)));
        }
    }
    s.push_str("set -eu\n");
    s
}

/// An array job: every task, `--task auto`.
pub fn array_script(spec: &JobSpec, a: Array) -> String {
    let (name, count, extra) = a.of(spec);
    header(spec, &name, Some(&format!("1-{count}")), "%x-%A_%a.out", spec.threads, spec.request_mib) + &run_line(spec, "auto", &extra)
}

/// Slurm: the listed tasks of an array as one array, each task naming its shard explicitly.
pub fn slurm_rerun_script(spec: &JobSpec, a: Array, tasks: &[usize]) -> String {
    let (name, count, extra) = a.of(spec);
    let list: Vec<String> = tasks.iter().map(|k| k.to_string()).collect();
    header(spec, &name, Some(&list.join(",")), "%x-%A_%a.out", spec.threads, spec.request_mib)
        + &run_line(spec, &format!("\"${{SLURM_ARRAY_TASK_ID}}/{count}\""), &extra)
}

/// One task of an array as a plain job (SGE resubmission).
pub fn shard_script(spec: &JobSpec, a: Array, k: usize) -> String {
    let (name, count, extra) = a.of(spec);
    header(spec, &format!("{name}-{k}"), None, "", spec.threads, spec.request_mib) + &run_line(spec, &format!("{k}/{count}"), &extra)
}

/// The scripts of one link of the chain: an array, or (`tasks`) some of its tasks again.
fn link(spec: &JobSpec, a: Array, tasks: Option<&[usize]>) -> Link {
    let jobs = jobs_dir(spec);
    let (all, rerun) = a.stems();
    match tasks {
        None => vec![(jobs.join(format!("{all}.sh")), array_script(spec, a))],
        Some(list) if spec.scheduler == Scheduler::Slurm => vec![(jobs.join(format!("{rerun}.sh")), slurm_rerun_script(spec, a, list))],
        Some(list) => list.iter().map(|&k| (jobs.join(format!("{rerun}-{k}.sh")), shard_script(spec, a, k))).collect(),
    }
}

/// The merge job.
pub fn merge_script(spec: &JobSpec) -> String {
    header(spec, &format!("{}-merge", spec.name), None, "%x-%j.out", 1, 2048)
        + &format!("exec {} merge {}{}\n", qp(&spec.tessera), qp(&spec.out), durable_flag(spec))
}

fn write_script(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    crate::util::write_atomic(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs a submission command; returns the job id it prints.
fn call(s: Scheduler, args: &[String]) -> Result<String, String> {
    let prog = &args[0];
    let out = Command::new(prog).args(&args[1..]).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{prog} not found on PATH: is this a {} submit host? (--dry-run writes the job scripts without submitting)",
                if s == Scheduler::Slurm { "Slurm" } else { "Grid Engine" }
            )
        } else {
            format!("{prog}: {e}")
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(format!(
            "{prog} refused the job ({}): {}",
            out.status.code().map(|c| format!("exit {c}")).unwrap_or_else(|| "killed".into()),
            if stderr.is_empty() { &stdout } else { &stderr }
        ));
    }
    // sbatch --parsable: "id" or "id;cluster"; qsub -terse: "id" or "id.1-3:1".
    let id: String = stdout.lines().last().unwrap_or("").chars().take_while(|c| c.is_ascii_digit()).collect();
    if id.is_empty() {
        return Err(format!("{prog} printed no job id: '{stdout}'"));
    }
    Ok(id)
}

fn submit_args(spec: &JobSpec, script: &Path, depends: &[String]) -> Vec<String> {
    let mut v = vec![spec.scheduler.submit_command().to_string()];
    match spec.scheduler {
        Scheduler::Slurm => {
            v.push("--parsable".into());
            if !depends.is_empty() {
                v.push(format!("--dependency=afterok:{}", depends.join(":")));
                v.push("--kill-on-invalid-dep=yes".into());
            }
        }
        Scheduler::Sge => {
            v.push("-terse".into());
            if !depends.is_empty() {
                v.push("-hold_jid".into());
                v.push(depends.join(","));
            }
        }
    }
    v.extend(spec.extra.iter().cloned());
    v.push(script.display().to_string());
    v
}

/// Where a (re)submission starts: the final array's shards, or a split run's phase `k` with
/// the tasks of it to run (every later phase then runs whole).
#[derive(Debug, Clone, PartialEq)]
pub enum Chain {
    /// Everything: a split run's phases (if any), the final array, the merge.
    All,
    /// The final array's listed shards, then the merge.
    Shards(Vec<usize>),
    /// Phase `k`'s listed tasks, every later phase, the final array, the merge.
    Phase(usize, Vec<usize>),
}

/// The job scripts of one link of the chain (an array, or SGE's single jobs that stand in for
/// an array's listed tasks); each link starts after every job of the one before.
type Link = Vec<(PathBuf, String)>;

/// Writes the scripts and submits them as a chain: a split run's phase arrays (from `from`),
/// the final array, then the merge job after the last. With `dry_run`, only writes and reports
/// the commands.
pub fn submit(spec: &JobSpec, from: &Chain, dry_run: bool) -> Result<Submission, String> {
    let jobs = jobs_dir(spec);
    std::fs::create_dir_all(jobs.join("logs")).map_err(|e| format!("{}: {e}", jobs.display()))?;
    let mut sub = Submission { scheduler: spec.scheduler.name().into(), dry_run, ..Default::default() };
    let mut links: Vec<Link> = Vec::new();
    let first_phase = match from {
        Chain::All => Some(1),
        Chain::Phase(k, _) => Some(*k),
        Chain::Shards(_) => None,
    };
    if let (Some(first), Some(_)) = (first_phase, spec.split) {
        for k in first..=spec.phase_tasks.len() {
            let listed = match from {
                Chain::Phase(fk, tasks) if *fk == k => Some(tasks.as_slice()),
                _ => None,
            };
            links.push(link(spec, Array::Phase(k), listed));
        }
    }
    let listed = match from {
        Chain::Shards(list) => Some(list.as_slice()),
        Chain::All | Chain::Phase(..) => None,
    };
    links.push(link(spec, Array::Final, listed));
    sub.shards = listed.map_or_else(|| (1..=spec.tasks).collect(), <[usize]>::to_vec);
    let merge = jobs.join("merge.sh");
    for (p, text) in links.iter().flatten() {
        write_script(p, text)?;
        sub.scripts.push(p.clone());
    }
    write_script(&merge, &merge_script(spec))?;
    sub.scripts.push(merge.clone());
    let json = serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?;
    crate::util::write_atomic(&jobs.join("submit.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    let mut before: Vec<String> = Vec::new();
    for (n, link) in links.iter().enumerate() {
        let mut ids = Vec::new();
        for (p, _) in link {
            let args = submit_args(spec, p, &before);
            if !dry_run {
                let id = call(spec.scheduler, &args).map_err(|e| {
                    if sub.array_jobs.is_empty() {
                        e
                    } else {
                        format!("{e} (jobs {} were submitted before it; cancel them or let them fail)", sub.array_jobs.join(","))
                    }
                })?;
                ids.push(id);
            }
            sub.commands.push(args);
        }
        sub.array_jobs.extend(ids.iter().cloned());
        let label =
            if n + 1 == links.len() { "array job id".to_string() } else { format!("phase {} job id", first_phase.unwrap_or(1) + n) };
        before = if dry_run { vec![format!("<{label}>")] } else { ids };
    }
    let args = submit_args(spec, &merge, &before);
    if !dry_run {
        sub.merge_job = Some(call(spec.scheduler, &args).map_err(|e| {
            format!(
                "{e} (the array job {} was submitted; `tessera merge {}` merges after it)",
                sub.array_jobs.join(","),
                spec.out.display()
            )
        })?);
    }
    sub.commands.push(args);
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: Scheduler) -> JobSpec {
        JobSpec {
            scheduler: s,
            name: "tessera-nuclei".into(),
            tessera: "/opt/tessera/bin/tessera".into(),
            pipeline: "/data/p q.yaml".into(),
            manifest: "/data/m.csv".into(),
            out: "/scratch/out".into(),
            workdir: "/data".into(),
            tasks: 3,
            threads: 2,
            run_memory: 1 << 30,
            request_mib: 1536,
            pe: "smp".into(),
            extra: vec!["--partition=debug".into()],
            durable: false,
            joins: Vec::new(),
            split: None,
            phase_tasks: Vec::new(),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("/a/b.yaml"), "/a/b.yaml");
        assert_eq!(quote("it's here"), r"'it'\''s here'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn slurm_scripts() {
        let s = array_script(&spec(Scheduler::Slurm), Array::Final);
        assert!(s.starts_with("#!/bin/bash\n#SBATCH --job-name=tessera-nuclei\n#SBATCH --array=1-3\n"), "{s}");
        assert!(s.contains("#SBATCH --cpus-per-task=2\n#SBATCH --mem=1536M\n"), "{s}");
        assert!(s.contains("--output=/scratch/out/jobs/logs/%x-%A_%a.out"), "{s}");
        assert!(
            s.contains("run '/data/p q.yaml' --samples /data/m.csv --out /scratch/out --task auto --threads 2 --memory 1073741824"),
            "{s}"
        );
        let r = slurm_rerun_script(&spec(Scheduler::Slurm), Array::Final, &[2, 3]);
        assert!(r.contains("--array=2,3") && r.contains("--task \"${SLURM_ARRAY_TASK_ID}/3\""), "{r}");
        // A split run's phase 2 of 3 (8 tasks) and its resubmission; the final array runs
        // `--phase final`.
        let mut sp = spec(Scheduler::Slurm);
        (sp.split, sp.phase_tasks) = (Some(4), vec![4, 1, 8]);
        let p = array_script(&sp, Array::Phase(3));
        assert!(p.contains("--job-name=tessera-nuclei-phase3\n#SBATCH --array=1-8\n"), "{p}");
        assert!(p.contains("--task auto --split 4 --phase 3 --threads 2"), "{p}");
        let r = slurm_rerun_script(&sp, Array::Phase(3), &[5]);
        assert!(r.contains("--array=5\n") && r.contains("--task \"${SLURM_ARRAY_TASK_ID}/8\" --split 4 --phase 3"), "{r}");
        assert!(array_script(&sp, Array::Final).contains("--task auto --split 4 --phase final"));
        let k = shard_script(&sp, Array::Phase(1), 3);
        assert!(k.contains("--job-name=tessera-nuclei-phase1-3\n") && k.contains("--task 3/4 --split 4 --phase 1"), "{k}");
        let m = merge_script(&spec(Scheduler::Slurm));
        assert!(m.contains("--job-name=tessera-nuclei-merge") && m.ends_with("exec /opt/tessera/bin/tessera merge /scratch/out\n"), "{m}");
        let a = submit_args(&spec(Scheduler::Slurm), Path::new("/m.sh"), &["12".into()]);
        assert_eq!(a, ["sbatch", "--parsable", "--dependency=afterok:12", "--kill-on-invalid-dep=yes", "--partition=debug", "/m.sh"]);
    }

    #[test]
    fn durable_reaches_tasks_and_merge() {
        let mut sp = spec(Scheduler::Slurm);
        assert!(!array_script(&sp, Array::Final).contains("--durable") && !merge_script(&sp).contains("--durable"));
        sp.durable = true;
        assert!(array_script(&sp, Array::Final).ends_with(" --progress never --durable\n"), "{}", array_script(&sp, Array::Final));
        assert!(slurm_rerun_script(&sp, Array::Final, &[2]).ends_with(" --durable\n"));
        assert!(shard_script(&sp, Array::Final, 2).ends_with(" --durable\n"));
        assert!(merge_script(&sp).ends_with("merge /scratch/out --durable\n"), "{}", merge_script(&sp));
        // A submit.json written before the field existed reads as not durable.
        let mut v = serde_json::to_value(spec(Scheduler::Sge)).unwrap();
        v.as_object_mut().unwrap().remove("durable");
        let old: JobSpec = serde_json::from_value(v).unwrap();
        assert!(!old.durable);
    }

    #[test]
    fn sge_scripts() {
        let s = array_script(&spec(Scheduler::Sge), Array::Final);
        assert!(s.contains("#$ -N tessera-nuclei\n#$ -S /bin/bash\n#$ -t 1-3\n#$ -pe smp 2\n"), "{s}");
        assert!(s.contains("#$ -o /scratch/out/jobs/logs/\n#$ -j y\n#$ -wd /data\n"), "{s}");
        let k = shard_script(&spec(Scheduler::Sge), Array::Final, 2);
        assert!(k.contains("#$ -N tessera-nuclei-2\n") && !k.contains("-t ") && k.contains("--task 2/3 "), "{k}");
        let a = submit_args(&spec(Scheduler::Sge), Path::new("/m.sh"), &["12".into(), "13".into()]);
        assert_eq!(a, ["qsub", "-terse", "-hold_jid", "12,13", "--partition=debug", "/m.sh"]);
    }

    #[test]
    fn missing_scheduler_is_a_clear_error() {
        let e = call(Scheduler::Slurm, &["tessera-no-such-sbatch".into()]).unwrap_err();
        assert!(e.contains("not found on PATH") && e.contains("--dry-run"), "{e}");
        let e = call(Scheduler::Sge, &["false".into()]).unwrap_err();
        assert!(e.contains("refused the job (exit 1)"), "{e}");
        assert_eq!(call(Scheduler::Sge, &["echo".into(), "4711.1-3:1".into()]).unwrap(), "4711");
        assert_eq!(call(Scheduler::Slurm, &["echo".into(), "88;cluster".into()]).unwrap(), "88");
    }
}
