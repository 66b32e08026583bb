//! The CUDA code path of the commands end to end through the binary, on the CPU emulation
//! (`--device emu`; on a GPU machine the same commands with `--device cuda` are run by
//! scripts/device-check): `hrm train` stopped and resumed, `hrm eval`, `hrm forward`,
//! `hrm grad` and `hrm solve`, with the outputs checked against the CPU backend's.

mod common;
use hrm::backend::cuda::{CudaDevice, DeviceKind};
use hrm::model::checkpoint::TensorFile;
use hrm::sudoku::board::board_to_string;
use hrm::train::data::blanked_puzzles;
use std::path::Path;
use std::process::Command;

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

fn run(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(c: &mut Command) -> String {
    let (success, out, err) = run(c);
    assert!(success, "{c:?} failed:\n{out}\n{err}");
    out
}

/// The emulation must be available wherever the kernels were built (CI); elsewhere skip.
fn emulation_available() -> bool {
    CudaDevice::for_tests("cuda_cli").is_some()
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"))
}

fn f32_tensor(path: &Path, name: &str) -> Vec<f32> {
    let f = TensorFile::open(path).unwrap();
    f.f32(name, None).unwrap()
}

fn rel_rms_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn train_resume_eval_solve_on_the_cuda_path() {
    if !emulation_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = blanked_puzzles(8, 5..10, 1);
    let held = blanked_puzzles(3, 5..10, 2);
    let lines = |v: &[([u8; 81], [u8; 81])]| {
        v.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect::<String>()
    };
    std::fs::write(d.join("train.txt"), lines(&train)).unwrap();
    std::fs::write(d.join("held.txt"), lines(&held)).unwrap();
    ok(hrm()
        .args(["data", "build", "--train", "8", "--augment", "1", "--out"])
        .arg(d.join("ds"))
        .arg(d.join("train.txt")));
    // A small model so the emulated run stays short: 1 layer per module, 3 segments.
    let cfg = d.join("arch.json");
    let mut arch = hrm::config::ModelConfig::tiny();
    arch.H_layers = 1;
    arch.L_layers = 1;
    arch.hidden_size = 32;
    arch.num_heads = 2;
    arch.puzzle_emb_ndim = 32;
    arch.halt_max_steps = 3;
    std::fs::write(&cfg, arch.to_json()).unwrap();

    let run_dir = d.join("run");
    let mut first = hrm();
    first
        .args(["train", "--device", "emu", "--data"])
        .arg(d.join("ds/train"))
        .arg("--eval")
        .arg(d.join("held.txt"));
    first.arg("--config").arg(&cfg);
    first.args(["--batch-size", "3", "--steps", "4", "--lr-warmup-steps", "1", "--eval-every", "4"]);
    first.args(["--checkpoint-every", "2", "--log-every", "1", "--stop-after", "2", "--out"]).arg(&run_dir);
    let (success, _, err) = run(&mut first);
    assert!(success, "{err}");
    assert!(err.contains("device: cuda"), "the run must say it runs on CUDA: {err}");
    assert!(run_dir.join("checkpoints/step_00000002/COMPLETE").exists());
    let (success, _, err) = run(hrm().args(["train", "--device", "emu", "--resume"]).arg(&run_dir));
    assert!(success, "{err}");
    let ck = run_dir.join("checkpoints/step_00000004/model.safetensors");
    assert!(ck.exists());
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let train_lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "train")
        .collect();
    assert_eq!(train_lines.len(), 4);
    for v in &train_lines {
        let lm = v["lm_loss"].as_f64().unwrap();
        assert!(lm.is_finite() && lm > 0.0, "{v}");
    }

    // The same run, uninterrupted, on the CPU: the bf16 path follows it closely (4 steps).
    let cpu_dir = d.join("run_cpu");
    let mut cpu = hrm();
    cpu.args(["train", "--device", "cpu", "--data"]).arg(d.join("ds/train")).arg("--config").arg(&cfg);
    cpu.args(["--batch-size", "3", "--steps", "4", "--lr-warmup-steps", "1", "--checkpoint-every", "4"]);
    cpu.args(["--log-every", "1", "--out"]).arg(&cpu_dir);
    ok(&mut cpu);
    let cpu_ck = cpu_dir.join("checkpoints/step_00000004/model.safetensors");
    let name = "model.inner.H_level.layers.0.self_attn.qkv_proj.weight";
    let (w_cuda, w_cpu) = (f32_tensor(&ck, name), f32_tensor(&cpu_ck, name));
    let w0 = {
        let p = hrm::model::HostParams::init(&arch, &mut hrm::rng::seeded(0));
        p.h_layers[0].qkv.clone()
    };
    // The update itself (w - w0) agrees: AdamATan2 steps are lr-sized and sign-like, so bf16
    // noise in the gradient flips few of them.
    let (du_cuda, du_cpu): (Vec<f32>, Vec<f32>) = (
        w_cuda.iter().zip(&w0).map(|(a, b)| a - b).collect(),
        w_cpu.iter().zip(&w0).map(|(a, b)| a - b).collect(),
    );
    let diff = rel_rms_diff(&du_cuda, &du_cpu);
    assert!(diff < 0.5, "CUDA and CPU updates after 4 steps differ by {diff} (relative RMS)");

    let table = ok(hrm().args(["eval", "--device", "emu", "--checkpoint"]).arg(&ck).arg(d.join("held.txt")));
    assert!(table.contains("held") && table.contains("exact"), "{table}");
    let out = ok(hrm()
        .args(["solve", "--device", "emu", "--checkpoint"])
        .arg(&ck)
        .arg(board_to_string(&held[0].0, '.')));
    assert!(out.contains("answer  "), "{out}");
}

