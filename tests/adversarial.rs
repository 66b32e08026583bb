//! The adversarial suite: the CLI driven as a hostile or careless user would, one case per
//! line of a table, over every class of `docs/RELIABILITY.md` (special and aliased outputs,
//! foreign checkpoints, absurd counts, corrupt state, bad configs, bad environment variables,
//! empty and streamed inputs, inconsistent runs, leftovers of killed runs).
//!
//! Each case runs in a fresh copy of one prepared directory (a checkpoint, puzzle files, a
//! dataset, two trained runs), as its working directory, under an address-space limit and a
//! wall-clock limit, and must:
//! - end by itself with the expected outcome: no panic (status 101), no abort or kill by a
//!   signal (134, 137: out of memory included), no hang past the limit;
//! - say what happened: a failure names the flag, file, variable or tensor it is about;
//! - touch nothing but the paths the case names as its outputs (a byte-for-byte snapshot of
//!   the directory before and after), so inputs are unchanged.

mod common;

use common::cli::{Snapshot, changes, snapshot};
use hrm::sudoku::board::board_to_string;
use hrm::train::data::blanked_puzzles;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Address space of one run of the binary: the memory a case may use before the allocator
/// fails (which must end in a clear error, never in an abort).
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;
/// Peak resident memory of one run: every case here needs little when it is handled (a count
/// too large for the machine is refused, a large input streamed).
const PEAK_MEMORY_LIMIT: u64 = 1 << 30;
/// Wall clock of one run: every case here finishes in seconds when it is handled.
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// What a case must end in.
enum Expect {
    /// Exit status 0.
    Ok,
    /// Either exit status 0 or a failure saying every one of these strings (a job that may
    /// fit or not, depending on the machine's memory).
    OkOrFails(&'static [&'static str]),
    /// A non-zero status with every one of these strings on stderr.
    Fails(&'static [&'static str]),
}

struct Case {
    /// The class of RELIABILITY.md (the defect number it was found as).
    class: &'static str,
    args: &'static [&'static str],
    /// Working directory relative to the sandbox ("" for the sandbox itself).
    cwd: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// Prepares the sandbox beyond the template (a corrupt file, a FIFO, a link).
    setup: fn(&Path),
    /// Fed to standard input (a pipe), if any.
    stdin: Option<&'static str>,
    expect: Expect,
    /// Paths (relative to the sandbox) the case may change; nothing else may.
    outputs: &'static [&'static str],
    /// Checks the sandbox and the standard output after the run (beyond the snapshot).
    after: fn(&Path, &str) -> Result<(), String>,
}

const NOTHING: fn(&Path) = |_| {};
const NO_CHECK: fn(&Path, &str) -> Result<(), String> = |_, _| Ok(());

const CASE: Case = Case {
    class: "",
    args: &[],
    cwd: "",
    env: &[],
    setup: NOTHING,
    stdin: None,
    expect: Expect::Ok,
    outputs: &[],
    after: NO_CHECK,
};

fn hrm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrm"));
    c.env("RUST_BACKTRACE", "0");
    c
}

fn puzzle_lines(n: usize, blanks: std::ops::Range<usize>, seed: u64) -> String {
    blanked_puzzles(n, blanks, seed).iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect()
}

