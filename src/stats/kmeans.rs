//! k-means clustering (Lloyd's algorithm with greedy k-means++ seeding) of standardised rows.
//!
//! The rules follow scikit-learn's `KMeans(algorithm="lloyd")` so its results can be checked
//! against it from the same starting centres: stop when no label changes or when the summed
//! squared centre shift falls to `tol` × the mean feature variance; after a tolerance stop, one
//! more assignment makes the labels agree with the final centres. Ties go to the lower cluster.
//! Differences: an emptied cluster keeps its previous centre (scikit-learn moves it to a far
//! point), and seeding draws from tessera's own seeded generator (SplitMix64), so the same seed
//! gives the same clusters on every machine and thread count, but not scikit-learn's clusters.
//! Sums run over fixed row chunks merged in chunk order.

use rayon::prelude::*;

use super::pca::{CHUNK, Matrix};

/// A clustering.
#[derive(Debug, Clone)]
pub struct KMeans {
    pub k: usize,
    /// k × p centres, row-major, in standardised units.
    pub centers: Vec<f64>,
    /// Cluster of each row, 0-based.
    pub labels: Vec<u32>,
    pub inertia: f64,
    pub iterations: usize,
    /// Mean wall time of one Lloyd iteration (assignment + update), seconds.
    pub seconds_per_iteration: f64,
    pub converged: bool,
}

/// SplitMix64: a small, well-mixed seeded generator.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The nearest centre and its squared distance (ties: the lower index).
fn nearest(x: &[f64], centers: &[f64], p: usize) -> (u32, f64) {
    let mut best = (0u32, f64::INFINITY);
    for (c, ctr) in centers.chunks_exact(p).enumerate() {
        let d = dist2(x, ctr);
        if d < best.1 {
            best = (c as u32, d);
        }
    }
    best
}

/// Greedy k-means++ seeding: each new centre is the best (lowest total squared distance) of
/// 2 + ⌊ln k⌋ candidates drawn with probability proportional to the squared distance.
pub fn plus_plus(z: &Matrix, k: usize, seed: u64) -> Vec<f64> {
    let (n, p) = (z.rows, z.cols);
    let mut rng = SplitMix::new(seed);
    let mut centers = Vec::with_capacity(k * p);
    let first = (rng.next_u64() % n as u64) as usize;
    centers.extend_from_slice(z.row(first));
    let mut closest: Vec<f64> = (0..n).into_par_iter().map(|i| dist2(z.row(i), z.row(first))).collect();
    let trials = 2 + (k as f64).ln().floor() as usize;
    for _ in 1..k {
        let mut cum = Vec::with_capacity(n);
        let mut s = 0.0;
        for d in &closest {
            s += d;
            cum.push(s);
        }
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let r = rng.unit() * s;
            let idx = cum.partition_point(|&c| c <= r).min(n - 1);
            let cand = z.row(idx);
            let new: Vec<f64> = closest.par_iter().enumerate().map(|(i, &d)| d.min(dist2(z.row(i), cand))).collect();
            let pot: f64 = new.chunks(CHUNK).map(|c| c.iter().sum::<f64>()).sum();
            if best.as_ref().is_none_or(|b| pot < b.0) {
                best = Some((pot, idx, new));
            }
        }
        let (_, idx, new) = best.expect("at least two trials");
        centers.extend_from_slice(z.row(idx));
        closest = new;
    }
    centers
}

struct Part {
    sums: Vec<f64>,
    counts: Vec<u64>,
    changed: u64,
    inertia: f64,
}

/// One assignment (and the sums for the update) over fixed chunks, merged in order.
fn assign(z: &Matrix, centers: &[f64], k: usize, labels: &mut [u32]) -> Part {
    let p = z.cols;
    let parts: Vec<Part> = labels
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, lab)| {
            let mut part = Part { sums: vec![0.0; k * p], counts: vec![0; k], changed: 0, inertia: 0.0 };
            for (o, l) in lab.iter_mut().enumerate() {
                let x = z.row(c * CHUNK + o);
                let (best, d) = nearest(x, centers, p);
                if *l != best {
                    part.changed += 1;
                    *l = best;
                }
                part.inertia += d;
                part.counts[best as usize] += 1;
                for (s, v) in part.sums[best as usize * p..(best as usize + 1) * p].iter_mut().zip(x) {
                    *s += v;
                }
            }
            part
        })
        .collect();
    let mut total = Part { sums: vec![0.0; k * p], counts: vec![0; k], changed: 0, inertia: 0.0 };
    for part in parts {
        for (t, s) in total.sums.iter_mut().zip(part.sums) {
            *t += s;
        }
        for (t, c) in total.counts.iter_mut().zip(part.counts) {
            *t += c;
        }
        total.changed += part.changed;
        total.inertia += part.inertia;
    }
    total
}

