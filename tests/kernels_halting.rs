//! The ACT bookkeeping kernels (kernels/halting.cu) and the multi-tensor optimizer
//! (kernels/optim.cu `optim_multi_f32`), through the CUDA backend's ops, against the CPU
//! backend (GPU when present, else the CPU emulation; skipped without either).
//!
//! Bounds:
//! - take_new, explore, halt: integer and copy work: identical.
//! - q loss: the same f64 formulas; dq is an f64 result cast to f32 once: identical up to the
//!   last bit of the f64 exp/log1p (checked at 1e-6 relative); target is an f32 sigmoid (expf
//!   may differ by an ulp or two on a GPU: 1e-6 relative); the f64 loss sums differ only in
//!   summation order (1e-12 relative); counts are exact.
//! - optimizer: the same f32 operations per element as the CPU (AdamATan2, SignSGD, the EMA with
//!   rounded multiplies): atan2f/sqrtf of the GPU's libdevice may differ from the host's by an
//!   ulp, so masters and moments are checked at 1e-6 relative (floor 1e-3 of the RMS); the
//!   shadow must be exactly bf16(master).
//!
//! Outputs that a kernel writes (dq, target, q) are NaN-poisoned first.

mod kernel_common;
use half::bf16;
use hrm::backend::cpu::Cpu;
use hrm::backend::cpu::halting::{NONE, explore_key};
use hrm::backend::cuda::Cuda;
use hrm::backend::{AdamHyper, Backend, OptimRule, OptimStep};
use kernel_common::*;
use rand::Rng;

fn cuda(test: &str) -> Option<Cuda> {
    device(test).map(Cuda::new)
}

fn upload_i32<B: Backend>(be: &B, v: &[i32]) -> B::I32 {
    be.upload_i32(v)
}

#[test]
fn take_new_explore_and_halt_match_the_cpu_exactly() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let mut r = rng(81);
    for (batch, seq, max_steps) in [(1usize, 81usize, 4usize), (5, 7, 1), (300, 81, 16)] {
        let steps: Vec<u32> = (0..batch).map(|_| r.gen_range(0..max_steps as u32 + 1)).collect();
        let halted: Vec<bool> = (0..batch).map(|_| r.gen_bool(0.5)).collect();
        let ints = |r: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<i32> {
            (0..n).map(|_| r.gen_range(0..11)).collect()
        };
        let (new_t, new_i, new_l) =
            (ints(&mut r, batch * seq), ints(&mut r, batch), ints(&mut r, batch * seq));
        let (cur_t, cur_i, cur_l) =
            (ints(&mut r, batch * seq), ints(&mut r, batch), ints(&mut r, batch * seq));
        let q: Vec<f32> = randn(&mut r, 2 * batch, 1.0);

        let mut want = Cpu.act_state(batch);
        Cpu.act_set(&mut want, &steps, &halted);
        let (mut wt, mut wi, mut wl) = (cur_t.clone(), cur_i.clone(), cur_l.clone());
        Cpu.act_take_new(&mut want, &new_t, &mut wt, &new_i, &mut wi, &new_l, &mut wl, seq);
        let key = explore_key(9, batch as u64);
        Cpu.act_explore(&mut want, key, 0.4, max_steps, 3);
        want.q = q.clone();
        Cpu.act_halt(&mut want, max_steps);

        let mut got = gpu.act_state(batch);
        gpu.act_set(&mut got, &steps, &halted);
        let (mut gt, mut gi, mut gl) =
            (upload_i32(&gpu, &cur_t), upload_i32(&gpu, &cur_i), upload_i32(&gpu, &cur_l));
        let (nt, ni, nl) = (upload_i32(&gpu, &new_t), upload_i32(&gpu, &new_i), upload_i32(&gpu, &new_l));
        gpu.act_take_new(&mut got, &nt, &mut gt, &ni, &mut gi, &nl, &mut gl, seq);
        gpu.act_explore(&mut got, key, 0.4, max_steps, 3);
        got.q = gpu.device().stream.clone_htod(&q).unwrap();
        gpu.act_halt(&mut got, max_steps);
        gpu.check().unwrap();

        assert_eq!(gpu.download_i32(&gt), wt, "tokens, batch {batch}");
        assert_eq!(gpu.download_i32(&gi), wi, "puzzle ids, batch {batch}");
        assert_eq!(gpu.download_i32(&gl), wl, "labels, batch {batch}");
        let (g, w) = (gpu.act_rows(&got), Cpu.act_rows(&want));
        assert_eq!(g.min_halt, w.min_halt, "exploration, batch {batch}");
        assert_eq!(g.steps, w.steps, "steps, batch {batch}");
        assert_eq!(g.halted, w.halted, "halting, batch {batch}");
        if batch == 300 {
            assert!(w.min_halt.iter().any(|&m| m > 0) && w.min_halt.contains(&0), "exploration draws both");
            assert!(w.halted.contains(&true) && w.halted.contains(&false));
        }
    }
}

