//! A seeded random forest of CART classification trees (Gini impurity), as scikit-learn's
//! `RandomForestClassifier` builds it: each tree on a bootstrap sample of the rows, at each node
//! the best split among `max_features` features drawn at random, thresholds half-way between
//! consecutive distinct values, leaves holding class fractions, probabilities the mean of the
//! trees' leaf fractions, importances the mean decrease in impurity.
//!
//! Written here rather than taken from a crate so that the model is the same bytes whatever the
//! thread count (each tree draws from its own generator, seeded by the forest seed and the tree's
//! index; trees are built in parallel and kept in index order), its probabilities are those
//! scikit-learn reports, and the model file is plain data tessera controls.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::kmeans::SplitMix;

/// How a forest is grown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Params {
    pub trees: usize,
    /// Deepest level of a tree (the root is depth 0); `None`: grown until leaves are pure.
    pub max_depth: Option<usize>,
    pub min_samples_leaf: usize,
    /// Features drawn at each node.
    pub max_features: usize,
    pub seed: u64,
}

/// Rows × features, row-major, and each row's class index.
pub struct Data<'a> {
    pub x: &'a [f64],
    pub features: usize,
    pub y: &'a [u32],
    pub classes: usize,
}

impl Data<'_> {
    fn at(&self, row: usize, f: usize) -> f64 {
        self.x[row * self.features + f]
    }
}

/// One tree as parallel arrays: node `i` splits on `feature[i]` at `threshold[i]` (rows with a
/// value `<=` it go to `left[i]`, the others to `right[i]`), or is leaf `leaf[i]` when
/// `feature[i]` is -1; leaf `k`'s class fractions are `value[k*classes..(k+1)*classes]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tree {
    pub feature: Vec<i32>,
    pub threshold: Vec<f64>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    pub leaf: Vec<u32>,
    pub value: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Forest {
    pub classes: usize,
    pub features: usize,
    pub trees: Vec<Tree>,
    /// Mean decrease in impurity per feature, summing to 1 (all 0 when no tree split).
    pub importances: Vec<f64>,
}

