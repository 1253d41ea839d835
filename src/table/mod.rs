//! Phenotype tables: the per-object [`Table`] ops produce, and its Parquet/CSV files via polars.
//!
//! Ops build a small column store with no polars types in it; this module alone turns tables
//! into polars frames, stacks per-sample tables into the merged study table (columns missing
//! from a sample are null), and writes Parquet with units and provenance as key-value metadata.

use std::path::Path;

pub mod read;

use polars::prelude::*;

/// A table file format (the per-sample, merged and statistics tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Csv,
}

impl TableFormat {
    pub fn ext(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Csv => "csv",
        }
    }
    /// The format a pipeline's `outputs:` names.
    pub fn parse(name: &str) -> Option<TableFormat> {
        match name {
            "parquet" => Some(TableFormat::Parquet),
            "csv" => Some(TableFormat::Csv),
            _ => None,
        }
    }
}

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    U32(Vec<u32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Str(Vec<String>),
    Bool(Vec<bool>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::U32(v) => v.len(),
            Column::U64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A table: named columns of equal length, each with an optional physical unit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<(String, Column, Option<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {msg}")]
    Write { path: String, msg: String },
    #[error("{0}")]
    Polars(#[from] PolarsError),
}

impl Table {
    pub fn push(&mut self, name: &str, col: Column, unit: Option<String>) {
        self.columns.push((name.to_string(), col, unit));
    }
    pub fn rows(&self) -> usize {
        self.columns.first().map(|c| c.1.len()).unwrap_or(0)
    }
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.0.as_str()).collect()
    }
    pub fn get(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.0 == name).map(|c| &c.1)
    }
    pub fn f64(&self, name: &str) -> Vec<f64> {
        match self.get(name) {
            Some(Column::F64(v)) => v.clone(),
            other => panic!("column {name} is not f64: {other:?}"),
        }
    }
    pub fn u64(&self, name: &str) -> Vec<u64> {
        match self.get(name) {
            Some(Column::U64(v)) => v.clone(),
            other => panic!("column {name} is not u64: {other:?}"),
        }
    }
    pub fn u32(&self, name: &str) -> Vec<u32> {
        match self.get(name) {
            Some(Column::U32(v)) => v.clone(),
            other => panic!("column {name} is not u32: {other:?}"),
        }
    }

    /// The table as a sample's table: `sample`, then `label`, then the sample's metadata
    /// columns, then the features.
    pub fn for_sample(&self, sample: &str, meta: &[(String, String)]) -> Table {
        let n = self.rows();
        let mut t = Table::default();
        t.push("sample", Column::Str(vec![sample.to_string(); n]), None);
        let mut rest = self.columns.clone();
        if let Some(i) = rest.iter().position(|c| c.0 == "label") {
            t.columns.push(rest.remove(i));
        }
        for (k, v) in meta {
            if k != "label" && !rest.iter().any(|c| &c.0 == k) {
                t.push(k, Column::Str(vec![v.clone(); n]), None);
            }
        }
        t.columns.extend(rest);
        t
    }

    /// Units of the columns that have one.
    pub fn units(&self) -> Vec<(String, String)> {
        self.columns.iter().filter_map(|(n, _, u)| u.clone().map(|u| (n.clone(), u))).collect()
    }

    pub fn to_frame(&self) -> Result<DataFrame, TableError> {
        let cols: Vec<polars::prelude::Column> = self
            .columns
            .iter()
            .map(|(name, c, _)| {
                let name = PlSmallStr::from(name.as_str());
                match c {
                    Column::U32(v) => polars::prelude::Column::new(name, v),
                    Column::U64(v) => polars::prelude::Column::new(name, v),
                    Column::I64(v) => polars::prelude::Column::new(name, v),
                    Column::F64(v) => polars::prelude::Column::new(name, v),
                    Column::Str(v) => polars::prelude::Column::new(name, v),
                    Column::Bool(v) => polars::prelude::Column::new(name, v),
                }
            })
            .collect();
        Ok(DataFrame::new(self.rows(), cols)?)
    }
}

/// The union of the tables' columns in first-seen order (name and a column of its type, empty).
pub fn union_schema(tables: &[&Table]) -> Vec<(String, Column, Option<String>)> {
    let mut u = Vec::new();
    for t in tables {
        extend_schema(&mut u, t);
    }
    u
}

/// Adds the columns of `t` that `schema` lacks, at its end (empty, with their units).
pub fn extend_schema(schema: &mut Vec<(String, Column, Option<String>)>, t: &Table) {
    for (n, c, unit) in &t.columns {
        if !schema.iter().any(|(m, _, _)| m == n) {
            let empty = match c {
                Column::U32(_) => Column::U32(Vec::new()),
                Column::U64(_) => Column::U64(Vec::new()),
                Column::I64(_) => Column::I64(Vec::new()),
                Column::F64(_) => Column::F64(Vec::new()),
                Column::Str(_) => Column::Str(Vec::new()),
                Column::Bool(_) => Column::Bool(Vec::new()),
            };
            schema.push((n.clone(), empty, unit.clone()));
        }
    }
}

