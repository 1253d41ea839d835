//! `tessera merge DIR` and `tessera stats TABLE...`: study-level tables and statistics from an
//! output folder, or from any CSV/Parquet phenotype tables.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::exec::study::write_table;
use crate::stats::analysis::{Analysis, Outputs, Request};
use crate::table::read::{Want, read_any};
use crate::table::{Column, Table};

pub fn cmd_merge(out: &Path, allow_missing: bool, json: bool) -> i32 {
    let t0 = Instant::now();
    let r = match crate::exec::merge::merge(out, allow_missing) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let incomplete = !r.not_done.is_empty();
    if json {
        let v = serde_json::json!({
            "out": out.display().to_string(),
            "samples": r.samples, "done": r.done,
            "not_done": r.not_done, "tasks_to_rerun": r.tasks_to_rerun, "task_count": r.task_count,
            "written": r.written, "errors": r.errors, "warnings": r.warnings,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let mut so = std::io::stdout().lock();
        let _ = writeln!(so, "{}: {} of {} samples done", out.display(), r.done, r.samples);
        for n in &r.not_done {
            let task = match (n.task, r.task_count) {
                (Some(k), Some(c)) => format!(" (task {k}/{c})"),
                _ => String::new(),
            };
            let what = match (&n.stage, &n.error) {
                (Some(st), Some(e)) if n.status == "failed" => format!("FAILED at stage '{st}': {e}"),
                (_, Some(e)) => format!("missing: {e}"),
                _ => "missing: no result (never run, or still running)".to_string(),
            };
            let _ = writeln!(so, "  {:<20} {what}{task}", n.sample);
        }
        if !r.tasks_to_rerun.is_empty() {
            let list: Vec<String> = r.tasks_to_rerun.iter().map(|t| t.to_string()).collect();
            let _ = writeln!(so, "tasks to re-run: {} (tessera submit --resubmit-failed {} does it)", list.join(","), out.display());
        }
        if incomplete && !allow_missing {
            let _ = writeln!(so, "nothing merged: {} samples are not done (--allow-missing merges the others)", r.not_done.len());
        }
        for p in &r.written {
            let _ = writeln!(so, "wrote {}", out.join(p).display());
        }
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    if !r.errors.is_empty() || (incomplete && !allow_missing) { 1 } else { 0 }
}

/// Expands the TABLE arguments: files as given, folders to their .csv/.parquet files, and
/// `*`/`?` patterns (for shells and schedulers that pass them unexpanded).
pub fn expand(args: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let is_table = |p: &Path| p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["csv", "tsv", "parquet", "pq"].contains(&e));
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| format!("{a}: {e}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_table(p))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(format!("{a}: no .csv or .parquet files in this folder"));
            }
            out.extend(v);
        } else if a.contains(['*', '?']) {
            let mut v = glob(&p);
            v.retain(|p| p.is_file());
            v.sort();
            if v.is_empty() {
                return Err(format!("{a}: no file matches"));
            }
            out.extend(v);
        } else if p.is_file() {
            out.push(p);
        } else {
            return Err(format!("{a}: no such file"));
        }
    }
    Ok(out)
}

/// The paths matching a pattern with `*`/`?` in any component.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    for comp in pattern.components() {
        let c = comp.as_os_str().to_string_lossy();
        if !c.contains(['*', '?']) {
            current = current.into_iter().map(|p| p.join(comp.as_os_str())).collect();
            continue;
        }
        let mut next = Vec::new();
        for dir in &current {
            let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir.as_path() };
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let name = e.file_name();
                if glob_match(c.as_bytes(), name.to_string_lossy().as_bytes()) && !name.to_string_lossy().starts_with('.') {
                    next.push(dir.join(name));
                }
            }
        }
        current = next;
    }
    current
}

