//! The batched transpose (kernels/transpose.cu, TRM's sequence-axis token mixing) against the
//! CPU backend's, on the GPU when present, else under the CPU emulation; skipped (with a
//! message) without either.
//!
//! Bound: a transpose copies values, so the result must be bit-identical to the CPU's (bf16
//! inputs are exact in f32). Outputs are NaN-poisoned first, so an element the kernel does not
//! write fails. The padded layout (rows of the output longer than the input's rows, the pads
//! written 0) is checked against a direct definition as well as the CPU backend's.
//!
//! Also here, the zero-padded copies of kernels/pad.cu that the token GEMMs read, against
//! plain loops.

mod kernel_common;
use half::bf16;
use hrm::backend::cpu::Cpu;
use hrm::backend::cuda::{DeviceKind, kernels};
use hrm::backend::{Backend, TransposeDims};
use kernel_common::*;

fn dims(batch: usize, rows: usize, cols: usize) -> TransposeDims {
    TransposeDims { batch, rows, cols, x_ld: cols, y_ld: rows }
}

fn check(batch: usize, rows: usize, cols: usize, seed: u64) {
    check_padded(batch, rows, cols, rows, seed);
}

/// [batch, rows, cols] -> [batch, cols, y_ld] and back through the window of the padded rows.
fn check_padded(batch: usize, rows: usize, cols: usize, y_ld: usize, seed: u64) {
    let Some(dev) = device("kernels_transpose") else {
        return;
    };
    let (n, ny) = (batch * rows * cols, batch * cols * y_ld);
    let x = round_bf16(&randn(&mut rng(seed), n, 1.0));
    let xd = upload(&dev, &to_bf16(&x));
    let mut yd = poisoned_bf16(&dev, ny);
    let t = TransposeDims { y_ld, ..dims(batch, rows, cols) };
    kernels::transpose(&dev, &xd, &mut yd, &t).unwrap();
    let mut want = vec![f32::NAN; ny];
    Cpu.transpose(&x, &mut want, &t);
    // the definition, independently of the CPU backend's loops
    for b in 0..batch {
        for c in 0..cols {
            for r in 0..y_ld {
                let v = if r < rows { x[(b * rows + r) * cols + c] } else { 0.0 };
                assert_eq!(want[(b * cols + c) * y_ld + r].to_bits(), v.to_bits(), "CPU transpose {t:?}");
            }
        }
    }
    let got = from_bf16(&download(&dev, &yd));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{t:?} [{i}]: got {g}, want {w}");
    }
    // and back: the transpose of the transpose (reading the padded rows' window) is the input
    let mut back = poisoned_bf16(&dev, n);
    let tb = TransposeDims { batch, rows: cols, cols: rows, x_ld: y_ld, y_ld: cols };
    kernels::transpose(&dev, &yd, &mut back, &tb).unwrap();
    assert_eq!(from_bf16(&download(&dev, &back)), x, "{t:?}: round trip");
}

#[test]
fn transpose_into_padded_rows_writes_zero_pads() {
    check_padded(3, 97, 64, 104, 9); // TRM Sudoku: 97 positions in rows of 104
    check_padded(2, 33, 40, 72, 10); // pads spanning a whole tile of 32
    check_padded(1, 1, 3, 8, 11);
}

