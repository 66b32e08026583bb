//! Fuzz tests on stable Rust: seeded random and mutated inputs for the four readers of outside
//! data (the puzzle line/CSV reader, the checkpoint loader, `Dataset::load` and the batch-file
//! reader `commands::load_batch`). For every input: no panic, no single allocation beyond a
//! bound proportional to the input's size (a header claiming 1e15 elements must be refused
//! before allocating), and every error names its input file.
//!
//! `HRM_FUZZ_ITERS` sets the number of inputs per reader (default 2,000; `docs/RELIABILITY.md`
//! records a longer run) and `HRM_FUZZ_SEED` the seed.

use hrm::config::ModelConfig;
use hrm::model::HostParams;
use hrm::model::checkpoint::{NamedTensor, load_checkpoint, save_checkpoint, write_tensors};
use hrm::sudoku::dataset::{BuildConfig, Dataset, build};
use hrm::sudoku::formats::{Puzzle, parse_raw, read_eval_set};
use hrm::train::data::blanked_puzzles;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest single request since the last reset.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One reader at a time: the allocation record is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn iters() -> usize {
    std::env::var("HRM_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
}

fn rng(salt: u64) -> ChaCha8Rng {
    let seed = std::env::var("HRM_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0u64);
    ChaCha8Rng::seed_from_u64(seed ^ salt)
}

/// Run `f` on one input: it must not panic, must allocate at most `8 * input_len + 1 MiB` in
/// one request, and an error must name `name`. Returns whether it succeeded.
fn check<T>(
    what: &str,
    case: usize,
    name: &str,
    input_len: usize,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> bool {
    LARGEST.store(0, Ordering::Relaxed);
    let r = catch_unwind(AssertUnwindSafe(f));
    let largest = LARGEST.load(Ordering::Relaxed);
    let bound = 8 * input_len + (1 << 20);
    let r = r.unwrap_or_else(|_| panic!("{what} case {case}: panicked"));
    assert!(
        largest <= bound,
        "{what} case {case}: allocated {largest} bytes at once for a {input_len}-byte input"
    );
    match r {
        Ok(_) => true,
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains(name), "{what} case {case}: error does not name {name}: {msg}");
            false
        }
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "81",
    "4294967295",
    "4294967296",
    "1000000000000000",
    "18446744073709551615",
    "99999999999999999999999",
    "-1",
    "1e15",
];
const U64S: &[u64] = &[0, 1, 2, 81, 1 << 31, 1 << 32, 1_000_000_000_000_000, u64::MAX / 162, u64::MAX];

/// A mutated copy of `base`: 1 to 3 of byte flips, truncation, insertion, deletion, a number in
/// `text` (a byte range of JSON) replaced by an extreme one, an 8-byte field set to an extreme
/// value, or (rarely) random bytes.
fn mutate(r: &mut ChaCha8Rng, base: &[u8], text: std::ops::Range<usize>) -> Vec<u8> {
    let mut v = base.to_vec();
    if r.gen_ratio(1, 20) {
        let n = r.gen_range(0..600);
        return (0..n).map(|_| r.r#gen()).collect();
    }
    for _ in 0..r.gen_range(1..=3) {
        let len = v.len();
        match r.gen_range(0..6) {
            0 if len > 0 => {
                let i = r.gen_range(0..len);
                v[i] ^= 1 << r.gen_range(0..8);
            }
            1 if len > 0 => v.truncate(r.gen_range(0..len)),
            2 => {
                let i = r.gen_range(0..=len);
                let add: Vec<u8> = (0..r.gen_range(1..16)).map(|_| r.r#gen()).collect();
                v.splice(i..i, add);
            }
            3 if len > 0 => {
                let i = r.gen_range(0..len);
                let j = (i + r.gen_range(1..64)).min(len);
                v.drain(i..j);
            }
            4 => {
                let end = text.end.min(v.len());
                let digits: Vec<usize> = (text.start..end)
                    .filter(|&i| v[i].is_ascii_digit() && !v[i - 1].is_ascii_digit())
                    .collect();
                if let Some(&i) = digits.get(r.gen_range(0..digits.len().max(1))) {
                    let j = (i..v.len()).find(|&j| !v[j].is_ascii_digit()).unwrap_or(v.len());
                    let num = NUMBERS[r.gen_range(0..NUMBERS.len())];
                    v.splice(i..j, num.bytes());
                }
            }
            _ if len >= 8 => {
                let i = r.gen_range(0..len / 8) * 8;
                v[i..i + 8].copy_from_slice(&U64S[r.gen_range(0..U64S.len())].to_le_bytes());
            }
            _ => {}
        }
    }
    v
}

/// For a safetensors file: keep the 8-byte length prefix consistent with a header whose length
/// changed (half the time), so mutations reach the JSON parser and the shape checks.
fn fix_prefix(r: &mut ChaCha8Rng, v: &mut [u8], old_header: usize, base_len: usize) {
    if v.len() >= 8 && r.gen_bool(0.5) {
        let delta = v.len() as i64 - base_len as i64;
        let n = (old_header as i64 + delta).max(0) as u64;
        v[..8].copy_from_slice(&n.to_le_bytes());
    }
}

fn header_len(b: &[u8]) -> usize {
    u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

fn micro_config() -> ModelConfig {
    ModelConfig {
        hidden_size: 8,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 8,
        num_puzzle_identifiers: 2,
        ..ModelConfig::sudoku()
    }
}

#[test]
fn fuzz_puzzle_line_and_csv_reader() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(1);
    let dir = tempfile::tempdir().unwrap();
    let ps = blanked_puzzles(4, 20..40, 5);
    let lines: String = ps.iter().map(|(q, _)| hrm::sudoku::board::board_to_string(q, '.') + "\n").collect();
    let csv: String = "source,question,answer,rating\n".to_string()
        + &ps
            .iter()
            .map(|(q, a)| {
                format!(
                    "s,{},{},1.5\n",
                    hrm::sudoku::board::board_to_string(q, '.'),
                    hrm::sudoku::board::board_to_string(a, '0')
                )
            })
            .collect::<String>();
    let alphabet: Vec<char> = "0123456789.,#\n\r \t\u{feff}xé-".chars().collect();
    let (mut good, n) = (0, iters());
    for case in 0..n {
        let csv_form = r.gen_bool(0.5);
        let base = if csv_form { &csv } else { &lines };
        let mut text: Vec<char> = base.chars().collect();
        for _ in 0..r.gen_range(1..=4) {
            let len = text.len();
            match r.gen_range(0..5) {
                0 if len > 0 => {
                    let i = r.gen_range(0..len);
                    text[i] = alphabet[r.gen_range(0..alphabet.len())];
                }
                1 => {
                    let i = r.gen_range(0..=len);
                    text.insert(i, alphabet[r.gen_range(0..alphabet.len())]);
                }
                2 if len > 0 => {
                    text.truncate(r.gen_range(0..len));
                }
                3 if len > 0 => {
                    let i = r.gen_range(0..len);
                    text.remove(i);
                }
                _ => text.insert(0, '\u{feff}'),
            }
        }
        let text: String = text.into_iter().collect();
        let name = format!("case{case}.{}", if csv_form { "csv" } else { "txt" });
        let path = dir.path().join(&name);
        let skip = r.gen_bool(0.3);
        if check("puzzle reader", case, &name, text.len(), || parse_raw(&path, &text, skip)) {
            good += 1;
        }
        // Every 8th case also goes through the file, the solver and the checks of `hrm eval`.
        if case % 8 == 0 {
            let mut bytes = text.clone().into_bytes();
            if r.gen_bool(0.2) && !bytes.is_empty() {
                let i = r.gen_range(0..bytes.len());
                bytes[i] = 0xFF;
            }
            std::fs::write(&path, &bytes).unwrap();
            check("eval set reader", case, &name, bytes.len(), || read_eval_set(&path));
        }
    }
    eprintln!("puzzle reader: {n} inputs, {good} parsed");
}

#[test]
fn fuzz_checkpoint_loader() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro_config();
    let base_path = dir.path().join("base.safetensors");
    save_checkpoint(&base_path, &cfg, &HostParams::init(&cfg, &mut hrm::rng::seeded(1))).unwrap();
    let base = std::fs::read(&base_path).unwrap();
    let hl = header_len(&base);
    let (mut good, n) = (0, iters());
    for case in 0..n {
        let mut v = mutate(&mut r, &base, 8..8 + hl);
        fix_prefix(&mut r, &mut v, hl, base.len());
        let name = format!("ck{case}.safetensors");
        let path = dir.path().join(&name);
        std::fs::write(&path, &v).unwrap();
        let given = r.gen_bool(0.2).then(|| cfg.clone());
        if check("checkpoint loader", case, &name, v.len(), || load_checkpoint(&path, given.as_ref())) {
            good += 1;
        }
    }
    eprintln!("checkpoint loader: {n} inputs, {good} loaded");
    assert!(good > 0, "some mutations (e.g. of unused bytes) must still load");
}

#[test]
fn fuzz_dataset_loader() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(3);
    let dir = tempfile::tempdir().unwrap();
    let puzzles: Vec<Puzzle> = blanked_puzzles(3, 20..30, 7)
        .into_iter()
        .map(|(question, answer)| Puzzle { source: "f".into(), question, answer, rating: 0.0 })
        .collect();
    let cfg = BuildConfig { train: 3, test: 0, augment: 1, hint_twins: true, test_augment: 0, seed: 1 };
    build(puzzles, &Default::default(), &[], &cfg, &dir.path().join("base"), &|_| {}).unwrap();
    let data = std::fs::read(dir.path().join("base/train/data.bin")).unwrap();
    let manifest = std::fs::read(dir.path().join("base/train/manifest.json")).unwrap();
    let (mut good, n) = (0, iters());
    for case in 0..n {
        let split = dir.path().join(format!("ds{case}"));
        std::fs::create_dir_all(&split).unwrap();
        let (d, m) = if r.gen_bool(0.8) {
            (mutate(&mut r, &data, 0..0), manifest.clone())
        } else {
            (data.clone(), mutate(&mut r, &manifest, 0..manifest.len()))
        };
        std::fs::write(split.join("data.bin"), &d).unwrap();
        std::fs::write(split.join("manifest.json"), &m).unwrap();
        let name = format!("ds{case}");
        if check("dataset loader", case, &name, d.len() + m.len(), || Dataset::load(&split)) {
            good += 1;
        }
        std::fs::remove_dir_all(&split).unwrap();
    }
    eprintln!("dataset loader: {n} inputs, {good} loaded");
}

#[test]
fn fuzz_batch_reader() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rng(4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro_config();
    let b = 3;
    let tensors = vec![
        NamedTensor::i32("inputs", vec![b, 81], (0..b * 81).map(|i| 1 + (i % 10) as i32).collect()),
        NamedTensor::i32("puzzle_identifiers", vec![b], vec![0, 1, 0]),
        NamedTensor::i32("labels", vec![b, 81], (0..b * 81).map(|i| 2 + (i % 9) as i32).collect()),
    ];
    let base_path = dir.path().join("base.safetensors");
    write_tensors(&base_path, &tensors, None).unwrap();
    let base = std::fs::read(&base_path).unwrap();
    let hl = header_len(&base);
    let (mut good, n) = (0, iters());
    for case in 0..n {
        let mut v = mutate(&mut r, &base, 8..8 + hl);
        fix_prefix(&mut r, &mut v, hl, base.len());
        let name = format!("batch{case}.safetensors");
        let path = dir.path().join(&name);
        std::fs::write(&path, &v).unwrap();
        if check("batch reader", case, &name, v.len(), || hrm::commands::load_batch(&path, &cfg)) {
            good += 1;
        }
    }
    eprintln!("batch reader: {n} inputs, {good} loaded");
    assert!(good > 0);
}
