//! Kernels compiled for the widest vectors the CPU has, chosen at run time.
//!
//! A kernel is written once, as plain Rust marked `#[inline(always)]`; [`dispatch!`] compiles
//! it again inside functions that enable AVX2 or AVX-512 and calls the build for an [`Isa`].
//! The builds differ only in vector width (no FMA is enabled, so floating-point results are the
//! plain build's, bit for bit; integer kernels give the same integers). An `Isa` can only be
//! had for instruction sets this CPU has, which is what makes calling those builds sound.

/// An instruction set the kernels are compiled for: plain (the build's baseline), AVX2, or
/// AVX-512 (F, BW, VL, DQ with AVX2). Only [`Isa::available`] and [`Isa::widest`] make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(Level);

/// Which instruction set an [`Isa`] is, narrowest first (each includes the ones before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Plain,
    Avx2,
    Avx512,
}

impl Isa {
    /// The instruction sets this CPU has, narrowest first (always the plain one): every level
    /// up to the widest, since each includes the ones before it.
    pub fn available() -> Vec<Isa> {
        let widest = Isa::widest().0;
        [Level::Plain, Level::Avx2, Level::Avx512].into_iter().filter(|&l| l <= widest).map(Isa).collect()
    }

    /// The widest instruction set this CPU has.
    pub fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                return Isa(Level::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Isa(Level::Avx2);
            }
        }
        Isa(Level::Plain)
    }

    /// The plain build (for tests that compare the others against it).
    pub fn plain() -> Isa {
        Isa(Level::Plain)
    }

    pub fn level(self) -> Level {
        self.0
    }

    /// This instruction set, or `level` if that is narrower (for a kernel measured to run
    /// slower with wider vectors). Sound: each level's CPU has the narrower ones too.
    pub fn at_most(self, level: Level) -> Isa {
        Isa(self.0.min(level))
    }
}

/// Whether this CPU has every feature the AVX-512 builds enable (F, BW, VL, DQ, and AVX2): a
/// build may use any of them, so all are checked, not one.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx2")
}

/// `dispatch!(isa, [generics] path::to::plain(arg: Type, …) -> Ret)`: calls
/// `path::to::plain(arg, …)` compiled for `isa` (an [`Isa`]). The arguments are the caller's
/// variables of those names; `[generics]` are the plain function's own (`[]` for none), written
/// with their bounds, e.g. `[L: LabelInt]`. A method is called through its path with the
/// receiver as a named argument (`let this = self;` … `Type::method(this: &Type, …)`).
///
/// The plain function must be `#[inline(always)]`, so that each build gets its own copy of the
/// loops compiled with the wider vectors.
macro_rules! dispatch {
    ($isa:expr, [$($gen:tt)*] $($plain:ident)::+ ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
        unsafe fn avx512<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            $($plain)::+($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            $($plain)::+($($arg),*)
        }
        let isa: $crate::isa::Isa = $isa;
        match isa.level() {
            // SAFETY: an `Isa` is only made for instruction sets this CPU has.
            #[cfg(target_arch = "x86_64")]
            $crate::isa::Level::Avx512 => unsafe { avx512($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            $crate::isa::Level::Avx2 => unsafe { avx2($($arg),*) },
            _ => $($plain)::+($($arg),*),
        }
    }};
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn sums<T: Copy + Into<u64>>(v: &[T], out: &mut [u64; 4]) -> u64 {
        for (i, &x) in v.iter().enumerate() {
            out[i % 4] += x.into();
        }
        out.iter().sum()
    }

    struct Scale(u64);
    impl Scale {
        #[inline(always)]
        fn apply(&self, v: &mut [u64]) {
            v.iter_mut().for_each(|x| *x *= self.0);
        }
        fn apply_on(&self, isa: Isa, v: &mut [u64]) {
            let this = self;
            dispatch!(isa, [] Scale::apply(this: &Scale, v: &mut [u64]))
        }
    }

    #[test]
    fn every_build_runs_the_same_kernel() {
        let isas = Isa::available();
        assert_eq!(isas[0], Isa::plain());
        assert_eq!(*isas.last().unwrap(), Isa::widest());
        let values: Vec<u16> = (0..1000u16).map(|i| i.wrapping_mul(7919)).collect();
        let v = &values[..];
        for isa in isas {
            let mut four = [0u64; 4];
            let out = &mut four;
            let total = dispatch!(isa, [T: Copy + Into<u64>] sums(v: &[T], out: &mut [u64; 4]) -> u64);
            assert_eq!(total, v.iter().map(|&x| x as u64).sum::<u64>(), "{isa:?}");
            assert_eq!(four[1], v.iter().skip(1).step_by(4).map(|&x| x as u64).sum::<u64>());
            let mut w: Vec<u64> = (0..100).collect();
            Scale(3).apply_on(isa, &mut w);
            assert_eq!(w[99], 297);
            assert!(isa.at_most(Level::Avx2).level() <= Level::Avx2);
            assert_eq!(isa.at_most(Level::Avx512), isa);
        }
    }
}
