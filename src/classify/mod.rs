//! Classification of table rows (objects or images) with a seeded random forest: the training
//! set from phenotype tables, stratified evaluation on rows the model did not see, the model
//! file, and prediction. `tessera train` and `tessera predict` are thin layers over this.

pub mod forest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stats::kmeans::SplitMix;
use crate::table::read::{Want, read_all, read_any};
use crate::table::{Column, Table};
use forest::{Forest, Params, argmax};

/// The model file format this build writes and reads.
pub const MODEL_FORMAT: u32 = 1;

/// What to do with missing feature values (NaN, empty cells).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Refuse, naming each column and how many rows lack a value.
    Error,
    /// Leave out rows with a missing feature or class.
    Drop,
    /// Fill a missing feature with its median over the training rows (kept in the model).
    Median,
}

/// How the model was evaluated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Split {
    /// A stratified hold-out: `fraction` of each class's rows kept aside for testing.
    Holdout { fraction: f64 },
    /// Stratified k-fold cross-validation.
    Kfold { folds: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test rows of this class.
    pub support: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    #[serde(flatten)]
    pub split: Split,
    /// Rows the figures are computed on (each predicted by a model that did not see it).
    pub rows_tested: u64,
    pub accuracy: f64,
    /// Mean recall over the classes present among the tested rows.
    pub balanced_accuracy: f64,
    /// `confusion[true][predicted]`, classes in model order.
    pub confusion: Vec<Vec<u64>>,
    pub per_class: Vec<ClassMetrics>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Training {
    pub files: Vec<String>,
    pub rows: u64,
    /// BLAKE3 of the feature names, the feature values and the classes of the training rows.
    pub hash: String,
    /// Rows left out for a missing value (`--missing drop`).
    pub rows_dropped: u64,
}

/// A model file: everything needed to apply the forest and to say what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    pub format: String,
    pub format_version: u32,
    pub tessera_version: String,
    pub kind: String,
    /// The class column it was trained on.
    pub label: String,
    pub classes: Vec<String>,
    /// Feature columns, in the order the forest indexes them.
    pub features: Vec<String>,
    pub params: Params,
    pub missing: Missing,
    /// Per feature, the training median (with `missing: median`).
    pub medians: Option<Vec<f64>>,
    /// Trees need no scaling: features are used as they are (split thresholds are invariant
    /// to monotone rescaling), so no standardisation is stored.
    pub standardised: bool,
    pub training: Training,
    pub evaluation: Evaluation,
    /// Mean decrease in impurity, per feature in `features` order.
    pub importances: Vec<f64>,
    /// Which rows the saved forest was grown on: `training` (the hold-out's training part) or
    /// `all` (after k-fold evaluation).
    pub fitted_on: String,
    pub forest: Forest,
}

/// What `tessera train` asks for.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub label: String,
    pub features: Option<Vec<String>>,
    pub trees: usize,
    pub max_depth: Option<usize>,
    pub min_samples_leaf: usize,
    pub max_features: Option<usize>,
    pub seed: u64,
    pub split: Split,
    pub missing: Missing,
}

/// Columns never taken as features by default: identities (also of other objects, such as
/// `measure`'s `nn_label`) and positions.
fn default_feature(name: &str, label: &str) -> bool {
    name != label
        && !matches!(name, "sample" | "label" | "object" | "id")
        && !name.ends_with("_label")
        && !name.starts_with("bbox_")
        && !name.starts_with("centroid_")
}

/// Class names sorted as numbers when they all are, as text otherwise.
fn sort_classes(v: &mut [String]) {
    let num = |s: &str| s.trim().parse::<f64>().ok();
    if v.iter().all(|s| num(s).is_some()) {
        v.sort_by(|a, b| num(a).unwrap_or(0.0).total_cmp(&num(b).unwrap_or(0.0)).then(a.cmp(b)));
    } else {
        v.sort();
    }
}

/// The training rows: features row-major, class names.
struct Rows {
    features: Vec<String>,
    x: Vec<f64>,
    labels: Vec<String>,
}

