//! Ctrl-C or SIGTERM during `hrm train` (a scheduler's preemption, `timeout`): the step under
//! way finishes, a checkpoint is written, the exit status is 128 + signal, and `--resume`
//! continues from there to the same final weights as a run never interrupted.

use hrm::sudoku::board::board_to_string;
use hrm::train::data::blanked_puzzles;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hrm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrm"));
    c.env("RUST_BACKTRACE", "0");
    c
}

fn must(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn train(d: &Path, run: &str, steps: u64) -> Command {
    let mut c = hrm();
    c.current_dir(d).args([
        "--threads",
        "1",
        "train",
        "--data",
        "ds/train",
        "--out",
        run,
        "--preset",
        "tiny",
    ]);
    c.args(["--batch-size", "4", "--lr-warmup-steps", "1", "--log-every", "1", "--checkpoint-every", "1000"]);
    c.args(["--steps", &steps.to_string()]);
    c
}

fn complete_steps(run: &Path) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(run.join("checkpoints")) else { return vec![] };
    let mut v: Vec<u64> = dir
        .filter_map(|e| {
            let p = e.ok()?.path();
            let n = p.file_name()?.to_str()?.strip_prefix("step_")?.parse().ok()?;
            p.join("COMPLETE").exists().then_some(n)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sigterm_and_sigint_write_a_checkpoint_and_resume_reaches_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let puzzles: String =
        blanked_puzzles(12, 10..20, 1).iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect();
    std::fs::write(d.join("train.txt"), puzzles).unwrap();
    must(hrm().current_dir(d).args([
        "data",
        "build",
        "--train",
        "10",
        "--augment",
        "1",
        "--out",
        "ds",
        "train.txt",
    ]));
    let steps = 150;
    must(&mut train(d, "straight", steps));

    for (signal, run) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let child = train(d, run, steps).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Wait for a few logged steps, then signal.
        let metrics = d.join(run).join("metrics.jsonl");
        let start = Instant::now();
        while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 3 {
            assert!(start.elapsed() < Duration::from_secs(60), "no progress in {run}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + signal), "{stderr}");
        assert!(stderr.contains("interrupted by SIG") && stderr.contains("--resume"), "{stderr}");
        let saved = complete_steps(&d.join(run));
        assert_eq!(saved.len(), 1, "one checkpoint at the interruption: {saved:?}");
        assert!(saved[0] > 0 && saved[0] < steps, "stopped at step {} of {steps}", saved[0]);
        assert!(stderr.contains(&format!("stopped at step {}", saved[0])), "{stderr}");

        let mut resume = hrm();
        resume.current_dir(d).args(["--threads", "1", "train", "--resume", run]);
        must(&mut resume);
        let last = format!("checkpoints/step_{steps:08}/model.safetensors");
        let a = std::fs::read(d.join("straight").join(&last)).unwrap();
        let b = std::fs::read(d.join(run).join(&last)).unwrap();
        assert!(a == b, "{run}: resumed weights differ from the uninterrupted run's");
    }
}
