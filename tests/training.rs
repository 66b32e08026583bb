//! ACT training semantics and the training loop's guarantees: carry updates, exploration,
//! target Q, bit-identical resume, crash-safe checkpoints, the NaN guard.

use hrm::act::{Batch, Carry, explore_min_halt, halting, target_q_continue};
use hrm::backend::Backend;
use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::model::HostParams;
use hrm::train::run::{RunOptions, run};
use hrm::train::sampler::VecSource;
use hrm::train::{TrainConfig, Trainer, checkpoint};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn small_cfg() -> ModelConfig {
    ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        num_puzzle_identifiers: 1,
        halt_max_steps: 4,
        halt_exploration_prob: 0.5,
        ..ModelConfig::sudoku()
    }
}

fn data(groups: usize, per: usize) -> VecSource {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = groups * per * 81;
    VecSource {
        seq_len: 81,
        inputs: (0..n).map(|_| rng.gen_range(1..11)).collect(),
        labels: (0..n).map(|_| rng.gen_range(2..11)).collect(),
        group_offsets: (0..=groups).map(|g| g * per).collect(),
    }
}

fn train_cfg() -> TrainConfig {
    let mut c = TrainConfig::new(small_cfg());
    c.batch_size = 4;
    c.steps = 6;
    c.seed = 17;
    c.ema = Some(0.9);
    c.optim.lr = 1e-3;
    c.optim.lr_warmup_steps = 2;
    c.optim.puzzle_emb_lr = 1e-2;
    c.log_every = 1;
    c.checkpoint_every = 3;
    c.keep_checkpoints = 5;
    c
}

#[test]
fn halted_rows_take_new_data_and_restart_while_others_keep_theirs() {
    let be = Cpu;
    let cfg = small_cfg();
    let params = HostParams::init(&cfg, &mut hrm::rng::seeded(1));
    let model = Hrm::new(&be, &cfg, &params);
    let mut carry = Carry::fresh(&be, &model, 3);
    let b1 = Batch { inputs: vec![1; 3 * 81], puzzle_ids: vec![0; 3], labels: Some(vec![2; 3 * 81]) };
    carry.take_new_data(&be, &model, &b1);
    // Pretend a segment ran: state and steps moved on.
    carry.z_h.iter_mut().for_each(|v| *v = 7.0);
    carry.steps = vec![3, 5, 1];
    // Crafted q-values: row 0 wants to halt, row 1 does not, row 2 is at the step limit.
    carry.halted = halting(&[4, 2, 4], &[1.0, -1.0, -3.0], &[0.0, 0.5, 0.0], &[0, 0, 0], 4);
    assert_eq!(carry.halted, vec![true, false, true]);
    let b2 = Batch { inputs: vec![5; 3 * 81], puzzle_ids: vec![0; 3], labels: Some(vec![9; 3 * 81]) };
    carry.take_new_data(&be, &model, &b2);
    let row = |v: &[i32], b: usize| v[b * 81..(b + 1) * 81].to_vec();
    assert_eq!(row(&carry.data.inputs, 0), vec![5; 81]);
    assert_eq!(row(&carry.data.inputs, 1), vec![1; 81], "row 1 keeps its puzzle");
    assert_eq!(row(carry.data.labels.as_ref().unwrap(), 2), vec![9; 81]);
    assert_eq!(carry.steps, vec![0, 5, 0]);
    let per_row = cfg.total_seq_len() * cfg.hidden_size;
    let h = be.download_act(&carry.z_h);
    assert_eq!(&h[..cfg.hidden_size], &params.h_init[..], "row 0 restarts from H_init");
    assert!(h[per_row..2 * per_row].iter().all(|&v| v == 7.0), "row 1 keeps its state");
    assert_eq!(&h[2 * per_row..2 * per_row + cfg.hidden_size], &params.h_init[..]);
}

