//! The training pipeline end to end through the binary: `hrm data build` -> `hrm train`
//! (stopped, then resumed) -> `hrm eval` -> `hrm solve` -> `hrm plot`; and the evaluator's
//! bookkeeping on answers known to be right.

use hrm::backend::cpu::Cpu;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::infer::eval::{EvalSet, Example, evaluate, predict};
use hrm::model::HostParams;
use hrm::sudoku::board::board_to_string;
use hrm::task::Rules;
use hrm::train::data::{blanked_puzzles, example_of};
use std::process::Command;

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
fn build_train_resume_eval_solve_plot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = blanked_puzzles(12, 10..20, 1);
    let held = blanked_puzzles(6, 10..20, 2);
    let lines = |v: &[([u8; 81], [u8; 81])]| {
        v.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect::<String>()
    };
    std::fs::write(d.join("train.txt"), lines(&train)).unwrap();
    std::fs::write(d.join("held.txt"), lines(&held)).unwrap();
    ok(hrm()
        .args(["data", "build", "--train", "12", "--augment", "2", "--out"])
        .arg(d.join("ds"))
        .arg(d.join("train.txt")));

    let run = d.join("run");
    let train_args = |extra: &[&str]| {
        let mut c = hrm();
        c.args(["--threads", "2", "train", "--data"])
            .arg(d.join("ds/train"))
            .arg("--eval")
            .arg(d.join("held.txt"));
        c.args(["--preset", "tiny", "--batch-size", "4", "--steps", "6", "--lr-warmup-steps", "2"]);
        c.args(["--eval-every", "3", "--checkpoint-every", "2", "--log-every", "1", "--out"]).arg(&run);
        c.args(extra);
        c
    };
    ok(&mut train_args(&["--stop-after", "4"]));
    assert!(run.join("checkpoints/step_00000004/COMPLETE").exists());
    ok(hrm().args(["train", "--resume"]).arg(&run));
    let ck = run.join("checkpoints/step_00000006/model.safetensors");
    assert!(ck.exists());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"train\"")).count(), 6);
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count(), 2);

    let json = d.join("eval.json");
    let table =
        ok(hrm().args(["eval", "--checkpoint"]).arg(&ck).arg(d.join("held.txt")).arg("--json").arg(&json));
    assert!(table.contains("held") && table.contains("exact"), "{table}");
    let reports: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(reports[0]["puzzles"], 6);
    assert_eq!(reports[0]["exact_accuracy_per_segment"].as_array().unwrap().len(), 16);

    let out = ok(hrm().args(["solve", "--checkpoint"]).arg(&ck).arg(board_to_string(&held[0].0, '.')));
    // Six steps of training do not solve Sudoku: the check must say so.
    assert!(out.contains("NOT a valid solution") && out.contains("answer  "), "{out}");

    let plots = ok(hrm().arg("plot").arg(&run));
    assert!(plots.contains("accuracy.svg"));
    let svg = std::fs::read_to_string(run.join("plots/accuracy.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("held exact"));

    // Bad input: a missing dataset is named.
    let o =
        hrm().args(["train", "--data"]).arg(d.join("nope")).arg("--out").arg(d.join("r2")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
}

#[test]
fn evaluation_counts_answers_known_to_be_right() {
    let be = Cpu;
    let cfg = ModelConfig::tiny();
    let params = HostParams::init(&cfg, &mut hrm::rng::seeded(9));
    let model = Hrm::new(&be, &cfg, &params);
    let puzzles = blanked_puzzles(5, 20..30, 3);
    let examples: Vec<_> = puzzles.iter().map(|(q, a)| example_of(q, a)).collect();
    let p = predict(&be, &model, &examples, 2, |_| {}).unwrap();
    // Make the model's final answers the labels: exact accuracy must then be 1 at the last
    // segment, and cells 1.
    let mut relabeled = examples.clone();
    for (k, e) in relabeled.iter_mut().enumerate() {
        e.labels = p.tokens[k * 81..(k + 1) * 81].iter().map(|&t| t as i32).collect();
    }
    let set = |name: &str, examples: &[Example]| EvalSet {
        name: name.into(),
        rules: Rules::Sudoku,
        examples: examples.to_vec(),
        arc: None,
    };
    let r = evaluate(&be, &model, &set("self", &relabeled), 3, |_| {}).unwrap();
    assert_eq!(r.puzzles, 5);
    assert_eq!(r.exact_accuracy, 1.0);
    assert_eq!(r.cell_accuracy, 1.0);
    assert_eq!(*r.exact_accuracy_per_segment.last().unwrap(), 1.0);
    // Against the true answers an untrained model gets no board right.
    let r = evaluate(&be, &model, &set("true", &examples), 3, |_| {}).unwrap();
    assert_eq!(r.exact_accuracy, 0.0);
    assert!(r.cell_accuracy < 1.0);
}