/// `*` and `?` wildcard matching.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i, mut star, mut mark) = (0, 0, None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Reads the tables (first one alone, to learn the phenotypes; the rest in parallel, added in
/// order) and computes the request.
pub fn analyse_files(files: &[PathBuf], req: &Request) -> Result<Outputs, String> {
    let text = vec![req.by.clone()];
    let ids: Vec<String> = ["sample", "label"].iter().filter(|s| **s != req.by).map(|s| s.to_string()).collect();
    let keep = req.pca > 0 || req.kmeans > 0;
    let mut a = Analysis::new(req.clone());
    // Row identity for the scores (`sample`, `label`) is read as text when the files have it.
    let defaulted = req.phenotypes.is_none();
    let load = |f: &PathBuf, numeric: Option<&[String]>| -> Result<Table, String> {
        let text_if_present: &[String] = if keep { &ids } else { &[] };
        read_any(f, &Want { text: &text, numeric, text_if_present, numeric_optional: defaulted, keep_all: false })
    };
    let Some((first, rest)) = files.split_first() else { return Err("no tables given".into()) };
    let t = load(first, req.phenotypes.as_deref())?;
    let p = a.partial(&t, &format!("{}: ", first.display()))?;
    a.add(&t, p)?;
    let names: Vec<String> = a.phenotypes().map(|p| p.to_vec()).unwrap_or_default();
    // Small batches keep memory bounded (tables are dropped once reduced) while files load in
    // parallel.
    for batch in rest.chunks(4 * rayon::current_num_threads()) {
        let loaded: Vec<Result<(Table, crate::stats::Partial), String>> = batch
            .par_iter()
            .map(|f| {
                let t = load(f, Some(&names))?;
                let p = a.partial(&t, &format!("{}: ", f.display()))?;
                Ok((t, p))
            })
            .collect();
        for r in loaded {
            let (t, p) = r?;
            a.add(&t, p)?;
        }
    }
    Ok(a.finish())
}

fn cell_text(c: &Column, i: usize) -> String {
    match c {
        Column::F64(v) => crate::util::fmt_num(v[i]),
        other => crate::stats::cell(other, i),
    }
}

/// A table as aligned text: numbers right-aligned, text left-aligned.
pub fn render(t: &Table, columns: &[&str]) -> String {
    let cols: Vec<(&str, &Column)> = columns.iter().filter_map(|n| t.get(n).map(|c| (*n, c))).collect();
    let cells: Vec<Vec<String>> = cols.iter().map(|(_, c)| (0..t.rows()).map(|i| cell_text(c, i)).collect()).collect();
    let widths: Vec<usize> =
        cols.iter().zip(&cells).map(|((n, _), v)| v.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(n.len())).collect();
    let mut s = String::new();
    let line = |s: &mut String, items: Vec<(String, bool)>| {
        let parts: Vec<String> =
            items.iter().zip(&widths).map(|((x, left), w)| if *left { format!("{x:<w$}") } else { format!("{x:>w$}") }).collect();
        s.push_str(parts.join("  ").trim_end());
        s.push('\n');
    };
    line(&mut s, cols.iter().map(|(n, c)| (n.to_string(), matches!(c, Column::Str(_)))).collect());
    for i in 0..t.rows() {
        line(&mut s, cols.iter().zip(&cells).map(|((_, c), v)| (v[i].clone(), matches!(c, Column::Str(_)))).collect());
    }
    s
}

/// Where the extra tables go beside `--out FILE`: `<stem>_<what>.<ext>`.
fn beside(out: &Path, what: &str, ext: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "stats".into());
    out.with_file_name(format!("{stem}_{what}.{ext}"))
}