/// Stacks tables (in the given order) into one frame. Columns are the union in first-seen
/// order; a column a table lacks is null in its rows.
pub fn concat(tables: &[&Table]) -> Result<DataFrame, TableError> {
    concat_as(tables, &union_schema(tables))
}

/// Stacks tables into one frame with the columns of `schema` ([`union_schema`]), in its order;
/// a column a table lacks is null in its rows.
pub fn concat_as(tables: &[&Table], schema: &[(String, Column, Option<String>)]) -> Result<DataFrame, TableError> {
    let total: usize = tables.iter().map(|t| t.rows()).sum();
    let cols = schema
        .iter()
        .map(|(name, proto, _)| {
            let mut g = Gathered::of(proto);
            for t in tables {
                g.push(t.get(name), t.rows());
            }
            g.take(name)
        })
        .collect();
    Ok(DataFrame::new(total, cols)?)
}

/// Values (rows × columns) gathered before [`TableWriter`] writes them as one batch, one
/// Parquet row group: 1 MiB of numbers, whatever the number of tables pushed.
pub const BATCH_VALUES: usize = 1 << 17;

/// One column of the rows gathered for the next batch.
enum Gathered {
    U32(Vec<Option<u32>>),
    U64(Vec<Option<u64>>),
    I64(Vec<Option<i64>>),
    F64(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

impl Gathered {
    fn of(proto: &Column) -> Gathered {
        match proto {
            Column::U32(_) => Gathered::U32(Vec::new()),
            Column::U64(_) => Gathered::U64(Vec::new()),
            Column::I64(_) => Gathered::I64(Vec::new()),
            Column::F64(_) => Gathered::F64(Vec::new()),
            Column::Str(_) => Gathered::Str(Vec::new()),
            Column::Bool(_) => Gathered::Bool(Vec::new()),
        }
    }
    /// Appends `col`'s values, or `rows` nulls when the table lacks the column (or has it with
    /// another type).
    fn push(&mut self, col: Option<&Column>, rows: usize) {
        macro_rules! extend {
            ($v:expr, $var:ident) => {
                match col {
                    Some(Column::$var(x)) => $v.extend(x.iter().cloned().map(Some)),
                    _ => $v.extend(std::iter::repeat_n(None, rows)),
                }
            };
        }
        match self {
            Gathered::U32(v) => extend!(v, U32),
            Gathered::U64(v) => extend!(v, U64),
            Gathered::I64(v) => extend!(v, I64),
            Gathered::F64(v) => extend!(v, F64),
            Gathered::Str(v) => extend!(v, Str),
            Gathered::Bool(v) => extend!(v, Bool),
        }
    }
    fn take(&mut self, name: &str) -> polars::prelude::Column {
        let name = PlSmallStr::from(name);
        match self {
            Gathered::U32(v) => polars::prelude::Column::new(name, std::mem::take(v)),
            Gathered::U64(v) => polars::prelude::Column::new(name, std::mem::take(v)),
            Gathered::I64(v) => polars::prelude::Column::new(name, std::mem::take(v)),
            Gathered::F64(v) => polars::prelude::Column::new(name, std::mem::take(v)),
            Gathered::Str(v) => polars::prelude::Column::new(name, std::mem::take(v)),
            Gathered::Bool(v) => polars::prelude::Column::new(name, std::mem::take(v)),
        }
    }
}

type SharedFile = crate::util::Shared<std::io::BufWriter<std::fs::File>>;

enum TableEnc {
    Parquet(Box<polars::io::parquet::write::BatchedWriter<SharedFile>>),
    Csv(polars::io::csv::write::BatchedWriter<SharedFile>),
}

/// One file of a [`TableWriter`]: where it goes, its temporary file while written, its encoder.
struct TableFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<SharedFile>,
    enc: Option<TableEnc>,
}

/// A merged table written to one or more files (Parquet or CSV, by each path's extension) as
/// tables are pushed: their rows are gathered column by column and written a batch of
/// [`BATCH_VALUES`] at a time, so a study's table never has to be in memory whole. Each batch
/// is one Parquet row group; a table written in one batch has the bytes [`write_parquet`] /
/// [`write_csv`] give it. The files appear (temporary file, checked close, rename) at
/// [`TableWriter::finish`]; a writer dropped before leaves none. Batches are encoded on the
/// calling thread: encoding them on polars' own pool made a 10,000-sample merge peak about
/// 10 MiB higher (buffers allocated on its threads, freed on this one), for a step that is a
/// small part of a study's time.
pub struct TableWriter {
    files: Vec<TableFile>,
    schema: Vec<(String, Column, Option<String>)>,
    gathered: Vec<Gathered>,
    rows: usize,
    /// Whether a batch has been written (a table with no rows still gets one, empty).
    wrote: bool,
}

impl TableWriter {
    /// Starts `paths` for tables of `schema` ([`union_schema`]); `metadata` goes into a Parquet
    /// file's key-value metadata (a CSV file has none).
    pub fn create(
        paths: &[&Path],
        schema: Vec<(String, Column, Option<String>)>,
        metadata: &[(String, String)],
    ) -> Result<Self, TableError> {
        let frame_schema = concat_as(&[], &schema)?.schema().as_ref().clone();
        let mut files = Vec::new();
        for path in paths {
            let err = |msg: String| TableError::Write { path: path.display().to_string(), msg };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let tmp = crate::util::tmp_sibling(path);
            let f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
            // Registered before the encoder starts, so that a failure below removes the file.
            files.push(TableFile { path: path.to_path_buf(), tmp, file: None, enc: None });
            let file = crate::util::Shared::new(std::io::BufWriter::with_capacity(1 << 20, f));
            let enc = if path.extension().is_some_and(|e| e == "parquet") {
                TableEnc::Parquet(Box::new(
                    ParquetWriter::new(file.clone())
                        .with_key_value_metadata(Some(KeyValueMetadata::from_static(metadata.to_vec())))
                        .with_statistics(StatisticsOptions::default())
                        .set_parallel(false)
                        .batched(&frame_schema)?,
                ))
            } else {
                TableEnc::Csv(CsvWriter::new(file.clone()).include_header(true).n_threads(1).batched(&frame_schema)?)
            };
            let last = files.last_mut().expect("pushed above");
            (last.file, last.enc) = (Some(file), Some(enc));
        }
        let gathered = schema.iter().map(|(_, c, _)| Gathered::of(c)).collect();
        Ok(TableWriter { files, schema, gathered, rows: 0, wrote: false })
    }

