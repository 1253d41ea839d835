//! The sample manifest (SPEC §3): a CSV with `sample` and `image` columns, the rest metadata.
//!
//! A manifest that cannot be read, or lacks the required columns, is a whole-run error (exit 2).
//! A bad row — an invalid or duplicate sample id, an empty image path — is that sample's
//! problem only: it is kept with [`SampleRow::problem`] set, and the run reports it in
//! `errors.csv` while the other samples proceed.
//!
//! Rows are read one at a time ([`Manifest::each`]): [`Manifest::open`] keeps only the header,
//! the joined tables, the row count and the first good row, and every command reads the rows
//! again as it goes — memory does not grow with the rows of a CSV manifest (a Parquet manifest
//! and joined tables are held whole; they are the small side).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Tables joined onto the rows ([`Manifest::open`]).
    pub joins: Vec<Join>,
    /// Metadata column names (all but `sample` and `image`), in order.
    pub columns: Vec<String>,
    /// Where the rows come from ([`Manifest::each`] reads them).
    origin: Origin,
}

/// Where a manifest's rows come from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    /// Images named on the command line, held.
    Listed(Vec<SampleRow>),
    /// A manifest file, read again for each pass; its row count and first row that can run,
    /// found when it was opened.
    File { reader: Arc<Reader>, len: usize, first_good: Option<SampleRow> },
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

/// A manifest file's header and joined tables: what reading its rows needs.
#[derive(Debug, PartialEq)]
struct Reader {
    path: PathBuf,
    /// The columns after the joins: the file's, then those each joined table adds.
    headers: Vec<String>,
    joined: Vec<Joined>,
    /// Where `sample` and `image` are in `headers`.
    si: usize,
    ii: usize,
    /// The folder image paths are relative to: the table the `image` column comes from.
    image_base: PathBuf,
    /// A Parquet manifest's cells, read whole; a CSV manifest is read from the file each pass.
    cells: Option<Vec<(usize, Vec<String>)>>,
    /// Rows whose sample id an earlier row has: line → the earlier row's line ([`Reader::scan`]).
    dups: HashMap<usize, usize>,
}

/// A joined table, held whole: the cells it adds per row, and its rows by key.
#[derive(Debug, PartialEq)]
struct Joined {
    join: Join,
    /// The key columns' places in the manifest's cells (as extended by the joins before).
    left_keys: Vec<usize>,
    added: Vec<Vec<String>>,
    width: usize,
    index: HashMap<Vec<String>, usize>,
}

/// What one pass over a manifest's rows finds: how many there are, the first that can run, and
/// the rows whose sample id an earlier row has (line → the earlier row's line).
struct Scan {
    len: usize,
    first_good: Option<SampleRow>,
    dups: HashMap<usize, usize>,
}

/// A CSV reader as the manifest and joined tables are read: a header row, cells trimmed.
fn csv_reader<R: std::io::Read>(r: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().has_headers(true).flexible(false).trim(csv::Trim::All).from_reader(r)
}

/// The header row of a CSV reader, checked for repeated names.
fn csv_headers<R: std::io::Read>(
    rdr: &mut csv::Reader<R>,
    invalid: &dyn Fn(String) -> ManifestError,
) -> Result<Vec<String>, ManifestError> {
    let headers: Vec<String> =
        rdr.headers().map_err(|e| invalid(format!("cannot read the header row: {e}")))?.iter().map(str::to_string).collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(h) = headers.iter().find(|h| !seen.insert(*h)) {
        return Err(invalid(format!("column `{h}` appears twice in the header row")));
    }
    Ok(headers)
}

