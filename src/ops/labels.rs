//! Label images in the narrowest type that holds them: 16 bits while every label is below
//! 65,536 (most images), 32 bits beyond. The type is memory, and memory is time here: a 16-bit
//! label image of a 0.23 GVx volume takes 453 MB where a 32-bit one takes 906 MB, and every
//! stage that writes or reads it touches half the pages. Values are the same whatever the type;
//! files are written by the largest label, not by the type in memory (SPEC §4).

use std::borrow::Cow;

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

/// An unsigned integer type labels are held in.
pub trait LabelInt: Copy + Default + Eq + Ord + Send + Sync + std::fmt::Debug + 'static {
    /// The largest label the type holds.
    const MAX: u32;
    fn to_u32(self) -> u32;
    /// `v` as this type (`v ≤ MAX`).
    fn of(v: u32) -> Self;
    /// The slice itself when the type is u32.
    fn as_u32s(s: &[Self]) -> Option<&[u32]>;
    /// A buffer of `n` labels that its user overwrites whole (its values are unspecified).
    fn buffer(n: usize) -> Vec<Self>;
}

impl LabelInt for u16 {
    const MAX: u32 = u16::MAX as u32;
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self as u32
    }
    #[inline(always)]
    fn of(v: u32) -> u16 {
        v as u16
    }
    fn as_u32s(_: &[u16]) -> Option<&[u32]> {
        None
    }
    fn buffer(n: usize) -> Vec<u16> {
        crate::util::zeroed(n)
    }
}

impl LabelInt for u32 {
    const MAX: u32 = u32::MAX;
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self
    }
    #[inline(always)]
    fn of(v: u32) -> u32 {
        v
    }
    fn as_u32s(s: &[u32]) -> Option<&[u32]> {
        Some(s)
    }
    /// Takes a large buffer a freed stage gave back, when there is one ([`crate::util::recycle_u32`]).
    fn buffer(n: usize) -> Vec<u32> {
        crate::util::overwritten_u32(n)
    }
}

/// A label image (0 is background).
#[derive(Debug, Clone)]
pub enum Labels {
    U16(Array3<u16>),
    U32(Array3<u32>),
}

/// `$body` with `$a` bound to the array of a [`Labels`] (`&Array3<u16>` or `&Array3<u32>`), for
/// code written once for both types.
#[macro_export]
macro_rules! with_labels {
    ($labels:expr, $a:ident => $body:expr) => {
        match $labels {
            $crate::ops::Labels::U16($a) => $body,
            $crate::ops::Labels::U32($a) => $body,
        }
    };
}

impl From<Array3<u32>> for Labels {
    fn from(a: Array3<u32>) -> Labels {
        Labels::U32(a)
    }
}

impl From<Array3<u16>> for Labels {
    fn from(a: Array3<u16>) -> Labels {
        Labels::U16(a)
    }
}

/// Equal when the labels are, whatever their types.
impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        match (self, other) {
            (Labels::U16(a), Labels::U16(b)) => a == b,
            (Labels::U32(a), Labels::U32(b)) => a == b,
            (Labels::U16(a), Labels::U32(b)) | (Labels::U32(b), Labels::U16(a)) => {
                a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(&x, &y)| x as u32 == y)
            }
        }
    }
}