#[test]
fn forward_and_grad_commands_on_the_cuda_path() {
    if !emulation_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w, batch) = (fixtures().join("weights.safetensors"), fixtures().join("batch.safetensors"));
    for device in ["cpu", "emu"] {
        ok(hrm()
            .args(["forward", "--device", device, "--segments", "2", "--checkpoint"])
            .arg(&w)
            .arg("--batch")
            .arg(&batch)
            .arg("--out")
            .arg(d.join(format!("fwd_{device}.safetensors"))));
        ok(hrm()
            .args(["grad", "--device", device, "--checkpoint"])
            .arg(&w)
            .arg("--batch")
            .arg(&batch)
            .arg("--out")
            .arg(d.join(format!("grad_{device}.safetensors"))));
    }
    // Logits after two segments: bf16 storage costs ~1e-2 relative, a wrong kernel O(1).
    let (a, b) = (
        f32_tensor(&d.join("fwd_emu.safetensors"), "logits"),
        f32_tensor(&d.join("fwd_cpu.safetensors"), "logits"),
    );
    let diff = rel_rms_diff(&a, &b);
    assert!(diff < 5e-2, "logits differ by {diff}");
    let g = TensorFile::open(&d.join("grad_emu.safetensors")).unwrap();
    let name = "model.inner.lm_head.weight";
    let (a, b) = (g.f32(name, None).unwrap(), f32_tensor(&d.join("grad_cpu.safetensors"), name));
    let diff = rel_rms_diff(&a, &b);
    assert!(diff < 5e-2, "{name} gradient differs by {diff}");
}

#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    if !matches!(hrm::backend::cuda::device::select(), Ok(DeviceKind::Emulation)) {
        return; // a real GPU (device-check runs the commands there) or no kernels at all
    }
    let (success, _, err) = run(hrm()
        .args(["forward", "--device", "cuda", "--checkpoint"])
        .arg(fixtures().join("weights.safetensors"))
        .arg("--batch")
        .arg(fixtures().join("batch.safetensors"))
        .arg("--out")
        .arg("/dev/null"));
    assert!(!success);
    assert!(err.contains("--device emu"), "{err}");
    // and why: the reason the driver gave (here, in CI: no driver library at all)
    let why = hrm::backend::cuda::device::emulation_reason().unwrap();
    assert!(err.contains(&format!("no usable GPU ({why})")), "{err}");
    if std::env::var_os("HRM_CUDA_EMU").is_none() {
        assert!(why.contains("NVIDIA driver") || why.contains("CUDA"), "{why}");
    }
}