/// One CSV record as cells with its line; `None` for a row of empty cells (skipped).
fn csv_cells(
    rec: Result<csv::StringRecord, csv::Error>,
    invalid: &dyn Fn(String) -> ManifestError,
) -> Option<Result<(usize, Vec<String>), ManifestError>> {
    let rec = match rec {
        Ok(r) => r,
        Err(e) => {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            return Some(Err(invalid(format!("line {line}: {e}"))));
        }
    };
    if rec.iter().all(str::is_empty) {
        return None;
    }
    let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
    Some(Ok((line, rec.iter().map(str::to_string).collect())))
}

fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn open_file(path: &Path) -> Result<std::io::BufReader<std::fs::File>, ManifestError> {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::with_capacity(1 << 16, f))
        .map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })
}

/// A table's header and rows as text, with each row's line (CSV) or row number + 1 (Parquet).
type TextTable = (Vec<String>, Vec<(usize, Vec<String>)>);

/// Reads a CSV or Parquet table whole, as text cells.
fn read_text(path: &Path, invalid: &dyn Fn(String) -> ManifestError) -> Result<TextTable, ManifestError> {
    if is_parquet(path) {
        // The table reader's messages start with the file's name, which `invalid` adds.
        let prefix = format!("{}: ", path.display());
        let t = crate::table::read::read_all(path).map_err(|e| invalid(e.strip_prefix(&prefix).map(String::from).unwrap_or(e)))?;
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
    let mut rdr = csv_reader(open_file(path)?);
    let headers = csv_headers(&mut rdr, invalid)?;
    let rows = rdr.into_records().filter_map(|r| csv_cells(r, invalid)).collect::<Result<_, _>>()?;
    Ok((headers, rows))
}

impl Reader {
    /// Reads the manifest's header (or a Parquet manifest whole) and the joined tables, and
    /// checks what a whole run depends on: a key column missing from either side, a column
    /// both sides have (other than the keys), a key repeated on the joined side, no `sample` or
    /// `image` column. Reads the rows through once ([`Reader::scan`]): with the reader, the
    /// number of rows and the first that can run.
    fn open(path: &Path, joins: &[Join]) -> Result<(Reader, usize, Option<SampleRow>), ManifestError> {
        let invalid = |msg: String| ManifestError::Invalid { path: path.to_path_buf(), msg };
        let (mut headers, cells) = if is_parquet(path) {
            let (h, rows) = read_text(path, &invalid)?;
            (h, Some(rows))
        } else {
            (csv_headers(&mut csv_reader(open_file(path)?), &invalid)?, None)
        };
        if headers.iter().all(|h| h.is_empty()) {
            return Err(invalid("empty manifest: expected a header row with `sample` and `image`".into()));
        }
        let mut image_base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut joined = Vec::new();
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
            let mut index: HashMap<Vec<String>, usize> = HashMap::new();
            let mut dups: Vec<String> = Vec::new();
            for (r, (_, cells)) in jrows.iter().enumerate() {
                let key: Vec<String> = right_keys.iter().map(|&i| cells[i].clone()).collect();
                let shown = key.join(",");
                if index.insert(key, r).is_some() && dups.len() < 5 {
                    dups.push(shown);
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
            let rows = jrows.into_iter().map(|(_, c)| added.iter().map(|&i| c[i].clone()).collect()).collect();
            headers.extend(added.iter().map(|&i| jh[i].clone()));
            joined.push(Joined { join: j.clone(), left_keys, added: rows, width: added.len(), index });
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
        let mut reader = Reader { path: path.to_path_buf(), headers, joined, si, ii, image_base, cells, dups: HashMap::new() };
        let scan = reader.scan()?;
        reader.dups = scan.dups;
        Ok((reader, scan.len, scan.first_good))
    }

    /// Reads the rows through (a CSV that does not parse is an `Err` here, before anything
    /// runs) and finds repeated sample ids without holding the ids: a 64-bit hash and the line
    /// of each row that can run (16 bytes per row, sorted), then — only when two hashes meet —
    /// a second pass comparing those rows' ids exactly.
    fn scan(&self) -> Result<Scan, ManifestError> {
        let mut len = 0;
        let mut first_good = None;
        let mut seen: Vec<(u64, usize)> = Vec::new();
        for r in self.rows()? {
            let r = r?;
            len += 1;
            if r.problem.is_none() {
                seen.push((crate::util::hash128(r.id.as_bytes())[0], r.line));
                if first_good.is_none() {
                    first_good = Some(r);
                }
            }
        }
        seen.sort_unstable();
        let meet: std::collections::HashSet<usize> =
            seen.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1).flat_map(|g| g.iter().map(|(_, line)| *line)).collect();
        drop(seen);
        let mut dups = HashMap::new();
        if !meet.is_empty() {
            let mut first: HashMap<String, usize> = HashMap::new();
            for r in self.rows()? {
                let r = r?;
                if r.problem.is_none() && meet.contains(&r.line) {
                    match first.entry(r.id) {
                        std::collections::hash_map::Entry::Occupied(e) => {
                            dups.insert(r.line, *e.get());
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(r.line);
                        }
                    }
                }
            }
        }
        Ok(Scan { len, first_good, dups })
    }

    fn columns(&self) -> Vec<String> {
        self.headers.iter().enumerate().filter(|(i, _)| *i != self.si && *i != self.ii).map(|(_, h)| h.clone()).collect()
    }

    /// A pass over the rows, in file order.
    fn rows(&self) -> Result<Rows<'_>, ManifestError> {
        let source = match &self.cells {
            Some(c) => Source::Cells(c.iter()),
            None => {
                let mut rdr = csv_reader(open_file(&self.path)?);
                let invalid = |msg: String| ManifestError::Invalid { path: self.path.clone(), msg };
                csv_headers(&mut rdr, &invalid)?;
                Source::Csv(rdr.into_records())
            }
        };
        Ok(Rows { reader: self, source })
    }

    /// A row from its cells: joined, checked (a missing inner-join key, an empty image, an
    /// invalid or repeated id fail the row alone).
    fn row(&self, line: usize, mut cells: Vec<String>) -> SampleRow {
        let path = &self.path;
        let mut problem = None;
        for j in &self.joined {
            let key: Vec<String> = j.left_keys.iter().map(|&i| cells.get(i).cloned().unwrap_or_default()).collect();
            match j.index.get(&key) {
                Some(&r) => cells.extend(j.added[r].iter().cloned()),
                None => {
                    if j.join.how == How::Inner && problem.is_none() {
                        problem = Some(format!(
                            "{}: line {line}: no row of {} has {} '{}' (inner join)",
                            path.display(),
                            j.join.table.display(),
                            j.join.on.join(","),
                            key.join(",")
                        ));
                    }
                    cells.extend(std::iter::repeat_n(String::new(), j.width));
                }
            }
        }
        cells.resize(self.headers.len(), String::new());
        let id = std::mem::take(&mut cells[self.si]);
        let image = std::mem::take(&mut cells[self.ii]);
        let meta = self
            .headers
            .iter()
            .zip(cells)
            .enumerate()
            .filter(|(i, _)| *i != self.si && *i != self.ii)
            .map(|(_, (h, v))| (h.clone(), v))
            .collect();
        let problem = problem
            .or_else(|| image.is_empty().then(|| format!("{}: line {line}: empty `image` for sample '{id}'", path.display())))
            .or_else(|| {
                if !is_valid_name(&id) {
                    Some(format!("{}: line {line}: invalid sample id '{id}' (use letters, digits, '.', '_', '-')", path.display()))
                } else {
                    self.dups.get(&line).map(|first| {
                        format!(
                            "{}: line {line}: duplicate sample id '{id}' (first used at {}: line {first})",
                            path.display(),
                            path.display()
                        )
                    })
                }
            });
        SampleRow { line, id, image: self.image_base.join(image), meta, problem }
    }
}

enum Source<'a> {
    Csv(csv::StringRecordsIntoIter<std::io::BufReader<std::fs::File>>),
    Cells(std::slice::Iter<'a, (usize, Vec<String>)>),
}

/// The rows of a manifest file, one at a time ([`Manifest::each`]).
struct Rows<'a> {
    reader: &'a Reader,
    source: Source<'a>,
}