/// The prepared directory every case starts from, made once per test binary.
fn template() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let must = |c: &mut Command| {
            let o = c.current_dir(d).output().unwrap();
            assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        std::fs::write(d.join("held.txt"), puzzle_lines(4, 10..20, 2)).unwrap();
        std::fs::write(d.join("train.txt"), puzzle_lines(12, 10..20, 1)).unwrap();
        must(hrm().args(["init", "--preset", "tiny", "--out", "ck.safetensors"]));
        must(
            hrm()
                .args(["data", "build", "--train", "10", "--test", "2", "--augment", "1", "--out", "ds"])
                .arg("train.txt"),
        );
        let train = |run: &str, seed: &str| {
            let mut c = hrm();
            c.args(["--threads", "1", "train", "--data", "ds/train", "--out", run, "--preset", "tiny"]);
            c.args([
                "--batch-size",
                "4",
                "--lr-warmup-steps",
                "1",
                "--log-every",
                "1",
                "--checkpoint-every",
                "2",
            ]);
            c.args(["--keep", "10", "--steps", "4", "--seed", seed]);
            c
        };
        must(&mut train("run", "0"));
        must(&mut train("run2", "1"));
        dir
    })
    .path()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dest).unwrap();
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Runs one case in a fresh sandbox; returns what went wrong, if anything.
fn check(case: &Case) -> Result<(), String> {
    let sandbox = tempfile::tempdir().unwrap();
    let d = sandbox.path();
    copy_tree(template(), d);
    (case.setup)(d);
    let before: Snapshot = snapshot(d);
    let mut c = hrm();
    c.args(case.args).current_dir(d.join(case.cwd)).envs(case.env.iter().copied());
    c.stdin(if case.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: setrlimit(2) between fork and exec touches no state of the parent.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: ADDRESS_SPACE_LIMIT, rlim_max: ADDRESS_SPACE_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let what = format!("[{}] hrm {}", case.class, case.args.join(" "));
    #[expect(clippy::zombie_processes, reason = "reaped by wait4 below, which also gives its peak memory")]
    let mut child = c.spawn().unwrap();
    if let Some(text) = case.stdin {
        let mut pipe = child.stdin.take().unwrap();
        // A command that stops reading early closes the pipe: not an error of the case.
        let _ = pipe.write_all(text.as_bytes());
    }
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let start = Instant::now();
    // Polled with wait4(2) for the peak resident memory of the run.
    let pid = child.id() as libc::pid_t;
    let status = loop {
        let mut raw = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
        if r == pid {
            break Some((std::process::ExitStatus::from_raw(raw), usage.ru_maxrss as u64 * 1024));
        }
        if start.elapsed() > TIME_LIMIT {
            // The whole process group: ranks a launcher started go too.
            // SAFETY: kill(2) of the group this test created for the child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let tail = |s: &str| s.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
    let report = |why: String| {
        Err(format!("{what}: {why}\n--- stdout:\n{}\n--- stderr:\n{}", tail(&stdout), tail(&stderr)))
    };
    let Some((status, peak)) = status else {
        return report(format!("still running after {} s (a hang)", TIME_LIMIT.as_secs()));
    };
    if peak > PEAK_MEMORY_LIMIT {
        return report(format!(
            "used {} MiB of memory at its peak (bound: {} MiB)",
            peak >> 20,
            PEAK_MEMORY_LIMIT >> 20
        ));
    }
    if let Some(sig) = status.signal() {
        return report(format!("killed by signal {sig}"));
    }
    if status.code() == Some(101) || stderr.contains("panicked") {
        return report("panicked".into());
    }
    match case.expect {
        Expect::Ok if !status.success() => return report(format!("failed with {status}, expected success")),
        Expect::Fails(_) if status.success() => return report("succeeded, expected a clear failure".into()),
        Expect::Fails(says) | Expect::OkOrFails(says) if !status.success() => {
            if let Some(w) = says.iter().find(|w| !stderr.contains(*w)) {
                return report(format!("the error does not say {w:?}"));
            }
        }
        _ => {}
    }
    let changed = changes(&before, &snapshot(d), case.outputs);
    if !changed.is_empty() {
        return report(format!(
            "touched paths other than its outputs {:?}:\n{}",
            case.outputs,
            changed.join("\n")
        ));
    }
    (case.after)(d, &stdout).or_else(report)
}

fn run_all(cases: &[Case]) {
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers for setups

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) reads a NUL-terminated path owned here.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", p.display());
}

/// Rewrites a safetensors file: `edit` sees each tensor's name, dtype and raw little-endian
/// bytes, `meta` the string metadata.
fn rewrite(
    file: &Path,
    edit: impl Fn(&str, safetensors::Dtype, &mut [u8]),
    meta: impl Fn(&mut std::collections::HashMap<String, String>),
) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    meta(&mut metadata);
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for t in &mut owned {
        edit(&t.0, t.1, &mut t.3);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(file, safetensors::serialize(views, &Some(metadata)).unwrap()).unwrap();
}

/// Sets the first element of the integer tensor `name` of the newest checkpoint of `run` to a
/// value no valid state holds.
fn corrupt_carry(d: &Path, name: &'static str) {
    rewrite(
        &d.join("run/checkpoints/step_00000004/state.safetensors"),
        |n, dt, b| {
            if n == name {
                first_int_huge(dt, b)
            }
        },
        |_| {},
    );
}

/// Sets the first element of an integer tensor to a value no valid state holds.
fn first_int_huge(d: safetensors::Dtype, b: &mut [u8]) {
    match d {
        safetensors::Dtype::I32 => b[..4].copy_from_slice(&1_000_000i32.to_le_bytes()),
        safetensors::Dtype::I64 => b[..8].copy_from_slice(&1_000_000i64.to_le_bytes()),
        safetensors::Dtype::U8 | safetensors::Dtype::BOOL => b[0] = 200,
        other => panic!("not an integer tensor: {other:?}"),
    }
}

/// Scales every f32 of a tensor by 1e30: finite, but far past what any activation survives.
fn floats_huge(d: safetensors::Dtype, b: &mut [u8]) {
    if d != safetensors::Dtype::F32 {
        return;
    }
    for c in b.chunks_exact_mut(4) {
        let x = f32::from_le_bytes(c.try_into().unwrap()) * 1e30;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// Writes `NAME` holding the tiny preset's config with `edit` applied.
fn config_with(d: &Path, name: &str, edit: fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&hrm::config::ModelConfig::preset("tiny").unwrap().to_json()).unwrap();
    edit(&mut v);
    std::fs::write(d.join(name), v.to_string()).unwrap();
}

/// A batch file of `n` copies of the held-out set's first puzzle.
fn batch_file(d: &Path, name: &str, n: usize) {
    let text = std::fs::read_to_string(d.join("held.txt")).unwrap();
    let board: Vec<i32> = text
        .lines()
        .next()
        .unwrap()
        .bytes()
        .map(|c| if c == b'.' { 1 } else { (c - b'0') as i32 + 1 })
        .collect();
    assert_eq!(board.len(), 81);
    let inputs: Vec<i32> = (0..n).flat_map(|_| board.iter().copied()).collect();
    let tensors = [
        hrm::model::checkpoint::NamedTensor::i32("inputs", vec![n, 81], inputs),
        hrm::model::checkpoint::NamedTensor::i32("puzzle_identifiers", vec![n], vec![0; n]),
    ];
    hrm::model::checkpoint::write_tensors(&d.join(name), &tensors, None).unwrap();
}

/// Writes `text` into a new FIFO at `name` from a thread (which waits for a reader).
fn fifo_with(d: &Path, name: &str, text: &'static str) {
    let p = d.join(name);
    mkfifo(&p);
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) {
            let _ = f.write_all(text.as_bytes());
        }
    });
}

