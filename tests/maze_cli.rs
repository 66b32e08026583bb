//! `hrm data maze generate` and `hrm data maze check` through the binary: the official CSV
//! layout, every generated maze valid, hard and labeled by the rule, the same bytes from the
//! same seed, splits without a shared wall layout, and bad files named by line; `hrm data maze
//! build` into the reference's dataset layout, and `hrm train` on it (resumed bit-identically);
//! `hrm bench --task maze`.

use hrm::maze::formats::read_csv;
use hrm::maze::{WALL, check_answer, label};
use std::path::Path;
use std::process::Command;

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

fn generate(out: &Path, seed: &str) -> std::process::Output {
    hrm()
        .args(["data", "maze", "generate", "--train", "24", "--test", "12", "--side", "12"])
        .args(["--min-moves", "30", "--seed", seed, "--out"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn generated_sets_are_valid_hard_reproducible_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    for (out, seed) in [(&a, "3"), (&b, "3"), (&c, "4")] {
        let o = generate(out, seed);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(a.join("train.csv")).unwrap();
    assert!(text.starts_with("source,q,a,rating\n"), "the official header");
    for split in ["train.csv", "test.csv"] {
        let (x, y) = (std::fs::read(a.join(split)).unwrap(), std::fs::read(b.join(split)).unwrap());
        assert!(x == y, "{split}: the same seed gives the same bytes");
        assert_ne!(x, std::fs::read(c.join(split)).unwrap(), "{split}: another seed, another set");
    }
    let train = read_csv(&a.join("train.csv")).unwrap();
    let test = read_csv(&a.join("test.csv")).unwrap();
    assert_eq!((train.len(), test.len()), (24, 12));
    for r in train.iter().chain(&test) {
        assert_eq!(r.side, 12);
        let chk = check_answer(&r.question, &r.answer, r.side);
        assert!(chk.valid && chk.optimal, "{}: label not a shortest path", r.source);
        let moves: u32 = r.rating.parse().unwrap();
        assert_eq!(chk.moves, Some(moves), "{}: rating = moves", r.source);
        assert!(moves >= 30, "{}: {moves} moves", r.source);
        assert_eq!(label(&r.question, r.side).unwrap(), r.answer, "{}: the labeling rule", r.source);
    }
    let layout =
        |r: &hrm::maze::formats::MazeRow| r.question.iter().map(|&t| t == WALL).collect::<Vec<bool>>();
    let train_layouts: std::collections::HashSet<_> = train.iter().map(layout).collect();
    assert_eq!(train_layouts.len(), train.len(), "one maze per layout");
    assert!(test.iter().all(|r| !train_layouts.contains(&layout(r))), "no layout in both splits");

    let o = hrm()
        .args(["data", "maze", "check"])
        .arg(a.join("train.csv"))
        .arg(a.join("test.csv"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("24 mazes of 12 x 12") && out.contains("shortest 24/24"), "{out}");
    assert!(out.contains("by this project's rule 24/24"), "{out}");

    // an existing set is not overwritten
    let o = generate(&a, "3");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("train.csv exists"));
}

#[test]
fn check_names_bad_lines_and_counts_wrong_labels() {
    let dir = tempfile::tempdir().unwrap();
    // 3 x 3: S above a wall above G; the labels go round the far side (valid, 6 moves, not 4)
    let q = "S  #  G  ";
    let p = dir.path().join("m.csv");
    std::fs::write(&p, format!("source,q,a,rating\nx,{q},Soo# oGoo,6\ny,{q},So #o Go ,4\n")).unwrap();
    let o = hrm().args(["data", "maze", "check"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("1 maze(s) whose label is not a valid shortest path"), "{err}");
    std::fs::write(&p, format!("source,q,a,rating\nx,{q},{},4\n", q.replace('#', "X"))).unwrap();
    let o = hrm().args(["data", "maze", "check"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("m.csv:2: a: character 'X' at cell 3 (row 1, column 0)"), "{err}");
}

/// `hrm bench --task maze` times the Maze model (S = 916 for TRM: 900 cells and 16 prefix
/// positions) end to end on the CPU; `--task` and `--preset` name the model twice, refused.
#[test]
fn bench_times_the_maze_model() {
    let o = hrm()
        .args(["bench", "--task", "maze", "--arch", "trm", "--device", "cpu", "--batch-size", "1"])
        .args(["--steps", "1", "--warmup", "0", "--infer-batch-size", "0", "--threads", "2"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("| trm-maze | batch 1 |"), "{out}");
    let tokens_per_s: f64 = (out.split("ms, ").nth(1).and_then(|r| r.split(' ').next()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tokens/s in {out}"));
    assert!(tokens_per_s > 0.0, "{out}");
    let o = hrm().args(["bench", "--task", "maze", "--preset", "sudoku"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--preset"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `hrm data maze build --aug`: the reference's layout (TASKS_SPEC section 1) read back: one
/// group per maze, the 8 dihedral transforms of each training maze as its puzzles (each one a
/// valid shortest path, the inverse transform giving back the CSV's maze), the test split as the
/// CSV, identifier 0 everywhere, dataset.json's keys; a second build into the same folder is
/// refused.
#[test]
fn build_writes_the_reference_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, out) = (dir.path().join("csv"), dir.path().join("data"));
    assert!(generate(&csv, "5").status.success());
    let build = || {
        hrm()
            .args(["data", "maze", "build", "--aug", "--train"])
            .arg(csv.join("train.csv"))
            .arg("--test")
            .arg(csv.join("test.csv"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = build();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (train_rows, test_rows) =
        (read_csv(&csv.join("train.csv")).unwrap(), read_csv(&csv.join("test.csv")).unwrap());
    let (train, meta) = hrm::dataset::Split::read(&out.join("train")).unwrap();
    assert_eq!((meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers), (144, 6, 1));
    assert_eq!((meta.total_groups, meta.mean_puzzle_examples, meta.ignore_label_id), (24, 1.0, Some(0)));
    assert_eq!((train.num_groups(), train.num_puzzles(), train.num_examples()), (24, 192, 192));
    assert!(train.puzzle_identifiers.iter().all(|&id| id == 0));
    for (g, r) in train_rows.iter().enumerate() {
        let puzzles = train.group_indices[g] as usize..train.group_indices[g + 1] as usize;
        assert_eq!(puzzles.len(), 8, "maze {g}");
        for (tid, p) in puzzles.enumerate() {
            let (q, a) = train.example(train.puzzle_indices[p] as usize);
            let c = check_answer(q, a, 12);
            assert!(c.valid && c.optimal, "maze {g}, transform {tid}");
            let (back, _, _) = hrm::grid::inverse_dihedral(q, 12, 12, tid);
            assert_eq!(back, r.question, "maze {g}: transform {tid} does not invert");
        }
    }
    let (test, meta) = hrm::dataset::Split::read(&out.join("test")).unwrap();
    assert_eq!((meta.total_groups, test.num_examples()), (12, 12));
    for (i, r) in test_rows.iter().enumerate() {
        assert_eq!(test.example(i), (&r.question[..], &r.answer[..]), "test maze {i}");
    }
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(out.join("identifiers.json")).unwrap()).unwrap();
    assert_eq!(ids, ["<blank>"]);
    let o = build();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("exists"));
}

fn checkpoint_bits(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
        let t = hrm::model::checkpoint::TensorFile::open(f).unwrap();
        for name in t.names() {
            if let Ok(v) = t.f32(name, None) {
                out.push((format!("{}:{name}", f.display()), v.iter().map(|x| x.to_bits()).collect()));
            }
        }
    }
    out
}

/// `hrm train` reads the reference's layout (`hrm data maze build`): a small HRM on 8 x 8 mazes
/// trains, and a run stopped at step 2 and resumed writes the same checkpoint bits as an
/// uninterrupted one. A model of the wrong shape and Sudoku `--eval` sets are refused, saying why.
#[test]
fn training_on_built_mazes_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = hrm()
        .args(["data", "maze", "generate", "--train", "16", "--test", "4", "--side", "8"])
        .args(["--min-moves", "10", "--out"])
        .arg(d.join("csv"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = hrm()
        .args(["data", "maze", "build", "--aug", "--train"])
        .arg(d.join("csv/train.csv"))
        .arg("--test")
        .arg(d.join("csv/test.csv"))
        .arg("--out")
        .arg(d.join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = hrm::config::ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        halt_max_steps: 2,
        seq_len: 64,
        ..hrm::config::ModelConfig::maze()
    };
    std::fs::write(d.join("arch.json"), model.to_json()).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut c = hrm();
        c.args(["train", "--device", "cpu", "--threads", "2", "--data"]).arg(d.join("data"));
        c.arg("--config").arg(d.join("arch.json"));
        c.args(["--batch-size", "4", "--steps", "4", "--lr-warmup-steps", "1", "--checkpoint-every", "2"]);
        c.args(["--log-every", "1"]).args(extra).arg("--out").arg(d.join(out));
        c.output().unwrap()
    };
    let o = train("full", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("on 16 groups (128 examples)"), "{err}");
    assert!(train("split", &["--stop-after", "2"]).status.success());
    let o = hrm()
        .args(["train", "--device", "cpu", "--threads", "2", "--resume"])
        .arg(d.join("split"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = |run: &str| d.join(run).join("checkpoints/step_00000004");
    let (a, b) = (checkpoint_bits(&ck("full")), checkpoint_bits(&ck("split")));
    assert!(a.len() >= 8, "{} tensors", a.len());
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        assert!(va == vb, "{na}: the resumed maze run differs from the uninterrupted one");
    }
    // a Sudoku model cannot read 8 x 8 mazes; Sudoku evaluation sets do not go with them
    let mut c = hrm();
    c.args(["train", "--device", "cpu", "--preset", "demo", "--steps", "1", "--data"]).arg(d.join("data"));
    let o = c.arg("--out").arg(d.join("wrong")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("seq_len 81") && err.contains("sequences of 64"), "{err}");
    std::fs::write(d.join("eval.txt"), format!("{}\n", ".".repeat(81))).unwrap();
    let eval = d.join("eval.txt");
    let o = train("with-eval", &["--eval", eval.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("a sudoku set, and this run trains on maze 8x8 data"),
        "{err}"
    );
}

#[test]
fn maze_models_are_evaluated_during_training_and_by_hrm_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = hrm()
        .args(["data", "maze", "generate", "--train", "8", "--test", "5", "--side", "6"])
        .args(["--min-moves", "6", "--out"])
        .arg(d.join("csv"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = hrm()
        .args(["data", "maze", "build", "--train"])
        .arg(d.join("csv/train.csv"))
        .arg("--test")
        .arg(d.join("csv/test.csv"))
        .arg("--out")
        .arg(d.join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = hrm::config::ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        halt_max_steps: 2,
        seq_len: 36,
        ..hrm::config::ModelConfig::maze()
    };
    std::fs::write(d.join("arch.json"), model.to_json()).unwrap();
    // evaluation during training: the built root's test split, every 2 steps
    let o = hrm()
        .args(["train", "--device", "cpu", "--threads", "2", "--data"])
        .arg(d.join("data"))
        .arg("--config")
        .arg(d.join("arch.json"))
        .args(["--batch-size", "4", "--steps", "2", "--eval-every", "2", "--eval"])
        .arg(d.join("data"))
        .arg("--out")
        .arg(d.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("eval data: exact") && err.contains("valid and optimal"), "{err}");
    let metrics = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    let eval: serde_json::Value =
        serde_json::from_str(metrics.lines().find(|l| l.contains("\"eval\"")).expect("an eval record"))
            .unwrap();
    assert_eq!(eval["puzzles"], 5);
    assert!(eval["valid_optimal_accuracy"].as_f64().unwrap() <= eval["valid_accuracy"].as_f64().unwrap());
    // hrm eval on the test split folder: the report, the JSON and the answers as maze text
    let ckpt = d.join("run/checkpoints/step_00000002/model.safetensors");
    let o = hrm()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&ckpt)
        .arg(d.join("data/test"))
        .arg("--json")
        .arg(d.join("r.json"))
        .arg("--answers")
        .arg(d.join("a.csv"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("valid") && out.contains("optimal"), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(r[0]["puzzles"], 5);
    assert_eq!(r[0]["exact_accuracy"], eval["exact_accuracy"], "the same model, the same answers");
    let answers = std::fs::read_to_string(d.join("a.csv")).unwrap();
    let rows = read_csv(&d.join("csv/test.csv")).unwrap();
    for (line, maze) in answers.lines().skip(1).zip(&rows) {
        let f: Vec<&str> = line.split(',').collect();
        let question: String = maze.question.iter().map(|&t| hrm::maze::char_of(t)).collect();
        assert_eq!(f[2], question, "{line}");
        assert_eq!(f[3].len(), 36, "{line}");
    }
    // a Sudoku set with a maze model: refused, saying why
    let (q, _) = hrm::train::data::blanked_puzzles(1, 5..6, 1)[0];
    std::fs::write(d.join("eval.txt"), format!("{}\n", hrm::sudoku::board::board_to_string(&q, '.')))
        .unwrap();
    let o = hrm()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&ckpt)
        .arg(d.join("eval.txt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not a sudoku model"), "{err}");
    // perturbed inference on mazes: the 8 dihedral maps; `single` is the plain evaluation's
    // answer, and every selected answer is a maze answer mapped back to the original grid
    let o = hrm()
        .args(["eval", "--device", "cpu", "--perturb", "dihedral8", "--checkpoint"])
        .arg(&ckpt)
        .arg(d.join("data"))
        .arg("--json")
        .arg(d.join("p.json"))
        .arg("--answers")
        .arg(d.join("p.csv"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("p.json")).unwrap()).unwrap();
    assert_eq!(p[0]["passes_per_puzzle"], 8);
    assert_eq!(p[0]["exact_accuracy"]["single"], r[0]["exact_accuracy"]);
    let plain_answers: Vec<String> =
        answers.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().to_string()).collect();
    let perturbed = std::fs::read_to_string(d.join("p.csv")).unwrap();
    for (line, plain) in perturbed.lines().skip(1).zip(&plain_answers) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[3], plain, "single = the unperturbed answer: {line}");
        assert_eq!((f[4].len(), f[6].len()), (36, 36), "{line}");
    }
    // the analyses read maze sets: noisy starts, the trajectory, a landscape; trivial does not
    let analyze = |args: &[&str]| {
        let mut c = hrm();
        c.args(["analyze"])
            .args(args)
            .args(["--device", "cpu", "--checkpoint"])
            .arg(&ckpt)
            .arg(d.join("data"));
        c.arg("--out").arg(d.join("an")).output().unwrap()
    };
    for args in [
        &["fixed-points", "--runs", "3"][..],
        &["trajectory"],
        &["landscape", "--runs", "4", "--puzzle", "2"],
    ] {
        let o = analyze(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let fixed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("an/fixed_points.json")).unwrap()).unwrap();
    assert_eq!(fixed["puzzles"], 5);
    let runs: u64 =
        fixed["per_puzzle"].as_array().unwrap().iter().map(|p| p["valid_runs"].as_u64().unwrap()).sum();
    assert!(runs <= 15);
    let traj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("an/trajectory.json")).unwrap()).unwrap();
    assert_eq!(traj["per_segment"].as_array().unwrap().len(), 2);
    assert_eq!(traj["per_segment"][1]["exact_accuracy"], r[0]["exact_accuracy"], "the evaluator's figure");
    let land: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("an/landscape.json")).unwrap()).unwrap();
    assert_eq!(land["puzzle"], 2);
    assert_eq!(land["answers"][0]["board"].as_str().unwrap().len(), 36, "an answer as maze text");
    let o = analyze(&["trivial"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no maze or ARC"));
    // hrm solve: a maze CSV, and one maze as a string
    let o = hrm()
        .args(["solve", "--device", "cpu", "--checkpoint"])
        .arg(&ckpt)
        .arg(d.join("csv/test.csv"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.matches("answer:").count(), 5, "{out}");
    let verdicts = out.matches("a shortest path").count()
        + out.matches("NOT a shortest").count()
        + out.matches("NOT a path from S to G").count();
    assert_eq!(verdicts, 5, "{out}");
    let one: String = rows[0].question.iter().map(|&t| hrm::maze::char_of(t)).collect();
    let o = hrm().args(["solve", "--device", "cpu", "--checkpoint"]).arg(&ckpt).arg(&one).output().unwrap();
    let out1 = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out1.contains("answer:") && out.starts_with(&*out1),
        "the CSV's first maze, the same answer:\n{out1}"
    );
    let o = hrm()
        .args(["solve", "--device", "cpu", "--checkpoint"])
        .arg(&ckpt)
        .arg(format!("{one} "))
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a square grid"));
    let o = hrm()
        .args(["eval", "--device", "cpu", "--perturb", "relabel9", "--checkpoint"])
        .arg(&ckpt)
        .arg(d.join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("dihedral8"), "{err}");
}
