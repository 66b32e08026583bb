//! Seeded, platform-independent randomness: ChaCha8 streams and the reference's truncated
//! normal initializer (JAX-style correction so the realised std equals the requested one).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type HrmRng = ChaCha8Rng;

pub fn seeded(seed: u64) -> HrmRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Inverse error function: a rational first guess refined by Newton steps on `libm::erf`
/// (accurate to a few ulp of f64, far below f32 resolution).
pub fn erfinv(y: f64) -> f64 {
    if y <= -1.0 {
        return f64::NEG_INFINITY;
    }
    if y >= 1.0 {
        return f64::INFINITY;
    }
    // Giles (2010) single-precision approximation as the starting point.
    let w = -((1.0 - y) * (1.0 + y)).ln();
    let mut x = if w < 5.0 {
        let w = w - 2.5;
        let mut p = 2.810_226_36e-08;
        for c in [
            3.432_739_39e-07,
            -3.523_387_7e-06,
            -4.391_506_54e-06,
            0.000_218_580_87,
            -0.001_253_725_03,
            -0.004_177_681_64,
            0.246_640_727,
            1.501_409_41,
        ] {
            p = c + p * w;
        }
        p * y
    } else {
        let w = w.sqrt() - 3.0;
        let mut p = -0.000_200_214_257;
        for c in [
            0.000_100_950_558,
            0.001_349_343_22,
            -0.003_673_428_44,
            0.005_739_507_73,
            -0.007_622_461_3,
            0.009_438_870_47,
            1.001_674_06,
            2.832_976_82,
        ] {
            p = c + p * w;
        }
        p * y
    };
    let two_over_sqrt_pi = 2.0 / std::f64::consts::PI.sqrt();
    for _ in 0..2 {
        let err = libm::erf(x) - y;
        x -= err / (two_over_sqrt_pi * (-x * x).exp());
    }
    x
}

/// Fill `out` like the reference `trunc_normal_init_(tensor, std, lower=-2, upper=2)`:
/// uniform in [erf(-2/sqrt2), erf(2/sqrt2)], erfinv, times sqrt(2)*comp_std, clipped to +-2 comp_std.
pub fn trunc_normal(rng: &mut HrmRng, out: &mut [f32], std: f64) {
    if std == 0.0 {
        out.fill(0.0);
        return;
    }
    let (lower, upper) = (-2.0f64, 2.0f64);
    let sqrt2 = std::f64::consts::SQRT_2;
    let a = libm::erf(lower / sqrt2);
    let b = libm::erf(upper / sqrt2);
    let z = (b - a) / 2.0;
    let c = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    let pdf_u = c * (-0.5 * lower * lower).exp();
    let pdf_l = c * (-0.5 * upper * upper).exp();
    let comp_std = std / (1.0 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z).powi(2)).sqrt();
    for v in out.iter_mut() {
        let u: f64 = rng.gen_range(a..b);
        let x = (erfinv(u) * sqrt2 * comp_std).clamp(lower * comp_std, upper * comp_std);
        *v = x as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfinv_inverts_erf() {
        for &x in &[-3.0, -1.2, -0.3, 0.0, 0.01, 0.7, 2.5] {
            assert!((erfinv(libm::erf(x)) - x).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn truncated_normal_has_requested_std_and_bounds() {
        let mut rng = seeded(7);
        let mut v = vec![0.0f32; 200_000];
        trunc_normal(&mut rng, &mut v, 0.5);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // 200k samples: the std estimate has relative error ~0.2%; allow 1%.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.005, "std {}", var.sqrt());
        let bound = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(bound <= 2.0 * 0.5 * 1.15 && bound > 1.0, "max |x| {bound}");
        // The same seed gives the same numbers.
        let mut w = vec![0.0f32; 16];
        trunc_normal(&mut seeded(7), &mut w, 0.5);
        assert_eq!(&w[..], &v[..16]);
    }
}