#[test]
fn exploration_minimums_respect_their_bounds_and_probability() {
    let v = explore_min_halt(0, 7, 20_000, 0.1, 16);
    let explored: Vec<u32> = v.iter().copied().filter(|&k| k != 0).collect();
    assert!(explored.iter().all(|&k| (2..=16).contains(&k)));
    // Every value of [2, 16] appears, about equally often (~133 each of 2000).
    for k in 2..=16 {
        let c = explored.iter().filter(|&&e| e == k).count();
        assert!((80..190).contains(&c), "{k} drawn {c} times");
    }
    // 2000 expected, binomial std ~42.
    assert!((1800..2200).contains(&explored.len()), "{}", explored.len());
    assert!(explore_min_halt(0, 7, 1000, 0.0, 16).iter().all(|&k| k == 0));
    assert!(explore_min_halt(0, 7, 1000, 1.0, 16).iter().all(|&k| k >= 2));
    // A function of (seed, step) only: the same draw again, a different one at another step
    // or seed.
    assert_eq!(explore_min_halt(3, 9, 500, 0.5, 16), explore_min_halt(3, 9, 500, 0.5, 16));
    assert_ne!(explore_min_halt(3, 9, 500, 0.5, 16), explore_min_halt(3, 10, 500, 0.5, 16));
    assert_ne!(explore_min_halt(3, 9, 500, 0.5, 16), explore_min_halt(4, 9, 500, 0.5, 16));
    // The backend draws the same as the host function.
    let mut st = Cpu.act_state(500);
    let key = hrm::backend::cpu::halting::explore_key(3, 9);
    Cpu.act_explore(&mut st, key, 0.5, 16, 0);
    assert_eq!(Cpu.act_rows(&st).min_halt, explore_min_halt(3, 9, 500, 0.5, 16));
    // A data-parallel rank holding rows 100.. of the global batch draws those rows' values.
    let mut part = Cpu.act_state(400);
    Cpu.act_explore(&mut part, key, 0.5, 16, 100);
    assert_eq!(Cpu.act_rows(&part).min_halt, explore_min_halt(3, 9, 500, 0.5, 16)[100..]);
    // A row with an exploration minimum does not halt before it, even when q says so.
    assert_eq!(halting(&[3, 3], &[5.0, 5.0], &[0.0, 0.0], &[4, 0], 16), vec![false, true]);
    // The step limit always halts... unless exploration demands more steps than the limit allows (never).
    assert_eq!(halting(&[16], &[-5.0], &[5.0], &[16], 16), vec![true]);
    // halt_max_steps == 1: only the limit.
    assert_eq!(halting(&[1], &[-5.0], &[5.0], &[0], 1), vec![true]);
}

#[test]
fn target_q_uses_halt_at_the_limit_and_the_max_otherwise() {
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let t = target_q_continue(&[16, 3, 3], &[0.5, 0.5, -1.0], &[2.0, 2.0, -2.0], 16);
    assert_eq!(t, vec![sig(0.5), sig(2.0), sig(-1.0)]);
}

fn bits(be: &Cpu, t: &Trainer<Cpu>) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> =
        t.model.to_host(be).tensors().iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect();
    out.extend(t.opt.v.tensors().iter().map(|v| v.iter().map(|x| x.to_bits()).collect()));
    out.extend(t.ema.as_ref().unwrap().tensors().iter().map(|v| v.iter().map(|x| x.to_bits()).collect()));
    out.push(be.download_act(&t.carry.z_l).iter().map(|x| x.to_bits()).collect());
    out
}

#[test]
fn a_resumed_run_is_bit_identical_even_after_a_crash_during_a_checkpoint() {
    let be = Cpu;
    let src = data(5, 3);
    let params = HostParams::init(&small_cfg(), &mut hrm::rng::seeded(4));
    let opts = |dir: &std::path::Path, stop| RunOptions {
        run_dir: dir.to_path_buf(),
        eval_sets: vec![],
        stop_after: stop,
        progress: false,
    };

    // Uninterrupted: 6 steps.
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(&be, train_cfg(), &params);
    run(&be, &mut full, &src, &opts(full_dir.path(), None)).unwrap();
    assert_eq!(full.step, 6);
    let halted_some = full.carry.steps.iter().any(|&s| s < 6);
    assert!(halted_some, "exploration / halting should have restarted some rows");

    // Interrupted at step 3, then a crash while writing step 4's checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&be, train_cfg(), &params);
    run(&be, &mut first, &src, &opts(dir.path(), Some(3))).unwrap();
    assert_eq!(first.step, 3);
    let ck = checkpoint::checkpoints_dir(dir.path());
    std::fs::create_dir_all(ck.join(".step_00000004.tmp")).unwrap();
    std::fs::write(ck.join(".step_00000004.tmp/state.safetensors"), b"torn").unwrap();
    std::fs::create_dir_all(ck.join("step_00000004")).unwrap(); // renamed but no marker yet
    std::fs::write(ck.join("step_00000004/state.safetensors"), b"torn").unwrap();

    let mut resumed = checkpoint::resume(&be, dir.path()).unwrap();
    assert_eq!(resumed.step, 3, "the complete checkpoint is the one resumed");
    run(&be, &mut resumed, &src, &opts(dir.path(), None)).unwrap();
    assert_eq!(resumed.step, 6);
    assert!(bits(&be, &resumed) == bits(&be, &full), "resumed run differs from the uninterrupted one");
    assert_eq!(resumed.sampler, full.sampler);

    // The exported model equals the EMA weights and loads with the standard loader.
    let last = checkpoint::complete_checkpoints(dir.path()).unwrap().pop().unwrap().1;
    let (_, exported) =
        hrm::model::checkpoint::load_checkpoint(&last.join("model.safetensors"), None).unwrap();
    assert_eq!(exported, full.eval_params(&be));
    // The EMA covers the dense parameters; the puzzle table is the live one (the reference's
    // EMA covers parameters only), stored once: in model.safetensors, not in the state, which
    // holds no moments or EMA of it either.
    assert_eq!(exported.puzzle_emb, full.model.to_host(&be).puzzle_emb);
    assert_ne!(
        exported.embed_tokens,
        full.model.to_host(&be).embed_tokens,
        "the dense tensors are the EMA's"
    );
    let state = hrm::model::checkpoint::TensorFile::open(&last.join("state.safetensors")).unwrap();
    assert!(state.names().iter().any(|n| n == "param.model.inner.embed_tokens.embedding_weight"));
    assert!(!state.names().iter().any(|n| n.contains("puzzle_emb")), "{:?}", state.names());
    // Without its model.safetensors a checkpoint cannot resume, and says why.
    std::fs::remove_file(last.join("model.safetensors")).unwrap();
    let e = format!("{:#}", checkpoint::resume(&be, &last).err().expect("no table, no resume"));
    assert!(e.contains("model.safetensors") && e.contains("puzzle embedding table"), "{e}");
    // Metrics: one JSON line per step of each part of the run.
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
    let v: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(v["step"], 6);
    assert!(v["lm_loss"].as_f64().unwrap().is_finite());
}

