//! `hrm analyze trajectory|trivial` and the perturbed `hrm eval` on a tiny freshly initialized
//! model: the documented fields and shapes, and bookkeeping checked against known answers.

use hrm::analysis::conflicts;
use hrm::analysis::trajectory::trajectory;
use hrm::analysis::trivial::{blank_cells, trivial};
use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::infer::eval::{EvalSet, Example, evaluate, predict};
use hrm::model::HostParams;
use hrm::sudoku::board::board_to_string;
use hrm::task::Rules;
use hrm::train::data::{blanked_puzzles, example_of};
use std::process::Command;

fn tiny() -> (ModelConfig, HostParams) {
    let mut cfg = ModelConfig::tiny();
    assert_eq!(cfg.seq_len, 81);
    cfg.halt_max_steps = 3;
    let params = HostParams::init(&cfg, &mut hrm::rng::seeded(4));
    (cfg, params)
}

/// The examples with the model's own final answers as labels (so every puzzle ends right).
fn own_answers_as_labels(model: &Hrm<Cpu>, examples: &[Example]) -> Vec<Example> {
    let p = predict(&Cpu, model, examples, 5, |_| {}).unwrap();
    examples
        .iter()
        .enumerate()
        .map(|(k, e)| Example {
            inputs: e.inputs.clone(),
            labels: p.tokens[k * 81..(k + 1) * 81].iter().map(|&t| t as i32).collect(),
            puzzle_id: 0,
        })
        .collect()
}

#[test]
fn conflicts_count_duplicate_digits_per_unit() {
    let (_, grid) = blanked_puzzles(1, 5..6, 1)[0];
    assert_eq!(conflicts(&grid), 0);
    assert_eq!(conflicts(&[0; 81]), 0);
    // One cell changed to a digit already in its row, column and box: 3 conflicts.
    let mut b = grid;
    b[0] = grid[1];
    assert_eq!(conflicts(&b), 3);
    // All ones: every unit holds nine 1s, 8 conflicts each.
    assert_eq!(conflicts(&[1; 81]), 27 * 8);
}

#[test]
fn trajectory_has_one_row_per_segment_and_consistent_settling() {
    let be = Cpu;
    let (cfg, params) = tiny();
    let model = Hrm::new(&be, &cfg, &params);
    let puzzles = blanked_puzzles(5, 10..30, 2);
    let examples: Vec<_> = puzzles.iter().map(|(q, a)| example_of(q, a)).collect();
    let r = trajectory(&be, &model, "set", Rules::Sudoku, &examples, 2).unwrap();
    assert_eq!((r.puzzles, r.segments, r.per_segment.len(), r.settle_histogram.len()), (5, 3, 3, 3));
    assert_eq!(r.settle_segment.len(), 5);
    assert_eq!(r.settle_histogram.iter().sum::<usize>() + r.never_settled, 5);
    // Per-segment exact accuracy and cells agree with the evaluator.
    let set = EvalSet { name: "set".into(), rules: Rules::Sudoku, examples: examples.clone(), arc: None };
    let e = evaluate(&be, &model, &set, 3, |_| {}).unwrap();
    for (s, want) in r.per_segment.iter().zip(&e.exact_accuracy_per_segment) {
        assert_eq!(s.exact_accuracy, *want);
    }
    assert!((r.per_segment[2].cell_accuracy - e.cell_accuracy).abs() < 1e-12);
    for (k, s) in r.per_segment.iter().enumerate() {
        assert_eq!(s.segment, k + 1);
        assert!(s.z_h_change > 0.0 && s.z_h_change.is_finite(), "{s:?}");
        assert!(s.z_l_change > 0.0 && s.z_l_change.is_finite(), "{s:?}");
        assert!(s.conflicts >= 0.0 && (0.0..=1.0).contains(&s.act_halt_fraction));
        // A fresh Q head: weight 0, bias -5.
        assert!((s.mean_q_halt + 5.0).abs() < 1e-5);
    }
    // Labels set to the model's own final answers: every puzzle ends right, and settles at
    // the first segment of its final run of right answers.
    let own = own_answers_as_labels(&model, &examples);
    let r = trajectory(&be, &model, "own", Rules::Sudoku, &own, 5).unwrap();
    assert_eq!(r.per_segment[2].exact_accuracy, 1.0);
    assert_eq!(r.never_settled, 0);
    assert_eq!(r.lost_after_correct, 0);
    let mut hist = vec![0; 3];
    for s in &r.settle_segment {
        let s = s.expect("right at the end");
        assert!((1..=3).contains(&s));
        hist[s - 1] += 1;
    }
    assert_eq!(hist, r.settle_histogram);
    // Settled at segment k means right at k: exact accuracy at k covers everyone settled by k.
    for k in 0..3 {
        let settled: usize = r.settle_histogram[..=k].iter().sum();
        assert!(r.per_segment[k].exact_accuracy * 5.0 >= settled as f64 - 1e-9);
    }
}

