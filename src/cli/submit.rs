//! `tessera submit`: a study as an array job and a merge job on Slurm or SGE, or the failed
//! shards of an output folder resubmitted ([`crate::sched::submit`] writes and submits).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{SubmitArgs, default_manifest, load_plan, report};

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
}

pub fn cmd_submit(a: SubmitArgs) -> i32 {
    use crate::sched::submit::{Chain, JobSpec, submit};
    let fail = |e: String| {
        eprintln!("error: {e}");
        2
    };
    let (spec, from) = if let Some(dir) = &a.resubmit_failed {
        let path = dir.join("jobs").join("submit.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return fail(format!("{}: {e} (was {} submitted with `tessera submit`?)", path.display(), dir.display())),
        };
        let mut spec: JobSpec = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        if let Some(s) = a.scheduler {
            spec.scheduler = s;
        }
        if !a.extra.is_empty() {
            spec.extra = a.extra.clone();
        }
        spec.durable |= a.durable;
        if let Some(from) = match split_resume(&spec) {
            Ok(f) => f,
            Err(e) => return fail(e),
        } {
            (spec, from)
        } else {
            let shards: Vec<usize> = match crate::exec::merge::merge(dir, false) {
                Ok(r) if r.not_done.is_empty() => {
                    println!(
                        "nothing to resubmit: all {} samples of {} are done (tessera merge {0} writes the study tables)",
                        r.samples,
                        dir.display()
                    );
                    return 0;
                }
                Ok(r) if r.task_count == Some(spec.tasks) => r.tasks_to_rerun,
                // No task ever recorded anything (or another sharding): every shard.
                _ => (1..=spec.tasks).collect(),
            };
            (spec, Chain::Shards(shards))
        }
    } else {
        let pipeline = a.pipeline.clone().expect("required by clap");
        let mpath = match a.samples.clone().or_else(|| default_manifest(&pipeline)) {
            Some(p) => p,
            None => {
                return fail(
                    "no samples: give --samples MANIFEST.csv or `samples:` in the pipeline (an array job needs a manifest)".into(),
                );
            }
        };
        let joins = super::joins_for(&a.join, &pipeline);
        let manifest = match super::open_manifest(&mpath, &joins) {
            Ok(m) => m,
            Err(code) => return code,
        };
        let plan = match load_plan(&pipeline, Some(&manifest)) {
            Ok(p) => p,
            Err(d) => {
                report(&d);
                return 2;
            }
        };
        let n = manifest.len();
        if n == 0 {
            return fail(format!("{}: the manifest lists no samples", mpath.display()));
        }
        let blocks = a.split.map(|b| b as usize);
        let tasks = match (a.tasks, blocks) {
            (Some(t), Some(_)) => (t as usize).min(n),
            (None, _) => n,
            (Some(t), None) => t as usize,
        };
        if tasks > n {
            return fail(format!("--tasks {tasks} is more than the {n} samples of {}: use --tasks {n} or fewer", mpath.display()));
        }
        // A split run's phase arrays: a task per unit, at most --tasks.
        let phase_tasks: Vec<usize> = match blocks {
            Some(b) => crate::exec::split::phases(&plan)
                .iter()
                .map(|p| {
                    let units = crate::exec::split::units(p, n, b);
                    a.tasks.map_or(units, |t| units.min(t as usize))
                })
                .collect(),
            None => Vec::new(),
        };
        let run_memory = match a.memory {
            Some(m) => m,
            None => {
                let mut most = 0u64;
                let read = super::each_row(&manifest, |row| match crate::exec::sample_bytes(&plan, &row, &manifest) {
                    Ok(b) => most = most.max(b),
                    Err(e) => eprintln!("warning: sample '{}': {e} (it will fail in its task)", row.id),
                });
                if let Err(code) = read {
                    return code;
                }
                // Split: a block task holds about a block's share; the per-sample phases stream.
                (most / blocks.unwrap_or(1) as u64).max(256 << 20)
            }
        };
        let request_mib = (run_memory + run_memory / 4 + (256 << 20)).div_ceil(1 << 20);
        let out = a.out.clone().unwrap_or_else(|| PathBuf::from("tessera-out").join(&plan.spec.name));
        if let Err(e) = std::fs::create_dir_all(&out) {
            return fail(format!("cannot create output folder {}: {e}", out.display()));
        }
        let tessera = std::env::current_exe().map(|p| absolute(&p)).unwrap_or_else(|_| PathBuf::from("tessera"));
        let spec = JobSpec {
            scheduler: a.scheduler.expect("required by clap"),
            name: format!("tessera-{}", plan.spec.name),
            tessera,
            pipeline: absolute(&pipeline),
            manifest: absolute(&mpath),
            out: absolute(&out),
            workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            tasks,
            threads: a.threads as usize,
            run_memory,
            request_mib,
            pe: a.pe.clone(),
            extra: a.extra.clone(),
            durable: a.durable,
            joins: a.join.iter().map(|j| crate::spec::manifest::Join { table: absolute(&j.table), ..j.clone() }).collect(),
            split: blocks,
            phase_tasks,
        };
        (spec, Chain::All)
    };
    let sub = match submit(&spec, &from, a.dry_run) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sub).unwrap_or_default());
        return 0;
    }
    let mut so = std::io::stdout().lock();
    if let Some(n) = spec.split {
        let first = match &from {
            Chain::Phase(k, tasks) => {
                let list: Vec<String> = tasks.iter().map(|t| t.to_string()).collect();
                let _ =
                    writeln!(so, "split into {n} blocks: phase {k} again for tasks {} (of {})", list.join(","), spec.phase_tasks[k - 1]);
                k + 1
            }
            Chain::All => 1,
            Chain::Shards(_) => spec.phase_tasks.len() + 1,
        };
        for k in first..=spec.phase_tasks.len() {
            let t = spec.phase_tasks[k - 1];
            let _ = writeln!(so, "split into {n} blocks: phase {k}, {t} task{}", if t == 1 { "" } else { "s" });
        }
    }
    let what = if matches!(from, Chain::Shards(_)) {
        "shards to resubmit"
    } else if spec.split.is_some() {
        "final tasks"
    } else {
        "tasks"
    };
    let list: Vec<String> = sub.shards.iter().map(|k| k.to_string()).collect();
    let _ = writeln!(
        so,
        "{} {what}: {} (of {}), {} thread(s) and {} MiB each",
        spec.scheduler.name(),
        list.join(","),
        spec.tasks,
        spec.threads,
        spec.request_mib
    );
    for p in &sub.scripts {
        let _ = writeln!(so, "  wrote {}", p.display());
    }
    if a.dry_run {
        let _ = writeln!(so, "dry run; would submit:");
        for c in &sub.commands {
            let _ = writeln!(so, "  {}", c.iter().map(|w| crate::sched::submit::quote(w)).collect::<Vec<_>>().join(" "));
        }
    } else {
        let _ = writeln!(
            so,
            "submitted array job{} {} and merge job {} (after them)",
            if sub.array_jobs.len() > 1 { "s" } else { "" },
            sub.array_jobs.join(","),
            sub.merge_job.as_deref().unwrap_or("?")
        );
        let _ = writeln!(so, "follow with: tessera status {}", spec.out.display());
    }
    0
}