fn stdout_says(stdout: &str, wanted: &str) -> Result<(), String> {
    if stdout.contains(wanted) { Ok(()) } else { Err(format!("standard output does not say {wanted:?}")) }
}

fn absent(d: &Path, rel: &str) -> Result<(), String> {
    if d.join(rel).symlink_metadata().is_err() { Ok(()) } else { Err(format!("{rel} is still there")) }
}

/// The held-out puzzles, for a pipe.
const HELD: &str = "\
..3.2.6..9..3.5..1..18.64....81.29..7.......8..67.82....26.95..8..2.3..9..5.1.3..
";

// ---------------------------------------------------------------------------------------------
// The cases, one test per group of classes (the groups run in parallel).

/// D01, D04, D29: special files, symlinks and inputs given as outputs; outputs that cannot be
/// written are refused before the work, naming the flag.
#[test]
fn outputs_are_written_through_or_refused() {
    run_all(&[
        Case {
            class: "D01",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--json", "full.json"],
            setup: |d| symlink("/dev/full", &d.join("full.json")),
            expect: Expect::Fails(&["No space left on device"]),
            ..CASE
        },
        Case {
            class: "D01",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--json", "null.json"],
            setup: |d| symlink("/dev/null", &d.join("null.json")),
            ..CASE
        },
        Case {
            class: "D01",
            args: &["data", "import", "held.txt", "--out", "null.csv"],
            setup: |d| symlink("/dev/null", &d.join("null.csv")),
            ..CASE
        },
        Case {
            class: "D04",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--json", "ck.safetensors"],
            expect: Expect::Fails(&["--json", "ck.safetensors"]),
            ..CASE
        },
        Case {
            class: "D04",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--answers", "alias.txt"],
            setup: |d| std::fs::hard_link(d.join("held.txt"), d.join("alias.txt")).unwrap(),
            expect: Expect::Fails(&["--answers", "alias.txt"]),
            ..CASE
        },
        Case {
            class: "D04",
            args: &["data", "import", "held.txt", "--out", "held.txt"],
            expect: Expect::Fails(&["held.txt"]),
            ..CASE
        },
        Case {
            class: "D29",
            args: &["data", "generate", "-n", "2", "--mode", "easy", "--out", "adir"],
            setup: |d| std::fs::create_dir(d.join("adir")).unwrap(),
            expect: Expect::Fails(&["--out adir"]),
            ..CASE
        },
        Case {
            class: "D29",
            args: &["plot", "run", "--out", "held.txt"],
            expect: Expect::Fails(&["--out", "held.txt"]),
            ..CASE
        },
    ]);
}