impl Iterator for Rows<'_> {
    type Item = Result<SampleRow, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let invalid = |msg: String| ManifestError::Invalid { path: self.reader.path.clone(), msg };
        let (line, cells) = match &mut self.source {
            Source::Csv(records) => loop {
                match csv_cells(records.next()?, &invalid) {
                    None => continue,
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(c)) => break c,
                }
            },
            Source::Cells(it) => it.next()?.clone(),
        };
        Some(Ok(self.reader.row(line, cells)))
    }
}

impl Manifest {
    /// Opens a manifest file (paths in it are relative to its folder) and joins `joins` onto its
    /// rows, in order. A key column missing from either side, a column both sides have (other
    /// than the keys), a key repeated on the joined side and a row that does not parse are
    /// whole-run errors naming them (the file is read through once, to count its rows and check
    /// them); a row without a match fails alone (`inner`) or gets empty values (`left`). Only
    /// the header, the joined tables and the first row that can run are kept: [`Manifest::each`]
    /// reads the rows again.
    pub fn open(path: &Path, joins: &[Join]) -> Result<Manifest, ManifestError> {
        let (reader, len, first_good) = Reader::open(path, joins)?;
        Ok(Manifest {
            path: Some(path.to_path_buf()),
            joins: joins.to_vec(),
            columns: reader.columns(),
            origin: Origin::File { reader: Arc::new(reader), len, first_good },
        })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        match &self.origin {
            Origin::Listed(rows) => rows.len(),
            Origin::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first row that can run (the one a pipeline is checked against).
    pub fn first_good(&self) -> Option<&SampleRow> {
        match &self.origin {
            Origin::Listed(rows) => rows.iter().find(|r| r.problem.is_none()),
            Origin::File { first_good, .. } => first_good.as_ref(),
        }
    }

    /// The rows in order, one at a time: read from the file again (an `Err` if it no longer
    /// reads), or the images named on the command line.
    pub fn each(&self) -> Result<Box<dyn Iterator<Item = Result<SampleRow, ManifestError>> + Send + '_>, ManifestError> {
        match &self.origin {
            Origin::Listed(rows) => Ok(Box::new(rows.iter().cloned().map(Ok))),
            Origin::File { reader, .. } => Ok(Box::new(reader.rows()?)),
        }
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
        Manifest { path: None, joins: Vec::new(), columns: Vec::new(), origin: Origin::Listed(rows) }
    }

    /// Rows held in memory, with these metadata columns (the samples `tessera watch` found).
    pub fn from_rows(columns: Vec<String>, rows: Vec<SampleRow>) -> Manifest {
        Manifest { path: None, joins: Vec::new(), columns, origin: Origin::Listed(rows) }
    }

    /// Hash of the manifest's bytes (blake3, hex), or of the image list for command-line samples.
    pub fn hash(&self) -> String {
        let file = |h: &mut blake3::Hasher, p: &Path| {
            if let Ok(mut f) = std::fs::File::open(p) {
                let _ = std::io::copy(&mut f, h);
            }
        };
        let mut h = blake3::Hasher::new();
        match &self.origin {
            Origin::Listed(rows) => {
                for r in rows {
                    h.update(r.image.to_string_lossy().as_bytes());
                    h.update(b"\n");
                }
            }
            Origin::File { reader, .. } => {
                // The manifest, then each joined table with how it is joined: its bytes, not its
                // path as written (relative in the run, absolute in the record).
                file(&mut h, &reader.path);
                for j in &self.joins {
                    h.update(format!("\njoin on {} {:?}\n", j.on.join(","), j.how).as_bytes());
                    file(&mut h, &j.table);
                }
            }
        }
        h.finalize().to_hex().to_string()
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
        let m = Manifest::open(&p, &[]).unwrap();
        assert_eq!(m.columns, vec!["group"]);
        let rows: Vec<SampleRow> = m.each().unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].problem, None);
        assert_eq!(rows[0].image, dir.path().join("a.tif"));
        assert_eq!(rows[0].value("group"), Some("ctrl"));
        assert!(rows[1].problem.as_ref().unwrap().contains("line 3: invalid sample id 'b b'"), "{:?}", rows[1].problem);
        assert!(rows[2].problem.as_ref().unwrap().contains("line 4: duplicate sample id 'a' (first used at"), "{:?}", rows[2].problem);
        assert!(rows[3].problem.as_ref().unwrap().contains("empty `image`"));
    }

    #[test]
    fn a_streamed_manifest_gives_every_row_as_written_and_its_errors_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        let mut text = String::from("sample,image,group\n");
        for i in 0..3000 {
            // Every 500th row repeats an earlier id; row 7 has no image.
            let id = if i % 500 == 499 { format!("s{}", i - 400) } else { format!("s{i}") };
            let image = if i == 7 { String::new() } else { format!("{i}.tif") };
            text += &format!("{id},{image},g{}\n", i % 3);
        }
        std::fs::write(&p, &text).unwrap();
        let streamed = Manifest::open(&p, &[]).unwrap();
        assert!(matches!(streamed.origin, Origin::File { .. }), "no row held");
        assert_eq!(streamed.len(), 3000);
        let rows: Vec<SampleRow> = streamed.each().unwrap().map(Result::unwrap).collect();
        assert_eq!(streamed.first_good(), Some(&rows[0]));
        for (i, r) in rows.iter().enumerate() {
            let id = if i % 500 == 499 { format!("s{}", i - 400) } else { format!("s{i}") };
            assert_eq!((r.line, r.id.as_str(), r.value("group")), (i + 2, id.as_str(), Some(format!("g{}", i % 3).as_str())));
            assert_eq!(r.image, dir.path().join(if i == 7 { String::new() } else { format!("{i}.tif") }));
            assert_eq!(r.problem.is_some(), i == 7 || i % 500 == 499, "row {i}: {:?}", r.problem);
        }
        let again: Vec<SampleRow> = streamed.each().unwrap().map(Result::unwrap).collect();
        assert_eq!(rows, again, "every pass reads the same rows");
        let dups: Vec<&str> = rows.iter().filter_map(|r| r.problem.as_deref()).filter(|p| p.contains("duplicate")).collect();
        assert_eq!(dups.len(), 6);
        assert!(dups[0].contains("line 501: duplicate sample id 's99' (first used at") && dups[0].ends_with("line 101)"), "{}", dups[0]);
        assert!(rows[7].problem.as_ref().unwrap().contains("empty `image`"));
        // A row that does not parse is an error when the manifest is opened, not mid-run.
        std::fs::write(&p, format!("{text}x,y,z,extra\n")).unwrap();
        let e = Manifest::open(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("line 3002"), "{e}");
    }

    #[test]
    fn missing_columns_are_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "name,path\na,a.tif\n").unwrap();
        let e = Manifest::open(&p, &[]).unwrap_err().to_string();
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
        let rows: Vec<SampleRow> = m.each().unwrap().map(Result::unwrap).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["scan_01", "scan_01-2", "nuclei_3d", "scan_01-2-2", "sample", "Arger_copy"]);
        assert!(rows.iter().all(|r| r.problem.is_none()), "{rows:?}");
    }

    #[test]
    fn accent_table_is_aligned() {
        // Every folded letter is ASCII, one per accented letter.
        let s: String = "ÀÿŽßŁő".chars().map(fold_accent).collect();
        assert_eq!(s, "AyZsLo");
    }
}
