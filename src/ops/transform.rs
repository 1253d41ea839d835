//! Point and geometry transforms: invert, grayscale, crop.

use ndarray::{Array3, s};
use serde::{Deserialize, Serialize};

use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, default_input, fields_of};
use crate::io::{DType, Data};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Invert {
    #[serde(default = "default_input")]
    pub input: String,
}

pub static INVERT: OpInfo = OpInfo {
    name: "invert",
    family: "transform",
    version: 1,
    output: Kind::Image,
    same_kind: true,
    summary: "Image or mask → the same kind, inverted (skimage.util.invert).",
    doc: "Unsigned integer images become (type maximum − value): 255 − v for u8, 65535 − v for \
          u16, 4294967295 − v for u32. Float images become 1 − v (scikit-image's convention for \
          images scaled to [0, 1]). Masks swap foreground and background.",
    params: &[ParamDoc { name: "input", ty: "stage (image or mask)", default: Some("image"), doc: "What to invert." }],
    build: build::<Invert>,
    fields: fields_of::<Invert>,
    examples: &["input: {image}", "input: {mask}"],
};

impl Op for Invert {
    fn info(&self) -> &'static OpInfo {
        &INVERT
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image, Kind::Mask] }]
    }
    fn halo(&self) -> Halo {
        Halo::Local([0; 3])
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        if inputs[0].dtype.is_some_and(DType::is_rgb) {
            return Err(ParamIssue::new("input", "`invert` needs a gray image; convert colour images with `grayscale` first"));
        }
        Ok(inputs[0].clone())
    }
    fn run(&self, inputs: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        Ok(match inputs[0] {
            Value::Mask(m) => Value::Mask(m.mapv(|v| (v == 0) as u8)),
            Value::Image(Data::U8(a)) => Value::Image(Data::U8(a.mapv(|v| u8::MAX - v))),
            Value::Image(Data::U16(a)) => Value::Image(Data::U16(a.mapv(|v| u16::MAX - v))),
            Value::Image(Data::U32(a)) => Value::Image(Data::U32(a.mapv(|v| u32::MAX - v))),
            Value::Image(Data::F32(a)) => Value::Image(Data::F32(a.mapv(|v| 1.0 - v))),
            _ => return Err("invert: input must be a gray image or a mask".into()),
        })
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grayscale {
    #[serde(default = "default_input")]
    pub input: String,
}

pub static GRAYSCALE: OpInfo = OpInfo {
    name: "grayscale",
    family: "transform",
    version: 1,
    output: Kind::Image,
    same_kind: false,
    summary: "RGB image → gray image (PIL convert('L') weights 299/587/114).",
    doc: "L = (19595·R + 38470·G + 7471·B + 32768) >> 16, PIL's fixed-point form of \
          0.299 R + 0.587 G + 0.114 B, so 8-bit results equal Image.convert('L') exactly; 16-bit RGB \
          gives 16-bit gray with the same formula. Gray input passes through unchanged.",
    params: &[ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The colour image." }],
    build: build::<Grayscale>,
    fields: fields_of::<Grayscale>,
    examples: &["input: {image}"],
};

impl Op for Grayscale {
    fn info(&self) -> &'static OpInfo {
        &GRAYSCALE
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        Halo::Local([0; 3])
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let dtype = match inputs[0].dtype {
            Some(DType::Rgb8) => Some(DType::U8),
            Some(DType::Rgb16) => Some(DType::U16),
            other => other,
        };
        Ok(Meta { dtype, ..inputs[0].clone() })
    }
    fn run(&self, inputs: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("grayscale: input is not an image".into()) };
        Ok(Value::Image(grayscale(d)))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// PIL's L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
pub fn grayscale(d: &Data) -> Data {
    fn l(r: u64, g: u64, b: u64) -> u64 {
        (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    }
    match d {
        Data::Rgb8(a) => {
            let (z, y, x, _) = a.dim();
            Data::U8(Array3::from_shape_fn((z, y, x), |(k, j, i)| {
                l(a[[k, j, i, 0]] as u64, a[[k, j, i, 1]] as u64, a[[k, j, i, 2]] as u64) as u8
            }))
        }
        Data::Rgb16(a) => {
            let (z, y, x, _) = a.dim();
            Data::U16(Array3::from_shape_fn((z, y, x), |(k, j, i)| {
                l(a[[k, j, i, 0]] as u64, a[[k, j, i, 1]] as u64, a[[k, j, i, 2]] as u64) as u16
            }))
        }
        other => other.clone(),
    }
}

/// Crop fractions of each axis; unset bounds keep the whole axis.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fraction {
    pub zmin: Option<f64>,
    pub zmax: Option<f64>,
    pub ymin: Option<f64>,
    pub ymax: Option<f64>,
    pub xmin: Option<f64>,
    pub xmax: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    #[serde(default = "default_input")]
    pub input: String,
    #[serde(default, rename = "box")]
    pub bbox: Option<Vec<i64>>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

pub static CROP: OpInfo = OpInfo {
    name: "crop",
    family: "transform",
    version: 2,
    output: Kind::Image,
    same_kind: true,
    summary: "Image, mask or labels → the same kind, cut to a box.",
    doc: "`box: [z0, y0, x0, z1, y1, x1]` (or `[y0, x0, y1, x1]` for 2D) in voxel indices, \
          half-open, must lie inside the image. `fraction: {xmin, xmax, ymin, ymax, zmin, zmax}` \
          gives each bound as a fraction of the axis (0–1, unset = whole axis): the box is \
          [round(min·n), round(max·n)) with round() rounding halves to even — exactly what PIL's \
          `crop((xmin·w, ymin·h, xmax·w, ymax·h))` cuts (the products in double precision, Python's \
          round). A fraction outside 0–1, a min above its max, or a box that rounds to nothing \
          (e.g. xmin 0.30, xmax 0.301 on 100 pixels) is an error for that sample; a box never \
          reaches outside the image, so nothing is padded. Values may come from the manifest (`'${x0}'`). Labels keep \
          their values (no renumbering). Spacing is unchanged; positions in later tables are \
          relative to the crop.",
    params: &[
        ParamDoc { name: "input", ty: "stage", default: Some("image"), doc: "What to crop." },
        ParamDoc { name: "box", ty: "[z0, y0, x0, z1, y1, x1] or [y0, x0, y1, x1]", default: None, doc: "The box in voxels, half-open." },
        ParamDoc { name: "fraction", ty: "{xmin, xmax, ymin, ymax, zmin, zmax}", default: None, doc: "The box as fractions of each axis." },
    ],
    build: build::<Crop>,
    fields: fields_of::<Crop>,
    examples: &[
        "input: {image}, fraction: {zmin: 0.2, zmax: 0.9, ymin: 0.1, xmax: 0.8}",
        "input: {mask}, fraction: {zmin: 0.3, xmin: 0.25}",
        "input: {labels}, fraction: {zmax: 0.7, ymax: 0.6}",
    ],
};

impl Crop {
    /// The half-open box `[lo, hi)` per axis for an image of `shape`.
    fn resolve(&self, shape: [usize; 3], ndim: u8) -> Result<([usize; 3], [usize; 3]), ParamIssue> {
        if let Some(b) = &self.bbox {
            let full: Vec<i64> = match (b.len(), ndim) {
                (6, 3) => b.clone(),
                (4, 2) => vec![0, b[0], b[1], 1, b[2], b[3]],
                (n, d) => {
                    return Err(ParamIssue::new(
                        "box",
                        format!("a {d}D image needs a box of {} numbers, found {n}", if d == 2 { 4 } else { 6 }),
                    ));
                }
            };
            let mut lo = [0; 3];
            let mut hi = [0; 3];
            for k in 0..3 {
                let (a, z) = (full[k], full[k + 3]);
                if a < 0 || z > shape[k] as i64 || a >= z {
                    return Err(ParamIssue::new(
                        "box",
                        format!("{} range [{a}, {z}) is empty or outside the image (0..{})", ["z", "y", "x"][k], shape[k]),
                    ));
                }
                lo[k] = a as usize;
                hi[k] = z as usize;
            }
            return Ok((lo, hi));
        }
        let f = self.fraction.clone().unwrap_or_default();
        let bounds = [(f.zmin, f.zmax), (f.ymin, f.ymax), (f.xmin, f.xmax)];
        let mut lo = [0; 3];
        let mut hi = shape;
        for (k, (a, z)) in bounds.iter().enumerate() {
            if ndim == 2 && k == 0 {
                continue;
            }
            // As PIL: the product in double precision, rounded half to even (Python's round()).
            let n = shape[k] as f64;
            let (a, z) = (a.unwrap_or(0.0), z.unwrap_or(1.0));
            lo[k] = (a * n).round_ties_even().clamp(0.0, n) as usize;
            hi[k] = (z * n).round_ties_even().clamp(0.0, n) as usize;
            let axis = ["z", "y", "x"][k];
            if a > z {
                return Err(ParamIssue::new("fraction", format!("{axis}min {a} is above {axis}max {z}")));
            }
            if lo[k] >= hi[k] {
                return Err(ParamIssue::new(
                    "fraction",
                    format!("the {axis} range {a}–{z} of {} pixels rounds to the empty range [{}, {})", shape[k], lo[k], hi[k]),
                ));
            }
        }
        Ok((lo, hi))
    }
}

impl Op for Crop {
    fn info(&self) -> &'static OpInfo {
        &CROP
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image, Kind::Mask, Kind::Labels] }]
    }
    fn halo(&self) -> Halo {
        // The output has another shape: not something a tile can produce.
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        match (&self.bbox, &self.fraction) {
            (None, None) => v.push(ParamIssue::new("", "`crop` needs `box` or `fraction`")),
            (Some(_), Some(_)) => v.push(ParamIssue::new("fraction", "give `box` or `fraction`, not both")),
            (None, Some(f)) => {
                for (name, val) in
                    [("zmin", f.zmin), ("zmax", f.zmax), ("ymin", f.ymin), ("ymax", f.ymax), ("xmin", f.xmin), ("xmax", f.xmax)]
                {
                    if val.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                        v.push(ParamIssue::new(&format!("fraction.{name}"), format!("`{name}` must be between 0 and 1")));
                    }
                }
            }
            _ => {}
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let m = &inputs[0];
        let (lo, hi) = self.resolve(m.shape, m.ndim)?;
        Ok(Meta { shape: [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]], ..m.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let shape = match inputs[0] {
            Value::Image(d) => d.shape(),
            Value::Mask(m) => [m.dim().0, m.dim().1, m.dim().2],
            Value::Labels(l) => [l.dim().0, l.dim().1, l.dim().2],
            Value::Table(_) => return Err("crop: a table cannot be cropped".into()),
        };
        let (lo, hi) = self.resolve(shape, ctx.ndim).map_err(|e| e.message)?;
        cut(inputs[0], lo, hi)
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    fn keeps_shape(&self) -> bool {
        false
    }
    /// Reads only the planes it keeps, a slab at a time (labels: a first pass for their largest
    /// id, which the file type depends on).
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        let m = io.input(0).meta();
        let (lo, hi) = self.resolve(m.shape, ctx.ndim).map_err(|e| e.message)?;
        let planes = io.planes(io.input(0).bytes_per_voxel());
        let cut = |io: &dyn Slabs, z0: usize, z1: usize| -> Result<Value, String> {
            let v = io.input(0).read(lo[0] + z0, lo[0] + z1)?;
            cut(&v, [0, lo[1], lo[2]], [z1 - z0, hi[1], hi[2]])
        };
        if m.kind == Kind::Labels {
            let mut max = 0;
            for (z0, z1) in slab::ranges(hi[0] - lo[0], planes) {
                if let Value::Labels(l) = cut(io, z0, z1)? {
                    max = max.max(l.max());
                }
            }
            io.labels_max(max);
        }
        for (z0, z1) in slab::ranges(hi[0] - lo[0], planes) {
            let v = cut(io, z0, z1)?;
            io.emit(v)?;
        }
        Ok(slab::Outcome::Emitted)
    }
}

