//! Exact sums of f32 values and of their squares, whatever the order they are added in.
//!
//! A float sum depends on the order of its additions, so a measurement summed in raster order
//! on one machine and summed per block and merged on several would differ in its last bits.
//! Every f32 is an integer multiple of 2^-149 and every square of one a multiple of 2^-298, so
//! [`F32Sums`] keeps both sums as integers in those units (fixed-point "superaccumulators", in
//! carry-save 32-bit digits, so an addition touches two or three digits and never carries).
//! Adding, merging in any grouping and finishing give the same bits, and the finished values
//! are the exact sums correctly rounded to f64 — more accurate than a running f64 sum, too.

/// Digits of Σv: values reach 2^128 = 2^277 units, and 2^64 of them 2^341: 11 digits of 32 bits.
const D1: usize = 11;
/// Digits of Σv²: squares reach 2^256 = 2^554 units, and 2^64 of them 2^618: 20 digits.
const D2: usize = 20;
/// Additions between carry propagations: each adds less than 2^32 to a digit, so digits stay
/// below 2^62 in magnitude.
const PENDING: u32 = 1 << 30;

const NAN: u8 = 1;
const POS_INF: u8 = 2;
const NEG_INF: u8 = 4;

/// The exact sum and sum of squares of f32 values (and whether any was NaN or infinite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct F32Sums {
    /// Σv in units of 2^-149.
    s1: [i64; D1],
    /// Σv² in units of 2^-298.
    s2: [i64; D2],
    pending: u32,
    flags: u8,
}

impl Default for F32Sums {
    fn default() -> Self {
        F32Sums { s1: [0; D1], s2: [0; D2], pending: 0, flags: 0 }
    }
}

impl F32Sums {
    /// Adds one value.
    #[inline]
    pub fn add(&mut self, v: f32) {
        let b = v.to_bits();
        let e = (b >> 23) & 0xff;
        let frac = (b & 0x7f_ffff) as u64;
        if e == 0xff {
            self.flags |= if frac != 0 {
                NAN
            } else if b >> 31 == 0 {
                POS_INF
            } else {
                NEG_INF
            };
            return;
        }
        // v = ±m·2^(s−149), m < 2^24.
        let (m, s) = if e == 0 { (frac, 0) } else { (frac | 0x80_0000, e - 1) };
        if m == 0 {
            return;
        }
        let (d, sh) = ((s / 32) as usize, s % 32);
        let x = m << sh;
        let (lo, hi) = ((x & 0xffff_ffff) as i64, (x >> 32) as i64);
        if b >> 31 == 0 {
            self.s1[d] += lo;
            self.s1[d + 1] += hi;
        } else {
            self.s1[d] -= lo;
            self.s1[d + 1] -= hi;
        }
        // v² = m²·2^(2s−298).
        let s2 = 2 * s;
        let (d, sh) = ((s2 / 32) as usize, s2 % 32);
        let x = ((m * m) as u128) << sh;
        self.s2[d] += (x & 0xffff_ffff) as i64;
        self.s2[d + 1] += ((x >> 32) & 0xffff_ffff) as i64;
        self.s2[d + 2] += (x >> 64) as i64;
        self.pending += 1;
        if self.pending == PENDING {
            self.normalize();
        }
    }

    /// Propagates carries: every digit but the top one in `0..2^32`.
    fn normalize(&mut self) {
        fn carry(d: &mut [i64]) {
            for k in 0..d.len() - 1 {
                let c = d[k] >> 32;
                d[k] -= c << 32;
                d[k + 1] += c;
            }
        }
        carry(&mut self.s1);
        carry(&mut self.s2);
        self.pending = 0;
    }

    /// Adds another accumulator's sums.
    pub fn merge(&mut self, o: &F32Sums) {
        let mut o = *o;
        o.normalize();
        self.normalize();
        for (a, b) in self.s1.iter_mut().zip(o.s1) {
            *a += b;
        }
        for (a, b) in self.s2.iter_mut().zip(o.s2) {
            *a += b;
        }
        self.flags |= o.flags;
        self.normalize();
    }

    /// Whether a NaN or an infinity was added.
    pub fn finite(&self) -> bool {
        self.flags == 0
    }

    /// Σv correctly rounded (NaN if a NaN, or infinities of both signs, were added; ±∞ if
    /// infinities of one sign were).
    pub fn sum(&self) -> f64 {
        match self.flags {
            0 => {
                let mut t = *self;
                t.normalize();
                let (neg, mag) = signed_magnitude(&t.s1);
                let v = to_f64(&mag, -149);
                if neg { -v } else { v }
            }
            f if f & NAN != 0 || f & (POS_INF | NEG_INF) == POS_INF | NEG_INF => f64::NAN,
            f if f & POS_INF != 0 => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        }
    }