    /// Adds a table's rows (columns it lacks are null), writing a batch when enough are gathered.
    pub fn push(&mut self, t: &Table) -> Result<(), TableError> {
        let rows = t.rows();
        for ((name, _, _), g) in self.schema.iter().zip(&mut self.gathered) {
            g.push(t.get(name), rows);
        }
        self.rows += rows;
        if self.rows * self.schema.len().max(1) >= BATCH_VALUES { self.flush() } else { Ok(()) }
    }

    /// Writes the gathered rows as one batch.
    fn flush(&mut self) -> Result<(), TableError> {
        let cols: Vec<polars::prelude::Column> = self.schema.iter().zip(&mut self.gathered).map(|((n, _, _), g)| g.take(n)).collect();
        let df = DataFrame::new(self.rows, cols)?;
        for f in &mut self.files {
            match &mut f.enc {
                Some(TableEnc::Parquet(w)) => w.write_batch(&df)?,
                Some(TableEnc::Csv(w)) => w.write_batch(&df)?,
                None => {}
            }
        }
        self.rows = 0;
        self.wrote = true;
        Ok(())
    }

    /// Writes what is gathered and completes every file.
    pub fn finish(mut self) -> Result<(), TableError> {
        if self.rows > 0 || !self.wrote {
            self.flush()?;
        }
        for f in &mut self.files {
            let err = |msg: String| TableError::Write { path: f.path.display().to_string(), msg };
            match f.enc.take() {
                Some(TableEnc::Parquet(w)) => {
                    w.finish()?;
                }
                Some(TableEnc::Csv(mut w)) => w.finish()?,
                None => {}
            }
            let buf = f
                .file
                .take()
                .and_then(crate::util::Shared::into_inner)
                .ok_or_else(|| err("internal: the table writer is still in use".into()))?;
            let file = buf.into_inner().map_err(|e| err(e.error().to_string()))?;
            crate::util::finish_file(file).map_err(|e| err(e.to_string()))?;
        }
        for f in &mut self.files {
            std::fs::rename(&f.tmp, &f.path).map_err(|e| TableError::Write { path: f.path.display().to_string(), msg: e.to_string() })?;
            f.tmp = std::path::PathBuf::new();
        }
        Ok(())
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        // Files not completed (dropped early, or a failed finish) leave nothing behind.
        for f in &self.files {
            if !f.tmp.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&f.tmp);
            }
        }
    }
}

