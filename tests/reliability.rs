//! What the binary does with inputs and situations a careless or unlucky user creates: an
//! existing run directory, two trainers at once, failed writers, torn metrics, absurd sizes,
//! out-of-range flags, corrupt checkpoints, bad puzzle arguments, odd data paths, byte order
//! marks, empty sets. Every case ends in a clear error or a correct result, never a panic or
//! a silently damaged run. `docs/RELIABILITY.md` lists them.

use hrm::config::ModelConfig;
use hrm::model::checkpoint::{NamedTensor, load_checkpoint, save_checkpoint, write_tensors};
use hrm::model::{HostParams, tensor_specs};
use hrm::sudoku::board::board_to_string;
use hrm::train::data::blanked_puzzles;
use hrm::train::rundir::RunLock;
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

fn run(c: &mut Command) -> Out {
    let o: Output = c.output().unwrap();
    Out {
        ok: o.status.success(),
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(c: &mut Command) -> Out {
    let o = run(c);
    assert!(o.ok, "{c:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o
}

/// A failure with a message, not a panic or an abort.
fn fails(c: &mut Command) -> Out {
    let o = run(c);
    assert!(!o.ok, "{c:?} should fail:\n{}\n{}", o.stdout, o.stderr);
    assert!(o.code.is_some(), "{c:?} was killed by a signal:\n{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{c:?} panicked:\n{}", o.stderr);
    o
}

fn lines(v: &[([u8; 81], [u8; 81])]) -> String {
    v.iter().map(|(q, _)| board_to_string(q, '.') + "\n").collect()
}

/// A temporary directory with a dataset (`ds/train`, `ds/test`) and an evaluation file.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("train.txt"), lines(&blanked_puzzles(12, 10..20, 1))).unwrap();
        std::fs::write(d.join("held.txt"), lines(&blanked_puzzles(4, 10..20, 2))).unwrap();
        ok(hrm()
            .args(["data", "build", "--train", "10", "--test", "2", "--augment", "1", "--out"])
            .arg(d.join("ds"))
            .arg(d.join("train.txt")));
        Fixture { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// `hrm train` on the tiny model, batch 4, logging every step, checkpoints every 2 steps;
    /// `extra` flag/value pairs replace these defaults or add to them.
    fn train(&self, run: &str, steps: u64, extra: &[&str]) -> Command {
        self.train_on(&self.p("ds/train"), run, steps, extra)
    }
    fn train_on(&self, data: &Path, run: &str, steps: u64, extra: &[&str]) -> Command {
        let steps = steps.to_string();
        let mut flags: Vec<(&str, Option<&str>)> = vec![
            ("--preset", Some("tiny")),
            ("--batch-size", Some("4")),
            ("--lr-warmup-steps", Some("1")),
            ("--log-every", Some("1")),
            ("--checkpoint-every", Some("2")),
            ("--keep", Some("10")),
            ("--steps", Some(&steps)),
        ];
        let mut k = 0;
        while k < extra.len() {
            let flag = extra[k];
            let value = extra.get(k + 1).copied().filter(|v| !v.starts_with("--") || v.len() == 2);
            let value = if flag == "--overwrite" { None } else { value };
            match flags.iter_mut().find(|(f, _)| *f == flag) {
                Some(slot) => slot.1 = value,
                None => flags.push((flag, value)),
            }
            k += 1 + value.is_some() as usize;
        }
        let mut c = hrm();
        c.args(["--threads", "2", "train", "--data"]).arg(data).arg("--out").arg(self.p(run));
        for (f, v) in flags {
            c.arg(f);
            if let Some(v) = v {
                c.arg(v);
            }
        }
        c
    }
    fn resume(&self, run: &str, extra: &[&str]) -> Command {
        let mut c = hrm();
        c.args(["--threads", "2", "train", "--resume"]).arg(self.p(run)).args(extra);
        c
    }
    fn metrics(&self, run: &str) -> String {
        std::fs::read_to_string(self.p(run).join("metrics.jsonl")).unwrap()
    }
}

fn train_steps(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A run killed before its first checkpoint: neither the refusal of a new run in its directory
/// nor `--resume` sends the user to the other; both say to start it again with --overwrite.
#[test]
fn a_run_without_a_checkpoint_is_restarted_with_overwrite_not_resumed() {
    let f = Fixture::new();
    ok(&mut f.train("run", 2, &[]));
    std::fs::remove_dir_all(f.p("run").join("checkpoints")).unwrap();
    let o = fails(&mut f.train("run", 2, &[]));
    assert!(o.stderr.contains("nothing to resume") && o.stderr.contains("--overwrite"), "{}", o.stderr);
    assert!(!o.stderr.contains("continue it with"), "{}", o.stderr);
    let o = fails(hrm().args(["train", "--resume"]).arg(f.p("run")));
    assert!(
        o.stderr.contains("stopped before its first") && o.stderr.contains("--overwrite"),
        "{}",
        o.stderr
    );
    ok(&mut f.train("run", 2, &["--overwrite"]));
}

#[test]
fn train_refuses_a_directory_holding_a_run_and_overwrite_starts_afresh() {
    let f = Fixture::new();
    ok(&mut f.train("run", 4, &[]));
    let before = f.metrics("run");
    let o = fails(&mut f.train("run", 2, &[]));
    assert!(o.stderr.contains("already holds a run") && o.stderr.contains("--resume"), "{}", o.stderr);
    assert!(o.stderr.contains("--overwrite") && o.stderr.contains("new directory"), "{}", o.stderr);
    assert_eq!(f.metrics("run"), before, "the old run is untouched");

    ok(&mut f.train("run", 2, &["--overwrite"]));
    assert_eq!(train_steps(&f.metrics("run")), vec![1, 2], "only the new run's records");
    assert_eq!(checkpoint_names(&f.p("run")), vec!["step_00000002"], "old checkpoints are gone");
    // --overwrite belongs to new runs only.
    fails(f.resume("run", &[]).arg("--overwrite"));
}

#[test]
fn a_second_trainer_on_a_run_fails_at_once_and_a_killed_one_leaves_no_stale_lock() {
    let f = Fixture::new();
    ok(&mut f.train("run", 2, &[]));
    {
        let _held = RunLock::acquire(&f.p("run")).unwrap();
        let o = fails(&mut f.resume("run", &["--steps", "4"]));
        assert!(o.stderr.contains("in use by another trainer"), "{}", o.stderr);
        assert!(o.stderr.contains(&f.p("run").display().to_string()), "{}", o.stderr);
    }
    // The lock file is still there, but the lock went with its holder.
    assert!(f.p("run/.lock").exists());
    ok(&mut f.resume("run", &["--steps", "4"]));

    // kill -9 while training: the OS releases the lock.
    let mut child = f.train("long", 100_000, &[]).spawn().unwrap();
    let metrics = f.p("long/metrics.jsonl");
    let t0 = std::time::Instant::now();
    while !metrics.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(metrics.exists(), "the trainer never started");
    assert!(RunLock::acquire(&f.p("long")).is_err(), "the running trainer holds the lock");
    child.kill().unwrap();
    child.wait().unwrap();
    RunLock::acquire(&f.p("long")).expect("no stale lock after kill -9");
}

#[test]
fn failed_writers_leave_the_previous_output_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("puzzles.csv");
    std::fs::write(&out, "keep me\n").unwrap();
    let o = fails(
        hrm()
            .args(["data", "generate", "-n", "100", "--mode", "easy", "--max-batches", "1", "--out"])
            .arg(&out),
    );
    assert!(o.stderr.contains("only 32 of 100") && o.stderr.contains("not written"), "{}", o.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

    // A build that fails keeps the previous dataset.
    let f = Fixture::new();
    let before = std::fs::read(f.p("ds/train/data.bin")).unwrap();
    std::fs::write(f.p("bad.txt"), format!("{}\n", ".".repeat(81))).unwrap();
    fails(hrm().args(["data", "build", "--train", "1", "--out"]).arg(f.p("ds")).arg(f.p("bad.txt")));
    assert_eq!(std::fs::read(f.p("ds/train/data.bin")).unwrap(), before);
}

#[test]
fn resume_cuts_a_torn_metrics_line_and_records_past_the_checkpoint_and_plot_skips_a_torn_line() {
    let f = Fixture::new();
    ok(&mut f.train("run", 4, &[]));
    // As if killed after logging step 4 but before its checkpoint, mid-way through a record.
    std::fs::remove_dir_all(f.p("run/checkpoints/step_00000004")).unwrap();
    let metrics = f.p("run/metrics.jsonl");
    let mut text = f.metrics("run");
    text.push_str("{\"kind\":\"train\",\"step\":5,\"lm_lo");
    std::fs::write(&metrics, &text).unwrap();

    // Plotting the damaged file works and says what it skipped.
    let o = ok(hrm().arg("plot").arg(f.p("run")));
    assert!(o.stderr.contains("torn"), "{}", o.stderr);

    let o = ok(&mut f.resume("run", &[]));
    assert!(o.stderr.contains("at step 2"), "{}", o.stderr);
    let m = f.metrics("run");
    assert!(m.ends_with('\n'));
    assert_eq!(train_steps(&m), vec![1, 2, 3, 4], "each step once:\n{m}");
    ok(hrm().arg("plot").arg(f.p("run")));
}

#[test]
fn zero_batch_sizes_and_counts_are_refused_by_the_argument_parser() {
    let f = Fixture::new();
    let ck = f.p("ck.safetensors");
    ok(hrm().args(["init", "--preset", "tiny", "--out"]).arg(&ck));
    let cases: Vec<(Command, &str)> = vec![
        (f.train("r1", 2, &["--batch-size", "0"]), "--batch-size"),
        (
            {
                let mut c = hrm();
                c.args(["demo", "--batch-size", "0", "--out"]).arg(f.p("d1"));
                c
            },
            "--batch-size",
        ),
        (
            {
                let mut c = hrm();
                c.args(["demo", "--train-puzzles", "0", "--out"]).arg(f.p("d2"));
                c
            },
            "--train-puzzles",
        ),
        (
            {
                let mut c = hrm();
                c.args(["eval", "--batch-size", "0", "--checkpoint"]).arg(&ck).arg(f.p("held.txt"));
                c
            },
            "--batch-size",
        ),
    ];
    for (mut c, flag) in cases {
        let o = fails(&mut c);
        assert_eq!(o.code, Some(2), "{}", o.stderr);
        assert!(o.stderr.contains(flag) && o.stderr.contains("at least 1"), "{}", o.stderr);
    }
    assert!(!f.p("r1").exists() && !f.p("d1").exists() && !f.p("d2").exists());
}

#[test]
fn absurd_model_and_batch_sizes_are_refused_before_allocating() {
    let f = Fixture::new();
    let big = |field: &str, value: serde_json::Value| {
        let mut v = serde_json::to_value(ModelConfig::tiny()).unwrap();
        v[field] = value;
        let p = f.p(&format!("{field}_{}.json", v[field]));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    // Past the config's bounds: refused by its validation, naming the field; within them but
    // too large for the machine: refused by the memory estimate.
    let configs = [
        (big("hidden_size", 1_000_000_000u64.into()), "hidden_size is 1000000000; at most"),
        (big("expansion", 1e12.into()), "expansion is 1000000000000; at most"),
        (big("H_layers", 1_000_000_000u64.into()), "H_layers is 1000000000; at most"),
        (big("hidden_size", 65536u64.into()), "needs at least"),
    ];
    for (cfg, says) in &configs {
        let t0 = std::time::Instant::now();
        let o = fails(f.train("r", 2, &[]).arg("--config").arg(cfg));
        assert!(o.stderr.contains(says), "{}", o.stderr);
        let o = fails(hrm().args(["init", "--config"]).arg(cfg).arg("--out").arg(f.p("w.safetensors")));
        assert!(o.stderr.contains(says), "{}", o.stderr);
        assert!(t0.elapsed().as_secs() < 30, "refused before any allocation");
    }
    let o = fails(&mut f.train("r", 2, &["--batch-size", "100000000"]));
    assert!(o.stderr.contains("batch 100000000") && o.stderr.contains("needs at least"), "{}", o.stderr);
    assert!(!f.p("r").exists(), "nothing is created");
}

#[test]
fn numeric_flags_outside_their_range_are_refused() {
    let f = Fixture::new();
    for (flag, value) in [
        ("--ema", "1"),
        ("--ema", "0"),
        ("--ema", "1.5"),
        ("--lr", "-0.0001"),
        ("--lr", "nan"),
        ("--beta1", "1"),
        ("--beta2", "-0.1"),
        ("--weight-decay", "-1"),
        ("--puzzle-emb-weight-decay", "-1"),
        ("--halt-exploration-prob", "1.5"),
        ("--lr-min-ratio", "2"),
        ("--keep", "0"),
        ("--log-every", "0"),
        ("--checkpoint-every", "0"),
        ("--eval-every", "0"),
        ("--eval-batch-size", "0"),
        ("--steps", "0"),
        ("--epochs", "0"),
    ] {
        let o = fails(&mut f.train("r", 2, &[flag, value]));
        assert_eq!(o.code, Some(2), "{flag} {value}: {}", o.stderr);
        assert!(
            o.stderr.contains("invalid value") && o.stderr.contains(flag),
            "{flag} {value}: {}",
            o.stderr
        );
    }
    let o = fails(hrm().args(["--threads", "0", "data", "stats"]).arg(f.p("held.txt")));
    assert!(o.stderr.contains("--threads"), "{}", o.stderr);
}

/// Overwrite the first value of tensor `name` in a safetensors file with `bits`.
fn poke_f32(path: &Path, name: &str, bits: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_newest_checkpoint_names_the_previous_one_and_resume_from_picks_it() {
    let f = Fixture::new();
    ok(&mut f.train("run", 4, &["--stop-after", "4", "--steps", "6"]));
    let state = f.p("run/checkpoints/step_00000004/state.safetensors");
    poke_f32(&state, "adam_m.model.inner.H_init", f32::NAN.to_bits());
    let o = fails(&mut f.resume("run", &[]));
    for want in ["non-finite", "step_00000004 is corrupt", "step_00000002", "--resume-from"] {
        assert!(o.stderr.contains(want), "missing {want:?}: {}", o.stderr);
    }
    // A truncated file says the same.
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let o = fails(&mut f.resume("run", &[]));
    assert!(o.stderr.contains("truncated") && o.stderr.contains("step_00000002"), "{}", o.stderr);

    let prev = f.p("run/checkpoints/step_00000002");
    let o = ok(f.resume("run", &[]).arg("--resume-from").arg(&prev));
    assert!(o.stderr.contains("at step 2"), "{}", o.stderr);
    let names = checkpoint_names(&f.p("run"));
    assert!(names.contains(&"discarded_step_00000004".to_string()), "{names:?}");
    assert!(names.contains(&"step_00000006".to_string()), "{names:?}");
    assert_eq!(train_steps(&f.metrics("run")), vec![1, 2, 3, 4, 5, 6]);
    // The run's own checkpoint of step 4 is now the fresh one.
    let (_, params) = load_checkpoint(&f.p("run/checkpoints/step_00000004/model.safetensors"), None).unwrap();
    assert!(params.tensors().iter().all(|t| t.iter().all(|x| x.is_finite())));
    // --resume-from must be a complete checkpoint.
    let o = fails(f.resume("run", &[]).arg("--resume-from").arg(f.p("run")));
    assert!(o.stderr.contains("not a complete checkpoint"), "{}", o.stderr);
}

#[test]
fn solve_checks_a_puzzle_argument_like_a_file_and_reports_missing_files() {
    let f = Fixture::new();
    let ck = f.p("ck.safetensors");
    ok(hrm().args(["init", "--preset", "tiny", "--out"]).arg(&ck));
    let solve = |arg: &str| {
        let mut c = hrm();
        c.args(["solve", "--checkpoint"]).arg(&ck).arg(arg);
        c
    };
    let contradictory = format!("11{}", ".".repeat(79));
    let o = fails(&mut solve(&contradictory));
    assert!(o.stderr.contains("contradictory givens"), "{}", o.stderr);
    let o = fails(&mut solve(&".".repeat(81)));
    assert!(o.stderr.contains("more than one solution"), "{}", o.stderr);
    // No solution: a blank cell whose row, column and box already hold all nine digits.
    let mut b = ['.'; 81];
    for (i, d) in "12345678".chars().enumerate() {
        b[i + 1] = d;
    }
    b[9] = '9';
    let o = fails(&mut solve(&b.iter().collect::<String>()));
    assert!(o.stderr.contains("no solution"), "{}", o.stderr);
    let missing = f.p("nope/puzzles.txt").display().to_string();
    let o = fails(&mut solve(&missing));
    assert!(o.stderr.contains("no such file") && o.stderr.contains("nope/puzzles.txt"), "{}", o.stderr);
    assert!(!o.stderr.contains("expected 81"), "{}", o.stderr);
    // A proper puzzle still runs.
    let held = std::fs::read_to_string(f.p("held.txt")).unwrap();
    let o = ok(&mut solve(held.lines().next().unwrap()));
    assert!(o.stdout.contains("answer  "), "{}", o.stdout);
}

#[test]
fn malformed_run_json_is_named_and_a_dataset_root_is_accepted() {
    let f = Fixture::new();
    // The dataset root (train/ and test/ below it) holds exactly one training split.
    let o = ok(&mut f.train_on(&f.p("ds"), "run", 2, &[]));
    assert!(o.stderr.contains("using its training split"), "{}", o.stderr);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.p("run/run.json")).unwrap()).unwrap();
    assert!(saved["data"].as_str().unwrap().ends_with("train"), "{saved}");

    std::fs::write(f.p("run/run.json"), "{\"data\": ").unwrap();
    let o = fails(&mut f.resume("run", &[]));
    assert!(o.stderr.contains("run.json") && o.stderr.contains("malformed"), "{}", o.stderr);

    std::fs::create_dir_all(f.p("empty")).unwrap();
    let o = fails(&mut f.train_on(&f.p("empty"), "r2", 2, &[]));
    assert!(o.stderr.contains("empty") && o.stderr.contains("expected a split directory"), "{}", o.stderr);
}

#[test]
fn byte_order_marks_are_accepted_and_empty_sets_are_errors() {
    let f = Fixture::new();
    let ck = f.p("ck.safetensors");
    ok(hrm().args(["init", "--preset", "tiny", "--out"]).arg(&ck));
    let held = std::fs::read_to_string(f.p("held.txt")).unwrap();
    std::fs::write(f.p("bom.txt"), format!("\u{feff}{held}")).unwrap();
    let eval = |set: &Path, extra: &[&str]| {
        let mut c = hrm();
        c.args(["eval", "--checkpoint"]).arg(&ck).arg(set).args(extra);
        c
    };
    let o = ok(&mut eval(&f.p("bom.txt"), &[]));
    assert!(o.stdout.contains("bom") && o.stdout.contains(" 4 "), "{}", o.stdout);
    // A CSV whose header starts with a BOM.
    ok(hrm().args(["data", "import", "--out"]).arg(f.p("held.csv")).arg(f.p("held.txt")));
    let csv = std::fs::read_to_string(f.p("held.csv")).unwrap();
    std::fs::write(f.p("bom.csv"), format!("\u{feff}{csv}")).unwrap();
    ok(hrm().args(["data", "import", "--out"]).arg(f.p("again.csv")).arg(f.p("bom.csv")));
    assert_eq!(std::fs::read_to_string(f.p("again.csv")).unwrap().replace("bom,", "held,"), csv);

    std::fs::write(f.p("empty.txt"), "").unwrap();
    std::fs::write(f.p("comments.txt"), "# nothing\n\n# here\n").unwrap();
    for set in ["empty.txt", "comments.txt"] {
        let o = fails(&mut eval(&f.p(set), &[]));
        assert!(o.stderr.contains(set) && o.stderr.contains("no puzzles"), "{}", o.stderr);
        assert!(!o.stdout.contains("exact"), "{}", o.stdout);
    }
    let o = fails(&mut eval(&f.p("held.txt"), &["--limit", "0"]));
    assert!(o.stderr.contains("--limit"), "{}", o.stderr);
    let o =
        fails(hrm().args(["data", "build", "--train", "0", "--out"]).arg(f.p("ds0")).arg(f.p("held.txt")));
    assert!(o.stderr.contains("nothing to build"), "{}", o.stderr);
    assert!(!f.p("ds0/train").exists());
}

#[test]
fn threads_are_capped_ratings_ordered_and_duplicate_names_refused() {
    let f = Fixture::new();
    let o = ok(hrm().args(["--threads", "100000", "data", "stats"]).arg(f.p("held.txt")));
    assert!(o.stderr.contains("warning: --threads 100000"), "{}", o.stderr);
    let o = fails(
        hrm()
            .args(["data", "generate", "--min-rating", "100", "--max-rating", "50", "--out"])
            .arg(f.p("g.csv")),
    );
    assert!(o.stderr.contains("--min-rating 100 is above --max-rating 50"), "{}", o.stderr);

    let cfg = ModelConfig::tiny();
    let p = HostParams::init(&cfg, &mut hrm::rng::seeded(1));
    let mut tensors: Vec<NamedTensor> = tensor_specs(&cfg)
        .into_iter()
        .zip(p.tensors())
        .map(|(s, t)| NamedTensor::f32(s.name, s.shape, t.clone()))
        .collect();
    let dup = NamedTensor { name: format!("_orig_mod.{}", tensors[0].name), ..tensors[0].clone() };
    let first = tensors[0].name.clone();
    tensors.push(dup);
    let path = f.p("dup.safetensors");
    write_tensors(&path, &tensors, None).unwrap();
    let e = format!("{:#}", load_checkpoint(&path, Some(&cfg)).unwrap_err());
    assert!(e.contains(&format!("'{first}'")) && e.contains(&format!("'_orig_mod.{first}'")), "{e}");
}

#[test]
fn train_init_uses_the_config_stored_in_the_weights() {
    let f = Fixture::new();
    let mut cfg = ModelConfig::tiny();
    cfg.hidden_size = 32;
    cfg.puzzle_emb_ndim = 32;
    cfg.H_layers = 1;
    let w = f.p("w.safetensors");
    save_checkpoint(&w, &cfg, &HostParams::init(&cfg, &mut hrm::rng::seeded(3))).unwrap();
    let mut c = hrm();
    c.args(["--threads", "2", "train", "--data"]).arg(f.p("ds/train"));
    c.args(["--batch-size", "4", "--steps", "1", "--init"]).arg(&w).arg("--out").arg(f.p("run"));
    let o = ok(&mut c);
    assert!(o.stderr.contains("the one stored in"), "{}", o.stderr);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.p("run/config.json")).unwrap()).unwrap();
    assert_eq!(saved["model"]["hidden_size"], 32);
    assert_eq!(saved["model"]["H_layers"], 1);
    // --preset still wins (and then the weights must fit it).
    let mut c = hrm();
    c.args(["train", "--preset", "tiny", "--data"]).arg(f.p("ds/train"));
    c.args(["--batch-size", "4", "--steps", "1", "--init"]).arg(&w).arg("--out").arg(f.p("run2"));
    let o = fails(&mut c);
    assert!(o.stderr.contains("w.safetensors"), "{}", o.stderr);
}
