//! Embedding (forward, scatter-add backward) and the input-injection add against the CPU
//! reference (GPU when present, else the CPU emulation; skipped without either).
//!
//! Bounds: forward reads f32 tables and rounds each output to bf16 once: 2 * BF16_EPS relative.
//! Backward: f32 sums of bf16 gradients times an f32 scale, in another order than the
//! reference: relative error ~ n_terms * 6e-8; for <= 500 terms per element 1e-4 relative to
//! the RMS covers it with room (f32 math: far below 1e-3). It must also be deterministic: the
//! emulation runs the blocks of a grid in a different shuffled order at every launch, so a
//! result that depends on the order of float additions across blocks or threads shows as two
//! launches that differ in their bits.
//! add: one bf16 rounding of an exact f32 sum: 2 * BF16_EPS.

mod kernel_common;
use hrm::backend::cpu::embed::{self, EmbedDims};
use hrm::backend::cuda::kernels;
use kernel_common::*;
use rand::Rng;

fn check(dims: EmbedDims, vocab: usize, n_puzzles: usize, with_pos: bool, seed: u64) {
    let Some(dev) = device("kernels_embed") else {
        return;
    };
    let mut r = rng(seed);
    let (s, h, nd) = (dims.total_seq(), dims.hidden, dims.puzzle_emb_ndim);
    let tokens: Vec<i32> = (0..dims.batch * dims.seq_len).map(|_| r.gen_range(0..vocab as i32)).collect();
    let pids: Vec<i32> = (0..dims.batch).map(|_| r.gen_range(0..n_puzzles as i32)).collect();
    let ew = randn(&mut r, vocab * h, 0.05);
    let pw = randn(&mut r, n_puzzles * nd.max(1), 0.05)[..n_puzzles * nd].to_vec();
    let pos = randn(&mut r, s * h, 0.05);
    let (td, pd) = (upload(&dev, &tokens), upload(&dev, &pids));
    let (ewd, pwd, posd) = (upload(&dev, &ew), upload(&dev, &pw), upload(&dev, &pos));
    let n = dims.batch * s * h;
    let mut outd = poisoned_bf16(&dev, n);
    let pos_opt = with_pos.then_some(&posd);
    kernels::embed_fwd(&dev, &td, &pd, &ewd, &pwd, pos_opt, &mut outd, &dims).unwrap();
    let mut want = vec![0.0; n];
    embed::embed_fwd(&tokens, &pids, &ew, &pw, with_pos.then_some(&pos[..]), &mut want, &dims);
    assert_close("embed fwd", &from_bf16(&download(&dev, &outd)), &want, 2.0 * BF16_EPS, 0.01);

    // backward: accumulate into non-zero gradients (+= semantics)
    let dx = round_bf16(&randn(&mut r, n, 1.0));
    let dxd = upload(&dev, &to_bf16(&dx));
    let (g0e, g0p, g0pos) =
        (randn(&mut r, vocab * h, 1.0), randn(&mut r, dims.batch * nd, 1.0), randn(&mut r, s * h, 1.0));
    let (mut ged, mut gpd, mut gposd) = (upload(&dev, &g0e), upload(&dev, &g0p), upload(&dev, &g0pos));
    let gpos_opt = if with_pos { Some(&mut gposd) } else { None };
    let mut scratch = poisoned_f32(&dev, kernels::embed_bwd_scratch_len(&dims, vocab));
    kernels::embed_bwd(&dev, &dxd, &td, &mut ged, &mut gpd, gpos_opt, &mut scratch, &dims).unwrap();
    let (mut ge, mut gp, mut gpos) = (g0e.clone(), g0p.clone(), g0pos.clone());
    let gpos_ref = if with_pos { Some(&mut gpos[..]) } else { None };
    embed::embed_bwd(&dx, &tokens, &mut ge, &mut gp, gpos_ref, &dims);
    assert_close("dembed_w", &download(&dev, &ged), &ge, 1e-4, 1.0);
    // one gradient row per batch row (a single bf16 term times the scale per element)
    assert_close("dpuzzle rows", &download(&dev, &gpd), &gp, 1e-4, 1.0);
    if with_pos {
        assert_close("dpos_w", &download(&dev, &gposd), &gpos, 1e-4, 1.0);
    } else {
        assert_eq!(download(&dev, &gposd), g0pos, "dpos_w written without positions");
    }
}

#[test]
fn embed_sudoku_shape() {
    // Sudoku: 81 cells + 1 prefix token, vocab 11, puzzle_emb_ndim = hidden
    let dims = EmbedDims {
        batch: 4,
        seq_len: 81,
        prefix_len: 1,
        hidden: 128,
        puzzle_emb_ndim: 128,
        scale: (128f32).sqrt(),
    };
    check(dims, 11, 5, false, 31);
}