#[test]
fn q_loss_and_metrics_match_the_cpu() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let mut r = rng(82);
    let (vocab, seq, max_steps) = (11usize, 9usize, 4usize);
    for batch in [1usize, 7, 600] {
        let steps: Vec<u32> = (0..batch).map(|_| r.gen_range(1..=max_steps as u32)).collect();
        let halted: Vec<bool> = (0..batch).map(|_| r.gen_bool(0.6)).collect();
        let q = randn(&mut r, 2 * batch, 2.0);
        let q_next = randn(&mut r, 2 * batch, 2.0);
        // Logits that make some rows exactly right (argmax = label everywhere).
        let labels: Vec<i32> =
            (0..batch * seq).map(|i| if i % 13 == 5 { 0 } else { r.gen_range(1..vocab as i32) }).collect();
        let mut logits = round_bf16(&randn(&mut r, batch * seq * vocab, 1.0));
        for b in (0..batch).step_by(3) {
            for t in 0..seq {
                let y = labels[b * seq + t] as usize;
                logits[(b * seq + t) * vocab + y] = 8.0;
            }
        }
        let scale = 0.5 / batch as f64;

        let mut want = Cpu.act_state(batch);
        Cpu.act_set(&mut want, &steps, &halted);
        let mut dl = vec![0.0; logits.len()];
        Cpu.lm_loss_rows(&logits, &labels, vocab, seq, 1.0, &mut dl, &mut want);
        want.q = q.clone();
        want.q_next = q_next.clone();
        Cpu.act_set_step(&mut want, 1);
        Cpu.act_q_loss(&mut want, max_steps, scale);

        let s = &gpu.device().stream;
        let mut got = gpu.act_state(batch);
        gpu.act_set(&mut got, &steps, &halted);
        let ld = s.clone_htod(&to_bf16(&logits)).unwrap();
        let lab = upload_i32(&gpu, &labels);
        let mut dld = poisoned_bf16(gpu.device(), logits.len());
        gpu.lm_loss_rows(&ld, &lab, vocab, seq, 1.0, &mut dld, &mut got);
        got.q = s.clone_htod(&q).unwrap();
        got.q_next = s.clone_htod(&q_next).unwrap();
        got.dq = poisoned_f32(gpu.device(), 2 * batch);
        got.target = poisoned_f32(gpu.device(), batch);
        gpu.act_set_step(&mut got, 1);
        gpu.act_q_loss(&mut got, max_steps, scale);
        gpu.check().unwrap();

        let (g, w) = (gpu.act_rows(&got), Cpu.act_rows(&want));
        assert_close("target", &g.target_q_continue, &w.target_q_continue, 1e-6, 0.0);
        assert_close("dq", &download(gpu.device(), &got.dq), &want.dq, 1e-6, 1e-3);
        let (gr, wr) = (gpu.act_report(&mut got), Cpu.act_report(&mut want));
        assert_eq!(gr.steps, 1);
        assert_eq!(
            (gr.count, gr.exact_correct, gr.steps_sum, gr.q_halt_correct),
            (wr.count, wr.exact_correct, wr.steps_sum, wr.q_halt_correct),
            "batch {batch}"
        );
        for (name, a, b) in [
            ("lm", gr.lm_loss, wr.lm_loss),
            ("q_halt", gr.q_halt_loss, wr.q_halt_loss),
            ("q_continue", gr.q_continue_loss, wr.q_continue_loss),
            ("token accuracy", gr.token_accuracy_sum, wr.token_accuracy_sum),
        ] {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{name}: {a} vs {b} (batch {batch})");
        }
        assert!(wr.exact_correct > 0 || batch == 1, "some rows are exactly right");
        assert_eq!(gr.bad_step, None);
        // The report zeroed the accumulators.
        assert_eq!(gpu.act_report(&mut got).steps, 0);
    }
}

