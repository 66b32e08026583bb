//! Loss kernels (stablemax cross entropy with argmax/exact flags; q-head BCE) and optimizer
//! kernels (AdamATan2, SignSGD) against the CPU reference (GPU when present, else the CPU
//! emulation; skipped without either).
//!
//! Bounds: the losses are f64 math on identical inputs (bf16 logits given to the reference as
//! the same rounded values); only the reciprocal (an f32 seed + two Newton steps, ~1 ulp) and
//! exp/log implementations differ: 1e-9 relative. bf16 gradients: one rounding (through f32):
//! 2 * BF16_EPS. Optimizers are f32 element-wise math where the GPU may contract a*b+c into an
//! FMA: a few ulp, so 1e-5 relative (far below 1e-3).

mod kernel_common;
use half::bf16;
use hrm::backend::cpu::loss;
use hrm::backend::cpu::optim::{self, AdamHyper};
use hrm::backend::cuda::kernels::{self, LmLossBuffers};
use kernel_common::*;
use rand::Rng;

fn check_ce(rows: usize, seq: usize, vocab: usize, seed: u64) {
    let Some(dev) = device("kernels_loss") else {
        return;
    };
    let mut r = rng(seed);
    let n = rows * seq;
    let mut logits = randn(&mut r, n * vocab, 2.0);
    let mut labels: Vec<i32> = (0..n).map(|_| r.gen_range(1..vocab as i32)).collect();
    for (t, l) in labels.iter_mut().enumerate() {
        if t % 7 == 3 {
            *l = 0; // PAD
        }
    }
    // row 0: every valid token predicted right (exact); row 1 (if any): all PAD;
    // last token (outside row 0): a tie between every class (argmax must be index 0)
    for t in 0..seq {
        let y = labels[t];
        if y != 0 {
            logits[t * vocab + y as usize] = 8.0;
        }
    }
    if rows > 1 {
        labels[seq..2 * seq].fill(0);
    }
    let tie = (rows > 1).then_some(n - 1);
    if let Some(t) = tie {
        logits[t * vocab..(t + 1) * vocab].fill(0.5);
    }
    let logits = round_bf16(&logits);
    let (ld, lbd) = (upload(&dev, &to_bf16(&logits)), upload(&dev, &labels));
    let mut out = LmLossBuffers::new(&dev, rows, seq).unwrap();
    let mut dld = poisoned_bf16(&dev, n * vocab);
    let grad_scale = 1.0 / 768.0;
    kernels::stablemax_ce(&dev, &ld, &lbd, rows, seq, vocab, grad_scale, Some(&mut dld), &mut out).unwrap();
    let mut dl = vec![0.0; n * vocab];
    let want = loss::stablemax_ce(&logits, &labels, vocab, seq, grad_scale, Some(&mut dl));

    let got_loss = download(&dev, &out.loss_per_row);
    for (i, (g, w)) in got_loss.iter().zip(&want.loss_per_row).enumerate() {
        assert!(g.is_finite() && (g - w).abs() <= 1e-9 * w.abs().max(1e-3), "row {i}: {g} vs {w}");
    }
    assert_eq!(download(&dev, &out.n_correct), want.n_correct);
    assert_eq!(download(&dev, &out.n_valid), want.n_valid);
    let exact: Vec<bool> = download(&dev, &out.exact).iter().map(|&e| e != 0).collect();
    assert_eq!(exact, want.exact);
    assert!(exact[0], "row 0 was built to be exactly right");
    assert_eq!(download(&dev, &out.argmax), want.argmax);
    if let Some(t) = tie {
        assert_eq!(want.argmax[t], 0, "ties go to the lowest index");
    }
    assert_close("dlogits", &from_bf16(&download(&dev, &dld)), &dl, 2.0 * BF16_EPS, 0.0);

    // without a gradient buffer: same losses
    let mut out2 = LmLossBuffers::new(&dev, rows, seq).unwrap();
    kernels::stablemax_ce(&dev, &ld, &lbd, rows, seq, vocab, 1.0, None, &mut out2).unwrap();
    assert_eq!(download(&dev, &out2.loss_per_row), got_loss);
}

#[test]
fn stablemax_ce_sudoku_shape() {
    check_ce(6, 81, 11, 41);
}

#[test]
fn stablemax_ce_odd_sizes() {
    check_ce(1, 1, 2, 42); // batch 1, one token
    check_ce(3, 200, 5, 43); // more tokens than threads per block
}

