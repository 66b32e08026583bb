//! The CPU backend: every op of the model in plain f32 (f64 where the reference uses it),
//! multithreaded with rayon, GEMMs through the `gemm` crate. It is the reference the CUDA
//! kernels are validated against; one file per op, forward and backward side by side.

pub mod attention;
pub mod bf16;
pub mod embed;
pub mod halting;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod simd;
pub mod swiglu;

use super::{
    ActReport, ActRows, AdamHyper, Backend, EmbedDims, EvalRows, LmLossOut, OptimRule, OptimStep, QSlot,
    TransposeDims,
};
use anyhow::Result;
use halting::CpuActState;
use rayon::prelude::*;

/// The f32 CPU backend (threads from rayon's global pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// The storage methods of a backend whose buffers are host `Vec`s (plain copies), shared by
/// [`Cpu`] and [`bf16::CpuBf16`].
macro_rules! host_vec_storage {
    () => {
        fn download_act(&self, buf: &Vec<f32>) -> Vec<f32> {
            buf.clone()
        }
        fn act_len(&self, buf: &Vec<f32>) -> usize {
            buf.len()
        }
        fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) {
            dst.copy_from_slice(src);
        }
        fn zero_act(&self, buf: &mut Vec<f32>) {
            buf.fill(0.0);
        }
        fn upload_param(&self, host: &[f32]) -> Vec<f32> {
            host.to_vec()
        }
        fn download_param(&self, p: &Vec<f32>) -> Vec<f32> {
            p.clone()
        }
        fn zeros_f32(&self, n: usize) -> Vec<f32> {
            vec![0.0; n]
        }
        fn upload_f32(&self, host: &[f32]) -> Vec<f32> {
            host.to_vec()
        }
        fn download_f32(&self, buf: &Vec<f32>) -> Vec<f32> {
            buf.clone()
        }
        fn upload_i32(&self, host: &[i32]) -> Vec<i32> {
            host.to_vec()
        }
        fn download_i32(&self, buf: &Vec<i32>) -> Vec<i32> {
            buf.clone()
        }
        fn zero_f32(&self, buf: &mut Vec<f32>) {
            buf.fill(0.0);
        }
        fn write_i32(&self, host: &[i32], buf: &mut Vec<i32>) {
            buf.copy_from_slice(host);
        }
    };
}
pub(crate) use host_vec_storage;