#[test]
fn the_guard_records_the_first_bad_step_and_tensor() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let sizes = [10usize, 20_000, 5];
    let mut host: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
    let mut st_cpu = Cpu.act_state(2);
    let mut st_gpu = gpu.act_state(2);
    let run = |host: &[Vec<f32>], st_cpu: &mut _, st_gpu: &mut _, step: u32| {
        let refs: Vec<&Vec<f32>> = host.iter().collect();
        Cpu.act_set_step(st_cpu, step);
        Cpu.act_guard(st_cpu, &refs);
        let dev: Vec<_> = host.iter().map(|h| gpu.upload_f32(h)).collect();
        let refs: Vec<_> = dev.iter().collect();
        gpu.act_set_step(st_gpu, step);
        gpu.act_guard(st_gpu, &refs);
        gpu.check().unwrap();
        (Cpu.act_report(st_cpu), gpu.act_report(st_gpu))
    };
    let (c, g) = run(&host, &mut st_cpu, &mut st_gpu, 1);
    assert_eq!((c.bad_step, g.bad_step), (None, None));
    host[1][19_999] = f32::NAN; // the last element of the last chunk
    host[2][0] = f32::INFINITY;
    let (c, g) = run(&host, &mut st_cpu, &mut st_gpu, 2);
    assert_eq!((c.bad_step, c.bad_tensor), (Some(2), Some(1)));
    assert_eq!((g.bad_step, g.bad_tensor), (Some(2), Some(1)));
    // A later step cannot overwrite the first finding.
    host[0][3] = f32::NAN;
    let (c, g) = run(&host, &mut st_cpu, &mut st_gpu, 3);
    assert_eq!((c.bad_step, c.bad_tensor), (Some(2), Some(1)));
    assert_eq!((g.bad_step, g.bad_tensor), (Some(2), Some(1)));
}

