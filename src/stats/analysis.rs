//! One statistics request carried out over a sequence of tables: within/between (always), and
//! PCA and k-means when asked. Used by the `stats:` block of a run, by `tessera merge` and by
//! `tessera stats`, so the three agree.
//!
//! Tables arrive in order (per-sample tables in manifest order, or files in sorted order); each
//! is reduced as it comes, so within/between alone needs memory per group only. PCA and k-means
//! keep the chosen phenotype columns of every row (8 bytes per value).

use std::collections::BTreeMap;

use super::{Grouped, Partial, cell, kmeans, pca};
use crate::table::{Column, Table};

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The grouping column (`sample` by default).
    pub by: String,
    /// Phenotype columns; `None`: every numeric column of the first table but `by`, `label`
    /// and `bbox_*`.
    pub phenotypes: Option<Vec<String>>,
    /// Principal components to keep (0: no PCA).
    pub pca: usize,
    /// Clusters (0: no k-means).
    pub kmeans: usize,
    /// Seed of k-means++ and of the bootstrap.
    pub seed: u64,
    /// Bootstrap replicates for the confidence intervals (0: none).
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    pub confidence: f64,
}

impl Default for Request {
    fn default() -> Self {
        let b = super::Bootstrap::default();
        Request { by: "sample".into(), phenotypes: None, pca: 0, kmeans: 0, seed: b.seed, bootstrap: b.replicates, confidence: b.level }
    }
}

impl Request {
    /// The bootstrap this request asks for.
    pub fn boot(&self) -> super::Bootstrap {
        super::Bootstrap { replicates: self.bootstrap, level: self.confidence, seed: self.seed }
    }
}

/// Everything computed.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// One row per phenotype (then per component): SPEC §7 columns, `icc`, `anova_f`,
    /// `anova_p`, `n_missing`, `note`.
    pub within_between: Table,
    /// `component`, `explained_variance`, `explained_variance_ratio`, one loading per phenotype.
    pub pca: Option<Table>,
    /// `<by>`, `cluster`, `n_objects`, `fraction`: cluster sizes per group.
    pub clusters: Option<Table>,
    /// `cluster`, `n_objects`, then each phenotype's centre in its own units.
    pub centers: Option<Table>,
    /// Row identity (`sample`, `label` when present, `<by>`), `pc1`.., `cluster` (0: the row
    /// had a missing phenotype).
    pub scores: Option<Table>,
    /// k-means iterations, mean seconds per iteration, inertia, converged.
    pub kmeans_run: Option<(usize, f64, f64, bool)>,
    pub rows: usize,
}

/// Accumulates tables one by one.
pub struct Analysis {
    req: Request,
    grouped: Option<Grouped>,
    /// Rows with a group, per phenotype (for `n_missing`).
    rows_in_groups: u64,
    kept: Option<Kept>,
    rows: usize,
    /// Tables with no rows (samples without objects).
    empty: usize,
}

/// What PCA and k-means need from every row.
#[derive(Default)]
struct Kept {
    ids: Vec<(String, Column)>,
    values: Vec<Vec<f64>>,
}

fn extend(into: &mut Column, from: &Column) {
    match (into, from) {
        (Column::Str(a), Column::Str(b)) => a.extend_from_slice(b),
        (Column::U32(a), Column::U32(b)) => a.extend_from_slice(b),
        (Column::U64(a), Column::U64(b)) => a.extend_from_slice(b),
        (Column::I64(a), Column::I64(b)) => a.extend_from_slice(b),
        (Column::F64(a), Column::F64(b)) => a.extend_from_slice(b),
        (Column::Bool(a), Column::Bool(b)) => a.extend_from_slice(b),
        (a, b) => {
            // Mixed types across files (e.g. integers in one, floats in another): keep text.
            let mut s: Vec<String> = (0..a.len()).map(|i| cell(a, i)).collect();
            s.extend((0..b.len()).map(|i| cell(b, i)));
            *a = Column::Str(s);
        }
    }
}

impl Analysis {
    pub fn new(req: Request) -> Analysis {
        let keep = req.pca > 0 || req.kmeans > 0;
        Analysis { req, grouped: None, rows_in_groups: 0, kept: keep.then(Kept::default), rows: 0, empty: 0 }
    }

    /// The phenotypes (known after the first table).
    pub fn phenotypes(&self) -> Option<&[String]> {
        self.grouped.as_ref().map(|g| g.phenotypes.as_slice()).or(self.req.phenotypes.as_deref())
    }

