//! Reading phenotype tables back: any CSV or Parquet file as a [`Table`] for statistics, and
//! tessera's own per-sample Parquet files exactly (types and units) for `tessera merge`.
//!
//! CSV goes through the `csv` crate: a column is numeric when every non-empty cell parses as a
//! number (`NA`, `NaN`, `null`, `None` and empty cells are missing values, read as NaN); the
//! grouping column is kept as text. Parquet goes through polars, reading only the columns asked
//! for. Errors name the file, and for bad cells the row and the text found.

use std::path::Path;

use polars::prelude::*;

use super::{Column, Table};

/// What to read: columns kept as text (grouping columns), and the numeric columns wanted
/// (`None`: every column that is numeric).
#[derive(Debug, Clone, Default)]
pub struct Want<'a> {
    pub text: &'a [String],
    pub numeric: Option<&'a [String]>,
    /// Further columns kept as text when the file has them (row identity such as `sample`).
    pub text_if_present: &'a [String],
    /// Numeric columns wanted may be absent (the caller fills them in).
    pub numeric_optional: bool,
}

fn missing(cell: &[u8]) -> bool {
    matches!(cell, b"" | b"NA" | b"NaN" | b"nan" | b"null" | b"None" | b"N/A")
}

/// Reads a CSV or Parquet file (by extension; `.csv.gz` is not supported).
pub fn read_any(path: &Path, want: &Want) -> Result<Table, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" | "tsv" | "txt" => read_csv(path, want, if ext == "tsv" { b'\t' } else { b',' }),
        "parquet" | "pq" => read_parquet(path, want),
        _ => Err(format!("{}: not a table (expected a .csv or .parquet file)", path.display())),
    }
}

fn read_csv(path: &Path, want: &Want, delimiter: u8) -> Result<Table, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let mut rdr = csv::ReaderBuilder::new().delimiter(delimiter).buffer_capacity(1 << 20).from_reader(file);
    let headers: Vec<String> =
        rdr.byte_headers().map_err(|e| format!("{name}: {e}"))?.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err(format!("{name}: empty file (a header row is required)"));
    }
    let required = want.text.iter().chain(if want.numeric_optional { &[] } else { want.numeric.unwrap_or_default() });
    for t in required {
        if !headers.contains(t) {
            let hint = crate::util::did_you_mean(t, headers.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(format!("{name}: no column `{t}`{hint} (columns: {})", headers.join(", ")));
        }
    }
    enum Slot {
        Skip,
        Text(Vec<String>),
        Num(Vec<f64>, Option<(u64, String)>),
    }
    let mut slots: Vec<Slot> = headers
        .iter()
        .map(|h| {
            if want.text.contains(h) || want.text_if_present.contains(h) {
                Slot::Text(Vec::new())
            } else if want.numeric.is_none_or(|w| w.contains(h)) {
                Slot::Num(Vec::new(), None)
            } else {
                Slot::Skip
            }
        })
        .collect();
    let mut rec = csv::ByteRecord::new();
    let mut row = 1u64;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(format!("{name}: {e}")),
        }
        row += 1;
        if rec.len() != headers.len() {
            return Err(format!("{name}: row {row} has {} fields, the header has {}", rec.len(), headers.len()));
        }
        for (slot, cell) in slots.iter_mut().zip(rec.iter()) {
            match slot {
                Slot::Skip => {}
                Slot::Text(v) => v.push(String::from_utf8_lossy(cell).into_owned()),
                Slot::Num(v, bad) => {
                    if bad.is_some() {
                        continue;
                    }
                    let cell = cell.trim_ascii();
                    let x = if missing(cell) {
                        f64::NAN
                    } else {
                        match std::str::from_utf8(cell).ok().and_then(|s| s.parse::<f64>().ok()) {
                            Some(x) => x,
                            None => {
                                *bad = Some((row, String::from_utf8_lossy(cell).into_owned()));
                                v.clear();
                                continue;
                            }
                        }
                    };
                    v.push(x);
                }
            }
        }
    }
    let mut t = Table::default();
    for (h, slot) in headers.iter().zip(slots) {
        match slot {
            Slot::Skip => {}
            Slot::Text(v) => t.push(h, Column::Str(v), None),
            Slot::Num(v, None) => t.push(h, Column::F64(v), None),
            Slot::Num(_, Some((r, text))) => {
                if want.numeric.is_some() {
                    return Err(format!("{name}: column `{h}` is not numeric (row {r}: '{text}')"));
                }
            }
        }
    }
    Ok(t)
}

