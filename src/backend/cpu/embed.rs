//! Input embedding: `x = scale * [puzzle prefix; embed_w[tokens]]` (+ learned positions,
//! times 1/sqrt(2), as the reference does), its scatter-add backward, and the input-injection add.

/// Shapes of the embedding op.
#[derive(Clone, Copy, Debug)]
pub struct EmbedDims {
    pub batch: usize,
    pub seq_len: usize,
    pub prefix_len: usize,
    pub hidden: usize,
    pub puzzle_emb_ndim: usize,
    pub scale: f32,
}

impl EmbedDims {
    pub fn total_seq(&self) -> usize {
        self.seq_len + self.prefix_len
    }
}

/// The reference's 1/sqrt(2) for learned positions (its literal 0.707106781 rounds to the
/// same f32).
const POS_SCALE: f32 = std::f32::consts::FRAC_1_SQRT_2;

pub fn embed_fwd(
    tokens: &[i32],
    puzzle_ids: &[i32],
    embed_w: &[f32],
    puzzle_w: &[f32],
    pos_w: Option<&[f32]>,
    out: &mut [f32],
    dims: &EmbedDims,
) {
    let (s, h, nd) = (dims.total_seq(), dims.hidden, dims.puzzle_emb_ndim);
    assert_eq!(tokens.len(), dims.batch * dims.seq_len);
    assert_eq!(puzzle_ids.len(), dims.batch);
    assert_eq!(out.len(), dims.batch * s * h);
    for b in 0..dims.batch {
        let xb = &mut out[b * s * h..(b + 1) * s * h];
        let (prefix, cells) = xb.split_at_mut(dims.prefix_len * h);
        if nd > 0 {
            let id = puzzle_ids[b] as usize;
            prefix[..nd].copy_from_slice(&puzzle_w[id * nd..(id + 1) * nd]);
            prefix[nd..].fill(0.0);
        }
        for (p, row) in cells.chunks_mut(h).enumerate() {
            let t = tokens[b * dims.seq_len + p] as usize;
            row.copy_from_slice(&embed_w[t * h..(t + 1) * h]);
        }
        if let Some(pos) = pos_w {
            xb.iter_mut().zip(pos).for_each(|(x, p)| *x = POS_SCALE * (*x + p));
        }
        xb.iter_mut().for_each(|x| *x *= dims.scale);
    }
}

/// Accumulates (+=) the gradients of the embedding tables from `dx` (the gradient of `x`): the
/// token table, the learned positions, and each batch row's puzzle embedding row into
/// `dpuzzle_rows` [batch, puzzle_emb_ndim] (whatever the row's id: the sparse optimizer sums
/// them per id and skips ids outside the table).
pub fn embed_bwd(
    dx: &[f32],
    tokens: &[i32],
    dembed_w: &mut [f32],
    dpuzzle_rows: &mut [f32],
    mut dpos_w: Option<&mut [f32]>,
    dims: &EmbedDims,
) {
    let (s, h, nd) = (dims.total_seq(), dims.hidden, dims.puzzle_emb_ndim);
    assert_eq!(dx.len(), dims.batch * s * h);
    assert!(nd == 0 || dpuzzle_rows.len() == dims.batch * nd, "embed_bwd: puzzle gradient rows");
    let pos_scale = if dpos_w.is_some() { POS_SCALE } else { 1.0 };
    let k = dims.scale * pos_scale;
    for b in 0..dims.batch {
        let dxb = &dx[b * s * h..(b + 1) * s * h];
        if let Some(dpos) = dpos_w.as_deref_mut() {
            dpos.iter_mut().zip(dxb).for_each(|(a, g)| *a += dims.scale * POS_SCALE * g);
        }
        if nd > 0 {
            dpuzzle_rows[b * nd..(b + 1) * nd].iter_mut().zip(dxb).for_each(|(a, g)| *a += k * g);
        }
        for (p, row) in dxb[dims.prefix_len * h..].chunks(h).enumerate() {
            let t = tokens[b * dims.seq_len + p] as usize;
            dembed_w[t * h..(t + 1) * h].iter_mut().zip(row).for_each(|(a, g)| *a += k * g);
        }
    }
}

/// `a += b` elementwise (input injection `z + x`, residual gradient sums).
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}
