//! Array jobs: which shard of a study this process runs (`--task K/N | auto`, SPEC §1), and
//! the job scripts `tessera submit` writes and hands to Slurm or SGE.
//!
//! Sharding is round-robin in manifest order: sample i (0-based) belongs to shard (i mod N) + 1.
//! `--task auto` reads the array variables of Slurm, SGE, PBS (Torque and PBS Pro) and LSF;
//! outside an array it is an error. Callers: `cli` (run, submit) and `exec` (merge reports the
//! owning shard of every sample that is not done).

pub mod submit;

use std::fmt;

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub index: usize,
    pub count: usize,
}

impl Task {
    pub fn new(index: usize, count: usize) -> Result<Task, String> {
        if count == 0 {
            return Err("the task count must be at least 1".into());
        }
        if index == 0 || index > count {
            return Err(format!("task {index} of {count} does not exist (tasks are numbered 1 to {count}, like split -n K/N)"));
        }
        Ok(Task { index, count })
    }
    /// Whether sample `i` (0-based, manifest order) belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index - 1
    }
    /// The shard that owns sample `i`.
    pub fn owner(i: usize, count: usize) -> usize {
        i % count + 1
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--task` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskArg {
    Fixed(Task),
    Auto,
}

impl std::str::FromStr for TaskArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(TaskArg::Auto);
        }
        let bad = || format!("'{s}' is not K/N (e.g. 2/8: the second of 8 shards) or auto");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        Task::new(k, n).map(TaskArg::Fixed)
    }
}

fn num(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<i64>, String> {
    match env(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() || v.trim() == "undefined" => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| format!("{name}={v} is not a number")),
    }
}

/// The shard of this process from the scheduler's array variables, and the scheduler's name.
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Result<(Task, &'static str), String> {
    let need = |name: &str| -> Result<i64, String> {
        num(env, name)?.ok_or_else(|| format!("{name} is not set, so the task count is unknown: use --task K/N"))
    };
    let shard = |offset: i64, step: i64, count: i64, what: &str| -> Result<Task, String> {
        if step <= 0 || offset < 0 || offset % step != 0 || count <= 0 {
            return Err(format!("{what}: cannot tell which shard this is (an index list?): use --task K/N"));
        }
        Task::new((offset / step) as usize + 1, count as usize).map_err(|e| format!("{what}: {e}; use --task K/N"))
    };
    // Slurm: index, min, step, count (MAX is the highest index that exists).
    if let Some(id) = num(env, "SLURM_ARRAY_TASK_ID")? {
        let (min, step, count) =
            (need("SLURM_ARRAY_TASK_MIN")?, num(env, "SLURM_ARRAY_TASK_STEP")?.unwrap_or(1), need("SLURM_ARRAY_TASK_COUNT")?);
        let max = num(env, "SLURM_ARRAY_TASK_MAX")?.unwrap_or(min + (count - 1) * step);
        // An index list (--array=1,3,8) reports step 1 with max - min + 1 != count.
        if (max - min) / step.max(1) + 1 != count {
            return Err(format!(
                "Slurm array with an index list (min {min}, max {max}, {count} tasks): cannot tell which shard this is; use --task K/N"
            ));
        }
        return Ok((shard(id - min, step, count, "Slurm")?, "slurm"));
    }
    // SGE: LAST is the end of the requested range, not the last index; no count.
    if let Some(id) = num(env, "SGE_TASK_ID")? {
        let (first, last, step) = (need("SGE_TASK_FIRST")?, need("SGE_TASK_LAST")?, num(env, "SGE_TASK_STEPSIZE")?.unwrap_or(1));
        let count = if step > 0 { (last - first) / step + 1 } else { 0 };
        return Ok((shard(id - first, step, count, "SGE")?, "sge"));
    }
    // PBS (Torque PBS_ARRAYID, PBS Pro PBS_ARRAY_INDEX): neither says how many tasks there are.
    for name in ["PBS_ARRAYID", "PBS_ARRAY_INDEX"] {
        if let Some(id) = num(env, name)? {
            let count = num(env, "TESSERA_TASK_COUNT")?.ok_or_else(|| {
                format!("{name} is set but PBS does not tell the number of array tasks: set TESSERA_TASK_COUNT=N (and TESSERA_TASK_FIRST if the range does not start at 1), or use --task K/N")
            })?;
            let first = num(env, "TESSERA_TASK_FIRST")?.unwrap_or(1);
            return Ok((shard(id - first, 1, count, "PBS")?, "pbs"));
        }
    }
    // LSF: LSB_JOBINDEX is 0 outside an array; ranges are assumed to start at 1.
    if let Some(id) = num(env, "LSB_JOBINDEX")?.filter(|&i| i > 0) {
        let (end, step) = (need("LSB_JOBINDEX_END")?, num(env, "LSB_JOBINDEX_STEP")?.unwrap_or(1));
        let count = if step > 0 { (end - 1) / step + 1 } else { 0 };
        return Ok((shard(id - 1, step, count, "LSF")?, "lsf"));
    }
    Err("--task auto: not inside an array job (none of SLURM_ARRAY_TASK_ID, SGE_TASK_ID, PBS_ARRAYID, PBS_ARRAY_INDEX, \
         LSB_JOBINDEX is set); use --task K/N, or run without --task"
        .into())
}

/// [`detect`] on the process environment.
pub fn detect_env() -> Result<(Task, &'static str), String> {
    detect(&|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let v: Vec<(String, String)> = vars.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        move |k| v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    #[test]
    fn parse_task_arguments() {
        assert_eq!("2/8".parse::<TaskArg>(), Ok(TaskArg::Fixed(Task { index: 2, count: 8 })));
        assert_eq!("auto".parse::<TaskArg>(), Ok(TaskArg::Auto));
        assert!("0/3".parse::<TaskArg>().unwrap_err().contains("numbered 1 to 3"));
        assert!("4/3".parse::<TaskArg>().is_err());
        assert!("2/0".parse::<TaskArg>().unwrap_err().contains("at least 1"));
        assert!("x".parse::<TaskArg>().unwrap_err().contains("K/N"));
    }

    #[test]
    fn round_robin_in_manifest_order() {
        let t = Task::new(2, 3).unwrap();
        assert_eq!((0..8).filter(|&i| t.owns(i)).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(Task::owner(7, 3), 2);
    }

    #[test]
    fn slurm_sge_pbs_lsf() {
        // --array=1-8:3 → tasks 1, 4, 7 (README of ../shared/scheduler).
        let slurm = |id| {
            env(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_MAX", "7"),
                ("SLURM_ARRAY_TASK_STEP", "3"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ])
        };
        assert_eq!(detect(&slurm("4")).unwrap(), (Task { index: 2, count: 3 }, "slurm"));
        assert_eq!(detect(&slurm("7")).unwrap().0, Task { index: 3, count: 3 });
        let list = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(detect(&list).unwrap_err().contains("index list"));
        let zero = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_MIN", "0"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(detect(&zero).unwrap().0, Task { index: 3, count: 4 });
        let sge = env(&[("SGE_TASK_ID", "7"), ("SGE_TASK_FIRST", "1"), ("SGE_TASK_LAST", "8"), ("SGE_TASK_STEPSIZE", "3")]);
        assert_eq!(detect(&sge).unwrap(), (Task { index: 3, count: 3 }, "sge"));
        let outside = env(&[("SGE_TASK_ID", "undefined"), ("SGE_TASK_FIRST", "undefined"), ("LSB_JOBINDEX", "0")]);
        assert!(detect(&outside).unwrap_err().contains("not inside an array job"));
        assert!(detect(&env(&[("PBS_ARRAYID", "2")])).unwrap_err().contains("TESSERA_TASK_COUNT"));
        assert_eq!(detect(&env(&[("PBS_ARRAY_INDEX", "2"), ("TESSERA_TASK_COUNT", "5")])).unwrap(), (Task { index: 2, count: 5 }, "pbs"));
        let lsf = env(&[("LSB_JOBINDEX", "7"), ("LSB_JOBINDEX_END", "8"), ("LSB_JOBINDEX_STEP", "3")]);
        assert_eq!(detect(&lsf).unwrap(), (Task { index: 3, count: 3 }, "lsf"));
        assert!(detect(&env(&[("SGE_TASK_ID", "x1")])).unwrap_err().contains("not a number"));
    }
}
