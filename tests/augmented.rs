//! Augmented HRM: perturbations and their inverses, perturbed batched inference (fixed and
//! ACT halting with continuous batching), and answer selection on crafted pass tables.

use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::infer::augmented::{AugmentedOptions, HaltMode, run_passes};
use hrm::infer::eval::predict;
use hrm::infer::passes::{Pass, PassTable};
use hrm::infer::perturb::{Perturbation, parse_spec, tokens_to_board};
use hrm::infer::select::{
    majority, oracle_correct, score, select_single, select_verify, select_vote, select_vote_halt,
};
use hrm::model::HostParams;
use hrm::sudoku::board::{Board, to_tokens};
use hrm::sudoku::symmetry::Transform;
use hrm::task::Rules;
use hrm::train::data::{blanked_puzzles, example_of};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_board(rng: &mut ChaCha8Rng) -> Board {
    let mut b = [0u8; 81];
    for v in b.iter_mut() {
        *v = rng.gen_range(0..10);
    }
    b
}

/// Every kind of perturbation the `--perturb` grammar makes, plus raw random transforms.
fn all_kinds() -> Vec<Perturbation> {
    let mut out = Vec::new();
    for spec in ["relabel9", "perm:6", "sym:6", "aug:6", "relabel9+sym:2", "perm:2+sym:2+relabel9"] {
        out.extend(parse_spec(spec, 11).unwrap());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..20 {
        let t = Transform::random(&mut rng);
        out.extend([
            Perturbation::from_transform(&t),
            Perturbation::digits_of(&t),
            Perturbation::geometry_of(&t),
        ]);
    }
    out
}

#[test]
fn every_perturbation_composed_with_its_inverse_is_the_identity() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let kinds = all_kinds();
    assert!(kinds.len() > 100);
    for p in &kinds {
        let inv = p.inverse();
        assert!(p.then(&inv).is_identity() && inv.then(p).is_identity());
        for _ in 0..5 {
            let b = random_board(&mut rng);
            assert_eq!(inv.apply(&p.apply(&b)), b);
            assert_eq!(p.apply(&inv.apply(&b)), b);
            // Prediction token vectors can hold any vocabulary id (0 = PAD and 1 = blank too).
            let t: Vec<u8> = (0..81).map(|_| rng.gen_range(0..11u8)).collect();
            assert_eq!(inv.apply_tokens(&p.apply_tokens(&t)).to_vec(), t);
            // Boards and tokens agree.
            assert_eq!(p.apply_tokens(&to_tokens(&b)), to_tokens(&p.apply(&b)));
        }
    }
}

#[test]
fn perturbations_agree_with_the_symmetry_transforms_and_keep_solutions_valid() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (q, a) = blanked_puzzles(1, 30..31, 3)[0];
    for _ in 0..50 {
        let t = Transform::random(&mut rng);
        let p = Perturbation::from_transform(&t);
        let b = random_board(&mut rng);
        assert_eq!(p.apply(&b), t.apply(&b));
        assert_eq!(p.apply_tokens(&to_tokens(&b)), t.apply_tokens(&to_tokens(&b)));
        assert_eq!(p.inverse().apply(&b), t.inverse().apply(&b));
    }
    for p in all_kinds() {
        assert!(hrm::sudoku::board::is_solution_of(&p.apply(&q), &p.apply(&a)));
    }
    // The 9 cyclic relabelings are distinct, and relabel9 is exactly them.
    let r = parse_spec("relabel9", 0).unwrap();
    assert_eq!(r, (0..9).map(Perturbation::relabel).collect::<Vec<_>>());
}

fn tiny_model(seed: u64, halting: bool) -> (ModelConfig, HostParams) {
    let mut cfg = ModelConfig::tiny();
    cfg.halt_max_steps = 4;
    let mut params = HostParams::init(&cfg, &mut hrm::rng::seeded(seed));
    if halting {
        // A fresh Q head is zero with bias -5 (never halts); give it random weights so passes
        // halt at different segments.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for w in params.q_head_weight.iter_mut() {
            *w = rng.gen_range(-0.3..0.3);
        }
        params.q_head_bias = vec![0.0, 0.0];
    }
    (cfg, params)
}

