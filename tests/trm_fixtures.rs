//! TRM on the CPU backend against the PyTorch reference (tools/reference/trm_reference.py):
//! the config keys parse to the config the checkpoint carries, every reference tensor loads
//! under its official name with the shape our layout gives it (none missing or extra), the
//! trainable-parameter count is the sum of the reference's gradient tensors; the eval forward
//! after 1 and N segments and one training step's losses, halting and every gradient match.
//!
//! Bounds as HRM's fixtures (`reference_fixtures.rs`: both sides f32 with different summation
//! orders): 1e-5 relative after one segment and for gradients, 1e-4 after N segments. These
//! randomly initialized recursions amplify differences from segment to segment: in PyTorch
//! alone, weights perturbed by 1e-6 (relative) move z_H by 2e-5 after one segment and by
//! 1.6e-4, 1e-3, 8e-3, 5.6e-2, 0.38 after segments 2..6 (`trm_mlp`, about 7x per segment), and
//! by 1.2e-5 then 1.3e-4 after 6 segments (`trm_att`, 1.6e-2 after 16). So N is 2 (`trm_mlp`)
//! and 6 (`trm_att`): a semantic error shows at one segment already (1e-3 or more).

mod common;
use common::{compare_all, fixture_dir};
use hrm::backend::cpu::Cpu;
use hrm::commands::{forward_outputs, grad_outputs, load_batch};
use hrm::config::ModelConfig;
use hrm::model::checkpoint::{TensorFile, load_checkpoint};
use hrm::model::params::{TensorKind, tensor_specs};

const BOUND: f64 = 1e-5;
const BOUND_LONG: f64 = 1e-4;

fn check(name: &str, mlp_t: bool, long: usize) {
    let dir = fixture_dir(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = ModelConfig::from_json_str(&text).unwrap();
    assert!(cfg.is_trm() && cfg.uses_mlp_t() == mlp_t, "{cfg:?}");
    let weights = TensorFile::open(&dir.join("weights.safetensors")).unwrap();
    let meta = ModelConfig::from_json_str(weights.metadata().get("config").unwrap()).unwrap();
    assert_eq!(meta, cfg, "config.json and the checkpoint metadata agree");

    let (loaded, params) = load_checkpoint(&dir.join("weights.safetensors"), None).unwrap();
    assert_eq!(loaded, cfg);
    let specs = tensor_specs(&cfg);
    assert_eq!(weights.names().len(), specs.len(), "one reference tensor per spec");
    assert!(params.h_layers.is_empty() && params.l_layers.len() == cfg.L_layers);
    let mixer = if mlp_t { "mlp_t.gate_up_proj" } else { "self_attn.qkv_proj" };
    assert!(specs.iter().any(|s| s.name == format!("model.inner.L_level.layers.1.{mixer}.weight")));

    // Gradients exist for the trainable tensors and the puzzle embedding, nothing else.
    let grad = TensorFile::open(&dir.join("grad.safetensors")).unwrap();
    let mut trainable = 0;
    for s in &specs {
        let has = grad.names().contains(&s.name);
        assert_eq!(has, s.kind != TensorKind::Buffer, "{}", s.name);
        if s.kind == TensorKind::Trainable {
            trainable += grad.f32(&s.name, Some(&s.shape)).unwrap().len();
        }
    }
    assert_eq!(trainable, cfg.num_trainable_params());
    assert_eq!(trainable, params.num_trainable(&cfg));

    let batch = load_batch(&dir.join("batch.safetensors"), &cfg).unwrap();
    for segments in [1, long] {
        let ours = forward_outputs(&Cpu, &cfg, &params, &batch, segments).unwrap();
        let reference = TensorFile::open(&dir.join(format!("forward_{segments}.safetensors"))).unwrap();
        let report = compare_all(&ours, &reference, if segments > 1 { BOUND_LONG } else { BOUND });
        assert!(!report.is_empty());
    }
    let ours = grad_outputs(&Cpu, &cfg, &params, &batch).unwrap();
    let names: Vec<&str> = ours.iter().map(|t| t.name.as_str()).collect();
    assert!(!names.contains(&"q_continue_loss") && !names.contains(&"target_q_continue"), "{names:?}");
    let report = compare_all(&ours, &TensorFile::open(&dir.join("grad.safetensors")).unwrap(), BOUND);
    eprintln!("{name} grad: worst {:?}", report.iter().map(|r| r.1).fold(0.0, f64::max));
}

#[test]
fn trm_mlp_matches_pytorch() {
    check("trm_mlp", true, 2);
}

#[test]
fn trm_attention_matches_pytorch() {
    check("trm_att", false, 6);
}

/// `hrm forward` on a TRM checkpoint: the CPU writes the reference's outputs; `--device auto`
/// on a machine with a GPU runs it on the CPU (the CUDA backend lacks TRM's ops); an explicit
/// device backend (the emulated CUDA device here) refuses the model with an error naming the
/// backend, not a panic.
#[test]
fn trm_forward_runs_on_the_cpu_and_is_refused_by_device_backends() {
    let dir = fixture_dir("trm_att");
    let tmp = tempfile::tempdir().unwrap();
    let run = |device: &str, out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hrm"))
            .args(["forward", "--segments", "1", "--device", device, "--checkpoint"])
            .arg(dir.join("weights.safetensors"))
            .arg("--batch")
            .arg(dir.join("batch.safetensors"))
            .arg("--out")
            .arg(tmp.path().join(out))
            .output()
            .unwrap()
    };
    let o = run("cpu", "cpu.safetensors");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = TensorFile::open(&tmp.path().join("cpu.safetensors")).unwrap();
    let want = TensorFile::open(&dir.join("forward_1.safetensors")).unwrap();
    let e = common::rel_err(&ours.f32("logits", None).unwrap(), &want.f32("logits", None).unwrap());
    assert!(e < BOUND, "logits: {e:e}");
    // (a device: a GPU, else the emulation; none in a build without kernels, which says so)
    if hrm::backend::cuda::CudaDevice::for_tests("trm_forward_is_refused_by_device_backends").is_none() {
        return;
    }
    // `auto` on a machine with a GPU (the emulated device posing as one) picks the CPU for TRM.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hrm"))
        .args(["forward", "--segments", "1", "--device", "auto", "--checkpoint"])
        .arg(dir.join("weights.safetensors"))
        .arg("--batch")
        .arg(dir.join("batch.safetensors"))
        .arg("--out")
        .arg(tmp.path().join("auto.safetensors"))
        .env("HRM_TEST_EMU_AS_GPU", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--device auto uses the CPU"), "{err}");
    let auto = TensorFile::open(&tmp.path().join("auto.safetensors")).unwrap();
    assert_eq!(auto.f32("logits", None).unwrap(), ours.f32("logits", None).unwrap(), "the CPU's bits");
    let o = run("emu", "emu.safetensors");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("arch trm does not run on the") && err.contains("--device cpu"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!tmp.path().join("emu.safetensors").exists());
}
