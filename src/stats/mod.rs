//! Phenotype statistics (SPEC §7): within/between coefficients of variation with the intraclass
//! correlation and the one-way ANOVA per phenotype, PCA and k-means on standardised phenotypes.
//!
//! Within/between is a reduction: a table (or a file of many) is cut into runs of consecutive
//! rows of one group; each run's count, mean and sum of squared deviations are computed in two
//! passes and merged into its group's in row order (Chan et al.'s pairwise update). The result
//! depends only on the rows and their order — never on thread count or on how many files
//! carried them when every file holds whole groups — and needs memory per group, not per row,
//! so thousands of per-sample files stream through. NaN values are left out of every statistic;
//! rows whose group value is empty or NaN belong to no group.
//!
//! Callers: `exec` (the `stats:` block of a run and `tessera merge`) and `cli` (`tessera
//! stats` on any CSV/Parquet tables). Tables come from [`crate::table`].

pub mod analysis;
pub mod dist;
pub mod kmeans;
pub mod pca;

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::table::{Column, Table};

/// Count, mean and sum of squared deviations from the mean of some values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    /// Two passes over the non-NaN values of `v`.
    pub fn of(v: impl Iterator<Item = f64> + Clone) -> Moments {
        let (mut n, mut s) = (0u64, 0.0);
        for x in v.clone().filter(|x| !x.is_nan()) {
            n += 1;
            s += x;
        }
        if n == 0 {
            return Moments::default();
        }
        let mean = s / n as f64;
        let m2 = v.filter(|x| !x.is_nan()).map(|x| (x - mean) * (x - mean)).sum();
        Moments { n, mean, m2 }
    }
    /// Adds `o`'s values (which come after this one's).
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += o.m2 + delta * delta * na * nb / n;
        self.n += o.n;
    }
    /// Standard deviation with ddof = 1 (NaN below two values).
    pub fn sd(&self) -> f64 {
        if self.n > 1 { (self.m2 / (self.n - 1) as f64).sqrt() } else { f64::NAN }
    }
}

/// The runs of one table: (group, moments of each phenotype over the run), in row order.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    runs: Vec<(String, Vec<Moments>)>,
}

/// Numeric values of a column as f64 (None for text and booleans).
pub fn numeric(c: &Column) -> Option<Vec<f64>> {
    match c {
        Column::U32(v) => Some(v.iter().map(|&x| x as f64).collect()),
        Column::U64(v) => Some(v.iter().map(|&x| x as f64).collect()),
        Column::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
        Column::F64(v) => Some(v.clone()),
        Column::Bool(_) | Column::Str(_) => None,
    }
}

/// The text of row `i` of a column (how group values are named).
pub fn cell(c: &Column, i: usize) -> String {
    match c {
        Column::Str(v) => v[i].clone(),
        Column::U32(v) => v[i].to_string(),
        Column::U64(v) => v[i].to_string(),
        Column::I64(v) => v[i].to_string(),
        Column::F64(v) => v[i].to_string(),
        Column::Bool(v) => v[i].to_string(),
    }
}

fn same_cell(c: &Column, i: usize, j: usize) -> bool {
    match c {
        Column::Str(v) => v[i] == v[j],
        Column::U32(v) => v[i] == v[j],
        Column::U64(v) => v[i] == v[j],
        Column::I64(v) => v[i] == v[j],
        Column::F64(v) => v[i].to_bits() == v[j].to_bits(),
        Column::Bool(v) => v[i] == v[j],
    }
}

/// Runs of equal values of the grouping column: (start, end) row ranges.
pub fn runs(c: &Column) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let n = c.len();
    let mut start = 0;
    for i in 1..=n {
        if i == n || !same_cell(c, i, start) {
            out.push((start, i));
            start = i;
        }
    }
    out
}

/// A grouping value that names no group.
fn no_group(name: &str) -> bool {
    name.is_empty() || name == "NaN"
}