/// The generator of tree `t` of a forest seeded with `seed`.
fn tree_rng(seed: u64, t: usize) -> SplitMix {
    let mut g = SplitMix::new(seed ^ 0x5445_5353_4552_4146);
    let mut h = SplitMix::new(g.next_u64().wrapping_add((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    h.next_u64();
    h
}

/// A uniform integer in `0..n` (n > 0), without modulo bias worth noting for n ≪ 2^64.
fn below(g: &mut SplitMix, n: usize) -> usize {
    ((g.next_u64() as u128 * n as u128) >> 64) as usize
}

fn gini(counts: &[u64], n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    1.0 - counts.iter().map(|&c| (c as f64 / n) * (c as f64 / n)).sum::<f64>()
}

struct Builder<'a> {
    d: &'a Data<'a>,
    p: &'a Params,
    rng: SplitMix,
    tree: Tree,
    importance: Vec<f64>,
}

impl Builder<'_> {
    fn leaf(&mut self, rows: &[usize]) -> u32 {
        let c = self.d.classes;
        let mut counts = vec![0u64; c];
        for &r in rows {
            counts[self.d.y[r] as usize] += 1;
        }
        let k = (self.tree.value.len() / c) as u32;
        self.tree.value.extend(counts.iter().map(|&n| n as f64 / rows.len().max(1) as f64));
        let i = self.tree.feature.len() as u32;
        self.tree.feature.push(-1);
        self.tree.threshold.push(0.0);
        self.tree.left.push(0);
        self.tree.right.push(0);
        self.tree.leaf.push(k);
        i
    }

    /// The best split of `rows` among features drawn at random: (feature, threshold, rows that
    /// go left, impurity decrease weighted by rows).
    fn best_split(&mut self, rows: &mut [usize]) -> Option<(usize, f64, usize, f64)> {
        let (d, c) = (self.d, self.d.classes);
        let n = rows.len();
        let mut total = vec![0u64; c];
        for &r in rows.iter() {
            total[d.y[r] as usize] += 1;
        }
        let parent = gini(&total, n as u64);
        if parent == 0.0 {
            return None;
        }
        // Features in a random order; the first max_features of them are tried (scikit-learn
        // also skips features constant in the node without counting them; so does this).
        let mut order: Vec<usize> = (0..d.features).collect();
        let mut best: Option<(usize, f64, usize, f64)> = None;
        let mut tried = 0;
        let min_leaf = self.p.min_samples_leaf.max(1);
        let mut keyed: Vec<(f64, u32)> = Vec::with_capacity(n);
        for k in 0..d.features {
            if tried >= self.p.max_features {
                break;
            }
            let j = k + below(&mut self.rng, d.features - k);
            order.swap(k, j);
            let f = order[k];
            keyed.clear();
            keyed.extend(rows.iter().map(|&r| (d.at(r, f), d.y[r])));
            keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if keyed[0].0 == keyed[n - 1].0 {
                continue;
            }
            tried += 1;
            let mut left = vec![0u64; c];
            for i in 1..n {
                left[keyed[i - 1].1 as usize] += 1;
                if keyed[i].0 == keyed[i - 1].0 || i < min_leaf || n - i < min_leaf {
                    continue;
                }
                // n·gini = n − Σ count²/n on each side.
                let (mut sl, mut sr) = (0u64, 0u64);
                for (t, l) in total.iter().zip(&left) {
                    sl += l * l;
                    sr += (t - l) * (t - l);
                }
                let (nl, nr) = (i as f64, (n - i) as f64);
                let decrease = n as f64 * parent - (nl - sl as f64 / nl) - (nr - sr as f64 / nr);
                if best.is_none_or(|b| decrease > b.3 + 1e-12 * n as f64) {
                    let (a, b) = (keyed[i - 1].0, keyed[i].0);
                    let mut t = a / 2.0 + b / 2.0;
                    if t >= b || t < a {
                        t = a;
                    }
                    best = Some((f, t, i, decrease));
                }
            }
        }
        let (f, t, _, dec) = best?;
        // Partition rows: those at or below the threshold first (stable, so the order of rows
        // within each side is the order they came in).
        let (mut lo, hi): (Vec<usize>, Vec<usize>) = rows.iter().partition(|&&r| d.at(r, f) <= t);
        let nl = lo.len();
        lo.extend(hi);
        rows.copy_from_slice(&lo);
        Some((f, t, nl, dec))
    }

    fn grow(&mut self, rows: &mut [usize], depth: usize) -> u32 {
        let deep_enough = self.p.max_depth.is_some_and(|m| depth >= m);
        if deep_enough || rows.len() < 2 * self.p.min_samples_leaf.max(1) {
            return self.leaf(rows);
        }
        let Some((f, t, nl, dec)) = self.best_split(rows) else {
            return self.leaf(rows);
        };
        self.importance[f] += dec;
        let i = self.tree.feature.len();
        self.tree.feature.push(f as i32);
        self.tree.threshold.push(t);
        self.tree.left.push(0);
        self.tree.right.push(0);
        self.tree.leaf.push(0);
        let (l, r) = rows.split_at_mut(nl);
        let li = self.grow(l, depth + 1);
        let ri = self.grow(r, depth + 1);
        self.tree.left[i] = li;
        self.tree.right[i] = ri;
        i as u32
    }
}

/// Grows a forest on `d` (trees in parallel; the same result for any thread count).
pub fn fit(d: &Data, p: &Params) -> Forest {
    let n = d.y.len();
    let grown: Vec<(Tree, Vec<f64>)> = (0..p.trees)
        .into_par_iter()
        .map(|t| {
            let mut rng = tree_rng(p.seed, t);
            let mut rows: Vec<usize> = (0..n).map(|_| below(&mut rng, n)).collect();
            rows.sort_unstable();
            let empty = Tree { feature: vec![], threshold: vec![], left: vec![], right: vec![], leaf: vec![], value: vec![] };
            let mut b = Builder { d, p, rng, tree: empty, importance: vec![0.0; d.features] };
            b.grow(&mut rows, 0);
            (b.tree, b.importance)
        })
        .collect();
    let mut importances = vec![0.0; d.features];
    for (_, imp) in &grown {
        let s: f64 = imp.iter().sum();
        if s > 0.0 {
            importances.iter_mut().zip(imp).for_each(|(a, b)| *a += b / s);
        }
    }
    let s: f64 = importances.iter().sum();
    if s > 0.0 {
        importances.iter_mut().for_each(|a| *a /= s);
    }
    Forest { classes: d.classes, features: d.features, trees: grown.into_iter().map(|(t, _)| t).collect(), importances }
}

impl Forest {
    /// Class probabilities of one row (the mean of the trees' leaf fractions).
    pub fn proba(&self, row: &[f64]) -> Vec<f64> {
        let c = self.classes;
        let mut p = vec![0.0; c];
        for t in &self.trees {
            let mut i = 0usize;
            while t.feature[i] >= 0 {
                i = if row[t.feature[i] as usize] <= t.threshold[i] { t.left[i] } else { t.right[i] } as usize;
            }
            let k = t.leaf[i] as usize;
            p.iter_mut().zip(&t.value[k * c..(k + 1) * c]).for_each(|(a, b)| *a += b);
        }
        let n = self.trees.len().max(1) as f64;
        p.iter_mut().for_each(|a| *a /= n);
        p
    }

    /// Probabilities of every row of `x` (row-major), in parallel.
    pub fn proba_all(&self, x: &[f64]) -> Vec<Vec<f64>> {
        x.par_chunks(self.features.max(1)).map(|r| self.proba(r)).collect()
    }
}

/// The most probable class (ties: the lower index, as scikit-learn's argmax).
pub fn argmax(p: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xor(n: usize) -> (Vec<f64>, Vec<u32>) {
        let mut g = SplitMix::new(7);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let (a, b) = (g.unit(), g.unit());
            x.extend([a, b, g.unit()]);
            y.push(((a > 0.5) ^ (b > 0.5)) as u32);
        }
        (x, y)
    }

    #[test]
    fn learns_xor_and_ignores_the_noise_feature() {
        let (x, y) = xor(400);
        let d = Data { x: &x, features: 3, y: &y, classes: 2 };
        let f = fit(&d, &Params { trees: 30, max_depth: None, min_samples_leaf: 1, max_features: 2, seed: 3 });
        let (tx, ty) = xor(200);
        let right = tx.chunks(3).zip(&ty).filter(|(r, y)| argmax(&f.proba(r)) == **y).count();
        assert!(right >= 180, "{right}/200");
        assert!(f.importances[2] < f.importances[0] && f.importances[2] < f.importances[1], "{:?}", f.importances);
        assert!((f.importances.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_same_seed_gives_the_same_forest_whatever_the_threads() {
        let (x, y) = xor(300);
        let d = Data { x: &x, features: 3, y: &y, classes: 2 };
        let p = Params { trees: 16, max_depth: Some(6), min_samples_leaf: 2, max_features: 1, seed: 11 };
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| fit(&d, &p));
        let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(|| fit(&d, &p));
        assert_eq!(one, four);
        let other = fit(&d, &Params { seed: 12, ..p.clone() });
        assert_ne!(one, other);
    }

    #[test]
    fn depth_and_leaf_size_are_respected() {
        let (x, y) = xor(300);
        let d = Data { x: &x, features: 3, y: &y, classes: 2 };
        let f = fit(&d, &Params { trees: 5, max_depth: Some(2), min_samples_leaf: 40, max_features: 3, seed: 1 });
        for t in &f.trees {
            // At most 3 splits and 4 leaves at depth 2.
            assert!(t.feature.iter().filter(|&&v| v >= 0).count() <= 3);
            assert!(t.leaf.len() <= 7);
        }
    }
}
