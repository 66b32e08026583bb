//! The kernels of kernels/act.cu (add, row reset, position gather/scatter-add, NaN guard, EMA,
//! f32 q head) against the CPU backend, or an f64 loop for the q head (GPU when present, else
//! the CPU emulation; skipped without either). Shapes: batch 1, 3, 7; width 64, 48, 512;
//! seq 82 (Sudoku's 81 cells + 1 puzzle prefix position).
//!
//! Bounds:
//! - add, scatter-add, q head dz: the kernel rounds an f32 result to bf16 once; the reference is
//!   that f32 result (same inputs, same f32 operation): 2 * BF16_EPS relative to the result.
//! - add_injection: z + bf16(z_h + x) with both roundings of the two adds it replaces:
//!   bit-identical to the bf16-rounding CPU backend's two adds (same f32 sums, same
//!   round-to-nearest-even), in place and not, aligned and not.
//! - reset_rows, gather: copies; bit-identical to the reference (init rounded to bf16 the same
//!   round-to-nearest-even way).
//! - ema: the same f32 operations in the same order (the kernel forbids FMA contraction):
//!   identical on both the emulation and a GPU; checked at 1e-6 relative (f32 element-wise).
//! - q head forward: dot products of length d of bf16 inputs (exact in f32) with f32 weights,
//!   in f32: each lane sums d/32 products then a 32-way tree, so the error is at most about
//!   (d/32 + 5) * 2^-24 * sum_j |x_j w_j|; for d = 512 and random signs sum |x w| is ~14x the
//!   RMS of q, giving <= 1.8e-5 RMS in the worst case and ~1e-6 in practice. Checked at 1e-5
//!   relative with a floor of 2 x RMS (bound >= 2e-5 RMS). dw, db: sums over <= 7 rows, same
//!   bound.

mod kernel_common;
use half::bf16;
use hrm::backend::Backend;
use hrm::backend::cpu::Cpu;
use hrm::backend::cuda::act;
use kernel_common::*;
use rand::Rng;

const SEQ: usize = 82;
const SHAPES: [(usize, usize); 5] = [(1, 64), (3, 48), (7, 512), (1, 512), (3, 64)];

fn bits(x: &[bf16]) -> Vec<u16> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn add_matches() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(61);
    for n in [1usize, 1000, 4099, 3 * SEQ * 48] {
        let a = round_bf16(&randn(&mut r, n, 1.0));
        let b = round_bf16(&randn(&mut r, n, 1.0));
        let (ad, bd) = (upload(&dev, &to_bf16(&a)), upload(&dev, &to_bf16(&b)));
        let mut od = poisoned_bf16(&dev, n);
        act::add(&dev, &ad, &bd, &mut od, n).unwrap();
        let mut want = vec![0.0; n];
        Cpu.add(&a, &b, &mut want);
        assert_close("add", &from_bf16(&download(&dev, &od)), &want, 2.0 * BF16_EPS, 0.0);
    }
}

#[test]
fn add_injection_matches_the_two_adds_bit_for_bit() {
    let Some(dev) = device("kernels_act add_injection") else {
        return;
    };
    let mut r = rng(66);
    for n in [1usize, 7, 1000, 4099, 3 * SEQ * 48] {
        let [z, h, x] = [0, 1, 2].map(|_| round_bf16(&randn(&mut r, n + 1, 1.0)));
        for offset in [0usize, 1] {
            // want = bf16(z + bf16(h + x)), the two adds of the bf16-rounding CPU backend
            let be = hrm::backend::cpu::bf16::CpuBf16;
            let (zs, hs, xs) = (z[offset..].to_vec(), h[offset..].to_vec(), x[offset..].to_vec());
            let mut inj = vec![0.0; n + 1 - offset];
            be.add(&hs, &xs, &mut inj);
            let mut want = vec![0.0; inj.len()];
            be.add(&zs, &inj, &mut want);
            let m = want.len();
            let [zd, hd, xd] = [&z, &h, &x].map(|v| upload(&dev, &to_bf16(v)));
            // out of place, into a poisoned buffer (offset 1: no 16-byte vectors)
            let mut od = poisoned_bf16(&dev, n + 1);
            act::add_injection_to(
                &dev,
                &zd.slice(offset..),
                &hd.slice(offset..),
                &xd.slice(offset..),
                &mut od.slice_mut(offset..),
                m,
            )
            .unwrap();
            let got = download(&dev, &od);
            assert_eq!(bits(&got[offset..]), bits(&to_bf16(&want)), "n {n}, offset {offset}");
            // in place
            let mut zi = upload(&dev, &to_bf16(&z));
            act::add_injection_inplace(
                &dev,
                &mut zi.slice_mut(offset..),
                &hd.slice(offset..),
                &xd.slice(offset..),
                m,
            )
            .unwrap();
            let got = download(&dev, &zi);
            assert_eq!(bits(&got[offset..]), bits(&to_bf16(&want)), "in place, n {n}, offset {offset}");
            assert_eq!(bits(&got[..offset]), bits(&to_bf16(&z[..offset])), "untouched prefix");
        }
    }
}