/// Lloyd iterations from `init` (k × p centres).
pub fn lloyd(z: &Matrix, init: Vec<f64>, max_iter: usize, tol: f64) -> KMeans {
    let p = z.cols;
    let k = init.len() / p.max(1);
    // scikit-learn scales the tolerance by the mean variance of the features.
    let var: f64 = if z.rows > 0 && p > 0 {
        let mut s = 0.0;
        for j in 0..p {
            let m = (0..z.rows).map(|i| z.data[i * p + j]).sum::<f64>() / z.rows as f64;
            s += (0..z.rows).map(|i| (z.data[i * p + j] - m).powi(2)).sum::<f64>() / z.rows as f64;
        }
        s / p as f64
    } else {
        0.0
    };
    let tol = tol * var;
    let mut centers = init;
    let mut labels = vec![u32::MAX; z.rows];
    let mut iterations = 0;
    let mut strict = false;
    let t0 = std::time::Instant::now();
    while iterations < max_iter {
        iterations += 1;
        let part = assign(z, &centers, k, &mut labels);
        let mut shift = 0.0;
        for c in 0..k {
            if part.counts[c] == 0 {
                continue;
            }
            for j in 0..p {
                let new = part.sums[c * p + j] / part.counts[c] as f64;
                shift += (new - centers[c * p + j]).powi(2);
                centers[c * p + j] = new;
            }
        }
        if part.changed == 0 {
            strict = true;
            break;
        }
        if shift <= tol {
            break;
        }
    }
    let seconds_per_iteration = t0.elapsed().as_secs_f64() / iterations.max(1) as f64;
    let last = assign(z, &centers, k, &mut labels);
    let converged = strict || iterations < max_iter;
    KMeans { k, centers, labels, inertia: last.inertia, iterations, seconds_per_iteration, converged }
}

/// k-means++ seeding, then Lloyd (at most 300 iterations, tolerance 1e-4, as scikit-learn).
pub fn fit(z: &Matrix, k: usize, seed: u64) -> KMeans {
    if z.rows == 0 || k == 0 {
        return KMeans {
            k,
            centers: vec![f64::NAN; k * z.cols],
            labels: Vec::new(),
            inertia: 0.0,
            iterations: 0,
            seconds_per_iteration: 0.0,
            converged: true,
        };
    }
    let init = plus_plus(z, k.min(z.rows), seed);
    lloyd(z, init, 300, 1e-4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Matrix {
        let mut rng = SplitMix::new(7);
        let mut data = Vec::new();
        for c in [[0.0, 0.0], [5.0, 5.0], [0.0, 8.0]] {
            for _ in 0..100 {
                data.push(c[0] + rng.unit() - 0.5);
                data.push(c[1] + rng.unit() - 0.5);
            }
        }
        Matrix { rows: 300, cols: 2, data }
    }

    #[test]
    fn separates_three_blobs_whatever_the_threads() {
        let z = blobs();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| fit(&z, 3, 1));
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| fit(&z, 3, 1));
        assert_eq!(one.labels, three.labels);
        assert_eq!(one.centers, three.centers);
        for b in 0..3 {
            let l = one.labels[b * 100];
            assert!(one.labels[b * 100..(b + 1) * 100].iter().all(|&x| x == l));
        }
        assert!(one.converged);
        assert!(one.inertia < 300.0 * 0.2);
    }

    #[test]
    fn generator_is_seeded() {
        let (mut a, mut b) = (SplitMix::new(3), SplitMix::new(3));
        assert_eq!((0..5).map(|_| a.next_u64()).collect::<Vec<_>>(), (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert!((0..1000).map(|_| a.unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
