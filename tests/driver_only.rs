//! "A GPU node with only a driver", simulated on the CPU emulation: `HRM_TEST_EMU_AS_GPU=1`
//! (test only) makes `--device auto` / `--device cuda` treat the emulated device as a GPU, and
//! the emulation plays what such a node lacks: an old driver (`HRM_EMU_DRIVER_VERSION`), no
//! cuBLASLt (`HRM_EMU_NO_CUBLASLT=1` with the search pointed at an empty directory), no
//! device memory to start (`HRM_EMU_DEVICE_MEM_MB`). `auto` must fall back to the CPU with one
//! warning naming the reason and give the CPU's results; `cuda` must fail with the same reason.
//! `hrm doctor` reports the machine (text and JSON) without panicking.

use hrm::backend::cuda::{DeviceKind, device, libraries, module};
use hrm::model::checkpoint::TensorFile;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hrm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrm"));
    for v in [
        "HRM_TEST_EMU_AS_GPU",
        "HRM_EMU_DRIVER_VERSION",
        "HRM_EMU_NO_CUBLASLT",
        "HRM_CUDA_LIB_DIR",
        "HRM_EMU_DEVICE_MEM_MB",
        "HRM_CUDA_EMU",
        "HRM_REQUIRE_GPU",
    ] {
        c.env_remove(v);
    }
    c.env("RUST_BACKTRACE", "0");
    c
}

fn run(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Only where this machine has no GPU and the emulation was built (CI): the simulated node
/// is the emulation.
fn on_emulation() -> bool {
    matches!(device::select(), Ok(DeviceKind::Emulation))
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"))
}

fn forward(device: &str, out: &Path, env: &[(&str, String)]) -> (bool, String) {
    let mut c = hrm();
    c.args(["forward", "--device", device, "--segments", "2", "--checkpoint"])
        .arg(fixtures().join("weights.safetensors"))
        .arg("--batch")
        .arg(fixtures().join("batch.safetensors"))
        .arg("--out")
        .arg(out);
    for (k, v) in env {
        c.env(k, v);
    }
    let (ok, _, err) = run(&mut c);
    (ok, err)
}

fn logits(path: &Path) -> Vec<f32> {
    TensorFile::open(path).unwrap().f32("logits", None).unwrap()
}

/// What the driver-too-old message must name: the driver's CUDA version, the toolkit, the
/// minimum driver, and (for a CUDA 13 build) the CUDA 12 build as the other way out.
fn old_driver_reasons() -> Vec<String> {
    let toolkit = module::TOOLKIT.unwrap_or("?");
    let minimum = module::minimum_driver_cuda_version().and_then(module::linux_driver_for).unwrap_or(0);
    let mut reasons = vec![
        "supports CUDA 12.4".into(),
        format!("built with CUDA {toolkit}"),
        format!("driver to >= {minimum}"),
    ];
    if libraries::cuda_major() == 13 {
        reasons.push("setup-cuda --cuda 12".into());
    }
    reasons
}

/// One way a GPU node can be unusable: its name, the environment that plays it, and what the
/// message must name.
type BrokenNode = (&'static str, Vec<(&'static str, String)>, Vec<String>);

/// Each way a GPU node can be unusable.
fn broken_nodes(empty_dir: &Path) -> Vec<BrokenNode> {
    vec![
        ("driver too old", vec![("HRM_EMU_DRIVER_VERSION", "12040".into())], old_driver_reasons()),
        (
            "cuBLASLt missing",
            vec![("HRM_EMU_NO_CUBLASLT", "1".into()), ("HRM_CUDA_LIB_DIR", empty_dir.display().to_string())],
            vec!["cuBLASLt".into(), "not found".into(), empty_dir.display().to_string(), "setup-cuda".into()],
        ),
        (
            // smaller than the cuBLASLt workspace the device needs when it opens
            "no device memory",
            vec![("HRM_EMU_DEVICE_MEM_MB", "8".into())],
            vec!["cuBLASLt workspace".into()],
        ),
    ]
}