#[test]
fn multi_tensor_optimizer_matches_the_cpu_and_respects_the_guard() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let mut r = rng(83);
    // Adam (several chunks), frozen, frozen, Adam (small). (The puzzle table's sparse step is
    // its own op: kernels_loss_optim.)
    let sizes = [20_000usize, 96, 7, 300];
    let rules = [OptimRule::Adam, OptimRule::Frozen, OptimRule::Frozen, OptimRule::Adam];
    let p0: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n, 0.5)).collect();
    let g0: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&n| {
            randn(&mut r, n, 0.1)
                .into_iter()
                .enumerate()
                .map(|(i, g)| if i % 17 == 0 { 0.0 } else { g })
                .collect()
        })
        .collect();
    let m0: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n, 0.01)).collect();
    let v0: Vec<Vec<f32>> =
        sizes.iter().map(|&n| randn(&mut r, n, 0.01).iter().map(|x| x * x).collect()).collect();
    let e0: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n, 0.5)).collect();
    let h = OptimStep {
        adam: AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.95, weight_decay: 0.1 },
        step: 3,
        ema_decay: Some(0.99),
    };

    fn step<B: Backend>(
        be: &B,
        st: &B::ActState,
        init: [&Vec<Vec<f32>>; 5],
        rules: &[OptimRule],
        h: &OptimStep,
    ) -> (Vec<B::Param>, [Vec<Vec<f32>>; 3]) {
        let [p0, g0, m0, v0, e0] = init;
        let mut p: Vec<B::Param> = p0.iter().map(|x| be.upload_param(x)).collect();
        let g: Vec<B::F32> = g0.iter().map(|x| be.upload_f32(x)).collect();
        let mut m: Vec<B::F32> = m0.iter().map(|x| be.upload_f32(x)).collect();
        let mut v: Vec<B::F32> = v0.iter().map(|x| be.upload_f32(x)).collect();
        let mut e: Vec<B::F32> = e0.iter().map(|x| be.upload_f32(x)).collect();
        {
            let mut pr: Vec<&mut B::Param> = p.iter_mut().collect();
            let gr: Vec<&B::F32> = g.iter().collect();
            let mut mr: Vec<&mut B::F32> = m.iter_mut().collect();
            let mut vr: Vec<&mut B::F32> = v.iter_mut().collect();
            let mut er: Vec<&mut B::F32> = e.iter_mut().collect();
            be.optimizer_step(&mut pr, &gr, &mut mr, &mut vr, Some(&mut er), rules, h, st);
        }
        be.check().unwrap();
        let down = |xs: &[B::F32]| xs.iter().map(|x| be.download_f32(x)).collect::<Vec<_>>();
        let out = [down(&m), down(&v), down(&e)];
        (p, out)
    }

    let init = [&p0, &g0, &m0, &v0, &e0];
    let cpu_state = Cpu.act_state(3);
    let (wp, [wm, wv, we]) = step(&Cpu, &cpu_state, init, &rules, &h);
    let gpu_state = gpu.act_state(3);
    let (gp, [gm, gv, ge]) = step(&gpu, &gpu_state, init, &rules, &h);
    for t in 0..sizes.len() {
        let master = gpu.download_param(&gp[t]);
        assert_close(&format!("param {t}"), &master, &wp[t], 1e-6, 1e-3);
        assert_close(&format!("m {t}"), &gm[t], &wm[t], 1e-6, 1e-3);
        assert_close(&format!("v {t}"), &gv[t], &wv[t], 1e-6, 1e-3);
        assert_close(&format!("ema {t}"), &ge[t], &we[t], 1e-6, 1e-3);
        let shadow: Vec<bf16> = download(gpu.device(), gp[t].shadow().unwrap());
        let want_shadow: Vec<u16> = master.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        if rules[t] != OptimRule::Frozen {
            assert_eq!(shadow.iter().map(|b| b.to_bits()).collect::<Vec<_>>(), want_shadow, "shadow {t}");
        }
    }
    // The update did something: the frozen tensors kept their values, Adam tensors moved.
    assert_eq!((&wp[1], &wp[2]), (&p0[1], &p0[2]), "frozen");
    assert!(wp[0].iter().zip(&p0[0]).all(|(a, b)| a != b));
    assert!(wp[3].iter().zip(&p0[3]).all(|(a, b)| a != b));

    // With a bad step recorded, nothing changes on either backend.
    let mut bad_cpu = Cpu.act_state(3);
    bad_cpu.status[0] = 5;
    let (bp, [bm, _, be_]) = step(&Cpu, &bad_cpu, init, &rules, &h);
    assert_eq!((bp, bm, be_), (p0.clone(), m0.clone(), e0.clone()));
    let mut bad_gpu = gpu.act_state(3);
    bad_gpu.status = gpu.device().stream.clone_htod(&[5, 0, NONE, 0]).unwrap();
    let (bp, [bm, _, be_]) = step(&gpu, &bad_gpu, init, &rules, &h);
    let bp: Vec<Vec<f32>> = bp.iter().map(|p| gpu.download_param(p)).collect();
    assert_eq!((bp, bm, be_), (p0, m0, e0));
}

/// Host writes go through a ring of page-locked slots per length: more writes than slots, of
/// different lengths interleaved, each land in their own buffer with their own values.
#[test]
fn staged_host_writes_land_intact() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let lens = [81usize, 3, 81, 1, 81 * 5];
    let mut bufs = Vec::new();
    let mut want = Vec::new();
    for k in 0..13 {
        let n = lens[k % lens.len()];
        let v: Vec<i32> = (0..n).map(|i| (k * 1000 + i) as i32).collect();
        let mut b = gpu.upload_i32(&vec![-1; n]);
        gpu.write_i32(&v, &mut b);
        bufs.push(b);
        want.push(v);
    }
    gpu.check().unwrap();
    for (k, (b, w)) in bufs.iter().zip(&want).enumerate() {
        assert_eq!(&gpu.download_i32(b), w, "write {k}");
    }
}