#[test]
fn fixed_passes_are_the_mapped_back_predictions_on_perturbed_puzzles() {
    let be = Cpu;
    let (cfg, params) = tiny_model(3, false);
    let model = Hrm::new(&be, &cfg, &params);
    let puzzles = blanked_puzzles(3, 20..30, 4);
    let inputs: Vec<[u8; 81]> = puzzles.iter().map(|(q, _)| to_tokens(q)).collect();
    let perts = parse_spec("relabel9+sym:1", 0).unwrap();
    let opts = AugmentedOptions { batch_size: 7, halt: HaltMode::Fixed, min_segments: 2 };
    let mut done = 0;
    let (table, stats) =
        run_passes(&be, std::slice::from_ref(&model), &inputs, &perts, &opts, |n| done += n).unwrap();
    assert_eq!(done, 3 * 18);
    assert_eq!((table.puzzles, table.checkpoints, table.perturbations), (3, 1, 18));
    assert_eq!(stats.passes, 54);
    assert_eq!(stats.mean_segments, 4.0);
    // No idle rows in fixed mode: the last partial batch is right-sized.
    assert_eq!(stats.row_segments, 54 * 4);
    for (k, p) in perts.iter().enumerate() {
        let examples: Vec<_> = puzzles.iter().map(|(q, a)| example_of(&p.apply(q), &p.apply(a))).collect();
        let pred = predict(&be, &model, &examples, 2, |_| {}).unwrap();
        for j in 0..3 {
            let pass = &table.of_puzzle(j)[k];
            assert_eq!((pass.checkpoint, pass.perturbation, pass.segments), (0, k, 4));
            let want = p.inverse().apply_tokens(&pred.tokens[j * 81..(j + 1) * 81]);
            assert_eq!(pass.tokens, want, "puzzle {j} perturbation {k}");
            assert!((pass.q_halt - pred.q_halt[j]).abs() < 1e-4);
            assert!((pass.q_continue - pred.q_continue[j]).abs() < 1e-4);
        }
    }
}

#[test]
fn act_halting_refills_rows_and_matches_passes_run_alone() {
    let be = Cpu;
    let models: Vec<Hrm<Cpu>> = [5, 6]
        .iter()
        .map(|&s| {
            let (cfg, params) = tiny_model(s, true);
            Hrm::new(&be, &cfg, &params)
        })
        .collect();
    let puzzles = blanked_puzzles(4, 10..40, 8);
    let inputs: Vec<[u8; 81]> = puzzles.iter().map(|(q, _)| to_tokens(q)).collect();
    let perts = parse_spec("perm:3", 1).unwrap();
    let act = AugmentedOptions { batch_size: 5, halt: HaltMode::Act, min_segments: 1 };
    let (table, stats) = run_passes(&be, &models, &inputs, &perts, &act, |_| {}).unwrap();
    assert_eq!(table.passes.len(), 4 * 2 * 4);
    let segs: Vec<u32> = table.passes.iter().map(|p| p.segments).collect();
    assert!(segs.iter().any(|&s| s < 4), "no pass halted early: {segs:?}");
    assert!(segs.iter().any(|&s| s > 1), "every pass halted at once: {segs:?}");
    for p in &table.passes {
        assert!(p.segments == 4 || p.halted(), "a pass stopped before the limit without q_halt > q_continue");
    }
    assert_eq!(stats.mean_segments, segs.iter().map(|&s| s as f64).sum::<f64>() / segs.len() as f64);
    // Each pass, run alone (batch 1, no neighbours, no refills), gives the same answer.
    let alone = AugmentedOptions { batch_size: 1, ..act.clone() };
    let (single, _) = run_passes(&be, &models, &inputs, &perts, &alone, |_| {}).unwrap();
    for (a, b) in table.passes.iter().zip(&single.passes) {
        assert_eq!(
            (a.checkpoint, a.perturbation, a.segments, &a.tokens),
            (b.checkpoint, b.perturbation, b.segments, &b.tokens)
        );
        assert!((a.q_halt - b.q_halt).abs() < 1e-4);
    }
    // min_segments = halt_max_steps makes ACT the fixed schedule.
    let full = AugmentedOptions { batch_size: 3, halt: HaltMode::Act, min_segments: 4 };
    let fixed = AugmentedOptions { batch_size: 3, halt: HaltMode::Fixed, min_segments: 2 };
    let (a, _) = run_passes(&be, &models, &inputs, &perts, &full, |_| {}).unwrap();
    let (b, _) = run_passes(&be, &models, &inputs, &perts, &fixed, |_| {}).unwrap();
    assert_eq!(a.passes, b.passes);
}

// ---- answer selection on crafted pass tables ----

fn board_tokens(fill: u8) -> [u8; 81] {
    [fill; 81]
}

fn pass(checkpoint: usize, perturbation: usize, answer: u8, q_halt: f32, q_continue: f32) -> Pass {
    Pass {
        checkpoint,
        perturbation,
        tokens: board_tokens(answer).to_vec(),
        q_halt,
        q_continue,
        segments: 16,
        halt_at_zero: false,
    }
}