/// D02, D03, D08, D16-D21, D26, D28: a run directory is never damaged, its state is validated
/// when loaded, and resume honors or refuses every flag.
#[test]
fn runs_resume_honestly_or_refuse() {
    const RESUME: &[&str] = &["train", "--resume", "run", "--steps", "6"];
    let corrupt = |class, name: &'static str, setup: fn(&Path)| {
        Case { class, args: RESUME, setup, expect: Expect::Fails(&["state.safetensors"]), ..CASE }
            .with_says(name)
    };
    run_all(&[
        Case {
            class: "D03",
            args: &[
                "train",
                "--resume",
                "run",
                "--resume-from",
                "run2/checkpoints/step_00000002",
                "--steps",
                "6",
            ],
            expect: Expect::Fails(&["run2/checkpoints/step_00000002"]),
            ..CASE
        },
        corrupt("D08", "carry.inputs", |d| corrupt_carry(d, "carry.inputs")),
        corrupt("D08", "carry.labels", |d| corrupt_carry(d, "carry.labels")),
        corrupt("D08", "carry.puzzle_identifiers", |d| corrupt_carry(d, "carry.puzzle_identifiers")),
        corrupt("D08", "carry.steps", |d| corrupt_carry(d, "carry.steps")),
        corrupt("D08", "carry.halted", |d| corrupt_carry(d, "carry.halted")),
        Case {
            class: "D08",
            args: &["train", "--resume", "run", "--steps", "6", "--device", "emu"],
            setup: |d| corrupt_carry(d, "carry.inputs"),
            expect: Expect::Fails(&["carry.inputs"]),
            ..CASE
        },
        Case {
            class: "D16",
            args: &["train", "--resume", "run", "--steps", "6", "--lr", "0.5"],
            expect: Expect::Fails(&["--lr"]),
            ..CASE
        },
        Case {
            class: "D16",
            args: &["train", "--resume", "run", "--steps", "6", "--batch-size", "8"],
            expect: Expect::Fails(&["--batch-size"]),
            ..CASE
        },
        Case {
            class: "D16",
            args: &["train", "--resume", "run", "--steps", "6", "--seed", "9"],
            expect: Expect::Fails(&["--seed"]),
            ..CASE
        },
        Case {
            class: "D16",
            args: &["train", "--resume", "run", "--steps", "6", "--ema", "0.9"],
            expect: Expect::Fails(&["--ema"]),
            ..CASE
        },
        Case {
            class: "D19",
            args: &[
                "train",
                "--resume-from",
                "run/checkpoints/step_00000002",
                "--data",
                "ds/train",
                "--out",
                "fresh",
            ],
            expect: Expect::Fails(&["--resume-from", "--resume"]),
            ..CASE
        },
        Case {
            class: "D16",
            args: &["train", "--resume", "run", "--steps", "6", "--log-every", "2"],
            outputs: &["run"],
            ..CASE
        },
        Case {
            class: "D17",
            args: &["train", "--resume", "../run", "--steps", "6"],
            cwd: "elsewhere",
            setup: |d| std::fs::create_dir(d.join("elsewhere")).unwrap(),
            outputs: &["run"],
            after: |d, _| absent(d, "elsewhere/ds"),
            ..CASE
        },
        Case {
            class: "D18",
            args: RESUME,
            setup: |d| {
                std::fs::remove_dir_all(d.join("ds")).unwrap();
                let o = hrm()
                    .args([
                        "data",
                        "build",
                        "--train",
                        "10",
                        "--augment",
                        "1",
                        "--seed",
                        "7",
                        "--out",
                        "ds",
                        "held.txt",
                        "train.txt",
                    ])
                    .current_dir(d)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            },
            expect: Expect::Fails(&["ds/train"]),
            ..CASE
        },
        Case {
            class: "D21",
            args: &["train", "--resume", "run", "--steps", "2"],
            expect: Expect::Fails(&["--steps 2", "4"]),
            ..CASE
        },
        Case {
            class: "D20",
            args: RESUME,
            setup: |d| {
                rewrite(
                    &d.join("run/checkpoints/step_00000004/state.safetensors"),
                    |_, _, _| {},
                    |m| {
                        let t = m.get_mut("trainer").unwrap();
                        *t = t.replacen("\"step\":4", "\"step\":999999", 1);
                    },
                )
            },
            expect: Expect::Fails(&["999999"]),
            ..CASE
        },
        Case {
            class: "D26",
            args: RESUME,
            setup: |d| {
                let p = d.join("run/metrics.jsonl");
                let text = std::fs::read_to_string(&p).unwrap();
                let mut lines: Vec<&str> = text.lines().collect();
                lines.insert(1, "{not json at all");
                std::fs::write(&p, lines.join("\n") + "\n").unwrap();
            },
            expect: Expect::OkOrFails(&["metrics.jsonl:2"]),
            outputs: &["run"],
            after: |d, _| {
                let o = hrm().args(["plot", "run", "--out", "charts"]).current_dir(d).output().unwrap();
                if o.status.success() || String::from_utf8_lossy(&o.stderr).contains("metrics.jsonl:2") {
                    Ok(())
                } else {
                    Err(format!("hrm plot after the resume: {}", String::from_utf8_lossy(&o.stderr)))
                }
            },
            ..CASE
        },
        Case {
            class: "D28",
            args: &["data", "build", "train.txt", "--out", "ds", "--train", "10", "--augment", "1"],
            setup: |d| {
                std::fs::create_dir_all(d.join("ds/.train.tmp.999999999")).unwrap();
                std::fs::write(d.join("ds/.train.tmp.999999999/data.bin"), b"partial").unwrap();
            },
            outputs: &["ds"],
            after: |d, _| absent(d, "ds/.train.tmp.999999999"),
            ..CASE
        },
        Case {
            class: "D28",
            args: RESUME,
            setup: |d| {
                std::fs::create_dir_all(d.join("run/checkpoints/.step_00000005.tmp.999999999")).unwrap();
                std::fs::write(
                    d.join("run/checkpoints/.step_00000005.tmp.999999999/model.safetensors"),
                    b"partial",
                )
                .unwrap();
            },
            outputs: &["run"],
            after: |d, _| absent(d, "run/checkpoints/.step_00000005.tmp.999999999"),
            ..CASE
        },
    ]);
}