#[test]
fn old_checkpoints_beyond_keep_are_removed() {
    let be = Cpu;
    let src = data(5, 3);
    let mut cfg = train_cfg();
    cfg.checkpoint_every = 1;
    cfg.keep_checkpoints = 2;
    let params = HostParams::init(&cfg.model, &mut hrm::rng::seeded(4));
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&be, cfg, &params);
    let o = RunOptions {
        run_dir: dir.path().to_path_buf(),
        eval_sets: vec![],
        stop_after: Some(4),
        progress: false,
    };
    run(&be, &mut t, &src, &o).unwrap();
    let steps: Vec<u64> = checkpoint::complete_checkpoints(dir.path()).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![3, 4]);
    assert!(dir.path().join("config.json").exists());
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint() {
    let be = Cpu;
    let src = data(5, 3);
    let params = HostParams::init(&small_cfg(), &mut hrm::rng::seeded(4));
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&be, train_cfg(), &params);
    let o = RunOptions {
        run_dir: dir.path().to_path_buf(),
        eval_sets: vec![],
        stop_after: Some(3),
        progress: false,
    };
    run(&be, &mut t, &src, &o).unwrap();
    let before = t.model.to_host(&be);
    // Poison one weight: the next step's loss is NaN.
    t.model.params.lm_head[0] = f32::NAN;
    let o = RunOptions { stop_after: None, ..o };
    let err = format!("{:#}", run(&be, &mut t, &src, &o).unwrap_err());
    assert!(err.contains("step 4") && err.contains("non-finite"), "{err}");
    assert!(err.contains("after step 3"), "says which parameters are left: {err}");
    assert!(err.contains("step_00000003"), "names the last good checkpoint: {err}");
    assert_eq!(t.step, 4, "step 4 ran, but its update was skipped");
    let after = t.model.to_host(&be);
    assert_eq!(after.l_layers, before.l_layers);
    let resumed = checkpoint::resume(&be, dir.path()).unwrap();
    assert_eq!(resumed.step, 3);
}

/// TRM (`mlp_t`, one network, gradient through the whole last recursion, q_halt > 0 halting)
/// trains on the CPU, and a run resumed from its step-3 checkpoint ends bit-identical to the
/// uninterrupted one (weights, Adam moments, EMA, carry, sampler).
#[test]
fn a_resumed_trm_run_is_bit_identical() {
    let be = Cpu;
    let model = ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        L_layers: 2,
        H_cycles: 2,
        L_cycles: 2,
        puzzle_emb_ndim: 32,
        puzzle_emb_len: Some(2),
        num_puzzle_identifiers: 1,
        halt_max_steps: 4,
        halt_exploration_prob: 0.5,
        ..ModelConfig::trm_sudoku_mlp()
    };
    let mut cfg = train_cfg();
    cfg.model = model.clone();
    let src = data(5, 3);
    let params = HostParams::init(&model, &mut hrm::rng::seeded(4));
    let opts = |dir: &std::path::Path, stop| RunOptions {
        run_dir: dir.to_path_buf(),
        eval_sets: vec![],
        stop_after: stop,
        progress: false,
    };
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(&be, cfg.clone(), &params);
    run(&be, &mut full, &src, &opts(full_dir.path(), None)).unwrap();
    assert_eq!(full.step, 6);
    assert!(full.carry.steps.iter().any(|&s| s < 6), "halting should have restarted some rows");
    assert_ne!(full.model.to_host(&be), params, "the weights moved");

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&be, cfg, &params);
    run(&be, &mut first, &src, &opts(dir.path(), Some(3))).unwrap();
    let mut resumed = checkpoint::resume(&be, dir.path()).unwrap();
    assert_eq!((resumed.step, resumed.cfg.model.clone()), (3, model));
    run(&be, &mut resumed, &src, &opts(dir.path(), None)).unwrap();
    assert!(bits(&be, &resumed) == bits(&be, &full), "resumed TRM run differs from the uninterrupted one");
    assert_eq!(resumed.sampler, full.sampler);
}
