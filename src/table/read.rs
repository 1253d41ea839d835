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
    /// Keep every column, each with its own type: numeric where every cell is a number or
    /// missing, text otherwise (the other fields are then unused). Parquet unsigned integers
    /// stay u64 and booleans booleans. For tools that add columns to a user's table.
    pub keep_all: bool,
}

/// Whether a cell is a missing value: empty, `NA`, `NaN`, `nan`, `null`, `None` or `N/A`.
pub(crate) fn missing(cell: &[u8]) -> bool {
    matches!(cell, b"" | b"NA" | b"NaN" | b"nan" | b"null" | b"None" | b"N/A")
}

/// The columns `want` needs must be in `headers`; the error names the file and suggests a name.
fn require_columns(path: &Path, headers: &[String], want: &Want) -> Result<(), String> {
    let required = want.text.iter().chain(if want.numeric_optional { &[] } else { want.numeric.unwrap_or_default() });
    for t in required {
        if !headers.contains(t) {
            let hint = crate::util::did_you_mean(t, headers.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(format!("{}: no column `{t}`{hint} (columns: {})", path.display(), headers.join(", ")));
        }
    }
    Ok(())
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

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/// Parses a number. Plain decimals (`-123.456`) with at most 15 significant digits take the
/// exact fast path (an integer divided by a power of ten, both exact, so the one rounding gives
/// the same double as `str::parse`); anything else goes to `str::parse`.
pub fn parse_f64(cell: &[u8]) -> Option<f64> {
    let (neg, d) = match cell.first() {
        Some(b'-') => (true, &cell[1..]),
        Some(b'+') => (false, &cell[1..]),
        _ => (false, cell),
    };
    let (len, mut i, mut m) = (d.len(), 0usize, 0u64);
    while i < len {
        let x = d[i].wrapping_sub(b'0');
        if x > 9 {
            break;
        }
        m = m.wrapping_mul(10).wrapping_add(x as u64);
        i += 1;
    }
    let int_digits = i;
    let mut k = 0;
    if i < len && d[i] == b'.' {
        i += 1;
        let start = i;
        while i < len {
            let x = d[i].wrapping_sub(b'0');
            if x > 9 {
                break;
            }
            m = m.wrapping_mul(10).wrapping_add(x as u64);
            i += 1;
        }
        k = i - start;
    }
    let n = int_digits + k;
    if i == len && n > 0 && n <= 15 {
        let v = m as f64 / POW10[k];
        return Some(if neg { -v } else { v });
    }
    std::str::from_utf8(cell).ok().and_then(|s| s.parse::<f64>().ok())
}

enum Slot {
    Skip,
    Text(Vec<String>),
    Num(Vec<f64>, Option<(u64, String)>),
}

impl Slot {
    fn push(&mut self, cell: &[u8], row: u64) {
        match self {
            Slot::Skip => {}
            Slot::Text(v) => v.push(String::from_utf8_lossy(cell).into_owned()),
            Slot::Num(v, bad) => {
                if bad.is_some() {
                    return;
                }
                if let Some(x) = parse_f64(cell) {
                    v.push(x);
                    return;
                }
                let cell = cell.trim_ascii();
                if missing(cell) {
                    v.push(f64::NAN);
                } else if let Some(x) = parse_f64(cell) {
                    v.push(x);
                } else {
                    *bad = Some((row, String::from_utf8_lossy(cell).into_owned()));
                    *v = Vec::new();
                }
            }
        }
    }
}

/// The cells as numbers when every one is a number or missing (NaN), and there is one.
fn numbers(cells: &[String]) -> Option<Vec<f64>> {
    if cells.is_empty() {
        return None;
    }
    cells
        .iter()
        .map(|c| {
            let c = c.trim().as_bytes();
            if missing(c) { Some(f64::NAN) } else { parse_f64(c) }
        })
        .collect()
}

fn read_csv(path: &Path, want: &Want, delimiter: u8) -> Result<Table, String> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    let mut rdr = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(&bytes[..]);
    let headers: Vec<String> =
        rdr.byte_headers().map_err(|e| format!("{name}: {e}"))?.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err(format!("{name}: empty file (a header row is required)"));
    }
    require_columns(path, &headers, want)?;
    let fresh = || -> Vec<Slot> {
        headers
            .iter()
            .map(|h| {
                if want.keep_all || want.text.contains(h) || want.text_if_present.contains(h) {
                    Slot::Text(Vec::new())
                } else if want.numeric.is_none_or(|w| w.contains(h)) {
                    Slot::Num(Vec::new(), None)
                } else {
                    Slot::Skip
                }
            })
            .collect()
    };
    let body_start = rdr.position().byte() as usize;
    let body = &bytes[body_start.min(bytes.len())..];
    let mut slots = fresh();
    // Fast path: split lines and fields directly. Quoted fields are unquoted when they hold no
    // quote, delimiter or line break; anything else sends the file through the csv crate.
    let fast = (|| -> Result<bool, String> {
        let mut row = 1u64;
        for line in body.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            row += 1;
            let mut fields = 0;
            for cell in line.split(|&b| b == delimiter) {
                let cell = match cell.first() {
                    Some(b'"') => match cell[1..].strip_suffix(b"\"") {
                        Some(inner) if !inner.contains(&b'"') => inner,
                        _ => return Ok(false),
                    },
                    _ => cell,
                };
                if let Some(slot) = slots.get_mut(fields) {
                    slot.push(cell, row);
                }
                fields += 1;
            }
            if fields != headers.len() {
                return Err(format!("{name}: row {row} has {fields} fields, the header has {}", headers.len()));
            }
        }
        Ok(true)
    })()?;
    if !fast {
        slots = fresh();
        let mut row = 1u64;
        let mut rec = csv::ByteRecord::new();
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
                slot.push(cell, row);
            }
        }
    }
    let mut t = Table::default();
    for (h, slot) in headers.iter().zip(slots) {
        match slot {
            Slot::Skip => {}
            Slot::Text(v) if want.keep_all => match numbers(&v) {
                Some(n) => t.push(h, Column::F64(n), None),
                None => t.push(h, Column::Str(v), None),
            },
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
    guarded(path, || read_parquet_checked(path, want))
}

/// Runs `read` (the Parquet reader on `path`) once the file's footer is checked
/// ([`check_parquet_footer`]); the reader panics on some malformed files, and that is an
/// unreadable file, not a crash.
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    check_parquet_footer(path)?;
    crate::util::catch_quietly(read).unwrap_or_else(|p| {
        let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(format!("{}: not a readable Parquet file ({why})", path.display()))
    })
}

