//! The sample manifest (SPEC §3): a CSV with `sample` and `image` columns, the rest metadata.
//!
//! A manifest that cannot be read, or lacks the required columns, is a whole-run error (exit 2).
//! A bad row — an invalid or duplicate sample id, an empty image path — is that sample's
//! problem only: it is kept with [`SampleRow::problem`] set, and the run reports it in
//! `errors.csv` while the other samples proceed.

use std::path::{Path, PathBuf};

use super::is_valid_name;

#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// 1-based line in the manifest (the header is line 1); 0 for samples from the command line.
    pub line: usize,
    pub id: String,
    /// The image path, resolved against the manifest's folder.
    pub image: PathBuf,
    /// Every column except `sample` and `image`, in manifest order.
    pub meta: Vec<(String, String)>,
    /// Why this row cannot run, if it cannot.
    pub problem: Option<String>,
}

impl SampleRow {
    pub fn value(&self, column: &str) -> Option<&str> {
        match column {
            "sample" => Some(&self.id),
            _ => self.meta.iter().find(|(k, _)| k == column).map(|(_, v)| v.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub path: Option<PathBuf>,
    /// Tables joined onto the rows ([`Manifest::read_joined`]).
    pub joins: Vec<Join>,
    /// Metadata column names (all but `sample` and `image`), in order.
    pub columns: Vec<String>,
    pub rows: Vec<SampleRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read manifest: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// How a joined table's rows meet the manifest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// A row whose key has no match fails alone, with an error naming the key.
    #[default]
    Inner,
    /// A row whose key has no match gets empty values.
    Left,
}

/// A table joined onto the manifest's rows before parameters bind: its rows are matched on the
/// `on` columns (present in both), and its other columns are added to the matching rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Join {
    /// CSV or Parquet; image paths in it are relative to its folder.
    pub table: PathBuf,
    pub on: Vec<String>,
    #[serde(default)]
    pub how: How,
}

impl Join {
    /// `FILE:KEY[,KEY…][:left|:inner]`, as `--join` takes it.
    pub fn parse(s: &str) -> Result<Join, String> {
        let bad = || format!("--join {s}: expected FILE:KEY[,KEY…][:left|:inner]");
        let (rest, how) = match s.rsplit_once(':') {
            Some((r, "left")) => (r, How::Left),
            Some((r, "inner")) => (r, How::Inner),
            _ => (s, How::Inner),
        };
        let (table, keys) = rest.rsplit_once(':').ok_or_else(bad)?;
        let on: Vec<String> = keys.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        if table.is_empty() || on.is_empty() {
            return Err(bad());
        }
        Ok(Join { table: PathBuf::from(table), on, how })
    }
}

/// A table's header and rows as text, with each row's line (CSV) or row number + 1 (Parquet).
type TextTable = (Vec<String>, Vec<(usize, Vec<String>)>);

/// Reads a CSV (or, for joined tables, a Parquet file) as text cells.
fn read_text(path: &Path, invalid: &dyn Fn(String) -> ManifestError) -> Result<TextTable, ManifestError> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
        let t = crate::table::read::read_all(path).map_err(invalid)?;
        let headers: Vec<String> = t.names().iter().map(|s| s.to_string()).collect();
        let rows = (0..t.rows())
            .map(|i| {
                let cells = t
                    .columns
                    .iter()
                    .map(|(_, c, _)| match c {
                        crate::table::Column::F64(v) if v[i].is_nan() => String::new(),
                        c => crate::stats::cell(c, i),
                    })
                    .collect();
                (i + 2, cells)
            })
            .collect();
        return Ok((headers, rows));
    }
    let text = std::fs::read(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).trim(csv::Trim::All).from_reader(&text[..]);
    let headers: Vec<String> =
        rdr.headers().map_err(|e| invalid(format!("cannot read the header row: {e}")))?.iter().map(str::to_string).collect();
    let mut seen_cols = std::collections::HashSet::new();
    for h in &headers {
        if !seen_cols.insert(h) {
            return Err(invalid(format!("column `{h}` appears twice in the header row")));
        }
    }
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            invalid(format!("line {line}: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.iter().all(str::is_empty) {
            continue;
        }
        rows.push((line, rec.iter().map(str::to_string).collect()));
    }
    Ok((headers, rows))
}