impl Case {
    /// The same case, its error also saying `what`.
    fn with_says(self, what: &'static str) -> Case {
        let Expect::Fails(says) = self.expect else { panic!("not a failing case") };
        let all: Vec<&'static str> = says.iter().copied().chain([what]).collect();
        Case { expect: Expect::Fails(Vec::leak(all)), ..self }
    }
}

/// D06, D09, D11-D14: every count and config is checked against its bounds, the data and the
/// memory before the work starts.
#[test]
fn sizes_and_configs_are_checked_before_the_work() {
    run_all(&[
        Case {
            class: "D06",
            args: &[
                "train", "--nproc", "1000000", "--device", "emu", "--data", "ds/train", "--out", "many",
                "--preset", "tiny",
            ],
            expect: Expect::Fails(&["--nproc"]),
            ..CASE
        },
        Case {
            class: "D11",
            args: &[
                "data",
                "build",
                "train.txt",
                "--out",
                "big",
                "--train",
                "10",
                "--augment",
                "18446744073709551615",
            ],
            expect: Expect::Fails(&["--augment"]),
            ..CASE
        },
        Case {
            class: "D11",
            args: &["data", "build", "train.txt", "--out", "big", "--train", "10", "--augment", "1000000000"],
            expect: Expect::Fails(&["--augment"]),
            ..CASE
        },
        Case {
            class: "D11",
            args: &["demo", "--out", "demo", "--augment", "1000000000"],
            expect: Expect::Fails(&["--augment"]),
            ..CASE
        },
        Case {
            class: "D12",
            args: &["bench", "--preset", "tiny", "--batch-size", "4", "--infer-batch-size", "1000000000"],
            expect: Expect::Fails(&["--infer-batch-size"]),
            ..CASE
        },
        Case {
            class: "D12",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--perturb", "sym:99999999999"],
            expect: Expect::Fails(&["--perturb"]),
            ..CASE
        },
        Case {
            class: "D12",
            args: &[
                "eval",
                "--checkpoint",
                "ck.safetensors",
                "held.txt",
                "--perturb",
                "aug:18446744073709551615",
            ],
            expect: Expect::Fails(&["--perturb"]),
            ..CASE
        },
        Case {
            class: "D12",
            args: &[
                "analyze",
                "fixed-points",
                "--checkpoint",
                "ck.safetensors",
                "held.txt",
                "--runs",
                "100000000",
            ],
            expect: Expect::Fails(&["--runs"]),
            ..CASE
        },
        Case {
            class: "D12",
            args: &["data", "generate", "-n", "18446744073709551615", "--mode", "easy", "--out", "g.csv"],
            expect: Expect::Fails(&["18446744073709551615"]),
            ..CASE
        },
        Case {
            class: "D13",
            args: &[
                "forward",
                "--checkpoint",
                "ck.safetensors",
                "--batch",
                "huge.safetensors",
                "--out",
                "f.safetensors",
                "--segments",
                "1",
            ],
            setup: |d| batch_file(d, "huge.safetensors", 100_000),
            expect: Expect::OkOrFails(&["huge.safetensors"]),
            outputs: &["f.safetensors"],
            ..CASE
        },
        Case {
            class: "D14",
            args: &["eval", "--checkpoint", "ck.safetensors", "--config", "c.json", "held.txt"],
            setup: |d| config_with(d, "c.json", |v| v["halt_max_steps"] = 1_000_000_000.into()),
            expect: Expect::Fails(&["c.json", "halt_max_steps"]),
            ..CASE
        },
        Case {
            class: "D14",
            args: &["eval", "--checkpoint", "ck.safetensors", "--config", "c.json", "held.txt"],
            setup: |d| config_with(d, "c.json", |v| v["L_cycles"] = 1_000_000_000.into()),
            expect: Expect::Fails(&["c.json", "L_cycles"]),
            ..CASE
        },
        Case {
            class: "D09",
            args: &[
                "train",
                "--config",
                "c.json",
                "--data",
                "ds/train",
                "--out",
                "r",
                "--steps",
                "2",
                "--batch-size",
                "4",
            ],
            setup: |d| config_with(d, "c.json", |v| v["seq_len"] = 82.into()),
            expect: Expect::Fails(&["seq_len"]),
            ..CASE
        },
        Case {
            class: "D09",
            args: &[
                "train",
                "--config",
                "c.json",
                "--data",
                "ds/train",
                "--out",
                "r",
                "--steps",
                "2",
                "--batch-size",
                "4",
            ],
            setup: |d| config_with(d, "c.json", |v| v["vocab_size"] = 12.into()),
            expect: Expect::Fails(&["vocab_size"]),
            ..CASE
        },
        Case {
            class: "D09",
            args: &["eval", "--checkpoint", "ck.safetensors", "--config", "c.json", "held.txt"],
            setup: |d| config_with(d, "c.json", |v| v["seq_len"] = 82.into()),
            expect: Expect::Fails(&["seq_len"]),
            ..CASE
        },
    ]);
}