#[test]
fn single_is_the_unperturbed_pass_of_the_first_checkpoint() {
    let ps = vec![pass(1, 0, 5, 1.0, 0.0), pass(0, 1, 6, 1.0, 0.0), pass(0, 0, 7, -1.0, 0.0)];
    assert_eq!(select_single(&ps).unwrap().tokens, board_tokens(7));
}

#[test]
fn vote_halt_counts_halting_passes_only_and_breaks_ties_by_mean_q_halt() {
    // Two non-halting passes say 3; the halting ones say 4 (x2) and 5 (x1).
    let ps = vec![
        pass(0, 0, 3, -1.0, 0.0),
        pass(0, 1, 3, -1.0, 0.0),
        pass(0, 2, 3, -1.0, 0.0),
        pass(0, 3, 4, 0.5, 0.0),
        pass(0, 4, 5, 2.0, 0.0),
        pass(0, 5, 4, 0.2, 0.0),
    ];
    let c = select_vote_halt(&ps).unwrap();
    assert_eq!((c.tokens, c.votes, c.pool), (board_tokens(4).to_vec(), 2, 3));
    // Tie 1:1 among halting passes: the higher mean q_halt (5 at 2.0 over 4 at 0.5) wins.
    let tie = vec![pass(0, 0, 4, 0.5, 0.0), pass(0, 1, 5, 2.0, 0.0), pass(0, 2, 3, -3.0, 0.0)];
    assert_eq!(select_vote_halt(&tie).unwrap().tokens, board_tokens(5));
    // Tie in count and mean q_halt: the first answer seen.
    let exact_tie = vec![pass(0, 0, 6, 1.0, 0.0), pass(0, 1, 7, 1.0, 0.0)];
    assert_eq!(select_vote_halt(&exact_tie).unwrap().tokens, board_tokens(6));
    // No pass halts: all passes vote (3 wins 2:1 although its q_halt is lower).
    let none = vec![pass(0, 0, 3, -4.0, 0.0), pass(0, 1, 3, -4.0, 0.0), pass(0, 2, 8, -0.1, 0.0)];
    let c = select_vote_halt(&none).unwrap();
    assert_eq!((c.tokens, c.votes, c.pool), (board_tokens(3).to_vec(), 2, 3));
    // q_halt == q_continue is not halting.
    let eq = vec![pass(0, 0, 3, 0.0, 0.0), pass(0, 1, 3, 0.0, 0.0), pass(0, 2, 8, 1.0, 0.5)];
    assert_eq!(select_vote_halt(&eq).unwrap().tokens, board_tokens(8));
    assert!(majority(std::iter::empty()).is_none());
}

#[test]
fn verify_prefers_valid_solutions_keeping_the_givens() {
    let (q, a) = blanked_puzzles(1, 20..21, 9)[0];
    let sol = to_tokens(&a);
    // A valid grid that breaks a given: relabel the solution's digits.
    let other = Perturbation::relabel(1).apply_tokens(&sol);
    assert!(hrm::sudoku::board::is_valid_solution(&tokens_to_board(&other)));
    let with = |t: [u8; 81], qh: f32| Pass { tokens: t.to_vec(), ..pass(0, 0, 0, qh, 0.0) };
    let q: Vec<i32> = to_tokens(&q).iter().map(|&t| t as i32).collect();
    let wrong = board_tokens(2);
    // Three halting wrong answers outvote the one right (but not halting) answer in `vote_halt`;
    // `verify` keeps only the right one.
    let ps = vec![with(wrong, 1.0), with(wrong, 1.0), with(wrong, 1.0), with(other, 1.0), with(sol, -1.0)];
    assert_eq!(select_vote_halt(&ps).unwrap().tokens, wrong);
    let c = select_verify(&ps, Rules::Sudoku, &q).unwrap();
    assert_eq!((c.tokens, c.votes, c.pool), (sol.to_vec(), 1, 1));
    // No valid candidate: falls back to vote.
    let ps = vec![with(wrong, 1.0), with(other, 2.0), with(wrong, 0.5)];
    assert_eq!(select_verify(&ps, Rules::Sudoku, &q).unwrap().tokens, wrong);
    // `vote` counts every pass: two right but not halting outvote one halting wrong answer,
    // which `vote_halt` (halting passes only) picks.
    let ps = vec![with(wrong, 1.0), with(sol, -1.0), with(sol, -2.0)];
    assert_eq!(select_vote_halt(&ps).unwrap().tokens, wrong);
    let c = select_vote(&ps).unwrap();
    assert_eq!((c.tokens, c.votes, c.pool), (sol.to_vec(), 2, 3));
}

