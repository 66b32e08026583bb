//! The batched transpose (kernels/transpose.cu, TRM's sequence-axis token mixing) against the
//! CPU backend's, on the GPU when present, else under the CPU emulation; skipped (with a
//! message) without either.
//!
//! Bound: a transpose copies values, so the result must be bit-identical to the CPU's (bf16
//! inputs are exact in f32). Outputs are NaN-poisoned first, so an element the kernel does not
//! write fails.

mod kernel_common;
use half::bf16;
use hrm::backend::Backend;
use hrm::backend::cpu::Cpu;
use hrm::backend::cuda::{DeviceKind, kernels};
use kernel_common::*;

fn check(batch: usize, rows: usize, cols: usize, seed: u64) {
    let Some(dev) = device("kernels_transpose") else {
        return;
    };
    let n = batch * rows * cols;
    let x = round_bf16(&randn(&mut rng(seed), n, 1.0));
    let xd = upload(&dev, &to_bf16(&x));
    let mut yd = poisoned_bf16(&dev, n);
    kernels::transpose(&dev, &xd, &mut yd, batch, rows, cols).unwrap();
    let mut want = vec![0.0; n];
    Cpu.transpose(&x, &mut want, batch, rows, cols);
    let got = from_bf16(&download(&dev, &yd));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{batch}x{rows}x{cols} [{i}]: got {g}, want {w}");
    }
    // and back: the transpose of the transpose is the input
    let mut back = poisoned_bf16(&dev, n);
    kernels::transpose(&dev, &yd, &mut back, batch, cols, rows).unwrap();
    assert_eq!(from_bf16(&download(&dev, &back)), x, "{batch}x{rows}x{cols}: round trip");
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
    kernels::transpose(&dev, &x, &mut y, 0, 2, 2).unwrap();
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
    Cpu.transpose(&x, &mut want, batch, rows, cols);
    let mut yd = poisoned_bf16(&dev, n);
    let launched = kernels::transpose_missing_sync_selftest(&dev, &xd, &mut yd, batch, rows, cols)
        .and_then(|_| dev.sync());
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