#[allow(clippy::too_many_arguments)]
pub fn cmd_stats(tables: &[String], req: Request, out: Option<&Path>, json: bool) -> i32 {
    let t0 = Instant::now();
    let files = match expand(tables) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if let Some(o) = out
        && !o.extension().is_some_and(|e| e == "csv" || e == "parquet")
    {
        eprintln!("error: --out {}: give a .csv or .parquet file name", o.display());
        return 2;
    }
    let o = match analyse_files(&files, &req) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut written = Vec::new();
    if let Some(path) = out {
        let meta = vec![("tessera.version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
        let mut files: Vec<(PathBuf, &Table)> = vec![(path.to_path_buf(), &o.within_between)];
        if let Some(t) = &o.pca {
            files.push((beside(path, "pca", "csv"), t));
        }
        if let Some(t) = &o.clusters {
            files.push((beside(path, "clusters", "csv"), t));
        }
        if let Some(t) = &o.centers {
            files.push((beside(path, "centers", "csv"), t));
        }
        if let Some(t) = &o.scores {
            files.push((beside(path, "scores", "parquet"), t));
        }
        for (p, t) in files {
            if let Err(e) = write_table(&p, t, &meta) {
                eprintln!("error: {}: {e}", p.display());
                return 2;
            }
            written.push(p);
        }
    }
    let mut so = std::io::stdout().lock();
    if json {
        let to_json = |t: &Table| -> serde_json::Value {
            let rows: Vec<serde_json::Value> = (0..t.rows())
                .map(|i| {
                    serde_json::Value::Object(
                        t.columns
                            .iter()
                            .map(|(n, c, _)| {
                                let v = match c {
                                    Column::F64(v) => {
                                        serde_json::Number::from_f64(v[i]).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
                                    }
                                    Column::U32(v) => serde_json::json!(v[i]),
                                    Column::U64(v) => serde_json::json!(v[i]),
                                    Column::I64(v) => serde_json::json!(v[i]),
                                    Column::Bool(v) => serde_json::json!(v[i]),
                                    Column::Str(v) => serde_json::json!(v[i]),
                                };
                                (n.clone(), v)
                            })
                            .collect(),
                    )
                })
                .collect();
            serde_json::Value::Array(rows)
        };
        let v = serde_json::json!({
            "files": files.len(), "rows": o.rows, "by": req.by, "seconds": secs,
            "within_between": to_json(&o.within_between),
            "pca": o.pca.as_ref().map(to_json),
            "clusters": o.clusters.as_ref().map(to_json),
            "centers": o.centers.as_ref().map(to_json),
            "kmeans": o.kmeans_run.map(|(it, s, inertia, conv)| serde_json::json!({
                "iterations": it, "seconds_per_iteration": s, "inertia": inertia, "converged": conv})),
            "written": written,
        });
        let _ = writeln!(so, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    let _ = writeln!(so, "{} rows from {} file{}, grouped by {}", o.rows, files.len(), if files.len() == 1 { "" } else { "s" }, req.by);
    let _ = write!(
        so,
        "{}",
        render(
            &o.within_between,
            &["phenotype", "n_groups", "n_objects", "within_cv_pct", "between_cv_pct", "ratio_pct", "icc", "anova_f", "anova_p", "note"]
        )
    );
    if let Some(p) = &o.pca {
        let _ = writeln!(so, "\nprincipal components (loadings on standardised phenotypes):");
        let names: Vec<&str> = p.names();
        let _ = write!(so, "{}", render(p, &names));
    }
    if let Some(c) = &o.centers {
        let _ = writeln!(so, "\nk-means clusters (centres in phenotype units):");
        let names: Vec<&str> = c.names();
        let _ = write!(so, "{}", render(c, &names));
        if let Some((it, s, _, conv)) = o.kmeans_run {
            let _ = writeln!(so, "{it} iterations ({:.3} s each){}", s, if conv { "" } else { ", not converged" });
        }
    }
    for p in &written {
        let _ = writeln!(so, "wrote {}", p.display());
    }
    eprintln!("tessera: {} files, {} rows in {secs:.2} s", files.len(), o.rows);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob_match(b"*.csv", b"a.csv"));
        assert!(glob_match(b"s?_*.csv", b"s1_x.y.csv"));
        assert!(!glob_match(b"*.csv", b"a.parquet"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a*b", b"acbd"));
    }
}