    /// The table with default phenotypes it lacks as NaN columns: a study may mix 2D and 3D
    /// samples, and the first table decides the phenotypes. Named phenotypes must be present.
    fn filled<'t>(&self, t: &'t Table) -> std::borrow::Cow<'t, Table> {
        match (&self.req.phenotypes, self.phenotypes()) {
            (None, Some(names)) if names.iter().any(|n| t.get(n).is_none()) => {
                let mut t = t.clone();
                for n in names {
                    if t.get(n).is_none() {
                        let rows = t.rows();
                        t.push(n, Column::F64(vec![f64::NAN; rows]), None);
                    }
                }
                std::borrow::Cow::Owned(t)
            }
            _ => std::borrow::Cow::Borrowed(t),
        }
    }

    /// Reduces a table; `source` names it in errors (a file, or empty).
    pub fn partial(&self, t: &Table, source: &str) -> Result<Partial, String> {
        let names = match self.phenotypes() {
            Some(p) => p.to_vec(),
            None => super::default_phenotypes(t, &self.req.by),
        };
        Partial::of(&self.filled(t), &self.req.by, &names, source)
    }

    /// Adds a table (after [`Analysis::partial`] on it, which may run in parallel with others).
    pub fn add(&mut self, t: &Table, partial: Partial) -> Result<(), String> {
        let filled = self.filled(t);
        let t: &Table = &filled;
        if self.grouped.is_none() {
            let names = match &self.req.phenotypes {
                Some(p) => p.clone(),
                None => super::default_phenotypes(t, &self.req.by),
            };
            self.grouped = Some(Grouped::new(names));
        }
        let g = self.grouped.as_mut().expect("set above");
        self.rows += t.rows();
        if t.rows() == 0 {
            self.empty += 1;
        }
        let by = t.get(&self.req.by).expect("checked by Partial::of");
        self.rows_in_groups += (0..t.rows()).filter(|&i| !super::no_group(&cell(by, i))).count() as u64;
        if let Some(k) = &mut self.kept {
            let mut id_names: Vec<&str> = ["sample", "label"].into_iter().filter(|n| t.get(n).is_some()).collect();
            if !id_names.contains(&self.req.by.as_str()) {
                id_names.push(&self.req.by);
            }
            if k.ids.is_empty() && k.values.is_empty() {
                k.ids = id_names.iter().map(|n| (n.to_string(), t.get(n).cloned().expect("present"))).collect();
                k.values = super::phenotype_columns(t, &g.phenotypes, "")?;
            } else {
                for (n, c) in &mut k.ids {
                    let from = t.get(n).ok_or_else(|| format!("column `{n}` is missing from a later table"))?;
                    extend(c, from);
                }
                for (v, new) in k.values.iter_mut().zip(super::phenotype_columns(t, &g.phenotypes, "")?) {
                    v.extend(new);
                }
            }
        }
        g.absorb(partial);
        Ok(())
    }

    /// Computes everything.
    pub fn finish(self) -> Outputs {
        let req = self.req;
        let grouped = self.grouped.unwrap_or_else(|| Grouped::new(req.phenotypes.clone().unwrap_or_default()));
        let mut wb = grouped.table(&req.boot());
        let mut missing: Vec<u64> = wb.u64("n_objects").iter().map(|n| self.rows_in_groups.saturating_sub(*n)).collect();
        let mut out = Outputs {
            within_between: Table::default(),
            pca: None,
            clusters: None,
            centers: None,
            scores: None,
            kmeans_run: None,
            rows: self.rows,
        };
        if let Some(kept) = self.kept {
            let names = &grouped.phenotypes;
            let st = pca::standardise(&kept.values);
            let n_rows = kept.values.first().map(Vec::len).unwrap_or(0);
            let mut scores = Table::default();
            for (n, c) in &kept.ids {
                scores.push(n, c.clone(), None);
            }
            if req.pca > 0 {
                let fit = pca::fit(&st.z, req.pca);
                let mut t = Table::default();
                t.push("component", Column::Str((1..=fit.components.len()).map(|i| format!("pc{i}")).collect()), None);
                t.push("explained_variance", Column::F64(fit.explained_variance.clone()), None);
                t.push("explained_variance_ratio", Column::F64(fit.explained_variance_ratio.clone()), None);
                for (j, n) in names.iter().enumerate() {
                    t.push(n, Column::F64(fit.components.iter().map(|c| c[j]).collect()), None);
                }
                out.pca = Some(t);
                // Scores, NaN for rows left out; then within/between of each component.
                let mut comp_grouped = Grouped::new((1..=fit.components.len()).map(|i| format!("pc{i}")).collect());
                let mut comp_table = Table::default();
                let by_col = kept.ids.iter().find(|(n, _)| *n == req.by).map(|(_, c)| c.clone()).expect("kept");
                comp_table.push(&req.by, by_col, None);
                for (i, s) in fit.scores(&st.z).into_iter().enumerate() {
                    let mut full = vec![f64::NAN; n_rows];
                    for (r, v) in st.kept.iter().zip(s) {
                        full[*r] = v;
                    }
                    comp_table.push(&format!("pc{}", i + 1), Column::F64(full.clone()), None);
                    scores.push(&format!("pc{}", i + 1), Column::F64(full), None);
                }
                if let Ok(p) = Partial::of(&comp_table, &req.by, &comp_grouped.phenotypes, "") {
                    comp_grouped.absorb(p);
                }
                let ct = comp_grouped.table(&req.boot());
                missing.extend(ct.u64("n_objects").iter().map(|n| self.rows_in_groups.saturating_sub(*n)));
                append_rows(&mut wb, &ct);
            }
            if req.kmeans > 0 {
                let km = kmeans::fit(&st.z, req.kmeans, req.seed);
                let mut cluster = vec![0u32; n_rows];
                for (r, l) in st.kept.iter().zip(&km.labels) {
                    cluster[*r] = l + 1;
                }
                let by_col = kept.ids.iter().find(|(n, _)| *n == req.by).map(|(_, c)| c).expect("kept");
                let mut sizes: BTreeMap<(String, u32), u64> = BTreeMap::new();
                let mut per_group: BTreeMap<String, u64> = BTreeMap::new();
                for (i, &c) in cluster.iter().enumerate() {
                    let g = cell(by_col, i);
                    if c > 0 && !super::no_group(&g) {
                        *sizes.entry((g.clone(), c)).or_default() += 1;
                        *per_group.entry(g).or_default() += 1;
                    }
                }
                let mut t = Table::default();
                t.push(&req.by, Column::Str(sizes.keys().map(|(g, _)| g.clone()).collect()), None);
                t.push("cluster", Column::U32(sizes.keys().map(|(_, c)| *c).collect()), None);
                t.push("n_objects", Column::U64(sizes.values().copied().collect()), None);
                t.push("fraction", Column::F64(sizes.iter().map(|((g, _), n)| *n as f64 / per_group[g] as f64).collect()), None);
                out.clusters = Some(t);
                let mut counts = vec![0u64; km.k];
                for l in &km.labels {
                    counts[*l as usize] += 1;
                }
                let mut c = Table::default();
                c.push("cluster", Column::U32((1..=km.k as u32).collect()), None);
                c.push("n_objects", Column::U64(counts), None);
                let p = names.len();
                for (j, n) in names.iter().enumerate() {
                    let v = (0..km.k).map(|q| km.centers[q * p + j] * st.scale[j] + st.mean[j]).collect();
                    c.push(n, Column::F64(v), None);
                }
                out.centers = Some(c);
                scores.push("cluster", Column::U32(cluster), None);
                out.kmeans_run = Some((km.iterations, km.seconds_per_iteration, km.inertia, km.converged));
            }
            out.scores = Some(scores);
        }
        let mut notes = notes(&wb, &missing);
        if self.empty > 0 {
            // A sample without objects contributes no group: say so on every row.
            let what = format!("{} table{} without objects (not among the groups)", self.empty, if self.empty == 1 { "" } else { "s" });
            for n in &mut notes {
                *n = if n.is_empty() { what.clone() } else { format!("{n}; {what}") };
            }
        }
        wb.push("n_missing", Column::U64(missing), None);
        wb.push("note", Column::Str(notes), None);
        out.within_between = wb;
        out
    }
}

