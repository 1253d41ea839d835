//! The compiler: a [`PipelineSpec`] becomes a typed stage graph ([`Plan`]).
//!
//! Compilation resolves ops against the registry, builds each op from its parameters, resolves
//! inputs, rejects cycles, orders stages topologically, checks kinds, and validates outputs and
//! statistics — collecting every problem as a positioned [`Diagnostic`]. Binding a plan to one
//! sample ([`Plan::bind`]) adds what depends on the data: dimensionality, dtype, shape.

pub mod render;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::Header;
use crate::ops::{self, Halo, Input, Kind, Meta, Op, ParamIssue};
use crate::spec::manifest::SampleRow;
use crate::spec::{Diagnostic, Node, PipelineSpec};

/// Where a stage input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ref {
    /// Image source: 0 is the sample's `image`, i > 0 the i-th `sources:` entry.
    Source(usize),
    /// Another stage, by index into [`Plan::stages`].
    Stage(usize),
}

/// Output file formats: voxel files (written by [`crate::io`]) or tables (by [`crate::table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Format {
    Voxels(crate::io::VoxelFormat),
    Table(crate::table::TableFormat),
}

impl Format {
    /// Whether the format holds voxels (images, masks, labels) rather than a table.
    pub fn holds_voxels(self) -> bool {
        matches!(self, Format::Voxels(_))
    }

    pub fn ext(self) -> &'static str {
        match self {
            Format::Voxels(v) => v.ext(),
            Format::Table(t) => t.ext(),
        }
    }
    fn parse(s: &str) -> Option<Format> {
        crate::io::VoxelFormat::parse(s).map(Format::Voxels).or_else(|| crate::table::TableFormat::parse(s).map(Format::Table))
    }
}

/// A `${column}` parameter: where it is and which manifest column fills it.
#[derive(Debug, Clone)]
pub struct Placeholder {
    pub path: Vec<PathPart>,
    pub column: String,
}

#[derive(Debug, Clone)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

/// A compiled stage.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: String,
    pub op: Arc<dyn Op>,
    /// The parameters as written (without `op`), for re-building with `${column}` values.
    pub params: serde_yaml::Value,
    pub placeholders: Vec<Placeholder>,
    pub inputs: Vec<(Input, Ref)>,
    pub kind: Kind,
    pub halo: Halo,
    /// The stage's mapping in the pipeline file.
    pub node: Node,
}

/// A file a stage's parameter names (a `classify` model), as the compiler read it.
#[derive(Debug, Clone)]
pub struct StageFile {
    pub stage: String,
    pub param: &'static str,
    /// The path as resolved (relative paths from the pipeline file's folder).
    pub path: PathBuf,
    pub bytes: Arc<Vec<u8>>,
}

/// The largest file a stage parameter may name.
const MAX_STAGE_FILE: u64 = 1 << 30;

/// Gives `op` the file its parameters name, if any ([`Op::file`]), read relative to the folder
/// of `pipeline`; the error names the parameter.
fn with_file(op: Box<dyn Op>, stage: &str, pipeline: &Path) -> Result<(Box<dyn Op>, Option<StageFile>), ParamIssue> {
    let Some((param, written)) = op.file() else { return Ok((op, None)) };
    let path = pipeline.parent().unwrap_or(Path::new("")).join(written);
    let len = std::fs::metadata(&path).map_err(|e| ParamIssue::new(param, format!("cannot read {}: {e}", path.display())))?.len();
    if len > MAX_STAGE_FILE {
        return Err(ParamIssue::new(param, format!("{} is {} bytes, more than the {MAX_STAGE_FILE} accepted", path.display(), len)));
    }
    let bytes = std::fs::read(&path).map_err(|e| ParamIssue::new(param, format!("cannot read {}: {e}", path.display())))?;
    let loaded = op.with_file(&bytes, &path).map_err(|m| ParamIssue::new(param, m))?;
    Ok((loaded, Some(StageFile { stage: stage.to_string(), param, path, bytes: Arc::new(bytes) })))
}

