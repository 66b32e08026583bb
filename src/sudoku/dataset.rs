//! Training-set builder and the compact binary dataset the trainer loads.
//!
//! A dataset directory holds `data.bin` and `manifest.json`. `data.bin` layout (little endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `HRMSUDK1` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | sequence length (81) |
//! | 16 | 8 | number of examples `n` |
//! | 24 | 8 | number of groups `g` |
//! | 32 | 8 (g+1) | group start offsets (example indices; last = n) |
//! | 40 + 8g | 162 n | per example: 81 input token ids (1..=10), then 81 label ids (2..=10) |
//!
//! A group is one puzzle: its original, its augmentations, and (with hint twins) each member
//! followed by its easier twin.

use super::board::{Board, to_tokens};
use super::formats::write_atomic;
use super::generate::item_seed;
use super::rating::RatingStats;
use super::symmetry::{Transform, canonical};
use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use super::formats::{Puzzle, read_eval_set};

pub const MAGIC: &[u8; 8] = b"HRMSUDK1";
pub const VERSION: u32 = 1;
pub const DATA_FILE: &str = "data.bin";
pub const MANIFEST_FILE: &str = "manifest.json";
const HEADER: usize = 32;
const EXAMPLE: usize = 162;

/// `manifest.json`, written next to `data.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub split: String,
    pub num_examples: usize,
    pub num_groups: usize,
    pub num_puzzles: usize,
    pub augmentations_per_puzzle: usize,
    pub hint_twins: bool,
    pub examples_per_group: usize,
    pub seed: u64,
    pub source: Vec<String>,
    pub rating: RatingStats,
    pub mean_givens: f64,
    pub excluded_sets: Vec<String>,
    pub vocab_size: usize,
    pub seq_len: usize,
}