/// Bytes that the values a Parquet file declares may take once decoded ([`set_limit`]).
static LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets the most memory a table read may declare (0: half of the default memory budget). The
/// Parquet reader sizes its buffers by the counts a file declares; past this, a file is refused
/// before it is read.
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

fn limit() -> u64 {
    match LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => crate::io::default_memory_budget() / 2,
        b => b,
    }
}

/// Checks a Parquet file before the Parquet reader sees it, since that reader trusts what a
/// file declares (a few altered bytes could ask it for exabytes): the magic numbers; metadata
/// within the file, well-formed Thrift (compact protocol) in which no list, map or string claims
/// more elements than bytes remain; row and value counts that fit [`set_limit`] decoded; and
/// every page header of every column chunk, each within its chunk, declaring no more values or
/// bytes than its chunk does.
fn check_parquet_footer(path: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let name = path.display();
    let bad = |why: &str| format!("{name}: not a readable Parquet file ({why})");
    let mut f = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    if len < 12 {
        return Err(bad("shorter than a Parquet header and footer"));
    }
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8)).and_then(|_| f.read_exact(&mut tail)).map_err(|e| format!("{name}: {e}"))?;
    if &tail[4..] != b"PAR1" {
        return Err(bad("no PAR1 at its end"));
    }
    let meta_len = u32::from_le_bytes(tail[..4].try_into().unwrap_or_default()) as u64;
    if meta_len + 12 > len {
        return Err(bad(&format!("its footer claims {meta_len} bytes of metadata in a file of {len}")));
    }
    let mut meta = vec![0u8; meta_len as usize];
    f.seek(SeekFrom::Start(len - 8 - meta_len)).and_then(|_| f.read_exact(&mut meta)).map_err(|e| format!("{name}: {e}"))?;
    // FileMetaData: 3 num_rows, 4 row_groups: list<RowGroup>; RowGroup: 1 columns:
    // list<ColumnChunk>, 3 num_rows; ColumnChunk: 3 meta_data: ColumnMetaData; ColumnMetaData:
    // 5 num_values, 6 total_uncompressed_size, 7 total_compressed_size, 9 data_page_offset,
    // 11 dictionary_page_offset. List elements count as field -1 in a path.
    #[derive(Default, Clone, Copy)]
    struct Chunk {
        values: i64,
        uncompressed: i64,
        compressed: i64,
        data: i64,
        dict: i64,
    }
    let (mut rows, mut chunks): (Vec<i64>, Vec<Chunk>) = (Vec::new(), Vec::new());
    let mut r = Thrift { b: &meta, at: 0 };
    r.walk_struct(0, S::File, &mut Vec::new(), &mut |path, v| match path {
        [3] | [4, -1, 3] => rows.push(v),
        [4, -1, 1, -1, 3, field] => {
            if *field == 5 {
                chunks.push(Chunk::default());
            }
            if let Some(c) = chunks.last_mut() {
                match field {
                    5 => c.values = v,
                    6 => c.uncompressed = v,
                    7 => c.compressed = v,
                    9 => c.data = v,
                    11 => c.dict = v,
                    _ => {}
                }
            }
        }
        _ => {}
    })
    .ok_or_else(|| bad("its metadata is not well-formed"))?;
    let limit = limit();
    let ncols = chunks.len().max(1) as u64;
    // Decoded, a value takes up to 16 bytes (a string view) and a row a value per column.
    let declared = |n: i64| u64::try_from(n).ok().map(|n| n.saturating_mul(16));
    for &n in &rows {
        let bytes = declared(n).ok_or_else(|| bad("a negative row count"))?.saturating_mul(ncols);
        if bytes > limit {
            return Err(bad(&format!(
                "it declares {n} rows, more than a table read may take ({} decoded)",
                crate::util::human_bytes(limit)
            )));
        }
    }
    let data_end = len - 8 - meta_len;
    let (mut total_values, mut total_bytes) = (0u64, 0u64);
    for c in &chunks {
        let values = declared(c.values).ok_or_else(|| bad("a negative value count"))?;
        let uncompressed = u64::try_from(c.uncompressed).map_err(|_| bad("a negative size"))?;
        total_values = total_values.saturating_add(values);
        total_bytes = total_bytes.saturating_add(uncompressed);
        if total_values > limit || total_bytes > limit {
            return Err(bad(&format!("its columns declare more than a table read may take ({} decoded)", crate::util::human_bytes(limit))));
        }
        let start = if c.dict > 0 && c.dict < c.data { c.dict } else { c.data };
        let (start, size) =
            (u64::try_from(start).map_err(|_| bad("a negative offset"))?, u64::try_from(c.compressed).map_err(|_| bad("a negative size"))?);
        let end = start.checked_add(size).filter(|&e| start >= 4 && e <= data_end).ok_or_else(|| bad("a column chunk outside the file"))?;
        // Its pages, header by header.
        let mut at = start;
        while at < end {
            let window = (end - at).min(1 << 20) as usize;
            let mut head = vec![0u8; window];
            f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut head)).map_err(|e| format!("{name}: {e}"))?;
            let (mut page_values, mut page_bytes, mut page_size) = (0i64, 0i64, -1i64);
            let mut t = Thrift { b: &head, at: 0 };
            t.walk_struct(0, S::PageHeader, &mut Vec::new(), &mut |path, v| match path {
                [2] => page_bytes = v,
                [3] => page_size = v,
                [5 | 7 | 8, 1] => page_values = v,
                _ => {}
            })
            .ok_or_else(|| bad("a page header is not well-formed"))?;
            if page_size < 0 || page_bytes < 0 || page_values < 0 || page_values > c.values || page_bytes > c.uncompressed {
                return Err(bad("a page header declares more than its column chunk"));
            }
            at = at.saturating_add(t.at as u64).saturating_add(page_size as u64);
            if at > end {
                return Err(bad("a page runs past its column chunk"));
            }
        }
    }
    Ok(())
}