/// D05, D15, D22-D25, D27: inputs are read once (pipes and FIFOs work), read lazily where a
/// limit allows, empty or degenerate inputs and models say what happened, and a rebuilt
/// dataset holds only what its build wrote.
#[test]
fn inputs_are_read_once_and_degenerate_ones_are_named() {
    run_all(&[
        Case {
            class: "D05",
            args: &[
                "data",
                "build",
                "train.txt",
                "--out",
                "ds",
                "--train",
                "10",
                "--test",
                "0",
                "--augment",
                "1",
            ],
            outputs: &["ds"],
            after: |d, _| absent(d, "ds/test"),
            ..CASE
        },
        Case {
            class: "D15",
            args: &["data", "import", "/dev/stdin", "--out", "imp.csv"],
            stdin: Some(HELD),
            outputs: &["imp.csv"],
            after: |d, _| {
                let n =
                    std::fs::read_to_string(d.join("imp.csv")).map_err(|e| e.to_string())?.lines().count();
                if n == 2 {
                    Ok(())
                } else {
                    Err(format!("imp.csv has {n} lines; expected a header and 1 puzzle"))
                }
            },
            ..CASE
        },
        Case {
            class: "D15",
            args: &["data", "import", "in.fifo", "--out", "imp.csv"],
            setup: |d| fifo_with(d, "in.fifo", HELD),
            outputs: &["imp.csv"],
            ..CASE
        },
        Case {
            class: "D15",
            args: &["data", "stats", "/dev/stdin"],
            stdin: Some(HELD),
            after: |_, out| stdout_says(out, "1"),
            ..CASE
        },
        Case {
            class: "D22",
            args: &["data", "import", "empty.txt", "--out", "imp.csv"],
            setup: |d| std::fs::write(d.join("empty.txt"), "").unwrap(),
            expect: Expect::Fails(&["empty.txt"]),
            ..CASE
        },
        Case {
            class: "D22",
            args: &["data", "stats", "empty.txt"],
            setup: |d| std::fs::write(d.join("empty.txt"), "").unwrap(),
            expect: Expect::Fails(&["empty.txt"]),
            ..CASE
        },
        Case {
            class: "D22",
            args: &["eval", "--checkpoint", "ck.safetensors", "empty.txt"],
            setup: |d| std::fs::write(d.join("empty.txt"), "# nothing here\n").unwrap(),
            expect: Expect::Fails(&["empty.txt"]),
            ..CASE
        },
        Case {
            class: "D25",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt"],
            setup: |d| rewrite(&d.join("ck.safetensors"), |_, dt, b| floats_huge(dt, b), |_| {}),
            expect: Expect::Fails(&["ck.safetensors", "non-finite"]),
            ..CASE
        },
        Case {
            class: "D25",
            args: &["solve", "--checkpoint", "ck.safetensors", "held.txt"],
            setup: |d| rewrite(&d.join("ck.safetensors"), |_, dt, b| floats_huge(dt, b), |_| {}),
            expect: Expect::Fails(&["ck.safetensors", "non-finite"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["eval", "--checkpoint", "/dev/zero", "held.txt"],
            expect: Expect::Fails(&["/dev/zero"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["eval", "--checkpoint", "ck.safetensors", "/dev/zero"],
            expect: Expect::Fails(&["/dev/zero"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["data", "import", "/dev/urandom", "--out", "imp.csv"],
            expect: Expect::Fails(&["/dev/urandom"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["data", "stats", "/dev/zero"],
            expect: Expect::Fails(&["/dev/zero"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &[
                "forward",
                "--checkpoint",
                "ck.safetensors",
                "--batch",
                "/dev/zero",
                "--out",
                "f.safetensors",
            ],
            expect: Expect::Fails(&["/dev/zero"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["solve", "--checkpoint", "ck.safetensors", "/dev/zero"],
            expect: Expect::Fails(&["/dev/zero"]),
            after: |_, _| Ok(()),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["eval", "--checkpoint", "run", "held.txt"],
            expect: Expect::Fails(&["run", "directory"]),
            ..CASE
        },
        Case {
            class: "special inputs",
            args: &["eval", "--checkpoint", "loop1", "held.txt"],
            setup: |d| {
                symlink("loop2", &d.join("loop1"));
                symlink("loop1", &d.join("loop2"));
            },
            expect: Expect::Fails(&["loop1"]),
            ..CASE
        },
        Case {
            class: "D27",
            args: &["eval", "--checkpoint", "ck.safetensors", "--limit", "1", "lim.txt"],
            setup: |d| {
                let first =
                    std::fs::read_to_string(d.join("held.txt")).unwrap().lines().next().unwrap().to_string();
                std::fs::write(d.join("lim.txt"), first + "\nthis line is not a puzzle\n").unwrap();
            },
            ..CASE
        },
    ]);
}

/// D06, D10, D30, D31: the environment and the launcher: bad values of the project's variables
/// and of torchrun's are named, an impossible rendezvous fails instead of hanging, and a
/// device too small for the job is an error.
#[test]
fn environment_and_devices_fail_clearly() {
    const EVAL_EMU: &[&str] = &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--device", "emu"];
    const TRAIN: &[&str] = &[
        "train",
        "--data",
        "ds/train",
        "--out",
        "r",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
    ];
    let bad_env = |var: &'static str, value: &'static str, args: &'static [&'static str]| Case {
        class: "D30",
        args,
        env: Vec::leak(vec![(var, value)]),
        expect: Expect::Fails(Vec::leak(vec![var, value])),
        outputs: &["r"],
        ..CASE
    };
    run_all(&[
        bad_env("HRM_EMU_DEVICE_MEM_MB", "lots", EVAL_EMU),
        bad_env("HRM_EMU_DRIVER_VERSION", "new", EVAL_EMU),
        bad_env("HRM_EMU_ORDER", "sideways", EVAL_EMU),
        bad_env("HRM_CUDA_GRAPHS", "maybe", EVAL_EMU),
        bad_env("HRM_DIST_TIMEOUT_S", "-1", TRAIN),
        bad_env("RANK", "first", TRAIN),
        bad_env("WORLD_SIZE", "2x", TRAIN),
        Case {
            class: "D31",
            args: &[
                "train",
                "--nproc",
                "2",
                "--master-port",
                "0",
                "--device",
                "emu",
                "--data",
                "ds/train",
                "--out",
                "r",
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--batch-size",
                "4",
            ],
            expect: Expect::OkOrFails(&["--master-port"]),
            outputs: &["r"],
            ..CASE
        },
        Case {
            class: "D10",
            args: &["eval", "--checkpoint", "ck.safetensors", "held.txt", "--device", "emu"],
            env: &[("HRM_EMU_DEVICE_MEM_MB", "40")],
            expect: Expect::OkOrFails(&["GPU memory"]),
            ..CASE
        },
        Case {
            class: "D10",
            args: &["bench", "--preset", "sudoku", "--device", "emu", "--batch-size", "768"],
            env: &[("HRM_EMU_DEVICE_MEM_MB", "64")],
            expect: Expect::Fails(&["GPU memory"]),
            ..CASE
        },
        Case {
            class: "D10",
            args: &[
                "forward",
                "--checkpoint",
                "ck.safetensors",
                "--batch",
                "b.safetensors",
                "--out",
                "f.safetensors",
                "--device",
                "emu",
            ],
            setup: |d| batch_file(d, "b.safetensors", 20_000),
            env: &[("HRM_EMU_DEVICE_MEM_MB", "64")],
            expect: Expect::OkOrFails(&["GPU memory"]),
            outputs: &["f.safetensors"],
            ..CASE
        },
    ]);
}
