//! The op library: what each op takes, what it gives, and how it computes.
//!
//! An op is a `#[serde(deny_unknown_fields)]` struct whose fields are its parameters (stage
//! inputs included), implementing [`Op`]. Each op family lives in one file; [`REGISTRY`] lists
//! every op once, and `tessera ops`, the compiler's "did you mean" and the docs are all built
//! from it. Ops never read files, print or start threads: they compute on arrays.

pub mod classify;
pub mod contacts;
pub mod distance;
pub mod downsample;
pub mod exact;
pub mod filters;
pub mod kdtree;
pub mod label;
pub mod labels;
pub mod local;
#[rustfmt::skip]
pub mod mc_table;
pub mod measure;
pub mod morphology;
pub mod pixels;
pub mod slab;
pub mod threshold;
pub mod transform;
pub mod voronoi;
pub mod watershed;

use std::fmt::Debug;

use ndarray::Array3;
use serde::de::DeserializeOwned;

use crate::io::{DType, Data};
use crate::table::Table;
pub use labels::{LabelInt, Labels};

/// What a stage produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Intensities (u8/u16/u32/f32, or RGB for 2D).
    Image,
    /// Foreground/background (held as 0/1, written as 0/255).
    Mask,
    /// Object ids, 0 = background.
    Labels,
    /// One row per object.
    Table,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Mask => "mask",
            Kind::Labels => "labels",
            Kind::Table => "table",
        }
    }
}

impl Kind {
    /// "an image", "a mask", "labels", "a table".
    pub fn with_article(self) -> &'static str {
        match self {
            Kind::Image => "an image",
            Kind::Mask => "a mask",
            Kind::Labels => "labels",
            Kind::Table => "a table",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is known about one stage output of one sample before it is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub kind: Kind,
    /// The sample type of images; `None` for other kinds.
    pub dtype: Option<DType>,
    /// `[z, y, x]`; 2D images have `z = 1`.
    pub shape: [usize; 3],
    pub ndim: u8,
    /// Voxel size relative to the sample's image, per axis (> 1 after downsampling).
    pub scale: [f64; 3],
}

/// A computed stage output.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Image(Data),
    /// 0 or 1 per voxel.
    Mask(Array3<u8>),
    /// u16 while every label fits, u32 beyond ([`Labels`]).
    Labels(Labels),
    Table(Table),
}

impl Value {
    /// Drops the value, giving a large f32 or u32 buffer to [`crate::util::recycle_u32`] for
    /// the next stage's output.
    pub fn recycle(self) {
        match self {
            Value::Labels(Labels::U32(a)) | Value::Image(Data::U32(a)) => crate::util::recycle_u32(a.into_raw_vec_and_offset().0),
            Value::Image(Data::F32(a)) => crate::util::recycle_f32(a.into_raw_vec_and_offset().0),
            _ => {}
        }
    }
    pub fn kind(&self) -> Kind {
        match self {
            Value::Image(_) => Kind::Image,
            Value::Mask(_) => Kind::Mask,
            Value::Labels(_) => Kind::Labels,
            Value::Table(_) => Kind::Table,
        }
    }
}

/// What an op may know about the sample it runs on.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub sample: &'a str,
    /// Voxel size `[z, y, x]` in `unit`.
    pub spacing: [f64; 3],
    pub unit: &'a str,
    pub ndim: u8,
}

/// How much context a tile needs around its core, or that the op needs the whole image
/// (a reduction over tiles: histograms, union-find, moments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Halo {
    Local([usize; 3]),
    Global,
}

impl std::fmt::Display for Halo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halo::Local([z, y, x]) => write!(f, "{z}x{y}x{x}"),
            Halo::Global => f.write_str("global"),
        }
    }
}

/// A stage input: which parameter names it, the stage it names, and the kinds it accepts.
#[derive(Debug, Clone)]
pub struct Input {
    pub role: &'static str,
    pub stage: String,
    pub accepts: &'static [Kind],
}