fn append_rows(into: &mut Table, from: &Table) {
    for ((_, a, _), (_, b, _)) in into.columns.iter_mut().zip(&from.columns) {
        extend(a, b);
    }
}

/// Why a statistic is missing or infinite, in words, one per row ("" when all is well).
fn notes(t: &Table, missing: &[u64]) -> Vec<String> {
    let (groups, objects) = (t.u64("n_groups"), t.u64("n_objects"));
    let (w, b) = (t.f64("within_cv_pct"), t.f64("between_cv_pct"));
    (0..t.rows())
        .map(|i| {
            let mut n = Vec::new();
            if objects[i] == 0 {
                n.push("no values".to_string());
            } else if groups[i] < 2 {
                n.push("one group: no between-group statistics".to_string());
            }
            if groups[i] >= 1 && w[i].is_nan() && objects[i] > 0 {
                n.push("no group has two values: no within-group sd".to_string());
            }
            if b[i] == 0.0 || (w[i] == 0.0 && b[i].is_nan()) {
                n.push("constant: the ratio is undefined".to_string());
            } else if w[i].is_infinite() || b[i].is_infinite() {
                n.push("a mean is zero: the CV is infinite".to_string());
            }
            if missing[i] > 0 {
                n.push(format!("{} missing values left out", missing[i]));
            }
            n.join("; ")
        })
        .collect()
}

