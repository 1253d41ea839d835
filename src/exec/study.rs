//! Study-level outputs: per-sample tables stacked into `tables/<stage>.parquet` (and `.csv`
//! when the stage asks for CSV), and the `stats:` block's files under `stats/`. One function
//! for an unsharded `run` (tables in memory) and `tessera merge` (tables read back), so both
//! write the same bytes.
//!
//! Before stacking it checks what a merge can get wrong: every sample's table must have the
//! first one's columns and types (schema drift: outputs of different pipeline versions), must
//! name its own sample, and must not repeat a label.

use std::path::{Path, PathBuf};

use crate::io::Spacing;
use crate::ops::Kind;
use crate::plan::{Format, Plan};
use crate::stats::analysis::{Outputs, analyse};
use crate::table::{Column, Table};

fn type_name(c: &Column) -> &'static str {
    match c {
        Column::U32(_) => "u32",
        Column::U64(_) => "u64",
        Column::F64(_) => "f64",
        Column::Str(_) => "text",
        Column::Bool(_) => "bool",
    }
}

/// Columns only 3D images have: a study may mix 2D and 3D samples.
fn only_3d(name: &str) -> bool {
    name == "centroid_z" || name.starts_with("bbox_z") || name == "inertia_eig_2"
}

fn schema(t: &Table) -> Vec<(String, &'static str)> {
    t.columns.iter().filter(|(n, _, _)| !only_3d(n)).map(|(n, c, _)| (n.clone(), type_name(c))).collect()
}

/// Schema drift and duplicate checks over the tables of one stage, in sample order. Tables
/// may differ only by the columns 3D images add (`centroid_z`, `bbox_z*`, `inertia_eig_2`).
pub fn check(stage: &str, tables: &[(&str, &Table)]) -> Result<(), String> {
    let Some((first_id, first)) = tables.first() else { return Ok(()) };
    let want = schema(first);
    for (id, t) in tables {
        let got = schema(t);
        if got != want {
            let missing: Vec<String> = want.iter().filter(|c| !got.contains(c)).map(|(n, ty)| format!("{n} ({ty})")).collect();
            let extra: Vec<String> = got.iter().filter(|c| !want.contains(c)).map(|(n, ty)| format!("{n} ({ty})")).collect();
            return Err(format!(
                "table '{stage}' of sample '{id}' has other columns than sample '{first_id}' (schema drift: outputs of different \
                 pipelines?): missing [{}], extra [{}]; re-run that sample with the current pipeline",
                missing.join(", "),
                extra.join(", ")
            ));
        }
        if let Some(Column::Str(s)) = t.get("sample")
            && let Some(other) = s.iter().find(|s| s.as_str() != *id)
        {
            return Err(format!("table '{stage}' of sample '{id}' holds rows of sample '{other}'"));
        }
        if let Some(Column::U32(l)) = t.get("label")
            && let Some(w) = l.windows(2).find(|w| w[1] <= w[0])
        {
            let what = if w[1] == w[0] { "repeats" } else { "is out of order at" };
            return Err(format!("table '{stage}' of sample '{id}' {what} label {}", w[1]));
        }
    }
    Ok(())
}

/// The files of a `stats:` block, relative to the output folder, with the tables to write.
fn stats_files<'a>(stage: &str, o: &'a Outputs) -> Vec<(PathBuf, Option<&'a Table>)> {
    let base = |suffix: &str, ext: &str| PathBuf::from("stats").join(format!("{stage}_{suffix}.{ext}"));
    vec![
        (base("within_between", "csv"), Some(&o.within_between)),
        (base("within_between", "parquet"), Some(&o.within_between)),
        (base("pca", "csv"), o.pca.as_ref()),
        (base("clusters", "csv"), o.clusters.as_ref()),
        (base("centers", "csv"), o.centers.as_ref()),
        (base("scores", "parquet"), o.scores.as_ref()),
    ]
}

/// Writes a table as CSV or Parquet (by extension) with the given metadata.
pub fn write_table(path: &Path, t: &Table, meta: &[(String, String)]) -> Result<(), String> {
    let mut df = t.to_frame().map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "parquet") {
        crate::table::write_parquet(path, &mut df, meta).map_err(|e| e.to_string())
    } else {
        crate::table::write_csv(path, &mut df).map_err(|e| e.to_string())
    }
}