/// A problem with one parameter (`field` is a serde path: `sigma`, `sigma[1]`, `intensity.raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamIssue {
    pub field: String,
    pub message: String,
    pub help: Option<String>,
}

impl ParamIssue {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        ParamIssue { field: field.to_string(), message: message.into(), help: None }
    }
    pub fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
}

/// An op, built from a stage's parameters.
pub trait Op: Send + Sync + Debug {
    fn info(&self) -> &'static OpInfo;
    /// The stages this op reads, in the order `run` receives them.
    fn inputs(&self) -> Vec<Input>;
    fn halo(&self) -> Halo;
    /// The halo for one sample: like [`Op::halo`], with spacing-dependent reaches (physical
    /// sigmas and radii) resolved for `ctx`. The tiled executor uses this one.
    fn halo_for(&self, _ctx: &Ctx) -> Halo {
        self.halo()
    }
    /// The output kind given the input kinds (in `inputs()` order).
    fn output_kind(&self, inputs: &[Kind]) -> Kind {
        match (self.info().same_kind, inputs.first()) {
            (true, Some(k)) => *k,
            _ => self.info().output,
        }
    }
    /// Checks of parameter values that do not depend on the data (ranges, combinations).
    fn check(&self) -> Vec<ParamIssue> {
        Vec::new()
    }
    /// The output's metadata from the inputs' (in `inputs()` order); errors name a parameter.
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue>;
    /// Computes the output on whole arrays.
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String>;
    /// The output on the part `out` (start, end per axis, in the inputs' coordinates) only, for
    /// ops that can skip work outside it (a tile's core plus what later stages need). `None`:
    /// the executor runs [`Op::run`] and crops. Must equal that crop exactly.
    fn run_region(&self, _inputs: &[&Value], _ctx: &Ctx, _out: ([usize; 3], [usize; 3])) -> Option<Result<Value, String>> {
        None
    }
    /// [`Op::run_region`] computed faster and less exactly (a float image), with a bound: every
    /// value is within it of [`Op::run_region`]'s. For a later stage that needs only where
    /// values lie, and computes exactly what the bound leaves undecided. `None`: not available
    /// (for this op, or for these inputs).
    fn run_region_bounded(&self, _inputs: &[&Value], _ctx: &Ctx, _out: ([usize; 3], [usize; 3])) -> Option<(Value, f64)> {
        None
    }
    /// Whether [`Op::run_over`] can write the output over its first input (same kind, shape and
    /// element type: a mask opened in place). The executor then hands that input's value over
    /// when this stage is the last to read it and nothing else holds it (an output or a
    /// checkpoint being written does); otherwise the op runs as [`Op::run`].
    fn writes_over_input(&self) -> bool {
        false
    }
    /// [`Op::run`] with the first input given to keep: the output may be written over it. Must
    /// equal [`Op::run`] exactly (tested for every op of the registry that says it does).
    fn run_over(&self, first: Value, rest: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let mut inputs: Vec<&Value> = vec![&first];
        inputs.extend_from_slice(rest);
        self.run(&inputs, ctx)
    }
    /// Whether [`Op::run_planes`] can read its first input, of this kind, a few planes at a
    /// time. The executor then computes a run of local stages that only this stage reads where
    /// it reads them, and never holds them whole (a smoothed float image before its threshold:
    /// four bytes a voxel).
    fn reads_planes(&self, _first: &Meta) -> bool {
        false
    }
    /// [`Op::run`], with the first input read through `first`, planes `z0..z1` at a time (each
    /// read computes them again). Must equal [`Op::run`] exactly (tested for every op of the
    /// registry that says it reads planes).
    fn run_planes(&self, _first: &dyn slab::Volume, _rest: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        Err(format!("internal: `{}` does not read its input by planes", self.info().name))
    }
    /// The parameters, canonically serialised (defaults filled in), for plans and cache keys.
    fn params_json(&self) -> serde_json::Value;
    /// Whether the output has the shape of the inputs (false for ops that cut or resample:
    /// `tessera plan` groups stages by shape without a sample at hand).
    fn keeps_shape(&self) -> bool {
        true
    }
    /// Whether a global op runs out of core ([`Op::stream`]) on inputs like these; `Err` says
    /// why not. Local ops are streamed by the executor (per slab, with their halo) and are
    /// never asked.
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Err("needs the whole image in memory".into())
    }
    /// The out-of-core form of a global op (see [`slab`]): reads its inputs through `io`, then
    /// emits voxel outputs slab by slab in z order, returns its table, or returns the local op
    /// that finishes the job ([`slab::Outcome`]). Must equal [`Op::run`] on the whole inputs
    /// bit for bit.
    fn stream(&self, _io: &mut dyn slab::Slabs, _ctx: &Ctx) -> Result<slab::Outcome, String> {
        Err(format!("internal: `{}` has no out-of-core form", self.info().name))
    }
    /// The phased form of a global op, for one volume split into z-blocks that run on separate
    /// machines ([`slab::Phased`]); `None`: in a split run the op runs in one task, in its
    /// out-of-core form ([`Op::stream`]), on its inputs assembled from the blocks.
    fn phased(&self) -> Option<&dyn slab::Phased> {
        None
    }
    /// A compact form of its own that [`Op::stream`] emits instead of the voxels, which the
    /// executor keeps on disk (spill, checkpoint) and decodes where the stage is read or
    /// written ([`slab::Stored`]); `None`: the voxels themselves.
    fn stored(&self, _ctx: &Ctx) -> Option<std::sync::Arc<dyn slab::Stored>> {
        None
    }
    /// A file one of the op's parameters names: `(parameter, path as written)`. The compiler
    /// reads it (a relative path from the pipeline file's folder) and gives its bytes to
    /// [`Op::with_file`]: ops never read files themselves.
    fn file(&self) -> Option<(&'static str, &str)> {
        None
    }
    /// This op holding the contents of its [`Op::file`], parsed and checked (`path` names the
    /// file in messages). Its [`Op::params_json`] then covers the contents, so a changed file
    /// changes the stage's checkpoint key.
    fn with_file(&self, _bytes: &[u8], _path: &std::path::Path) -> Result<Box<dyn Op>, String> {
        Err(format!("internal: `{}` reads no file", self.info().name))
    }
    /// Text columns the op adds to its table that group its rows (accepted as `stats.by`).
    fn group_columns(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One parameter's documentation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ParamDoc {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// `None` when required.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Everything the registry knows about an op.
#[derive(serde::Serialize)]
pub struct OpInfo {
    pub name: &'static str,
    pub family: &'static str,
    /// Bumped whenever the op's output changes for the same input.
    pub version: u32,
    pub output: Kind,
    /// The output has the kind of the first input (crop, invert); `output` is then the default.
    pub same_kind: bool,
    pub summary: &'static str,
    pub doc: &'static str,
    pub params: &'static [ParamDoc],
    #[serde(skip)]
    pub build: fn(Params) -> Result<Box<dyn Op>, ParamIssue>,
    #[serde(skip)]
    pub fields: fn() -> &'static [&'static str],
    /// Parameter sets the tests run the op with (every one, in memory, tiled and streamed): a
    /// YAML flow mapping's body, with `{image}`, `{mask}`, `{labels}` and `{table}` standing for an
    /// earlier stage of that kind.
    #[serde(skip)]
    pub examples: &'static [&'static str],
}