/// The voxels of `v` in the box `[lo, hi)`.
fn cut(v: &Value, lo: [usize; 3], hi: [usize; 3]) -> Result<Value, String> {
    let sl = s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]];
    Ok(match v {
        Value::Image(Data::U8(a)) => Value::Image(Data::U8(a.slice(sl).to_owned())),
        Value::Image(Data::U16(a)) => Value::Image(Data::U16(a.slice(sl).to_owned())),
        Value::Image(Data::U32(a)) => Value::Image(Data::U32(a.slice(sl).to_owned())),
        Value::Image(Data::F32(a)) => Value::Image(Data::F32(a.slice(sl).to_owned())),
        Value::Image(Data::Rgb8(a)) => Value::Image(Data::Rgb8(a.slice(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2], ..]).to_owned())),
        Value::Image(Data::Rgb16(a)) => Value::Image(Data::Rgb16(a.slice(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2], ..]).to_owned())),
        Value::Mask(m) => Value::Mask(m.slice(sl).to_owned()),
        Value::Labels(l) => Value::Labels(crate::with_labels!(l, a => a.slice(sl).to_owned().into())),
        Value::Table(_) => return Err("crop: a table cannot be cropped".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn grayscale_matches_pil_formula() {
        let a = Array4::from_shape_vec((1, 1, 3, 3), vec![255u8, 0, 0, 0, 255, 0, 10, 20, 30]).unwrap();
        match grayscale(&Data::Rgb8(a)) {
            // PIL: convert('L') of (255,0,0) = 76, (0,255,0) = 150, (10,20,30) = 18.
            Data::U8(g) => assert_eq!(g.into_raw_vec_and_offset().0, vec![76, 150, 18]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn crop_box_and_fraction() {
        let c: Crop = serde_yaml::from_str("{box: [1, 2, 3, 4]}").unwrap();
        assert_eq!(c.resolve([1, 10, 10], 2).unwrap(), ([0, 1, 2], [1, 3, 4]));
        assert!(c.resolve([2, 10, 10], 3).is_err());
        let f: Crop = serde_yaml::from_str("{fraction: {xmin: 0.25, xmax: 0.5}}").unwrap();
        // 2.5 and 5.0: halves round to even, as Python's round() in PIL's crop.
        assert_eq!(f.resolve([4, 10, 10], 3).unwrap(), ([0, 0, 2], [4, 10, 5]));
        let f: Crop = serde_yaml::from_str("{fraction: {xmin: 0.35, xmax: 0.55}}").unwrap();
        assert_eq!(f.resolve([1, 10, 10], 2).unwrap(), ([0, 0, 4], [1, 10, 6]), "3.5 → 4, 5.5 → 6");
        let f: Crop = serde_yaml::from_str("{fraction: {xmin: 0.35, xmax: 0.45}}").unwrap();
        assert!(f.resolve([1, 10, 10], 2).is_err(), "3.5 → 4 and 4.5 → 4: empty, as PIL's crop");
        let e: Crop = serde_yaml::from_str("{fraction: {xmin: 0.30, xmax: 0.301}}").unwrap();
        assert!(e.resolve([1, 10, 100], 2).unwrap_err().message.contains("rounds to the empty range [30, 30)"));
        let bad: Crop = serde_yaml::from_str("{box: [0, 0, 0, 5, 99, 2]}").unwrap();
        assert!(bad.resolve([5, 10, 10], 3).unwrap_err().message.contains("outside the image"));
        let none: Crop = serde_yaml::from_str("{}").unwrap();
        assert_eq!(none.check().len(), 1);
    }

    #[test]
    fn invert_each_type() {
        let inv = Invert { input: "image".into() };
        let ctx = Ctx { sample: "s", spacing: [1.0; 3], unit: "um", ndim: 2 };
        let v = inv.run(&[&Value::Image(Data::U8(Array3::from_elem((1, 1, 2), 5)))], &ctx).unwrap();
        assert_eq!(v, Value::Image(Data::U8(Array3::from_elem((1, 1, 2), 250))));
        let m = inv.run(&[&Value::Mask(Array3::from_shape_vec((1, 1, 2), vec![0, 1]).unwrap())], &ctx).unwrap();
        assert_eq!(m, Value::Mask(Array3::from_shape_vec((1, 1, 2), vec![1, 0]).unwrap()));
    }
}

/// An intensity range: the image's own, its type's, or two numbers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Range {
    Named(RangeName),
    Values([f64; 2]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeName {
    Image,
    Dtype,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutType {
    U8,
    U16,
    F32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rescale {
    #[serde(default = "default_input")]
    pub input: String,
    #[serde(default = "default_in_range")]
    pub in_range: Range,
    pub out: OutType,
}

fn default_in_range() -> Range {
    Range::Named(RangeName::Image)
}

pub static RESCALE: OpInfo = OpInfo {
    name: "rescale",
    family: "transform",
    version: 1,
    output: Kind::Image,
    same_kind: false,
    summary: "Image → image: stretch an intensity range to u8, u16 or f32 (skimage.exposure.rescale_intensity).",
    doc: "Values are clipped to `in_range` ([lo, hi]; `image`: the image's min and max, NaN left \
          out; `dtype`: the input type's range, 0–1 for f32) and mapped linearly onto the output \
          type's range (u8 0–255, u16 0–65535, f32 0–1), truncating toward zero for integers. \
          Equals skimage.exposure.rescale_intensity(image, in_range, out_range=out): integer \
          images are computed in float64, float32 images in float32, as there. A constant image \
          (lo = hi) is clipped into the output range instead.",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The image." },
        ParamDoc {
            name: "in_range",
            ty: "image | dtype | [lo, hi]",
            default: Some("image"),
            doc: "The input range mapped to the output's.",
        },
        ParamDoc { name: "out", ty: "u8 | u16 | f32", default: None, doc: "The output type (and range)." },
    ],
    build: build::<Rescale>,
    fields: fields_of::<Rescale>,
    examples: &["input: {image}, out: u8", "input: {image}, in_range: [10, 200], out: f32", "input: {image}, out: u16"],
};

impl Op for Rescale {
    fn info(&self) -> &'static OpInfo {
        &RESCALE
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        match self.in_range {
            Range::Named(RangeName::Image) => Halo::Global,
            _ => Halo::Local([0; 3]),
        }
    }
    fn check(&self) -> Vec<ParamIssue> {
        match self.in_range {
            Range::Values([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
                vec![ParamIssue::new("in_range", format!("`in_range` must be [lo, hi] with lo ≤ hi, found [{lo}, {hi}]"))]
            }
            _ => Vec::new(),
        }
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        super::expect_image(&inputs[0], "input", "rescale")?;
        let dtype = match self.out {
            OutType::U8 => DType::U8,
            OutType::U16 => DType::U16,
            OutType::F32 => DType::F32,
        };
        Ok(Meta { dtype: Some(dtype), ..inputs[0].clone() })
    }
    fn run(&self, inputs: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("rescale: input is not an image".into()) };
        Ok(Value::Image(rescale(d, &self.in_range, self.out)?))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    /// A pass for the image's range (`in_range: image`); mapping with it is then local.
    fn stream(&self, io: &mut dyn Slabs, _ctx: &Ctx) -> Result<slab::Outcome, String> {
        let nz = io.input(0).shape()[0];
        let planes = io.planes(0);
        let range = match self.in_range {
            Range::Named(RangeName::Image) => {
                let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                for (z0, z1) in slab::ranges(nz, planes) {
                    let Value::Image(d) = io.input(0).read(z0, z1)? else { return Err("rescale: input is not an image".into()) };
                    let (a, b) = image_range(&d)?;
                    lo = lo.min(a);
                    hi = hi.max(b);
                }
                Range::Values(if lo > hi { [0.0, 0.0] } else { [lo, hi] })
            }
            ref r => r.clone(),
        };
        // What is left is local: the same mapping from the range found.
        Ok(slab::Outcome::Local(Box::new(Rescale { in_range: range, ..self.clone() })))
    }
}

/// The smallest and largest value of an image, NaN left out (`(inf, -inf)` when there is none).
fn image_range(d: &Data) -> Result<(f64, f64), String> {
    let values: Box<dyn Iterator<Item = f64> + '_> = match d {
        Data::U8(a) => Box::new(a.iter().map(|&v| v as f64)),
        Data::U16(a) => Box::new(a.iter().map(|&v| v as f64)),
        Data::U32(a) => Box::new(a.iter().map(|&v| v as f64)),
        Data::F32(a) => Box::new(a.iter().map(|&v| v as f64)),
        _ => return Err("rescale: RGB input (add a grayscale stage)".into()),
    };
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| !v.is_nan()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    Ok((lo, hi))
}

/// skimage.exposure.rescale_intensity for our types.
pub fn rescale(d: &Data, in_range: &Range, out: OutType) -> Result<Data, String> {
    let (imin, imax) = match in_range {
        Range::Values([lo, hi]) => (*lo, *hi),
        Range::Named(RangeName::Dtype) => match d {
            Data::U8(_) => (0.0, 255.0),
            Data::U16(_) => (0.0, 65535.0),
            Data::U32(_) => (0.0, u32::MAX as f64),
            _ => (0.0, 1.0),
        },
        Range::Named(RangeName::Image) => match image_range(d)? {
            (lo, hi) if lo > hi => (0.0, 0.0),
            r => r,
        },
    };
    let (omin, omax) = match out {
        OutType::U8 => (0.0, 255.0),
        OutType::U16 => (0.0, 65535.0),
        OutType::F32 => (if imin >= 0.0 { 0.0 } else { -1.0 }, 1.0),
    };
    // Integer inputs: float64 arithmetic; float32 inputs: float32 arithmetic (as numpy).
    let f64map = |v: f64| -> f64 {
        let c = v.clamp(imin, imax);
        if imin != imax { (c - imin) / (imax - imin) * (omax - omin) + omin } else { c.clamp(omin, omax) }
    };
    let f32map = |v: f32| -> f32 {
        let c = if v.is_nan() { v } else { v.max(imin as f32).min(imax as f32) };
        if imin != imax {
            (c - imin as f32) / (imax as f32 - imin as f32) * (omax as f32 - omin as f32) + omin as f32
        } else {
            c.max(omin as f32).min(omax as f32)
        }
    };
    macro_rules! to {
        ($a:expr, $f:expr) => {
            match out {
                OutType::U8 => Data::U8($a.mapv(|v| $f(v) as u8)),
                OutType::U16 => Data::U16($a.mapv(|v| $f(v) as u16)),
                OutType::F32 => Data::F32($a.mapv(|v| $f(v) as f32)),
            }
        };
    }
    Ok(match d {
        Data::U8(a) => to!(a, |v: u8| f64map(v as f64)),
        Data::U16(a) => to!(a, |v: u16| f64map(v as f64)),
        Data::U32(a) => to!(a, |v: u32| f64map(v as f64)),
        Data::F32(a) => to!(a, f32map),
        _ => unreachable!(),
    })
}