/// A loaded dataset.
pub struct Dataset {
    bytes: Vec<u8>,
    groups: Vec<u64>,
    data_start: usize,
    n: usize,
    manifest: Manifest,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

impl Dataset {
    /// Loads `dir/data.bin` + `dir/manifest.json`, or a `data.bin` path with the manifest next
    /// to it. Errors name the file: missing, truncated, bad magic/version, inconsistent counts,
    /// token ids out of range.
    pub fn load(dir_or_file: &Path) -> anyhow::Result<Dataset> {
        let (data, manifest_path) = if dir_or_file.is_dir() {
            (dir_or_file.join(DATA_FILE), dir_or_file.join(MANIFEST_FILE))
        } else {
            let dir = dir_or_file.parent().unwrap_or(Path::new("."));
            (dir_or_file.to_path_buf(), dir.join(MANIFEST_FILE))
        };
        let d = data.display();
        let bytes = crate::fsutil::read_regular(&data, "a dataset's data.bin")?;
        if bytes.len() < HEADER {
            bail!("{d}: truncated: {} bytes, header needs {HEADER}", bytes.len());
        }
        if &bytes[..8] != MAGIC {
            bail!("{d}: bad magic {:?}, expected {:?} (not an hrm Sudoku dataset)", &bytes[..8], MAGIC);
        }
        let version = u32_at(&bytes, 8);
        if version != VERSION {
            bail!("{d}: format version {version}, this build reads {VERSION}");
        }
        if u32_at(&bytes, 12) != 81 {
            bail!("{d}: sequence length {}, expected 81", u32_at(&bytes, 12));
        }
        let n = u64_at(&bytes, 16) as usize;
        let g = u64_at(&bytes, 24) as usize;
        let data_start = (g as u128 + 1) * 8 + HEADER as u128;
        let expected = data_start + n as u128 * EXAMPLE as u128;
        if bytes.len() as u128 != expected {
            bail!(
                "{d}: {} bytes, expected {expected} for {n} examples in {g} groups (truncated or corrupt)",
                bytes.len()
            );
        }
        let data_start = data_start as usize;
        let groups: Vec<u64> = (0..=g).map(|i| u64_at(&bytes, HEADER + 8 * i)).collect();
        if groups[0] != 0 || groups[g] != n as u64 || groups.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{d}: group offsets are not increasing from 0 to {n}");
        }
        if let Some(i) = bytes[data_start..].par_chunks(EXAMPLE).position_any(|ex| {
            ex[..81].iter().any(|&t| !(1..=10).contains(&t))
                || ex[81..].iter().any(|&t| !(2..=10).contains(&t))
        }) {
            bail!("{d}: example {i} holds a token id out of range");
        }
        let m = manifest_path.display();
        let text = crate::fsutil::read_regular(&manifest_path, "a dataset's manifest.json")?;
        let manifest: Manifest =
            serde_json::from_slice(&text).with_context(|| format!("{m}: bad manifest"))?;
        if manifest.num_examples != n || manifest.num_groups != g {
            bail!(
                "{m}: manifest says {} examples / {} groups, {d} holds {n} / {g}",
                manifest.num_examples,
                manifest.num_groups
            );
        }
        Ok(Dataset { bytes, groups, data_start, n, manifest })
    }

    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn num_groups(&self) -> usize {
        self.groups.len() - 1
    }
    /// Example indices of group `g`.
    pub fn group(&self, g: usize) -> Range<usize> {
        self.groups[g] as usize..self.groups[g + 1] as usize
    }
    /// Input token ids (1 = blank, 2..=10 digits) of example `i`.
    pub fn inputs(&self, i: usize) -> &[u8; 81] {
        let o = self.data_start + i * EXAMPLE;
        self.bytes[o..o + 81].try_into().expect("81-byte slice")
    }
    /// Label token ids (2..=10) of example `i`.
    pub fn labels(&self, i: usize) -> &[u8; 81] {
        let o = self.data_start + i * EXAMPLE + 81;
        self.bytes[o..o + 81].try_into().expect("81-byte slice")
    }
    /// A hash of the examples and groups (`data.bin` as loaded), as 16 hex digits: the
    /// dataset's identity, recorded by a run so that a resume notices other data. Not
    /// cryptographic: it tells a rebuilt or replaced dataset, not a forged one.
    pub fn content_hash(&self) -> String {
        crate::fsutil::content_hash(&[&self.bytes])
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// Builder settings.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub train: usize,
    pub test: usize,
    /// Augmentations per training puzzle (HRM: 1000).
    pub augment: usize,
    /// Augmented HRM hint twins for every training example.
    pub hint_twins: bool,
    /// Augmentations per test puzzle (HRM: 0).
    pub test_augment: usize,
    pub seed: u64,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub input_puzzles: usize,
    pub duplicates: usize,
    pub excluded: usize,
    pub train: Option<Manifest>,
    pub test: Option<Manifest>,
}

/// Augmented HRM hint twin: `n` random blanks filled from the solution, `n` uniform in
/// `[1, blanks - 1]` (a board with fewer than 2 blanks is its own twin).
pub fn hint_twin<R: Rng + ?Sized>(q: &Board, a: &Board, rng: &mut R) -> Board {
    let mut blanks: Vec<usize> = (0..81).filter(|&i| q[i] == 0).collect();
    let mut t = *q;
    if blanks.len() < 2 {
        return t;
    }
    let n = rng.gen_range(1..blanks.len());
    let (chosen, _) = blanks.partial_shuffle(rng, n);
    for &c in chosen.iter() {
        t[c] = a[c];
    }
    t
}

/// The examples of one group, as (question, answer) boards.
pub fn group_examples(p: &Puzzle, augment: usize, hints: bool, seed: u64) -> Vec<(Board, Board)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity((augment + 1) * (1 + hints as usize));
    for k in 0..=augment {
        let (q, a) = if k == 0 {
            (p.question, p.answer)
        } else {
            let t = Transform::random(&mut rng);
            (t.apply(&p.question), t.apply(&p.answer))
        };
        out.push((q, a));
        if hints {
            out.push((hint_twin(&q, &a, &mut rng), a));
        }
    }
    out
}

/// Canonical forms of the questions of the given files (no solving needed).
pub fn canonical_set(paths: &[PathBuf]) -> anyhow::Result<HashSet<Board>> {
    let mut set = HashSet::new();
    for p in paths {
        let (entries, _) = super::formats::read_raw(p, false)?;
        let keys: Vec<Board> = entries.par_iter().map(|e| canonical(&e.question)).collect();
        set.extend(keys);
    }
    Ok(set)
}

