//! Output paths under attack: a writer aimed at a device, FIFO or symlink, at one of the
//! command's own inputs, at a directory or below a file; a second fork of a run, a resume from
//! another run's checkpoint, `--overwrite` over a run holding the user's files. Every case
//! ends in a clear error naming the path (before any work) or a correct write, never a panic,
//! a replaced special file, a damaged input or a touched path other than the output.
//! `docs/RELIABILITY.md` ("Output paths") lists them.

mod common;

use common::cli::{Snapshot, changes, snapshot};
use hrm::sudoku::board::board_to_string;
use hrm::train::data::blanked_puzzles;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hrm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrm"));
    c.env("RUST_BACKTRACE", "0");
    c
}

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `c`, which must end by itself: no panic (101), no abort or kill (a signal).
fn run(c: &mut Command) -> Out {
    let o: Output = c.output().unwrap();
    let out = Out {
        ok: o.status.success(),
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(out.code.is_some(), "{c:?} was killed by a signal:\n{}", out.stderr);
    assert!(out.code != Some(101) && !out.stderr.contains("panicked"), "{c:?} panicked:\n{}", out.stderr);
    out
}

fn ok(c: &mut Command) -> Out {
    let o = run(c);
    assert!(o.ok, "{c:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o
}

fn fails(c: &mut Command) -> Out {
    let o = run(c);
    assert!(!o.ok, "{c:?} should fail:\n{}\n{}", o.stdout, o.stderr);
    o
}

fn assert_says(o: &Out, wanted: &[&str]) {
    for w in wanted {
        assert!(o.stderr.contains(w), "missing {w:?} in:\n{}", o.stderr);
    }
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn lines(v: &[([u8; 81], [u8; 81])]) -> String {
    v.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect()
}

/// A temporary directory with a checkpoint `ck.safetensors` of the tiny model, a puzzle file
/// `held.txt` and, on request, a dataset `ds/train` for training.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("held.txt"), lines(&blanked_puzzles(4, 10..20, 2))).unwrap();
        ok(hrm().args(["init", "--preset", "tiny", "--out"]).arg(dir.path().join("ck.safetensors")));
        Fixture { dir }
    }
    fn with_dataset() -> Fixture {
        let f = Fixture::new();
        std::fs::write(f.p("train.txt"), lines(&blanked_puzzles(12, 10..20, 1))).unwrap();
        ok(hrm()
            .args(["data", "build", "--train", "10", "--augment", "1", "--out"])
            .arg(f.p("ds"))
            .arg(f.p("train.txt")));
        f
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn snapshot(&self) -> Snapshot {
        snapshot(self.dir.path())
    }
    fn eval(&self, extra: &[&str]) -> Command {
        let mut c = hrm();
        c.args(["eval", "--checkpoint"]).arg(self.p("ck.safetensors")).arg(self.p("held.txt"));
        for a in extra {
            // Flags as given, paths relative to the fixture.
            if a.starts_with("--") {
                c.arg(a)
            } else {
                c.arg(self.p(a))
            };
        }
        c
    }
    /// `hrm train` of the tiny model, batch 4, checkpoints every 2 steps, all kept.
    fn train(&self, run: &str, steps: u64, extra: &[&str]) -> Command {
        let mut c = hrm();
        c.args(["--threads", "2", "train", "--data"]).arg(self.p("ds/train")).arg("--out").arg(self.p(run));
        c.args(["--preset", "tiny", "--batch-size", "4", "--lr-warmup-steps", "1", "--log-every", "1"]);
        c.args(["--checkpoint-every", "2", "--keep", "10", "--steps", &steps.to_string()]).args(extra);
        c
    }
    fn resume_from(&self, run: &str, from: &str, steps: u64) -> Command {
        let mut c = hrm();
        c.args(["--threads", "2", "train", "--resume"])
            .arg(self.p(run))
            .arg("--resume-from")
            .arg(self.p(from));
        c.args(["--steps", &steps.to_string()]);
        c
    }
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) reads a NUL-terminated path owned here.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", p.display());
}

/// A private character device equal to /dev/null (major 1, minor 3); false where this
/// process may not create device nodes (not root).
fn mknod_null(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod(2) reads a NUL-terminated path owned here.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}

/// D01: devices, FIFOs and symlinks given as outputs are written through (or followed), never
/// replaced by a regular file, and a device that cannot take the bytes is an error. The links
/// live in the fixture, so code that replaces them cannot damage the machine's /dev.
#[test]
fn special_files_and_symlinks_as_outputs_are_written_through_not_replaced() {
    let f = Fixture::new();
    std::os::unix::fs::symlink("/dev/null", f.p("null.json")).unwrap();
    std::os::unix::fs::symlink("/dev/full", f.p("full.json")).unwrap();
    // What /dev/stdout is: a link to the process's standard output (a pipe here).
    std::os::unix::fs::symlink("/proc/self/fd/1", f.p("stdout.json")).unwrap();
    std::fs::create_dir(f.p("real")).unwrap();
    std::fs::write(f.p("real/answers.csv"), "old\n").unwrap();
    std::os::unix::fs::symlink("real/answers.csv", f.p("answers.csv")).unwrap();
    let before = f.snapshot();

    ok(&mut f.eval(&["--json", "null.json"]));
    assert!(is_symlink(&f.p("null.json")), "the link to /dev/null was replaced");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    let o = fails(&mut f.eval(&["--json", "full.json"]));
    assert_says(&o, &["full.json", "No space left"]);
    assert!(is_symlink(&f.p("full.json")), "the link to /dev/full was replaced");

    let o = ok(&mut f.eval(&["--json", "stdout.json"]));
    assert!(o.stdout.contains("\"exact_accuracy\""), "the JSON goes to standard output:\n{}", o.stdout);
    let (table, json) = (o.stdout.find("exact accuracy per segment"), o.stdout.find("\"exact_accuracy\""));
    assert!(table.is_some() && table < json, "the JSON follows the table:\n{}", o.stdout);
    assert!(is_symlink(&f.p("stdout.json")), "the link to standard output was replaced");

    // A symlink to a regular file: the target is replaced (atomically), the link stays.
    ok(&mut f.eval(&["--answers", "answers.csv"]));
    assert!(is_symlink(&f.p("answers.csv")), "the link was replaced");
    let written = std::fs::read_to_string(f.p("real/answers.csv")).unwrap();
    assert!(written.starts_with("set,index,puzzle,answer,correct\n"), "{written}");
    let c = changes(&before, &f.snapshot(), &["real/answers.csv"]);
    assert!(c.is_empty(), "other paths changed: {c:#?}");

    // A FIFO: a reader gets the CSV, the FIFO stays a FIFO.
    mkfifo(&f.p("puzzles.fifo"));
    let fifo = f.p("puzzles.fifo");
    let reader = std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap());
    ok(hrm().args(["data", "import", "--out"]).arg(f.p("puzzles.fifo")).arg(f.p("held.txt")));
    let replaced = !std::fs::metadata(f.p("puzzles.fifo")).unwrap().file_type().is_fifo();
    // (A replaced FIFO leaves the reader waiting forever: it is not joined then.)
    assert!(!replaced, "the FIFO was replaced by a regular file");
    let csv = reader.join().unwrap();
    assert!(csv.starts_with("source,question,answer,rating\n") && csv.lines().count() == 5, "{csv}");

    // A character device node (only root may make one): written through, still a device.
    if mknod_null(&f.p("null.dev")) {
        ok(hrm().args(["init", "--preset", "tiny", "--out"]).arg(f.p("null.dev")));
        assert!(std::fs::symlink_metadata(f.p("null.dev")).unwrap().file_type().is_char_device());
    }
}