/// The Thrift structs of Parquet's metadata that the Parquet reader reads field by field.
#[derive(Clone, Copy, PartialEq)]
enum S {
    File,
    Schema,
    Logical,
    RowGroup,
    Chunk,
    ColMeta,
    Stats,
    Kv,
    Sorting,
    Order,
    Empty,
    Decimal,
    Unit,
    Time,
    Int,
    PageHeader,
    DataPage,
    DictPage,
    DataPageV2,
    /// A struct the reader skips (by the types its fields say).
    Any,
}

/// The type a field must have on the wire.
#[derive(Clone, Copy)]
enum W {
    Bool,
    I8,
    I32,
    I64,
    /// i16, i32 or i64 (read as a varint).
    Varint,
    Bin,
    Struct(S),
    /// A list of structs, i32s or binaries.
    Structs(S),
    I32s,
    Bins,
}

impl S {
    /// The fields of the metadata structs as the Parquet reader (polars-parquet's hand-written
    /// Thrift decoder and the generated page-header decoder) reads them.
    fn field(self, id: i16) -> Option<W> {
        use W::*;
        Some(match (self, id) {
            (S::File, 1) => I32,
            (S::File, 2) => Structs(S::Schema),
            (S::File, 3) => I64,
            (S::File, 4) => Structs(S::RowGroup),
            (S::File, 5) => Structs(S::Kv),
            (S::File, 6) => Bin,
            (S::File, 7) => Structs(S::Order),
            (S::Schema, 1..=3 | 5..=9) => I32,
            (S::Schema, 4) => Bin,
            (S::Schema, 10) => Struct(S::Logical),
            (S::Logical, 1..=4 | 6 | 11..=15) => Struct(S::Empty),
            (S::Logical, 5) => Struct(S::Decimal),
            (S::Logical, 7 | 8) => Struct(S::Time),
            (S::Logical, 10) => Struct(S::Int),
            (S::Decimal, 1 | 2) => I32,
            (S::Time, 1) => Bool,
            (S::Time, 2) => Struct(S::Unit),
            (S::Unit, 1..=3) => Struct(S::Empty),
            (S::Int, 1) => I8,
            (S::Int, 2) => Bool,
            (S::RowGroup, 1) => Structs(S::Chunk),
            (S::RowGroup, 2 | 3) => I64,
            (S::RowGroup, 4) => Structs(S::Sorting),
            (S::RowGroup, 5..=7) => Varint,
            (S::Chunk, 1) => Bin,
            (S::Chunk, 2) => Varint,
            (S::Chunk, 3) => Struct(S::ColMeta),
            (S::Chunk, 4 | 6) => I64,
            (S::Chunk, 5 | 7) => I32,
            (S::ColMeta, 1) => Varint,
            (S::ColMeta, 2) => I32s,
            (S::ColMeta, 3) => Bins,
            (S::ColMeta, 4 | 15) => I32,
            (S::ColMeta, 5..=7 | 9..=11 | 14) => I64,
            (S::ColMeta, 12) => Struct(S::Stats),
            (S::Stats, 1 | 2 | 5 | 6) => Bin,
            (S::Stats, 3 | 4) => I64,
            (S::Stats, 7 | 8) => Bool,
            (S::Kv, 1 | 2) => Bin,
            (S::Sorting, 1) => I32,
            (S::Sorting, 2 | 3) => Bool,
            (S::Order, 1 | 2) => Struct(S::Empty),
            (S::PageHeader, 1..=4) => I32,
            (S::PageHeader, 5) => Struct(S::DataPage),
            (S::PageHeader, 6) => Struct(S::Any),
            (S::PageHeader, 7) => Struct(S::DictPage),
            (S::PageHeader, 8) => Struct(S::DataPageV2),
            (S::DataPage, 1..=4) => I32,
            (S::DataPage, 5) => Struct(S::Stats),
            (S::DictPage, 1 | 2) => I32,
            (S::DictPage, 3) => Bool,
            (S::DataPageV2, 1..=6) => I32,
            (S::DataPageV2, 7) => Bool,
            (S::DataPageV2, 8) => Struct(S::Stats),
            _ => return None,
        })
    }
}