#[test]
fn bce_with_logits_matches() {
    let Some(dev) = device("kernels_loss") else {
        return;
    };
    let mut r = rng(44);
    for n in [1usize, 2, 1536, 1000] {
        let x = randn(&mut r, n, 6.0);
        let t: Vec<f32> = (0..n).map(|_| r.r#gen::<f32>()).collect();
        let (xd, td) = (upload(&dev, &x), upload(&dev, &t));
        let mut dd = poisoned_f32(&dev, n);
        let mut sd = upload(&dev, &[f64::NAN]);
        kernels::bce_with_logits(&dev, &xd, &td, n, 0.25, Some(&mut dd), &mut sd).unwrap();
        let mut dw = vec![0.0; n];
        let want = loss::bce_with_logits(&x, &t, 0.25, Some(&mut dw));
        let got = download(&dev, &sd)[0];
        assert!(got.is_finite() && (got - want).abs() <= 1e-9 * want.abs(), "{got} vs {want}");
        assert_close("bce dlogits", &download(&dev, &dd), &dw, 1e-6, 1e-3);
    }
}

#[test]
fn adam_atan2_matches() {
    let Some(dev) = device("kernels_optim") else {
        return;
    };
    let mut r = rng(45);
    let h = AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.95, weight_decay: 1.0 };
    for n in [1usize, 1000, 4097] {
        let mut p = randn(&mut r, n, 0.05);
        let mut m = vec![0.0; n];
        let mut v = vec![0.0; n];
        let mut pd = upload(&dev, &p);
        let mut md = upload(&dev, &m);
        let mut vd = upload(&dev, &v);
        let mut pbd = poisoned_bf16(&dev, n);
        for step in 1..=3u32 {
            let g = randn(&mut r, n, 0.01);
            let gd = upload(&dev, &g);
            kernels::adam_atan2_step(&dev, &mut pd, &gd, &mut md, &mut vd, Some(&mut pbd), step, &h).unwrap();
            optim::adam_atan2_step(&mut p, &g, &mut m, &mut v, step, &h);
            let pg = download(&dev, &pd);
            assert_close("adam p", &pg, &p, 1e-5, 1e-3);
            assert_close("adam m", &download(&dev, &md), &m, 1e-5, 1e-3);
            assert_close("adam v", &download(&dev, &vd), &v, 1e-5, 1e-3);
            let pb: Vec<f32> = download(&dev, &pbd).iter().map(|x: &bf16| x.to_f32()).collect();
            assert_close("adam p bf16", &pb, &round_bf16(&pg), 0.0, 0.0);
        }
    }
}

/// The sparse SignSGD step against the CPU reference and against its definition (a dense
/// table gradient's sign on the rows of the ids present): ids repeated within the batch (their
/// rows summed once, in row order), ids absent (rows untouched, no decay), ids out of range
/// (skipped), zero sums (sign 0: decay only), and a recorded bad step (nothing written).
#[test]
fn puzzle_sign_sgd_matches() {
    let Some(dev) = device("kernels_optim") else {
        return;
    };
    let mut r = rng(46);
    for (table_rows, row_len, ids) in [
        (1usize, 1usize, vec![0i32]),
        (10, 512, vec![3, 7, 3, 0, 3, 9, 7, 1]),
        (7, 33, vec![6, -1, 2, 7, 2, 5]),
        (1000, 130, (0..300).map(|i| i * 37 % 50).collect()),
    ] {
        let n = table_rows * row_len;
        let w = randn(&mut r, n, 0.1);
        let mut g = randn(&mut r, ids.len() * row_len, 1.0);
        g[0] = 0.0; // a zero sum where the first row's id appears once: decay only
        let (lr, wd) = (1e-2f32, 0.1f32);
        let mut want = w.clone();
        optim::puzzle_sign_sgd(&mut want, &g, &ids, row_len, lr, wd);
        // The definition, from the dense gradient of the table.
        let dense = hrm::model::scatter_puzzle_rows(&g, &ids, table_rows, row_len);
        for row in 0..table_rows {
            let present = ids.contains(&(row as i32));
            for j in 0..row_len {
                let (x, gv) = (w[row * row_len + j], dense[row * row_len + j]);
                let sign = if gv > 0.0 {
                    1.0
                } else if gv < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                let def = if present { x * (1.0 - lr * wd) - lr * sign } else { x };
                assert_eq!(want[row * row_len + j].to_bits(), def.to_bits(), "CPU step, row {row} col {j}");
            }
        }
        let (gd, idsd) = (upload(&dev, &g), upload(&dev, &ids));
        let ok = upload(&dev, &[i32::MAX]); // the guard's "no bad step"
        let mut wdv = upload(&dev, &w);
        kernels::puzzle_sign_sgd(&dev, &mut wdv, &gd, &idsd, row_len, lr, wd, &ok).unwrap();
        let got = download(&dev, &wdv);
        // the same sums in the same order: the same bits
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&got), bits(&want), "puzzle SignSGD ({table_rows} x {row_len}, ids {ids:?})");
        let bad = upload(&dev, &[5i32]);
        let mut wdv = upload(&dev, &w);
        kernels::puzzle_sign_sgd(&dev, &mut wdv, &gd, &idsd, row_len, lr, wd, &bad).unwrap();
        assert_eq!(bits(&download(&dev, &wdv)), bits(&w), "a recorded bad step writes nothing");
    }
}