#[test]
fn reset_rows_matches() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(62);
    for (batch, width) in SHAPES {
        for pattern in 0..2 {
            let n = batch * SEQ * width;
            let z = round_bf16(&randn(&mut r, n, 1.0));
            let init = randn(&mut r, width, 1.0);
            // pattern 0: alternate rows from the first (batch 1: reset); 1: the others
            let mask: Vec<bool> = (0..batch).map(|b| (b + pattern) % 2 == 0).collect();
            let md: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
            let mut zd = upload(&dev, &to_bf16(&z));
            let (id, mdd) = (upload(&dev, &init), upload(&dev, &md));
            act::reset_rows(&dev, &mut zd, &id, &mdd, batch, SEQ, width).unwrap();
            let got = download(&dev, &zd);
            let mut want = z.clone();
            let mut st = Cpu.act_state(batch);
            Cpu.act_set(&mut st, &vec![0; batch], &mask);
            Cpu.reset_rows(&mut want, &init, &st, width);
            assert_eq!(bits(&got), bits(&to_bf16(&want)), "reset_rows batch {batch} width {width}");
            let init_bf = bits(&to_bf16(&init));
            let z_bf = bits(&to_bf16(&z));
            let got = bits(&got);
            for (b, &m) in mask.iter().enumerate() {
                let rows = &got[b * SEQ * width..(b + 1) * SEQ * width];
                if m {
                    assert!(rows.chunks(width).all(|p| p == init_bf), "row {b} is not init");
                } else {
                    assert_eq!(rows, &z_bf[b * SEQ * width..(b + 1) * SEQ * width], "row {b} changed");
                }
            }
        }
    }
}

#[test]
fn gather_scatter_positions_match() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(63);
    // (start, n): position 0 only (q head input), the 81 cells after the prefix, an odd window
    for (batch, width) in SHAPES {
        for (start, n) in [(0usize, 1usize), (1, SEQ - 1), (5, 17)] {
            let full = batch * SEQ * width;
            let part = batch * n * width;
            let src = round_bf16(&randn(&mut r, full, 1.0));
            let sd = upload(&dev, &to_bf16(&src));
            let mut dd = poisoned_bf16(&dev, part);
            act::gather_positions(&dev, &sd, &mut dd, batch, SEQ, start, n, width).unwrap();
            let mut want = vec![0.0; part];
            Cpu.gather_positions(&src, &mut want, SEQ, start, n, width);
            assert_eq!(
                bits(&download(&dev, &dd)),
                bits(&to_bf16(&want)),
                "gather {batch} {width} {start} {n}"
            );

            let ddst = round_bf16(&randn(&mut r, part, 1.0));
            let ddd = upload(&dev, &to_bf16(&ddst));
            let mut dsd = upload(&dev, &to_bf16(&src));
            act::scatter_add_positions(&dev, &ddd, &mut dsd, batch, SEQ, start, n, width).unwrap();
            let mut want = src.clone();
            Cpu.scatter_add_positions(&ddst, &mut want, SEQ, start, n, width);
            let got = from_bf16(&download(&dev, &dsd));
            assert_close("scatter_add", &got, &want, 2.0 * BF16_EPS, 0.0);
            for b in 0..batch {
                for s in (0..SEQ).filter(|s| !(start..start + n).contains(s)) {
                    let o = (b * SEQ + s) * width;
                    assert_eq!(got[o..o + width], src[o..o + width], "scatter wrote position {s}");
                }
            }
        }
    }
}