fn load(files: &[PathBuf], req: &TrainRequest) -> Result<Rows, String> {
    let text = [req.label.clone()];
    let mut features = req.features.clone();
    let mut rows = Rows { features: Vec::new(), x: Vec::new(), labels: Vec::new() };
    for f in files {
        let t = read_any(f, &Want { text: &text, numeric: features.as_deref(), ..Default::default() })?;
        let names = features
            .get_or_insert_with(|| {
                t.columns
                    .iter()
                    .filter(|(n, c, _)| matches!(c, Column::F64(_)) && default_feature(n, &req.label))
                    .map(|(n, _, _)| n.clone())
                    .collect()
            })
            .clone();
        if names.is_empty() {
            return Err(format!("{}: no numeric feature columns besides `{}` (give --features)", f.display(), req.label));
        }
        let cols: Vec<Vec<f64>> = names
            .iter()
            .map(|n| match t.get(n) {
                Some(c) => crate::stats::numeric(c).ok_or_else(|| format!("{}: column `{n}` is not numeric", f.display())),
                None => Err(format!("{}: no column `{n}` (it is in {})", f.display(), files[0].display())),
            })
            .collect::<Result<_, _>>()?;
        let Some(Column::Str(labels)) = t.get(&req.label) else { unreachable!("the label column is read as text") };
        for (i, l) in labels.iter().enumerate() {
            rows.x.extend(cols.iter().map(|c| c[i]));
            rows.labels.push(l.trim().to_string());
        }
        rows.features = names;
    }
    Ok(rows)
}

/// A class cell that is a missing value (as in numeric columns: empty, `NA`, `NaN`, …).
fn is_missing_label(l: &str) -> bool {
    crate::table::read::missing(l.as_bytes())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Handles missing values as asked: refuses them, or drops rows (returning how many). Rows
/// without a class are always left out. With `median`, missing features stay NaN here and are
/// filled from the rows each forest is grown on ([`fill`]), so no test row informs them.
fn treat_missing(r: &mut Rows, how: Missing, label: &str) -> Result<u64, String> {
    let p = r.features.len();
    let n = r.labels.len();
    let counts: Vec<usize> = (0..p).map(|j| (0..n).filter(|&i| r.x[i * p + j].is_nan()).count()).collect();
    let no_label = r.labels.iter().filter(|l| is_missing_label(l)).count();
    if how == Missing::Error && (counts.iter().any(|&c| c > 0) || no_label > 0) {
        let mut parts: Vec<String> =
            r.features.iter().zip(&counts).filter(|(_, c)| **c > 0).map(|(f, c)| format!("`{f}` ({c} of {n} rows)")).collect();
        if no_label > 0 {
            parts.push(format!("the class column `{label}` ({no_label} of {n} rows)"));
        }
        return Err(format!(
            "missing values in {}; choose --missing drop (leave those rows out) or --missing median (fill features with the training median)",
            parts.join(", ")
        ));
    }
    let keep: Vec<bool> =
        (0..n).map(|i| !is_missing_label(&r.labels[i]) && (how != Missing::Drop || (0..p).all(|j| !r.x[i * p + j].is_nan()))).collect();
    let dropped = keep.iter().filter(|k| !**k).count() as u64;
    if dropped > 0 {
        let mut x = Vec::with_capacity(r.x.len());
        let mut labels = Vec::new();
        for i in (0..n).filter(|&i| keep[i]) {
            x.extend_from_slice(&r.x[i * p..(i + 1) * p]);
            labels.push(std::mem::take(&mut r.labels[i]));
        }
        r.x = x;
        r.labels = labels;
    }
    Ok(dropped)
}

/// Per feature, the median of the non-missing values of rows `which`.
fn medians_of(x: &[f64], p: usize, which: &[usize]) -> Vec<f64> {
    (0..p).map(|j| median(which.iter().map(|&i| x[i * p + j]).filter(|v| !v.is_nan()).collect())).collect()
}

/// Rows `which` of `x`, missing values replaced by `medians` when given.
fn fill(x: &[f64], p: usize, which: &[usize], medians: Option<&[f64]>) -> Vec<f64> {
    let mut out = rows_of(x, p, which);
    if let Some(m) = medians {
        for row in out.chunks_mut(p) {
            for (v, m) in row.iter_mut().zip(m) {
                if v.is_nan() {
                    *v = *m;
                }
            }
        }
    }
    out
}

/// Each row's test fold: stratified (each class's rows shuffled by the seed, then dealt out).
/// Hold-out: fold 1 is the test part (`round(fraction × class rows)`, at least one row of a
/// class with two or more, never all of them); k-fold: folds 0..k.
fn folds(y: &[u32], classes: usize, split: &Split, seed: u64) -> Vec<usize> {
    let mut g = SplitMix::new(seed ^ 0x5350_4c49_545f_5f5f);
    let mut fold = vec![0usize; y.len()];
    let mut offset = 0;
    for c in 0..classes as u32 {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        for k in (1..idx.len()).rev() {
            let j = ((g.next_u64() as u128 * (k as u128 + 1)) >> 64) as usize;
            idx.swap(k, j);
        }
        match split {
            Split::Holdout { fraction } => {
                let m = idx.len();
                let mut t = (fraction * m as f64).round() as usize;
                if m >= 2 {
                    t = t.clamp(1, m - 1);
                } else {
                    t = 0;
                }
                idx[..t].iter().for_each(|&i| fold[i] = 1);
            }
            Split::Kfold { folds } => {
                // Dealt round-robin, continuing where the last class stopped, so fold sizes
                // differ by at most one.
                for (k, &i) in idx.iter().enumerate() {
                    fold[i] = (offset + k) % folds;
                }
                offset = (offset + idx.len()) % folds;
            }
        }
    }
    fold
}

fn rows_of(x: &[f64], p: usize, which: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(which.len() * p);
    for &i in which {
        out.extend_from_slice(&x[i * p..(i + 1) * p]);
    }
    out
}

/// Figures from true and predicted classes.
pub fn evaluate(split: Split, truth: &[u32], predicted: &[u32], classes: &[String]) -> Evaluation {
    let c = classes.len();
    let mut confusion = vec![vec![0u64; c]; c];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t as usize][p as usize] += 1;
    }
    let n = truth.len() as u64;
    let right: u64 = (0..c).map(|k| confusion[k][k]).sum();
    let mut per_class = Vec::new();
    let mut recalls = Vec::new();
    for k in 0..c {
        let support: u64 = confusion[k].iter().sum();
        let predicted_k: u64 = (0..c).map(|t| confusion[t][k]).sum();
        let tp = confusion[k][k] as f64;
        let precision = if predicted_k > 0 { tp / predicted_k as f64 } else { 0.0 };
        let recall = if support > 0 { tp / support as f64 } else { 0.0 };
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        if support > 0 {
            recalls.push(recall);
        }
        per_class.push(ClassMetrics { class: classes[k].clone(), precision, recall, f1, support });
    }
    Evaluation {
        split,
        rows_tested: n,
        accuracy: if n > 0 { right as f64 / n as f64 } else { 0.0 },
        balanced_accuracy: if recalls.is_empty() { 0.0 } else { recalls.iter().sum::<f64>() / recalls.len() as f64 },
        confusion,
        per_class,
    }
}