/// Runs a request over tables already in memory.
pub fn analyse(tables: &[&Table], req: &Request) -> Result<Outputs, String> {
    let mut a = Analysis::new(req.clone());
    for t in tables {
        let p = a.partial(t, "")?;
        a.add(t, p)?;
    }
    Ok(a.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, v: &[f64], w: &[f64]) -> Table {
        let mut t = Table::default();
        t.push("sample", Column::Str(vec![name.into(); v.len()]), None);
        t.push("label", Column::U32((1..=v.len() as u32).collect()), None);
        t.push("volume", Column::F64(v.to_vec()), None);
        t.push("length", Column::F64(w.to_vec()), None);
        t.push("flat", Column::F64(vec![2.0; v.len()]), None);
        t
    }

    #[test]
    fn samples_without_objects_are_noted() {
        let a = sample("a", &[1.0, 2.0], &[1.0, 2.0]);
        let b = sample("b", &[3.0, 5.0], &[1.0, 2.0]);
        let empty = sample("c", &[], &[]);
        let o = analyse(&[&a, &empty, &b], &Request::default()).unwrap();
        assert_eq!(o.within_between.u64("n_groups")[0], 2);
        let notes = match o.within_between.get("note") {
            Some(Column::Str(v)) => v.clone(),
            _ => panic!(),
        };
        assert_eq!(notes[0], "1 table without objects (not among the groups)");
    }

    #[test]
    fn pca_kmeans_and_notes() {
        let a = sample("a", &[1.0, 2.0, 3.0, f64::NAN], &[1.1, 2.2, 2.9, 4.0]);
        let b = sample("b", &[10.0, 11.0, 12.0], &[9.0, 11.5, 12.0]);
        let req = Request { pca: 2, kmeans: 2, ..Request::default() };
        let o = analyse(&[&a, &b], &req).unwrap();
        let wb = &o.within_between;
        let names = match wb.get("phenotype") {
            Some(Column::Str(v)) => v.clone(),
            _ => panic!(),
        };
        assert_eq!(names, vec!["volume", "length", "flat", "pc1", "pc2"]);
        assert_eq!(wb.u64("n_missing"), vec![1, 0, 0, 1, 1]);
        let notes = match wb.get("note") {
            Some(Column::Str(v)) => v.clone(),
            _ => panic!(),
        };
        assert_eq!(notes[0], "1 missing values left out");
        assert!(notes[2].contains("constant"), "{notes:?}");
        // Two obvious clusters: samples a and b (the NaN row is not clustered).
        let s = o.scores.unwrap();
        assert_eq!(s.names(), vec!["sample", "label", "pc1", "pc2", "cluster"]);
        let c = s.u32("cluster");
        assert_eq!(c[3], 0);
        assert!(c[0] == c[1] && c[1] == c[2] && c[4] == c[5] && c[5] == c[6] && c[0] != c[4] && c[0] > 0);
        assert!(s.f64("pc1")[3].is_nan());
        let cl = o.clusters.unwrap();
        assert_eq!(cl.f64("fraction"), vec![1.0, 1.0]);
        let ctr = o.centers.unwrap();
        // Centres come back in phenotype units: the flat column's centre is its value.
        assert!(ctr.f64("flat").iter().all(|v| (v - 2.0).abs() < 1e-12));
        let p = o.pca.unwrap();
        assert!(p.f64("explained_variance_ratio")[0] > 0.9);
    }
}