/// Writes a frame as Parquet with string key-value metadata, atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame, metadata: &[(String, String)]) -> Result<(), TableError> {
    let err = |msg: String| TableError::Write { path: path.display().to_string(), msg };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = crate::util::tmp_sibling(path);
    let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    // Buffered: the Parquet writer issues many tiny writes (thousands of 1-byte ones per table).
    let mut buf = std::io::BufWriter::with_capacity(1 << 20, file);
    let res = ParquetWriter::new(&mut buf)
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(metadata.to_vec())))
        .with_statistics(StatisticsOptions::default())
        .finish(df);
    let res = res
        .map_err(TableError::from)
        .and_then(|_| buf.into_inner().map_err(|e| err(e.error().to_string())))
        .and_then(|f| crate::util::finish_file(f).map_err(|e| err(e.to_string())));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// A frame as CSV text (header row, comma-separated).
pub fn csv_bytes(df: &mut DataFrame) -> Result<Vec<u8>, TableError> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df)?;
    Ok(buf)
}

/// Writes a frame as CSV ([`csv_bytes`]), atomically.
pub fn write_csv(path: &Path, df: &mut DataFrame) -> Result<(), TableError> {
    let buf = csv_bytes(df)?;
    crate::util::write_atomic(path, &buf).map_err(|e| TableError::Write { path: path.display().to_string(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: usize, with_z: bool) -> Table {
        let mut t = Table::default();
        t.push("label", Column::U32((1..=rows as u32).collect()), None);
        t.push("volume", Column::F64(vec![1.5; rows]), Some("um^3".into()));
        if with_z {
            t.push("centroid_z", Column::F64(vec![2.0; rows]), Some("um".into()));
        }
        t
    }

    #[test]
    fn sample_columns_come_first() {
        let s = t(2, false).for_sample("a", &[("group".into(), "ctrl".into())]);
        assert_eq!(s.names(), vec!["sample", "label", "group", "volume"]);
        assert_eq!(s.units(), vec![("volume".to_string(), "um^3".to_string())]);
    }

    #[test]
    fn concat_fills_missing_with_null_and_writes() {
        let (a, b) = (t(2, true).for_sample("a", &[]), t(1, false).for_sample("b", &[]));
        let mut df = concat(&[&a, &b]).unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.column("centroid_z").unwrap().null_count(), 1);
        let dir = tempfile::tempdir().unwrap();
        write_parquet(&dir.path().join("x.parquet"), &mut df, &[("k".into(), "v".into())]).unwrap();
        write_csv(&dir.path().join("x.csv"), &mut df).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("x.csv")).unwrap();
        assert_eq!(csv.lines().next().unwrap(), "sample,label,volume,centroid_z");
        assert_eq!(csv.lines().count(), 4);
    }

    #[test]
    fn batched_writes_equal_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let parts = [t(3, false).for_sample("a", &[]), t(2, true).for_sample("b", &[]), t(4, false).for_sample("c", &[])];
        let refs: Vec<&Table> = parts.iter().collect();
        let schema = union_schema(&refs);
        for ext in ["parquet", "csv"] {
            let one = dir.path().join(format!("one.{ext}"));
            let mut w = TableWriter::create(&[&one], schema.clone(), &[("k".into(), "v".into())]).unwrap();
            for p in &refs {
                w.push(p).unwrap();
            }
            w.finish().unwrap();
            // One batch per table (as a study past BATCH_VALUES is written).
            let many = dir.path().join(format!("many.{ext}"));
            let mut w = TableWriter::create(&[&many], schema.clone(), &[("k".into(), "v".into())]).unwrap();
            for p in &refs {
                w.push(p).unwrap();
                w.flush().unwrap();
            }
            w.finish().unwrap();
            if ext == "csv" {
                // Rows appended under one header: the same bytes.
                assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&many).unwrap());
            } else {
                let read = |p: &Path| ParquetReader::new(std::fs::File::open(p).unwrap()).finish().unwrap();
                let (a, b) = (read(&one), read(&many));
                assert!(a.equals_missing(&b), "{a}\n{b}");
                assert_eq!(a.shape(), (9, 4));
                assert_eq!(a.column("centroid_z").unwrap().null_count(), 7);
            }
        }
        // The one-batch Parquet file has the bytes of a whole-frame write.
        let whole = dir.path().join("whole.parquet");
        write_parquet(&whole, &mut concat(&refs).unwrap(), &[("k".into(), "v".into())]).unwrap();
        assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(dir.path().join("one.parquet")).unwrap());
        let csv = dir.path().join("whole.csv");
        write_csv(&csv, &mut concat(&refs).unwrap()).unwrap();
        assert_eq!(std::fs::read(&csv).unwrap(), std::fs::read(dir.path().join("one.csv")).unwrap());
        // Abandoned: no file, no temporary file.
        let w = TableWriter::create(&[&dir.path().join("gone.csv"), &dir.path().join("gone.parquet")], schema, &[]).unwrap();
        drop(w);
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("gone")).collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