    /// The population variance of the `n` values added, `(n·Σv² − (Σv)²) / n²`, from the exact
    /// numerator correctly rounded (NaN if `n` is 0 or a value was not finite).
    pub fn variance(&self, n: u64) -> f64 {
        if n == 0 || !self.finite() {
            return f64::NAN;
        }
        let mut t = *self;
        t.normalize();
        let (_, s1) = signed_magnitude(&t.s1);
        let (_, s2) = signed_magnitude(&t.s2);
        // Both in units of 2^-298.
        let a = mul_small(&s2, n);
        let b = mul(&s1, &s1);
        let num = sub(&a, &b);
        to_f64(&num, -298) / (n as f64 * n as f64)
    }

    /// Bytes for a partial result (little-endian digits after carrying, then the flags).
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut t = *self;
        t.normalize();
        for d in t.s1.iter().chain(&t.s2) {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.push(t.flags);
    }

    /// Bytes [`F32Sums::write`] writes.
    pub const BYTES: usize = (D1 + D2) * 8 + 1;

    /// Reads what [`F32Sums::write`] wrote.
    pub fn read(b: &[u8]) -> Option<F32Sums> {
        if b.len() != Self::BYTES {
            return None;
        }
        let mut t = F32Sums::default();
        let word = |k: usize| i64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
        for k in 0..D1 {
            t.s1[k] = word(k);
        }
        for k in 0..D2 {
            t.s2[k] = word(D1 + k);
        }
        t.flags = b[Self::BYTES - 1];
        // Digits as written are carried; anything else is not a partial result of ours.
        let carried = |d: &[i64]| d[..d.len() - 1].iter().all(|&x| (0..1 << 32).contains(&x)) && d[d.len() - 1].abs() < 1 << 40;
        (carried(&t.s1) && carried(&t.s2) && t.flags < 8).then_some(t)
    }
}

/// Carried digits (all but the top in `0..2^32`) as a sign and a magnitude in 32-bit limbs.
fn signed_magnitude(d: &[i64]) -> (bool, Vec<u32>) {
    let neg = d.last().is_some_and(|&t| t < 0);
    // Two's complement over the digits when negative: negate, then carry again.
    let mut v: Vec<i128> = d.iter().map(|&x| if neg { -(x as i128) } else { x as i128 }).collect();
    for k in 0..v.len() - 1 {
        let c = v[k] >> 32;
        v[k] -= c << 32;
        v[k + 1] += c;
    }
    let mut mag: Vec<u32> = Vec::with_capacity(v.len() + 2);
    let mut top = v[v.len() - 1] as u128;
    for &x in &v[..v.len() - 1] {
        mag.push(x as u32);
    }
    while top != 0 {
        mag.push(top as u32);
        top >>= 32;
    }
    (neg, mag)
}

/// `a · n`.
fn mul_small(a: &[u32], n: u64) -> Vec<u32> {
    mul(a, &[n as u32, (n >> 32) as u32])
}

/// `a · b` (schoolbook; the operands are a few hundred bits).
fn mul(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut r = vec![0u32; a.len() + b.len() + 1];
    for (i, &x) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (j, &y) in b.iter().enumerate() {
            let t = r[i + j] as u64 + x as u64 * y as u64 + carry;
            r[i + j] = t as u32;
            carry = t >> 32;
        }
        let mut k = i + b.len();
        while carry != 0 {
            let t = r[k] as u64 + carry;
            r[k] = t as u32;
            carry = t >> 32;
            k += 1;
        }
    }
    r
}

/// `a − b` for `a ≥ b` (0 otherwise, which exact sums never give).
fn sub(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut r = Vec::with_capacity(a.len());
    let mut borrow = 0i64;
    for k in 0..a.len().max(b.len()) {
        let t = *a.get(k).unwrap_or(&0) as i64 - *b.get(k).unwrap_or(&0) as i64 - borrow;
        borrow = i64::from(t < 0);
        r.push((t + (borrow << 32)) as u32);
    }
    if borrow != 0 { vec![0] } else { r }
}

/// `mag · 2^exp` correctly rounded to f64 (to nearest, ties to even; the values here are far
/// from f64's subnormal and overflow ranges).
fn to_f64(mag: &[u32], exp: i32) -> f64 {
    let Some(top) = mag.iter().rposition(|&x| x != 0) else { return 0.0 };
    // The 64 bits below and including the highest set bit, and whether any lower bit is set.
    let bits = (top as i32 + 1) * 32 - mag[top].leading_zeros() as i32;
    let word = |k: i32| if k < 0 { 0u128 } else { mag.get(k as usize).copied().unwrap_or(0) as u128 };
    let shift = bits - 64;
    let (head, sticky) = if shift <= 0 {
        let mut v = 0u128;
        for k in (0..=top as i32).rev() {
            v = (v << 32) | word(k);
        }
        ((v << (-shift) as u32) as u64, false)
    } else {
        // Bits [shift, shift + 64) from the limbs around them.
        let (lk, lb) = (shift / 32, (shift % 32) as u32);
        let v = word(lk) | word(lk + 1) << 32 | word(lk + 2) << 64;
        let head = (v >> lb) as u64;
        let below = (word(lk) & ((1u128 << lb) - 1)) != 0 || mag[..lk as usize].iter().any(|&x| x != 0);
        (head, below)
    };
    // The sticky bit sits far below f64's rounding position (bit 10 of 64), so converting the
    // 64 bits rounds as the full value would.
    let x = (head | u64::from(sticky)) as f64;
    x * pow2(exp + shift)
}

