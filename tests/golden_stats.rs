//! Statistics against pandas / SciPy / scikit-learn goldens (testdata/golden/stats, made by
//! testdata/golden/make_stats_golden.py). Floats agree to 1e-9 relative (p-values to 1e-8);
//! counts and k-means labels exactly.

use std::path::PathBuf;

use tessera::stats::analysis::{Request, analyse};
use tessera::stats::{kmeans, pca};
use tessera::table::read::{Want, read_any};
use tessera::table::{Column, Table};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/stats").join(name)
}

const PHENOTYPES: [&str; 4] = ["volume", "length", "anisotropy", "flat"];

fn input(by: &str) -> Table {
    let text = vec![by.to_string()];
    read_any(&golden("table.csv"), &Want { text: &text, ..Want::default() }).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rel * b.abs()
}

/// The within/between table of the golden input grouped by `by` (default bootstrap).
fn within_between(by: &str) -> Table {
    let t = input(by);
    let req = Request { by: by.into(), phenotypes: Some(PHENOTYPES.iter().map(|s| s.to_string()).collect()), ..Request::default() };
    analyse(&[&t], &req).unwrap().within_between
}

#[test]
fn within_between_icc_anova_match_pandas_and_scipy() {
    for by in ["sample", "animal"] {
        let got = within_between(by);
        let mut rdr = csv::Reader::from_path(golden(&format!("within_between_by_{by}.csv"))).unwrap();
        let headers = rdr.headers().unwrap().clone();
        let mut checked = 0;
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec.unwrap();
            for (h, v) in headers.iter().zip(rec.iter()) {
                match got.get(h).unwrap() {
                    Column::Str(s) => assert_eq!(s[row], v),
                    Column::U64(n) => assert_eq!(n[row].to_string(), v, "{by} {h} row {row}"),
                    Column::F64(x) => {
                        let want: f64 = if v.is_empty() { f64::NAN } else { v.parse().unwrap() };
                        let rel = if h == "anova_p" { 1e-8 } else { 1e-9 };
                        assert!(close(x[row], want, rel), "by {by}, {h} of row {row}: {} vs pandas {want}", x[row]);
                        checked += 1;
                    }
                    other => panic!("{h}: {other:?}"),
                }
            }
        }
        assert_eq!(checked, 24, "4 phenotypes × 6 float statistics");
        // Every undefined number carries a note.
        let notes = match got.get("note") {
            Some(Column::Str(v)) => v.clone(),
            _ => panic!(),
        };
        assert!(notes[3].contains("constant"), "{notes:?}");
        assert!(notes[1].contains("missing values left out"), "{notes:?}");
    }
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden(name)).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn standardised() -> pca::Standardised {
    let t = input("sample");
    let cols: Vec<Vec<f64>> = PHENOTYPES.iter().map(|p| t.f64(p)).collect();
    pca::standardise(&cols)
}

#[test]
fn pca_matches_scikit_learn() {
    let g = json("pca.json");
    let s = standardised();
    let kept: Vec<usize> = g["kept_rows"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(&s.kept[..kept.len()], &kept[..]);
    assert_eq!(s.constant, vec![false, false, false, true]);
    let fit = pca::fit(&s.z, 2);
    for (a, b) in fit.explained_variance.iter().zip(floats(&g["explained_variance"])) {
        assert!(close(*a, b, 1e-9), "{a} vs {b}");
    }
    for (a, b) in fit.explained_variance_ratio.iter().zip(floats(&g["explained_variance_ratio"])) {
        assert!(close(*a, b, 1e-9), "{a} vs {b}");
    }
    for (c, gc) in fit.components.iter().zip(g["components"].as_array().unwrap()) {
        for (a, b) in c.iter().zip(floats(gc)) {
            assert!((a - b).abs() < 1e-9, "loading {a} vs {b}");
        }
    }
    let scores = fit.scores(&s.z);
    for (i, row) in g["scores_first20"].as_array().unwrap().iter().enumerate() {
        for (k, b) in floats(row).into_iter().enumerate() {
            assert!((scores[k][i] - b).abs() < 1e-9 * b.abs().max(1.0), "score {i},{k}");
        }
    }
}

#[test]
fn kmeans_from_the_same_start_matches_scikit_learn() {
    let g = json("kmeans.json");
    let s = standardised();
    let rows: Vec<usize> = g["init_rows"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let init: Vec<f64> = rows.iter().flat_map(|&r| s.z.row(r).to_vec()).collect();
    let km = kmeans::lloyd(&s.z, init, 300, 1e-4);
    let labels: Vec<u32> = g["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(km.labels, labels);
    assert_eq!(km.iterations as u64, g["n_iter"].as_u64().unwrap());
    let centers: Vec<f64> = g["centers"].as_array().unwrap().iter().flat_map(floats).collect();
    for (a, b) in km.centers.iter().zip(&centers) {
        assert!((a - b).abs() < 1e-9, "centre {a} vs {b}");
    }
    assert!(close(km.inertia, g["inertia"].as_f64().unwrap(), 1e-9));
}

#[test]
fn bootstrap_limits_match_numpy_on_the_same_draws() {
    // make_stats_golden.py recomputes the cluster bootstrap with numpy from the same SplitMix64
    // draws (1000 replicates, level 0.95, seed 1): CVs, group means and np.percentile (linear).
    for by in ["sample", "animal"] {
        let got = within_between(by);
        let mut rdr = csv::Reader::from_path(golden(&format!("bootstrap_by_{by}.csv"))).unwrap();
        let headers = rdr.headers().unwrap().clone();
        let mut checked = 0;
        for (row, rec) in rdr.records().enumerate() {
            let rec = rec.unwrap();
            for (h, v) in headers.iter().zip(rec.iter()).skip(1) {
                let Some(Column::F64(x)) = got.get(h) else { panic!("{h}") };
                let want: f64 = if v.is_empty() { f64::NAN } else { v.parse().unwrap() };
                assert!(close(x[row], want, 1e-9), "by {by}, {h} of row {row}: {} vs numpy {want}", x[row]);
                checked += 1;
            }
        }
        assert_eq!(checked, 24, "4 phenotypes × 6 limits");
        // The limits enclose the statistic wherever both are defined.
        for (s, lo, hi) in [("within_cv_pct", "within_cv_pct_lo", "within_cv_pct_hi"), ("ratio_pct", "ratio_pct_lo", "ratio_pct_hi")] {
            let (v, l, h) = (got.f64(s), got.f64(lo), got.f64(hi));
            for i in 0..3 {
                assert!(l[i] <= v[i] && v[i] <= h[i], "by {by}: {s} {} outside [{}, {}]", v[i], l[i], h[i]);
            }
        }
    }
}
