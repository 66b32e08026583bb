//! Data-parallel training under the CPU emulation (the stand-in libnccl of `emu/nccl.cpp`):
//! the stand-in's collectives across processes (and a planted bug that must fail), 2 ranks x
//! batch B/2 against 1 rank x batch B (and a planted missing reduction that must fail), run to
//! run bit for bit, stop and resume, and the failure paths (a rank
//! killed mid-run, a wrong port, a mismatched world size at the rendezvous and on resume).
//! Every run goes through the binary (`hrm train --nproc N --device emu`), as CI runs it.

mod common;
use hrm::backend::Backend;
use hrm::backend::collective::{Collective, GroupComm, ProcessGroup};
use hrm::backend::cuda::nccl::{NcclComm, comm_of};
use hrm::backend::cuda::{Cuda, CudaDevice};
use hrm::model::checkpoint::TensorFile;
use hrm::train::distributed::{Dist, DistEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hrm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hrm"))
}

fn emulation_available() -> bool {
    CudaDevice::for_tests("distributed").is_some()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn output(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

// ---- The stand-in's collectives, rank by rank (each rank is this test binary re-run). ----

/// Rank r's test vector: element 0 makes the order of a 3-way f32 sum visible
/// ((2^24 + 1) + 1 = 2^24 but (1 + 1) + 2^24 = 2^24 + 2).
fn vector(r: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..7).map(|i| (r as f32 + 1.0) * (i as f32 + 0.25) - 3.0 * r as f32).collect();
    v[0] = if r == 0 { 16_777_216.0 } else { 1.0 };
    v
}

fn rank_order_sum(world: usize) -> Vec<f32> {
    let mut acc = vector(0);
    for r in 1..world {
        for (a, x) in acc.iter_mut().zip(vector(r)) {
            *a += x;
        }
    }
    acc
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn nccl_worker() {
    if std::env::var("HRM_NCCL_TEST_WORKER").is_err() {
        return; // only runs as a rank started by the tests below
    }
    let env = DistEnv::from_env().unwrap().expect("RANK and WORLD_SIZE");
    let dev = CudaDevice::for_tests("nccl_worker").expect("the emulation");
    let be = Cuda::new(dev.clone());
    let d = Dist::connect(&env, hrm::backend::cuda::nccl::unique_id).unwrap();
    let (r, w) = (env.rank, env.world);
    let expect = rank_order_sum(w);

    // In-place sum of one buffer.
    let mut a = be.upload_f32(&vector(r));
    d.collective(&be, "sum", Collective::Sum, &mut [&mut a]).unwrap();
    assert_eq!(bits(&be.download_f32(&a)), bits(&expect), "rank {r}: in-place all-reduce");

    // Out of place, straight through the communicator; the source stays as it was.
    let comm = comm_of(&dev, &d.group).unwrap();
    let comm = comm.as_any().downcast_ref::<NcclComm>().unwrap();
    let src = be.upload_f32(&vector(r));
    let mut dst = be.upload_f32(&[f32::NAN; 7]);
    comm.all_reduce_sum_into(&src, &mut dst).unwrap();
    assert_eq!(bits(&be.download_f32(&dst)), bits(&expect), "rank {r}: out-of-place all-reduce");
    assert_eq!(bits(&be.download_f32(&src)), bits(&vector(r)), "rank {r}: source changed");

    // Two buffers of different lengths: the flat all-reduce of the backend, and a group call.
    let v = vector(r);
    let (mut x, mut y) = (be.upload_f32(&v[..3]), be.upload_f32(&v[3..]));
    d.collective(&be, "flat sum", Collective::Sum, &mut [&mut x, &mut y]).unwrap();
    let mut got = be.download_f32(&x);
    got.extend(be.download_f32(&y));
    assert_eq!(bits(&got), bits(&expect), "rank {r}: flat all-reduce of two buffers");
    let (mut x, mut y) = (be.upload_f32(&v[..3]), be.upload_f32(&v[3..]));
    comm.all_reduce_sum_group(&mut [&mut x, &mut y]).unwrap();
    let mut got = be.download_f32(&x);
    got.extend(be.download_f32(&y));
    assert_eq!(bits(&got), bits(&expect), "rank {r}: grouped all-reduce");

    // Broadcast from the last rank, all-gather in rank order.
    let root = w - 1;
    let mut b = be.upload_f32(&vector(r));
    d.collective(&be, "broadcast", Collective::Broadcast { root }, &mut [&mut b]).unwrap();
    assert_eq!(bits(&be.download_f32(&b)), bits(&vector(root)), "rank {r}: broadcast");
    let mut host = vec![f32::NAN; 7 * w];
    host[r * 7..(r + 1) * 7].copy_from_slice(&vector(r));
    let mut g = be.upload_f32(&host);
    d.collective(&be, "gather", Collective::AllGather, &mut [&mut g]).unwrap();
    let want: Vec<f32> = (0..w).flat_map(vector).collect();
    assert_eq!(bits(&be.download_f32(&g)), bits(&want), "rank {r}: all-gather");
    // The training step's hooks: dense gradients summed (the puzzle gradient rows left alone),
    // the puzzle gradient rows and ids of every rank's rows gathered (what SignSGD sums and
    // updates), the window's metrics summed in rank order, rank by rank.
    let cfg = hrm::config::ModelConfig::tiny();
    let nd = cfg.puzzle_emb_ndim;
    let mut grads = hrm::model::ParamSet::from_specs(&cfg, |s| match s.kind {
        hrm::model::TensorKind::SparseEmbedding => be.upload_f32(&vec![r as f32 + 0.5; 2 * nd]),
        _ => be.upload_f32(&vec![r as f32 + 0.5; s.numel()]),
    });
    hrm::train::distributed::reduce_grads(Some(&d), &be, &mut grads).unwrap();
    let want_g: f32 = (0..w).map(|q| q as f32 + 0.5).sum();
    for g in grads.dense_tensors() {
        assert!(be.download_f32(g).iter().all(|x| *x == want_g), "rank {r}: summed gradient");
    }
    let rows = grads.puzzle_emb.as_ref().expect("the tiny model has a puzzle embedding");
    assert!(be.download_f32(rows).iter().all(|x| *x == r as f32 + 0.5), "rank {r}: puzzle rows not summed");
    let mine: Vec<f32> = (0..2 * nd).map(|i| (r * 1000 + i) as f32).collect();
    let local_rows = be.upload_f32(&mine);
    let local = be.upload_i32(&[r as i32 * 10, 1]);
    let (all_rows, ids) =
        hrm::train::distributed::gather_puzzle_rows(Some(&d), &be, Some(&local_rows), &local)
            .unwrap()
            .unwrap();
    let want_ids: Vec<i32> = (0..w).flat_map(|q| [q as i32 * 10, 1]).collect();
    assert_eq!(be.download_i32(&ids), want_ids, "rank {r}: puzzle ids of all ranks, in rank order");
    let want_rows: Vec<f32> = (0..w).flat_map(|q| (0..2 * nd).map(move |i| (q * 1000 + i) as f32)).collect();
    assert_eq!(bits(&be.download_f32(&all_rows)), bits(&want_rows), "rank {r}: gradient rows, in rank order");
    let mine = hrm::backend::ActReport {
        steps: 2,
        lm_loss: 0.1 * (r + 1) as f64,
        count: r as u64 + 1,
        steps_sum: 10 * r as u64,
        bad_step: (r == 1).then_some(7),
        bad_tensor: (r == 1).then_some(3),
        ..Default::default()
    };
    let all = hrm::train::distributed::reduce_report(Some(&d), &be, mine).unwrap();
    let want_lm = (0..w).fold(0.0, |a, q| a + 0.1 * (q + 1) as f64);
    assert_eq!(all.lm_loss.to_bits(), want_lm.to_bits(), "rank {r}: summed lm loss");
    assert_eq!(
        (all.steps, all.count, all.steps_sum),
        (2, (1..=w as u64).sum(), (0..w as u64).map(|q| 10 * q).sum())
    );
    assert_eq!((all.bad_step, all.bad_tensor), (Some(7), Some(3)), "rank {r}: rank 1's bad step reaches all");
    d.finish();
    println!("rank {r}: all collectives exact");
}

/// Runs `world` ranks of `nccl_worker`; returns (all succeeded, their output).
fn run_workers(world: usize, plant: Option<&str>) -> (bool, String) {
    let port = free_port().to_string();
    let mut children = Vec::new();
    for r in 0..world {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["nccl_worker", "--exact", "--nocapture", "--test-threads", "1"])
            .env("HRM_NCCL_TEST_WORKER", "1")
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("HRM_DIST_TIMEOUT_S", "60")
            .env("HRM_NCCL_EMU_TIMEOUT_S", "60")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = plant {
            c.env("HRM_NCCL_EMU_PLANT", p);
        }
        children.push(c.spawn().unwrap());
    }
    let mut all_ok = true;
    let mut text = String::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        all_ok &= o.status.success();
        text += &String::from_utf8_lossy(&o.stdout);
        text += &String::from_utf8_lossy(&o.stderr);
    }
    (all_ok, text)
}