#[test]
fn pad_and_unpad_match_plain_loops() {
    let Some(dev) = device("kernels_transpose") else {
        return;
    };
    // a token weight [2t, S] -> [2t, S_ld] and [S, t] -> [S_ld, t] (t cut to 24)
    for (rows, cols, rows_ld, cols_ld) in [(48, 97, 48, 104), (97, 24, 104, 24), (5, 3, 7, 9)] {
        let w = round_bf16(&randn(&mut rng(rows as u64), rows * cols, 1.0));
        let mut out = poisoned_bf16(&dev, rows_ld * cols_ld);
        kernels::pad_bf16(&dev, &upload(&dev, &to_bf16(&w)), &mut out, (rows, cols), (rows_ld, cols_ld))
            .unwrap();
        let got = from_bf16(&download(&dev, &out));
        for r in 0..rows_ld {
            for c in 0..cols_ld {
                let want = if r < rows && c < cols { w[r * cols + c] } else { 0.0 };
                assert_eq!(got[r * cols_ld + c].to_bits(), want.to_bits(), "pad {rows}x{cols} [{r}, {c}]");
            }
        }
    }
    // a gradient over padded rows added into its real shape; the pads' (NaN) values unread
    let (rows, cols, ld) = (6, 97, 104);
    let mut src = randn(&mut rng(20), rows * ld, 1.0);
    for row in src.chunks_mut(ld) {
        row[cols..].fill(f32::NAN);
    }
    let dst = randn(&mut rng(21), rows * cols, 1.0);
    let mut dd = upload(&dev, &dst);
    kernels::add_unpad_f32(&dev, &upload(&dev, &src), &mut dd, rows, cols, ld).unwrap();
    let got = download(&dev, &dd);
    for r in 0..rows {
        for c in 0..cols {
            let want = dst[r * cols + c] + src[r * ld + c];
            assert_eq!(got[r * cols + c].to_bits(), want.to_bits(), "add_unpad [{r}, {c}]");
        }
    }
}

#[test]
fn transpose_trm_sudoku_shapes() {
    // [batch, seq 97, hidden] and back, hidden cut to 64 to keep the emulation quick
    check(3, 97, 64, 1);
    check(2, 64, 97, 2);
}

#[test]
fn transpose_edge_tiles() {
    check(1, 1, 1, 3); // one element, 1023 idle threads
    check(4, 33, 65, 4); // one row and one column past a tile
    check(5, 7, 3, 5); // smaller than a tile
    check(1, 32, 32, 6); // exactly one tile
    check(2, 1, 70, 7); // a row vector
}

#[test]
fn transpose_zero_batch_writes_nothing() {
    let Some(dev) = device("kernels_transpose") else {
        return;
    };
    let x = upload(&dev, &[bf16::ONE; 4]);
    let mut y = poisoned_bf16(&dev, 4);
    kernels::transpose(&dev, &x, &mut y, &dims(0, 2, 2)).unwrap();
    assert!(from_bf16(&download(&dev, &y)).iter().all(|v| v.is_nan()));
}

/// The planted bug: the same kernel without the barrier between filling the tile and reading
/// it across. The emulation runs a block's threads in a shuffled order (and its race checker
/// reports the race), so the twin must fail the launch or give a wrong transpose.
#[test]
fn transpose_missing_barrier_is_caught() {
    let Some(dev) = device("kernels_transpose") else {
        return;
    };
    if dev.kind == DeviceKind::Gpu {
        eprintln!("transpose_missing_barrier_is_caught: runs under the CPU emulation only");
        return;
    }
    let (batch, rows, cols) = (2, 97, 64);
    let n = batch * rows * cols;
    let x = round_bf16(&randn(&mut rng(8), n, 1.0));
    let xd = upload(&dev, &to_bf16(&x));
    let mut want = vec![0.0; n];
    let t = dims(batch, rows, cols);
    Cpu.transpose(&x, &mut want, &t);
    let mut yd = poisoned_bf16(&dev, n);
    let launched = kernels::transpose_missing_sync_selftest(&dev, &xd, &mut yd, &t).and_then(|_| dev.sync());
    match launched {
        Err(e) => eprintln!("the missing barrier failed the launch: {e}"),
        Ok(()) => {
            let got = from_bf16(&download(&dev, &yd));
            let wrong = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
            assert!(wrong > 0, "a transpose without its tile barrier went unnoticed");
            eprintln!("the missing barrier left {wrong} of {n} elements wrong");
        }
    }
}