/// Writes merged tables and statistics from the finished samples' tables (in manifest order).
/// Returns the files written and the problems met (each naming its stage).
pub fn write(plan: &Plan, out: &Path, samples: &[(&str, &[(usize, Table)])], spacing: &Spacing) -> (Vec<PathBuf>, Vec<String>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for d in [out.to_path_buf(), out.join("tables"), out.join("stats")] {
        crate::util::remove_stale_tmp(&d);
    }
    let of_stage = |i: usize| -> Vec<(&str, &Table)> {
        samples.iter().filter_map(|(id, ts)| ts.iter().find(|(j, _)| *j == i).map(|(_, t)| (*id, t))).collect()
    };
    for (i, formats) in &plan.outputs {
        if plan.stages[*i].kind != Kind::Table {
            continue;
        }
        let stage = &plan.stages[*i].id;
        let tables = of_stage(*i);
        let result = (|| -> Result<(), String> {
            check(stage, &tables)?;
            let refs: Vec<&Table> = tables.iter().map(|(_, t)| *t).collect();
            let mut df = crate::table::concat(&refs).map_err(|e| e.to_string())?;
            let meta = refs.first().map(|t| super::table_metadata(plan, t, spacing)).unwrap_or_default();
            let p = PathBuf::from("tables").join(format!("{stage}.parquet"));
            crate::table::write_parquet(&out.join(&p), &mut df, &meta).map_err(|e| e.to_string())?;
            written.push(p);
            if formats.contains(&Format::Csv) {
                let p = PathBuf::from("tables").join(format!("{stage}.csv"));
                crate::table::write_csv(&out.join(&p), &mut df).map_err(|e| e.to_string())?;
                written.push(p);
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(format!("merged table '{stage}': {e}"));
        }
    }
    if let Some(st) = &plan.stats {
        let stage = &plan.stages[st.table].id;
        let tables = of_stage(st.table);
        let result = (|| -> Result<(), String> {
            check(stage, &tables)?;
            let refs: Vec<&Table> = tables.iter().map(|(_, t)| *t).collect();
            let o = analyse(&refs, &st.request)?;
            let meta = vec![("tessera.pipeline_hash".to_string(), plan.hash.clone())];
            for (p, t) in stats_files(stage, &o) {
                match t {
                    Some(t) => {
                        write_table(&out.join(&p), t, &meta)?;
                        written.push(p);
                    }
                    // A file of an earlier configuration (say, PCA since switched off).
                    None => {
                        let _ = std::fs::remove_file(out.join(&p));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(format!("statistics of '{stage}': {e}"));
        }
    }
    (written, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sample: &str, labels: Vec<u32>, vol: bool) -> Table {
        let mut t = Table::default();
        t.push("sample", Column::Str(vec![sample.into(); labels.len()]), None);
        let n = labels.len();
        t.push("label", Column::U32(labels), None);
        if vol {
            t.push("volume", Column::F64(vec![1.0; n]), None);
        } else {
            t.push("volume", Column::U64(vec![1; n]), None);
        }
        t
    }

    #[test]
    fn drift_and_duplicates_are_named() {
        let (a, mut b) = (t("a", vec![1, 2], true), t("b", vec![1], true));
        b.push("centroid_z", Column::F64(vec![0.5]), None);
        assert!(check("shape", &[("a", &a), ("b", &b)]).is_ok(), "2D and 3D samples mix");
        let c = t("c", vec![1], false);
        let e = check("shape", &[("a", &a), ("c", &c)]).unwrap_err();
        assert!(e.contains("sample 'c'") && e.contains("missing [volume (f64)], extra [volume (u64)]"), "{e}");
        let d = t("d", vec![1, 1], true);
        assert!(check("shape", &[("d", &d)]).unwrap_err().contains("repeats label 1"));
        assert!(check("shape", &[("x", &a)]).unwrap_err().contains("holds rows of sample 'a'"));
    }
}
