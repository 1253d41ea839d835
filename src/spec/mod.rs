//! The pipeline YAML as written (SPEC §2) and the sample manifest (SPEC §3).
//!
//! This layer owns the YAML crate: it reads the file into positioned nodes, checks the
//! top-level structure, and hands the compiler ([`crate::plan`]) a [`PipelineSpec`] whose
//! stages still carry their raw nodes, so every later error can point at `file:line:col`.
//! Problems are collected as [`Diagnostic`]s, never thrown one at a time.

pub mod manifest;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use yaml::{Node, NodeKind, Pos};

use crate::util::did_you_mean;

/// One problem in a user's file, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Where; `None` for problems of the file as a whole.
    pub pos: Option<Pos>,
    /// Caret width.
    #[serde(skip)]
    pub width: usize,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn at(file: &Path, node: &Node, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_path_buf(), pos: Some(node.pos), width: node.width(), message: message.into(), help: None }
    }
    pub fn whole(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_path_buf(), pos: None, width: 0, message: message.into(), help: None }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    /// Adds "did you mean 'x'?" when one of `candidates` is close to `word`.
    pub fn suggest<'a>(self, word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Self {
        match did_you_mean(word, candidates) {
            Some(s) => self.help(format!("did you mean '{s}'?")),
            None => self,
        }
    }
}

/// A stage as written: its id and its mapping node.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: String,
    pub id_node: Node,
    pub node: Node,
}

/// An `outputs:` entry.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub stage: String,
    pub stage_node: Node,
    pub formats: Vec<(String, Node)>,
}

/// The `stats:` block.
#[derive(Debug, Clone)]
pub struct StatsSpec {
    pub table: (String, Node),
    pub by: (String, Node),
    pub phenotypes: Option<Vec<(String, Node)>>,
    /// Principal components (0: none).
    pub pca: usize,
    /// k-means clusters (0: none).
    pub kmeans: usize,
    pub seed: u64,
    /// Bootstrap replicates of the confidence intervals (0: none).
    pub bootstrap: usize,
    /// Their confidence level.
    pub confidence: f64,
}

/// A pipeline file, structurally checked.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub file: PathBuf,
    pub text: String,
    pub root: Node,
    pub name: String,
    pub description: Option<String>,
    /// Default manifest, resolved against the pipeline's folder.
    pub samples: Option<PathBuf>,
    /// Tables joined onto the manifest's rows (`samples: {table, join}`), resolved likewise.
    pub joins: Vec<manifest::Join>,
    pub spacing: Option<[f64; 3]>,
    pub unit: Option<String>,
    pub tile: Option<Node>,
    pub compression: crate::io::Compression,
    /// Quality of JPEG outputs (1–100).
    pub jpeg_quality: u8,
    /// `sources:` name → manifest column.
    pub sources: Vec<(String, String, Node)>,
    pub stages: Vec<StageSpec>,
    pub outputs: Option<Vec<OutputSpec>>,
    pub stats: Option<StatsSpec>,
}