/// Trains and evaluates a model on the rows of `files`.
pub fn train(files: &[PathBuf], req: &TrainRequest) -> Result<Model, String> {
    let mut rows = load(files, req)?;
    let dropped = treat_missing(&mut rows, req.missing, &req.label)?;
    let p = rows.features.len();
    let n = rows.labels.len();
    let mut classes: Vec<String> = rows.labels.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    sort_classes(&mut classes);
    if classes.len() < 2 {
        return Err(format!(
            "the class column `{}` has {} distinct value(s) in {n} rows; a classifier needs two or more",
            req.label,
            classes.len()
        ));
    }
    let index: BTreeMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
    let y: Vec<u32> = rows.labels.iter().map(|l| index[l.as_str()]).collect();
    let max_features = req.max_features.unwrap_or(((p as f64).sqrt() as usize).max(1)).clamp(1, p);
    let params =
        Params { trees: req.trees, max_depth: req.max_depth, min_samples_leaf: req.min_samples_leaf, max_features, seed: req.seed };
    let fold = folds(&y, classes.len(), &req.split, req.seed);
    // A forest grown on rows `train`, with the medians of those rows (`--missing median`).
    let fit_on = |train: &[usize]| {
        let medians = (req.missing == Missing::Median).then(|| medians_of(&rows.x, p, train));
        let x = fill(&rows.x, p, train, medians.as_deref());
        let yy: Vec<u32> = train.iter().map(|&i| y[i]).collect();
        (forest::fit(&forest::Data { x: &x, features: p, y: &yy, classes: classes.len() }, &params), medians)
    };
    let predict = |(f, medians): &(Forest, Option<Vec<f64>>), test: &[usize]| -> Vec<u32> {
        f.proba_all(&fill(&rows.x, p, test, medians.as_deref())).iter().map(|q| argmax(q)).collect()
    };
    let (evaluation, (forest, medians), fitted_on) = match &req.split {
        Split::Holdout { .. } => {
            let train: Vec<usize> = (0..n).filter(|&i| fold[i] == 0).collect();
            let test: Vec<usize> = (0..n).filter(|&i| fold[i] == 1).collect();
            if test.is_empty() {
                return Err("the hold-out is empty (too few rows per class for --test-fraction)".into());
            }
            let f = fit_on(&train);
            let predicted = predict(&f, &test);
            let truth: Vec<u32> = test.iter().map(|&i| y[i]).collect();
            (evaluate(req.split.clone(), &truth, &predicted, &classes), f, "training")
        }
        Split::Kfold { folds: k } => {
            let mut truth = Vec::new();
            let mut predicted = Vec::new();
            for f in 0..*k {
                let train: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
                let test: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
                if test.is_empty() || train.is_empty() {
                    continue;
                }
                predicted.extend(predict(&fit_on(&train), &test));
                truth.extend(test.iter().map(|&i| y[i]));
            }
            let all: Vec<usize> = (0..n).collect();
            (evaluate(req.split.clone(), &truth, &predicted, &classes), fit_on(&all), "all")
        }
    };
    let mut h = blake3::Hasher::new();
    for f in &rows.features {
        h.update(f.as_bytes());
        h.update(&[0]);
    }
    for v in &rows.x {
        h.update(&v.to_le_bytes());
    }
    for l in &rows.labels {
        h.update(l.as_bytes());
        h.update(&[0]);
    }
    Ok(Model {
        format: "tessera-model".into(),
        format_version: MODEL_FORMAT,
        tessera_version: env!("CARGO_PKG_VERSION").into(),
        kind: "random_forest".into(),
        label: req.label.clone(),
        classes,
        features: rows.features,
        params,
        missing: req.missing,
        medians,
        standardised: false,
        training: Training {
            files: files.iter().map(|f| f.display().to_string()).collect(),
            rows: n as u64,
            hash: h.finalize().to_hex().to_string(),
            rows_dropped: dropped,
        },
        evaluation,
        importances: forest.importances.clone(),
        fitted_on: fitted_on.into(),
        forest,
    })
}