/// The within/between statistics request.
#[derive(Debug, Clone)]
pub struct StatsPlan {
    pub table: usize,
    pub request: crate::stats::analysis::Request,
}

/// A compiled pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: PipelineSpec,
    /// Source names: `image`, then the `sources:` names.
    pub sources: Vec<String>,
    /// Stages in topological order (ties in file order).
    pub stages: Vec<Stage>,
    pub outputs: Vec<(usize, Vec<Format>)>,
    pub stats: Option<StatsPlan>,
    /// Files stages' parameters name, read when compiling.
    pub files: Vec<StageFile>,
    /// blake3 of the pipeline text.
    pub hash: String,
}

fn issue_diag(spec: &PipelineSpec, node: &Node, issue: &ParamIssue, prefix: &str) -> Diagnostic {
    let at = if issue.field.is_empty() { node } else { node.at_path(&issue.field) };
    let mut d = Diagnostic::at(&spec.file, at, format!("{prefix}{}", issue.message));
    if let Some(h) = &issue.help {
        d = d.help(h.clone());
    } else if let Some((bad, expected)) = parse_unknown_variant(&issue.message) {
        d = d.suggest(&bad, expected.iter().map(String::as_str));
    }
    d
}

/// Reads serde's "unknown variant `x`, expected one of `a`, `b`" into its parts.
fn parse_unknown_variant(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown variant `")?;
    let bad = rest[..rest.find('`')?].to_string();
    let expected = rest.split('`').skip(2).step_by(2).map(str::to_string).collect();
    Some((bad, expected))
}