fn read_parquet(path: &Path, want: &Want) -> Result<Table, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader.schema().map_err(|e| format!("{name}: {e}"))?;
    let headers: Vec<String> = schema.iter_names().map(|s| s.to_string()).collect();
    let required = want.text.iter().chain(if want.numeric_optional { &[] } else { want.numeric.unwrap_or_default() });
    for t in required {
        if !headers.contains(t) {
            let hint = crate::util::did_you_mean(t, headers.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(format!("{name}: no column `{t}`{hint} (columns: {})", headers.join(", ")));
        }
    }
    let cols: Vec<String> = match want.numeric {
        Some(w) => headers.iter().filter(|h| want.text.contains(h) || want.text_if_present.contains(h) || w.contains(h)).cloned().collect(),
        None => headers.clone(),
    };
    let df = reader.with_columns(Some(cols)).finish().map_err(|e| format!("{name}: {e}"))?;
    let mut t = Table::default();
    for c in df.columns() {
        let h = c.name().to_string();
        let err = |e: PolarsError| format!("{name}: column `{h}`: {e}");
        if want.text.contains(&h) || want.text_if_present.contains(&h) {
            let s = c.cast(&DataType::String).map_err(err)?;
            let v = s.str().map_err(err)?.iter().map(|x| x.unwrap_or("").to_string()).collect();
            t.push(&h, Column::Str(v), None);
        } else if c.dtype().is_primitive_numeric() {
            let s = c.cast(&DataType::Float64).map_err(err)?;
            let v = s.f64().map_err(err)?.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
            t.push(&h, Column::F64(v), None);
        } else if want.numeric.is_some_and(|w| w.contains(&h)) {
            return Err(format!("{name}: column `{h}` is not numeric (type {})", c.dtype()));
        }
    }
    Ok(t)
}

/// Reads one of tessera's Parquet tables exactly as written: column types and units (from the
/// `tessera.units` metadata).
pub fn read_exact(path: &Path) -> Result<Table, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = ParquetReader::new(file);
    let units: serde_json::Map<String, serde_json::Value> = reader
        .get_metadata()
        .ok()
        .and_then(|m| m.key_value_metadata().clone())
        .and_then(|kv| kv.into_iter().find(|k| k.key == "tessera.units").and_then(|k| k.value))
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    let df = reader.finish().map_err(|e| format!("{name}: {e}"))?;
    let mut t = Table::default();
    for c in df.columns() {
        let h = c.name().to_string();
        let err = |e: PolarsError| format!("{name}: column `{h}`: {e}");
        if c.null_count() > 0 {
            return Err(format!("{name}: column `{h}` has missing values (not a table tessera wrote)"));
        }
        let col = match c.dtype() {
            DataType::UInt32 => Column::U32(c.u32().map_err(err)?.into_no_null_iter().collect()),
            DataType::UInt64 => Column::U64(c.u64().map_err(err)?.into_no_null_iter().collect()),
            DataType::Float64 => Column::F64(c.f64().map_err(err)?.into_no_null_iter().collect()),
            DataType::String => Column::Str(c.str().map_err(err)?.no_null_iter().map(str::to_string).collect()),
            DataType::Boolean => Column::Bool(c.bool().map_err(err)?.no_null_iter().collect()),
            other => return Err(format!("{name}: column `{h}` has type {other}, which tessera does not write")),
        };
        let unit = units.get(&h).and_then(|u| u.as_str()).map(str::to_string);
        t.push(&h, col, unit);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_types_missing_values_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "sample,label,volume,flag,group\na,1,2.5,true,1\na,2,NA,false,1\nb,1,,true,2\n").unwrap();
        let by = ["group".to_string()];
        let t = read_any(&p, &Want { text: &by, numeric: None, ..Want::default() }).unwrap();
        assert_eq!(t.names(), vec!["label", "volume", "group"]);
        let v = t.f64("volume");
        assert_eq!(v[0], 2.5);
        assert!(v[1].is_nan() && v[2].is_nan());
        assert_eq!(t.get("group"), Some(&Column::Str(vec!["1".into(), "1".into(), "2".into()])));
        let want = ["flag".to_string()];
        let e = read_any(&p, &Want { text: &by, numeric: Some(&want), ..Want::default() }).unwrap_err();
        assert!(e.contains("column `flag` is not numeric (row 2: 'true')"), "{e}");
        let want = ["volum".to_string()];
        let e = read_any(&p, &Want { text: &by, numeric: Some(&want), ..Want::default() }).unwrap_err();
        assert!(e.contains("did you mean 'volume'"), "{e}");
        std::fs::write(&p, "a,b\n1,2\n3\n").unwrap();
        let e = read_any(&p, &Want::default()).unwrap_err();
        assert!(e.starts_with(&p.display().to_string()) && e.contains("1 fields"), "{e}");
        assert!(read_any(&dir.path().join("x.txt.gz"), &Want::default()).unwrap_err().contains("not a table"));
    }

    #[test]
    fn parquet_exact_round_trip() {
        let mut t = Table::default();
        t.push("sample", Column::Str(vec!["s".into(); 2]), None);
        t.push("label", Column::U32(vec![1, 2]), None);
        t.push("voxels", Column::U64(vec![3, 4]), None);
        t.push("volume", Column::F64(vec![1.5, f64::NAN]), Some("um^3".into()));
        t.push("touches_border", Column::Bool(vec![true, false]), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let meta = vec![("tessera.units".to_string(), r#"{"volume":"um^3"}"#.to_string())];
        crate::table::write_parquet(&p, &mut t.to_frame().unwrap(), &meta).unwrap();
        let back = read_exact(&p).unwrap();
        assert_eq!(back.names(), t.names());
        assert_eq!(back.units(), t.units());
        assert_eq!(back.u64("voxels"), vec![3, 4]);
        assert!(back.f64("volume")[1].is_nan());
        let by = ["sample".to_string()];
        let any = read_any(&p, &Want { text: &by, numeric: None, ..Want::default() }).unwrap();
        assert_eq!(any.names(), vec!["sample", "label", "voxels", "volume"]);
    }
}
