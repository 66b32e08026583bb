//! ARC end to end through the binary, on hand-written tasks: `hrm data arc build` (the layout
//! read back, the same bytes from one seed), `hrm train` on several-example puzzles with their
//! identifiers (evaluation with the vote during training, a resumed run bit-identical to an
//! uninterrupted one), and `hrm eval` with the ARC Prize submission.

use hrm::dataset::Split;
use std::path::Path;
use std::process::Command;

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

/// A task file: `train` and `test` pairs of grids given as rows of digits.
fn write_task(dir: &Path, name: &str, train: &[(&str, &str)], test: &[(&str, &str)]) {
    let grid = |g: &str| -> serde_json::Value {
        g.split('/')
            .map(|r| r.bytes().map(|c| (c - b'0') as u64).collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .into()
    };
    let pairs = |ps: &[(&str, &str)]| -> serde_json::Value {
        ps.iter()
            .map(|(i, o)| serde_json::json!({"input": grid(i), "output": grid(o)}))
            .collect::<Vec<_>>()
            .into()
    };
    std::fs::create_dir_all(dir).unwrap();
    let v = serde_json::json!({"train": pairs(train), "test": pairs(test)});
    std::fs::write(dir.join(format!("{name}.json")), v.to_string()).unwrap();
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

#[test]
fn arc_builds_trains_resumes_evaluates_and_submits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tasks = d.join("tasks");
    write_task(&tasks.join("training"), "flip", &[("12/34", "21/43"), ("56", "65")], &[("789", "987")]);
    write_task(&tasks.join("training"), "fill", &[("10/01", "11/11"), ("0", "1")], &[("020", "222")]);
    write_task(
        &tasks.join("evaluation"),
        "swap",
        &[("13", "31"), ("4/5", "5/4")],
        &[("26", "62"), ("77/86", "68/77")],
    );
    write_task(&tasks.join("evaluation"), "keep", &[("3", "3")], &[("45/67", "45/67")]);
    let build = |out: &str| {
        hrm()
            .args(["data", "arc", "build", "--variants", "3", "--seed", "5", "--out"])
            .arg(d.join(out))
            .arg(&tasks)
            .output()
            .unwrap()
    };
    let o = build("data");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (train, meta) = Split::read(&d.join("data/train")).unwrap();
    let (test, test_meta) = Split::read(&d.join("data/test")).unwrap();
    // 4 tasks x (identity + 3 variants); the evaluation tasks' 3 test inputs x 4 variants held out
    assert_eq!(
        (train.num_groups(), train.num_puzzles(), test.num_groups(), test.num_examples()),
        (4, 16, 2, 12)
    );
    // train examples: flip and fill 3 pairs each (demos and test), swap 2 and keep 1 demos
    assert_eq!(train.num_examples(), 4 * (3 + 3 + 2 + 1));
    assert_eq!(
        (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers, meta.ignore_label_id),
        (12, 900, 17, Some(0))
    );
    assert_eq!(test_meta.num_puzzle_identifiers, 17);
    let names: Vec<String> =
        serde_json::from_slice(&std::fs::read(d.join("data/identifiers.json")).unwrap()).unwrap();
    assert_eq!(names.len(), 17);
    for t in ["flip", "fill", "swap", "keep"] {
        assert!(names.contains(&t.to_string()), "the identity variant keeps the bare name {t}");
    }
    assert!(build("data").status.code() != Some(0), "an existing build is not overwritten");
    assert!(build("again").status.success());
    for f in ["train/all__inputs.npy", "train/all__labels.npy", "test/all__inputs.npy", "identifiers.json"] {
        assert!(
            std::fs::read(d.join("data").join(f)).unwrap() == std::fs::read(d.join("again").join(f)).unwrap(),
            "{f}"
        );
    }

    // a small HRM: the data's identifier count is taken, evaluation during training votes
    let model = hrm::config::ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        halt_max_steps: 2,
        num_puzzle_identifiers: 1,
        ..hrm::config::ModelConfig::arc(1)
    };
    std::fs::write(d.join("arch.json"), model.to_json()).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut c = hrm();
        c.args(["train", "--device", "cpu", "--threads", "2", "--data"]).arg(d.join("data"));
        c.arg("--config").arg(d.join("arch.json"));
        c.args(["--batch-size", "6", "--steps", "4", "--lr-warmup-steps", "1", "--checkpoint-every", "2"]);
        c.args(["--eval-every", "4", "--eval"]).arg(d.join("data"));
        c.args(extra).arg("--out").arg(d.join(out));
        c.output().unwrap()
    };
    let o = train("full", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("num_puzzle_identifiers: 17 (the data's)"), "{err}");
    assert!(err.contains("ARC vote pass@1") && err.contains("/3 test inputs"), "{err}");
    let metrics = std::fs::read_to_string(d.join("full/metrics.jsonl")).unwrap();
    let eval: serde_json::Value =
        serde_json::from_str(metrics.lines().find(|l| l.contains("\"eval\"")).expect("an eval record"))
            .unwrap();
    assert_eq!(eval["puzzles"], 12);
    assert_eq!((eval["arc"]["test_inputs"].as_u64(), eval["arc"]["tasks"].as_u64()), (Some(3), Some(2)));
    // stopped and resumed: the same bits
    assert!(train("split", &["--stop-after", "2"]).status.success());
    let o = hrm()
        .args(["train", "--device", "cpu", "--threads", "2", "--resume"])
        .arg(d.join("split"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = |run: &str| d.join(run).join("checkpoints/step_00000004");
    let (a, b) = (checkpoint_bits(&ck("full")), checkpoint_bits(&ck("split")));
    assert!(a.iter().any(|(n, _)| n.contains("puzzle_emb")), "the puzzle embedding is checkpointed");
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        assert!(va == vb, "{na}: the resumed ARC run differs from the uninterrupted one");
    }

    // hrm eval: the vote's report and the submission, two attempts per test input
    let o = hrm()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(ck("full").join("model.safetensors"))
        .arg(d.join("data"))
        .arg("--json")
        .arg(d.join("r.json"))
        .arg("--submission")
        .arg(d.join("sub.json"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("ARC vote over the variants: pass@1"), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(r[0]["arc"], eval["arc"], "the same model and set, the same vote");
    let sub: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("sub.json")).unwrap()).unwrap();
    let sub = sub.as_object().unwrap();
    assert_eq!(sub.keys().collect::<Vec<_>>(), ["keep", "swap"]);
    assert_eq!(sub["swap"].as_array().unwrap().len(), 2);
    for attempt in ["attempt_1", "attempt_2"] {
        let g = &sub["keep"][0][attempt];
        assert!(g.is_array() && g[0].is_array(), "{attempt}: a grid, {g}");
    }
    // --submission without an ARC set
    let o = hrm()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(ck("full").join("model.safetensors"))
        .arg(d.join("data"))
        .arg("--perturb")
        .arg("none")
        .arg("--submission")
        .arg(d.join("sub2.json"))
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--submission"));
}
