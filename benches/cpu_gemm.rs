//! The CPU backend's GEMMs at the model's shapes: forward (`y = x W^T`), input gradient
//! (`dx = dy W`) and weight gradient (`dW += dy^T x`) for every linear layer of the tiny
//! (B = 32) and Sudoku (B = 8) configs, rows = batch * 82 positions. Criterion reports
//! GFLOP/s as "elements" (one element = one FLOP, 2 per multiply-add); compare with the
//! machine's FMA peak printed at the start (2 FMA ports x lanes x 2 FLOPs x cores x clock).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrm::backend::cpu::linear::{linear_bwd_w, linear_bwd_x, linear_fwd};
use std::time::Duration;

fn peak_note() {
    let cores = rayon::current_num_threads();
    let ghz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| mhz / 1e3)
        .unwrap_or(0.0);
    #[cfg(target_arch = "x86_64")]
    let lanes = if std::arch::is_x86_feature_detected!("avx512f") { 16.0 } else { 8.0 };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = 4.0;
    let peak = 2.0 * lanes * 2.0 * cores as f64 * ghz;
    eprintln!(
        "FMA peak (2 FMA ports x {lanes} f32 lanes x 2 FLOPs x {cores} threads x {ghz:.2} GHz): {peak:.0} GFLOP/s"
    );
}

fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn bench_shape(c: &mut Criterion, config: &str, layer: &str, rows: usize, din: usize, dout: usize) {
    let x = fill(rows * din, 1);
    let w = fill(dout * din, 2);
    let dy = fill(rows * dout, 3);
    let mut y = vec![0.0; rows * dout];
    let mut dx = vec![0.0; rows * din];
    let mut dw = vec![0.0; dout * din];
    let flops = 2 * rows * din * dout;
    let mut group = c.benchmark_group(format!("cpu_gemm_{config}"));
    group.throughput(Throughput::Elements(flops as u64));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let shape = format!("{layer}_{rows}x{din}x{dout}");
    group.bench_function(format!("fwd_{shape}"), |b| b.iter(|| linear_fwd(&x, &w, &mut y, rows, din, dout)));
    group.bench_function(format!("bwd_x_{shape}"), |b| {
        b.iter(|| linear_bwd_x(&dy, &w, &mut dx, rows, din, dout, false))
    });
    group.bench_function(format!("bwd_w_{shape}"), |b| {
        b.iter(|| linear_bwd_w(&dy, &x, &mut dw, rows, din, dout))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    hrm::tune_allocator();
    peak_note();
    // Sudoku config, B = 8: hidden 512, intermediate 1536.
    let rows = 8 * 82;
    bench_shape(c, "sudoku_b8", "qkv", rows, 512, 1536);
    bench_shape(c, "sudoku_b8", "o", rows, 512, 512);
    bench_shape(c, "sudoku_b8", "gate_up", rows, 512, 3072);
    bench_shape(c, "sudoku_b8", "down", rows, 1536, 512);
    // Tiny config, B = 32: hidden 64, intermediate 256.
    let rows = 32 * 82;
    bench_shape(c, "tiny_b32", "qkv", rows, 64, 192);
    bench_shape(c, "tiny_b32", "o", rows, 64, 64);
    bench_shape(c, "tiny_b32", "gate_up", rows, 64, 512);
    bench_shape(c, "tiny_b32", "down", rows, 256, 64);
}

criterion_group!(cpu_gemm, benches);
criterion_main!(cpu_gemm);
