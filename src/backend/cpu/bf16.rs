//! `CpuBf16`: the CPU backend with bf16 rounding at the points where the CUDA backend stores
//! bf16: every activation an op writes, and the weights the GEMMs read (the bf16 shadow).
//! Math inside an op stays f32, as in the kernels (f32 accumulation).
//!
//! It is the yardstick of the parity tests (the flash-attention rule): the CUDA path's error
//! against the f32 reference must be at most a small multiple of this backend's error against
//! the same reference, so a kernel is judged against what bf16 storage costs by itself.

use super::Cpu;
use super::halting::CpuActState;
use crate::backend::{
    ActReport, ActRows, AdamHyper, Backend, EmbedDims, EvalRows, LmLossOut, OptimRule, OptimStep, QSlot,
    TransposeDims,
};
use anyhow::Result;
use half::bf16;

/// The f32 CPU backend, rounding stored activations and GEMM weights to bf16.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBf16;

/// Rounds every element to the nearest bf16 (ties to even), in place.
pub fn round_bf16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
}

fn rounded(x: &[f32]) -> Vec<f32> {
    let mut v = x.to_vec();
    round_bf16(&mut v);
    v
}

#[allow(clippy::too_many_arguments)]
impl Backend for CpuBf16 {
    type Act = Vec<f32>;
    type Param = Vec<f32>;
    type F32 = Vec<f32>;
    type I32 = Vec<i32>;
    type ActState = CpuActState;

