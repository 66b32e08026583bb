//! `hrm data ...` end to end through the binary.

use std::path::Path;
use std::process::Command;

const GOOD: &str = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........";

fn hrm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hrm")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn import_fails_with_file_line_and_writes_nothing_then_skip_invalid_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("set.txt");
    std::fs::write(&input, format!("# comment\n{GOOD}\n{}\n", &GOOD[..70])).unwrap();
    let out = dir.path().join("out.csv");
    let (ok, _, err) = hrm(&["data", "import", s(&input), "--out", s(&out)]);
    assert!(!ok);
    assert!(err.contains("set.txt:3:") && err.contains("expected 81"), "{err}");
    assert!(!out.exists(), "nothing may be written on failure");

    let (ok, _, err) = hrm(&["data", "import", s(&input), "--out", s(&out), "--skip-invalid"]);
    assert!(ok, "{err}");
    assert!(err.contains("skipped") && err.contains("set.txt:3:"), "{err}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], "source,question,answer,rating");
    assert!(lines[1].starts_with(&format!("set,{GOOD},468931527")), "{}", lines[1]);
}

#[test]
fn generate_build_stats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("gen.csv");
    let (ok, _, err) =
        hrm(&["data", "generate", "-n", "12", "--mode", "minimal", "--seed", "3", "--out", s(&csv)]);
    assert!(ok, "{err}");
    let ds = dir.path().join("ds");
    let (ok, out, err) = hrm(&[
        "data",
        "build",
        s(&csv),
        "--out",
        s(&ds),
        "--train",
        "8",
        "--test",
        "2",
        "--augment",
        "3",
        "--hints",
        "--seed",
        "5",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("train: 8 puzzles, 64 examples in 8 groups"), "{out}");
    let (ok, out, err) = hrm(&["data", "stats", s(&ds.join("train")), s(&csv)]);
    assert!(ok, "{err}");
    assert!(out.contains("64 examples, 8 groups"), "{out}");
    assert!(out.contains("12 puzzles"), "{out}");
    // Too few puzzles is a clean error.
    let (ok, _, err) = hrm(&["data", "build", s(&csv), "--out", s(&ds), "--train", "50"]);
    assert!(!ok);
    assert!(err.contains("need 50 distinct puzzles"), "{err}");
}
