//! Block-mean downsampling: fewer, larger voxels. The only op that changes the voxel size; the
//! plan carries the new size ([`Meta::scale`]) so later stages and written files use it.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::filters::Sizes;
use super::slab::Slabs;
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, default_input, expect_image, fields_of};
use crate::io::{DType, Data};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Downsample {
    #[serde(default = "default_input")]
    pub input: String,
    pub factor: Sizes,
}

pub static DOWNSAMPLE: OpInfo = OpInfo {
    name: "downsample",
    family: "transform",
    version: 1,
    output: Kind::Image,
    same_kind: false,
    summary: "Image → f32 image: mean of each factor³ block; voxels grow by the factor.",
    doc: "Each output voxel is the mean of a `factor` block of input voxels (factor per axis; z is \
          1 for 2D images); trailing voxels that do not fill a block are dropped, as numpy's \
          `a[:n//f*f].reshape(n//f, f, …).mean(axes)`. Integer images are summed exactly, so the \
          result equals numpy's to float32 rounding; float32 images are summed in float64 (numpy \
          sums float32 in float32). The voxel size of this stage and everything computed from it \
          is the input's times the factor: measurements and written files stay in physical units.",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The image." },
        ParamDoc { name: "factor", ty: "integer ≥ 1, or [z, y, x] / [y, x]", default: None, doc: "Block size per axis." },
    ],
    build: build::<Downsample>,
    fields: fields_of::<Downsample>,
    examples: &["input: {image}, factor: 2", "input: {image}, factor: [2, 1, 3]"],
};

impl Downsample {
    fn factors(&self, ndim: u8) -> [usize; 3] {
        let mut f = self.factor.zyx().unwrap_or([1; 3]);
        if ndim == 2 {
            f[0] = 1;
        }
        f.map(|v| v.max(1))
    }
}

impl Op for Downsample {
    fn info(&self) -> &'static OpInfo {
        &DOWNSAMPLE
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        match self.factor.zyx() {
            None => vec![ParamIssue::new("factor", "`factor` is an integer, [y, x] or [z, y, x]")],
            Some(f) if f.contains(&0) => vec![ParamIssue::new("factor", "`factor` values must be ≥ 1")],
            _ => Vec::new(),
        }
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let m = &inputs[0];
        expect_image(m, "input", "downsample")?;
        let f = self.factors(m.ndim);
        let shape = [m.shape[0] / f[0], m.shape[1] / f[1], m.shape[2] / f[2]];
        if shape.contains(&0) {
            return Err(ParamIssue::new("factor", format!("factor {f:?} is larger than the image {:?} (z, y, x)", m.shape)));
        }
        let scale = [m.scale[0] * f[0] as f64, m.scale[1] * f[1] as f64, m.scale[2] * f[2] as f64];
        Ok(Meta { dtype: Some(DType::F32), shape, scale, ..m.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("downsample: input is not an image".into()) };
        Ok(Value::Image(Data::F32(block_mean(d, self.factors(ctx.ndim))?)))
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
    /// Output planes a slab at a time, each from the whole blocks of input planes under it.
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<super::slab::Outcome, String> {
        let f = self.factors(ctx.ndim);
        let out_nz = io.input(0).shape()[0] / f[0];
        // Slabs of input planes (with the output's f32 beside them), whole blocks at a time.
        let planes = (io.planes(4) / f[0]).max(1);
        for (z0, z1) in super::slab::ranges(out_nz, planes) {
            let Value::Image(d) = io.input(0).read(z0 * f[0], z1 * f[0])? else { return Err("downsample: input is not an image".into()) };
            io.emit(Value::Image(Data::F32(block_mean(&d, f)?)))?;
        }
        Ok(super::slab::Outcome::Emitted)
    }
}

/// Mean of each `f` block (trailing partial blocks dropped).
pub fn block_mean(d: &Data, f: [usize; 3]) -> Result<Array3<f32>, String> {
    fn go<T: Copy>(a: &Array3<T>, f: [usize; 3], to: impl Fn(T) -> f64) -> Array3<f32> {
        let (nz, ny, nx) = a.dim();
        let (oz, oy, ox) = (nz / f[0], ny / f[1], nx / f[2]);
        let n = (f[0] * f[1] * f[2]) as f64;
        Array3::from_shape_fn((oz, oy, ox), |(z, y, x)| {
            let mut s = 0f64;
            for dz in 0..f[0] {
                for dy in 0..f[1] {
                    for dx in 0..f[2] {
                        s += to(a[[z * f[0] + dz, y * f[1] + dy, x * f[2] + dx]]);
                    }
                }
            }
            (s / n) as f32
        })
    }
    Ok(match d {
        Data::U8(a) => go(a, f, f64::from),
        Data::U16(a) => go(a, f, f64::from),
        Data::U32(a) => go(a, f, f64::from),
        Data::F32(a) => go(a, f, f64::from),
        _ => return Err("downsample: RGB input (add a grayscale stage)".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_means_and_scale() {
        let a = Data::U8(Array3::from_shape_fn((2, 4, 5), |(z, y, x)| (z * 20 + y * 5 + x) as u8));
        let m = block_mean(&a, [2, 2, 2]).unwrap();
        assert_eq!(m.dim(), (1, 2, 2));
        // Block (0..2, 0..2, 0..2): mean of z*20 + y*5 + x = 10 + 2.5 + 0.5.
        assert_eq!(m[[0, 0, 0]], 13.0);
        let d: Downsample = serde_yaml::from_str("{factor: [1, 2, 2]}").unwrap();
        let meta = Meta { kind: Kind::Image, dtype: Some(DType::U8), shape: [3, 9, 9], ndim: 3, scale: [1.0; 3] };
        let out = d.infer(&[meta]).unwrap();
        assert_eq!((out.shape, out.scale), ([3, 4, 4], [1.0, 2.0, 2.0]));
    }
}