impl W {
    /// Checks wire type `t` (and, for a list, peeks at its element type); gives the struct kind
    /// of what is inside.
    fn check(self, t: u8, r: &Thrift) -> Option<Option<S>> {
        let elem = || r.b.get(r.at).map(|h| h & 0x0f);
        let ok = match self {
            W::Bool => t == 1 || t == 2,
            W::I8 => t == 3,
            W::I32 => t == 5,
            W::I64 => t == 6,
            W::Varint => (4..=6).contains(&t),
            W::Bin => t == 8,
            W::Struct(_) => t == 12,
            W::Structs(_) => t == 9 && elem() == Some(12),
            W::I32s => t == 9 && elem() == Some(5),
            W::Bins => t == 9 && elem() == Some(8),
        };
        ok.then_some(match self {
            W::Struct(k) | W::Structs(k) => Some(k),
            _ => None,
        })
    }
}

/// A reader of Thrift's compact protocol that checks what it reads and reports every integer
/// field with its path of field ids (list and map elements as -1).
struct Thrift<'a> {
    b: &'a [u8],
    at: usize,
}

impl Thrift<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }
    fn left(&self) -> u64 {
        (self.b.len() - self.at) as u64
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    fn skip_bytes(&mut self, n: u64) -> Option<()> {
        (n <= self.left()).then(|| self.at += n as usize)
    }
    /// A count of elements that each take at least one byte.
    fn count(&mut self, n: u64) -> Option<u64> {
        (n <= self.left()).then_some(n)
    }
    fn walk_struct(&mut self, depth: u32, kind: S, path: &mut Vec<i16>, f: &mut dyn FnMut(&[i16], i64)) -> Option<()> {
        if depth > 64 {
            return None;
        }
        let mut id = 0i16;
        loop {
            let h = self.byte()?;
            if h == 0 {
                return Some(());
            }
            id = match h >> 4 {
                0 => i16::try_from(self.zigzag()?).ok()?,
                d => id.checked_add(i16::from(d))?,
            };
            let t = h & 0x0f;
            // A field the Parquet reader knows must have the type it reads it as: it reads by
            // field id, whatever the type says.
            let nested = match kind.field(id) {
                Some(w) => Some(w.check(t, self)?),
                None => None,
            };
            path.push(id);
            let r = match t {
                1 | 2 => Some(()), // a boolean field holds its value in the header
                12 => self.walk_struct(depth + 1, nested.flatten().unwrap_or(S::Any), path, f),
                t => self.walk_value(t, depth, nested.flatten().unwrap_or(S::Any), path, f),
            };
            path.pop();
            r?;
        }
    }
    fn walk_value(&mut self, t: u8, depth: u32, elem: S, path: &mut Vec<i16>, f: &mut dyn FnMut(&[i16], i64)) -> Option<()> {
        match t {
            1 | 2 => self.skip_bytes(1),
            3 => {
                let b = self.byte()?;
                f(path, i64::from(b as i8));
                Some(())
            }
            4..=6 => {
                let v = self.zigzag()?;
                f(path, v);
                Some(())
            }
            7 => self.skip_bytes(8),
            8 => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = if h >> 4 == 15 { self.varint()? } else { u64::from(h >> 4) };
                let n = self.count(n)?;
                path.push(-1);
                let r = (0..n).try_for_each(|_| match h & 0x0f {
                    12 => self.walk_struct(depth + 1, elem, path, f),
                    t => self.walk_value(t, depth + 1, S::Any, path, f),
                });
                path.pop();
                r
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Some(());
                }
                let kv = self.byte()?;
                let n = self.count(n)?;
                path.push(-1);
                let r = (0..n).try_for_each(|_| {
                    self.walk_value(kv >> 4, depth + 1, S::Any, path, f)?;
                    self.walk_value(kv & 0x0f, depth + 1, S::Any, path, f)
                });
                path.pop();
                r
            }
            12 => self.walk_struct(depth + 1, elem, path, f),
            _ => None,
        }
    }
}