/// D04: an output that is one of the command's inputs (the same file, however named: the same
/// path, a symlink, a hard link) is refused before any work, and the input is left as it was.
#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let f = Fixture::with_dataset();
    std::os::unix::fs::symlink("ck.safetensors", f.p("ck-link.safetensors")).unwrap();
    std::fs::hard_link(f.p("held.txt"), f.p("held-hardlink.txt")).unwrap();
    let cfg = serde_json::to_string(&hrm::config::ModelConfig::tiny()).unwrap();
    std::fs::write(f.p("tiny.json"), cfg).unwrap();
    std::fs::write(f.p("ds/train/mine.txt"), std::fs::read(f.p("held.txt")).unwrap()).unwrap();
    let before = f.snapshot();

    let o = fails(&mut f.eval(&["--json", "ck.safetensors"]));
    assert_says(&o, &["--json", "ck.safetensors", "--checkpoint"]);
    let o = fails(&mut f.eval(&["--json", "ck-link.safetensors"]));
    assert_says(&o, &["--json", "ck-link.safetensors", "--checkpoint"]);
    let o = fails(&mut f.eval(&["--answers", "held.txt"]));
    assert_says(&o, &["--answers", "held.txt", "puzzle set"]);
    let o = fails(&mut f.eval(&["--answers", "held-hardlink.txt"]));
    assert_says(&o, &["--answers", "held-hardlink.txt", "puzzle set"]);
    let o = fails(&mut f.eval(&["--json", "out.json", "--answers", "out.json"]));
    assert_says(&o, &["--json", "--answers", "the same file"]);
    assert!(!o.stdout.contains("exact"), "refused before evaluating:\n{}", o.stdout);

    let o = fails(hrm().args(["data", "import"]).arg(f.p("held.txt")).arg("--out").arg(f.p("held.txt")));
    assert_says(&o, &["--out", "held.txt", "input"]);
    let o = fails(hrm().args(["init", "--config"]).arg(f.p("tiny.json")).arg("--out").arg(f.p("tiny.json")));
    assert_says(&o, &["--out", "tiny.json", "--config"]);
    // A build replaces out/train wholesale: an input inside it is refused.
    let o = fails(
        hrm().args(["data", "build", "--train", "3", "--out"]).arg(f.p("ds")).arg(f.p("ds/train/mine.txt")),
    );
    assert_says(&o, &["--out", "mine.txt", "input"]);
    // `train --overwrite` would delete weights it starts from.
    ok(&mut f.train("run", 2, &[]));
    let run_before = f.snapshot();
    let init = f.p("run/checkpoints/step_00000002/model.safetensors");
    let o = fails(f.train("run", 2, &["--overwrite", "--init"]).arg(&init));
    assert_says(&o, &["--out", "--init", "model.safetensors"]);
    assert_eq!(changes(&run_before, &f.snapshot(), &[]), Vec::<String>::new());

    let c = changes(&before, &f.snapshot(), &["run"]);
    assert!(c.is_empty(), "inputs or other paths changed: {c:#?}");
}