impl OpInfo {
    pub fn param(&self, name: &str) -> Option<&ParamDoc> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// A `connectivity` parameter's value, before the image is known: 4, 8 (2D) or 6, 18, 26 (3D).
pub(crate) fn connectivity_issue(c: Option<u8>) -> Option<ParamIssue> {
    let c = c?;
    (![4, 8, 6, 18, 26].contains(&c))
        .then(|| ParamIssue::new("connectivity", format!("connectivity {c} is not one of 4, 8 (2D) or 6, 18, 26 (3D)")))
}

/// A connectivity against the image's dimensions.
pub(crate) fn connectivity_fits(c: u8, ndim: u8) -> Result<(), ParamIssue> {
    let ok = if ndim == 2 { [4, 8].contains(&c) } else { [6, 18, 26].contains(&c) };
    if ok {
        return Ok(());
    }
    let valid = if ndim == 2 { "4 or 8" } else { "6, 18 or 26" };
    Err(ParamIssue::new(
        "connectivity",
        format!("connectivity {c} is for {} images, but this image is {ndim}D", if ndim == 2 { "3D" } else { "2D" }),
    )
    .help(format!("use {valid} for {ndim}D images")))
}

/// Every op, in the order `tessera ops` lists them.
pub static REGISTRY: &[&OpInfo] = &[
    &transform::GRAYSCALE,
    &transform::INVERT,
    &transform::CROP,
    &transform::RESCALE,
    &downsample::DOWNSAMPLE,
    &filters::GAUSSIAN,
    &filters::MEAN,
    &filters::MEDIAN,
    &filters::MINIMUM,
    &filters::MAXIMUM,
    &threshold::THRESHOLD,
    &morphology::EROSION,
    &morphology::DILATION,
    &morphology::OPENING,
    &morphology::CLOSING,
    &morphology::FILL_HOLES,
    &label::LABEL,
    &distance::DISTANCE,
    &voronoi::VORONOI,
    &watershed::H_MAXIMA,
    &watershed::WATERSHED,
    &measure::MEASURE,
    &contacts::CONTACTS,
    &pixels::PIXELS,
    &classify::CLASSIFY,
];

/// The op one of `info`'s examples builds, its placeholders (`{image}`, `{mask}`, …) standing
/// for stages named after their kind; `None` when it does not build.
pub fn example_op(info: &OpInfo, ex: &str) -> Option<Box<dyn Op>> {
    let body = ex.replace("{image}", "image").replace("{mask}", "mask").replace("{labels}", "labels").replace("{table}", "table");
    (info.build)(Params::parse(&format!("{{{body}}}")).ok()?).ok()
}

/// How an op runs on a sample that does not fit in memory (for `tessera ops`), from its
/// examples: local ops per slab with their halo; global ops in their own out-of-core form or,
/// without one, needing the whole image.
pub fn out_of_core(info: &OpInfo) -> Vec<String> {
    let meta = Meta { kind: Kind::Image, dtype: Some(DType::U8), shape: [64, 64, 64], ndim: 3, scale: [1.0; 3] };
    let mut v: Vec<String> = Vec::new();
    for ex in info.examples {
        let Some(op) = example_op(info, ex) else { continue };
        let tables_only = op.inputs().iter().all(|i| i.accepts == [Kind::Table]);
        let how = match (op.halo(), op.streams(&[meta.clone(), meta.clone(), meta.clone()])) {
            _ if tables_only => "on its input tables, in memory, as in a run in memory (tables are small)".to_string(),
            (Halo::Local(_), _) => "per slab, fused with the local stages around it, with its halo above and below".to_string(),
            (Halo::Global, Ok(())) => "in its own passes over slabs (3D grey volumes)".to_string(),
            (Halo::Global, Err(why)) => why,
        };
        let line = format!(
            "{how}; e.g. {{{}}}",
            ex.replace("{image}", "…").replace("{mask}", "…").replace("{labels}", "…").replace("{table}", "…")
        );
        if !v.iter().any(|l| l.starts_with(&how)) {
            v.push(line);
        }
    }
    v
}

pub fn lookup(name: &str) -> Option<&'static OpInfo> {
    REGISTRY.iter().copied().find(|o| o.name == name)
}