/// 2^k exactly, for the exponents the sums here reach.
fn pow2(k: i32) -> f64 {
    let mut r = 1.0f64;
    let mut k = k;
    while k > 1000 {
        r *= f64::from_bits(((1000 + 1023) as u64) << 52);
        k -= 1000;
    }
    while k < -1000 {
        r *= f64::from_bits(((-1000i32 + 1023) as u64) << 52);
        k += 1000;
    }
    r * f64::from_bits(((k + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow exact reference: sums in i128 of values that are multiples of 2^-20 below 2^40.
    fn reference(v: &[f32]) -> (f64, f64) {
        let ints: Vec<i128> = v.iter().map(|&x| (x as f64 * (1u64 << 20) as f64) as i128).collect();
        let s1: i128 = ints.iter().sum();
        let s2: i128 = ints.iter().map(|x| x * x).sum();
        let n = v.len() as i128;
        let num = n * s2 - s1 * s1;
        (s1 as f64 / (1u64 << 20) as f64, num as f64 / (1u128 << 40) as f64 / (n as f64 * n as f64))
    }

    fn sums(v: &[f32]) -> F32Sums {
        let mut s = F32Sums::default();
        for &x in v {
            s.add(x);
        }
        s
    }

    #[test]
    fn exact_in_any_order_and_grouping() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        let v: Vec<f32> = (0..5000).map(|_| ((next() % (1 << 30)) - (1 << 29)) as f32 / (1 << 20) as f32).collect();
        let (want_sum, want_var) = reference(&v);
        let whole = sums(&v);
        assert_eq!(whole.sum(), want_sum);
        assert_eq!(whole.variance(v.len() as u64), want_var);
        let mut rev = v.clone();
        rev.reverse();
        let (mut a, mut b) = (sums(&rev), whole);
        a.normalize();
        b.normalize();
        assert_eq!(a, b);
        // Merged in blocks, in any grouping.
        for cut in [1, 17, 2500, 4999] {
            let mut a = sums(&v[..cut]);
            a.merge(&sums(&v[cut..]));
            assert_eq!(a.sum(), want_sum);
            assert_eq!(a.variance(v.len() as u64), want_var);
            let mut bytes = Vec::new();
            a.write(&mut bytes);
            assert_eq!(F32Sums::read(&bytes).map(|r| r.sum()), Some(want_sum));
        }
    }

    #[test]
    fn extremes_and_cancellation() {
        // Values that cancel exactly, far apart in magnitude: a running f64 sum loses the small one.
        let v = [f32::MAX, 1e-45, -f32::MAX, f32::MIN_POSITIVE, 3.0];
        let s = sums(&v);
        assert_eq!(s.sum(), 3.0 + f32::MIN_POSITIVE as f64 + 1e-45f32 as f64);
        let s = sums(&[-2.5, -0.5]);
        assert_eq!(s.sum(), -3.0);
        assert_eq!(s.variance(2), 1.0);
        assert_eq!(sums(&[]).sum(), 0.0);
        assert_eq!(sums(&[0.0, -0.0]).variance(2), 0.0);
        // A sum that needs rounding: 2^60 + 1 is not an f64, and rounds to 2^60.
        let s = sums(&[2f32.powi(60), 1.0]);
        assert_eq!(s.sum(), 2f64.powi(60));
        let s = sums(&[2f32.powi(60), 1.0, 2.0f32.powi(-40)]);
        assert_eq!(s.sum(), 2f64.powi(60));
        let s = sums(&[2f32.powi(53), 1.0, 2.0f32.powi(-40)]);
        assert_eq!(s.sum(), 2f64.powi(53) + 2.0, "above the tie: rounds up");
        // Many additions (past a carry propagation) of one value.
        let mut s = F32Sums::default();
        for _ in 0..3 {
            s.add(1.5);
        }
        s.pending = PENDING - 1;
        s.add(1.5);
        assert_eq!(s.sum(), 6.0);
    }

    #[test]
    fn not_finite() {
        assert!(sums(&[1.0, f32::NAN]).sum().is_nan());
        assert_eq!(sums(&[1.0, f32::INFINITY]).sum(), f64::INFINITY);
        assert_eq!(sums(&[1.0, f32::NEG_INFINITY]).sum(), f64::NEG_INFINITY);
        assert!(sums(&[f32::INFINITY, f32::NEG_INFINITY]).sum().is_nan());
        assert!(sums(&[1.0, f32::INFINITY]).variance(2).is_nan());
        assert_eq!(F32Sums::read(&[0; 3]), None);
    }
}
