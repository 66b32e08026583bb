//! One full training step on the CPU backend: take data, gradient-carrying segment, target-Q
//! segment, losses, backward, AdamATan2 + SignSGD. Same configs and batch sizes as
//! tools/reference/bench_cpu.py (PyTorch CPU eager) so the two figures compare directly.
//! Throughput is reported in puzzles (batch rows) per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrm::act::{Batch, Carry, train_step};
use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::model::HostParams;
use hrm::optim::{OptimConfig, Optimizer};
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

fn bench_step(c: &mut Criterion, name: &str, cfg: ModelConfig, b: usize) {
    let be = Cpu;
    let oc = OptimConfig::default();
    let data = batch(&cfg, b);
    // Built on first use, so a filtered-out config costs nothing (the Sudoku init is seconds).
    let mut state = None;
    let mut group = c.benchmark_group("cpu_train_step");
    group.throughput(Throughput::Elements(b as u64));
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.bench_function(format!("{name}_b{b}"), |bench| {
        let (model, opt) = state.get_or_insert_with(|| {
            let params = HostParams::init(&cfg, &mut hrm::rng::seeded(0));
            let model = Hrm::new(&be, &cfg, &params);
            let opt = Optimizer::new(&be, &model);
            (model, opt)
        });
        bench.iter(|| {
            // A fresh carry each step: every row takes the batch, as the PyTorch bench does.
            let mut carry = Carry::fresh(&be, model, b);
            let mut grads = model.zero_grads(&be, b);
            let st = train_step(&be, model, &mut carry, &data, &vec![0; b], b, &mut grads);
            let ws = &carry.ws;
            opt.apply(&be, model, &grads, None, &oc, oc.lr, oc.puzzle_emb_lr, &ws.inputs.puzzle_ids, &ws.act);
            st.lm_loss
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    hrm::tune_allocator();
    bench_step(c, "tiny", ModelConfig::tiny(), 32);
    bench_step(c, "sudoku_full", ModelConfig::sudoku(), 8);
}

criterion_group!(cpu, benches);
criterion_main!(cpu);
