//! Study-level outputs: per-sample tables stacked into `tables/<stage>.parquet` (and `.csv`
//! when the stage asks for CSV), and the `stats:` block's files under `stats/`. One function
//! for an unsharded `run` (tables from a [`Spill`] it filled as samples finished) and `tessera
//! merge` (tables read back from checkpoints or Parquet), so both write the same bytes.
//!
//! Memory does not grow with the study: samples' tables are taken one sample at a time, in
//! manifest order, twice — a first pass checks them, finds the merged columns and reduces the
//! statistics, a second writes the merged files a batch of rows at a time. (PCA and k-means,
//! when asked, keep their phenotype columns of every row.)
//!
//! Before stacking it checks what a merge can get wrong: every sample's table must have the
//! first one's columns and types (schema drift: outputs of different pipeline versions), must
//! name its own sample, and must not repeat a label.

use std::path::{Path, PathBuf};

use crate::io::Spacing;
use crate::ops::Kind;
use crate::plan::{Format, Plan};
use crate::stats::analysis::Outputs;
use crate::table::{Column, Table};

fn type_name(c: &Column) -> &'static str {
    match c {
        Column::U32(_) => "u32",
        Column::U64(_) => "u64",
        Column::I64(_) => "i64",
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
    let mut first = None;
    tables.iter().try_for_each(|(id, t)| check_next(stage, &mut first, id, t))
}

/// [`check`] for one more table: `first` is the first sample's id and columns (set by the
/// first call).
fn check_next(stage: &str, first: &mut Option<(String, Vec<(String, &'static str)>)>, id: &str, t: &Table) -> Result<(), String> {
    let (first_id, want) = first.get_or_insert_with(|| (id.to_string(), schema(t)));
    let got = schema(t);
    if got != *want {
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
        && let Some(other) = s.iter().find(|s| s.as_str() != id)
    {
        return Err(format!("table '{stage}' of sample '{id}' holds rows of sample '{other}'"));
    }
    if let Some(Column::U32(l)) = t.get("label")
        && let Some(w) = l.windows(2).find(|w| w[1] <= w[0])
    {
        let what = if w[1] == w[0] { "repeats" } else { "is out of order at" };
        return Err(format!("table '{stage}' of sample '{id}' {what} label {}", w[1]));
    }
    Ok(())
}

/// Told each finished sample's id and tables (stage index, table), or why they could not be
/// read; returns whether to go on.
pub type Visit<'v> = dyn FnMut(&str, Result<Vec<(usize, Table)>, String>) -> bool + 'v;

/// The finished samples of a study: `each` calls its visitor with them one at a time, in
/// manifest order, until it returns `false` — as often as asked (the study is read twice).
pub struct Samples<'a> {
    pub each: &'a (dyn Fn(&mut Visit) + 'a),
}

/// Where one record of a [`Spill`] is in its file: 24 bytes per record in memory.
#[derive(Clone, Copy)]
struct Placed {
    row: u32,
    slot: u32,
    off: u64,
    len: u64,
}

/// Records (bytes, per manifest row and slot) set aside on disk as samples finish, in any
/// order, to be read back in manifest order: memory holds 24 bytes per record instead of the
/// records. Used for the samples' tables (merged after the last sample) and their entries in
/// `run.json`. The file is a temporary one in `.tessera/`, removed when the spill is dropped.
pub struct Spill {
    path: PathBuf,
    file: std::sync::Mutex<(std::fs::File, u64)>,
    /// Where each record is, and whether that list is in (row, slot) order.
    at: std::sync::Mutex<(Vec<Placed>, bool)>,
}

/// The slot of a sample's id among its tables (the others are stage indices).
const ID_SLOT: u32 = u32::MAX;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Spill {
    /// A new spill file `.tessera/<name>.<random>` in the output folder, for about `records`
    /// records (their places are reserved at once: a list that grows by doubling would copy
    /// itself and for a while take three times the room).
    pub fn create(out: &Path, name: &str, records: usize) -> Result<Spill, String> {
        let dir = out.join(".tessera");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        crate::util::remove_stale_tmp(&dir);
        let path = crate::util::tmp_sibling(&dir.join(name));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Spill { path, file: std::sync::Mutex::new((f, 0)), at: std::sync::Mutex::new((Vec::with_capacity(records), true)) })
    }

    /// Sets aside one record of manifest row `row`.
    pub fn put(&self, row: usize, slot: u32, bytes: &[u8]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let off = {
            let mut g = lock(&self.file);
            let off = g.1;
            g.0.write_all_at(bytes, off).map_err(|e| format!("{}: {e}", self.path.display()))?;
            g.1 += bytes.len() as u64;
            off
        };
        let mut at = lock(&self.at);
        let p = Placed { row: row as u32, slot, off, len: bytes.len() as u64 };
        if at.0.last().is_some_and(|l| (l.row, l.slot) > (p.row, p.slot)) {
            at.1 = false;
        }
        at.0.push(p);
        Ok(())
    }

    /// The list of places in (row, slot) order.
    fn sorted(&self) -> std::sync::MutexGuard<'_, (Vec<Placed>, bool)> {
        let mut at = lock(&self.at);
        if !at.1 {
            at.0.sort_unstable_by_key(|p| (p.row, p.slot));
            at.1 = true;
        }
        at
    }

    /// The records set aside for manifest row `row`, in slot order.
    pub fn get(&self, row: usize) -> Result<Vec<(u32, Vec<u8>)>, String> {
        use std::os::unix::fs::FileExt;
        let placed: Vec<Placed> = {
            let at = self.sorted();
            let row = row as u32;
            let from = at.0.partition_point(|p| p.row < row);
            at.0[from..].iter().take_while(|p| p.row == row).copied().collect()
        };
        let g = lock(&self.file);
        placed
            .into_iter()
            .map(|p| {
                let mut b = vec![0u8; p.len as usize];
                g.0.read_exact_at(&mut b, p.off).map_err(|e| format!("{}: {e}", self.path.display()))?;
                Ok((p.slot, b))
            })
            .collect()
    }

    /// The rows that have records, in order (read when all are set aside).
    pub fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        drop(self.sorted());
        let mut pos = 0;
        std::iter::from_fn(move || {
            let at = lock(&self.at);
            let row = at.0.get(pos)?.row;
            pos += at.0[pos..].iter().take_while(|p| p.row == row).count();
            Some(row as usize)
        })
    }

    /// Sets aside a finished sample's id and tables.
    pub fn put_tables(&self, row: usize, id: &str, tables: &[(usize, Table)]) -> Result<(), String> {
        self.put(row, ID_SLOT, id.as_bytes())?;
        tables.iter().try_for_each(|(i, t)| self.put(row, *i as u32, &crate::store::encode_table(t)))
    }

    /// The id and tables set aside for manifest row `row` ([`Spill::put_tables`]).
    pub fn tables(&self, row: usize) -> (String, Result<Vec<(usize, Table)>, String>) {
        let records = match self.get(row) {
            Ok(r) => r,
            Err(e) => return (format!("row {}", row + 1), Err(e)),
        };
        let mut id = format!("row {}", row + 1);
        let mut tables = Vec::new();
        for (slot, b) in records {
            if slot == ID_SLOT {
                id = String::from_utf8_lossy(&b).into_owned();
            } else {
                match crate::store::decode_table(&b) {
                    Some(t) => tables.push((slot as usize, t)),
                    None => return (id, Err(format!("{}: a set-aside table does not decode", self.path.display()))),
                }
            }
        }
        (id, Ok(tables))
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // A run without checkpoints leaves no `.tessera/` behind (removing a folder fails, and
        // nothing happens, while anything is in it).
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
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
    write_frame(path, &mut t.to_frame().map_err(|e| e.to_string())?, meta)
}