/// Out of device memory, on an emulated device made small (`HRM_EMU_DEVICE_MEM_MB`): a run
/// the estimate already refuses stops before allocating, with the figures; a run that passes
/// the estimate (a lower bound) but does not fit stops at the allocation that failed, saying
/// how much was asked and free and what to change.
#[test]
fn out_of_device_memory_is_a_clear_error() {
    if !matches!(hrm::backend::cuda::device::select(), Ok(DeviceKind::Emulation)) {
        return; // the capacity knob belongs to the emulation
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let puzzles: String =
        blanked_puzzles(8, 5..10, 3).iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect();
    std::fs::write(d.join("train.txt"), puzzles).unwrap();
    ok(hrm()
        .args(["data", "build", "--train", "8", "--augment", "1", "--out"])
        .arg(d.join("ds"))
        .arg(d.join("train.txt")));
    let train = |mb: f64, out: &str| {
        run(hrm()
            .args([
                "train",
                "--device",
                "emu",
                "--preset",
                "tiny",
                "--batch-size",
                "64",
                "--steps",
                "1",
                "--data",
            ])
            .arg(d.join("ds/train"))
            .arg("--out")
            .arg(d.join(out))
            .env("HRM_EMU_DEVICE_MEM_MB", format!("{}", mb.ceil() as u64))
            .env("RUST_BACKTRACE", "0"))
    };

    // 64 MiB, of which the cuBLASLt workspace takes 32: the estimate refuses
    let (success, _, err) = train(64.0, "small");
    assert!(!success);
    let need_mib = mib_after(&err, "needs at least ").unwrap_or_else(|| panic!("no estimate in: {err}"));
    assert!(err.contains("of free GPU memory; 32.0 MiB is available"), "{err}");

    // room for the estimate and 1 MiB more: the estimate passes, an allocation fails
    let (success, _, err) = train(32.0 + need_mib + 1.0, "tight");
    assert!(!success);
    assert!(err.contains("out of GPU memory: allocating "), "{err}");
    assert!(err.contains(&format!("free of {:.1} MiB", (32.0 + need_mib + 1.0).ceil())), "{err}");
    assert!(err.contains("Use a smaller --batch-size"), "{err}");
}

/// The number of MiB right after `marker` ("... needs at least 54.2 MiB ..." -> 54.2).
fn mib_after(text: &str, marker: &str) -> Option<f64> {
    let rest = text.split(marker).nth(1)?;
    let (num, unit) = rest.split_once(' ')?;
    if unit.starts_with("MiB") { num.parse().ok() } else { None }
}

/// TRM on the CUDA path through the binary: `hrm train` (recorded step graphs, q_halt > 0
/// halting, the whole last recursion's backward) stopped at step 2 and resumed (recomputing
/// the activations instead of keeping them) ends with checkpoints bit-identical to an
/// uninterrupted run's; `hrm eval --perturb` and
/// `hrm analyze trajectory` run on its checkpoint.
#[test]
fn trm_train_resume_is_bit_identical_and_eval_analyze_run_on_the_cuda_path() {
    if !emulation_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lines = |v: &[([u8; 81], [u8; 81])]| {
        v.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect::<String>()
    };
    std::fs::write(d.join("train.txt"), lines(&blanked_puzzles(8, 5..10, 3))).unwrap();
    std::fs::write(d.join("held.txt"), lines(&blanked_puzzles(2, 3..6, 4))).unwrap();
    ok(hrm()
        .args(["data", "build", "--train", "8", "--augment", "1", "--out"])
        .arg(d.join("ds"))
        .arg(d.join("train.txt")));
    // A small TRM with the token-mixing MLP: 1 layer, 2 recursions of 2 z-updates, 3 segments.
    let arch = common::small_trm();
    let cfg = d.join("arch.json");
    std::fs::write(&cfg, arch.to_json()).unwrap();
    let train = |out: &str, stop: Option<&str>| {
        let mut c = hrm();
        c.args(["train", "--device", "emu", "--data"]).arg(d.join("ds/train")).arg("--config").arg(&cfg);
        c.args(["--batch-size", "3", "--steps", "4", "--lr-warmup-steps", "1", "--checkpoint-every", "2"]);
        c.args(["--log-every", "1", "--out"]).arg(d.join(out));
        if let Some(s) = stop {
            c.args(["--stop-after", s]);
        }
        let (success, _, err) = run(&mut c);
        assert!(success, "{err}");
        assert!(err.contains("device: cuda"), "the run must say it runs on CUDA: {err}");
        assert!(err.contains("activations: keep the last recursion's"), "the choice is logged: {err}");
    };
    train("full", None);
    train("split", Some("2"));
    // (resumed recomputing the recursion's z-updates in the backward: the same bits again)
    let (success, _, err) = run(hrm()
        .args(["train", "--device", "emu", "--activations", "recompute", "--resume"])
        .arg(d.join("split")));
    assert!(success, "{err}");
    assert!(err.contains("activations: recompute (--activations)"), "{err}");
    let ck = |run: &str| d.join(run).join("checkpoints/step_00000004");
    let files: Vec<_> = std::fs::read_dir(ck("full")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut compared = 0;
    for f in &files {
        let name = f.to_string_lossy();
        if !name.ends_with(".safetensors") {
            continue;
        }
        let (a, b) =
            (TensorFile::open(&ck("full").join(f)).unwrap(), TensorFile::open(&ck("split").join(f)).unwrap());
        assert_eq!(a.names(), b.names(), "{name}");
        for t in a.names() {
            if let (Ok(x), Ok(y)) = (a.f32(t, None), b.f32(t, None)) {
                let (x, y): (Vec<u32>, Vec<u32>) =
                    (x.iter().map(|v| v.to_bits()).collect(), y.iter().map(|v| v.to_bits()).collect());
                assert!(x == y, "{name} {t}: the resumed TRM run differs from the uninterrupted one");
                compared += 1;
            }
        }
    }
    assert!(compared >= 8, "{compared} tensors compared in {files:?}");
    let model = ck("full").join("model.safetensors");
    let w0 = hrm::model::HostParams::init(&arch, &mut hrm::rng::seeded(0));
    let qkv = f32_tensor(&model, "model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight");
    assert_ne!(qkv, w0.l_layers[0].qkv, "the token-mixing weights were trained");

    let table = ok(hrm()
        .args(["eval", "--device", "emu", "--perturb", "relabel9", "--checkpoint"])
        .arg(&model)
        .arg(d.join("held.txt")));
    assert!(table.contains("vote") && table.contains("verify"), "{table}");
    ok(hrm()
        .args(["analyze", "trajectory", "--device", "emu", "--checkpoint"])
        .arg(&model)
        .arg("--out")
        .arg(d.join("analysis"))
        .arg(d.join("held.txt")));
    let traj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("analysis/trajectory.json")).unwrap()).unwrap();
    assert!(traj.is_object(), "{traj}");
}
