//! Inference on the CPU backend as `hrm eval` runs it: a fresh carry, then all
//! `halt_max_steps` segments (16 for the Sudoku config) of no-grad forward, heads and scoring
//! per batch. Same config and batch as tools/reference/bench_cpu.py's inference figure;
//! throughput is reported in puzzles (batch rows) per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrm::act::{Batch, Carry, eval_step};
use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::model::HostParams;
use rand::{Rng, SeedableRng};
use std::time::Duration;

fn batch(cfg: &ModelConfig, b: usize) -> Batch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    Batch {
        inputs: (0..b * cfg.seq_len).map(|_| rng.gen_range(1..11)).collect(),
        puzzle_ids: vec![0; b],
        labels: Some((0..b * cfg.seq_len).map(|_| rng.gen_range(2..11)).collect()),
    }
}

fn bench_infer(c: &mut Criterion, name: &str, cfg: ModelConfig, b: usize) {
    let be = Cpu;
    let data = batch(&cfg, b);
    let segments = cfg.halt_max_steps;
    // Built on first use, so a filtered-out run costs nothing (the Sudoku init is seconds).
    let mut model = None;
    let mut group = c.benchmark_group("cpu_inference");
    group.throughput(Throughput::Elements(b as u64));
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(15));
    group.bench_function(format!("{name}_b{b}_{segments}_segments"), |bench| {
        let model = model
            .get_or_insert_with(|| Hrm::new(&be, &cfg, &HostParams::init(&cfg, &mut hrm::rng::seeded(0))));
        bench.iter(|| {
            let mut carry = Carry::fresh(&be, model, b);
            let mut exact = 0;
            for _ in 0..segments {
                let s = eval_step(&be, model, &mut carry, &data).unwrap();
                exact += s.scored.expect("labels given").exact.iter().filter(|&&e| e).count();
            }
            exact
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    hrm::tune_allocator();
    bench_infer(c, "sudoku_full", ModelConfig::sudoku(), 8);
}

criterion_group!(cpu_infer, benches);
criterion_main!(cpu_infer);