fn read_parquet_checked(path: &Path, want: &Want) -> Result<Table, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader.schema().map_err(|e| format!("{name}: {e}"))?;
    let headers: Vec<String> = schema.iter_names().map(|s| s.to_string()).collect();
    require_columns(path, &headers, want)?;
    let cols: Vec<String> = match want.numeric {
        Some(w) => headers.iter().filter(|h| want.text.contains(h) || want.text_if_present.contains(h) || w.contains(h)).cloned().collect(),
        None => headers.clone(),
    };
    let df = reader.with_columns(Some(cols)).finish().map_err(|e| format!("{name}: {e}"))?;
    let mut t = Table::default();
    for c in df.columns() {
        let h = c.name().to_string();
        let err = |e: PolarsError| format!("{name}: column `{h}`: {e}");
        let dt = c.dtype();
        if want.keep_all && dt.is_unsigned_integer() {
            let s = c.cast(&DataType::UInt64).map_err(err)?;
            t.push(&h, Column::U64(s.u64().map_err(err)?.iter().map(|x| x.unwrap_or(0)).collect()), None);
        } else if want.keep_all && *dt == DataType::Boolean {
            t.push(&h, Column::Bool(c.bool().map_err(err)?.iter().map(|x| x.unwrap_or(false)).collect()), None);
        } else if want.text.contains(&h) || want.text_if_present.contains(&h) || (want.keep_all && !dt.is_primitive_numeric()) {
            let s = c.cast(&DataType::String).map_err(err)?;
            let v = s.str().map_err(err)?.iter().map(|x| x.unwrap_or("").to_string()).collect();
            t.push(&h, Column::Str(v), None);
        } else if dt.is_primitive_numeric() {
            let s = c.cast(&DataType::Float64).map_err(err)?;
            let v = s.f64().map_err(err)?.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
            t.push(&h, Column::F64(v), None);
        } else if want.numeric.is_some_and(|w| w.contains(&h)) {
            return Err(format!("{name}: column `{h}` is not numeric (type {})", c.dtype()));
        }
    }
    // A malformed file can decode to columns of different lengths (polars checks this only in
    // its debug builds); everything downstream indexes every column by row.
    let rows = df.height();
    if let Some((h, c, _)) = t.columns.iter().find(|(_, c, _)| c.len() != rows) {
        return Err(format!("{name}: not a readable Parquet file: column `{h}` has {} values, the table {rows} rows", c.len()));
    }
    Ok(t)
}