fn find_placeholders(v: &serde_yaml::Value, path: &mut Vec<PathPart>, out: &mut Vec<Placeholder>) {
    match v {
        serde_yaml::Value::String(s) => {
            if let Some(col) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                out.push(Placeholder { path: path.clone(), column: col.trim().to_string() });
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(PathPart::Index(i));
                find_placeholders(item, path, out);
                path.pop();
            }
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, item) in m {
                path.push(PathPart::Key(k.as_str().unwrap_or("").to_string()));
                find_placeholders(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn set_at(v: &mut serde_yaml::Value, path: &[PathPart], new: serde_yaml::Value) {
    let mut cur = v;
    for p in path {
        cur = match (p, cur) {
            (PathPart::Key(k), serde_yaml::Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(x) => x,
                None => return,
            },
            (PathPart::Index(i), serde_yaml::Value::Sequence(s)) => match s.get_mut(*i) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
    }
    *cur = new;
}

fn path_string(path: &[PathPart]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            PathPart::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathPart::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Substitutes `${column}` values from a manifest row (as YAML scalars: `12` is a number).
pub fn substitute(params: &serde_yaml::Value, placeholders: &[Placeholder], row: &SampleRow) -> Result<serde_yaml::Value, String> {
    let mut v = params.clone();
    for p in placeholders {
        let value = row.value(&p.column).ok_or_else(|| {
            format!("parameter `{}` needs manifest column `{}`, which this sample does not have", path_string(&p.path), p.column)
        })?;
        set_at(&mut v, &p.path, crate::spec::yaml::plain_scalar(value));
    }
    Ok(v)
}

/// Compiles a pipeline. `columns` are the manifest's metadata columns when a manifest is known
/// (to check `${column}` parameters and `stats.by`), and `first_row` a row to check
/// `${column}` values with.
pub fn compile(spec: PipelineSpec, columns: Option<&[String]>, first_row: Option<&SampleRow>) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let file = spec.file.clone();
    let mut sources = vec!["image".to_string()];
    sources.extend(spec.sources.iter().map(|(n, _, _)| n.clone()));
    if let Some(cols) = columns {
        for (_, col, node) in &spec.sources {
            if !cols.iter().any(|c| c == col) {
                diags.push(
                    Diagnostic::at(
                        &file,
                        spec.root.get("sources").and_then(|s| s.get(node.as_str().unwrap_or(""))).unwrap_or(node),
                        format!("source column `{col}` is not in the manifest"),
                    )
                    .suggest(col, cols.iter().map(String::as_str)),
                );
            }
        }
    }

    // 1. Build every op.
    struct Built {
        id: String,
        op: Arc<dyn Op>,
        params: serde_yaml::Value,
        placeholders: Vec<Placeholder>,
        node: Node,
        id_node: Node,
    }
    let mut built: Vec<Built> = Vec::new();
    let mut files: Vec<StageFile> = Vec::new();
    let op_names: Vec<&str> = ops::REGISTRY.iter().map(|o| o.name).collect();
    for st in &spec.stages {
        let Some(op_node) = st.node.get("op") else {
            diags.push(
                Diagnostic::at(&file, &st.id_node, format!("stage '{}' has no `op`", st.id)).help(format!("ops: {}", op_names.join(", "))),
            );
            continue;
        };
        let op_name = op_node.as_str().unwrap_or("");
        let Some(info) = ops::lookup(op_name) else {
            diags.push(
                Diagnostic::at(&file, op_node, format!("unknown op '{op_name}'"))
                    .suggest(op_name, op_names.iter().copied())
                    .help_if_none(format!("`tessera ops` lists the ops: {}", op_names.join(", "))),
            );
            continue;
        };
        let mut params = serde_yaml::Mapping::new();
        let mut ok = true;
        for (k, v) in st.node.as_map().unwrap_or_default() {
            let key = k.as_str().unwrap_or("");
            if key == "op" {
                continue;
            }
            if info.param(key).is_none() {
                let names: Vec<&str> = info.params.iter().map(|p| p.name).collect();
                diags.push(
                    Diagnostic::at(&file, k, format!("unknown parameter '{key}' for op `{}`", info.name))
                        .suggest(key, names.iter().copied())
                        .help_if_none(format!("`{}` takes: {}", info.name, names.join(", "))),
                );
                ok = false;
                continue;
            }
            params.insert(serde_yaml::Value::String(key.to_string()), v.to_value());
        }
        let params = serde_yaml::Value::Mapping(params);
        let mut placeholders = Vec::new();
        find_placeholders(&params, &mut Vec::new(), &mut placeholders);
        for p in &placeholders {
            if let Some(cols) = columns
                && p.column != "sample"
                && !cols.iter().any(|c| c == &p.column)
            {
                let at = st.node.at_path(&path_string(&p.path));
                diags.push(
                    Diagnostic::at(&file, at, format!("`${{{}}}` names no manifest column", p.column))
                        .suggest(&p.column, cols.iter().map(String::as_str)),
                );
                ok = false;
            }
        }
        // Check `${column}` parameters with the first sample's values, or a stand-in number.
        let concrete = match first_row {
            Some(row) if ok => substitute(&params, &placeholders, row).unwrap_or_else(|_| params.clone()),
            _ => {
                let mut v = params.clone();
                for p in &placeholders {
                    set_at(&mut v, &p.path, serde_yaml::Value::Number(0.into()));
                }
                v
            }
        };
        let built_op = (info.build)(crate::ops::Params::new(concrete)).and_then(|op| {
            let deferred = op.file().is_some_and(|(param, _)| placeholders.iter().any(|p| path_string(&p.path) == param));
            if !op.check().is_empty() || deferred {
                // Checked at bind time, with the sample's own value.
                return Ok(op);
            }
            let (op, file) = with_file(op, &st.id, &spec.file)?;
            files.extend(file);
            Ok(op)
        });
        match built_op {
            Ok(op) => {
                for issue in op.check() {
                    if placeholders.iter().any(|p| path_string(&p.path) == issue.field) && first_row.is_none() {
                        continue;
                    }
                    diags.push(issue_diag(&spec, &st.node, &issue, ""));
                }
                built.push(Built {
                    id: st.id.clone(),
                    op: Arc::from(op),
                    params,
                    placeholders,
                    node: st.node.clone(),
                    id_node: st.id_node.clone(),
                });
            }
            Err(issue) => {
                if ok {
                    diags.push(issue_diag(&spec, &st.node, &issue, &format!("stage '{}': ", st.id)));
                }
            }
        }
    }

    // 2. Resolve inputs.
    let index: HashMap<&str, usize> = built.iter().enumerate().map(|(i, b)| (b.id.as_str(), i)).collect();
    let all_ids: Vec<&str> = spec.stages.iter().map(|s| s.id.as_str()).collect();
    let mut inputs: Vec<Vec<(Input, Ref)>> = Vec::new();
    let mut unresolved = false;
    for b in &built {
        let mut v = Vec::new();
        let intensity_names: Vec<String> = b
            .node
            .get("intensity")
            .and_then(Node::as_map)
            .map(|m| m.iter().map(|(k, _)| k.as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default();
        let mut intensity_i = 0;
        for inp in b.op.inputs() {
            let field = if inp.role == "intensity" {
                let f = format!("intensity.{}", intensity_names.get(intensity_i).cloned().unwrap_or_default());
                intensity_i += 1;
                f
            } else {
                inp.role.to_string()
            };
            let r = if let Some(si) = sources.iter().position(|s| *s == inp.stage) {
                Some(Ref::Source(si))
            } else {
                index.get(inp.stage.as_str()).map(|&i| Ref::Stage(i))
            };
            match r {
                Some(r) => v.push((inp, r)),
                None if all_ids.contains(&inp.stage.as_str()) => {
                    // The stage exists but did not compile: its own error is already reported.
                    unresolved = true;
                }
                None => {
                    unresolved = true;
                    let at = b.node.at_path(&field);
                    let at = if at == &b.node { &b.id_node } else { at };
                    let names: Vec<&str> = sources.iter().map(String::as_str).chain(all_ids.iter().copied()).collect();
                    diags.push(
                        Diagnostic::at(&file, at, format!("stage '{}': input '{}' names no stage or image source", b.id, inp.stage))
                            .suggest(&inp.stage, names.iter().copied().filter(|n| *n != b.id))
                            .help_if_none(format!("inputs can be: {}", names.join(", "))),
                    );
                }
            }
        }
        inputs.push(v);
    }

    // 3. Cycles and topological order.
    let n = built.len();
    let deps: Vec<Vec<usize>> =
        inputs.iter().map(|v| v.iter().filter_map(|(_, r)| if let Ref::Stage(i) = r { Some(*i) } else { None }).collect()).collect();
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::with_capacity(n);
    let mut cyclic = false;
    let mut reported: Vec<Vec<usize>> = Vec::new();
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        state[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            match state[d] {
                0 => visit(d, deps, state, stack, order, cycles),
                1 => {
                    let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                    cycles.push(stack[start..].to_vec());
                }
                _ => {}
            }
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
    }
    for i in 0..n {
        if state[i] == 0 {
            visit(i, &deps, &mut state, &mut Vec::new(), &mut order, &mut reported);
        }
    }
    for cyc in &reported {
        cyclic = true;
        // Print in data-flow order: each stage feeds the next.
        let mut names: Vec<&str> = cyc.iter().rev().map(|&i| built[i].id.as_str()).collect();
        let first = cyc.iter().copied().min().unwrap_or(cyc[0]);
        let rot = names.iter().position(|n| *n == built[first].id).unwrap_or(0);
        names.rotate_left(rot);
        names.push(names[0]);
        diags.push(
            Diagnostic::at(&file, &built[first].id_node, format!("cycle: {}", names.join(" → ")))
                .help("a stage cannot depend on its own output"),
        );
    }

    // 4. Kinds, in topological order (an op's output kind may follow its input's).
    let mut kinds: Vec<Kind> = built.iter().map(|b| b.op.info().output).collect();
    if !cyclic {
        for &i in &order {
            let ins: Vec<Kind> = inputs[i]
                .iter()
                .map(|(_, r)| match r {
                    Ref::Source(_) => Kind::Image,
                    Ref::Stage(j) => kinds[*j],
                })
                .collect();
            kinds[i] = built[i].op.output_kind(&ins);
        }
    }
    let kind_of = |r: Ref| -> Kind {
        match r {
            Ref::Source(_) => Kind::Image,
            Ref::Stage(i) => kinds[i],
        }
    };
    for (b, v) in built.iter().zip(&inputs) {
        for (inp, r) in v {
            let k = kind_of(*r);
            if !inp.accepts.contains(&k) {
                let field = if inp.role == "intensity" {
                    b.node
                        .get("intensity")
                        .and_then(Node::as_map)
                        .and_then(|m| m.iter().find(|(_, v)| v.as_str() == Some(&inp.stage)))
                        .map(|(_, v)| v.clone())
                } else {
                    b.node.get(inp.role).cloned()
                };
                let at = field.unwrap_or_else(|| b.id_node.clone());
                let want: Vec<&str> = inp.accepts.iter().map(|k| k.with_article()).collect();
                let hint = match (inp.accepts.first(), k) {
                    (Some(Kind::Mask), Kind::Image) => Some("threshold the image first (op: threshold)"),
                    (Some(Kind::Labels), Kind::Mask) => Some("label the mask first (op: label)"),
                    (Some(Kind::Labels), Kind::Image) => Some("threshold and label the image first"),
                    _ => None,
                };
                let mut d = Diagnostic::at(
                    &file,
                    &at,
                    format!("stage '{}': `{}` needs {} but '{}' is {}", b.id, inp.role, want.join(" or "), inp.stage, k.with_article()),
                );
                if let Some(h) = hint {
                    d = d.help(h);
                }
                diags.push(d);
            }
        }
    }

    // 5. Outputs and statistics.
    let pos_of: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut outputs = Vec::new();
    match &spec.outputs {
        Some(outs) => {
            for o in outs {
                let Some(&i) = index.get(o.stage.as_str()) else {
                    if !all_ids.contains(&o.stage.as_str()) {
                        diags.push(
                            Diagnostic::at(&file, &o.stage_node, format!("output '{}' is not a stage", o.stage))
                                .suggest(&o.stage, all_ids.iter().copied()),
                        );
                    }
                    continue;
                };
                let k = kinds[i];
                let mut fs = Vec::new();
                for (f, fnode) in &o.formats {
                    let allowed: &[&str] = if k == Kind::Table { &["parquet", "csv"] } else { &["tiff", "npy", "ome-zarr", "png", "jpeg"] };
                    match Format::parse(f) {
                        Some(Format::Voxels(crate::io::VoxelFormat::Jpeg { .. })) if k != Kind::Table => {
                            fs.push(Format::Voxels(crate::io::VoxelFormat::Jpeg { quality: spec.jpeg_quality }))
                        }
                        Some(fmt) if fmt.holds_voxels() == (k != Kind::Table) => fs.push(fmt),
                        _ => diags.push(
                            Diagnostic::at(&file, fnode, format!("'{f}' is not an output format for {} stage '{}'", k, o.stage))
                                .suggest(f, allowed.iter().copied())
                                .help_if_none(format!("{} stages are written as {}", k, allowed.join(" or "))),
                        ),
                    }
                }
                if fs.is_empty() && o.formats.is_empty() {
                    diags.push(Diagnostic::at(&file, &o.stage_node, format!("output '{}' lists no format", o.stage)));
                }
                if !fs.is_empty() {
                    outputs.push((pos_of.get(&i).copied().unwrap_or(0), fs));
                }
            }
        }
        None => {
            for (p, &i) in order.iter().enumerate() {
                match kinds[i] {
                    Kind::Labels => outputs.push((p, vec![Format::Voxels(crate::io::VoxelFormat::Tiff)])),
                    Kind::Table => outputs.push((p, vec![Format::Table(crate::table::TableFormat::Parquet)])),
                    _ => {}
                }
            }
        }
    }
    let mut stats = None;
    if let Some(s) = &spec.stats {
        match index.get(s.table.0.as_str()) {
            Some(&i) if kinds[i] == Kind::Table => {
                let added = built[i].op.group_columns();
                if let Some(cols) = columns
                    && s.by.0 != "sample"
                    && !cols.contains(&s.by.0)
                    && !added.contains(&s.by.0)
                {
                    let what = if added.is_empty() {
                        "`sample` or a manifest column".to_string()
                    } else {
                        format!("`sample`, a manifest column or a column of '{}' ({})", s.table.0, added.join(", "))
                    };
                    diags.push(
                        Diagnostic::at(&file, &s.by.1, format!("`stats.by: {}` is not {what}", s.by.0))
                            .suggest(&s.by.0, cols.iter().chain(&added).map(String::as_str)),
                    );
                }
                stats = Some(StatsPlan {
                    table: pos_of.get(&i).copied().unwrap_or(0),
                    request: crate::stats::analysis::Request {
                        by: s.by.0.clone(),
                        phenotypes: s.phenotypes.as_ref().map(|p| p.iter().map(|x| x.0.clone()).collect()),
                        pca: s.pca,
                        kmeans: s.kmeans,
                        seed: s.seed,
                        bootstrap: s.bootstrap,
                        confidence: s.confidence,
                    },
                });
            }
            Some(_) => {
                diags.push(Diagnostic::at(&file, &s.table.1, format!("`stats.table: {}` is not a table stage (op: measure)", s.table.0)))
            }
            None => {
                if !all_ids.contains(&s.table.0.as_str()) {
                    diags.push(
                        Diagnostic::at(&file, &s.table.1, format!("`stats.table: {}` is not a stage", s.table.0))
                            .suggest(&s.table.0, all_ids.iter().copied()),
                    );
                }
            }
        }
    }

    if cyclic || unresolved || !diags.is_empty() || built.len() != spec.stages.len() {
        return (None, diags);
    }

    // Assemble stages in topological order, renumbering references.
    let mut stages = Vec::with_capacity(n);
    for &i in &order {
        let b = &built[i];
        let ins = inputs[i]
            .iter()
            .map(|(inp, r)| {
                let r = match r {
                    Ref::Stage(j) => Ref::Stage(pos_of[j]),
                    s => *s,
                };
                (inp.clone(), r)
            })
            .collect();
        stages.push(Stage {
            id: b.id.clone(),
            op: b.op.clone(),
            params: b.params.clone(),
            placeholders: b.placeholders.clone(),
            inputs: ins,
            kind: kinds[i],
            halo: b.op.halo(),
            node: b.node.clone(),
        });
    }
    let hash = blake3::hash(spec.text.as_bytes()).to_hex().to_string();
    (Some(Plan { spec, sources, stages, outputs, stats, files, hash }), diags)
}

trait HelpIfNone {
    fn help_if_none(self, h: String) -> Self;
}
impl HelpIfNone for Diagnostic {
    fn help_if_none(self, h: String) -> Self {
        if self.help.is_none() { self.help(h) } else { self }
    }
}

/// A plan bound to one sample: the ops (with `${column}` values) and each stage's metadata.
#[derive(Debug, Clone)]
pub struct Bound {
    pub ops: Vec<Arc<dyn Op>>,
    pub metas: Vec<Meta>,
}

/// A problem binding a plan to a sample, at a stage (`None`: the sample's inputs).
#[derive(Debug, Clone)]
pub struct BindError {
    pub stage: Option<usize>,
    pub issue: ParamIssue,
}

impl Plan {
    /// Builds the sample's ops and infers every stage's output from the sources' headers.
    pub fn bind(&self, row: &SampleRow, headers: &[Header]) -> Result<Bound, BindError> {
        let mut ops_v = Vec::with_capacity(self.stages.len());
        let mut metas: Vec<Meta> = Vec::with_capacity(self.stages.len());
        let src_meta: Vec<Meta> = headers
            .iter()
            .map(|h| Meta { kind: Kind::Image, dtype: Some(h.dtype), shape: h.shape, ndim: h.ndim, scale: [1.0; 3] })
            .collect();
        for (i, st) in self.stages.iter().enumerate() {
            let op: Arc<dyn Op> = if st.placeholders.is_empty() {
                st.op.clone()
            } else {
                let v = substitute(&st.params, &st.placeholders, row)
                    .map_err(|m| BindError { stage: Some(i), issue: ParamIssue::new("", m) })?;
                let op = (st.op.info().build)(crate::ops::Params::new(v)).map_err(|issue| BindError { stage: Some(i), issue })?;
                if let Some(issue) = op.check().into_iter().next() {
                    return Err(BindError { stage: Some(i), issue });
                }
                let (op, _) = with_file(op, &st.id, &self.spec.file).map_err(|issue| BindError { stage: Some(i), issue })?;
                Arc::from(op)
            };
            let ins: Vec<Meta> = st
                .inputs
                .iter()
                .map(|(_, r)| match r {
                    Ref::Source(s) => src_meta[*s].clone(),
                    Ref::Stage(j) => metas[*j].clone(),
                })
                .collect();
            if let (Some(first), Some(other)) = (ins.first(), ins.iter().find(|m| m.shape != ins[0].shape && m.kind != Kind::Table))
                && first.kind != Kind::Table
            {
                return Err(BindError {
                    stage: Some(i),
                    issue: ParamIssue::new("", format!("inputs differ in shape: {:?} and {:?} (z, y, x)", first.shape, other.shape)),
                });
            }
            let m = op.infer(&ins).map_err(|issue| BindError { stage: Some(i), issue })?;
            metas.push(m);
            ops_v.push(op);
        }
        Ok(Bound { ops: ops_v, metas })
    }

    /// The positioned diagnostic for a bind error of a sample.
    pub fn bind_diagnostic(&self, sample: &str, e: &BindError) -> Diagnostic {
        match e.stage {
            Some(i) => {
                issue_diag(&self.spec, &self.stages[i].node, &e.issue, &format!("sample '{sample}', stage '{}': ", self.stages[i].id))
            }
            None => Diagnostic::whole(&self.spec.file, format!("sample '{sample}': {}", e.issue.message)),
        }
    }

    /// The stages stage `i` reads (its stage inputs, not sources), in input order.
    pub fn stage_inputs(&self, i: usize) -> Vec<usize> {
        self.stages[i].inputs.iter().filter_map(|(_, r)| if let Ref::Stage(j) = r { Some(*j) } else { None }).collect()
    }

    /// Which stage outputs each stage's value is last needed by (for freeing memory early).
    pub fn last_use(&self) -> Vec<usize> {
        let mut last: Vec<usize> = (0..self.stages.len()).collect();
        for (i, st) in self.stages.iter().enumerate() {
            for (_, r) in &st.inputs {
                if let Ref::Stage(j) = r {
                    last[*j] = last[*j].max(i);
                }
            }
        }
        last
    }

    /// Stage index by id.
    pub fn stage(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn compile_str(text: &str) -> (Option<Plan>, Vec<Diagnostic>) {
        let (spec, mut d) = crate::spec::parse_str(Path::new("p.yaml"), text.to_string());
        let (plan, d2) = compile(spec.unwrap(), None, None);
        d.extend(d2);
        (plan, d)
    }

    const GOOD: &str = "version: 1\nname: t\nstages:\n  m: {op: threshold, input: image, method: otsu}\n  l: {op: label, input: m, connectivity: 6}\n  t: {op: measure, labels: l, intensity: {raw: image}}\n";

    #[test]
    fn compiles_in_order_with_kinds_and_halos() {
        let (p, d) = compile_str(GOOD);
        assert!(d.is_empty(), "{d:?}");
        let p = p.unwrap();
        let ids: Vec<_> = p.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["m", "l", "t"]);
        assert_eq!(p.stages[1].kind, Kind::Labels);
        assert_eq!(p.stages[0].halo, Halo::Global);
        assert_eq!(
            p.outputs,
            vec![(1, vec![Format::Voxels(crate::io::VoxelFormat::Tiff)]), (2, vec![Format::Table(crate::table::TableFormat::Parquet)])]
        );
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let text = "version: 1\nname: t\nstages:\n  m: {op: treshold, input: image, method: otsu}\n  l: {op: label, input: mm, conectivity: 6}\n  t: {op: measure, labels: image}\n";
        let (p, d) = compile_str(text);
        assert!(p.is_none());
        let msgs: Vec<String> = d
            .iter()
            .map(|d| format!("{}:{} {} [{}]", d.pos.unwrap().line, d.pos.unwrap().col, d.message, d.help.clone().unwrap_or_default()))
            .collect();
        assert!(msgs.iter().any(|m| m.starts_with("4:11 unknown op 'treshold'") && m.contains("did you mean 'threshold'")), "{msgs:#?}");
        assert!(msgs.iter().any(|m| m.starts_with("5:29 unknown parameter 'conectivity'") && m.contains("'connectivity'")), "{msgs:#?}");
        assert!(msgs.iter().any(|m| m.contains("input 'mm'") && m.contains("did you mean 'm'")), "{msgs:#?}");
        assert!(msgs.iter().any(|m| m.contains("`labels` needs labels but 'image' is an image")), "{msgs:#?}");
    }

    #[test]
    fn cycles_are_printed() {
        let text = "version: 1\nname: t\nstages:\n  a: {op: threshold, input: c, method: otsu}\n  b: {op: label, input: a}\n  c: {op: measure, labels: b}\n";
        let (_, d) = compile_str(text);
        assert!(d.iter().any(|d| d.message.contains("cycle") || d.message.contains("needs")), "{d:?}");
        let text = "version: 1\nname: t\nstages:\n  a: {op: label, input: b}\n  b: {op: label, input: a}\n";
        let (_, d) = compile_str(text);
        let c = d.iter().find(|d| d.message.starts_with("cycle")).expect("cycle reported");
        assert_eq!(c.message, "cycle: a → b → a");
    }

    #[test]
    fn out_of_range_values_and_variants() {
        let text = "version: 1\nname: t\nstages:\n  m: {op: threshold, method: otsuu}\n  l: {op: label, input: m, connectivity: 5, min_size: 9, max_size: 3}\n";
        let (_, d) = compile_str(text);
        assert!(
            d.iter().any(|d| d.message.contains("unknown variant `otsuu`") && d.help.as_deref() == Some("did you mean 'otsu'?")),
            "{d:?}"
        );
        assert!(d.iter().any(|d| d.message.contains("connectivity 5")), "{d:?}");
        assert!(d.iter().any(|d| d.message.contains("`max_size` (3) is smaller")), "{d:?}");
    }

    #[test]
    fn binding_checks_dimensionality() {
        let (p, _) = compile_str(GOOD);
        let p = p.unwrap();
        let row = SampleRow { line: 0, id: "s".into(), image: "x".into(), meta: vec![], problem: None };
        let h2 = Header { shape: [1, 10, 10], dtype: crate::io::DType::U8, ndim: 2, spacing: None };
        let e = p.bind(&row, &[h2]).unwrap_err();
        assert_eq!(e.issue.field, "connectivity");
        assert!(e.issue.message.contains("this image is 2D"));
        let h3 = Header { shape: [4, 10, 10], dtype: crate::io::DType::U16, ndim: 3, spacing: None };
        let b = p.bind(&row, &[h3]).unwrap();
        assert_eq!(b.metas[2].kind, Kind::Table);
    }

    #[test]
    fn placeholders_take_manifest_values() {
        let text = "version: 1\nname: t\nstages:\n  m: {op: threshold, method: fixed, value: '${cut}'}\n";
        let (spec, _) = crate::spec::parse_str(Path::new("p.yaml"), text.to_string());
        let cols = vec!["cut".to_string()];
        let row = SampleRow { line: 2, id: "s".into(), image: "x".into(), meta: vec![("cut".into(), "42.5".into())], problem: None };
        let (p, d) = compile(spec.unwrap(), Some(&cols), Some(&row));
        assert!(d.is_empty(), "{d:?}");
        let p = p.unwrap();
        let h = Header { shape: [1, 2, 2], dtype: crate::io::DType::U8, ndim: 2, spacing: None };
        let b = p.bind(&row, &[h]).unwrap();
        assert_eq!(b.ops[0].params_json()["value"], serde_json::json!(42.5));
    }
}