impl Labels {
    pub fn dim(&self) -> (usize, usize, usize) {
        with_labels!(self, a => a.dim())
    }
    pub fn shape(&self) -> &[usize] {
        with_labels!(self, a => a.shape())
    }
    /// The labels as u32: borrowed when they are, widened into a new array when they are u16.
    pub fn u32(&self) -> Cow<'_, Array3<u32>> {
        match self {
            Labels::U32(a) => Cow::Borrowed(a),
            Labels::U16(a) => Cow::Owned(crate::util::map3(a, |v| v as u32)),
        }
    }
    /// The labels as u32, widened when they are u16.
    pub fn into_u32(self) -> Array3<u32> {
        match self {
            Labels::U32(a) => a,
            Labels::U16(a) => crate::util::map3(&a, |v| v as u32),
        }
    }
    /// The largest label (0 when there is none).
    pub fn max(&self) -> u32 {
        with_labels!(self, a => max3(a))
    }
    /// The last plane, as u32 labels (the plane before the next slab, for window sums).
    pub fn last_plane(&self) -> ndarray::Array2<u32> {
        with_labels!(self, a => plane_u32(a.view(), a.dim().0 - 1))
    }
    /// The labels as u16 when every one fits (`max` is the largest), else as they are.
    pub fn narrowest(self, max: u32) -> Labels {
        match self {
            Labels::U32(a) if max <= u16::MAX as u32 => Labels::U16(crate::util::map3(&a, |v| v as u16)),
            other => other,
        }
    }
}

/// The largest value of a label array.
pub fn max3<L: LabelInt>(a: &Array3<L>) -> u32 {
    match a.as_slice() {
        Some(s) => s.par_chunks(1 << 16).map(max_of).reduce(|| 0, u32::max),
        None => max_view(a.view()),
    }
}

/// The largest of some labels (0 for none), in one pass the compiler vectorises (an `Iterator::max`
/// is compiled one value at a time: 3 instructions a voxel).
#[inline]
pub fn max_of<L: LabelInt>(s: &[L]) -> u32 {
    s.iter().fold(L::default(), |m, &v| m.max(v)).to_u32()
}

/// [`max_of`] of a view, row by row when it is not contiguous.
pub fn max_view<L: LabelInt>(a: ArrayView3<L>) -> u32 {
    match a.as_slice() {
        Some(s) => max_of(s),
        None => a
            .rows()
            .into_iter()
            .map(|r| r.as_slice().map_or_else(|| r.iter().copied().max().map_or(0, L::to_u32), max_of))
            .max()
            .unwrap_or(0),
    }
}

/// The first index `≥ from` where `s` is nonzero (`s.len()` if none). Background is passed over
/// 16 labels at a time, with an OR the compiler vectorises: labels are mostly zeros.
#[inline]
pub fn skip_zeros<L: LabelInt>(s: &[L], mut from: usize) -> usize {
    const STEP: usize = 16;
    while from + STEP <= s.len() && s[from..from + STEP].iter().fold(0, |m, &v| m | v.to_u32()) == 0 {
        from += STEP;
    }
    while from < s.len() && s[from].to_u32() == 0 {
        from += 1;
    }
    from
}

/// Plane `z` of a label array, as u32 labels (a copy).
pub fn plane_u32<L: LabelInt>(a: ArrayView3<'_, L>, z: usize) -> ndarray::Array2<u32> {
    a.index_axis(ndarray::Axis(0), z).mapv(L::to_u32)
}

/// Labels in raster order as u32: borrowed when they are u32 and contiguous.
pub fn flat_u32<'a, L: LabelInt>(v: ndarray::ArrayView2<'a, L>) -> Cow<'a, [u32]> {
    match v.to_slice().and_then(L::as_u32s) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(v.iter().map(|x| x.to_u32()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_labels_in_either_type_are_equal() {
        let a = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as u32 * 1000);
        let wide = Labels::U32(a.clone());
        let narrow = wide.clone().narrowest(wide.max());
        assert!(matches!(narrow, Labels::U16(_)));
        assert_eq!(narrow, wide);
        assert_eq!(narrow.max(), 23_000);
        assert_eq!(*narrow.u32(), a);
        assert_eq!(narrow.last_plane(), a.index_axis(ndarray::Axis(0), 1));
        let big = Labels::U32(a.mapv(|v| v * 10));
        assert!(matches!(big.clone().narrowest(big.max()), Labels::U32(_)));
        assert_ne!(big, narrow);
    }

    #[test]
    fn skipping_background_stops_at_the_first_label() {
        let mut v = vec![0u16; 100];
        v[37] = 3;
        assert_eq!(skip_zeros(&v, 0), 37);
        assert_eq!(skip_zeros(&v, 38), 100);
    }
}