/// The model file's bytes (compact JSON: the same model gives the same bytes).
pub fn to_bytes(m: &Model) -> Vec<u8> {
    serde_json::to_vec(m).expect("a model serialises")
}

/// Reads a model file, refusing other formats and versions with a clear message.
pub fn read_model(path: &Path) -> Result<Model, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_model(&bytes, path)
}

/// A model from the bytes of its file (`path` names it in messages), checked as [`read_model`]
/// checks it.
pub fn parse_model(bytes: &[u8], path: &Path) -> Result<Model, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{}: not a tessera model file (not JSON: {e})", path.display()))?;
    if v.get("format").and_then(|f| f.as_str()) != Some("tessera-model") {
        return Err(format!("{}: not a tessera model file (no \"format\": \"tessera-model\")", path.display()));
    }
    let version = v.get("format_version").and_then(|f| f.as_u64()).unwrap_or(0);
    if version != MODEL_FORMAT as u64 {
        let by = v.get("tessera_version").and_then(|f| f.as_str()).unwrap_or("?");
        return Err(format!(
            "{}: model format {version} (written by tessera {by}); this tessera {} reads format {MODEL_FORMAT} — train the model again",
            path.display(),
            env!("CARGO_PKG_VERSION")
        ));
    }
    let m: Model = serde_json::from_value(v).map_err(|e| format!("{}: a damaged model file: {e}", path.display()))?;
    let ok = !m.features.is_empty()
        && m.classes.len() >= 2
        && m.forest.features == m.features.len()
        && m.forest.classes == m.classes.len()
        && m.medians.as_ref().is_none_or(|md| md.len() == m.features.len())
        && m.forest.trees.iter().all(|t| {
            let k = t.feature.len();
            k >= 1
                && t.threshold.len() == k
                && t.left.len() == k
                && t.right.len() == k
                && t.leaf.len() == k
                && (0..k).all(|i| {
                    if t.feature[i] < 0 {
                        (t.leaf[i] as usize + 1) * m.classes.len() <= t.value.len()
                    } else {
                        (t.feature[i] as usize) < m.features.len()
                            && (t.left[i] as usize) < k
                            && (t.right[i] as usize) < k
                            && t.left[i] as usize > i
                            && t.right[i] as usize > i
                    }
                })
        });
    if !ok {
        return Err(format!("{}: a damaged model file: its trees do not match its features and classes", path.display()));
    }
    Ok(m)
}

/// Applies a model to a table: the table with `predicted` and `probability_<class>` added.
pub fn predict_table(m: &Model, t: &Table, file: &Path) -> Result<Table, String> {
    predict_columns(m, t, &file.display().to_string(), "predicted", true)
}

