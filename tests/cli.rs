//! The `hrm` binary end to end: init, forward and grad on the PyTorch fixtures and on a fresh
//! model, and clear errors for bad input.

mod common;
use common::*;
use hrm::model::checkpoint::TensorFile;
use std::process::Command;

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

#[test]
fn forward_and_grad_commands_reproduce_the_reference_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture_dir("tiny");
    let out = dir.path().join("fwd.safetensors");
    let st = hrm()
        .args(["forward", "--checkpoint"])
        .arg(fx.join("weights.safetensors"))
        .arg("--config")
        .arg(fx.join("config.json"))
        .arg("--batch")
        .arg(fx.join("batch.safetensors"))
        .args(["--segments", "1", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let ours = TensorFile::open(&out).unwrap();
    let want = TensorFile::open(&fx.join("forward_1.safetensors")).unwrap();
    for name in ["logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L"] {
        let e = rel_err(&ours.f32(name, None).unwrap(), &want.f32(name, None).unwrap());
        assert!(e < 1e-5, "{name}: {e}");
    }
    assert_eq!(
        ours.i32("exact_correct_per_segment", None).unwrap(),
        want.i32("exact_correct_per_segment", None).unwrap()
    );

    let out = dir.path().join("grad.safetensors");
    let st = hrm()
        .args(["grad", "--checkpoint"])
        .arg(fx.join("weights.safetensors"))
        .arg("--batch")
        .arg(fx.join("batch.safetensors"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let ours = TensorFile::open(&out).unwrap();
    let want = TensorFile::open(&fx.join("grad.safetensors")).unwrap();
    for name in
        ["lm_loss", "model.inner.H_level.layers.1.mlp.down_proj.weight", "model.inner.puzzle_emb.weights"]
    {
        let e = rel_err(&ours.f32(name, None).unwrap(), &want.f32(name, None).unwrap());
        assert!(e < 1e-5, "{name}: {e}");
    }
}

#[test]
fn init_writes_a_loadable_checkpoint_and_bad_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("tiny.safetensors");
    let st = hrm().args(["init", "--preset", "tiny", "--seed", "3", "--out"]).arg(&ck).status().unwrap();
    assert!(st.success());
    let (cfg, _) = hrm::model::checkpoint::load_checkpoint(&ck, None).unwrap();
    assert_eq!(cfg, hrm::config::ModelConfig::tiny());

    // A batch whose token ids are out of range names the tensor.
    let bad = dir.path().join("bad_batch.safetensors");
    let mut inputs = vec![1i32; 2 * 81];
    inputs[100] = 42;
    hrm::model::checkpoint::write_tensors(
        &bad,
        &[
            hrm::model::checkpoint::NamedTensor::i32("inputs", vec![2, 81], inputs),
            hrm::model::checkpoint::NamedTensor::i32("puzzle_identifiers", vec![2], vec![0, 0]),
        ],
        None,
    )
    .unwrap();
    let o = hrm()
        .args(["forward", "--checkpoint"])
        .arg(&ck)
        .arg("--batch")
        .arg(&bad)
        .args(["--segments", "2", "--out"])
        .arg(dir.path().join("o.safetensors"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("bad_batch.safetensors") && msg.contains("'inputs'") && msg.contains("42"), "{msg}");
    assert!(!dir.path().join("o.safetensors").exists(), "no output on failure");
}

/// A batch whose labels are all 0 (ignored) has nothing to be right about: `forward` says the
/// accuracy is not measured, and leaves unlabeled puzzles out of the count otherwise (it used
/// to print them as correct: 2/2).
#[test]
fn forward_does_not_count_unlabeled_puzzles_as_correct() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("tiny.safetensors");
    assert!(hrm().args(["init", "--preset", "tiny", "--out"]).arg(&ck).status().unwrap().success());
    let forward = |labels: Vec<i32>| {
        let batch = dir.path().join("batch.safetensors");
        hrm::model::checkpoint::write_tensors(
            &batch,
            &[
                hrm::model::checkpoint::NamedTensor::i32("inputs", vec![2, 81], vec![1; 2 * 81]),
                hrm::model::checkpoint::NamedTensor::i32("puzzle_identifiers", vec![2], vec![0, 0]),
                hrm::model::checkpoint::NamedTensor::i32("labels", vec![2, 81], labels),
            ],
            None,
        )
        .unwrap();
        let out = dir.path().join("o.safetensors");
        let _ = std::fs::remove_file(&out);
        let o = hrm()
            .args(["forward", "--checkpoint"])
            .arg(&ck)
            .arg("--batch")
            .arg(&batch)
            .args(["--segments", "1", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = forward(vec![0; 2 * 81]);
    assert!(err.contains("not measured"), "{err}");
    // One labeled puzzle: counted out of 1, the other left out.
    let mut one = vec![0; 2 * 81];
    one[81..].fill(5);
    let err = forward(one);
    assert!(err.contains("/1 (1 without labels left out)"), "{err}");
}