impl Backend for Cpu {
    type Act = Vec<f32>;
    type Param = Vec<f32>;
    type F32 = Vec<f32>;
    type I32 = Vec<i32>;
    type ActState = CpuActState;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn check(&self) -> Result<()> {
        Ok(())
    }
    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn upload_act(&self, host: &[f32]) -> Vec<f32> {
        host.to_vec()
    }
    host_vec_storage!();
    fn all_finite(&self, buf: &Vec<f32>) -> bool {
        buf.par_chunks(1 << 14).all(|c| c.iter().all(|v| v.is_finite()))
    }
    fn ema_update(&self, ema: &mut Vec<f32>, p: &Vec<f32>, decay: f32) {
        assert_eq!(ema.len(), p.len());
        ema.par_chunks_mut(1 << 14)
            .zip(p.par_chunks(1 << 14))
            .for_each(|(e, p)| e.iter_mut().zip(p).for_each(|(e, p)| *e = decay * *e + (1.0 - decay) * p));
    }
    fn add(&self, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) {
        assert!(a.len() == b.len() && a.len() == out.len());
        out.par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
            .for_each(|(o, (a, b))| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (x, y))| *o = x + y));
    }
    fn add_inplace(&self, a: &mut Vec<f32>, b: &Vec<f32>) {
        embed::add_inplace(a, b);
    }
    fn add_injection(&self, z: &Vec<f32>, z_h: &Vec<f32>, x: &Vec<f32>, out: &mut Vec<f32>) {
        assert!(z.len() == z_h.len() && z.len() == x.len() && z.len() == out.len());
        out.par_chunks_mut(1 << 14)
            .zip(z.par_chunks(1 << 14).zip(z_h.par_chunks(1 << 14).zip(x.par_chunks(1 << 14))))
            .for_each(|(o, (z, (h, x)))| {
                o.iter_mut().zip(z.iter().zip(h.iter().zip(x))).for_each(|(o, (z, (h, x)))| *o = z + (h + x))
            });
    }
    fn add_injection_inplace(&self, z: &mut Vec<f32>, z_h: &Vec<f32>, x: &Vec<f32>) {
        assert!(z.len() == z_h.len() && z.len() == x.len());
        z.par_chunks_mut(1 << 14)
            .zip(z_h.par_chunks(1 << 14).zip(x.par_chunks(1 << 14)))
            .for_each(|(z, (h, x))| z.iter_mut().zip(h.iter().zip(x)).for_each(|(z, (h, x))| *z += h + x));
    }
    fn reset_rows(&self, z: &mut Vec<f32>, init: &Vec<f32>, st: &CpuActState, width: usize) {
        let mask = &st.halted;
        let per_row = z.len() / mask.len();
        assert_eq!(per_row * mask.len(), z.len());
        for (row, _) in z.chunks_mut(per_row).zip(mask).filter(|(_, m)| **m != 0) {
            row.chunks_mut(width).for_each(|p| p.copy_from_slice(init));
        }
    }
    fn gather_positions(
        &self,
        src: &Vec<f32>,
        dst: &mut Vec<f32>,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    ) {
        for (d, s) in dst.chunks_mut(n * width).zip(src.chunks(seq * width)) {
            d.copy_from_slice(&s[start * width..(start + n) * width]);
        }
    }
    fn scatter_add_positions(
        &self,
        ddst: &Vec<f32>,
        dsrc: &mut Vec<f32>,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    ) {
        for (d, s) in ddst.chunks(n * width).zip(dsrc.chunks_mut(seq * width)) {
            s[start * width..(start + n) * width].iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    fn linear_fwd(&self, x: &Vec<f32>, w: &Vec<f32>, y: &mut Vec<f32>, rows: usize, din: usize, dout: usize) {
        linear::linear_fwd(x, w, y, rows, din, dout);
    }
    fn linear_bwd_x(
        &self,
        dy: &Vec<f32>,
        w: &Vec<f32>,
        dx: &mut Vec<f32>,
        rows: usize,
        din: usize,
        dout: usize,
        acc: bool,
    ) {
        linear::linear_bwd_x(dy, w, dx, rows, din, dout, acc);
    }
    fn linear_bwd_w(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        dw: &mut Vec<f32>,
        rows: usize,
        din: usize,
        dout: usize,
    ) {
        linear::linear_bwd_w(dy, x, dw, rows, din, dout);
    }
    fn q_head_fwd(
        &self,
        z_h: &Vec<f32>,
        w: &Vec<f32>,
        bias: &Vec<f32>,
        st: &mut CpuActState,
        slot: QSlot,
        batch: usize,
        seq: usize,
        d: usize,
    ) {
        let mut q_in = vec![0.0; batch * d];
        self.gather_positions(z_h, &mut q_in, seq, 0, 1, d);
        let q = st.q_slot(slot);
        linear::linear_fwd(&q_in, w, q, batch, d, 2);
        for r in q.chunks_mut(2) {
            r[0] += bias[0];
            r[1] += bias[1];
        }
    }
    fn q_head_bwd(
        &self,
        st: &CpuActState,
        z_h: &Vec<f32>,
        w: &Vec<f32>,
        dw: &mut Vec<f32>,
        dbias: &mut Vec<f32>,
        dz_h: &mut Vec<f32>,
        seq: usize,
        d: usize,
    ) {
        let dq = &st.dq;
        let batch = st.batch();
        let mut q_in = vec![0.0; batch * d];
        self.gather_positions(z_h, &mut q_in, seq, 0, 1, d);
        linear::linear_bwd_w(dq, &q_in, dw, batch, d, 2);
        dbias[0] += dq.iter().step_by(2).sum::<f32>();
        dbias[1] += dq.iter().skip(1).step_by(2).sum::<f32>();
        let mut dq_in = vec![0.0; batch * d];
        linear::linear_bwd_x(dq, w, &mut dq_in, batch, d, 2, false);
        self.scatter_add_positions(&dq_in, dz_h, seq, 0, 1, d);
    }
    fn act_state(&self, batch: usize) -> CpuActState {
        CpuActState::new(batch)
    }
    fn act_set(&self, st: &mut CpuActState, steps: &[u32], halted: &[bool]) {
        st.steps = steps.iter().map(|&s| s as i32).collect();
        st.halted = halted.iter().map(|&h| h as u8).collect();
    }
    fn act_rows(&self, st: &CpuActState) -> ActRows {
        ActRows {
            steps: st.steps.iter().map(|&s| s as u32).collect(),
            halted: st.halted.iter().map(|&h| h != 0).collect(),
            min_halt: st.min_halt.iter().map(|&s| s as u32).collect(),
            q_halt: st.q.iter().step_by(2).copied().collect(),
            q_continue: st.q.iter().skip(1).step_by(2).copied().collect(),
            target_q_continue: st.target.clone(),
        }
    }
    fn act_q(&self, st: &CpuActState, slot: QSlot) -> (Vec<f32>, Vec<f32>) {
        let q = if slot == QSlot::Current { &st.q } else { &st.q_next };
        (q.iter().step_by(2).copied().collect(), q.iter().skip(1).step_by(2).copied().collect())
    }
    fn act_lm_rows(&self, st: &CpuActState) -> LmLossOut {
        st.lm.clone()
    }
    fn act_set_min_halt(&self, st: &mut CpuActState, min_halt: &[u32]) {
        st.min_halt = min_halt.iter().map(|&s| s as i32).collect();
    }
    fn act_explore(&self, st: &mut CpuActState, key: u64, prob: f64, max_steps: usize, first_row: usize) {
        let threshold = halting::explore_threshold(prob);
        for (b, m) in st.min_halt.iter_mut().enumerate() {
            *m = halting::explore_row(key, first_row + b, threshold, max_steps);
        }
    }
    fn act_take_new(
        &self,
        st: &mut CpuActState,
        new_tokens: &Vec<i32>,
        tokens: &mut Vec<i32>,
        new_ids: &Vec<i32>,
        ids: &mut Vec<i32>,
        new_labels: &Vec<i32>,
        labels: &mut Vec<i32>,
        seq_len: usize,
    ) {
        halting::take_new(st, new_tokens, tokens, new_ids, ids, new_labels, labels, seq_len);
    }
    fn act_halt(&self, st: &mut CpuActState, max_steps: usize) {
        halting::halt(st, max_steps);
    }
    fn act_set_step(&self, st: &mut CpuActState, step: u32) {
        st.step_now = step as i32;
    }
    fn act_q_loss(&self, st: &mut CpuActState, max_steps: usize, grad_scale: f64) {
        halting::q_loss(st, max_steps, grad_scale);
    }
    fn act_guard(&self, st: &mut CpuActState, grads: &[&Vec<f32>]) {
        halting::guard(st, grads);
    }
    fn transpose(&self, x: &Vec<f32>, y: &mut Vec<f32>, t: &TransposeDims) {
        let TransposeDims { batch, rows, cols, x_ld, y_ld } = *t;
        let (nx, ny) = (rows * x_ld, cols * y_ld);
        assert!(x_ld >= cols && y_ld >= rows, "transpose {t:?}: a leading dimension below its row");
        assert!(x.len() >= batch * nx && y.len() >= batch * ny, "transpose {t:?}: buffers too short");
        if ny == 0 {
            return;
        }
        y[..batch * ny].par_chunks_mut(ny).enumerate().for_each(|(b, y)| {
            let x = &x[b * nx..];
            for (c, yc) in y.chunks_mut(y_ld).enumerate() {
                for (r, v) in yc.iter_mut().enumerate() {
                    *v = if r < rows { x[r * x_ld + c] } else { 0.0 };
                }
            }
        });
    }
    fn act_halt_no_continue(&self, st: &mut CpuActState, max_steps: usize) {
        halting::halt_no_continue(st, max_steps);
    }
    fn act_q_halt_loss(&self, st: &mut CpuActState, grad_scale: f64) {
        halting::q_halt_loss(st, grad_scale);
    }
    fn act_report(&self, st: &mut CpuActState) -> ActReport {
        halting::report(st)
    }
    fn act_eval_score(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        vocab: usize,
        seq: usize,
        st: &mut CpuActState,
        max_segments: usize,
    ) {
        st.lm = loss::stablemax_ce(logits, labels, vocab, seq, 0.0, None);
        halting::exact_hist(st, max_segments);
    }
    fn act_eval_read(&self, st: &CpuActState, _seq: usize, segments: usize) -> EvalRows {
        halting::eval_read(st, segments)
    }
    fn add_rms_norm_fwd(
        &self,
        x: &Vec<f32>,
        r: &Vec<f32>,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        d: usize,
        eps: f32,
    ) {
        norm::add_rms_norm_fwd(x, r, y, rstd, d, eps);
    }
    fn rms_norm_bwd(&self, dy: &Vec<f32>, y: &Vec<f32>, rstd: &Vec<f32>, dx: &mut Vec<f32>, d: usize) {
        norm::rms_norm_bwd(dy, y, rstd, dx, d);
    }
    fn swiglu_fwd(&self, gate_up: &Vec<f32>, out: &mut Vec<f32>, inter: usize) {
        swiglu::swiglu_fwd(gate_up, out, inter);
    }
    fn swiglu_bwd(&self, dout: &Vec<f32>, gate_up: &Vec<f32>, dgate_up: &mut Vec<f32>, inter: usize) {
        swiglu::swiglu_bwd(dout, gate_up, dgate_up, inter);
    }
    fn rope_fwd(
        &self,
        qkv: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        seq: usize,
        heads: usize,
        hd: usize,
    ) {
        rope::rope_fwd(qkv, cos, sin, seq, heads, hd);
    }
    fn rope_bwd(
        &self,
        dqkv: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        seq: usize,
        heads: usize,
        hd: usize,
    ) {
        rope::rope_bwd(dqkv, cos, sin, seq, heads, hd);
    }
    fn attention_fwd(
        &self,
        qkv: &Vec<f32>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        attention::attention_fwd(qkv, out, lse, b, s, h, hd);
    }
    fn attention_bwd(
        &self,
        qkv: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        dqkv: &mut Vec<f32>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        attention::attention_bwd(qkv, out, lse, dout, dqkv, b, s, h, hd);
    }
    fn embed_fwd(
        &self,
        tokens: &Vec<i32>,
        puzzle_ids: &Vec<i32>,
        embed_w: &Vec<f32>,
        puzzle_w: Option<&Vec<f32>>,
        pos_w: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
        dims: &EmbedDims,
    ) {
        let empty = Vec::new();
        embed::embed_fwd(
            tokens,
            puzzle_ids,
            embed_w,
            puzzle_w.unwrap_or(&empty),
            pos_w.map(|p| &p[..]),
            out,
            dims,
        );
    }
    fn embed_bwd(
        &self,
        dx: &Vec<f32>,
        tokens: &Vec<i32>,
        dembed_w: &mut Vec<f32>,
        dpuzzle_rows: Option<&mut Vec<f32>>,
        dpos_w: Option<&mut Vec<f32>>,
        dims: &EmbedDims,
    ) {
        let mut empty = Vec::new();
        embed::embed_bwd(
            dx,
            tokens,
            dembed_w,
            dpuzzle_rows.unwrap_or(&mut empty),
            dpos_w.map(|p| &mut p[..]),
            dims,
        );
    }
    fn lm_loss(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: Option<&mut Vec<f32>>,
    ) -> LmLossOut {
        loss::stablemax_ce(logits, labels, vocab, seq, grad_scale, dlogits.map(|d| &mut d[..]))
    }
    fn lm_loss_rows(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: &mut Vec<f32>,
        st: &mut CpuActState,
    ) {
        let mut out = loss::stablemax_ce(logits, labels, vocab, seq, grad_scale, Some(&mut dlogits[..]));
        out.argmax = Vec::new();
        st.lm = out;
    }
    fn adam_atan2_step(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        step: u32,
        h: &AdamHyper,
    ) {
        optim::adam_atan2_step(p, g, m, v, step, h);
    }
    fn puzzle_sign_sgd(
        &self,
        table: &mut Vec<f32>,
        row_grads: &Vec<f32>,
        ids: &Vec<i32>,
        row_len: usize,
        lr: f32,
        wd: f32,
        guard: &CpuActState,
    ) {
        if guard.status[0] != halting::NONE {
            return; // a bad step was recorded: no update from then on
        }
        optim::puzzle_sign_sgd(table, row_grads, ids, row_len, lr, wd);
    }
    fn optimizer_step(
        &self,
        params: &mut [&mut Vec<f32>],
        grads: &[&Vec<f32>],
        m: &mut [&mut Vec<f32>],
        v: &mut [&mut Vec<f32>],
        ema: Option<&mut [&mut Vec<f32>]>,
        rules: &[OptimRule],
        h: &OptimStep,
        guard: &CpuActState,
    ) {
        if guard.status[0] != halting::NONE {
            return; // a bad step was recorded: no update from then on
        }
        for (i, rule) in rules.iter().enumerate() {
            match *rule {
                OptimRule::Adam => optim::adam_atan2_step(params[i], grads[i], m[i], v[i], h.step, &h.adam),
                OptimRule::Frozen => {}
            }
        }
        if let (Some(ema), Some(decay)) = (ema, h.ema_decay) {
            for (e, p) in ema.iter_mut().zip(params.iter()) {
                self.ema_update(e, p, decay);
            }
        }
    }
}
