//! What running one sample does, as pure data: which stages are taken from storage, which are
//! computed, and in which steps (fused runs of local stages, global stages). Both executors —
//! whole images and tiles in memory ([`super::evaluate_with`]), slabs from disk
//! ([`super::stream`]) — follow the same schedule, and the resume decision is made here once.

use super::tiled::{self, Group};
use super::tiles::Zyx;

/// What happens to one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not needed: no output to write or table to merge depends on it.
    Skip,
    /// Taken from storage (a verified checkpoint, or a current output file read back).
    Reuse,
    /// Computed from its inputs.
    Compute,
}

/// The resume decision for a sample's stages (in plan order): walking back from what must
/// exist (`required`: outputs to write, tables to merge), a required stage is reused when
/// `try_reuse` finds its stored value (the caller keeps what it found), computed otherwise —
/// and then its inputs (`reads`) are required in turn.
pub fn decide(mut required: Vec<bool>, reads: &dyn Fn(usize) -> Vec<usize>, try_reuse: &mut dyn FnMut(usize) -> bool) -> Vec<Decision> {
    let n = required.len();
    let mut d = vec![Decision::Skip; n];
    for i in (0..n).rev() {
        if !required[i] {
            continue;
        }
        if try_reuse(i) {
            d[i] = Decision::Reuse;
            continue;
        }
        d[i] = Decision::Compute;
        for j in reads(i) {
            required[j] = true;
        }
    }
    d
}

/// One step of a sample's run.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A stored value stands in for the stage.
    Reuse(usize),
    /// Consecutive local stages of one shape, fused (tiles in memory, slabs when streamed).
    Fused(Group),
    /// A global stage on whole inputs (or in its out-of-core form).
    Global(usize),
    /// A run of local stages computed where the global stage after it reads it, a few planes at
    /// a time, never whole ([`crate::ops::Op::reads_planes`]; in memory only).
    ByPlanes(Group, usize),
}

/// The steps for `decisions` (skipped stages have none), grouping computed local stages by the
/// one fusion rule ([`tiled::group_from`]). `local` gives a stage's halo for this sample when
/// its op is local; `by_planes(g, i)` whether the global stage `i` right after group `g` reads
/// it by planes ([`Step::ByPlanes`]).
pub fn steps(
    decisions: &[Decision],
    local: &dyn Fn(usize) -> Option<Zyx>,
    same_shape: &dyn Fn(usize, usize) -> bool,
    by_planes: &dyn Fn(&Group, usize) -> bool,
) -> Vec<Step> {
    let n = decisions.len();
    let compute = |k: usize| decisions[k] == Decision::Compute;
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        match decisions[i] {
            Decision::Skip => i += 1,
            Decision::Reuse => {
                out.push(Step::Reuse(i));
                i += 1;
            }
            Decision::Compute => {
                let g = tiled::group_from(i, n, &|k| if compute(k) { local(k) } else { None }, same_shape);
                if g.stages.is_empty() {
                    out.push(Step::Global(i));
                    i += 1;
                } else {
                    i = g.stages[g.stages.len() - 1] + 1;
                    if i < n && compute(i) && local(i).is_none() && by_planes(&g, i) {
                        out.push(Step::ByPlanes(g, i));
                        i += 1;
                    } else {
                        out.push(Step::Fused(g));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Decision::*;
    use super::*;

    /// smooth(0) → mask(1, global) → clean(2) → labels(3, global) → table(4, global); the table
    /// also reads smooth.
    fn reads(i: usize) -> Vec<usize> {
        match i {
            1 => vec![0],
            2 => vec![1],
            3 => vec![2],
            4 => vec![3, 0],
            _ => vec![],
        }
    }

    #[test]
    fn a_fresh_run_computes_what_outputs_need_and_nothing_else() {
        // Outputs: labels (3) and the table (4); stage 5 is written nowhere and read by nobody.
        let d = decide(vec![false, false, false, true, true, false], &reads, &mut |_| false);
        assert_eq!(d, vec![Compute, Compute, Compute, Compute, Compute, Skip]);
    }

    #[test]
    fn a_stored_value_cuts_the_walk_back() {
        // The labels' checkpoint verifies: the table is computed from it and smooth; mask and
        // clean are not needed.
        let d = decide(vec![false, false, false, true, true], &reads, &mut |i| i == 3);
        assert_eq!(d, vec![Compute, Skip, Skip, Reuse, Compute]);
        // Everything stored: only the outputs' own values are taken.
        let mut asked = Vec::new();
        let d = decide(vec![false, false, false, true, true], &reads, &mut |i| {
            asked.push(i);
            true
        });
        assert_eq!(d, vec![Skip, Skip, Skip, Reuse, Reuse]);
        assert_eq!(asked, vec![4, 3], "only required stages are looked up, last first");
    }

    #[test]
    fn steps_fuse_computed_local_stages_and_keep_reused_ones_apart() {
        let local = |k: usize| if [0, 2, 5, 6].contains(&k) { Some([k, 0, 0]) } else { None };
        let same = |_: usize, _: usize| true;
        let d = [Compute, Compute, Compute, Reuse, Compute, Compute, Compute];
        let s = steps(&d, &local, &same, &|_, _| false);
        let g = |v: Vec<usize>| Step::Fused(Group { halos: v.iter().map(|&k| [k, 0, 0]).collect(), stages: v });
        assert_eq!(s, vec![g(vec![0]), Step::Global(1), g(vec![2]), Step::Reuse(3), Step::Global(4), g(vec![5, 6])]);
        // A skipped stage has no step; a reused local stage breaks a run.
        let d = [Skip, Compute, Compute, Compute, Compute, Reuse, Compute];
        assert_eq!(
            steps(&d, &local, &same, &|_, _| false),
            vec![Step::Global(1), g(vec![2]), Step::Global(3), Step::Global(4), Step::Reuse(5), g(vec![6])]
        );
        // A global stage that reads the run before it by planes takes it into its step.
        let d = [Compute, Compute, Compute, Reuse, Compute, Compute, Compute];
        let s = steps(&d, &local, &same, &|g, i| g.stages == [2] && i == 3 || g.stages == [0] && i == 1);
        let by = |v: Vec<usize>, i| Step::ByPlanes(Group { halos: v.iter().map(|&k| [k, 0, 0]).collect(), stages: v }, i);
        assert_eq!(s, vec![by(vec![0], 1), g(vec![2]), Step::Reuse(3), Step::Global(4), g(vec![5, 6])]);
    }
}