/// Inference scoring (`act_eval_score`: stablemax argmax and exact flags, then
/// `act_exact_hist_u8` puts each row's flag in the column of its step count): identical to the
/// CPU, over rounds with step counts inside and outside the history; the history is poisoned
/// (0xAB) first, so a column written for the wrong row or step shows.
#[test]
fn inference_scoring_matches_the_cpu_exactly() {
    let Some(gpu) = cuda("kernels_halting eval score") else {
        return;
    };
    let mut r = rng(17);
    for (batch, seq, vocab, segments) in [(1usize, 81usize, 11usize, 4usize), (37, 9, 12, 16)] {
        let labels: Vec<i32> =
            (0..batch * seq).map(|i| if i % 11 == 3 { 0 } else { r.gen_range(1..vocab as i32) }).collect();
        let lab = upload_i32(&gpu, &labels);
        let mut want = Cpu.act_state(batch);
        let mut got = gpu.act_state(batch);
        for round in 0..6 {
            let mut logits = round_bf16(&randn(&mut r, batch * seq * vocab, 1.0));
            // Rows made exactly right (a different set each round).
            for b in (round % 3..batch).step_by(3) {
                for t in 0..seq {
                    logits[(b * seq + t) * vocab + labels[b * seq + t] as usize] = 8.0;
                }
            }
            // Column segments - 1 is never written: it must stay poisoned.
            let last = segments as u32 - 1;
            let steps: Vec<u32> = (0..batch)
                .map(|_| r.gen_range(0..segments as u32 + 2))
                .map(|s| if s == last { last + 2 } else { s })
                .collect();
            let halted = vec![false; batch];
            Cpu.act_set(&mut want, &steps, &halted);
            gpu.act_set(&mut got, &steps, &halted);
            let ld = gpu.device().stream.clone_htod(&to_bf16(&logits)).unwrap();
            Cpu.act_eval_score(&logits, &labels, vocab, seq, &mut want, segments);
            gpu.act_eval_score(&ld, &lab, vocab, seq, &mut got, segments);
            if round == 0 {
                let poison = vec![0xABu8; batch * segments];
                want.exact_hist = poison.clone();
                got.exact_hist = Some(upload(gpu.device(), &poison));
                Cpu.act_eval_score(&logits, &labels, vocab, seq, &mut want, segments);
                gpu.act_eval_score(&ld, &lab, vocab, seq, &mut got, segments);
            }
            gpu.check().unwrap();
            let (g, w) = (gpu.act_eval_read(&got, seq, segments), Cpu.act_eval_read(&want, seq, segments));
            assert_eq!(g.argmax, w.argmax, "argmax, batch {batch}, round {round}");
            let hist: Vec<u8> = download(gpu.device(), got.exact_hist.as_ref().unwrap());
            assert_eq!(hist, want.exact_hist, "exact history, batch {batch}, round {round}");
        }
        assert!(
            (0..batch).all(|b| want.exact_hist[b * segments + segments - 1] == 0xAB),
            "a column never written stays poisoned"
        );
        if batch > 1 {
            assert!(want.exact_hist.contains(&0) && want.exact_hist.contains(&1), "both flags written");
        }
    }
}