/// The phenotypes of a table when none are named: every numeric column but the grouping
/// column, the labels (`label`; `label_a`, `label_b` of a contact table) and the bounding-box
/// corners (voxel indices, not phenotypes).
pub fn default_phenotypes(t: &Table, by: &str) -> Vec<String> {
    t.columns
        .iter()
        .filter(|(n, c, _)| {
            n != by && !matches!(n.as_str(), "label" | "label_a" | "label_b") && !n.starts_with("bbox_") && numeric(c).is_some()
        })
        .map(|(n, _, _)| n.clone())
        .collect()
}

fn missing_column(what: &str, name: &str, t: &Table, source: &str) -> String {
    let cols: Vec<&str> = t.names();
    let hint = crate::util::did_you_mean(name, cols.iter().copied()).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
    format!("{source}{what} `{name}` is not a column of the table{hint} (columns: {})", cols.join(", "))
}

/// The numeric columns `phenotypes` of `t` as f64, with errors naming the table.
pub fn phenotype_columns(t: &Table, phenotypes: &[String], source: &str) -> Result<Vec<Vec<f64>>, String> {
    phenotypes
        .iter()
        .map(|name| {
            let c = t.get(name).ok_or_else(|| missing_column("phenotype", name, t, source))?;
            numeric(c).ok_or_else(|| format!("{source}phenotype `{name}` is not numeric"))
        })
        .collect()
}

impl Partial {
    /// Reduces one table grouped by column `by`. `source` prefixes errors (e.g. a file name).
    pub fn of(t: &Table, by: &str, phenotypes: &[String], source: &str) -> Result<Partial, String> {
        let g = t.get(by).ok_or_else(|| missing_column("grouping column", by, t, source))?;
        let cols = phenotype_columns(t, phenotypes, source)?;
        let bounds: Vec<(usize, usize)> = runs(g).into_iter().filter(|&(s, _)| !no_group(&cell(g, s))).collect();
        let per_col: Vec<Vec<Moments>> =
            cols.par_iter().map(|v| bounds.iter().map(|&(s, e)| Moments::of(v[s..e].iter().copied())).collect()).collect();
        let runs = bounds.iter().enumerate().map(|(r, &(s, _))| (cell(g, s), per_col.iter().map(|m| m[r]).collect())).collect();
        Ok(Partial { runs })
    }
}

/// Per-group moments of each phenotype, merged from partials in order.
#[derive(Debug, Clone)]
pub struct Grouped {
    pub phenotypes: Vec<String>,
    pub groups: BTreeMap<String, Vec<Moments>>,
}

impl Grouped {
    pub fn new(phenotypes: Vec<String>) -> Grouped {
        Grouped { phenotypes, groups: BTreeMap::new() }
    }
    pub fn absorb(&mut self, p: Partial) {
        let k = self.phenotypes.len();
        for (g, ms) in p.runs {
            let acc = self.groups.entry(g).or_insert_with(|| vec![Moments::default(); k]);
            for (a, m) in acc.iter_mut().zip(&ms) {
                a.merge(m);
            }
        }
    }

    /// The within/between table: one row per phenotype (SPEC §7 columns, then `icc`,
    /// `anova_f`, `anova_p`, then the bootstrap's confidence limits of the three CV
    /// statistics: `within_cv_pct_lo`, `_hi`, `between_cv_pct_lo`, `_hi`, `ratio_pct_lo`,
    /// `_hi`; NaN when `boot` has no replicates).
    pub fn table(&self, boot: &Bootstrap) -> Table {
        let rows: Vec<(String, Summary, [f64; 6])> = self
            .phenotypes
            .par_iter()
            .enumerate()
            .map(|(j, name)| {
                let ms: Vec<Moments> = self.groups.values().map(|v| v[j]).collect();
                let present: Vec<Moments> = ms.iter().copied().filter(|m| m.n > 0).collect();
                (name.clone(), summarise(&present), boot.limits(&ms))
            })
            .collect();
        let col = |f: fn(&Summary) -> f64| Column::F64(rows.iter().map(|(_, s, _)| f(s)).collect());
        let lim = |k: usize| Column::F64(rows.iter().map(|(_, _, l)| l[k]).collect());
        let mut t = Table::default();
        t.push("phenotype", Column::Str(rows.iter().map(|(n, _, _)| n.clone()).collect()), None);
        t.push("n_groups", Column::U64(rows.iter().map(|(_, s, _)| s.n_groups).collect()), None);
        t.push("n_objects", Column::U64(rows.iter().map(|(_, s, _)| s.n_objects).collect()), None);
        t.push("within_cv_pct", col(|s| s.within), None);
        t.push("between_cv_pct", col(|s| s.between), None);
        t.push("ratio_pct", col(|s| s.ratio), None);
        t.push("icc", col(|s| s.icc), None);
        t.push("anova_f", col(|s| s.f), None);
        t.push("anova_p", col(|s| s.p), None);
        for (k, name) in LIMIT_COLUMNS.iter().enumerate() {
            t.push(name, lim(k), None);
        }
        t
    }
}