/// `samples: {table: FILE, join: [{table: FILE, on: KEY or [KEYS], how: inner|left}, …]}`.
fn parse_samples(file: &Path, base: &Path, n: &Node, diags: &mut Vec<Diagnostic>) -> (Option<PathBuf>, Vec<manifest::Join>) {
    for (k, _) in n.as_map().unwrap_or_default() {
        let key = k.as_str().unwrap_or("");
        if key != "table" && key != "join" {
            diags.push(Diagnostic::at(file, k, format!("unknown key '{key}' in `samples`")).suggest(key, ["table", "join"]));
        }
    }
    let table = match n.get("table").map(|t| (t, t.as_str())) {
        Some((_, Some(t))) => Some(base.join(t)),
        Some((t, None)) => {
            diags.push(Diagnostic::at(file, t, "`samples.table` must be a file name"));
            None
        }
        None => {
            diags.push(Diagnostic::at(file, n, "`samples` needs `table:` (the manifest) beside `join:`"));
            None
        }
    };
    let mut joins = Vec::new();
    let items = match n.get("join") {
        None => &[][..],
        Some(j) => match j.as_seq() {
            Some(items) => items,
            None => {
                diags.push(Diagnostic::at(file, j, "`samples.join` must be a list of {table, on, how}"));
                &[][..]
            }
        },
    };
    for item in items {
        for (k, _) in item.as_map().unwrap_or_default() {
            let key = k.as_str().unwrap_or("");
            if !["table", "on", "how"].contains(&key) {
                diags.push(Diagnostic::at(file, k, format!("unknown key '{key}' in a join")).suggest(key, ["table", "on", "how"]));
            }
        }
        let table = item.get("table").and_then(Node::as_str);
        let on: Vec<String> = match item.get("on") {
            Some(o) => match (o.as_str(), o.as_seq()) {
                (Some(k), _) => vec![k.to_string()],
                (None, Some(ks)) => ks.iter().filter_map(|k| k.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let how = match item.get("how").map(|h| (h, h.as_str())) {
            None | Some((_, Some("inner"))) => manifest::How::Inner,
            Some((_, Some("left"))) => manifest::How::Left,
            Some((h, other)) => {
                diags.push(
                    Diagnostic::at(file, h, format!("`how: {}` is not `inner` or `left`", other.unwrap_or("?")))
                        .suggest(other.unwrap_or(""), ["inner", "left"]),
                );
                manifest::How::Inner
            }
        };
        match table {
            Some(t) if !on.is_empty() => joins.push(manifest::Join { table: base.join(t), on, how }),
            _ => {
                diags.push(Diagnostic::at(file, item, "a join needs `table:` (CSV or Parquet) and `on:` (a key column or a list of them)"))
            }
        }
    }
    (table, joins)
}

pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "samples",
    "spacing",
    "unit",
    "tile",
    "compression",
    "jpeg_quality",
    "sources",
    "stages",
    "outputs",
    "stats",
];

pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn is_valid_stage_id(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase()) && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Reads and structurally checks a pipeline file. Returns the spec and every problem found;
/// the spec is `None` only when the file could not be read or parsed as YAML at all.
pub fn load(file: &Path) -> (Option<PipelineSpec>, Vec<Diagnostic>) {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return (None, vec![Diagnostic::whole(file, format!("cannot read pipeline: {e}"))]),
    };
    parse_str(file, text)
}

pub fn parse_str(file: &Path, text: String) -> (Option<PipelineSpec>, Vec<Diagnostic>) {
    let root = match yaml::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            let d = Diagnostic { file: file.to_path_buf(), pos: Some(e.pos), width: 1, message: e.message, help: None };
            return (None, vec![d]);
        }
    };
    let mut diags = Vec::new();
    let Some(entries) = root.as_map() else {
        diags.push(Diagnostic::at(file, &root, "a pipeline file must be a mapping with `version`, `name` and `stages`"));
        return (None, diags);
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or("");
        if !TOP_LEVEL_KEYS.contains(&key) {
            diags.push(Diagnostic::at(file, k, format!("unknown top-level key '{key}'")).suggest(key, TOP_LEVEL_KEYS.iter().copied()));
        }
    }
    let scalar = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<(String, Node)> {
        let n = root.get(key)?;
        match n.as_str() {
            Some(s) => Some((s.to_string(), n.clone())),
            None => {
                diags.push(Diagnostic::at(file, n, format!("`{key}` must be a single value")));
                None
            }
        }
    };
    match scalar("version", &mut diags) {
        Some((v, _)) if v == "1" => {}
        Some((v, n)) => {
            diags.push(Diagnostic::at(file, &n, format!("unsupported pipeline version '{v}'")).help("this tessera reads `version: 1`"))
        }
        None if root.get("version").is_none() => diags.push(Diagnostic::whole(file, "missing `version: 1`")),
        None => {}
    }
    let name = match scalar("name", &mut diags) {
        Some((n, node)) => {
            if !is_valid_name(&n) {
                diags.push(
                    Diagnostic::at(file, &node, format!("invalid pipeline name '{n}'"))
                        .help("names use only letters, digits, '.', '_' and '-'"),
                );
            }
            n
        }
        None => {
            if root.get("name").is_none() {
                diags.push(Diagnostic::whole(file, "missing `name:` (letters, digits, '.', '_', '-')"));
            }
            file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into())
        }
    };
    let description = scalar("description", &mut diags).map(|(s, _)| s);
    let base = file.parent().unwrap_or(Path::new("."));
    let (samples, joins) = match root.get("samples") {
        Some(n) if n.as_map().is_some() => parse_samples(file, base, n, &mut diags),
        _ => (scalar("samples", &mut diags).map(|(s, _)| base.join(s)), Vec::new()),
    };
    let spacing = root.get("spacing").and_then(|n| match parse_spacing(n) {
        Ok(s) => Some(s),
        Err(m) => {
            diags.push(Diagnostic::at(file, n, m));
            None
        }
    });
    let unit = scalar("unit", &mut diags).map(|(s, _)| s);
    let tile = root.get("tile").cloned();
    if let Some(t) = &tile {
        let ok = match &t.kind {
            NodeKind::Scalar(s, _) => s == "auto",
            NodeKind::Seq(items) => {
                items.len() == 3 && items.iter().all(|i| i.as_str().and_then(|s| s.parse::<u32>().ok()).is_some_and(|v| v > 0))
            }
            _ => false,
        };
        if !ok {
            diags.push(Diagnostic::at(file, t, "`tile` must be `auto` or [z, y, x] positive integers"));
        }
    }
    let compression = match scalar("compression", &mut diags) {
        None => crate::io::Compression::default(),
        Some((c, n)) => match serde_yaml::from_value(serde_yaml::Value::String(c.clone())) {
            Ok(v) => v,
            Err(_) => {
                let opts = ["none", "lzw", "deflate", "packbits"];
                diags.push(
                    Diagnostic::at(file, &n, format!("unknown compression '{c}' (expected one of none, lzw, deflate, packbits)"))
                        .suggest(&c, opts),
                );
                crate::io::Compression::default()
            }
        },
    };
    let jpeg_quality = match scalar("jpeg_quality", &mut diags) {
        None => crate::io::DEFAULT_JPEG_QUALITY,
        Some((q, n)) => match q.parse::<u8>() {
            Ok(v) if (1..=100).contains(&v) => v,
            _ => {
                diags.push(Diagnostic::at(file, &n, format!("`jpeg_quality` must be a whole number from 1 to 100, found '{q}'")));
                crate::io::DEFAULT_JPEG_QUALITY
            }
        },
    };

    let mut sources = Vec::new();
    if let Some(n) = root.get("sources") {
        match n.as_map() {
            Some(m) => {
                for (k, v) in m {
                    let name = k.as_str().unwrap_or("").to_string();
                    if !is_valid_stage_id(&name) {
                        diags.push(Diagnostic::at(file, k, format!("invalid source name '{name}'")).help("names are [a-z][a-z0-9_]*"));
                    } else if name == "image" {
                        diags.push(Diagnostic::at(file, k, "`image` is the sample's own image; name the extra source differently"));
                    }
                    match v.as_str() {
                        Some(col) => sources.push((name, col.to_string(), k.clone())),
                        None => diags.push(Diagnostic::at(file, v, "a source maps a name to a manifest column, e.g. `canals: canal_mask`")),
                    }
                }
            }
            None => diags.push(Diagnostic::at(file, n, "`sources` must be a mapping: name → manifest column")),
        }
    }

    let mut stages = Vec::new();
    match root.get("stages") {
        None => diags.push(Diagnostic::whole(file, "missing `stages:` (a mapping of stage id → {op: …})")),
        Some(n) => match n.as_map() {
            None => diags.push(Diagnostic::at(file, n, "`stages` must be a mapping: stage id → {op: …, input: …}")),
            Some([]) => diags.push(Diagnostic::at(file, n, "`stages` is empty")),
            Some(m) => {
                let mut seen = std::collections::HashSet::new();
                for (k, v) in m {
                    let id = k.as_str().unwrap_or("").to_string();
                    if !is_valid_stage_id(&id) {
                        diags.push(Diagnostic::at(file, k, format!("invalid stage id '{id}'")).help("stage ids are [a-z][a-z0-9_]*"));
                        continue;
                    }
                    if id == "image" || sources.iter().any(|(s, _, _)| *s == id) {
                        diags.push(Diagnostic::at(file, k, format!("stage id '{id}' is already the name of an image source")));
                        continue;
                    }
                    if !seen.insert(id.clone()) {
                        diags.push(Diagnostic::at(file, k, format!("stage '{id}' is defined twice")));
                        continue;
                    }
                    if v.as_map().is_none() {
                        diags.push(Diagnostic::at(file, v, format!("stage '{id}' must be a mapping like {{op: threshold, input: image}}")));
                        continue;
                    }
                    stages.push(StageSpec { id, id_node: k.clone(), node: v.clone() });
                }
            }
        },
    }

    let outputs = root.get("outputs").and_then(|n| {
        let Some(m) = n.as_map() else {
            diags.push(Diagnostic::at(file, n, "`outputs` must be a mapping: stage id → format or [formats]"));
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let formats: Vec<(String, Node)> = match &v.kind {
                NodeKind::Scalar(s, _) => vec![(s.clone(), v.clone())],
                NodeKind::Seq(items) => items.iter().filter_map(|i| i.as_str().map(|s| (s.to_string(), i.clone()))).collect(),
                NodeKind::Map(_) => {
                    diags.push(Diagnostic::at(
                        file,
                        v,
                        "an output format is a name (tiff, npy, ome-zarr, parquet, csv) or a list of names",
                    ));
                    continue;
                }
            };
            out.push(OutputSpec { stage: k.as_str().unwrap_or("").to_string(), stage_node: k.clone(), formats });
        }
        Some(out)
    });

    let stats = root.get("stats").and_then(|n| {
        if n.as_map().is_none() {
            diags.push(Diagnostic::at(
                file,
                n,
                "`stats` must be a mapping with `table`, optional `by`, `phenotypes`, `pca`, `kmeans`, `seed`, `bootstrap`, `confidence`",
            ));
            return None;
        }
        for (k, _) in n.as_map().unwrap_or_default() {
            let key = k.as_str().unwrap_or("");
            const KEYS: [&str; 8] = ["table", "by", "phenotypes", "pca", "kmeans", "seed", "bootstrap", "confidence"];
            if !KEYS.contains(&key) {
                diags.push(Diagnostic::at(file, k, format!("unknown key '{key}' in `stats`")).suggest(key, KEYS));
            }
        }
        let table = match n.get("table") {
            Some(t) if t.as_str().is_some() => (t.as_str().unwrap_or("").to_string(), t.clone()),
            _ => {
                diags.push(Diagnostic::at(file, n, "`stats` needs `table: <measure stage>`"));
                return None;
            }
        };
        let by = match n.get("by") {
            Some(b) => (b.as_str().unwrap_or("sample").to_string(), b.clone()),
            None => ("sample".to_string(), n.clone()),
        };
        let phenotypes = n.get("phenotypes").map(|p| match &p.kind {
            NodeKind::Seq(items) => items.iter().filter_map(|i| i.as_str().map(|s| (s.to_string(), i.clone()))).collect(),
            NodeKind::Scalar(s, _) => s.split(',').map(|x| (x.trim().to_string(), p.clone())).collect(),
            NodeKind::Map(_) => Vec::new(),
        });
        let mut count = |key: &str, min: u64, max: u64| -> u64 {
            let Some(v) = n.get(key) else { return 0 };
            match v.as_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(x) if (min..=max).contains(&x) => x,
                _ => {
                    diags.push(Diagnostic::at(file, v, format!("`stats.{key}` must be a whole number from {min} to {max}")));
                    0
                }
            }
        };
        let pca = count("pca", 1, 1000) as usize;
        let kmeans = count("kmeans", 1, 100_000) as usize;
        let seed = if n.get("seed").is_some() { count("seed", 0, u64::MAX) } else { 1 };
        let defaults = crate::stats::Bootstrap::default();
        let bootstrap = if n.get("bootstrap").is_some() { count("bootstrap", 0, 1_000_000) as usize } else { defaults.replicates };
        let confidence = match n.get("confidence") {
            None => defaults.level,
            Some(v) => match v.as_str().and_then(|s| s.parse::<f64>().ok()) {
                Some(x) if x > 0.0 && x < 1.0 => x,
                _ => {
                    diags.push(Diagnostic::at(file, v, "`stats.confidence` must be a number between 0 and 1 (e.g. 0.95)"));
                    defaults.level
                }
            },
        };
        Some(StatsSpec { table, by, phenotypes, pca, kmeans, seed, bootstrap, confidence })
    });

    let spec = PipelineSpec {
        file: file.to_path_buf(),
        text,
        root: root.clone(),
        name,
        description,
        samples,
        spacing,
        unit,
        tile,
        compression,
        jpeg_quality,
        joins,
        sources,
        stages,
        outputs,
        stats,
    };
    (Some(spec), diags)
}

