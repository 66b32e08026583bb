//! Criterion benchmarks of every kernel (and the cuBLASLt GEMM) at the Sudoku training shapes
//! (batch 768 x 82 positions, hidden 512, inter 1536, 8 heads of 64, vocab 11, 27.3M parameters),
//! timed with CUDA events around back-to-back launches. GPU only: without a real GPU (the CPU
//! emulation included) it prints why and exits.
//!
//! Each kernel's throughput is its napkin byte count (DRAM bytes read + written, as in the
//! `.cu` headers) per second, also printed as a fraction of the device-to-device copy bandwidth
//! measured first in the same run (cuMemcpyDtoD of 1 GiB, read + write bytes; the target for
//! the element-wise kernels is >= 90% of it); the GEMM is reported in TFLOP/s.
//! `HRM_BENCH_REPORT=<file>` also writes that summary table to a file (scripts/device-check
//! uses it).

use std::time::Duration;

use criterion::{Criterion, Throughput};
use cudarc::driver::{CudaSlice, sys::CUevent_flags};
use half::bf16;
use hrm::backend::cpu::embed::EmbedDims;
use hrm::backend::cpu::optim::AdamHyper;
use hrm::backend::cpu::rope::rope_tables;
use hrm::backend::cuda::attention::{self, AttentionScratch};
use hrm::backend::cuda::kernels::{self, LmLossBuffers};
use hrm::backend::cuda::{CudaDevice, DeviceKind};

fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
) -> CudaSlice<T> {
    dev.stream.alloc_zeros::<T>(n).expect("alloc")
}

/// GPU time of `iters` back-to-back calls, from CUDA events.
fn timed(dev: &CudaDevice, iters: u64, f: &mut dyn FnMut()) -> Duration {
    let start = dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
    let end = dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
    start.record(&dev.stream).unwrap();
    for _ in 0..iters {
        f();
    }
    end.record(&dev.stream).unwrap();
    let ms = start.elapsed_ms(&end).unwrap() as f64;
    Duration::from_secs_f64(ms / 1e3)
}

struct Summary {
    lines: Vec<String>,
    /// Measured device-to-device copy bandwidth, bytes/s (read + write).
    copy_bw: f64,
}

/// Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB cuMemcpyDtoD.
fn copy_bandwidth(dev: &CudaDevice) -> f64 {
    let n = 1usize << 30;
    let a: CudaSlice<u8> = zeros(dev, n);
    let mut b: CudaSlice<u8> = zeros(dev, n);
    let mut f = || dev.stream.memcpy_dtod(&a, &mut b).unwrap();
    for _ in 0..3 {
        f();
    }
    let iters = 20;
    let t = timed(dev, iters, &mut f).as_secs_f64() / iters as f64;
    2.0 * n as f64 / t
}

impl Summary {
    fn add(&mut self, dev: &CudaDevice, name: &str, bytes: f64, flops: f64, f: &mut dyn FnMut()) {
        for _ in 0..10 {
            f();
        }
        let iters = 200;
        let t = timed(dev, iters, f).as_secs_f64() / iters as f64;
        let line = if flops > 0.0 {
            format!("{name:<28} {:>9.1} us  {:>8.1} TFLOP/s", t * 1e6, flops / t / 1e12)
        } else {
            let bw = bytes / t;
            format!(
                "{name:<28} {:>9.1} us  {:>8.1} GB/s  {:>5.1}% of copy",
                t * 1e6,
                bw / 1e9,
                100.0 * bw / self.copy_bw
            )
        };
        println!("{line}");
        self.lines.push(line);
    }
}