/// The confidence limit columns of the within/between table, in order.
pub const LIMIT_COLUMNS: [&str; 6] =
    ["within_cv_pct_lo", "within_cv_pct_hi", "between_cv_pct_lo", "between_cv_pct_hi", "ratio_pct_lo", "ratio_pct_hi"];

/// Confidence intervals of the within/between statistics by a seeded cluster bootstrap: each
/// replicate draws as many groups as there are, with replacement, keeping each drawn group's
/// objects as they are, and computes `within_cv_pct`, `between_cv_pct` and `ratio_pct` of the
/// drawn groups; the limits are the replicates' percentiles at (1 − level)/2 and (1 + level)/2
/// (linear interpolation between order statistics, numpy's default). Resampling the groups
/// alone is Davison & Hinkley's (1997, §3.8) recommendation for two-level data: a drawn group
/// brings its own sampling noise with it, while also resampling objects inside the groups
/// counts that noise twice. Every phenotype sees the same draws (one generator from `seed`,
/// restarted per phenotype), so the limits depend only on the groups' values, their order
/// (sorted by name) and the seed — never on threads or on how the rows were split in files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Replicates (0: no intervals).
    pub replicates: usize,
    /// Confidence level, in (0, 1).
    pub level: f64,
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap { replicates: 1000, level: 0.95, seed: 1 }
    }
}

/// The CV statistics of some groups' moments (groups without values are skipped): within,
/// between, ratio; as [`summarise`] computes them.
fn cv_statistics(ms: impl Iterator<Item = Moments> + Clone) -> [f64; 3] {
    let (mut cv_sum, mut cv_n) = (0.0, 0u64);
    for m in ms.clone().filter(|m| m.n > 1) {
        cv_sum += 100.0 * m.sd() / m.mean.abs();
        cv_n += 1;
    }
    let within = if cv_n == 0 { f64::NAN } else { cv_sum / cv_n as f64 };
    let present = ms.filter(|m| m.n > 0);
    let between = if present.clone().nth(1).is_some() {
        let means = Moments::of(present.map(|m| m.mean));
        100.0 * means.sd() / means.mean.abs()
    } else {
        f64::NAN
    };
    [within, between, 100.0 * within / between]
}

/// The `q`-quantile of sorted values (linear interpolation, numpy's default), NaN when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    let (a, b) = (sorted[lo], sorted[hi]);
    if a == b { a } else { a + (h - lo as f64) * (b - a) }
}

impl Bootstrap {
    /// Limits (lo, hi) of within, between and ratio over the groups `ms` (one per group, in
    /// group order, including groups without values of this phenotype: every phenotype draws
    /// from the same list). NaN where fewer than two groups have values, or without replicates.
    pub fn limits(&self, ms: &[Moments]) -> [f64; 6] {
        let k = ms.len();
        if self.replicates == 0 || ms.iter().filter(|m| m.n > 0).count() < 2 {
            return [f64::NAN; 6];
        }
        let mut rng = kmeans::SplitMix::new(self.seed);
        let mut draws: [Vec<f64>; 3] = std::array::from_fn(|_| Vec::with_capacity(self.replicates));
        let mut picked = vec![Moments::default(); k];
        for _ in 0..self.replicates {
            for p in picked.iter_mut() {
                // Lemire's multiply-shift: an index in 0..k from 64 random bits.
                *p = ms[((rng.next_u64() as u128 * k as u128) >> 64) as usize];
            }
            for (d, v) in draws.iter_mut().zip(cv_statistics(picked.iter().copied())) {
                if !v.is_nan() {
                    d.push(v);
                }
            }
        }
        let (qlo, qhi) = ((1.0 - self.level) / 2.0, (1.0 + self.level) / 2.0);
        let mut out = [f64::NAN; 6];
        for (s, d) in draws.iter_mut().enumerate() {
            d.sort_unstable_by(f64::total_cmp);
            // A statistic undefined in most replicates (all drawn groups alike) has no interval.
            if d.len() * 2 > self.replicates {
                out[2 * s] = quantile(d, qlo);
                out[2 * s + 1] = quantile(d, qhi);
            }
        }
        out
    }
}