#[test]
fn oracle_needs_a_strict_majority_of_halting_passes_and_ors_checkpoints() {
    let right = 9u8;
    let labels = board_tokens(right);
    // Checkpoint 0: 2 of 4 halting passes right: not a strict majority.
    let half = vec![
        pass(0, 0, right, 1.0, 0.0),
        pass(0, 1, right, 1.0, 0.0),
        pass(0, 2, 3, 1.0, 0.0),
        pass(0, 3, 4, 1.0, 0.0),
    ];
    assert!(!oracle_correct(&half, &labels));
    // 2 of 3 halting: strict majority (the non-halting wrong passes do not count).
    let mut maj = half.clone();
    maj[3].q_halt = -1.0;
    maj.push(pass(0, 4, 5, -1.0, 0.0));
    maj.push(pass(0, 5, 5, -1.0, 0.0));
    assert!(oracle_correct(&maj, &labels));
    // No halting pass: not solved, even if every pass is right.
    let silent = vec![pass(0, 0, right, -1.0, 0.0), pass(0, 1, right, -1.0, 0.0)];
    assert!(!oracle_correct(&silent, &labels));
    // OR across checkpoints: checkpoint 0 fails, checkpoint 1 succeeds.
    let mut two: Vec<Pass> = half.clone();
    two.extend([pass(1, 0, right, 1.0, 0.0), pass(1, 1, 2, -1.0, 0.0)]);
    assert!(oracle_correct(&two, &labels));
    // Table-level scoring: `oracle` can fail where a label-free mode succeeds.
    let table = PassTable {
        puzzles: 1,
        checkpoints: 2,
        perturbations: 4,
        passes: {
            let mut v = half.clone();
            v.extend([
                pass(1, 0, right, 1.0, 0.0),
                pass(1, 1, 2, -1.0, 0.0),
                pass(1, 2, 3, 1.0, 0.0),
                pass(1, 3, 3, 1.0, 0.0),
            ]);
            v
        },
    };
    let q = [1i32; 81];
    let (acc, sel) = score(&table, Rules::Sudoku, &[&q[..]], &[labels]);
    assert_eq!(acc.single, 1.0);
    // Halting: right x3, 3 x3, 4 x1: tie 3:3 at equal mean q_halt; the first seen (right) wins.
    assert_eq!(sel[0].vote_halt.tokens, labels);
    assert_eq!(acc.vote_halt, 1.0);
    // All 8 passes: right x3, 3 x3, 4, 2: the same tie, the same winner.
    assert_eq!((sel[0].vote.tokens.clone(), sel[0].vote.pool), (labels.to_vec(), 8));
    assert_eq!(acc.vote, 1.0);
    // Checkpoint 0: 2 of 4 (no); checkpoint 1: 1 of 3 (no).
    assert_eq!(acc.oracle, 0.0);
}

#[test]
fn hint_twins_follow_every_example_in_its_group() {
    use hrm::train::data::{augmented_source, augmented_source_with_hints};
    use hrm::train::sampler::PuzzleSource;
    let puzzles = blanked_puzzles(3, 10..20, 12);
    let plain = augmented_source(&puzzles, 2, 4);
    let hinted = augmented_source_with_hints(&puzzles, 2, true, 4);
    assert_eq!(plain.num_groups(), 3);
    assert_eq!(hinted.num_groups(), 3);
    for g in 0..3 {
        assert_eq!(plain.group(g).len(), 3);
        let r = hinted.group(g);
        assert_eq!(r.len(), 6);
        for i in r.clone().step_by(2) {
            let (q, a) = hinted.example(i);
            let (t, ta) = hinted.example(i + 1);
            assert_eq!(a, ta, "a twin shares its example's answer");
            let blanks = |x: &[u8]| x.iter().filter(|&&v| v == 1).count();
            assert!(blanks(t) < blanks(q) && blanks(t) >= 1, "{} -> {}", blanks(q), blanks(t));
            // Twins only fill blanks, with the solution's digits.
            for c in 0..81 {
                assert!(t[c] == q[c] || (q[c] == 1 && t[c] == a[c]));
            }
        }
    }
}

/// The halting passes of `vote_halt`, `verify` and the oracle follow the model's own rule:
/// HRM halts on q_halt > q_continue, TRM (`no_ACT_continue`) on q_halt > 0.
#[test]
fn a_pass_halts_by_its_models_rule() {
    let hrm = pass(0, 0, 1, 0.5, 1.0);
    assert!(!hrm.halted(), "HRM: 0.5 < q_continue 1.0");
    let trm = Pass { halt_at_zero: true, ..hrm.clone() };
    assert!(trm.halted(), "TRM: q_halt 0.5 > 0");
    let trm_no = Pass { q_halt: -0.1, q_continue: -5.0, ..trm.clone() };
    assert!(!trm_no.halted() && Pass { halt_at_zero: false, ..trm_no }.halted());
}
