//! Vectorisable f32 math for the elementwise loops of the CPU backend, and a macro that
//! compiles a loop three times (AVX-512, AVX2 + FMA, baseline) and picks one at run time.
//!
//! `exp` and `atan2` here are branch-free (selects only), so LLVM vectorises the loops that
//! call them; libm's scalar `expf` / `atan2f` calls kept those loops scalar and were ~15% of a
//! training step (attention softmax, SwiGLU, AdamATan2). Accuracy: `exp` within 2 ulp of the
//! correctly rounded result, `atan2` within 3 ulp (both checked below against
//! f64 math); NaN in gives NaN out, and the infinities behave as libm's.

/// Defines `pub fn $name(args)` whose body is compiled for AVX-512 (F/BW/DQ/VL), AVX2 + FMA
/// and the baseline target, dispatching on the CPU found at run time. Helpers the body calls
/// must be `#[inline(always)]` so they are compiled with the same features.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $body
                if $crate::backend::cpu::simd::has_avx512() {
                    // SAFETY: the CPU has every feature v4 is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::backend::cpu::simd::has_avx2_fma() {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            #[allow(clippy::too_many_arguments)]
            fn v1($($arg: $ty),*) $body
            v1($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// AVX-512 F/BW/DQ/VL (the v4 level) on this CPU.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX2 and FMA (the v3 level) on this CPU.
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `e^x` (Cephes' expf: `x = n ln2 + r`, |r| <= ln2/2, degree-6 polynomial, `2^n` built in the
/// exponent bits, in two halves so that subnormal results and those near the top of the range
/// are exact scalings). Below -104 the result is 0, above 88.72 infinity, as libm's.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer (ties to even) for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    const HI: f32 = 88.722_84;
    const LO: f32 = -104.0;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    // t = 1.5 * 2^23 + n exactly, so n is also the difference of the bit patterns (an integer
    // subtraction that vectorises, where `as i32` on a float does not).
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // n in [-150, 128]: 2^n = 2^h * 2^(n-h) with both halves normal floats.
    let n = ni;
    let h = n >> 1;
    let s1 = f32::from_bits(((h + 127) << 23) as u32);
    let s2 = f32::from_bits(((n - h + 127) << 23) as u32);
    let v = y * s1 * s2;
    // Past the clamp: 0 below, infinity above (NaN passes through the clamp and the selects).
    let v = if x < LO { 0.0 } else { v };
    if x > HI { f32::INFINITY } else { v }
}

/// `1 / (1 + e^-x)`
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `atan(t)` for t in [0, 1] (Cephes' atanf: reduced to |t| <= tan(pi/8) around pi/4).
#[inline(always)]
fn atan_unit(t: f32) -> f32 {
    const TAN_PI_8: f32 = 0.414_213_57;
    let big = t > TAN_PI_8;
    let x = if big { (t - 1.0) / (t + 1.0) } else { t };
    let z = x * x;
    let mut p = 8.053_744_5e-2_f32;
    p = p * z - 1.387_768_6e-1;
    p = p * z + 1.997_771_1e-1;
    p = p * z - 3.333_295e-1;
    let y = p * z * x + x;
    if big { y + std::f32::consts::FRAC_PI_4 } else { y }
}

/// `atan2(y, x)` for `x >= 0` (or NaN), the only case AdamATan2 needs (`x` is a square root);
/// same values as libm's `atan2f` up to rounding, including the signed zeros, `x = 0` and the
/// infinities.
#[inline(always)]
pub fn atan2_nonneg_x(y: f32, x: f32) -> f32 {
    let a = y.abs();
    let swap = a > x;
    let (num, den) = if swap { (x, a) } else { (a, x) };
    // den == 0 means both are zero (atan2(+-0, 0) = +-0); equal infinities give pi/4.
    let t = if den == 0.0 {
        0.0
    } else if num == den {
        1.0
    } else {
        num / den
    };
    let r = atan_unit(t);
    let r = if swap { std::f32::consts::FRAC_PI_2 - r } else { r };
    // NaN in either input gives NaN: comparisons above are false, so num or den is the NaN.
    r.copysign(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        if a == b32 {
            return 0.0;
        }
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_and_handles_the_edges() {
        let mut worst = 0.0f64;
        let mut x = -103.9f32;
        while x < 88.72 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "exp: {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-105.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!((sigmoid(-200.0)).abs() < 1e-30 && sigmoid(200.0) == 1.0 && sigmoid(0.0) == 0.5);
    }

    #[test]
    fn atan2_is_within_three_ulp_and_handles_the_edges() {
        let mut worst = 0.0f64;
        let mut s = 0x1234_5678u32;
        for _ in 0..400_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let y = f32::from_bits(s & 0x7fff_ffff).min(1e30) * if s & 1 == 0 { 1.0 } else { -1.0 };
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s & 0x7fff_ffff).min(1e30);
            if !(y.is_finite() && x.is_finite()) {
                continue;
            }
            worst = worst.max(ulps(atan2_nonneg_x(y, x), (y as f64).atan2(x as f64)));
            let (y, x) = (y * 1e-3, (x * 1e-6).abs());
            worst = worst.max(ulps(atan2_nonneg_x(y, x), (y as f64).atan2(x as f64)));
        }
        assert!(worst <= 3.0, "atan2: {worst} ulp");
        for (y, x) in [
            (0.0f32, 0.0f32),
            (-0.0, 0.0),
            (1.0, 0.0),
            (-1.0, 0.0),
            (0.0, 1.0),
            (-0.0, 1.0),
            (f32::INFINITY, 1.0),
            (f32::NEG_INFINITY, f32::INFINITY),
            (1.0, f32::INFINITY),
            (-1.0, f32::INFINITY),
            (2.5, 2.5),
        ] {
            let (ours, libm) = (atan2_nonneg_x(y, x), y.atan2(x));
            assert!(
                ours.to_bits() == libm.to_bits() || ulps(ours, (y as f64).atan2(x as f64)) <= 1.0,
                "atan2({y}, {x}): {ours} vs {libm}"
            );
        }
        assert!(atan2_nonneg_x(f32::NAN, 1.0).is_nan());
        assert!(atan2_nonneg_x(1.0, f32::NAN).is_nan());
        assert!(atan2_nonneg_x(f32::INFINITY, f32::NAN).is_nan());
    }

    multiversion! {
        fn exp_slice(x: &mut [f32]) {
            x.iter_mut().for_each(|v| *v = exp(*v));
        }
    }

    #[test]
    fn every_compiled_version_gives_the_same_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut ours = xs.clone();
        exp_slice(&mut ours);
        for (o, x) in ours.iter().zip(&xs) {
            assert_eq!(o.to_bits(), exp(*x).to_bits(), "exp({x})");
        }
    }
}