/// What one split holds besides its puzzles.
struct SplitSpec<'a> {
    name: &'a str,
    augment: usize,
    hints: bool,
    sources: &'a [String],
    excluded_sets: &'a [String],
}

fn write_split(
    dir: &Path,
    spec: &SplitSpec<'_>,
    puzzles: &[Puzzle],
    cfg: &BuildConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Manifest> {
    let (split, augment, hints) = (spec.name, spec.augment, spec.hints);
    let (sources, excluded_sets) = (spec.sources, spec.excluded_sets);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let per_group = (augment + 1) * (1 + hints as usize);
    let n = puzzles.len() * per_group;
    let salt = if split == "train" { 0x0074_7261_696E } else { 0x7465_7374 };
    let ratings: Vec<f32> = puzzles.iter().map(|p| p.rating).collect();
    let givens = puzzles.iter().map(|p| super::board::count_givens(&p.question)).sum::<usize>();
    let manifest = Manifest {
        format: "hrm-sudoku-v1".into(),
        split: split.into(),
        num_examples: n,
        num_groups: puzzles.len(),
        num_puzzles: puzzles.len(),
        augmentations_per_puzzle: augment,
        hint_twins: hints,
        examples_per_group: per_group,
        seed: cfg.seed,
        source: sources.to_vec(),
        rating: RatingStats::from_ratings(&ratings),
        mean_givens: givens as f64 / puzzles.len().max(1) as f64,
        excluded_sets: excluded_sets.to_vec(),
        vocab_size: 11,
        seq_len: 81,
    };
    write_atomic(&dir.join(DATA_FILE), |w| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&81u32.to_le_bytes())?;
        w.write_all(&(n as u64).to_le_bytes())?;
        w.write_all(&(puzzles.len() as u64).to_le_bytes())?;
        for g in 0..=puzzles.len() {
            w.write_all(&((g * per_group) as u64).to_le_bytes())?;
        }
        for (ci, chunk) in puzzles.chunks(64).enumerate() {
            let bufs: Vec<Vec<u8>> = chunk
                .par_iter()
                .enumerate()
                .map(|(j, p)| {
                    let g = (ci * 64 + j) as u64;
                    let mut buf = Vec::with_capacity(per_group * EXAMPLE);
                    for (q, a) in group_examples(p, augment, hints, item_seed(cfg.seed ^ salt, g)) {
                        buf.extend_from_slice(&to_tokens(&q));
                        buf.extend_from_slice(&to_tokens(&a));
                    }
                    buf
                })
                .collect();
            for b in bufs {
                w.write_all(&b)?;
            }
            progress(chunk.len() as u64);
        }
        Ok(())
    })?;
    let json = serde_json::to_string_pretty(&manifest)?;
    write_atomic(&dir.join(MANIFEST_FILE), |w| w.write_all(json.as_bytes()))?;
    Ok(manifest)
}