#[test]
fn embed_odd_sizes_and_positions() {
    let dims = EmbedDims {
        batch: 1,
        seq_len: 7,
        prefix_len: 2,
        hidden: 24,
        puzzle_emb_ndim: 30, // pads the 2-token prefix (48 values) with zeros
        scale: 2.5,
    };
    check(dims, 13, 3, true, 32);
    let dims = EmbedDims { batch: 3, seq_len: 5, prefix_len: 1, hidden: 33, puzzle_emb_ndim: 33, scale: 1.0 };
    check(dims, 4, 2, true, 33);
}

#[test]
fn embed_bwd_tiles_and_large_vocab() {
    // Sudoku width (hidden 512) with positions and enough batch rows for several tiles per
    // position: the shared-memory pre-reduction and its flush
    let dims =
        EmbedDims { batch: 40, seq_len: 81, prefix_len: 1, hidden: 512, puzzle_emb_ndim: 512, scale: 22.6 };
    check(dims, 11, 3, true, 35);
    // vocab x hidden above the 48 KiB of shared memory: per-element global atomics
    let dims = EmbedDims { batch: 6, seq_len: 9, prefix_len: 1, hidden: 64, puzzle_emb_ndim: 64, scale: 1.5 };
    check(dims, 200, 1, true, 36);
    // hidden a multiple of 4, not of 8: scalar columns
    let dims = EmbedDims { batch: 5, seq_len: 6, prefix_len: 1, hidden: 20, puzzle_emb_ndim: 12, scale: 1.0 };
    check(dims, 7, 2, false, 37);
}

/// Two launches on the same inputs give the same bits, on gradients whose f32 sums are NOT
/// exact (magnitudes over six decades, hundreds of terms per element), so the order of the
/// additions shows in the result.
#[test]
fn embed_bwd_is_deterministic() {
    let Some(dev) = device("kernels_embed") else {
        return;
    };
    let dims =
        EmbedDims { batch: 48, seq_len: 81, prefix_len: 1, hidden: 64, puzzle_emb_ndim: 64, scale: 8.0 };
    let vocab = 11;
    let mut r = rng(40);
    let n = dims.batch * dims.total_seq() * dims.hidden;
    let tokens: Vec<i32> = (0..dims.batch * dims.seq_len).map(|_| r.gen_range(0..vocab as i32)).collect();
    let dx: Vec<f32> = randn(&mut r, n, 1.0).iter().map(|v| v * 10f32.powf(r.gen_range(-3.0..3.0))).collect();
    let (dxd, td) = (upload(&dev, &to_bf16(&dx)), upload(&dev, &tokens));
    let run = || {
        let mut ge = upload(&dev, &vec![0.0f32; vocab * dims.hidden]);
        let mut gp = upload(&dev, &vec![0.0f32; dims.batch * dims.puzzle_emb_ndim]);
        let mut gpos = upload(&dev, &vec![0.0f32; dims.total_seq() * dims.hidden]);
        let mut scratch = poisoned_f32(&dev, kernels::embed_bwd_scratch_len(&dims, vocab));
        kernels::embed_bwd(&dev, &dxd, &td, &mut ge, &mut gp, Some(&mut gpos), &mut scratch, &dims).unwrap();
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        (bits(download(&dev, &ge)), bits(download(&dev, &gp)), bits(download(&dev, &gpos)))
    };
    let first = run();
    for _ in 0..3 {
        let again = run();
        assert!(first.0 == again.0, "dembed_w differs between two launches");
        assert!(first.1 == again.1, "dpuzzle rows differ between two launches");
        assert!(first.2 == again.2, "dpos_w differs between two launches");
    }
}

#[test]
fn add_inplace_matches() {
    let Some(dev) = device("kernels_embed") else {
        return;
    };
    let mut r = rng(34);
    for n in [1usize, 7, 8, 1000, 4099, 82 * 512 + 3] {
        let a = round_bf16(&randn(&mut r, n, 1.0));
        let b = round_bf16(&randn(&mut r, n, 1.0));
        let mut ad = upload(&dev, &to_bf16(&a));
        let bd = upload(&dev, &to_bf16(&b));
        kernels::add_inplace(&dev, &mut ad, &bd, n).unwrap();
        let mut want = a.clone();
        embed::add_inplace(&mut want, &b);
        assert_close("add", &from_bf16(&download(&dev, &ad)), &want, 2.0 * BF16_EPS, 0.0);
    }
}