    fn name(&self) -> &'static str {
        "cpu-bf16"
    }
    fn check(&self) -> Result<()> {
        Ok(())
    }
    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn upload_act(&self, host: &[f32]) -> Vec<f32> {
        rounded(host)
    }
    super::host_vec_storage!();
    fn all_finite(&self, buf: &Vec<f32>) -> bool {
        Cpu.all_finite(buf)
    }
    fn ema_update(&self, ema: &mut Vec<f32>, p: &Vec<f32>, decay: f32) {
        Cpu.ema_update(ema, p, decay)
    }
    fn add(&self, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) {
        Cpu.add(a, b, out);
        round_bf16(out);
    }
    fn add_inplace(&self, a: &mut Vec<f32>, b: &Vec<f32>) {
        Cpu.add_inplace(a, b);
        round_bf16(a);
    }
    fn add_injection(&self, z: &Vec<f32>, z_h: &Vec<f32>, x: &Vec<f32>, out: &mut Vec<f32>) {
        let mut inj = vec![0.0; z.len()];
        self.add(z_h, x, &mut inj);
        self.add(z, &inj, out);
    }
    fn add_injection_inplace(&self, z: &mut Vec<f32>, z_h: &Vec<f32>, x: &Vec<f32>) {
        let mut inj = vec![0.0; z.len()];
        self.add(z_h, x, &mut inj);
        self.add_inplace(z, &inj);
    }
    fn reset_rows(&self, z: &mut Vec<f32>, init: &Vec<f32>, st: &CpuActState, width: usize) {
        Cpu.reset_rows(z, &rounded(init), st, width);
    }
    fn gather_positions(
        &self,
        src: &Vec<f32>,
        dst: &mut Vec<f32>,
        seq: usize,
        start: usize,
        n: usize,
        w: usize,
    ) {
        Cpu.gather_positions(src, dst, seq, start, n, w);
    }
    fn scatter_add_positions(
        &self,
        ddst: &Vec<f32>,
        dsrc: &mut Vec<f32>,
        seq: usize,
        start: usize,
        n: usize,
        w: usize,
    ) {
        Cpu.scatter_add_positions(ddst, dsrc, seq, start, n, w);
        round_bf16(dsrc);
    }
    fn linear_fwd(&self, x: &Vec<f32>, w: &Vec<f32>, y: &mut Vec<f32>, rows: usize, din: usize, dout: usize) {
        Cpu.linear_fwd(x, &rounded(w), y, rows, din, dout);
        round_bf16(y);
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
        Cpu.linear_bwd_x(dy, &rounded(w), dx, rows, din, dout, acc);
        round_bf16(dx);
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
        Cpu.linear_bwd_w(dy, x, dw, rows, din, dout);
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
        Cpu.q_head_fwd(z_h, w, bias, st, slot, batch, seq, d)
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
        Cpu.q_head_bwd(st, z_h, w, dw, dbias, dz_h, seq, d);
        round_bf16(dz_h);
    }
    fn act_state(&self, batch: usize) -> CpuActState {
        Cpu.act_state(batch)
    }
    fn act_set(&self, st: &mut CpuActState, steps: &[u32], halted: &[bool]) {
        Cpu.act_set(st, steps, halted)
    }
    fn act_rows(&self, st: &CpuActState) -> ActRows {
        Cpu.act_rows(st)
    }
    fn act_q(&self, st: &CpuActState, slot: QSlot) -> (Vec<f32>, Vec<f32>) {
        Cpu.act_q(st, slot)
    }
    fn act_lm_rows(&self, st: &CpuActState) -> LmLossOut {
        Cpu.act_lm_rows(st)
    }
    fn act_set_min_halt(&self, st: &mut CpuActState, min_halt: &[u32]) {
        Cpu.act_set_min_halt(st, min_halt)
    }
    fn act_explore(&self, st: &mut CpuActState, key: u64, prob: f64, max_steps: usize, first_row: usize) {
        Cpu.act_explore(st, key, prob, max_steps, first_row)
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
        Cpu.act_take_new(st, new_tokens, tokens, new_ids, ids, new_labels, labels, seq_len)
    }
    fn act_halt(&self, st: &mut CpuActState, max_steps: usize) {
        Cpu.act_halt(st, max_steps)
    }
    fn act_set_step(&self, st: &mut CpuActState, step: u32) {
        Cpu.act_set_step(st, step)
    }
    fn act_q_loss(&self, st: &mut CpuActState, max_steps: usize, grad_scale: f64) {
        Cpu.act_q_loss(st, max_steps, grad_scale)
    }
    fn act_guard(&self, st: &mut CpuActState, grads: &[&Vec<f32>]) {
        Cpu.act_guard(st, grads)
    }
    fn transpose(&self, x: &Vec<f32>, y: &mut Vec<f32>, t: &TransposeDims) {
        // a copy: the values stay the rounded ones
        Cpu.transpose(x, y, t)
    }
    fn act_halt_no_continue(&self, st: &mut CpuActState, max_steps: usize) {
        Cpu.act_halt_no_continue(st, max_steps)
    }
    fn act_q_halt_loss(&self, st: &mut CpuActState, grad_scale: f64) {
        Cpu.act_q_halt_loss(st, grad_scale)
    }
    fn act_report(&self, st: &mut CpuActState) -> ActReport {
        Cpu.act_report(st)
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
        Cpu.act_eval_score(logits, labels, vocab, seq, st, max_segments)
    }
    fn act_eval_read(&self, st: &CpuActState, seq: usize, segments: usize) -> EvalRows {
        Cpu.act_eval_read(st, seq, segments)
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
        Cpu.add_rms_norm_fwd(x, r, y, rstd, d, eps);
        round_bf16(y);
    }
    fn rms_norm_bwd(&self, dy: &Vec<f32>, y: &Vec<f32>, rstd: &Vec<f32>, dx: &mut Vec<f32>, d: usize) {
        Cpu.rms_norm_bwd(dy, y, rstd, dx, d);
        round_bf16(dx);
    }
    fn swiglu_fwd(&self, gate_up: &Vec<f32>, out: &mut Vec<f32>, inter: usize) {
        Cpu.swiglu_fwd(gate_up, out, inter);
        round_bf16(out);
    }
    fn swiglu_bwd(&self, dout: &Vec<f32>, gate_up: &Vec<f32>, dgate_up: &mut Vec<f32>, inter: usize) {
        Cpu.swiglu_bwd(dout, gate_up, dgate_up, inter);
        round_bf16(dgate_up);
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
        Cpu.rope_fwd(qkv, cos, sin, seq, heads, hd);
        round_bf16(qkv);
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
        Cpu.rope_bwd(dqkv, cos, sin, seq, heads, hd);
        round_bf16(dqkv);
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
        Cpu.attention_fwd(qkv, out, lse, b, s, h, hd);
        round_bf16(out);
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
        Cpu.attention_bwd(qkv, out, lse, dout, dqkv, b, s, h, hd);
        round_bf16(dqkv);
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
        Cpu.embed_fwd(tokens, puzzle_ids, embed_w, puzzle_w, pos_w, out, dims);
        round_bf16(out);
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
        Cpu.embed_bwd(dx, tokens, dembed_w, dpuzzle_rows, dpos_w, dims);
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
        let with_grad = dlogits.is_some();
        let mut d = dlogits;
        let out = Cpu.lm_loss(logits, labels, vocab, seq, grad_scale, d.as_deref_mut());
        if with_grad && let Some(d) = d {
            round_bf16(d);
        }
        out
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
        Cpu.lm_loss_rows(logits, labels, vocab, seq, grad_scale, dlogits, st);
        round_bf16(dlogits);
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
        Cpu.adam_atan2_step(p, g, m, v, step, h);
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
        Cpu.puzzle_sign_sgd(table, row_grads, ids, row_len, lr, wd, guard);
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
        Cpu.optimizer_step(params, grads, m, v, ema, rules, h, guard)
    }
}