/// Builds `out/train` (and `out/test` when `cfg.test > 0`) from `puzzles`: drops duplicates up to
/// symmetry and puzzles equivalent to any in `exclude`, shuffles with the seed, takes the first
/// `cfg.train` for training and the next `cfg.test` for testing (disjoint up to symmetry).
pub fn build(
    puzzles: Vec<Puzzle>,
    exclude: &HashSet<Board>,
    excluded_sets: &[String],
    cfg: &BuildConfig,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<BuildReport> {
    let input_puzzles = puzzles.len();
    for (i, p) in puzzles.iter().enumerate() {
        if !super::board::is_solution_of(&p.question, &p.answer) {
            bail!("input puzzle {i} ({}): answer is not a solution of the question", p.source);
        }
    }
    let keys: Vec<Board> = puzzles.par_iter().map(|p| canonical(&p.question)).collect();
    let mut seen = HashSet::new();
    let (mut duplicates, mut excluded) = (0, 0);
    let mut kept = Vec::new();
    for (p, k) in puzzles.into_iter().zip(keys) {
        if exclude.contains(&k) {
            excluded += 1;
        } else if !seen.insert(k) {
            duplicates += 1;
        } else {
            kept.push(p);
        }
    }
    let need = cfg.train + cfg.test;
    if kept.len() < need {
        bail!(
            "need {need} distinct puzzles ({} train + {} test), only {} remain of {input_puzzles} \
             ({duplicates} duplicates up to symmetry, {excluded} equivalent to excluded sets)",
            cfg.train,
            cfg.test,
            kept.len()
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    kept.shuffle(&mut rng);
    kept.truncate(need);
    let test_part = kept.split_off(cfg.train);
    let mut sources: Vec<String> = kept.iter().chain(&test_part).map(|p| p.source.clone()).collect();
    sources.sort();
    sources.dedup();
    // Splits are written under temporary names and moved into place only once all of them
    // are complete, so a failed build leaves a previous dataset in `out` as it was.
    let staged = |name: &str| out.join(format!(".{name}.tmp.{}", std::process::id()));
    for split in ["train", "test"] {
        for p in crate::fsutil::remove_dead_temporaries(out, split) {
            eprintln!("removed {} (left by an interrupted build)", p.display());
        }
    }
    let mut written: Vec<(&str, PathBuf)> = Vec::new();
    let result = (|| -> anyhow::Result<(Option<Manifest>, Option<Manifest>)> {
        let train = if cfg.train > 0 {
            let spec = SplitSpec {
                name: "train",
                augment: cfg.augment,
                hints: cfg.hint_twins,
                sources: &sources,
                excluded_sets,
            };
            written.push(("train", staged("train")));
            Some(write_split(&staged("train"), &spec, &kept, cfg, progress)?)
        } else {
            None
        };
        let test = if cfg.test > 0 {
            let spec = SplitSpec {
                name: "test",
                augment: cfg.test_augment,
                hints: false,
                sources: &sources,
                excluded_sets,
            };
            written.push(("test", staged("test")));
            Some(write_split(&staged("test"), &spec, &test_part, cfg, progress)?)
        } else {
            None
        };
        Ok((train, test))
    })();
    let (train, test) = match result {
        Ok(r) => r,
        Err(e) => {
            for (_, p) in &written {
                let _ = std::fs::remove_dir_all(p);
            }
            return Err(e);
        }
    };
    for name in SPLITS {
        if !written.iter().any(|(n, _)| *n == name) {
            remove_stale_split(&out.join(name))?;
        }
    }
    for (name, tmp) in written {
        let dst = out.join(name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst).with_context(|| format!("replacing {}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst)
            .with_context(|| format!("moving {} to {}", tmp.display(), dst.display()))?;
    }
    Ok(BuildReport { input_puzzles, duplicates, excluded, train, test })
}

/// The splits a build writes into its output directory.
pub const SPLITS: [&str; 2] = ["train", "test"];

/// Removes a split of an earlier build that this build does not write (`--test 0` over a
/// directory holding a test split), so the directory holds only what this build made and an
/// old split cannot overlap the new ones. Only the split's own files go (`data.bin`,
/// `manifest.json`), then the directory if that leaves it empty; anything else in it is kept.
fn remove_stale_split(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(MANIFEST_FILE).is_file() && !dir.join(DATA_FILE).is_file() {
        return Ok(());
    }
    for f in [DATA_FILE, MANIFEST_FILE] {
        let p = dir.join(f);
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p)
                .with_context(|| format!("removing {} of an earlier build", p.display()))?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            eprintln!("removed {} of an earlier build (this build writes no such split)", dir.display())
        }
        Err(_) => eprintln!(
            "removed the dataset files of {} (an earlier build's split; this build writes none); \
             other files in it were kept",
            dir.display()
        ),
    }
    Ok(())
}

/// Reads puzzles for the builder (CSV or one-per-line; answers solved when absent).
pub fn read_puzzles(paths: &[PathBuf]) -> anyhow::Result<Vec<Puzzle>> {
    let opts = super::formats::ImportOptions {
        skip_invalid: false,
        rating_samples: super::rating::DEFAULT_SAMPLES,
        rerate: false,
        limit: None,
    };
    Ok(super::formats::import(paths, &opts, &|_| {})?.0)
}