fn parse_spacing(n: &Node) -> Result<[f64; 3], String> {
    let num = |x: &Node| x.as_str().and_then(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0);
    match &n.kind {
        NodeKind::Scalar(..) => num(n).map(|v| [v, v, v]).ok_or_else(|| "`spacing` must be a positive number or [z, y, x]".into()),
        NodeKind::Seq(items) if items.len() == 3 => {
            let v: Vec<f64> = items.iter().filter_map(num).collect();
            if v.len() == 3 { Ok([v[0], v[1], v[2]]) } else { Err("`spacing` values must be positive numbers".into()) }
        }
        NodeKind::Seq(items) if items.len() == 2 => {
            let v: Vec<f64> = items.iter().filter_map(num).collect();
            if v.len() == 2 { Ok([1.0, v[0], v[1]]) } else { Err("`spacing` values must be positive numbers".into()) }
        }
        _ => Err("`spacing` must be a positive number, [y, x] or [z, y, x]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<PipelineSpec>, Vec<Diagnostic>) {
        parse_str(Path::new("p.yaml"), text.to_string())
    }

    #[test]
    fn unknown_top_level_key_is_positioned_and_suggested() {
        let (_, d) = parse("version: 1\nname: x\nstagse: {}\n");
        assert!(
            d.iter().any(|d| d.message.contains("unknown top-level key 'stagse'")
                && d.help.as_deref() == Some("did you mean 'stages'?")
                && d.pos.unwrap().line == 3),
            "{d:?}"
        );
    }

    #[test]
    fn minimal_pipeline_is_clean() {
        let (s, d) = parse("version: 1\nname: a-b.c\nstages:\n  m: {op: threshold, input: image, method: otsu}\n");
        assert!(d.is_empty(), "{d:?}");
        let s = s.unwrap();
        assert_eq!(s.name, "a-b.c");
        assert_eq!(s.stages[0].id, "m");
    }

    #[test]
    fn bad_names_and_values() {
        let (_, d) = parse("version: 2\nname: 'a b'\nspacing: [1, -2, 3]\nstages:\n  Bad: {op: x}\n");
        let msgs: Vec<_> = d.iter().map(|d| d.message.as_str()).collect();
        assert!(msgs.iter().any(|m| m.contains("version")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("invalid pipeline name")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("spacing")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("invalid stage id 'Bad'")), "{msgs:?}");
    }
}