#[test]
fn the_nccl_stand_in_sums_broadcasts_and_gathers_exactly_across_processes() {
    if !emulation_available() {
        return;
    }
    for world in [2, 3] {
        let (ok, text) = run_workers(world, None);
        assert!(ok, "{world} ranks:\n{text}");
        assert_eq!(text.matches("all collectives exact").count(), world, "{text}");
    }
    // A planted bug in the stand-in (ranks combined in reverse order) must be caught: with 3
    // ranks the order-sensitive element of the sum, and the all-gather's chunk order, differ.
    let (ok, text) = run_workers(3, Some("reverse"));
    assert!(!ok, "the reversed rank order went unnoticed:\n{text}");
    assert!(text.contains("all-reduce"), "{text}");
}

// ---- Failures as NCCL reports them: asynchronously, and a freed communicator after an abort. ----

/// One rank of a failure scenario (`HRM_NCCL_TEST_SCENARIO`; started by the tests below):
/// - `peer_aborts` / `peer_dies`: after one good all-reduce, rank 1 aborts its communicator
///   (and its next collective must be an error) or exits without a goodbye; rank 0's next
///   all-reduce must then be an error naming rank 1, not success with its own values. These
///   run on a group of their own (no health channel reaches it), so only NCCL's asynchronous
///   error can tell.
/// - `dies_before_init`: rank 1 exits right after the rendezvous, before the NCCL start-up;
///   rank 0's first collective (which starts NCCL) must stop at once naming rank 1.
/// - `hangs_before_init`: rank 1 stays alive but never starts NCCL; rank 0's start-up must give
///   up after `HRM_DIST_TIMEOUT_S`, and rank 1 be told to stop.
///
/// `HRM_NCCL_TEST_PLANT` plants a bug in the communicator (see `nccl::plant_fault`).
#[test]
fn nccl_failure_worker() {
    let Ok(scenario) = std::env::var("HRM_NCCL_TEST_SCENARIO") else { return };
    let plant = std::env::var("HRM_NCCL_TEST_PLANT").unwrap_or_default();
    hrm::backend::cuda::nccl::plant_fault(plant == "skip_async_error_check", plant == "call_after_abort");
    let env = DistEnv::from_env().unwrap().expect("RANK and WORLD_SIZE");
    let dev = CudaDevice::for_tests("nccl_failure_worker").expect("the emulation");
    let be = Cuda::new(dev.clone());
    let d = Dist::connect(&env, hrm::backend::cuda::nccl::unique_id).unwrap();
    let r = env.rank;
    match scenario.as_str() {
        "peer_aborts" | "peer_dies" => {
            let group = ProcessGroup::new(r, env.world, d.group.nccl_id, Duration::from_secs(60));
            let comm = NcclComm::init(&dev, &group).unwrap();
            let mut a = be.upload_f32(&vector(r));
            comm.all_reduce_sum(&mut a).unwrap();
            assert_eq!(bits(&be.download_f32(&a)), bits(&rank_order_sum(env.world)));
            if r == 1 {
                if scenario == "peer_dies" {
                    std::process::exit(0);
                }
                comm.abort();
                let mut b = be.upload_f32(&vector(r));
                let err = comm.all_reduce_sum(&mut b).expect_err("a collective after the abort succeeded");
                assert!(format!("{err:#}").contains("aborted"), "{err:#}");
                assert_eq!(bits(&be.download_f32(&b)), bits(&vector(r)), "the aborted call wrote its buffer");
                println!("rank 1: collective after abort refused: {err:#}");
                return;
            }
            let mut b = be.upload_f32(&vector(r));
            let err = match comm.all_reduce_sum(&mut b) {
                Ok(()) => panic!(
                    "rank 0: an all-reduce whose peer is gone succeeded, holding {:?} (its own \
                     values: partial data)",
                    be.download_f32(&b)
                ),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains("rank 1"), "rank 0's error must name the peer: {err}");
            // The communicator stays failed, and after our own abort a call is an error that
            // does not touch the freed communicator (the stand-in stops the process if it does).
            assert!(comm.all_reduce_sum(&mut b).is_err(), "a broken communicator worked again");
            comm.abort();
            let after = comm.all_reduce_sum(&mut b).expect_err("a collective after the abort succeeded");
            assert!(format!("{after:#}").contains("aborted"), "{after:#}");
            println!("rank 0: the dead peer was reported: {err}");
            d.finish();
        }
        "dies_before_init" | "hangs_before_init" => {
            if r == 1 {
                if scenario == "dies_before_init" {
                    // (after rank 0 has begun the start-up, so it is the start-up that is cut)
                    std::thread::sleep(Duration::from_secs(2));
                    std::process::exit(0);
                }
                // Alive but never starting NCCL; rank 0 tells us when it gives up.
                let start = Instant::now();
                while !d.group.is_aborted() && start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                assert!(d.group.is_aborted(), "rank 1 was not told that rank 0 gave up");
                println!("rank 1: told to stop: {}", d.group.abort_reason().unwrap_or_default());
                return;
            }
            let start = Instant::now();
            let mut a = be.upload_f32(&vector(r));
            let err = d
                .collective(&be, "first sum", Collective::Sum, &mut [&mut a])
                .expect_err("the first collective succeeded without rank 1");
            let took = start.elapsed();
            println!("rank 0: NCCL start-up given up after {took:?}: {err:#}");
            assert!(took < Duration::from_secs(20), "took {took:?}");
            d.fail(&format!("{err:#}")); // as `ranked` reports a failed rank
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs the two ranks of a `nccl_failure_worker` scenario; returns (rank 0 succeeded, rank 1
/// succeeded, their output).
fn run_scenario(scenario: &str, plant: Option<&str>, dist_timeout_s: u32) -> (bool, bool, String) {
    let port = free_port().to_string();
    let mut children = Vec::new();
    for r in 0..2 {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["nccl_failure_worker", "--exact", "--nocapture", "--test-threads", "1"])
            .env("HRM_NCCL_TEST_SCENARIO", scenario)
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("HRM_DIST_TIMEOUT_S", dist_timeout_s.to_string())
            .env("HRM_NCCL_EMU_TIMEOUT_S", "60")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = plant {
            c.env("HRM_NCCL_TEST_PLANT", p);
        }
        children.push(c.spawn().unwrap());
    }
    let mut ok = Vec::new();
    let mut text = String::new();
    for (r, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        ok.push(o.status.success());
        text += &format!("---- rank {r} ({}) ----\n", o.status);
        text += &String::from_utf8_lossy(&o.stdout);
        text += &String::from_utf8_lossy(&o.stderr);
    }
    (ok[0], ok[1], text)
}

#[test]
fn a_collective_whose_peer_aborted_or_died_is_an_error_not_partial_data() {
    if !emulation_available() {
        return;
    }
    for scenario in ["peer_aborts", "peer_dies"] {
        let (ok0, ok1, text) = run_scenario(scenario, None, 60);
        assert!(ok0 && ok1, "{scenario}:\n{text}");
        assert!(text.contains("rank 0: the dead peer was reported"), "{scenario}:\n{text}");
        // The stand-in's report names the rank that left.
        assert!(text.contains("rank 1 (pid"), "{scenario}:\n{text}");
    }
    // Planted: the asynchronous error is not checked, so rank 0 takes its own values for the
    // sum (the call itself returned success); the test must catch it.
    let (ok0, _, text) = run_scenario("peer_dies", Some("skip_async_error_check"), 60);
    assert!(!ok0, "an unchecked asynchronous error went unnoticed:\n{text}");
    assert!(text.contains("partial data"), "{text}");
    // Planted: the handle is kept after ncclCommAbort freed it; the stand-in catches the use.
    let (_, ok1, text) = run_scenario("peer_aborts", Some("call_after_abort"), 60);
    assert!(!ok1, "a call on a freed communicator went unnoticed:\n{text}");
    assert!(text.contains("already freed"), "{text}");
}

#[test]
fn a_rank_missing_at_the_nccl_start_up_is_given_up_on_in_time() {
    if !emulation_available() {
        return;
    }
    // Dead before NCCL started: the health channel names it and the non-blocking start-up is
    // aborted at once (a blocking ncclCommInitRank would wait for HRM_NCCL_EMU_TIMEOUT_S).
    let (ok0, _, text) = run_scenario("dies_before_init", None, 60);
    assert!(ok0, "{text}");
    assert!(text.contains("ncclCommInitRankConfig (rank 0 of 2) given up"), "{text}");
    assert!(text.contains("rank 1 disconnected without finishing"), "{text}");
    // Alive but silent: given up after HRM_DIST_TIMEOUT_S (5 s here), and rank 1 is told.
    let (ok0, ok1, text) = run_scenario("hangs_before_init", None, 5);
    assert!(ok0 && ok1, "{text}");
    assert!(text.contains("rank 0: NCCL start-up given up after"), "{text}");
    assert!(text.contains("rank 1: told to stop: rank 0 failed"), "{text}");
}

#[test]
fn a_rank_uses_its_local_rank_modulo_the_visible_devices() {
    assert_eq!(hrm::backend::cuda::device::device_for_local_rank(3, 1), 0);
    assert_eq!(hrm::backend::cuda::device::device_for_local_rank(3, 8), 3);
    assert_eq!(hrm::backend::cuda::device::device_for_local_rank(9, 8), 1);
    if !emulation_available() {
        return;
    }
    // One visible device per process (the emulation has one): LOCAL_RANK 3 uses device 0 and
    // says so, and the run works.
    let f = fixture();
    let mut c = f.train("local_rank", 1, 1, &[]);
    c.env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("LOCAL_RANK", "3")
        .env("MASTER_PORT", free_port().to_string());
    let (ok, text) = output(&mut c);
    assert!(ok, "{text}");
    assert!(text.contains("LOCAL_RANK 3 uses device 0 of the 1 visible"), "{text}");
}

// ---- Training through the binary. ----

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// A tiny dataset and model (1 layer per module, hidden 32, 3 segments) so emulated runs
/// take seconds.
fn fixture() -> Fixture {
    let mut arch = hrm::config::ModelConfig::tiny();
    arch.H_layers = 1;
    arch.L_layers = 1;
    arch.hidden_size = 32;
    arch.num_heads = 2;
    arch.puzzle_emb_ndim = 32;
    arch.halt_max_steps = 3;
    fixture_of(&arch)
}

fn fixture_of(arch: &hrm::config::ModelConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let train = hrm::train::data::blanked_puzzles(16, 5..10, 1);
    let lines: String =
        train.iter().map(|(q, _)| hrm::sudoku::board::board_to_string(q, '.') + "\n").collect();
    std::fs::write(root.join("train.txt"), lines).unwrap();
    let (ok, text) = output(
        hrm()
            .args(["data", "build", "--train", "16", "--augment", "1", "--out"])
            .arg(root.join("ds"))
            .arg(root.join("train.txt")),
    );
    assert!(ok, "{text}");
    std::fs::write(root.join("arch.json"), arch.to_json()).unwrap();
    Fixture { _dir: dir, root }
}

impl Fixture {
    /// `hrm train` of the tiny model: global batch 4, `steps` steps, checkpoints every 2.
    fn train(&self, out: &str, nproc: usize, steps: u64, extra: &[&str]) -> Command {
        let mut c = hrm();
        c.args(["train", "--device", "emu", "--data"]).arg(self.root.join("ds/train"));
        c.arg("--config").arg(self.root.join("arch.json"));
        c.args([
            "--batch-size",
            "4",
            "--lr-warmup-steps",
            "1",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
        ]);
        c.args(["--steps", &steps.to_string(), "--out"]).arg(self.root.join(out));
        if nproc > 1 {
            c.args(["--nproc", &nproc.to_string()]);
        }
        c.args(extra);
        c.env("HRM_DIST_TIMEOUT_S", "60");
        c
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

fn state(run: &Path, step: u64) -> TensorFile {
    TensorFile::open(&run.join(format!("checkpoints/step_{step:08}/state.safetensors"))).unwrap()
}

fn assert_same_bits(a: &TensorFile, b: &TensorFile) {
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        if let (Ok(x), Ok(y)) = (a.f32(n, None), b.f32(n, None)) {
            assert_eq!(bits(&x), bits(&y), "{n} differs");
        } else {
            assert_eq!(a.i32(n, None).unwrap(), b.i32(n, None).unwrap(), "{n} differs");
        }
    }
}

/// The parameters of two runs that differ only in the order of f32 gradient sums, after
/// `steps` AdamATan2 steps of lr 1e-4: see the reasoning in the test below.
fn assert_within_reduction_bound(what: &str, a: &TensorFile, b: &TensorFile, steps: u64) {
    if let Err(e) = reduction_bound(what, a, b, steps) {
        panic!("{e}");
    }
}

fn reduction_bound(what: &str, a: &TensorFile, b: &TensorFile, steps: u64) -> Result<(), String> {
    let lr = 1e-4f64;
    let (mut total, mut far, mut worst) = (0usize, 0usize, 0f64);
    for n in a.names().iter().filter(|n| n.starts_with("param.")) {
        let (x, y) = (a.f32(n, None).unwrap(), b.f32(n, None).unwrap());
        assert_eq!(x.len(), y.len(), "{n}");
        for (p, q) in x.iter().zip(&y) {
            assert!(p.is_finite() && q.is_finite(), "{n}: non-finite parameter");
            let d = (*p as f64 - *q as f64).abs();
            worst = worst.max(d);
            total += 1;
            if d > lr * 1e-3 {
                far += 1;
            }
        }
    }
    eprintln!("{what}: max |dp| {worst:.3e}, {far} of {total} elements beyond lr*1e-3");
    assert!(total > 0);
    if worst > steps as f64 * lr * std::f64::consts::FRAC_PI_2 * 1.01 {
        return Err(format!("{what}: max |dp| {worst}"));
    }
    if far as f64 >= 1e-3 * total as f64 {
        return Err(format!("{what}: {far} of {total} parameters differ beyond lr*1e-3"));
    }
    Ok(())
}

#[test]
fn two_ranks_match_one_rank_run_to_run_and_after_resume() {
    if !emulation_available() {
        return;
    }
    let f = fixture();
    let steps = 4;
    let (ok, text) = output(&mut f.train("one", 1, steps, &[]));
    assert!(ok, "{text}");
    let (ok, text) = output(&mut f.train("two", 2, steps, &[]));
    assert!(ok, "{text}");
    assert!(text.contains("rank 1: pid"), "{text}");
    // Rank 0 alone writes: one line per step, no second writer's leftovers.
    let metrics = std::fs::read_to_string(f.path("two/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), steps as usize, "{metrics}");

    // Equivalence. Both runs see the same rows (each rank the half of the global batch at its
    // rank's position), the same exploration draws and the same forward arithmetic per row;
    // only the order of the gradient sums differs: rank r sums its rows, then the ranks are
    // added in rank order, where one rank sums all rows in sequence. Both orders are within
    // (rows) * 2^-24 * sum|terms| of the exact sum, i.e. the gradients agree to ~1e-6 relative.
    // AdamATan2's first step is atan2(g, |g|) = +-pi/4 per element (sign-like, scale-free), and
    // later steps are smooth in g except where m crosses 0. So the parameters agree to within
    // lr * 1e-3 (lr = 1e-4) element by element, except elements whose gradient is within
    // rounding of zero, whose step may flip: at most K * lr * pi / 2 for K steps; those must be
    // rare (below 0.1% of the elements). A real data-parallel bug (a missing all-reduce, the
    // wrong rows, a 1/local-batch scaling caught through the loss terms) breaks one of these.
    let (a, b) = (state(&f.path("one"), steps), state(&f.path("two"), steps));
    assert_within_reduction_bound("2 ranks vs 1", &a, &b, steps);
    // The carry (rows gathered from both ranks) and the data cursor are the same.
    for n in ["carry.steps", "carry.halted", "carry.inputs", "carry.labels"] {
        assert_eq!(a.i32(n, None).unwrap(), b.i32(n, None).unwrap(), "{n}");
    }
    let loss = |run: &str| -> Vec<f64> {
        std::fs::read_to_string(f.path(&format!("{run}/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lm_loss"].as_f64().unwrap())
            .collect()
    };
    let (l1, l2) = (loss("one"), loss("two"));
    for (x, y) in l1.iter().zip(&l2) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "lm loss per step: {l1:?} vs {l2:?}");
    }

    // The bound catches a data-parallel bug: the stand-in's planted "drop" (an all-reduce that
    // returns rank 0's gradient alone, as if the reduction were missing) must break it.
    // Two steps suffice.
    let (ok, text) = output(f.train("dropped", 2, 2, &[]).env("HRM_NCCL_EMU_PLANT", "drop"));
    assert!(ok, "{text}");
    let one_at_2 = state(&f.path("one"), 2);
    assert_within_reduction_bound("2 ranks vs 1 after 2 steps", &one_at_2, &state(&f.path("two"), 2), 2);
    let dropped = reduction_bound("planted missing reduction", &one_at_2, &state(&f.path("dropped"), 2), 2);
    assert!(dropped.is_err(), "a missing all-reduce went unnoticed");

    // Stopped at step 2 and resumed with the same world size: the checkpoint holds the carry
    // rows of both ranks, so the resumed run follows the uninterrupted one. Not to the bit on
    // the CUDA path: the embedding backward accumulates with atomics, whose order (on a GPU,
    // and in the emulation's per-process schedule) differs in a fresh process; so the same
    // bound as above. A carry handed to the wrong rank or rows would break it.
    let (ok, text) = output(&mut f.train("split", 2, steps, &["--stop-after", "2"]));
    assert!(ok, "{text}");
    // Run to run: up to the stop this is the same 2-rank run again, and gives the same bits
    // (the stand-in combines in rank order; the emulation schedules each process's launches
    // from the same seeds).
    assert_same_bits(&state(&f.path("split"), 2), &state(&f.path("two"), 2));
    let mut resume = hrm();
    resume.args(["train", "--device", "emu", "--nproc", "2", "--resume"]).arg(f.path("split"));
    let (ok, text) = output(&mut resume);
    assert!(ok, "{text}");
    let split = state(&f.path("split"), steps);
    assert_within_reduction_bound("resumed vs uninterrupted", &split, &b, steps);
    for n in ["carry.steps", "carry.halted", "carry.inputs", "carry.labels"] {
        assert_eq!(split.i32(n, None).unwrap(), b.i32(n, None).unwrap(), "{n}");
    }

    // Another world size on resume is refused, saying what to do.
    let mut single = hrm();
    single.args(["train", "--device", "emu", "--resume"]).arg(f.path("two")).args(["--steps", "6"]);
    let (ok, text) = output(&mut single);
    assert!(!ok, "{text}");
    assert!(text.contains("world size 2") && text.contains("--nproc 2"), "{text}");
}

/// TRM (token-mixing MLP, the whole last recursion's backward, q_halt > 0 halting) trains
/// data-parallel as HRM does: two ranks follow one rank within the reduction bound above, with
/// the same carry, and the planted missing all-reduce breaks the bound.
#[test]
fn trm_two_ranks_match_one_rank() {
    if !emulation_available() {
        return;
    }
    let arch = common::small_trm();
    let f = fixture_of(&arch);
    let steps = 2;
    for (run, nproc, plant) in [("one", 1, None), ("two", 2, None), ("dropped", 2, Some("drop"))] {
        let mut c = f.train(run, nproc, steps, &[]);
        if let Some(p) = plant {
            c.env("HRM_NCCL_EMU_PLANT", p);
        }
        let (ok, text) = output(&mut c);
        assert!(ok, "{run}: {text}");
    }
    let (a, b) = (state(&f.path("one"), steps), state(&f.path("two"), steps));
    assert_within_reduction_bound("TRM: 2 ranks vs 1", &a, &b, steps);
    for n in ["carry.steps", "carry.halted", "carry.inputs", "carry.labels"] {
        assert_eq!(a.i32(n, None).unwrap(), b.i32(n, None).unwrap(), "{n}");
    }
    let dropped =
        reduction_bound("TRM: planted missing reduction", &a, &state(&f.path("dropped"), steps), steps);
    assert!(dropped.is_err(), "a missing all-reduce went unnoticed");
}

/// `hrm eval` of the fixture's model on `set` (plain, or perturbed with `perturb`) with
/// `nproc` ranks; returns (JSON report, answers CSV).
fn eval_run(
    f: &Fixture,
    ckpt: &Path,
    perturb: Option<&str>,
    nproc: usize,
    tag: &str,
    plant: Option<&str>,
) -> (serde_json::Value, String) {
    let (json, csv) = (f.path(&format!("{tag}.json")), f.path(&format!("{tag}.csv")));
    let mut c = hrm();
    c.args(["eval", "--device", "emu", "--batch-size", "2", "--checkpoint"]).arg(ckpt);
    c.arg(f.path("set.txt")).arg("--json").arg(&json).arg("--answers").arg(&csv);
    if let Some(p) = perturb {
        c.args(["--perturb", p, "--perturb-seed", "5"]);
    }
    if nproc > 1 {
        c.args(["--nproc", &nproc.to_string()]);
    }
    if let Some(p) = plant {
        c.env("HRM_NCCL_EMU_PLANT", p);
    }
    c.env("HRM_DIST_TIMEOUT_S", "60");
    let (ok, text) = output(&mut c);
    assert!(ok, "{tag}: {text}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, std::fs::read_to_string(&csv).unwrap())
}

/// The fields of a report that do not measure time.
fn outcome(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for k in [
                "puzzles_per_s",
                "passes_per_s",
                "wall_seconds",
                "model_seconds",
                "perturb_seconds",
                "select_seconds",
                "overhead_fraction",
            ] {
                r.as_object_mut().unwrap().remove(k);
            }
            r
        })
        .collect()
}

#[test]
fn sharded_evaluation_gives_the_single_process_answers_in_order() {
    if !emulation_available() {
        return;
    }
    let f = fixture();
    // 7 puzzles: 2 ranks hold 3 and 4, 3 ranks 2, 2 and 3 (unequal shards, padded in the
    // all-gather). Puzzles of different blanks, so every row's answer differs and a puzzle
    // answered under another's name shows in the CSV.
    let set = hrm::train::data::blanked_puzzles(7, 20..50, 9);
    let lines: String = set.iter().map(|(q, _)| hrm::sudoku::board::board_to_string(q, '.') + "\n").collect();
    std::fs::write(f.path("set.txt"), lines).unwrap();
    // A 2-rank training run that evaluates the set in its ranks' shares at step 4.
    let set_arg = f.path("set.txt").to_string_lossy().into_owned();
    let (ok, text) = output(&mut f.train("two", 2, 4, &["--eval", &set_arg, "--eval-every", "4"]));
    assert!(ok, "{text}");
    let ckpt = f.path("two/checkpoints/step_00000004/model.safetensors");

    // Plain evaluation: 1, 2 and 3 ranks give the same report and the same answers, in order.
    // Each puzzle runs alone in its batch row and the emulation's matrix products do not
    // depend on the batch, so the bits are the same; only timing fields may differ.
    let (r1, a1) = eval_run(&f, &ckpt, None, 1, "plain1", None);
    assert_eq!(a1.lines().count(), 1 + set.len(), "{a1}");
    let distinct: std::collections::HashSet<&str> =
        a1.lines().skip(1).map(|l| l.split(',').nth(3).unwrap()).collect();
    assert!(distinct.len() > 1, "the answers must tell the puzzles apart:\n{a1}");
    for n in [2, 3] {
        let (r, a) = eval_run(&f, &ckpt, None, n, &format!("plain{n}"), None);
        assert_eq!(a, a1, "{n} ranks");
        assert_eq!(outcome(&r), outcome(&r1), "{n} ranks");
    }
    // The training run's own evaluation (both ranks' shares gathered) is the same report.
    let metrics = std::fs::read_to_string(f.path("two/metrics.jsonl")).unwrap();
    let eval_line: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "eval")
        .expect("an eval record");
    for k in [
        "puzzles",
        "exact_accuracy",
        "cell_accuracy",
        "blank_cell_accuracy",
        "exact_accuracy_per_segment",
        "act_halt_fraction",
    ] {
        assert_eq!(eval_line[k], r1[0][k], "{k}: in-run sharded eval vs hrm eval");
    }

    // Perturbed inference (3 passes per puzzle): the same selections per puzzle.
    let (p1, b1) = eval_run(&f, &ckpt, Some("perm:2"), 1, "pert1", None);
    let (p2, b2) = eval_run(&f, &ckpt, Some("perm:2"), 2, "pert2", None);
    assert_eq!(b2, b1);
    assert_eq!(outcome(&p2), outcome(&p1));
    assert_eq!(p1[0]["passes_per_puzzle"], 3);
    // The comparison catches a gather in the wrong order (the stand-in's planted reverse).
    let (_, reversed) = eval_run(&f, &ckpt, None, 2, "planted", Some("reverse"));
    assert_ne!(reversed, a1, "a gather in reverse rank order went unnoticed");
}

#[test]
fn a_killed_rank_stops_the_others_naming_it_and_keeps_the_last_checkpoint() {
    if !emulation_available() {
        return;
    }
    let f = fixture();
    let log = f.path("launcher.log");
    let mut c = f.train("run", 2, 200, &[]);
    c.stderr(std::fs::File::create(&log).unwrap()).stdout(Stdio::null());
    let mut launcher = c.spawn().unwrap();
    // Wait for the first checkpoint, then kill rank 1 in the middle of its steps.
    let start = Instant::now();
    let first = f.path("run/checkpoints/step_00000002/COMPLETE");
    while !first.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint within 120 s");
        assert!(launcher.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let pid = |rank: usize| -> i32 {
        let key = format!("rank {rank}: pid ");
        let line = text.lines().find(|l| l.starts_with(&key)).unwrap();
        line[key.len()..].trim().parse().unwrap()
    };
    let (pid0, pid1) = (pid(0), pid(1));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid1, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "the run did not stop within 60 s of the kill");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped_after = killed.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    // The launcher names the killed rank, and rank 0 stopped by itself naming it (not killed by
    // the launcher's grace timeout).
    assert!(text.contains(&format!("rank 1 (pid {pid1}) was killed by signal 9")), "{text}");
    // (through the health channel, or the NCCL stand-in's own report, whichever comes first)
    assert!(
        text.contains("rank 1 disconnected")
            || text.contains(&format!("rank 1 (pid {pid1}) failed at collective")),
        "rank 0 must name the dead rank:\n{text}"
    );
    assert!(!text.contains("stopped by the launcher"), "{text}");
    assert!(stopped_after < Duration::from_secs(20), "stopped {stopped_after:?} after the kill:\n{text}");
    // SAFETY: probing (signal 0) whether rank 0 is gone.
    assert_ne!(unsafe { libc::kill(pid0, 0) }, 0, "rank 0 is still running");
    // The newest complete checkpoint is intact: it loads and resumes (same world size).
    let ckpts = hrm::train::checkpoint::complete_checkpoints(&f.path("run")).unwrap();
    let (step, newest) = ckpts.last().expect("a complete checkpoint").clone();
    hrm::model::checkpoint::load_checkpoint(&newest.join("model.safetensors"), None).unwrap();
    let mut resume = hrm();
    resume.args(["train", "--device", "emu", "--nproc", "2", "--resume"]).arg(f.path("run"));
    resume.args(["--steps", &(step + 1).to_string()]);
    let (ok, text) = output(&mut resume);
    assert!(ok, "{text}");
}

/// The launcher alone is signalled, as `timeout` and schedulers do: SIGTERM is passed on to
/// the ranks (the launcher ends with 128 + 15), and a launcher killed outright (SIGKILL, which
/// it cannot handle) takes its ranks with it: none is left running, holding the run's lock.
#[test]
fn ranks_end_with_their_launcher() {
    if !emulation_available() {
        return;
    }
    let f = fixture();
    for (signal, out) in [(libc::SIGTERM, "term"), (libc::SIGKILL, "kill")] {
        let log = f.path(&format!("{out}.log"));
        let mut c = f.train(out, 2, 100_000, &[]);
        c.stderr(std::fs::File::create(&log).unwrap()).stdout(Stdio::null());
        let mut launcher = c.spawn().unwrap();
        // Both ranks started and training (the first checkpoint is written).
        let start = Instant::now();
        let first = f.path(&format!("{out}/checkpoints/step_00000002/COMPLETE"));
        while !first.exists() {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint within 120 s");
            assert!(launcher.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let pids: Vec<i32> = (0..2)
            .map(|r| {
                let key = format!("rank {r}: pid ");
                let line = text.lines().find(|l| l.starts_with(&key)).unwrap();
                line[key.len()..].trim().parse().unwrap()
            })
            .collect();
        // SAFETY: signalling a child process of this test.
        assert_eq!(unsafe { libc::kill(launcher.id() as i32, signal) }, 0);
        let status = launcher.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        if signal == libc::SIGTERM {
            assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{text}");
            assert!(text.contains("passed on to the ranks"), "{text}");
        }
        // The ranks are gone within seconds (a rank that is a zombie of the launcher's, not
        // yet reaped by init, counts as gone: it runs nothing and holds nothing).
        let gone = |pid: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'))
        };
        let killed = Instant::now();
        while !pids.iter().all(|&p| gone(p)) {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "signal {signal} to the launcher left ranks {pids:?} running:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn rendezvous_failures_are_clear_errors() {
    if !emulation_available() {
        return;
    }
    let f = fixture();
    // Nothing listens on the port: the rank gives up naming the address.
    let port = free_port().to_string();
    let mut c = f.train("wrong_port", 1, 2, &[]);
    c.env("RANK", "1").env("WORLD_SIZE", "2").env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", &port);
    c.env("HRM_DIST_JOIN_TIMEOUT_S", "2");
    let t = Instant::now();
    let (ok, text) = output(&mut c);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("cannot reach rank 0's rendezvous at 127.0.0.1:{port}")), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());

    // Two ranks that disagree on the world size: rank 0 refuses the newcomer, both stop.
    let port = free_port().to_string();
    let spawn = |rank: &str, world: &str| {
        let mut c = f.train("mismatch", 1, 2, &[]);
        c.env("RANK", rank)
            .env("WORLD_SIZE", world)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port);
        c.env("HRM_DIST_JOIN_TIMEOUT_S", "20").stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let r0 = spawn("0", "2");
    let r1 = spawn("1", "3");
    let (o0, o1) = (r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap());
    let (e0, e1) = (String::from_utf8_lossy(&o0.stderr), String::from_utf8_lossy(&o1.stderr));
    assert!(!o0.status.success() && !o1.status.success(), "{e0}\n{e1}");
    assert!(e0.contains("rank 1") && e0.contains("world size 3 but rank 0 has 2"), "{e0}");
    assert!(e1.contains("rendezvous refused"), "{e1}");

    // Without the launcher and on the CPU backend: refused before any work.
    let mut cpu = hrm();
    cpu.args(["train", "--device", "cpu", "--nproc", "2", "--data"]).arg(f.path("ds/train"));
    cpu.args(["--steps", "2", "--out"]).arg(f.path("cpu"));
    let (ok, text) = output(&mut cpu);
    assert!(!ok && text.contains("CUDA backend through NCCL"), "{text}");
}

/// All-reduce bandwidth of one flat gradient-sized f32 buffer through NCCL (run by
/// scripts/device-check with the real library; any world size through the torchrun variables,
/// world size 1 by default). `HRM_ALLREDUCE_FLOATS` sets the size (default: the Sudoku
/// model's parameter count). Prints time per all-reduce, algorithm bandwidth (bytes / time) and
/// NCCL's bus bandwidth (algbw * 2 (n - 1) / n).
#[test]
#[ignore]
fn nccl_allreduce_bandwidth() {
    let dev = CudaDevice::for_tests("nccl_allreduce_bandwidth").expect("a CUDA device");
    let env = DistEnv::from_env().unwrap().unwrap_or(DistEnv {
        rank: 0,
        world: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
    });
    let be = Cuda::new(dev.clone());
    let (maj, min, patch) = hrm::backend::cuda::nccl::version().unwrap();
    let d = Dist::connect(&env, hrm::backend::cuda::nccl::unique_id).unwrap();
    let n: usize =
        std::env::var("HRM_ALLREDUCE_FLOATS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            let cfg = hrm::config::ModelConfig::sudoku();
            hrm::model::tensor_specs(&cfg).iter().map(|s| s.numel()).sum()
        });
    let mut buf = be.upload_f32(&vec![1.0; n]);
    for _ in 0..3 {
        d.collective(&be, "warm-up", Collective::Sum, &mut [&mut buf]).unwrap();
    }
    let iters = 20;
    let t = Instant::now();
    for _ in 0..iters {
        d.collective(&be, "all-reduce", Collective::Sum, &mut [&mut buf]).unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    let bytes = (n * 4) as f64;
    let algbw = bytes / secs / 1e9;
    let w = env.world as f64;
    let busbw = algbw * 2.0 * (w - 1.0) / w;
    let got = be.download_f32(&buf);
    let want = w.powi(iters + 3) as f32;
    assert!(got.iter().all(|x| *x == want), "sum wrong: {} (expected {want})", got[0]);
    d.finish();
    println!(
        "NCCL {maj}.{min}.{patch} on {} ({:?}): all-reduce of {n} f32 ({:.1} MB) over {} rank(s): \
         {:.3} ms, algbw {algbw:.1} GB/s, busbw {busbw:.1} GB/s",
        dev.name,
        dev.kind,
        bytes / 1e6,
        env.world,
        secs * 1e3
    );
}
