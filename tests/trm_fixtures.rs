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
use hrm::backend::cpu::bf16::CpuBf16;
use hrm::commands::{forward_outputs, grad_outputs, grad_outputs_of, load_batch};
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

/// The CUDA path (a GPU, else the CPU emulation) against the f32 CPU on the fixture's weights
/// and batch: the forward after 1 and N segments and every gradient of one training step, by
/// the bf16 rule of `backend_parity.rs` (`common::assert_bf16_rule`; floor 1e-3 of the RMS for
/// the forward, 2e-3 for gradients, as HRM's). The block weights are scaled by 0.3, as
/// `backend_parity.rs` does for 16 segments: with the fixtures' own weights the recursion
/// amplifies any rounding so fast that bf16 on the CPU is off by 0.3 of the logits' RMS after
/// one segment and decorrelated after two, and the rule would say nothing. The halting
/// decisions are compared where the q_halt margin is clear of the bf16 error.
fn check_cuda(name: &str, scale: f32, long: usize) {
    let Some(dev) = hrm::backend::cuda::CudaDevice::for_tests(&format!("trm_fixtures {name} (CUDA path)"))
    else {
        return;
    };
    let gpu = hrm::backend::cuda::Cuda::new(dev);
    let dir = fixture_dir(name);
    let (cfg, mut params) = load_checkpoint(&dir.join("weights.safetensors"), None).unwrap();
    for l in params.l_layers.iter_mut() {
        for w in [&mut l.qkv, &mut l.o, &mut l.gate_up, &mut l.down] {
            w.iter_mut().for_each(|v| *v *= scale);
        }
    }
    let batch = load_batch(&dir.join("batch.safetensors"), &cfg).unwrap();
    for segments in [1, long] {
        let want = forward_outputs(&Cpu, &cfg, &params, &batch, segments).unwrap();
        let sim = forward_outputs(&CpuBf16, &cfg, &params, &batch, segments).unwrap();
        let got = forward_outputs(&gpu, &cfg, &params, &batch, segments).unwrap();
        let n = common::assert_bf16_rule(&format!("{name} forward {segments}"), &got, &sim, &want, 1e-3);
        assert!(n >= 4, "{n} tensors compared");
        // The rule says something only while bf16 rounding has not decorrelated the recursion:
        // the yardstick's own error must stay well below the signal (hence the scaled weights).
        let (lw, ls) = (common::f32_of(&want[0]), common::f32_of(&sim[0]));
        assert_eq!(want[0].name, "logits");
        let rms = (lw.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / lw.len() as f64).sqrt();
        let yardstick = lw.iter().zip(&ls).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max) / rms;
        assert!(yardstick < 0.2, "{name} after {segments}: the bf16 yardstick is off by {yardstick} RMS");
    }
    let want = grad_outputs(&Cpu, &cfg, &params, &batch).unwrap();
    let sim = grad_outputs(&CpuBf16, &cfg, &params, &batch).unwrap();
    let got = grad_outputs(&gpu, &cfg, &params, &batch).unwrap();
    let n = common::assert_bf16_rule(&format!("{name} grad"), &got, &sim, &want, 2e-3);
    assert!(n >= 10, "{n} tensors compared");
    // Tensor cores want every leading dimension a multiple of 8. All of this model's GEMMs have
    // them but the lm head's (rows of `vocab` = 11 logits): the token mixing's rows of S = 97
    // positions are padded to 104 (`Backend::seq_row_len`).
    let unaligned: Vec<_> = (gpu.device().gemm().unwrap().unaligned_plans().into_iter())
        .filter(|(mnk, _)| !mnk.contains(&cfg.vocab_size))
        .collect();
    assert!(unaligned.is_empty(), "{name}: GEMMs off the tensor-core alignment: {unaligned:?}");
    let of = |ts: &[hrm::model::checkpoint::NamedTensor], n: &str| {
        common::f32_of(ts.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("no {n}")))
    };
    let (q_want, q_sim) = (of(&want, "q_halt_logits"), of(&sim, "q_halt_logits"));
    let margin = 2.0 * q_want.iter().zip(&q_sim).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) + 1e-3;
    let (h_want, h_got) = (of(&want, "halted"), of(&got, "halted"));
    for (b, q) in q_want.iter().enumerate() {
        if q.abs() > margin {
            assert_eq!(h_got[b], h_want[b], "{name}: row {b} halts differently with q_halt {q}");
        }
    }
}

const SCALE: f32 = 0.3;

#[test]
fn trm_mlp_on_the_cuda_path_matches_the_cpu() {
    check_cuda("trm_mlp", SCALE, 16);
}

#[test]
fn trm_attention_on_the_cuda_path_matches_the_cpu() {
    check_cuda("trm_att", SCALE, 8);
}

