//! `tessera train` and `tessera predict`: tables in, a model file or classified tables out.

use std::io::Write;

use super::tables::expand;
use super::{PredictArgs, TrainArgs};
use crate::classify::{self, Evaluation, Model, Split, TrainRequest};
use crate::util::fmt_num;

pub fn cmd_train(a: TrainArgs) -> i32 {
    let t0 = std::time::Instant::now();
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        eprintln!("error: --test-fraction {}: give a fraction between 0 and 1 (exclusive)", a.test_fraction);
        return 2;
    }
    let files = match expand(&a.tables) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let req = TrainRequest {
        label: a.label.clone(),
        features: a.features.clone(),
        trees: a.trees as usize,
        max_depth: a.max_depth.map(|d| d as usize),
        min_samples_leaf: a.min_samples_leaf as usize,
        max_features: a.max_features.map(|f| f as usize),
        seed: a.seed,
        split: match a.folds {
            Some(k) => Split::Kfold { folds: k as usize },
            None => Split::Holdout { fraction: a.test_fraction },
        },
        missing: a.missing,
    };
    let m = match classify::train(&files, &req) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if let Err(e) = crate::util::write_atomic(&a.model, &classify::to_bytes(&m)) {
        eprintln!("error: {}: {e}", a.model.display());
        return 2;
    }
    let mut so = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(so, "{}", serde_json::to_string_pretty(&m.evaluation).expect("serialises"));
    } else {
        let _ = write!(so, "{}", summary(&m, t0.elapsed().as_secs_f64()));
        let _ = writeln!(so, "wrote {}", a.model.display());
    }
    0
}

/// What `tessera train` prints: the data, the evaluation, the importances.
pub fn summary(m: &Model, secs: f64) -> String {
    let e: &Evaluation = &m.evaluation;
    let mut s = format!(
        "{} trees on {} rows ({} features, {} classes) in {:.2} s\n",
        m.params.trees,
        m.training.rows,
        m.features.len(),
        m.classes.len(),
        secs
    );
    if m.training.rows_dropped > 0 {
        s += &format!("{} rows with missing values left out\n", m.training.rows_dropped);
    }
    s += &match &e.split {
        Split::Holdout { fraction } => format!(
            "evaluated on a stratified hold-out of {} rows ({}% of each class); the saved model is grown on the other {}\n",
            e.rows_tested,
            fmt_num(fraction * 100.0),
            m.training.rows - e.rows_tested
        ),
        Split::Kfold { folds } => {
            format!(
                "evaluated by stratified {folds}-fold cross-validation ({} rows); the saved model is grown on all rows\n",
                e.rows_tested
            )
        }
    };
    s += &format!("accuracy {:.4}   balanced accuracy {:.4}\n\n", e.accuracy, e.balanced_accuracy);
    let w = m.classes.iter().map(|c| c.len()).max().unwrap_or(1).max(5);
    s += &format!("confusion (rows: true class, columns: predicted)\n{:>w$}", "");
    let cw = e.confusion.iter().flatten().map(|v| v.to_string().len()).max().unwrap_or(1).max(w);
    for c in &m.classes {
        s += &format!(" {c:>cw$}");
    }
    s += "\n";
    for (c, row) in m.classes.iter().zip(&e.confusion) {
        s += &format!("{c:>w$}");
        for v in row {
            s += &format!(" {v:>cw$}");
        }
        s += "\n";
    }
    s += &format!("\n{:>w$} precision    recall        f1   support\n", "class");
    for c in &e.per_class {
        s += &format!("{:>w$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n", c.class, c.precision, c.recall, c.f1, c.support);
    }
    let mut imp: Vec<(&String, f64)> = m.features.iter().zip(m.importances.iter().copied()).collect();
    imp.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    s += "\nfeature importances (mean decrease in impurity)";
    if imp.len() > 10 {
        s += &format!(", top 10 of {}", imp.len());
    }
    s += "\n";
    for (f, v) in imp.iter().take(10) {
        s += &format!("  {v:.4}  {f}\n");
    }
    s
}

pub fn cmd_predict(a: PredictArgs) -> i32 {
    let run = || -> Result<String, String> {
        let m = classify::read_model(&a.model)?;
        let files = expand(&a.tables)?;
        let tables = classify::predict_files(&m, &files)?;
        let refs: Vec<&crate::table::Table> = tables.iter().collect();
        let mut df = crate::table::concat(&refs).map_err(|e| e.to_string())?;
        let rows = df.height();
        match &a.out {
            Some(p) => {
                if !p.extension().is_some_and(|e| e == "csv" || e == "parquet") {
                    return Err(format!("--out {}: give a .csv or .parquet file name", p.display()));
                }
                let meta = [
                    ("tessera.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                    ("tessera.model".to_string(), a.model.display().to_string()),
                ];
                crate::exec::study::write_frame(p, &mut df, &meta)?;
                Ok(format!("{rows} rows classified into {} classes → {}\n", m.classes.len(), p.display()))
            }
            None => {
                let buf = crate::table::csv_bytes(&mut df).map_err(|e| e.to_string())?;
                let _ = std::io::stdout().lock().write_all(&buf);
                Ok(String::new())
            }
        }
    };
    match run() {
        Ok(msg) => {
            eprint!("{msg}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