#[test]
fn gather_positions_rejects_out_of_range() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let sd = poisoned_bf16(&dev, 2 * SEQ * 8);
    let mut dd = poisoned_bf16(&dev, 2 * 10 * 8);
    assert!(act::gather_positions(&dev, &sd, &mut dd, 2, SEQ, SEQ - 5, 10, 8).is_err());
}

#[test]
fn all_finite_finds_nan_and_inf() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(64);
    // 1 element; one block; several blocks of a grid-stride launch
    for n in [1usize, 1000, 150_001] {
        let x = randn(&mut r, n, 1.0);
        let xd = upload(&dev, &x);
        assert!(Cpu.all_finite(&x));
        assert!(act::all_finite(&dev, &xd).unwrap(), "clean f32 buffer of {n}");
        let xb = upload(&dev, &to_bf16(&x));
        assert!(act::all_finite_bf16(&dev, &xb).unwrap(), "clean bf16 buffer of {n}");
        for at in [0, n / 2, n - 1] {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(!Cpu.all_finite(&y));
                let yd = upload(&dev, &y);
                assert!(!act::all_finite(&dev, &yd).unwrap(), "f32 {bad} at {at} of {n} missed");
                let yb = upload(&dev, &to_bf16(&y));
                assert!(!act::all_finite_bf16(&dev, &yb).unwrap(), "bf16 {bad} at {at} of {n} missed");
            }
        }
        // the count adds up over buffers: three planted values (NaN, +inf, -inf), twice
        let mut y = x.clone();
        let spots = [0, n / 2, n - 1];
        for (k, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
            y[spots[k]] = v;
        }
        let distinct = {
            let mut s = spots.to_vec();
            s.dedup();
            s.len() as u32
        };
        let mut count = upload(&dev, &[0u32]);
        act::count_nonfinite(&dev, &upload(&dev, &y), &mut count).unwrap();
        act::count_nonfinite_bf16(&dev, &upload(&dev, &to_bf16(&y)), &mut count).unwrap();
        assert_eq!(download(&dev, &count)[0], 2 * distinct, "non-finite count for n = {n}");
    }
}

#[test]
fn ema_matches() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(65);
    for n in [1usize, 1000, 4097] {
        for decay in [0.999f32, 0.5, 0.9999] {
            let e0 = randn(&mut r, n, 0.1);
            let p = randn(&mut r, n, 0.1);
            let mut ed = upload(&dev, &e0);
            let pd = upload(&dev, &p);
            act::ema_update(&dev, &mut ed, &pd, decay).unwrap();
            let mut want = e0.clone();
            Cpu.ema_update(&mut want, &p, decay);
            assert_close("ema", &download(&dev, &ed), &want, 1e-6, 1e-3);
        }
    }
}

/// f64 reference of the q head on z_H [batch, seq, d] (position 0 of each row).
fn q_ref(z: &[f32], w: &[f32], bias: &[f32], batch: usize, seq: usize, d: usize) -> Vec<f32> {
    let mut q = vec![0.0; batch * 2];
    for b in 0..batch {
        let x = &z[b * seq * d..b * seq * d + d];
        for o in 0..2 {
            let dot: f64 = x.iter().zip(&w[o * d..(o + 1) * d]).map(|(&a, &c)| a as f64 * c as f64).sum();
            q[b * 2 + o] = (bias[o] as f64 + dot) as f32;
        }
    }
    q
}