impl Manifest {
    /// Reads a manifest file; paths in it are relative to its folder.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        Manifest::read_joined(path, &[])
    }

    /// Reads a manifest file and joins `joins` onto its rows, in order. A key column missing
    /// from either side, a column both sides have (other than the keys) and a key repeated on
    /// the joined side are whole-run errors naming them; a row without a match fails alone
    /// (`inner`) or gets empty values (`left`).
    pub fn read_joined(path: &Path, joins: &[Join]) -> Result<Manifest, ManifestError> {
        let invalid = |msg: String| ManifestError::Invalid { path: path.to_path_buf(), msg };
        let (mut headers, records) = read_text(path, &invalid)?;
        if headers.iter().all(|h| h.is_empty()) {
            return Err(invalid("empty manifest: expected a header row with `sample` and `image`".into()));
        }
        let mut rows: Vec<(usize, Vec<String>, Option<String>)> = records.into_iter().map(|(l, r)| (l, r, None)).collect();
        // The folder image paths are relative to: the table the `image` column comes from.
        let mut image_base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for j in joins {
            let jinvalid = |msg: String| ManifestError::Invalid { path: j.table.clone(), msg };
            let (jh, jrows) = read_text(&j.table, &jinvalid)?;
            let mut left_keys = Vec::new();
            let mut right_keys = Vec::new();
            for k in &j.on {
                match (headers.iter().position(|h| h == k), jh.iter().position(|h| h == k)) {
                    (Some(a), Some(b)) => {
                        left_keys.push(a);
                        right_keys.push(b);
                    }
                    (None, _) => {
                        return Err(invalid(format!("no column `{k}` to join {} on (columns: {})", j.table.display(), headers.join(", "))));
                    }
                    (_, None) => return Err(jinvalid(format!("no column `{k}` to join on (columns: {})", jh.join(", ")))),
                }
            }
            let added: Vec<usize> = (0..jh.len()).filter(|i| !right_keys.contains(i)).collect();
            let clash: Vec<&str> = added.iter().map(|&i| jh[i].as_str()).filter(|c| headers.iter().any(|h| h == c)).collect();
            if !clash.is_empty() {
                return Err(jinvalid(format!(
                    "column{} {} also in {}: rename one side (only the `on` columns may be in both)",
                    if clash.len() == 1 { "" } else { "s" },
                    clash.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
                    path.display()
                )));
            }
            let mut index: std::collections::HashMap<Vec<&str>, usize> = std::collections::HashMap::new();
            let mut dups: Vec<String> = Vec::new();
            for (r, (_, cells)) in jrows.iter().enumerate() {
                let key: Vec<&str> = right_keys.iter().map(|&i| cells[i].as_str()).collect();
                if index.insert(key.clone(), r).is_some() && dups.len() < 5 {
                    dups.push(key.join(","));
                }
            }
            if !dups.is_empty() {
                return Err(jinvalid(format!(
                    "{} repeats the key{} {}{}: a joined table needs one row per key",
                    j.on.join(","),
                    if dups.len() == 1 { "" } else { "s" },
                    dups.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", "),
                    if dups.len() == 5 { " (the first five)" } else { "" }
                )));
            }
            if added.iter().any(|&i| jh[i] == "image") {
                image_base = j.table.parent().unwrap_or(Path::new(".")).to_path_buf();
            }
            for (line, cells, problem) in &mut rows {
                let key: Vec<&str> = left_keys.iter().map(|&i| cells[i].as_str()).collect();
                match index.get(&key) {
                    Some(&r) => cells.extend(added.iter().map(|&i| jrows[r].1[i].clone())),
                    None => {
                        if j.how == How::Inner && problem.is_none() {
                            *problem = Some(format!(
                                "{}: line {line}: no row of {} has {} '{}' (inner join)",
                                path.display(),
                                j.table.display(),
                                j.on.join(","),
                                key.join(",")
                            ));
                        }
                        cells.extend(added.iter().map(|_| String::new()));
                    }
                }
            }
            headers.extend(added.iter().map(|&i| jh[i].clone()));
        }
        for required in ["sample", "image"] {
            if !headers.iter().any(|h| h == required) {
                return Err(invalid(format!(
                    "no `{required}` column (the header row has: {}); a manifest needs `sample` and `image` columns",
                    headers.join(", ")
                )));
            }
        }
        let si = headers.iter().position(|h| h == "sample").unwrap_or(0);
        let ii = headers.iter().position(|h| h == "image").unwrap_or(0);
        let columns: Vec<String> = headers.iter().enumerate().filter(|(i, _)| *i != si && *i != ii).map(|(_, h)| h.clone()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for (line, rec, problem) in rows {
            let id = rec.get(si).cloned().unwrap_or_default();
            let image = rec.get(ii).cloned().unwrap_or_default();
            let meta = headers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != si && *i != ii)
                .map(|(i, h)| (h.clone(), rec.get(i).cloned().unwrap_or_default()))
                .collect();
            let problem =
                problem.or_else(|| image.is_empty().then(|| format!("{}: line {line}: empty `image` for sample '{id}'", path.display())));
            out.push(SampleRow { line, id, image: image_base.join(image), meta, problem });
        }
        let mut m = Manifest { path: Some(path.to_path_buf()), joins: joins.to_vec(), columns, rows: out };
        m.check_ids();
        Ok(m)
    }

    /// Samples named on the command line. The id is the file name up to its first dot, made a
    /// valid sample id ([`sample_id_from`]: accents dropped, other characters `_`) and unique
    /// (a repeated id gets `-2`, `-3`, … in command-line order).
    pub fn from_images(images: &[PathBuf]) -> Manifest {
        let mut taken = std::collections::HashSet::new();
        let rows = images
            .iter()
            .map(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let stem = match name.find('.') {
                    Some(0) | None => name.as_str(),
                    Some(i) => &name[..i],
                };
                let base = sample_id_from(stem);
                let mut id = base.clone();
                let mut k = 1;
                while !taken.insert(id.clone()) {
                    k += 1;
                    id = format!("{base}-{k}");
                }
                SampleRow { line: 0, id, image: p.clone(), meta: Vec::new(), problem: None }
            })
            .collect();
        let mut m = Manifest { path: None, joins: Vec::new(), columns: Vec::new(), rows };
        m.check_ids();
        m
    }

    fn check_ids(&mut self) {
        let where_ = |r: &SampleRow, path: &Option<PathBuf>| match path {
            Some(p) => format!("{}: line {}", p.display(), r.line),
            None => format!("image {}", r.image.display()),
        };
        let mut first_line: std::collections::HashMap<String, String> = Default::default();
        for r in &mut self.rows {
            if r.problem.is_some() {
                continue;
            }
            if !is_valid_name(&r.id) {
                r.problem = Some(format!("{}: invalid sample id '{}' (use letters, digits, '.', '_', '-')", where_(r, &self.path), r.id));
            } else if let Some(first) = first_line.get(&r.id) {
                r.problem = Some(format!("{}: duplicate sample id '{}' (first used at {first})", where_(r, &self.path), r.id));
            } else {
                first_line.insert(r.id.clone(), where_(r, &self.path));
            }
        }
    }

    /// Hash of the manifest's bytes (blake3, hex), or of the image list for command-line samples.
    pub fn hash(&self) -> String {
        match &self.path {
            Some(p) if self.joins.is_empty() => std::fs::read(p).map(|b| blake3::hash(&b).to_hex().to_string()).unwrap_or_default(),
            Some(p) => {
                // The manifest, then each joined table with how it is joined.
                let mut h = blake3::Hasher::new();
                h.update(&std::fs::read(p).unwrap_or_default());
                for j in &self.joins {
                    // The joined table's bytes and how it is joined; not its path as written
                    // (relative in the run, absolute in the record).
                    h.update(format!("\njoin on {} {:?}\n", j.on.join(","), j.how).as_bytes());
                    h.update(&std::fs::read(&j.table).unwrap_or_default());
                }
                h.finalize().to_hex().to_string()
            }
            None => {
                let mut h = blake3::Hasher::new();
                for r in &self.rows {
                    h.update(r.image.to_string_lossy().as_bytes());
                    h.update(b"\n");
                }
                h.finalize().to_hex().to_string()
            }
        }
    }
}