/// Recomputing the z-updates in the backward (`--activations recompute`) runs the same ops on
/// the same inputs: every gradient, loss and logit has the bits of the step that kept them, on
/// the CPU and on the CUDA path.
fn check_recompute<B: hrm::backend::Backend>(be: &B, name: &str) {
    use hrm::model::memory::SavedActivations;
    let dir = fixture_dir(name);
    let (cfg, params) = load_checkpoint(&dir.join("weights.safetensors"), None).unwrap();
    let batch = load_batch(&dir.join("batch.safetensors"), &cfg).unwrap();
    assert!(cfg.L_cycles >= 2, "{name}: more than one z-update to recompute");
    let run = |saved| {
        let mut model = hrm::hrm::Hrm::new(be, &cfg, &params);
        model.saved = saved;
        grad_outputs_of(be, &model, &batch).unwrap()
    };
    let (keep, recompute) = (run(SavedActivations::Keep), run(SavedActivations::Recompute));
    assert_eq!(keep.len(), recompute.len());
    for (k, r) in keep.iter().zip(&recompute) {
        let bits = |t| common::f32_of(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(k) == bits(r), "{name} on {}: {} differs when recomputed", be.name(), k.name);
    }
}

#[test]
fn recomputed_activations_give_the_same_bits() {
    check_recompute(&Cpu, "trm_mlp");
    check_recompute(&Cpu, "trm_att");
    if let Some(dev) = hrm::backend::cuda::CudaDevice::for_tests("trm_fixtures recompute (CUDA path)") {
        let gpu = hrm::backend::cuda::Cuda::new(dev);
        check_recompute(&gpu, "trm_mlp");
        check_recompute(&gpu, "trm_att");
    }
}

#[test]
fn trm_mlp_matches_pytorch() {
    check("trm_mlp", true, 2);
}

#[test]
fn trm_attention_matches_pytorch() {
    check("trm_att", false, 6);
}

/// `hrm forward` on a TRM checkpoint through the binary: the CPU writes the reference's
/// outputs; the CUDA path (`--device emu`, and `auto` where the emulated device poses as a GPU)
/// runs the same model and writes the same tensors (its accuracy is `check_cuda`'s business).
#[test]
fn trm_forward_runs_through_the_binary_on_both_backends() {
    let dir = fixture_dir("trm_att");
    let tmp = tempfile::tempdir().unwrap();
    let run = |device: &str, out: &str, as_gpu: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hrm"));
        c.args(["forward", "--segments", "1", "--device", device, "--checkpoint"])
            .arg(dir.join("weights.safetensors"))
            .arg("--batch")
            .arg(dir.join("batch.safetensors"))
            .arg("--out")
            .arg(tmp.path().join(out));
        if as_gpu {
            c.env("HRM_TEST_EMU_AS_GPU", "1");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        TensorFile::open(&tmp.path().join(out)).unwrap()
    };
    let ours = run("cpu", "cpu.safetensors", false);
    let want = TensorFile::open(&dir.join("forward_1.safetensors")).unwrap();
    let e = common::rel_err(&ours.f32("logits", None).unwrap(), &want.f32("logits", None).unwrap());
    assert!(e < BOUND, "logits: {e:e}");
    // (a device: a GPU, else the emulation; none in a build without kernels, which says so)
    if hrm::backend::cuda::CudaDevice::for_tests("trm_forward_runs_through_the_binary").is_none() {
        return;
    }
    let emu = run("emu", "emu.safetensors", false);
    let auto = run("auto", "auto.safetensors", true);
    for name in ["logits", "z_H", "z_L", "q_halt_logits"] {
        let (a, b) = (emu.f32(name, None).unwrap(), auto.f32(name, None).unwrap());
        assert_eq!(a, b, "{name}: auto picked the (emulated) GPU, with the same bits");
        assert_eq!(a.len(), ours.f32(name, None).unwrap().len(), "{name}");
        assert!(a.iter().all(|v| v.is_finite()), "{name}");
        assert_ne!(a, ours.f32(name, None).unwrap(), "{name}: bf16, not the CPU's bits");
    }
}

/// `--arch trm` picks TRM's Sudoku preset (trm-sudoku-mlp, TRM_SPEC section 4) where no preset
/// is named, and a preset of the other family is refused, naming both.
#[test]
fn arch_flag_picks_the_trm_preset_and_must_agree_with_a_named_one() {
    let hrm = || std::process::Command::new(env!("CARGO_BIN_EXE_hrm"));
    let o = hrm()
        .args(["bench", "--arch", "trm", "--device", "cpu", "--batch-size", "1", "--steps", "1"])
        .args(["--warmup", "0", "--infer-batch-size", "0", "--threads", "1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("| trm-sudoku-mlp | batch 1 | activations keep"), "{out}");
    for args in [
        &["bench", "--arch", "hrm", "--preset", "trm-demo"][..],
        &["demo", "--arch", "hrm", "--preset", "trm-demo", "--out", "/nonexistent/x"][..],
        &[
            "train",
            "--arch",
            "trm",
            "--preset",
            "sudoku",
            "--data",
            "/nonexistent/x",
            "--out",
            "/nonexistent/y",
        ][..],
    ] {
        let o = hrm().args(args).env("RUST_BACKTRACE", "0").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("--arch") && err.contains("describes a") && err.contains("model"),
            "{args:?}: {err}"
        );
    }
}