/// For a split submission: the first phase with units not done and the tasks that own them
/// (`None`: every phase is complete, and the final array's shards are what may be left).
fn split_resume(spec: &crate::sched::submit::JobSpec) -> Result<Option<crate::sched::submit::Chain>, String> {
    let Some(blocks) = spec.split else { return Ok(None) };
    let manifest = crate::spec::manifest::Manifest::open(&spec.manifest, &spec.joins).map_err(|e| e.to_string())?;
    let plan = match load_plan(&spec.pipeline, Some(&manifest)) {
        Ok(p) => p,
        Err(d) => return Err(format!("{}: {} error(s) in the pipeline", spec.pipeline.display(), d.len())),
    };
    let phases = crate::exec::split::phases(&plan);
    if phases.len() != spec.phase_tasks.len() {
        return Err(format!(
            "{} now has {} phases, not the {} it was submitted with",
            spec.pipeline.display(),
            phases.len(),
            spec.phase_tasks.len()
        ));
    }
    for (i, ph) in phases.iter().enumerate() {
        let k = i + 1;
        let left = crate::exec::split::unfinished_units(&spec.out, &manifest, ph, blocks, k)?;
        if !left.is_empty() {
            let mut tasks: Vec<usize> = left.iter().map(|&u| crate::sched::Task::owner(u, spec.phase_tasks[i])).collect();
            tasks.sort_unstable();
            tasks.dedup();
            return Ok(Some(crate::sched::submit::Chain::Phase(k, tasks)));
        }
    }
    Ok(None)
}