/// One phenotype's statistics over its groups.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n_groups: u64,
    pub n_objects: u64,
    pub within: f64,
    pub between: f64,
    pub ratio: f64,
    pub icc: f64,
    pub f: f64,
    pub p: f64,
}

/// Statistics from the groups' moments (groups with at least one value, in sorted order).
pub fn summarise(ms: &[Moments]) -> Summary {
    let k = ms.len();
    let n: u64 = ms.iter().map(|m| m.n).sum();
    let cvs: Vec<f64> = ms.iter().filter(|m| m.n > 1).map(|m| 100.0 * m.sd() / m.mean.abs()).collect();
    let within = if cvs.is_empty() { f64::NAN } else { cvs.iter().sum::<f64>() / cvs.len() as f64 };
    let between = if k > 1 {
        let means = Moments::of(ms.iter().map(|m| m.mean));
        100.0 * means.sd() / means.mean.abs()
    } else {
        f64::NAN
    };
    // One-way ANOVA and ICC(1) from the between- and within-group sums of squares.
    let (nf, kf) = (n as f64, k as f64);
    let (mut f, mut p, mut icc) = (f64::NAN, f64::NAN, f64::NAN);
    if k > 1 && n > k as u64 {
        let grand = ms.iter().map(|m| m.n as f64 * m.mean).sum::<f64>() / nf;
        let ssb: f64 = ms.iter().map(|m| m.n as f64 * (m.mean - grand) * (m.mean - grand)).sum();
        let ssw: f64 = ms.iter().map(|m| m.m2).sum();
        let (df1, df2) = (kf - 1.0, nf - kf);
        let (msb, msw) = (ssb / df1, ssw / df2);
        f = msb / msw;
        p = dist::f_sf(f, df1, df2);
        let n0 = (nf - ms.iter().map(|m| (m.n as f64) * (m.n as f64)).sum::<f64>() / nf) / df1;
        icc = (msb - msw) / (msb + (n0 - 1.0) * msw);
    }
    Summary { n_groups: k as u64, n_objects: n, within, between, ratio: 100.0 * within / between, icc, f, p }
}

/// Computes the within/between table from tables that hold the grouping column `by` (per-sample
/// tables in manifest order, or any tables). Without `phenotypes`, every numeric column of the
/// first table but `by`, `label` and `bbox_*` is one. Errors name a missing column.
pub fn within_between(tables: &[&Table], by: &str, phenotypes: Option<&[String]>) -> Result<Table, String> {
    within_between_with(tables, by, phenotypes, &Bootstrap::default())
}