/// Applies a model to a table (`what` names it in messages): the table with the class column
/// `column` added, and `probability_<class>` per class when `probabilities`.
pub fn predict_columns(m: &Model, t: &Table, what: &str, column: &str, probabilities: bool) -> Result<Table, String> {
    let n = t.rows();
    let p = m.features.len();
    let mut x = vec![0.0; n * p];
    for (j, f) in m.features.iter().enumerate() {
        let col = t.get(f).ok_or_else(|| {
            let hint = crate::util::did_you_mean(f, t.names()).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
            format!("{}: no column `{f}`{hint}; the model needs its features {}", what, m.features.join(", "))
        })?;
        let v = crate::stats::numeric(col).ok_or_else(|| {
            let example = match col {
                Column::Str(s) => s.iter().find(|c| !c.trim().is_empty()).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            format!("{}: column `{f}` is text ('{example}'); the model was trained on it as a number", what)
        })?;
        let mut missing = 0;
        for (i, val) in v.into_iter().enumerate() {
            x[i * p + j] = if val.is_nan() {
                missing += 1;
                m.medians.as_ref().map_or(f64::NAN, |md| md[j])
            } else {
                val
            };
        }
        if missing > 0 && m.medians.is_none() {
            return Err(format!(
                "{}: column `{f}` has {missing} missing value(s) of {n}; the model was trained with --missing {} and has no medians to fill them",
                what,
                match m.missing {
                    Missing::Error => "error",
                    Missing::Drop => "drop",
                    Missing::Median => "median",
                }
            ));
        }
    }
    let proba = m.forest.proba_all(&x);
    let mut out = t.clone();
    let probability_names: Vec<String> =
        if probabilities { m.classes.iter().map(|c| format!("probability_{c}")).collect() } else { Vec::new() };
    for name in std::iter::once(column.to_string()).chain(probability_names.iter().cloned()) {
        if out.get(&name).is_some() {
            return Err(format!("{}: already has a column `{name}` (a table predicted before?)", what));
        }
    }
    out.push(column, Column::Str(proba.iter().map(|q| m.classes[argmax(q) as usize].clone()).collect()), None);
    for (k, name) in probability_names.iter().enumerate() {
        out.push(name, Column::F64(proba.iter().map(|q| q[k]).collect()), None);
    }
    Ok(out)
}

/// Reads every table of `files` whole and predicts each.
pub fn predict_files(m: &Model, files: &[PathBuf]) -> Result<Vec<Table>, String> {
    files.iter().map(|f| read_all(f).and_then(|t| predict_table(m, &t, f))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_features_leave_out_identities_and_positions() {
        for name in ["class", "sample", "label", "nn_label", "bbox_y0", "centroid_x", "id"] {
            assert!(!default_feature(name, "class"), "{name}");
        }
        for name in ["volume", "raw_mean", "nn_distance", "inertia_eig_0", "p00"] {
            assert!(default_feature(name, "class"), "{name}");
        }
    }

    #[test]
    fn medians_come_from_the_rows_given_only() {
        // Two features, four rows; the last row (a test row) must not move the medians.
        let x = [1.0, f64::NAN, 3.0, 10.0, f64::NAN, 20.0, 1000.0, 1000.0];
        let m = medians_of(&x, 2, &[0, 1, 2]);
        assert_eq!(m, [2.0, 15.0]);
        assert_eq!(fill(&x, 2, &[1, 3], Some(&m)), [3.0, 10.0, 1000.0, 1000.0]);
        assert_eq!(fill(&x, 2, &[0], Some(&m)), [1.0, 15.0]);
        assert!(fill(&x, 2, &[0], None)[1].is_nan());
    }

    #[test]
    fn stratified_folds_keep_each_class_in_proportion() {
        let y: Vec<u32> = (0..100).map(|i| u32::from(i >= 90)).collect();
        let f = folds(&y, 2, &Split::Holdout { fraction: 0.2 }, 3);
        assert_eq!((0..90).filter(|&i| f[i] == 1).count(), 18);
        assert_eq!((90..100).filter(|&i| f[i] == 1).count(), 2);
        let f = folds(&y, 2, &Split::Kfold { folds: 5 }, 3);
        for k in 0..5 {
            assert_eq!((90..100).filter(|&i| f[i] == k).count(), 2, "fold {k}");
            assert_eq!((0..100).filter(|&i| f[i] == k).count(), 20, "fold {k}");
        }
    }
}