/// A stage's parameters as written in the pipeline (placeholders already substituted), which
/// [`OpInfo::build`] turns into an op.
#[derive(Debug, Clone)]
pub struct Params(serde_yaml::Value);

impl Params {
    pub(crate) fn new(v: serde_yaml::Value) -> Params {
        Params(v)
    }
    /// Parameters from YAML text (a flow mapping such as `{input: image, sigma: 1.0}`).
    pub fn parse(yaml: &str) -> Result<Params, String> {
        serde_yaml::from_str(yaml).map(Params).map_err(|e| e.to_string())
    }
}

/// Builds an op struct from its parameters, with the failing parameter's path on error.
pub(crate) fn build<T: DeserializeOwned + Op + 'static>(p: Params) -> Result<Box<dyn Op>, ParamIssue> {
    match serde_path_to_error::deserialize::<_, T>(p.0) {
        Ok(op) => Ok(Box::new(op)),
        Err(e) => {
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            Err(ParamIssue::new(if path == "." { "" } else { &path }, msg))
        }
    }
}

/// The field names serde expects for `T` (its parameters), read from its `Deserialize` impl.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(probe::FieldsProbe) {
        Err(probe::Found(f)) => f,
        Ok(_) => &[],
    }
}

mod probe {
    //! A deserializer that only asks a struct for its field list.
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    pub struct Found(pub &'static [&'static str]);

    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fields {:?}", self.0)
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Found(&[])
        }
    }

    pub struct FieldsProbe;

    impl<'de> de::Deserializer<'de> for FieldsProbe {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
}