#[test]
fn q_head_matches() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(66);
    for (batch, d) in SHAPES {
        let n = batch * SEQ * d;
        let z = round_bf16(&randn(&mut r, n, 1.0));
        let w = randn(&mut r, 2 * d, 0.05);
        let bias: Vec<f32> = (0..2).map(|_| r.gen_range(-5.0f32..5.0)).collect();
        let (zd, wd, bd) = (upload(&dev, &to_bf16(&z)), upload(&dev, &w), upload(&dev, &bias));
        let mut qd = poisoned_f32(&dev, batch * 2);
        act::q_head_fwd(&dev, &zd, &wd, &bd, &mut qd, batch, SEQ, d).unwrap();
        let want = q_ref(&z, &w, &bias, batch, SEQ, d);
        assert_close("q", &download(&dev, &qd), &want, 1e-5, 2.0);

        // backward, accumulating into non-zero buffers
        let dq = randn(&mut r, batch * 2, 0.5);
        let dw0 = randn(&mut r, 2 * d, 1.0);
        let db0 = randn(&mut r, 2, 1.0);
        let dz0 = round_bf16(&randn(&mut r, n, 1.0));
        let dqd = upload(&dev, &dq);
        let run = || {
            let (mut dwd, mut dbd, mut dzd) =
                (upload(&dev, &dw0), upload(&dev, &db0), upload(&dev, &to_bf16(&dz0)));
            act::q_head_bwd(&dev, &dqd, &zd, &wd, &mut dwd, &mut dbd, &mut dzd, batch, SEQ, d).unwrap();
            (download(&dev, &dwd), download(&dev, &dbd), download(&dev, &dzd))
        };
        let (dw, db, dz) = run();
        let (mut dw_ref, mut db_ref, mut dz_ref) = (vec![0.0f32; 2 * d], vec![0.0f32; 2], dz0.clone());
        for o in 0..2 {
            let s: f64 = (0..batch).map(|b| dq[b * 2 + o] as f64).sum();
            db_ref[o] = (db0[o] as f64 + s) as f32;
            for j in 0..d {
                let s: f64 = (0..batch).map(|b| dq[b * 2 + o] as f64 * z[b * SEQ * d + j] as f64).sum();
                dw_ref[o * d + j] = (dw0[o * d + j] as f64 + s) as f32;
            }
        }
        for b in 0..batch {
            for j in 0..d {
                let g = dq[b * 2] as f64 * w[j] as f64 + dq[b * 2 + 1] as f64 * w[d + j] as f64;
                dz_ref[b * SEQ * d + j] = (dz0[b * SEQ * d + j] as f64 + g) as f32;
            }
        }
        assert_close("q dw", &dw, &dw_ref, 1e-5, 2.0);
        assert_close("q db", &db, &db_ref, 1e-5, 2.0);
        // the f32 sum before the one bf16 rounding is within ~1e-7 of the f64 value; the floor
        // covers that where dz0 and the gradient cancel
        assert_close("q dz", &from_bf16(&dz), &dz_ref, 2.0 * BF16_EPS, 1e-3);
        let dz_bits = bits(&dz);
        let dz0_bits = bits(&to_bf16(&dz0));
        for b in 0..batch {
            let (lo, hi) = (b * SEQ * d + d, (b + 1) * SEQ * d);
            assert_eq!(dz_bits[lo..hi], dz0_bits[lo..hi], "dz written past position 0 in row {b}");
        }
        // deterministic: a second run gives the same bits
        let (dw2, db2, dz2) = run();
        assert_eq!(
            dw.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            dw2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            db.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            db2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(dz_bits, bits(&dz2));
    }
}

#[test]
fn to_bf16_rounds_like_half() {
    let Some(dev) = device("kernels_act") else {
        return;
    };
    let mut r = rng(67);
    for n in [1usize, 257, 5000] {
        let mut x = randn(&mut r, n, 3.0);
        // halfway cases between two bf16 values round to even, as half::bf16::from_f32 does
        x[0] = f32::from_bits(0x3F80_8000);
        if n > 1 {
            x[1] = f32::from_bits(0x3F81_8000);
        }
        let xd = upload(&dev, &x);
        let mut yd = poisoned_bf16(&dev, n);
        act::to_bf16(&dev, &xd, &mut yd).unwrap();
        assert_eq!(bits(&download(&dev, &yd)), bits(&to_bf16(&x)), "n = {n}");
    }
}
