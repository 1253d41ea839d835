//! Standardisation and principal component analysis of phenotype columns.
//!
//! Rows with a NaN in any chosen phenotype are left out (their scores are NaN). Columns are
//! standardised as scikit-learn's `StandardScaler` does (mean, population sd; a constant column
//! keeps scale 1, i.e. becomes all zeros). PCA diagonalises the covariance (ddof = 1) of the
//! standardised columns with cyclic Jacobi rotations; components are sorted by explained
//! variance and signed so that each one's largest-magnitude loading is positive (scikit-learn's
//! convention since 1.5). Sums run over fixed row chunks merged in chunk order, so results do
//! not depend on the thread count.

use rayon::prelude::*;

/// Rows per partial sum: fixed, so sums never depend on the number of threads.
pub const CHUNK: usize = 1 << 15;

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Standardised phenotypes: the complete rows, with the scaling used.
#[derive(Debug, Clone)]
pub struct Standardised {
    pub z: Matrix,
    /// Index (in the input) of each row of `z`.
    pub kept: Vec<usize>,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    /// Columns with zero variance (scale 1, all zeros after centring).
    pub constant: Vec<bool>,
}

/// Column sums over chunks, merged in chunk order.
fn column_sums(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
    let starts: Vec<usize> = (0..rows).step_by(CHUNK).collect();
    let parts: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&s| {
            let mut acc = vec![0.0; cols];
            for i in s..(s + CHUNK).min(rows) {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a += f(i, j);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0; cols];
    for p in parts {
        for (t, x) in total.iter_mut().zip(p) {
            *t += x;
        }
    }
    total
}

/// Standardises the columns (each of the same length) over the rows where all are finite.
pub fn standardise(columns: &[Vec<f64>]) -> Standardised {
    let p = columns.len();
    let n_all = columns.first().map(Vec::len).unwrap_or(0);
    let kept: Vec<usize> = (0..n_all).filter(|&i| columns.iter().all(|c| c[i].is_finite())).collect();
    let n = kept.len();
    let mut data = vec![0.0; n * p];
    data.par_chunks_mut(p.max(1)).zip(kept.par_iter()).for_each(|(row, &i)| {
        for (j, c) in columns.iter().enumerate() {
            row[j] = c[i];
        }
    });
    let mut z = Matrix { rows: n, cols: p, data };
    let sums = column_sums(n, p, |i, j| z.data[i * p + j]);
    let mean: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
    let ss = column_sums(n, p, |i, j| {
        let d = z.data[i * p + j] - mean[j];
        d * d
    });
    let sd: Vec<f64> = ss.iter().map(|s| (s / n as f64).sqrt()).collect();
    let constant: Vec<bool> = sd.iter().zip(&mean).map(|(s, m)| s.is_nan() || *s <= 10.0 * f64::EPSILON * m.abs().max(1.0)).collect();
    let scale: Vec<f64> = sd.iter().zip(&constant).map(|(s, c)| if *c { 1.0 } else { *s }).collect();
    z.data.par_chunks_mut(p.max(1)).for_each(|row| {
        for j in 0..p {
            row[j] = (row[j] - mean[j]) / scale[j];
        }
    });
    Standardised { z, kept, mean, scale, constant }
}

/// Eigen-decomposition of a symmetric matrix (row-major p×p) by cyclic Jacobi rotations:
/// eigenvalues and eigenvectors (as rows), unsorted.
pub fn jacobi_eigen(a: &[f64], p: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; p * p];
    for i in 0..p {
        v[i * p + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..p).flat_map(|i| (0..p).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * p + j].powi(2)).sum();
        if off.sqrt() <= 1e-15 * norm || norm == 0.0 {
            break;
        }
        for k in 0..p {
            for l in k + 1..p {
                let akl = a[k * p + l];
                if akl == 0.0 {
                    continue;
                }
                let theta = (a[l * p + l] - a[k * p + k]) / (2.0 * akl);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for i in 0..p {
                    let (aik, ail) = (a[i * p + k], a[i * p + l]);
                    a[i * p + k] = c * aik - s * ail;
                    a[i * p + l] = s * aik + c * ail;
                }
                for j in 0..p {
                    let (akj, alj) = (a[k * p + j], a[l * p + j]);
                    a[k * p + j] = c * akj - s * alj;
                    a[l * p + j] = s * akj + c * alj;
                }
                for i in 0..p {
                    let (vik, vil) = (v[i * p + k], v[i * p + l]);
                    v[i * p + k] = c * vik - s * vil;
                    v[i * p + l] = s * vik + c * vil;
                }
            }
        }
    }
    let values = (0..p).map(|i| a[i * p + i]).collect();
    let vectors = (0..p).map(|j| (0..p).map(|i| v[i * p + j]).collect()).collect();
    (values, vectors)
}

