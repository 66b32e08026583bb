//! `scripts/device-check` runs only on a GPU machine, rarely and against a hard time limit, so
//! its control flow is tested here with stand-in test binaries: a failure fails the run, a
//! section without time left is skipped and named (INCOMPLETE, never PASS), `--only` selects
//! sections, the GPU tests get `HRM_REQUIRE_GPU=1` (and `HRM_CUDA_PTX=1` for the PTX pass), the
//! packed bundle that `--prepare` leaves is unpacked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch tree holding a copy of the script and `.device/bin` with the given stand-ins.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(binaries: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("scripts")).unwrap();
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/device-check"),
            root.join("scripts/device-check"),
        )
        .unwrap();
        fs::create_dir_all(root.join(".device/bin")).unwrap();
        for (name, body) in binaries {
            let path = root.join(".device/bin").join(name);
            fs::write(&path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Tree { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the script; returns (exit code, report text).
    fn run(&self, args: &[&str], budget_s: u32) -> (i32, String) {
        let out: PathBuf = self.root().join("out");
        let status = Command::new("bash")
            .arg(self.root().join("scripts/device-check"))
            .args(args)
            .env("OUT", &out)
            .env("DEVICE_CHECK_BUDGET_S", budget_s.to_string())
            .env_remove("HRM_REQUIRE_GPU")
            .env_remove("HRM_CUDA_PTX")
            .output()
            .unwrap();
        let report = fs::read_to_string(out.join("device-report.txt")).unwrap_or_default();
        (status.status.code().unwrap_or(-1), report)
    }
}

/// A stand-in test binary that passes and appends the GPU variables it saw to `env.log`.
const PASSING: &str = r#"echo "gpu=${HRM_REQUIRE_GPU:-} ptx=${HRM_CUDA_PTX:-}" >> env.log
echo "test result: ok. 3 passed; 0 failed""#;

#[test]
fn passing_sections_pass_and_the_tests_require_the_gpu() {
    let tree = Tree::new(&[("kernels_fake", PASSING)]);
    let (code, report) = tree.run(&["--only", "tests,ptx"], 560);
    assert_eq!(code, 0, "report:\n{report}");
    assert!(report.contains("ok   cubin kernels_fake"), "{report}");
    assert!(report.contains("ok   ptx kernels_fake"), "{report}");
    assert!(report.contains("== overall: PASS"), "{report}");
    let env = fs::read_to_string(tree.root().join("env.log")).unwrap();
    assert_eq!(env, "gpu=1 ptx=\ngpu=1 ptx=1\n", "cubin pass then PTX pass");
}

#[test]
fn a_failing_test_binary_fails_the_run() {
    let tree = Tree::new(&[
        ("kernels_fake", PASSING),
        ("kernels_bad", "echo 'test result: FAILED. 1 passed; 1 failed'; exit 101"),
    ]);
    let (code, report) = tree.run(&["--only", "tests"], 560);
    assert_eq!(code, 1, "report:\n{report}");
    assert!(report.contains("FAIL cubin kernels_bad (exit 101)"), "{report}");
    assert!(report.contains("ok   cubin kernels_fake"), "{report}");
    assert!(report.contains("== overall: FAIL"), "{report}");
}

#[test]
fn sections_without_time_are_skipped_named_and_never_pass() {
    let tree = Tree::new(&[("kernels_fake", PASSING)]);
    // 30 s is less than either section needs to start
    let (code, report) = tree.run(&["--only", "tests,ptx"], 30);
    assert_eq!(code, 3, "report:\n{report}");
    assert!(report.contains("SKIP tests"), "{report}");
    assert!(report.contains("SKIP ptx"), "{report}");
    assert!(!report.contains("overall: PASS"), "{report}");
    assert!(report.contains("bash scripts/device-check --only tests,ptx"), "{report}");
    assert!(!tree.root().join("env.log").exists(), "a skipped section ran a binary");
}

#[test]
fn a_packed_bundle_is_unpacked_and_run() {
    // what `--prepare` leaves to be carried: .device/bundle.tar.xz and nothing else
    let tree = Tree::new(&[("kernels_fake", PASSING)]);
    let dev = tree.root().join(".device");
    let packed = Command::new("bash")
        .arg("-c")
        .arg("tar -cf - bin | xz -1 > bundle.tar.xz && rm -r bin")
        .current_dir(&dev)
        .status()
        .unwrap();
    assert!(packed.success());
    assert!(!dev.join("bin").exists());
    let (code, report) = tree.run(&["--only", "tests"], 560);
    assert_eq!(code, 0, "report:\n{report}");
    assert!(report.contains("ok   cubin kernels_fake"), "{report}");
}

#[test]
fn bad_arguments_and_a_missing_build_are_refused() {
    let tree = Tree::new(&[("kernels_fake", PASSING)]);
    let (code, _) = tree.run(&["--only", "tests,nonsense"], 560);
    assert_eq!(code, 2);
    let (code, _) = tree.run(&["--bogus"], 560);
    assert_eq!(code, 2);
    fs::remove_dir_all(tree.root().join(".device")).unwrap();
    let (code, report) = tree.run(&[], 560);
    assert_eq!(code, 2);
    assert!(report.contains("--prepare"), "{report}");
}

/// The CLI section for real, with this build's `hrm` on the CPU emulation at a small size
/// (`DEVICE_CHECK_DEVICE=emu`): every command of the section runs and passes, and the same run
/// twice with one seed writes bit-identical checkpoints. So a broken flag, path or checkpoint
/// name in the section shows here, not in the one short window on a GPU.
#[test]
fn the_cli_section_passes_end_to_end_on_the_emulation() {
    if !hrm::backend::cuda::module::HAS_KERNELS {
        eprintln!(
            "device_check_script: built without kernels (no nvcc); the emulated CLI section is skipped"
        );
        return;
    }
    let tree = Tree::new(&[]);
    let root = tree.root();
    fs::copy(env!("CARGO_BIN_EXE_hrm"), root.join(".device/hrm")).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    fs::create_dir_all(root.join("tests/fixtures/tiny")).unwrap();
    for f in ["weights.safetensors", "batch.safetensors"] {
        fs::copy(fixtures.join(f), root.join("tests/fixtures/tiny").join(f)).unwrap();
    }
    let out = root.join("out");
    let status = Command::new("bash")
        .arg(root.join("scripts/device-check"))
        .args(["--only", "cli"])
        .env("OUT", &out)
        .env("DEVICE_CHECK_DEVICE", "emu")
        .env("DEVICE_CHECK_BUDGET_S", "900")
        .env_remove("HRM_REQUIRE_GPU")
        .output()
        .unwrap();
    let report = fs::read_to_string(out.join("device-report.txt")).unwrap_or_default();
    let logs = fs::read_to_string(out.join("device-logs.txt")).unwrap_or_default();
    let tail: String =
        logs.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_eq!(status.status.code(), Some(0), "report:\n{report}\nlog tail:\n{tail}");
    let labels = ["generate", "build", "train", "resume", "eval", "eval-perturb", "forward", "deterministic"];
    for label in labels.into_iter().chain(["train-trm", "resume-trm", "eval-perturb-trm"]) {
        assert!(report.contains(&format!("ok   cli {label}")), "{label} missing:\n{report}");
    }
    assert!(!report.contains("FAIL"), "{report}");
}