/// Default for a stage's single input.
pub(crate) fn default_input() -> String {
    "image".to_string()
}

/// The input's metadata, or a message naming the kinds the op accepts.
pub(crate) fn expect_image(m: &Meta, role: &str, op: &str) -> Result<DType, ParamIssue> {
    match (m.kind, m.dtype) {
        (Kind::Image, Some(d)) if d.is_rgb() => Err(ParamIssue::new(role, format!("`{op}` needs a gray image but its input is {d} (RGB)"))
            .help("convert colour images first with a `grayscale` stage")),
        (Kind::Image, Some(d)) => Ok(d),
        (k, _) => Err(ParamIssue::new(role, format!("`{op}` needs an image but its input is a {k}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_documents_exactly_its_fields() {
        for info in REGISTRY {
            let mut fields: Vec<&str> = (info.fields)().to_vec();
            let mut docs: Vec<&str> = info.params.iter().map(|p| p.name).collect();
            fields.sort();
            docs.sort();
            assert_eq!(fields, docs, "op {}: documented parameters differ from its struct fields", info.name);
            assert!(!info.summary.is_empty() && !info.doc.is_empty(), "op {} lacks docs", info.name);
            assert!(!info.examples.is_empty(), "op {} has no examples for the tests", info.name);
        }
    }

    #[test]
    fn every_op_says_how_it_runs_out_of_core() {
        for info in REGISTRY {
            let v = out_of_core(info);
            assert!(!v.is_empty(), "op {}: no example builds", info.name);
        }
        // Every op streams 3D grey volumes, except the two whose result is one global order of
        // the voxels (the watershed's flood, h_maxima's reconstruction): they say so.
        let in_memory = ["watershed", "h_maxima"];
        for info in REGISTRY {
            let whole = out_of_core(info).iter().any(|l| l.starts_with("needs the whole image"));
            assert_eq!(whole, in_memory.contains(&info.name), "op {}: out of core {:?}", info.name, out_of_core(info));
        }
    }

    /// Every op that may write over its input gives [`Op::run`]'s output, for every example,
    /// on volumes whose edges and thin parts the op changes (3D and 2D, odd row lengths).
    #[test]
    fn writing_over_the_input_equals_running_on_it() {
        let mut next = crate::util::test_rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for (info, ex, op) in example_ops() {
            if !op.writes_over_input() {
                continue;
            }
            for (shape, ndim) in [((9, 13, 70), 3u8), ((1, 17, 131), 2), ((4, 1, 1), 3)] {
                let values: Vec<Value> = op
                    .inputs()
                    .iter()
                    .map(|i| match i.accepts[0] {
                        Kind::Mask => Value::Mask(Array3::from_shape_simple_fn(shape, || !next().is_multiple_of(3) as u8)),
                        Kind::Labels => Value::Labels(Array3::from_shape_simple_fn(shape, || next() % 5).into()),
                        _ => Value::Image(Data::U8(Array3::from_shape_simple_fn(shape, || next() as u8))),
                    })
                    .collect();
                let ctx = Ctx { sample: "s", spacing: [1.0, 0.5, 0.75], unit: "µm", ndim };
                let refs: Vec<&Value> = values.iter().collect();
                let want = op.run(&refs, &ctx).expect("runs");
                let got = op.run_over(values[0].clone(), &refs[1..], &ctx).expect("runs over its input");
                assert_eq!(got, want, "{}: {{{ex}}} on {shape:?}", info.name);
                checked += 1;
            }
        }
        assert!(checked >= 12, "only {checked} cases: the morphology ops write over their input");
    }

    /// Every registry example: its op's info, the example, and the op built from it.
    fn example_ops() -> impl Iterator<Item = (&'static OpInfo, &'static str, Box<dyn Op>)> {
        REGISTRY.iter().flat_map(|&info| info.examples.iter().map(move |&ex| (info, ex, example_op(info, ex).expect("example builds"))))
    }

    /// Every op that reads its input by planes gives [`Op::run`]'s output, for every example, on
    /// float volumes (the reads here are of the whole value; `threshold`'s own tests cut them).
    #[test]
    fn reading_by_planes_equals_running_on_the_whole() {
        let mut checked = 0;
        for (info, ex, op) in example_ops() {
            let data = Data::F32(Array3::from_shape_fn((6, 9, 31), |(z, y, x)| ((z * 7 + y * 3 + x) % 23) as f32 * 0.37));
            let (img, whole) = (Value::Image(data.clone()), slab::WholeImage(data));
            if !op.reads_planes(&slab::Volume::meta(&whole)) || op.inputs().len() > 1 {
                continue;
            }
            let ctx = Ctx { sample: "s", spacing: [1.0; 3], unit: "µm", ndim: 3 };
            assert_eq!(
                op.run_planes(&whole, &[], &ctx).expect("runs by planes"),
                op.run(&[&img], &ctx).expect("runs"),
                "{}: {{{ex}}}",
                info.name
            );
            checked += 1;
        }
        assert!(checked >= 1, "threshold (otsu) reads its input by planes");
    }

    /// Every registry op's bounded region ([`Op::run_region_bounded`]), where it has one, is
    /// within its bound of the exact region.
    #[test]
    fn bounded_regions_are_within_their_bound() {
        let mut checked = 0;
        for (info, ex, op) in example_ops() {
            if op.inputs().len() > 1 {
                continue;
            }
            let mut next = crate::util::test_rng(31);
            let img = Value::Image(Data::F32(Array3::from_shape_fn((6, 9, 31), |_| (next() % 1000) as f32 * 0.37 - 100.0)));
            let ctx = Ctx { sample: "s", spacing: [1.0; 3], unit: "µm", ndim: 3 };
            for out in [([0, 0, 0], [6, 9, 31]), ([1, 2, 3], [5, 8, 30]), ([5, 0, 0], [6, 9, 31])] {
                let Some((Value::Image(Data::F32(fast)), bound)) = op.run_region_bounded(&[&img], &ctx, out) else { continue };
                let exact = match op.run_region(&[&img], &ctx, out) {
                    Some(v) => v.expect("runs"),
                    None => crate::exec::tiled::crop(
                        &op.run(&[&img], &ctx).expect("runs"),
                        &crate::exec::tiles::Region { start: out.0, end: out.1 },
                    ),
                };
                let Value::Image(Data::F32(exact)) = exact else { panic!("{}: a bounded region of a float image", info.name) };
                assert_eq!(fast.dim(), exact.dim(), "{}: {{{ex}}}", info.name);
                for (f, e) in fast.iter().zip(exact.iter()) {
                    assert!((*f as f64 - *e as f64).abs() <= bound, "{}: {{{ex}}} {out:?}: {f} against {e}, bound {bound}", info.name);
                }
                checked += 1;
            }
        }
        assert!(checked >= 1, "gaussian has bounded regions");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = REGISTRY.iter().map(|o| o.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }
}