#[test]
fn auto_falls_back_to_the_cpu_and_cuda_fails_with_the_reason() {
    if !on_emulation() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = d.join("no-libraries");
    std::fs::create_dir_all(&empty).unwrap();
    let cpu_out = d.join("cpu.safetensors");
    let (ok, err) = forward("cpu", &cpu_out, &[]);
    assert!(ok, "{err}");
    let cpu = logits(&cpu_out);

    // The switch works: with nothing broken, auto takes the (emulated) GPU.
    let (ok, err) = forward("auto", &d.join("gpu.safetensors"), &[("HRM_TEST_EMU_AS_GPU", "1".into())]);
    assert!(ok, "{err}");
    assert!(err.contains("hrm cuda:") && !err.contains("WARNING"), "auto must open the device: {err}");

    for (what, env, reasons) in broken_nodes(&empty) {
        let mut env = env;
        env.push(("HRM_TEST_EMU_AS_GPU", "1".into()));
        let out = d.join(format!("auto-{}.safetensors", what.replace(' ', "-")));
        let (ok, err) = forward("auto", &out, &env);
        assert!(ok, "{what}: --device auto must run on the CPU: {err}");
        assert_eq!(err.matches("WARNING").count(), 1, "{what}: one warning: {err}");
        assert!(err.contains("runs on the CPU"), "{what}: {err}");
        for r in &reasons {
            assert!(err.contains(r.as_str()), "{what}: the warning must name {r:?}: {err}");
        }
        assert_eq!(logits(&out), cpu, "{what}: the fallback must compute what --device cpu computes");

        let (ok, err) = forward("cuda", &d.join("cuda.safetensors"), &env);
        assert!(!ok, "{what}: --device cuda must fail");
        assert!(err.contains("--device cuda: a GPU is present but unusable"), "{what}: {err}");
        for r in &reasons {
            assert!(err.contains(r.as_str()), "{what}: the error must name {r:?}: {err}");
        }
    }
}

/// In normal use (no test switch) `auto` never picks the emulation, and says nothing.
#[test]
fn auto_never_picks_the_emulation() {
    if !on_emulation() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = forward("auto", &dir.path().join("a.safetensors"), &[]);
    assert!(ok, "{err}");
    assert!(!err.contains("hrm cuda:") && !err.contains("WARNING"), "{err}");
}

fn doctor_json(env: &[(&str, String)]) -> serde_json::Value {
    let mut c = hrm();
    c.args(["--threads", "1", "doctor", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let (ok, out, err) = run(&mut c);
    assert!(ok, "hrm doctor --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn doctor_reports_the_machine_and_the_choice_of_auto() {
    let (ok, text, err) = run(hrm().arg("doctor"));
    assert!(ok, "hrm doctor failed: {err}");
    for line in
        ["NVIDIA driver", "GPUs", "CUDA kernels", "cuBLASLt", "NCCL", "CPU emulation", "CPU", "--device auto"]
    {
        assert!(text.lines().any(|l| l.starts_with(line)), "no {line:?} line in:\n{text}");
    }

    let r = doctor_json(&[]);
    assert_eq!(r["cpu"]["threads"], 1, "--threads is reported: {r}");
    let choice = r["auto"]["choice"].as_str().unwrap();
    assert!(choice == "cuda" || choice == "cpu", "{r}");
    let has_driver = r["driver"]["found"].as_bool().unwrap();
    if !has_driver {
        assert_eq!(choice, "cpu");
        assert!(r["auto"]["reason"].as_str().unwrap().contains("no NVIDIA driver"), "{r}");
        assert_eq!(r["gpus"].as_array().unwrap().len(), 0);
    }
    if hrm::backend::cuda::module::HAS_KERNELS {
        assert_eq!(r["kernels"]["toolkit"].as_str(), hrm::backend::cuda::module::TOOLKIT, "{r}");
        assert!(r["kernels"]["minimum_linux_driver"].as_u64().unwrap() >= 570, "{r}");
    }
    // `scripts/setup-cuda` (`--cuda 12` for a CUDA 12 build) installed the pinned cuBLASLt:
    // the search finds it in the project's venv.
    let (venv, pin) = match libraries::cuda_major() {
        12 => (".venv-cuda12", "nvidia-cublas-cu12==12.8"),
        _ => (".venv-cuda", "nvidia-cublas==13.0"),
    };
    let pins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(venv).join(".hrm-pins");
    if std::fs::read_to_string(pins).is_ok_and(|p| p.contains(pin)) {
        let path = r["cublaslt"]["path"].as_str().unwrap_or_else(|| panic!("cuBLASLt not found: {r}"));
        assert!(path.contains(venv) && path.ends_with(&libraries::cublaslt_file()), "{path}");
        let version = &pin[pin.len() - 4..]; // "13.0" / "12.8"
        assert!(r["cublaslt"]["version"].as_str().unwrap().starts_with(version), "{r}");
    }

    if on_emulation() {
        assert_eq!(r["emulation"]["built"], true);
        // The simulated old-driver node: doctor says auto runs on the CPU, and why.
        let r =
            doctor_json(&[("HRM_TEST_EMU_AS_GPU", "1".into()), ("HRM_EMU_DRIVER_VERSION", "12040".into())]);
        assert_eq!(r["auto"]["choice"], "cpu", "{r}");
        assert!(r["auto"]["reason"].as_str().unwrap().contains("supports CUDA 12.4"), "{r}");
        let r = doctor_json(&[("HRM_TEST_EMU_AS_GPU", "1".into())]);
        assert_eq!(r["auto"]["choice"], "cuda", "{r}");
    }
}
