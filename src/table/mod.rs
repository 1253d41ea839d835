//! Phenotype tables: the per-object [`Table`] ops produce, and its Parquet/CSV files via polars.
//!
//! Ops build a small column store with no polars types in it; this module alone turns tables
//! into polars frames, stacks per-sample tables into the merged study table (columns missing
//! from a sample are null), and writes Parquet with units and provenance as key-value metadata.

use std::path::Path;

pub mod read;

use polars::prelude::*;

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    U32(Vec<u32>),
    U64(Vec<u64>),
    F64(Vec<f64>),
    Str(Vec<String>),
    Bool(Vec<bool>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::U32(v) => v.len(),
            Column::U64(v) => v.len(),
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
                    Column::F64(v) => polars::prelude::Column::new(name, v),
                    Column::Str(v) => polars::prelude::Column::new(name, v),
                    Column::Bool(v) => polars::prelude::Column::new(name, v),
                }
            })
            .collect();
        Ok(DataFrame::new(self.rows(), cols)?)
    }
}

/// Stacks tables (in the given order) into one frame. Columns are the union in first-seen
/// order; a column a table lacks is null in its rows.
pub fn concat(tables: &[&Table]) -> Result<DataFrame, TableError> {
    let mut names: Vec<(String, &Column)> = Vec::new();
    for t in tables {
        for (n, c, _) in &t.columns {
            if !names.iter().any(|(m, _)| m == n) {
                names.push((n.clone(), c));
            }
        }
    }
    let total: usize = tables.iter().map(|t| t.rows()).sum();
    let mut cols = Vec::new();
    for (name, proto) in &names {
        macro_rules! gather {
            ($var:ident, $t:ty) => {{
                let mut v: Vec<Option<$t>> = Vec::with_capacity(total);
                for t in tables {
                    match t.get(name) {
                        Some(Column::$var(x)) => v.extend(x.iter().cloned().map(Some)),
                        _ => v.extend(std::iter::repeat_n(None, t.rows())),
                    }
                }
                polars::prelude::Column::new(PlSmallStr::from(name.as_str()), v)
            }};
        }
        cols.push(match proto {
            Column::U32(_) => gather!(U32, u32),
            Column::U64(_) => gather!(U64, u64),
            Column::F64(_) => gather!(F64, f64),
            Column::Str(_) => gather!(Str, String),
            Column::Bool(_) => gather!(Bool, bool),
        });
    }
    Ok(DataFrame::new(total, cols)?)
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

/// Writes a frame as CSV (header row, comma-separated), atomically.
pub fn write_csv(path: &Path, df: &mut DataFrame) -> Result<(), TableError> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df)?;
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
}