#[test]
fn trivial_blanks_exactly_k_cells_and_reports_each_k() {
    let be = Cpu;
    let (cfg, params) = tiny();
    let model = Hrm::new(&be, &cfg, &params);
    let grids: Vec<_> = blanked_puzzles(4, 5..6, 3).into_iter().map(|(_, a)| a).collect();
    for k in [1, 2, 4, 8, 16] {
        let q = blank_cells(&grids[0], k, 7, 0);
        assert_eq!(q.iter().filter(|&&v| v == 0).count(), k);
        assert_eq!(q, blank_cells(&grids[0], k, 7, 0), "seeded");
        assert!((0..81).all(|c| q[c] == 0 || q[c] == grids[0][c]));
    }
    let r = trivial(&be, &model, "grids", &grids, &[1, 2, 4, 8, 16], 7, 3).unwrap();
    assert_eq!(r.rows.iter().map(|x| x.blanks).collect::<Vec<_>>(), vec![1, 2, 4, 8, 16]);
    assert_eq!(r.segments, 3);
    for x in &r.rows {
        assert_eq!(x.puzzles, 4);
        for v in [x.exact_accuracy, x.valid_fraction, x.blank_cell_accuracy, x.act_halt_fraction] {
            assert!((0.0..=1.0).contains(&v));
        }
        // The original grid is a valid solution keeping the givens.
        assert!(x.exact_accuracy <= x.valid_fraction);
    }
    assert!(trivial(&be, &model, "grids", &grids, &[0], 7, 3).is_err());
}

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed:\n{}\n{}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn analyze_and_perturbed_eval_commands_write_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut cfg, _) = tiny();
    cfg.halt_max_steps = 2;
    std::fs::write(d.join("arch.json"), cfg.to_json()).unwrap();
    for (seed, name) in [(0, "a"), (1, "b")] {
        ok(hrm()
            .args(["init", "--config"])
            .arg(d.join("arch.json"))
            .args(["--seed", &seed.to_string(), "--out"])
            .arg(d.join(format!("{name}.safetensors"))));
    }
    let held = blanked_puzzles(4, 10..20, 5);
    let lines: String = held.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect();
    std::fs::write(d.join("held.txt"), lines).unwrap();

    let out = d.join("an");
    let files = ok(hrm()
        .args(["analyze", "trajectory", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--out")
        .arg(&out));
    assert!(files.contains("trajectory.json") && files.contains("trajectory_state.svg"), "{files}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trajectory.json")).unwrap()).unwrap();
    assert_eq!(j["puzzles"], 4);
    let segs = j["per_segment"].as_array().unwrap();
    assert_eq!(segs.len(), 2);
    for f in [
        "segment",
        "exact_accuracy",
        "cell_accuracy",
        "z_h_change",
        "z_l_change",
        "conflicts",
        "mean_q_halt",
        "act_halt_fraction",
    ] {
        assert!(segs[0][f].is_number(), "per_segment.{f}");
    }
    for f in ["settle_histogram", "settle_segment"] {
        assert!(j[f].is_array(), "{f}");
    }
    for f in ["never_settled", "lost_after_correct", "right_to_wrong_flips"] {
        assert!(j[f].is_number(), "{f}");
    }
    assert!(std::fs::read_to_string(out.join("trajectory_accuracy.svg")).unwrap().starts_with("<svg"));

    ok(hrm()
        .args(["analyze", "trivial", "--blanks", "1,3", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--out")
        .arg(&out));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trivial.json")).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["blanks"].clone(), rows[1]["blanks"].clone()), (1.into(), 3.into()));
    for f in ["puzzles", "exact_accuracy", "valid_fraction", "blank_cell_accuracy", "givens_changed"] {
        assert!(rows[0][f].is_number(), "rows.{f}");
    }
    assert!(std::fs::read_to_string(out.join("trivial.svg")).unwrap().starts_with("<svg"));

    let table = ok(hrm()
        .args(["analyze", "landscape", "--puzzle", "2", "--runs", "4", "--segments", "3", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--out")
        .arg(&out));
    assert!(table.contains("puzzle 2: 4 runs") && table.contains("PC1"), "{table}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("landscape.json")).unwrap()).unwrap();
    assert_eq!(
        (j["puzzle"].as_u64(), j["runs"].as_u64(), j["segments"].as_u64()),
        (Some(2), Some(4), Some(3))
    );
    assert_eq!(j["per_run"][0]["path"].as_array().unwrap().len(), 4);
    let svg = std::fs::read_to_string(out.join("landscape.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("PC1") && svg.contains("answer 0"), "{svg}");
    let o = hrm()
        .args(["analyze", "landscape", "--puzzle", "4", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--puzzle 4") && err.contains("holds 4 puzzles"), "{err}");

    // Perturbed eval bootstrapped over two checkpoints.
    let json = d.join("aug.json");
    let table = ok(hrm()
        .args(["eval", "--perturb", "relabel9+sym:1", "--halt", "act", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg("--checkpoint")
        .arg(d.join("b.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--json")
        .arg(&json));
    for w in ["single", "vote", "verify", "oracle", "passes/s"] {
        assert!(table.contains(w), "{w}: {table}");
    }
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j[0]["passes_per_puzzle"], 36);
    assert_eq!(j[0]["checkpoints"], 2);
    assert_eq!(j[0]["halt"], "act");
    for m in ["single", "vote", "verify", "oracle"] {
        assert!(j[0]["exact_accuracy"][m].is_number(), "{m}");
    }
    // Without --perturb and with one checkpoint, the plain report is unchanged.
    let plain = d.join("plain.json");
    ok(hrm()
        .args(["eval", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .arg("--json")
        .arg(&plain));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&plain).unwrap()).unwrap();
    assert_eq!(j[0]["exact_accuracy_per_segment"].as_array().unwrap().len(), 2);
    // A bad spec names the flag and what was expected.
    let o = hrm()
        .args(["eval", "--perturb", "relabel9+rot:2", "--checkpoint"])
        .arg(d.join("a.safetensors"))
        .arg(d.join("held.txt"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--perturb") && err.contains("rot:2") && err.contains("relabel9"), "{err}");
}

#[test]
fn demo_with_hints_ends_with_the_side_by_side_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(hrm()
        .args(["demo", "--hints", "--bootstrap", "--steps", "4", "--batch-size", "4", "--train-puzzles", "8"])
        .args(["--augment", "1", "--eval-puzzles", "6", "--out"])
        .arg(dir.path().join("demo")));
    assert!(out.contains("Augmented HRM on the held-out puzzles (--perturb relabel9)"), "{out}");
    for w in ["single", "vote", "verify", "oracle*", "held_out (1 checkpoint)", "held_out (3 checkpoints)"] {
        assert!(out.contains(w), "{w}: {out}");
    }
}

/// With its output captured (not a terminal, as in a log file or CI), training prints plain
/// progress lines at a steady interval (`HRM_PROGRESS_S`, 10 s by default) and one at the end:
/// step of total, loss, exact accuracy, speed and time left.
#[test]
fn demo_training_prints_progress_lines_when_not_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let o = hrm()
        .args(["demo", "--steps", "40", "--batch-size", "8", "--train-puzzles", "16", "--augment", "1"])
        .args(["--eval-puzzles", "4", "--out"])
        .arg(dir.path().join("demo"))
        .env("HRM_PROGRESS_S", "0.05")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("step ") && l.contains("/40 | ")).collect();
    assert!(lines.len() >= 2, "progress lines at the interval and at the end:\n{err}");
    for l in &lines {
        for w in ["lm ", "exact ", "step/s", "s elapsed", "s left"] {
            assert!(l.contains(w), "{w:?} missing in {l:?}");
        }
    }
    assert!(lines.last().unwrap().starts_with("step 40/40 | "), "{err}");
    // The figures, for checks without parsing the text.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo/demo.json")).unwrap()).unwrap();
    assert!(v["held_out"]["exact_accuracy"].is_number(), "{v}");
    let by = v["held_out_exact_by_blanks"].as_array().unwrap();
    let n: u64 = by.iter().map(|b| b["puzzles"].as_u64().unwrap()).sum();
    assert_eq!(n, v["held_out"]["puzzles"].as_u64().unwrap(), "every held-out puzzle counted once: {v}");
    assert!(by.iter().all(|b| (3..=8).contains(&b["blanks"].as_u64().unwrap())), "{v}");
    assert!(v["selection"][0]["exact_accuracy"]["vote"].is_number(), "{v}");
    for phase in ["generate", "train_and_evaluate", "closing_table", "findings", "total"] {
        assert!(v["seconds"][phase].as_f64().unwrap() >= 0.0, "{phase}: {v}");
    }
    // The three findings: trivial puzzles by 1, 2, 4, 8 blanks over every held-out grid, the
    // critical step (none: 4 logged points are no curve), the noisy starts and the landscape.
    let f = &v["findings"];
    let ks: Vec<u64> =
        f["trivial"]["rows"].as_array().unwrap().iter().map(|r| r["blanks"].as_u64().unwrap()).collect();
    assert_eq!(ks, [1, 2, 4, 8], "{f}");
    assert_eq!(f["trivial"]["rows"][0]["puzzles"], v["held_out"]["puzzles"], "{f}");
    assert!(f["critical_step"].is_null(), "{f}");
    assert_eq!(f["fixed_points"]["puzzles"], v["held_out"]["puzzles"], "{f}");
    assert_eq!(f["fixed_points"]["runs_per_puzzle"], 8, "{f}");
    assert_eq!(f["landscape"]["runs"], 16, "{f}");
    for file in [
        "trivial.json",
        "trivial.svg",
        "fixed_points.json",
        "fixed_points.svg",
        "landscape.json",
        "landscape.svg",
    ] {
        assert!(dir.path().join("demo/analysis").join(file).is_file(), "{file}");
    }
    for w in ["Finding (a)", "Finding (b)", "Finding (c)"] {
        assert!(String::from_utf8_lossy(&o.stdout).contains(w), "{w}");
    }
}

#[test]
fn fixed_points_count_answers_runs_and_states_consistently() {
    use hrm::analysis::fixed_points::fixed_points;
    let be = Cpu;
    let (cfg, params) = tiny();
    let model = Hrm::new(&be, &cfg, &params);
    let puzzles = blanked_puzzles(3, 10..30, 5);
    let examples: Vec<_> = puzzles.iter().map(|(q, a)| example_of(q, a)).collect();
    let r = fixed_points(&be, &model, "set", Rules::Sudoku, &examples, 4, 2.0, 1e-3, 1, 8).unwrap();
    assert_eq!((r.puzzles, r.runs_per_puzzle, r.segments, r.per_puzzle.len()), (3, 4, 3, 3));
    for p in &r.per_puzzle {
        assert!((1..=4).contains(&p.distinct_answers), "{p:?}");
        assert!(p.correct_runs <= p.valid_runs && p.valid_runs <= 4, "right answers are valid: {p:?}");
        assert!(p.wrong_fixed_point_runs + p.unsettled_runs <= 4);
        assert!(p.wrong_fixed_point_runs + p.correct_runs <= 4);
    }
    for v in
        [r.correct_run_fraction, r.valid_run_fraction, r.wrong_fixed_point_fraction, r.unsettled_fraction]
    {
        assert!((0.0..=1.0).contains(&v));
    }
    // Without noise every run of a puzzle is the same computation: one answer per puzzle; with
    // the model's own answers as labels, every run is right and none is a wrong fixed point.
    let own = own_answers_as_labels(&model, &examples);
    let r0 = fixed_points(&be, &model, "own", Rules::Sudoku, &own, 3, 0.0, 1e-3, 1, 4).unwrap();
    assert!(r0.per_puzzle.iter().all(|p| p.distinct_answers == 1), "{:?}", r0.per_puzzle);
    assert_eq!(r0.correct_run_fraction, 1.0);
    assert_eq!(r0.wrong_fixed_point_fraction, 0.0);
    assert_eq!(r0.puzzles_with_several_answers, 0);
    // Noise moves the starts: the same seed reproduces the report, and bad arguments are errors.
    let again = fixed_points(&be, &model, "set", Rules::Sudoku, &examples, 4, 2.0, 1e-3, 1, 8).unwrap();
    assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&r).unwrap());
    assert!(fixed_points(&be, &model, "set", Rules::Sudoku, &examples, 0, 2.0, 1e-3, 1, 8).is_err());
    assert!(fixed_points(&be, &model, "set", Rules::Sudoku, &examples, 2, f64::NAN, 1e-3, 1, 8).is_err());
}

#[test]
fn landscape_paths_answers_and_projection_are_consistent() {
    use hrm::analysis::landscape::landscape;
    let be = Cpu;
    let (cfg, params) = tiny();
    let model = Hrm::new(&be, &cfg, &params);
    let puzzles = blanked_puzzles(2, 10..30, 7);
    let examples: Vec<_> = puzzles.iter().map(|(q, a)| example_of(q, a)).collect();
    // Past halt_max_steps (3): no halting, every run keeps going.
    let r = landscape(&be, &model, "set", Rules::Sudoku, &examples[1], 1, 5, 6, 2.0, 3).unwrap();
    assert_eq!((r.runs, r.segments, r.per_run.len(), r.puzzle), (5, 6, 5, 1));
    assert!(r.per_run.iter().all(|p| p.path.len() == 7 && p.answer < r.answers.len()));
    assert!(r.per_run.iter().flat_map(|p| &p.path).all(|c| c[0].is_finite() && c[1].is_finite()));
    assert_eq!(r.answers.iter().map(|a| a.runs).sum::<usize>(), 5);
    let v = r.explained_variance;
    assert!(v[0] >= v[1] && v[1] >= 0.0 && v[0] + v[1] <= 1.0 + 1e-9, "{v:?}");
    // Noisy starts are spread out: the start points differ.
    assert!(r.per_run[0].path[0] != r.per_run[1].path[0]);
    // Same seed, same picture.
    let again = landscape(&be, &model, "set", Rules::Sudoku, &examples[1], 1, 5, 6, 2.0, 3).unwrap();
    assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&r).unwrap());
    // Without noise, over halt_max_steps segments, every run is the model's own evaluation:
    // one answer, the one `predict` gives, right when it is the label.
    let own = own_answers_as_labels(&model, &examples);
    let r0 = landscape(&be, &model, "own", Rules::Sudoku, &own[0], 0, 3, cfg.halt_max_steps, 0.0, 3).unwrap();
    assert_eq!(r0.answers.len(), 1, "{:?}", r0.answers);
    let want: String =
        own[0].labels.iter().map(|&t| char::from(b'0' + (t as u8).saturating_sub(1))).collect();
    assert_eq!(r0.answers[0].board, want);
    assert!(r0.answers[0].correct);
    assert!(r0.per_run.windows(2).all(|w| w[0].path == w[1].path), "identical runs, identical paths");
    assert!(
        landscape(&be, &model, "set", Rules::Sudoku, &examples[0], 0, 1, 3, 2.0, 3).is_err(),
        "one run is no landscape"
    );
}