/// D02: every fork of a run (`--resume-from` an older checkpoint) keeps what it sets aside,
/// also when an earlier fork already set aside a checkpoint of the same step.
#[test]
fn a_second_resume_from_keeps_what_the_first_set_aside() {
    let f = Fixture::with_dataset();
    ok(&mut f.train("run", 6, &[]));
    ok(&mut f.resume_from("run", "run/checkpoints/step_00000002", 6));
    let first = f.p("run/checkpoints/discarded_step_00000004");
    assert!(first.join("COMPLETE").exists());
    std::fs::write(first.join("note.txt"), "the first fork's step 4").unwrap();
    let kept = snapshot(&first);

    let o = ok(&mut f.resume_from("run", "run/checkpoints/step_00000002", 6));
    assert_eq!(snapshot(&first), kept, "the first fork's step 4 was deleted or changed");
    assert_says(&o, &["discarded_step_00000004_2"]);
    let mut names: Vec<String> = std::fs::read_dir(f.p("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("discarded_"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "discarded_step_00000004",
            "discarded_step_00000004_2",
            "discarded_step_00000006",
            "discarded_step_00000006_2"
        ]
    );
}

/// D03: `--resume RUN --resume-from` a checkpoint of another run is refused (RUN untouched);
/// RUN's own checkpoint named through another path is accepted.
#[test]
fn resume_from_a_checkpoint_of_another_run_is_refused() {
    let f = Fixture::with_dataset();
    ok(&mut f.train("a", 4, &[]));
    ok(&mut f.train("b", 4, &["--seed", "1"]));
    let before = f.snapshot();
    let o = fails(&mut f.resume_from("a", "b/checkpoints/step_00000002", 6));
    assert_says(&o, &["--resume-from", "b/checkpoints/step_00000002", "not a checkpoint of", "--init"]);
    let c = changes(&before, &f.snapshot(), &[]);
    assert!(c.is_empty(), "the run was changed: {c:#?}");
    // The same run through a symlinked path is the same run.
    std::os::unix::fs::symlink(f.p("a"), f.p("a-link")).unwrap();
    let o = ok(&mut f.resume_from("a", "a-link/checkpoints/step_00000002", 4));
    assert_says(&o, &["at step 2"]);
}