/// The `tessera.units` metadata of a Parquet table (column → unit); empty when absent.
pub fn units(path: &Path) -> std::collections::BTreeMap<String, String> {
    guarded(path, || {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut reader = ParquetReader::new(file);
        Ok(reader
            .get_metadata()
            .ok()
            .and_then(|m| m.key_value_metadata().clone())
            .and_then(|kv| kv.into_iter().find(|k| k.key == "tessera.units").and_then(|k| k.value))
            .and_then(|v| serde_json::from_str::<std::collections::BTreeMap<String, String>>(&v).ok())
            .unwrap_or_default())
    })
    .unwrap_or_default()
}

/// Reads one of tessera's Parquet tables exactly as written: column types and units (from the
/// `tessera.units` metadata).
pub fn read_exact(path: &Path) -> Result<Table, String> {
    guarded(path, || read_exact_checked(path))
}

fn read_exact_checked(path: &Path) -> Result<Table, String> {
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
            DataType::Int64 => Column::I64(c.i64().map_err(err)?.into_no_null_iter().collect()),
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

/// Reads every column of a CSV or Parquet file, each with its own type ([`Want::keep_all`]).
pub fn read_all(path: &Path) -> Result<Table, String> {
    read_any(path, &Want { keep_all: true, ..Want::default() })
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
        assert!(e.contains("row 3 has 1 fields, the header has 2"), "{e}");
        // Simple quoted fields are unquoted on the fast path; others go through the csv crate.
        let g = ["g".to_string()];
        for (csv, first) in [("g,v\n\"a\",1.5\nc,2\n", "a"), ("g,v\n\"a,b\",1.5\nc,2\n", "a,b"), ("g,v\n\"a\"\"b\",1.5\nc,2\n", "a\"b")] {
            std::fs::write(&p, csv).unwrap();
            let t = read_any(&p, &Want { text: &g, ..Want::default() }).unwrap();
            assert_eq!(t.get("g"), Some(&Column::Str(vec![first.into(), "c".into()])), "{csv}");
            assert_eq!(t.f64("v"), vec![1.5, 2.0]);
        }
        assert!(read_any(&dir.path().join("x.txt.gz"), &Want::default()).unwrap_err().contains("not a table"));
    }

    #[test]
    fn fast_number_parsing_equals_the_standard_library() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 16) as usize + 1;
            let m = x % 10u64.pow(digits.min(16) as u32);
            let s = m.to_string();
            let dot = (x >> 20) as usize % (s.len() + 1);
            let mut t = format!("{}.{}", &s[..dot], &s[dot..]);
            if x & (1 << 40) != 0 {
                t.insert(0, '-');
            }
            let want: f64 = t.parse().unwrap();
            assert_eq!(parse_f64(t.as_bytes()).map(f64::to_bits), Some(want.to_bits()), "{t}");
        }
        for t in ["1e5", "-0", "0.1", "inf", "NaN", "12345678901234567890", ".5", "5."] {
            assert_eq!(parse_f64(t.as_bytes()).map(f64::to_bits), t.parse::<f64>().ok().map(f64::to_bits), "{t}");
        }
        assert_eq!(parse_f64(b"abc"), None);
        assert_eq!(parse_f64(b"1.2.3"), None);
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