/// A fitted PCA.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Variance along each kept component (ddof = 1), descending.
    pub explained_variance: Vec<f64>,
    /// Its share of the total variance of all standardised phenotypes.
    pub explained_variance_ratio: Vec<f64>,
    /// Loadings: one row per component, one value per phenotype.
    pub components: Vec<Vec<f64>>,
}

/// Fits `n` components to standardised rows.
pub fn fit(z: &Matrix, n: usize) -> Pca {
    let p = z.cols;
    let rows = z.rows;
    // Centre again (standardised columns have mean ≈ 0 up to rounding), as PCA does.
    let mean: Vec<f64> = column_sums(rows, p, |i, j| z.data[i * p + j]).iter().map(|s| s / rows as f64).collect();
    let starts: Vec<usize> = (0..rows).step_by(CHUNK).collect();
    let parts: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&s| {
            let mut acc = vec![0.0; p * p];
            let mut d = vec![0.0; p];
            for i in s..(s + CHUNK).min(rows) {
                for (j, x) in z.row(i).iter().enumerate() {
                    d[j] = x - mean[j];
                }
                for a in 0..p {
                    for b in a..p {
                        acc[a * p + b] += d[a] * d[b];
                    }
                }
            }
            acc
        })
        .collect();
    let mut cov = vec![0.0; p * p];
    for part in parts {
        for (c, x) in cov.iter_mut().zip(part) {
            *c += x;
        }
    }
    let denom = (rows as f64 - 1.0).max(1.0);
    for a in 0..p {
        for b in a..p {
            cov[a * p + b] /= denom;
            cov[b * p + a] = cov[a * p + b];
        }
    }
    let (values, vectors) = jacobi_eigen(&cov, p);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]).then(i.cmp(&j)));
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let n = n.min(p);
    let mut components = Vec::new();
    let mut explained = Vec::new();
    for &i in order.iter().take(n) {
        let mut c = vectors[i].clone();
        let big = c.iter().enumerate().fold(0, |b, (j, x)| if x.abs() > c[b].abs() { j } else { b });
        if c[big] < 0.0 {
            c.iter_mut().for_each(|x| *x = -*x);
        }
        components.push(c);
        explained.push(values[i].max(0.0));
    }
    let ratio = explained.iter().map(|v| if total > 0.0 { v / total } else { f64::NAN }).collect();
    Pca { explained_variance: explained, explained_variance_ratio: ratio, components }
}

impl Pca {
    /// Component scores of standardised rows: one column per component.
    pub fn scores(&self, z: &Matrix) -> Vec<Vec<f64>> {
        self.components.par_iter().map(|c| (0..z.rows).map(|i| z.row(i).iter().zip(c).map(|(x, w)| x * w).sum()).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises() {
        let a = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (vals, vecs) = jacobi_eigen(&a, 3);
        for (l, v) in vals.iter().zip(&vecs) {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * v[j]).sum();
                assert!((av - l * v[i]).abs() < 1e-12);
            }
        }
        assert!((vals.iter().sum::<f64>() - 12.0).abs() < 1e-12);
    }

    #[test]
    fn standardise_skips_incomplete_rows_and_keeps_constants_at_zero() {
        let cols = vec![vec![1.0, 2.0, f64::NAN, 3.0], vec![7.0, 7.0, 1.0, 7.0]];
        let s = standardise(&cols);
        assert_eq!(s.kept, vec![0, 1, 3]);
        assert_eq!(s.constant, vec![false, true]);
        assert!((s.mean[0] - 2.0).abs() < 1e-15);
        assert!(s.z.data.iter().skip(1).step_by(2).all(|&x| x == 0.0));
        let sd = (2.0f64 / 3.0).sqrt();
        assert!((s.z.data[0] + 1.0 / sd).abs() < 1e-12);
    }

    #[test]
    fn correlated_pair_has_one_dominant_component() {
        let x: Vec<f64> = (0..200).map(|i| (i as f64 * 0.37).sin()).collect();
        let y: Vec<f64> = x.iter().enumerate().map(|(i, v)| 2.0 * v + 0.01 * ((i * 7 % 13) as f64)).collect();
        let s = standardise(&[x, y]);
        let p = fit(&s.z, 2);
        assert!(p.explained_variance_ratio[0] > 0.99);
        assert!((p.explained_variance_ratio.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Loadings ≈ (1, 1)/√2, positive by the sign convention.
        assert!((p.components[0][0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-3 && p.components[0][1] > 0.0);
    }
}