/// D32: `train --overwrite` removes the run's own files only; the user's files in the run
/// directory, `checkpoints/` and `plots/` stay.
#[test]
fn overwrite_removes_only_what_a_run_wrote() {
    let f = Fixture::with_dataset();
    ok(&mut f.train("run", 4, &[]));
    ok(hrm().arg("plot").arg(f.p("run")));
    assert!(f.p("run/plots/loss.svg").exists());
    std::fs::write(f.p("run/notes.txt"), "mine").unwrap();
    std::fs::write(f.p("run/checkpoints/README"), "mine").unwrap();
    std::fs::create_dir(f.p("run/checkpoints/best")).unwrap();
    std::fs::write(f.p("run/checkpoints/best/model.safetensors"), "mine").unwrap();
    std::fs::write(f.p("run/plots/annotated.svg"), "mine").unwrap();
    let mine = ["notes.txt", "checkpoints/README", "checkpoints/best", "plots/annotated.svg"];
    let before: Vec<_> =
        mine.iter().map(|m| snapshot(f.p("run").as_path()).get(Path::new(m)).cloned()).collect();

    let o = ok(&mut f.train("run", 2, &["--overwrite"]));
    let after = snapshot(&f.p("run"));
    for (m, b) in mine.iter().zip(before) {
        assert!(b.is_some() && after.get(Path::new(m)) == b.as_ref(), "{m} was removed or changed");
    }
    assert_says(&o, &["kept", "README", "annotated.svg"]);
    assert!(!f.p("run/plots/loss.svg").exists(), "the old run's charts are gone");
    assert!(!f.p("run/checkpoints/step_00000004").exists(), "the old run's checkpoints are gone");
    assert!(f.p("run/checkpoints/step_00000002/COMPLETE").exists());
}

/// D29: output paths are checked before the work, and errors name the user's path (not a
/// temporary file) and the flag.
#[test]
fn output_paths_are_checked_before_the_work_and_named_in_errors() {
    let f = Fixture::with_dataset();
    std::fs::create_dir(f.p("adir")).unwrap();
    std::fs::write(f.p("afile"), "mine").unwrap();
    let before = f.snapshot();
    // The generation alone would fail later ("only 32 of 2000"): the path is refused first.
    let gen_into = |out: &str| {
        let mut c = hrm();
        c.args(["data", "generate", "-n", "2000", "--mode", "easy", "--max-batches", "1", "--out"])
            .arg(f.p(out));
        c
    };
    let o = fails(&mut gen_into("adir"));
    assert_says(&o, &["--out", "adir", "is a directory"]);
    assert!(!o.stderr.contains(".tmp."), "a temporary name in the error:\n{}", o.stderr);
    let o = fails(&mut gen_into("afile/puzzles.csv"));
    assert_says(&o, &["--out", "afile/puzzles.csv", "not a directory"]);
    assert!(!o.stderr.contains("only 32"), "checked after the work:\n{}", o.stderr);
    let o = fails(&mut f.eval(&["--json", "afile/r.json"]));
    assert_says(&o, &["--json", "afile/r.json", "not a directory"]);
    assert!(!o.stdout.contains("exact"), "refused before evaluating:\n{}", o.stdout);
    let o = fails(hrm().args(["bench", "--preset", "tiny", "--json"]).arg(f.p("adir")));
    assert_says(&o, &["--json", "adir", "is a directory"]);
    let o =
        fails(hrm().args(["data", "build", "--train", "3", "--out"]).arg(f.p("afile")).arg(f.p("held.txt")));
    assert_says(&o, &["--out", "afile", "not a directory"]);

    ok(&mut f.train("run", 2, &[]));
    let run_before = f.snapshot();
    let o = fails(hrm().arg("plot").arg(f.p("run")).arg("--out").arg(f.p("afile")));
    assert_says(&o, &["--out", "afile", "not a directory"]);
    let o = fails(&mut f.train("afile", 2, &[]));
    assert_says(&o, &["--out", "afile", "not a directory"]);
    assert_eq!(changes(&run_before, &f.snapshot(), &[]), Vec::<String>::new());
    let c = changes(&before, &f.snapshot(), &["run"]);
    assert!(c.is_empty(), "paths changed: {c:#?}");
}
