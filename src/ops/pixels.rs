//! `pixels`: a small image as one table row of its pixel values, for classifying whole images
//! on their pixels (`tessera train` on the merged table), as the Spark MLlib image examples do:
//! grayscale, scaled to [0, 1], flattened.

use serde::{Deserialize, Serialize};

use super::slab;
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, default_input, fields_of};
use crate::io::Data;
use crate::table::{Column, Table};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pixels {
    #[serde(default = "default_input")]
    pub input: String,
    /// Largest number of pixels (voxels) accepted: one column each.
    #[serde(default = "default_max")]
    pub max_pixels: usize,
}

fn default_max() -> usize {
    4096
}

pub static PIXELS: OpInfo = OpInfo {
    name: "pixels",
    family: "features",
    version: 1,
    output: Kind::Table,
    same_kind: false,
    summary: "Small image → table: one row of its pixels, gray and scaled to [0, 1], for classifying images.",
    doc: "One row per sample with a column per pixel, `p0`, `p1`, … zero-padded to equal width \
          (`p00`…`p63` for an 8×8 image), in raster order (z, then y, then x). RGB images are made \
          gray first (as `grayscale`: PIL's convert('L') weights). Values are divided by the \
          largest value of the type — 255 for 8-bit, 65535 for 16-bit, 2³²−1 for 32-bit images — \
          so they lie in [0, 1] (a min–max range of its own per image would make a dark and a \
          bright image alike); float images are taken as they are. The table gets `sample` and \
          the manifest's metadata columns like every table, so a manifest with a class column \
          gives a training table for `tessera train`. Images with more than `max_pixels` pixels \
          are refused (downsample or crop them first).",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The image." },
        ParamDoc { name: "max_pixels", ty: "integer", default: Some("4096"), doc: "Largest image accepted (pixels, or voxels in 3D)." },
    ],
    build: build::<Pixels>,
    fields: fields_of::<Pixels>,
    examples: &["input: {image}, max_pixels: 100000"],
};

/// Gray values divided by the type's largest value, in raster order.
fn scaled(d: &Data) -> Vec<f64> {
    match super::transform::grayscale(d) {
        Data::U8(a) => a.iter().map(|&v| v as f64 / u8::MAX as f64).collect(),
        Data::U16(a) => a.iter().map(|&v| v as f64 / u16::MAX as f64).collect(),
        Data::U32(a) => a.iter().map(|&v| v as f64 / u32::MAX as f64).collect(),
        Data::F32(a) => a.iter().map(|&v| v as f64).collect(),
        Data::Rgb8(_) | Data::Rgb16(_) => unreachable!("grayscale() returns gray"),
    }
}

impl Pixels {
    /// The one-row table of `values`: columns `p0…` zero-padded to equal width.
    fn row(&self, values: Vec<f64>) -> Result<Value, String> {
        if values.len() > self.max_pixels {
            return Err(format!("the image has {} pixels, more than max_pixels {}", values.len(), self.max_pixels));
        }
        let width = values.len().saturating_sub(1).to_string().len();
        let mut t = Table::default();
        for (i, v) in values.into_iter().enumerate() {
            t.push(&format!("p{i:0width$}"), Column::F64(vec![v]), None);
        }
        Ok(Value::Table(t))
    }
}

impl Op for Pixels {
    fn info(&self) -> &'static OpInfo {
        &PIXELS
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        if self.max_pixels == 0 {
            return vec![ParamIssue::new("max_pixels", "must be at least 1")];
        }
        Vec::new()
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let n: usize = inputs[0].shape.iter().product();
        if n > self.max_pixels {
            let [z, y, x] = inputs[0].shape;
            let shape = if inputs[0].ndim == 2 { format!("{y}×{x}") } else { format!("{z}×{y}×{x}") };
            return Err(ParamIssue::new(
                "max_pixels",
                format!("the image has {n} pixels ({shape}), more than max_pixels {}", self.max_pixels),
            )
            .help("downsample or crop the image first, or raise max_pixels"));
        }
        Ok(Meta { kind: Kind::Table, dtype: None, ..inputs[0].clone() })
    }
    fn run(&self, inputs: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("pixels: input is not an image".into()) };
        self.row(scaled(d))
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    /// The planes in z order, appended: the same row as in memory.
    fn stream(&self, io: &mut dyn slab::Slabs, _ctx: &Ctx) -> Result<slab::Outcome, String> {
        let planes = io.planes(8);
        let input = io.input(0);
        let mut values = Vec::new();
        for (z0, z1) in slab::ranges(input.shape()[0], planes) {
            match input.read(z0, z1)? {
                Value::Image(d) => values.extend(scaled(&d)),
                other => return Err(format!("pixels: expected an image, found {}", other.kind().with_article())),
            }
            if values.len() > self.max_pixels {
                return Err(format!("the image has more than max_pixels {} pixels", self.max_pixels));
            }
        }
        Ok(slab::Outcome::Table(self.row(values)?))
    }
    fn keeps_shape(&self) -> bool {
        false
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DType;
    use ndarray::Array3;

    #[test]
    fn a_row_of_scaled_gray_pixels_in_raster_order() {
        let op = Pixels { input: "image".into(), max_pixels: 100 };
        let ctx = Ctx { sample: "s", spacing: [1.0; 3], unit: "pixel", ndim: 2 };
        let img = Value::Image(Data::U8(Array3::from_shape_fn((1, 3, 4), |(_, y, x)| (y * 4 + x) as u8 * 17)));
        let Value::Table(t) = op.run(&[&img], &ctx).unwrap() else { panic!() };
        assert_eq!(t.names(), (0..12).map(|i| format!("p{i:02}")).collect::<Vec<_>>());
        assert_eq!(t.f64("p00"), [0.0]);
        assert_eq!(t.f64("p11"), [1.0 * 11.0 * 17.0 / 255.0]);
        let rgb = Value::Image(Data::Rgb8(ndarray::Array4::from_elem((1, 2, 2, 3), 255)));
        let Value::Table(t) = op.run(&[&rgb], &ctx).unwrap() else { panic!() };
        assert_eq!(t.f64("p3"), [1.0]);
        let big = Meta { kind: Kind::Image, dtype: Some(DType::U8), shape: [1, 20, 20], ndim: 2, scale: [1.0; 3] };
        let e = op.infer(&[big]).unwrap_err();
        assert!(e.message.contains("400 pixels (20×20)"), "{}", e.message);
    }
}