/// TRM's halting rule (q_halt > 0, `no_ACT_continue`) and its q_halt-only loss: the kernels'
/// `rule` and `halt_only` variants against the CPU, with the same bounds as HRM's above. The
/// q logits are drawn so that q_halt > 0 and q_halt > q_continue disagree on many rows, so a
/// kernel applying HRM's rule fails.
#[test]
fn trm_halting_and_q_halt_loss_match_the_cpu() {
    let Some(gpu) = cuda("kernels_halting") else {
        return;
    };
    let mut r = rng(83);
    let (vocab, seq, max_steps) = (11usize, 9usize, 16usize);
    for batch in [1usize, 9, 500] {
        let steps: Vec<u32> = (0..batch).map(|_| r.gen_range(0..max_steps as u32)).collect();
        let halted = vec![false; batch];
        let q = randn(&mut r, 2 * batch, 2.0);
        let min_halt: Vec<u32> = (0..batch).map(|_| if r.gen_bool(0.2) { 5 } else { 0 }).collect();
        let labels: Vec<i32> = (0..batch * seq).map(|_| r.gen_range(1..vocab as i32)).collect();
        let mut logits = round_bf16(&randn(&mut r, batch * seq * vocab, 1.0));
        for b in (0..batch).step_by(2) {
            for t in 0..seq {
                logits[(b * seq + t) * vocab + labels[b * seq + t] as usize] = 8.0;
            }
        }
        let scale = 0.5 / batch as f64;

        let mut want = Cpu.act_state(batch);
        Cpu.act_set(&mut want, &steps, &halted);
        Cpu.act_set_min_halt(&mut want, &min_halt);
        want.q = q.clone();
        Cpu.act_halt_no_continue(&mut want, max_steps);
        let mut dl = vec![0.0; logits.len()];
        Cpu.lm_loss_rows(&logits, &labels, vocab, seq, 1.0, &mut dl, &mut want);
        Cpu.act_set_step(&mut want, 3);
        Cpu.act_q_halt_loss(&mut want, scale);

        let s = &gpu.device().stream;
        let mut got = gpu.act_state(batch);
        gpu.act_set(&mut got, &steps, &halted);
        gpu.act_set_min_halt(&mut got, &min_halt);
        got.q = s.clone_htod(&q).unwrap();
        gpu.act_halt_no_continue(&mut got, max_steps);
        let ld = s.clone_htod(&to_bf16(&logits)).unwrap();
        let lab = upload_i32(&gpu, &labels);
        let mut dld = poisoned_bf16(gpu.device(), logits.len());
        gpu.lm_loss_rows(&ld, &lab, vocab, seq, 1.0, &mut dld, &mut got);
        got.dq = poisoned_f32(gpu.device(), 2 * batch);
        got.target = poisoned_f32(gpu.device(), batch);
        gpu.act_set_step(&mut got, 3);
        gpu.act_q_halt_loss(&mut got, scale);
        gpu.check().unwrap();

        let (g, w) = (gpu.act_rows(&got), Cpu.act_rows(&want));
        assert_eq!((&g.steps, &g.halted), (&w.steps, &w.halted), "halting, batch {batch}");
        if batch == 500 {
            let hrm_rule = (0..batch).filter(|&b| (q[2 * b] > 0.0) != (q[2 * b] > q[2 * b + 1])).count();
            assert!(hrm_rule > 50, "the two rules disagree on {hrm_rule} rows only");
            assert!(w.halted.contains(&true) && w.halted.contains(&false));
        }
        assert_eq!(g.target_q_continue, vec![0.0; batch], "no target in TRM's loss");
        let dq = download(gpu.device(), &got.dq);
        assert_close("dq", &dq, &want.dq, 1e-6, 1e-3);
        assert!(dq.iter().skip(1).step_by(2).all(|&d| d == 0.0), "q_continue gets no gradient");
        let (gr, wr) = (gpu.act_report(&mut got), Cpu.act_report(&mut want));
        assert_eq!(
            (gr.steps, gr.count, gr.exact_correct, gr.steps_sum, gr.q_halt_correct),
            (wr.steps, wr.count, wr.exact_correct, wr.steps_sum, wr.q_halt_correct),
            "batch {batch}"
        );
        assert_eq!(gr.q_continue_loss, 0.0);
        for (name, a, b) in [("lm", gr.lm_loss, wr.lm_loss), ("q_halt", gr.q_halt_loss, wr.q_halt_loss)] {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{name}: {a} vs {b} (batch {batch})");
        }
        assert_eq!(gr.bad_step, None);
    }
}