fn main() {
    let dev = match CudaDevice::shared() {
        Ok(d) if d.kind == DeviceKind::Gpu => d,
        Ok(d) => {
            println!("kernel benchmarks need a real GPU (found {}): skipped", d.name);
            return;
        }
        Err(why) => {
            println!("kernel benchmarks need a GPU: skipped ({why})");
            return;
        }
    };
    println!("kernel benchmarks on {}", dev.name);
    let mut c = Criterion::default().configure_from_args();
    let dev = &*dev;
    let copy_bw = copy_bandwidth(dev);
    let copy_line = format!("device-to-device copy (1 GiB): {:.1} GB/s (read + write)", copy_bw / 1e9);
    println!("{copy_line}");
    let mut summary = Summary { lines: vec![copy_line], copy_bw };

    let (batch, seq, prefix, hidden, inter, heads, hd, vocab) = (768, 81, 1, 512, 1536, 8, 64, 11);
    let s_len = seq + prefix;
    let rows = batch * s_len;
    let n_act = rows * hidden;

    let x: CudaSlice<bf16> = zeros(dev, n_act);
    let r: CudaSlice<bf16> = zeros(dev, n_act);
    let mut y: CudaSlice<bf16> = zeros(dev, n_act);
    let mut rstd: CudaSlice<f32> = zeros(dev, rows);
    let mut dx: CudaSlice<bf16> = zeros(dev, n_act);
    let gate_up: CudaSlice<bf16> = zeros(dev, rows * 2 * inter);
    let mut act: CudaSlice<bf16> = zeros(dev, rows * inter);
    let mut dgate_up: CudaSlice<bf16> = zeros(dev, rows * 2 * inter);
    let mut qkv: CudaSlice<bf16> = zeros(dev, rows * 3 * hidden);
    let (cos_h, sin_h) = rope_tables(s_len, hd, 10000.0);
    let cos = dev.stream.clone_htod(&cos_h).unwrap();
    let sin = dev.stream.clone_htod(&sin_h).unwrap();

    // (name, bytes, closure) for the memory-bound kernels
    let nb = n_act as f64;
    let mut run = |name: &str, bytes: f64, f: &mut dyn FnMut()| {
        let mut g = c.benchmark_group("kernels");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(name, |b| b.iter_custom(|iters| timed(dev, iters, &mut *f)));
        g.finish();
        summary.add(dev, name, bytes, 0.0, f);
    };

    run("add_rms_norm_fwd", nb * 6.0 + rows as f64 * 4.0, &mut || {
        kernels::add_rms_norm_fwd(dev, &x, &r, &mut y, &mut rstd, rows, (hidden, hidden), 1e-5).unwrap()
    });
    run("rms_norm_bwd", nb * 6.0 + rows as f64 * 4.0, &mut || {
        kernels::rms_norm_bwd(dev, &x, &r, &rstd, &mut dx, rows, (hidden, hidden)).unwrap()
    });
    let ni = (rows * inter) as f64;
    run("swiglu_fwd", ni * 6.0, &mut || kernels::swiglu_fwd(dev, &gate_up, &mut act, rows, inter).unwrap());
    run("swiglu_bwd", ni * 10.0, &mut || {
        kernels::swiglu_bwd(dev, &act, &gate_up, &mut dgate_up, rows, inter).unwrap()
    });
    run("rope_fwd", nb * 2.0 * 2.0 * 2.0, &mut || {
        kernels::rope_fwd(dev, &mut qkv, &cos, &sin, rows, s_len, heads, hd).unwrap()
    });
    run("rope_bwd", nb * 2.0 * 2.0 * 2.0, &mut || {
        kernels::rope_bwd(dev, &mut qkv, &cos, &sin, rows, s_len, heads, hd).unwrap()
    });
    let dims = EmbedDims {
        batch,
        seq_len: seq,
        prefix_len: prefix,
        hidden,
        puzzle_emb_ndim: hidden,
        scale: (hidden as f32).sqrt(),
    };
    // Sudoku-like tokens: the 10 digit/blank ids spread over the grid
    let tok_h: Vec<i32> = (0..batch * seq).map(|i| 1 + ((i * 7 + i / seq) % 10) as i32).collect();
    let tokens: CudaSlice<i32> = dev.stream.clone_htod(&tok_h).unwrap();
    let pids: CudaSlice<i32> = dev.stream.clone_htod(&(0..batch as i32).collect::<Vec<_>>()).unwrap();
    let embed_w: CudaSlice<f32> = zeros(dev, vocab * hidden);
    let puzzle_w: CudaSlice<f32> = zeros(dev, batch * hidden);
    let mut dembed_w: CudaSlice<f32> = zeros(dev, vocab * hidden);
    let mut dpuzzle_rows: CudaSlice<f32> = zeros(dev, batch * hidden);
    // forward: bf16 writes + token ids (tables are L2 resident)
    run("embed_fwd", nb * 2.0 + (batch * seq * 4) as f64, &mut || {
        kernels::embed_fwd(dev, &tokens, &pids, &embed_w, &puzzle_w, None, &mut y, &dims).unwrap()
    });
    // backward: bf16 reads; per-thread column sums in shared memory, then a fixed-order
    // reduction of the position groups' tables (deterministic, no float atomics)
    let mut embed_scratch: CudaSlice<f32> = zeros(dev, kernels::embed_bwd_scratch_len(&dims, vocab));
    run("embed_bwd (deterministic)", nb * 2.0, &mut || {
        kernels::embed_bwd(
            dev,
            &x,
            &tokens,
            &mut dembed_w,
            &mut dpuzzle_rows,
            None,
            &mut embed_scratch,
            &dims,
        )
        .unwrap()
    });
    run("add_inplace", nb * 6.0, &mut || kernels::add_inplace(dev, &mut y, &x, n_act).unwrap());
    let logits: CudaSlice<bf16> = zeros(dev, batch * seq * vocab);
    let labels: CudaSlice<i32> = dev.stream.clone_htod(&vec![2i32; batch * seq]).unwrap();
    let mut dlogits: CudaSlice<bf16> = zeros(dev, batch * seq * vocab);
    let mut lbuf = LmLossBuffers::new(dev, batch, seq).unwrap();
    run("stablemax_ce fwd+bwd", (batch * seq * vocab * 4 + batch * seq * 5) as f64, &mut || {
        kernels::stablemax_ce(dev, &logits, &labels, batch, seq, vocab, 1.0, Some(&mut dlogits), &mut lbuf)
            .unwrap()
    });
    let n_params = 27_275_266usize;
    let mut p: CudaSlice<f32> = zeros(dev, n_params);
    let g: CudaSlice<f32> = zeros(dev, n_params);
    let mut m: CudaSlice<f32> = zeros(dev, n_params);
    let mut v: CudaSlice<f32> = zeros(dev, n_params);
    let mut pb: CudaSlice<bf16> = zeros(dev, n_params);
    let h = AdamHyper { lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 1.0 };
    run("adam_atan2 (27.3M params)", n_params as f64 * 30.0, &mut || {
        kernels::adam_atan2_step(dev, &mut p, &g, &mut m, &mut v, Some(&mut pb), 10, &h).unwrap()
    });
    // The sparse puzzle embedding step at ARC's scale: a million ids x 512 (2 GB), the batch's
    // gradient rows (all ids distinct: every block leads) summed and applied; the cost follows
    // the batch, not the table (reads the rows' gradients, reads and writes their table rows).
    let (pz_rows, pz_len) = (1000 * 1000, hidden);
    let mut w: CudaSlice<f32> = zeros(dev, pz_rows * pz_len);
    let gw: CudaSlice<f32> = zeros(dev, batch * pz_len);
    let pz_ids: CudaSlice<i32> =
        dev.stream.clone_htod(&(0..batch).map(|i| (i * 1297 % pz_rows) as i32).collect::<Vec<_>>()).unwrap();
    let no_bad_step: CudaSlice<i32> = dev.stream.clone_htod(&[i32::MAX]).unwrap();
    run("puzzle_sign_sgd (1M x 512 table, batch rows)", (batch * pz_len * 12) as f64, &mut || {
        kernels::puzzle_sign_sgd(dev, &mut w, &gw, &pz_ids, pz_len, 1e-4, 0.1, &no_bad_step).unwrap()
    });

    // Attention (fused; head dim 64 takes the tensor-core kernels, mma.sync bf16): napkin bytes
    // as in kernels/attention.cu (the backward reads qkv and dout once per kernel). 14.5 GFLOP
    // forward and 51 GFLOP backward (padded to 96 x 96) are ~25 us and ~85 us of mma.sync, so
    // both should sit near the copy ceiling (forward ~60-70 us, backward ~0.2 ms expected).
    let mut att_out: CudaSlice<bf16> = zeros(dev, n_act);
    let mut att_lse: CudaSlice<f32> = zeros(dev, batch * heads * s_len);
    let att_dout: CudaSlice<bf16> = zeros(dev, n_act);
    let mut dqkv: CudaSlice<bf16> = zeros(dev, rows * 3 * hidden);
    let mut att_scratch = AttentionScratch::new(dev, batch, heads, s_len).unwrap();
    let (n_qkv, n_stat) = ((rows * 3 * hidden) as f64, (batch * heads * s_len) as f64);
    run("attention_fwd", n_qkv * 2.0 + nb * 2.0 + n_stat * 4.0, &mut || {
        attention::attention_fwd(dev, &qkv, &mut att_out, &mut att_lse, batch, s_len, heads, hd).unwrap()
    });
    run("attention_bwd (dq + dkdv)", n_qkv * 6.0 + nb * 6.0 + n_stat * 16.0, &mut || {
        attention::attention_bwd(
            dev,
            &qkv,
            &att_out,
            &att_lse,
            &att_dout,
            &mut dqkv,
            &mut att_scratch,
            batch,
            s_len,
            heads,
            hd,
        )
        .unwrap()
    });
    // RoPE inside attention (same bytes as above; the rope tables come from L2): compare with
    // rope_fwd + attention_fwd, rope_bwd + attention_bwd.
    run("attention_rope_fwd (fused)", n_qkv * 2.0 + nb * 2.0 + n_stat * 4.0, &mut || {
        attention::attention_rope_fwd(
            dev,
            &qkv,
            &cos,
            &sin,
            &mut att_out,
            &mut att_lse,
            batch,
            s_len,
            heads,
            hd,
        )
        .unwrap()
    });
    run("attention_rope_bwd (fused)", n_qkv * 6.0 + nb * 6.0 + n_stat * 16.0, &mut || {
        attention::attention_rope_bwd(
            dev,
            &qkv,
            &cos,
            &sin,
            &att_out,
            &att_lse,
            &att_dout,
            &mut dqkv,
            &mut att_scratch,
            batch,
            s_len,
            heads,
            hd,
        )
        .unwrap()
    });

    // GEMM: qkv projection y[rows, 1536] = x[rows, 512] W^T
    let gemm = dev.gemm().unwrap();
    let wq: CudaSlice<bf16> = zeros(dev, 3 * hidden * hidden);
    let flops = 2.0 * rows as f64 * (3 * hidden) as f64 * hidden as f64;
    let mut f = || gemm.matmul(rows, 3 * hidden, hidden, &x, false, &wq, true, &mut qkv, 1.0, 0.0).unwrap();
    {
        let mut g = c.benchmark_group("gemm");
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function("qkv_proj bf16 (flops as elements)", |b| {
            b.iter_custom(|iters| timed(dev, iters, &mut f))
        });
        g.finish();
    }
    summary.add(dev, "gemm qkv_proj 62976x1536x512", 0.0, flops, &mut f);

    c.final_summary();
    if let Ok(path) = std::env::var("HRM_BENCH_REPORT") {
        let text = format!("kernel benchmarks on {}\n{}\n", dev.name, summary.lines.join("\n"));
        std::fs::write(&path, text).expect("write HRM_BENCH_REPORT");
    }
}