/// [`write_table`] for a frame already built (tables concatenated).
pub fn write_frame(path: &Path, df: &mut polars::prelude::DataFrame, meta: &[(String, String)]) -> Result<(), String> {
    if path.extension().is_some_and(|e| e == "parquet") {
        crate::table::write_parquet(path, df, meta).map_err(|e| e.to_string())
    } else {
        crate::table::write_csv(path, df).map_err(|e| e.to_string())
    }
}

/// Calls `f` with each sample's id and tables, in order, while it returns `true`; `Err` names
/// the sample whose tables could not be read.
fn each_sample(samples: &Samples, mut f: impl FnMut(&str, &[(usize, Table)]) -> bool) -> Result<(), String> {
    let mut failed = None;
    (samples.each)(&mut |id, tables| match tables {
        Ok(t) => f(id, &t),
        Err(e) => {
            failed = Some(format!("reading the tables of sample '{id}': {e}"));
            false
        }
    });
    failed.map_or(Ok(()), Err)
}

/// One table stage of the study: its merged columns so far, the first sample's columns (for
/// the drift check), and what went wrong with it.
#[derive(Default)]
struct StageState {
    union: Vec<(String, Column, Option<String>)>,
    first: Option<(String, Vec<(String, &'static str)>)>,
    error: Option<String>,
}

/// Writes merged tables and statistics from the finished samples' tables (in manifest order).
/// Returns the files written and the problems met (each naming its stage).
pub fn write(plan: &Plan, out: &Path, samples: &Samples, spacing: &Spacing) -> (Vec<PathBuf>, Vec<String>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for d in [out.to_path_buf(), out.join("tables"), out.join("stats")] {
        crate::util::remove_stale_tmp(&d);
    }
    let merged: Vec<(usize, &[Format])> =
        plan.outputs.iter().filter(|(i, _)| plan.stages[*i].kind == Kind::Table).map(|(i, f)| (*i, f.as_slice())).collect();
    let stats_stage = plan.stats.as_ref().map(|st| st.table);
    let mut states: std::collections::BTreeMap<usize, StageState> = Default::default();
    for i in merged.iter().map(|(i, _)| *i).chain(stats_stage) {
        states.entry(i).or_default();
    }
    let mut analysis = plan.stats.as_ref().map(|st| crate::stats::analysis::Analysis::new(st.request.clone()));
    let mut stats_error: Option<String> = None;

    // First pass: checks, merged columns, statistics.
    let first = each_sample(samples, |id, tables| {
        for (i, t) in tables {
            let Some(state) = states.get_mut(i) else { continue };
            if state.error.is_some() {
                continue;
            }
            if let Err(e) = check_next(&plan.stages[*i].id, &mut state.first, id, t) {
                state.error = Some(e);
                continue;
            }
            crate::table::extend_schema(&mut state.union, t);
            if Some(*i) == stats_stage
                && stats_error.is_none()
                && let Some(a) = analysis.as_mut()
                && let Err(e) = a.partial(t, "").and_then(|p| a.add(t, p))
            {
                stats_error = Some(e);
            }
        }
        true
    });
    if let Err(e) = first {
        errors.push(format!("merged tables and statistics: {e}"));
        return (written, errors);
    }

    // Second pass: the merged files, a batch of rows at a time.
    let mut writers: Vec<(usize, Vec<PathBuf>, crate::table::TableWriter)> = Vec::new();
    for (i, formats) in &merged {
        let stage = &plan.stages[*i].id;
        let state = &states[i];
        if let Some(e) = &state.error {
            errors.push(format!("merged table '{stage}': {e}"));
            continue;
        }
        let meta = super::table_metadata(plan, &Table { columns: state.union.clone() }, spacing);
        let mut files = vec![PathBuf::from("tables").join(format!("{stage}.parquet"))];
        if formats.contains(&Format::Table(crate::table::TableFormat::Csv)) {
            files.push(PathBuf::from("tables").join(format!("{stage}.csv")));
        }
        let paths: Vec<PathBuf> = files.iter().map(|p| out.join(p)).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        match crate::table::TableWriter::create(&refs, state.union.clone(), &meta) {
            Ok(w) => writers.push((*i, files, w)),
            Err(e) => errors.push(format!("merged table '{stage}': {e}")),
        }
    }
    let mut failed: Vec<(usize, String)> = Vec::new();
    if !writers.is_empty() {
        let second = each_sample(samples, |_, tables| {
            for (i, t) in tables {
                if let Some((_, _, w)) = writers.iter_mut().find(|(j, _, _)| j == i)
                    && let Err(e) = w.push(t)
                {
                    failed.push((*i, e.to_string()));
                }
            }
            failed.is_empty()
        });
        if let Err(e) = second {
            errors.push(format!("merged tables: {e}"));
            return (written, errors);
        }
    }
    for (i, files, w) in writers {
        let stage = &plan.stages[i].id;
        let res = match failed.iter().find(|(j, _)| *j == i) {
            Some((_, e)) => Err(e.clone()),
            None => w.finish().map_err(|e| e.to_string()),
        };
        match res {
            Ok(()) => written.extend(files),
            Err(e) => errors.push(format!("merged table '{stage}': {e}")),
        }
    }

    if let (Some(st), Some(a)) = (&plan.stats, analysis) {
        let stage = &plan.stages[st.table].id;
        let result = (|| -> Result<(), String> {
            if let Some(e) = states.get(&st.table).and_then(|s| s.error.clone()).or(stats_error) {
                return Err(e);
            }
            let o = a.finish();
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
    // The files stages read (a `classify` model), kept beside the results they gave, for the
    // report and for whoever asks later which model labelled these rows.
    for f in &plan.files {
        let p = PathBuf::from(format!("{}s", f.param)).join(format!("{}.{}.json", f.stage, f.param));
        let res = std::fs::create_dir_all(out.join(p.parent().unwrap_or(Path::new(""))))
            .and_then(|_| crate::util::write_atomic(&out.join(&p), &f.bytes));
        match res {
            Ok(()) => written.push(p),
            Err(e) => errors.push(format!("stage '{}': keeping {}: {e}", f.stage, f.path.display())),
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

    #[test]
    fn spilled_tables_come_back_by_row_whatever_the_order_they_were_put_in() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path(), "study-tables", 8).unwrap();
        let (a, b) = (t("a", vec![1, 2], true), t("b", vec![1], false));
        spill.put_tables(3, "b", &[(5, b.clone())]).unwrap();
        spill.put_tables(0, "a", &[(7, b.clone()), (5, a.clone())]).unwrap();
        spill.put(2, 0, b"only bytes").unwrap();
        assert_eq!(spill.rows().collect::<Vec<_>>(), vec![0, 2, 3]);
        let (id, tables) = spill.tables(0);
        assert_eq!((id.as_str(), tables.unwrap()), ("a", vec![(5, a), (7, b.clone())]), "tables in stage order");
        assert_eq!(spill.tables(3).1.unwrap(), vec![(5, b)]);
        assert_eq!(spill.get(2).unwrap(), vec![(0, b"only bytes".to_vec())]);
        assert!(spill.get(1).unwrap().is_empty(), "a row never put has no records");
        let path = spill.path.clone();
        assert!(path.starts_with(dir.path().join(".tessera")));
        drop(spill);
        assert!(!path.exists(), "the spill file goes with the spill");
    }
}