/// [`within_between`] with the bootstrap's settings.
pub fn within_between_with(tables: &[&Table], by: &str, phenotypes: Option<&[String]>, boot: &Bootstrap) -> Result<Table, String> {
    let names: Vec<String> = match phenotypes {
        Some(p) => p.to_vec(),
        None => tables.first().map(|t| default_phenotypes(t, by)).unwrap_or_default(),
    };
    let mut g = Grouped::new(names);
    for t in tables {
        g.absorb(Partial::of(t, by, &g.phenotypes, "")?);
    }
    Ok(g.table(boot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, v: &[f64]) -> Table {
        let mut t = Table::default();
        t.push("sample", Column::Str(vec![name.into(); v.len()]), None);
        t.push("label", Column::U32((1..=v.len() as u32).collect()), None);
        t.push("volume", Column::F64(v.to_vec()), None);
        t
    }

    #[test]
    fn two_groups_by_hand() {
        let (a, b) = (sample("a", &[1.0, 2.0, 3.0]), sample("b", &[4.0, 6.0]));
        let t = within_between(&[&a, &b], "sample", None).unwrap();
        assert_eq!(t.get("phenotype"), Some(&Column::Str(vec!["volume".into()])));
        // a: mean 2, sd 1 → 50 %; b: mean 5, sd √2 → 28.28 %; within = 39.14 %.
        let w = t.f64("within_cv_pct")[0];
        assert!((w - (50.0 + 100.0 * 2f64.sqrt() / 5.0) / 2.0).abs() < 1e-12);
        // group means 2 and 5: mean 3.5, sd 2.1213 → 60.61 %.
        let b2 = t.f64("between_cv_pct")[0];
        assert!((b2 - 100.0 * (4.5f64).sqrt() / 3.5).abs() < 1e-12);
        assert_eq!(t.u64("n_objects"), vec![5]);
        // ANOVA: grand mean 3.2; SSB = 3·1.44 + 2·3.24 = 10.8; SSW = 2 + 2 = 4; F = 10.8 / (4/3).
        assert!((t.f64("anova_f")[0] - 8.1).abs() < 1e-12);
        // n0 = (5 − 13/5)/1 = 2.4; ICC = (10.8 − 4/3)/(10.8 + 1.4·4/3).
        let icc = (10.8 - 4.0 / 3.0) / (10.8 + 1.4 * 4.0 / 3.0);
        assert!((t.f64("icc")[0] - icc).abs() < 1e-12);
        // p from F(1, 3) at 8.1: scipy.stats.f(1, 3).sf(8.1).
        assert!((t.f64("anova_p")[0] - 0.065_320_710_061_980_08).abs() < 1e-12, "{}", t.f64("anova_p")[0]);
        assert!(within_between(&[&a], "group", None).unwrap_err().contains("grouping column `group`"));
        assert!(within_between(&[&a], "sample", Some(&["volum".into()])).unwrap_err().contains("did you mean 'volume'"));
    }

    #[test]
    fn order_of_files_carrying_whole_groups_does_not_matter_within_a_group() {
        // The same rows as one table or as one table per group give identical bits.
        let (a, b) = (sample("a", &[1.5, 2.25, 3.0, f64::NAN]), sample("b", &[4.0, 6.125]));
        let mut both = Table::default();
        for (i, name) in ["sample", "label", "volume"].iter().enumerate() {
            let col = match (&a.columns[i].1, &b.columns[i].1) {
                (Column::Str(x), Column::Str(y)) => Column::Str(x.iter().chain(y).cloned().collect()),
                (Column::U32(x), Column::U32(y)) => Column::U32(x.iter().chain(y).copied().collect()),
                (Column::F64(x), Column::F64(y)) => Column::F64(x.iter().chain(y).copied().collect()),
                _ => unreachable!(),
            };
            both.push(name, col, None);
        }
        assert_eq!(within_between(&[&a, &b], "sample", None).unwrap(), within_between(&[&both], "sample", None).unwrap());
    }

    #[test]
    fn merged_moments_equal_direct_ones() {
        let v: Vec<f64> = (0..1000).map(|i| ((i * 37 % 101) as f64).sqrt() + 1e6).collect();
        let whole = Moments::of(v.iter().copied());
        let mut m = Moments::default();
        for c in v.chunks(77) {
            m.merge(&Moments::of(c.iter().copied()));
        }
        assert_eq!(m.n, whole.n);
        assert!((m.mean - whole.mean).abs() < 1e-9 && (m.m2 - whole.m2).abs() < 1e-9 * whole.m2);
    }

    #[test]
    fn degenerate_groups() {
        // One group: no between, no ANOVA; a single-object group has no sd (left out of within).
        let a = sample("a", &[1.0, 3.0]);
        let t = within_between(&[&a], "sample", None).unwrap();
        assert!(t.f64("between_cv_pct")[0].is_nan() && t.f64("anova_f")[0].is_nan());
        assert!((t.f64("within_cv_pct")[0] - 100.0 * 2f64.sqrt() / 2.0).abs() < 1e-12);
        let b = sample("b", &[5.0]);
        let t = within_between(&[&a, &b], "sample", None).unwrap();
        assert!((t.f64("within_cv_pct")[0] - 100.0 * 2f64.sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(t.u64("n_groups"), vec![2]);
        // Constant within groups, different between: F = inf, p = 0.
        let (c, d) = (sample("c", &[2.0, 2.0]), sample("d", &[3.0, 3.0]));
        let t = within_between(&[&c, &d], "sample", None).unwrap();
        assert_eq!(t.f64("anova_f")[0], f64::INFINITY);
        assert_eq!(t.f64("anova_p")[0], 0.0);
        assert_eq!(t.f64("within_cv_pct")[0], 0.0);
        // All NaN: no groups, every statistic NaN.
        let e = sample("e", &[f64::NAN]);
        let t = within_between(&[&e], "sample", None).unwrap();
        assert_eq!(t.u64("n_groups"), vec![0]);
        assert!(t.f64("within_cv_pct")[0].is_nan());
    }

    fn normal(rng: &mut kmeans::SplitMix) -> f64 {
        // Box–Muller.
        let (u, v) = (1.0 - rng.unit(), rng.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    #[test]
    fn bootstrap_limits_are_seeded_and_bracket_the_estimate() {
        let ms: Vec<Moments> = (0..12).map(|g| Moments::of((0..20).map(|i| 50.0 + g as f64 * 3.0 + ((i * 7 + g) % 11) as f64))).collect();
        let b = Bootstrap::default();
        let l = b.limits(&ms);
        assert_eq!(l.map(f64::to_bits), b.limits(&ms).map(f64::to_bits), "same seed, same bits");
        let other = Bootstrap { seed: 2, ..b }.limits(&ms);
        assert_ne!(l, other, "another seed, other draws");
        let s = summarise(&ms);
        for (k, v) in [s.within, s.between, s.ratio].into_iter().enumerate() {
            assert!(l[2 * k] < v && v < l[2 * k + 1], "statistic {k}: {v} outside [{}, {}]", l[2 * k], l[2 * k + 1]);
        }
        let wider = Bootstrap { level: 0.99, ..b }.limits(&ms);
        assert!(wider[0] <= l[0] && wider[1] >= l[1]);
        // One group with values: no interval; no replicates: none either.
        let one = [ms[0], Moments::default()];
        assert!(b.limits(&one).iter().all(|x| x.is_nan()));
        assert!(Bootstrap { replicates: 0, ..b }.limits(&ms).iter().all(|x| x.is_nan()));
        // Through the table: the limit columns follow the statistics.
        let (a, c) = (sample("a", &[1.0, 2.0, 3.0]), sample("c", &[4.0, 6.0, 5.0]));
        let t = within_between(&[&a, &c], "sample", None).unwrap();
        assert_eq!(&t.names()[t.names().len() - 6..], &LIMIT_COLUMNS);
    }

    #[test]
    fn bootstrap_intervals_cover_the_truth_about_as_often_as_they_say() {
        // 200 simulated studies of 30 groups × 40 objects: group means ~ N(100, 10), objects
        // ~ N(mean, 0.2·mean). True within CV: 20 %; the between CV of the group means (with
        // their sampling noise): 100·√(10² + 20²/40)/100 = 10.25 %.
        let mut rng = kmeans::SplitMix::new(7);
        let boot = Bootstrap { replicates: 400, ..Bootstrap::default() };
        let (mut within_in, mut between_in, studies) = (0, 0, 200);
        for _ in 0..studies {
            let ms: Vec<Moments> = (0..30)
                .map(|_| {
                    let mu = 100.0 + 10.0 * normal(&mut rng);
                    let v: Vec<f64> = (0..40).map(|_| mu + 0.2 * mu * normal(&mut rng)).collect();
                    Moments::of(v.into_iter())
                })
                .collect();
            let l = boot.limits(&ms);
            within_in += (l[0] <= 20.0 && 20.0 <= l[1]) as usize;
            let truth = (100.0f64 + 400.0 / 40.0).sqrt();
            between_in += (l[2] <= truth && truth <= l[3]) as usize;
        }
        let (w, b) = (within_in as f64 / studies as f64, between_in as f64 / studies as f64);
        assert!((0.85..=0.99).contains(&w), "within coverage {w}");
        assert!((0.85..=0.99).contains(&b), "between coverage {b}");
    }
}