/// A valid sample id (`[A-Za-z0-9._-]+`) made from a file name: Latin letters with accents
/// lose them (`nücleï` → `nuclei`), every other character outside the set becomes `_`, and
/// runs of `_` are kept to one; an empty result is `sample`.
pub fn sample_id_from(name: &str) -> String {
    let mut id = String::with_capacity(name.len());
    for c in name.chars() {
        let c = fold_accent(c);
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' };
        if !(c == '_' && id.ends_with('_')) {
            id.push(c);
        }
    }
    let id = id.trim_matches('_');
    if id.is_empty() { "sample".into() } else { id.to_string() }
}

/// The base letter of a Latin letter with a diacritic (Latin-1 Supplement and Latin Extended-A),
/// `ß` as `s`; anything else unchanged.
fn fold_accent(c: char) -> char {
    const FROM: &str = "ÀÁÂÃÄÅàáâãäåÇçÈÉÊËèéêëÌÍÎÏìíîïÑñÒÓÔÕÖØòóôõöøÙÚÛÜùúûüÝýÿĀāĂăĄąĆćĈĉĊċČčĎďĐđĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĦħĨĩĪīĬĭĮįİıĴĵĶķĹĺĻļĽľĿŀŁłŃńŅņŇňŌōŎŏŐőŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŦŧŨũŪūŬŭŮůŰűŲųŴŵŶŷŸŹźŻżŽžß";
    const TO: &str = "AAAAAAaaaaaaCcEEEEeeeeIIIIiiiiNnOOOOOOooooooUUUUuuuuYyyAaAaAaCcCcCcCcDdDdEeEeEeEeEeGgGgGgGgHhHhIiIiIiIiIiJjKkLlLlLlLlLlNnNnNnOoOoOoRrRrRrSsSsSsSsTtTtTtUuUuUuUuUuUuWwYyYZzZzZzs";
    FROM.chars().position(|f| f == c).and_then(|i| TO.chars().nth(i)).unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_metadata_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "sample,image,group\na,a.tif,ctrl\nb b,b.tif,ko\na,c.tif,ko\nd,,ko\n").unwrap();
        let m = Manifest::read(&p).unwrap();
        assert_eq!(m.columns, vec!["group"]);
        assert_eq!(m.rows.len(), 4);
        assert_eq!(m.rows[0].problem, None);
        assert_eq!(m.rows[0].image, dir.path().join("a.tif"));
        assert_eq!(m.rows[0].value("group"), Some("ctrl"));
        assert!(m.rows[1].problem.as_ref().unwrap().contains("line 3: invalid sample id 'b b'"), "{:?}", m.rows[1].problem);
        assert!(m.rows[2].problem.as_ref().unwrap().contains("line 4: duplicate sample id 'a' (first used at"), "{:?}", m.rows[2].problem);
        assert!(m.rows[3].problem.as_ref().unwrap().contains("empty `image`"));
    }

    #[test]
    fn missing_columns_are_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "name,path\na,a.tif\n").unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("no `sample` column"), "{e}");
    }

    #[test]
    fn positional_ids_are_valid_unique_stems() {
        let m = Manifest::from_images(&[
            PathBuf::from("x/scan_01.ome.tif"),
            PathBuf::from("y/scan_01.tif"),
            PathBuf::from("dossier é/nücleï 3d.tif"),
            PathBuf::from("z/scan_01-2.tif"),
            PathBuf::from("z/细胞.tif"),
            PathBuf::from("z/Ärger  (copy).tif"),
        ]);
        let ids: Vec<&str> = m.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["scan_01", "scan_01-2", "nuclei_3d", "scan_01-2-2", "sample", "Arger_copy"]);
        assert!(m.rows.iter().all(|r| r.problem.is_none()), "{:?}", m.rows);
    }

    #[test]
    fn accent_table_is_aligned() {
        // Every folded letter is ASCII, one per accented letter.
        let s: String = "ÀÿŽßŁő".chars().map(fold_accent).collect();
        assert_eq!(s, "AyZsLo");
    }
}
