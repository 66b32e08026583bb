//! Glue between the data side and training/evaluation: the training data of a run (a Sudoku
//! dataset, or a split in the reference's layout) as a `PuzzleSource`, puzzle sets as
//! evaluation examples, and the demo's k-blank puzzles.

use super::sampler::{PuzzleSource, VecSource};
use crate::dataset::{Split, SplitMeta};
use crate::infer::eval::{EvalSet, Example};
use crate::sudoku::board::{Board, to_tokens};
use crate::sudoku::dataset::{Dataset, hint_twin};
use crate::sudoku::formats::Puzzle;
use crate::sudoku::generate::random_grid;
use crate::sudoku::solver::count_solutions;
use crate::sudoku::symmetry::Transform;
use crate::task::Rules;
use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The training examples of a run: a Sudoku dataset from `hrm data build` (`data.bin`), or a
/// split in the reference's layout (`crate::dataset`; `hrm data maze build`, or a reference
/// builder's output).
pub enum TrainData {
    Sudoku(Dataset),
    /// a split with its `dataset.json`
    Reference(Split, SplitMeta),
}

impl TrainData {
    /// Loads a split folder (or a Sudoku `data.bin`): Maze's puzzles of one example with the
    /// blank identifier, ARC's of several examples with an identifier per variant. Label 0 is
    /// an ignored position here, so a split whose `ignore_label_id` is not 0 must have no 0
    /// labels.
    pub fn load(path: &Path) -> anyhow::Result<TrainData> {
        if !path.join(crate::dataset::META_FILE).exists() {
            return Ok(TrainData::Sudoku(Dataset::load(path)?));
        }
        let (split, meta) = Split::read(path)?;
        if meta.ignore_label_id != Some(0)
            && let Some(i) = split.labels.iter().position(|&t| t == 0)
        {
            bail!(
                "{}: label 0 at example {}, position {}, and dataset.json's ignore_label_id is {:?}: \
                 training ignores label 0 (the reference's builders all set ignore_label_id 0)",
                path.display(),
                i / split.seq_len,
                i % split.seq_len,
                meta.ignore_label_id
            );
        }
        Ok(TrainData::Reference(split, meta))
    }

    /// Examples per puzzle, on average (1 but for ARC).
    pub fn mean_puzzle_examples(&self) -> f64 {
        match self {
            TrainData::Sudoku(_) => 1.0,
            TrainData::Reference(s, _) => s.num_examples() as f64 / s.num_puzzles().max(1) as f64,
        }
    }

    /// The puzzle identifiers (with the blank) a model of this data needs: the data's count.
    pub fn puzzle_identifiers(&self) -> usize {
        match self {
            TrainData::Sudoku(_) => 1,
            TrainData::Reference(_, m) => m.num_puzzle_identifiers,
        }
    }

    pub fn num_groups(&self) -> usize {
        match self {
            TrainData::Sudoku(d) => d.num_groups(),
            TrainData::Reference(s, _) => s.num_groups(),
        }
    }

    /// Examples.
    pub fn len(&self) -> usize {
        match self {
            TrainData::Sudoku(d) => d.len(),
            TrainData::Reference(s, _) => s.num_examples(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data's identity, recorded by a run so that a resume notices other data
    /// ([`Dataset::content_hash`], [`Split::content_hash`]).
    pub fn content_hash(&self) -> String {
        match self {
            TrainData::Sudoku(d) => d.content_hash(),
            TrainData::Reference(s, _) => s.content_hash(),
        }
    }

    /// The task of this data's sequences (`None`: a reference-layout split of no task the
    /// evaluation knows, such as ARC's).
    pub fn rules(&self) -> Option<Rules> {
        match self {
            TrainData::Sudoku(_) => Some(Rules::Sudoku),
            TrainData::Reference(s, m) => split_rules(s.seq_len, m.vocab_size, "").ok(),
        }
    }

    /// `--eval` sets must be of this data's task (Sudoku puzzle files with Sudoku data, maze
    /// splits of the same side with maze data); checked from their metadata, before any work.
    pub fn check_eval_sets(&self, eval: &[PathBuf]) -> anyhow::Result<()> {
        for path in eval {
            let theirs = eval_set_rules(path).with_context(|| format!("--eval {}", path.display()))?;
            match self.rules() {
                Some(ours) if ours == theirs => {}
                ours => bail!(
                    "--eval {}: a {} set, and this run trains on {} data",
                    path.display(),
                    theirs.name(),
                    ours.map_or("other (not Sudoku, maze or ARC)".to_string(), |r| r.name())
                ),
            }
        }
        Ok(())
    }

    /// The model must read this data: its sequence length and vocabulary.
    pub fn check_model(&self, cfg: &crate::config::ModelConfig, source: &str) -> anyhow::Result<()> {
        match self {
            TrainData::Sudoku(_) => {
                cfg.check_sudoku().with_context(|| format!("{source}: cannot train on Sudoku data"))
            }
            TrainData::Reference(s, m) => {
                let vocab = m.vocab_size;
                if cfg.num_puzzle_identifiers < m.num_puzzle_identifiers {
                    bail!(
                        "{source}: num_puzzle_identifiers {}, the data has {} (with the blank); the \
                         model needs an embedding row for each",
                        cfg.num_puzzle_identifiers,
                        m.num_puzzle_identifiers
                    );
                }
                // (`Split::read` checked every token id against this vocabulary)
                if cfg.seq_len != s.seq_len || cfg.vocab_size < vocab {
                    bail!(
                        "{source}: seq_len {} and vocab_size {}, the data has sequences of {} and token ids \
                         below {vocab} (a Maze-Hard set: --preset maze or trm-maze; ARC: arc1, arc2, \
                         trm-arc1 or trm-arc2)",
                        cfg.seq_len,
                        cfg.vocab_size,
                        s.seq_len
                    );
                }
                Ok(())
            }
        }
    }
}

impl PuzzleSource for TrainData {
    fn num_groups(&self) -> usize {
        TrainData::num_groups(self)
    }
    fn group(&self, g: usize) -> Range<usize> {
        match self {
            // (one example per puzzle: puzzle p is example p)
            TrainData::Sudoku(d) => d.group(g),
            TrainData::Reference(s, _) => s.group_indices[g] as usize..s.group_indices[g + 1] as usize,
        }
    }
    fn puzzle_examples(&self, p: usize) -> Range<usize> {
        match self {
            TrainData::Sudoku(_) => p..p + 1,
            TrainData::Reference(s, _) => s.puzzle_indices[p] as usize..s.puzzle_indices[p + 1] as usize,
        }
    }
    fn puzzle_id(&self, p: usize) -> i32 {
        match self {
            TrainData::Sudoku(_) => 0,
            TrainData::Reference(s, _) => s.puzzle_identifiers[p],
        }
    }
    fn example(&self, i: usize) -> (&[u8], &[u8]) {
        match self {
            TrainData::Sudoku(d) => (d.inputs(i), d.labels(i)),
            TrainData::Reference(s, _) => s.example(i),
        }
    }
}

impl PuzzleSource for Dataset {
    fn num_groups(&self) -> usize {
        Dataset::num_groups(self)
    }
    fn group(&self, g: usize) -> Range<usize> {
        Dataset::group(self, g)
    }
    fn example(&self, i: usize) -> (&[u8], &[u8]) {
        (self.inputs(i), self.labels(i))
    }
}

/// The rules of a reference-layout split of sequences of `seq_len` over `vocab` token ids: a
/// maze when the grid is square and the tokens are the maze's, ARC for 30 x 30 canvases of 12
/// tokens; an error naming `what` otherwise.
fn split_rules(seq_len: usize, vocab: usize, what: &str) -> anyhow::Result<Rules> {
    let side = seq_len.isqrt();
    if side * side == seq_len && vocab <= crate::maze::build::VOCAB {
        return Ok(Rules::Maze { side });
    }
    if seq_len == Rules::Arc.seq_len() && vocab == Rules::Arc.vocab_size() {
        return Ok(Rules::Arc);
    }
    bail!(
        "{what}: sequences of {seq_len} over {vocab} token ids; evaluation reads Sudoku puzzle files, \
         maze splits (square grids, at most {} token ids) and ARC splits (900 cells, 12 token ids)",
        crate::maze::build::VOCAB
    )
}

/// The split folder of an evaluation set at `path`: the folder itself when it holds a
/// `dataset.json`, its `test/` when that does (the root `hrm data maze build` writes); `None`
/// for anything else (a Sudoku puzzle file).
pub fn eval_split_dir(path: &Path) -> Option<PathBuf> {
    let meta = crate::dataset::META_FILE;
    if path.join(meta).is_file() {
        Some(path.to_path_buf())
    } else if path.join("test").join(meta).is_file() {
        Some(path.join("test"))
    } else {
        None
    }
}

/// The task of the evaluation set at `path`, from its metadata alone.
pub fn eval_set_rules(path: &Path) -> anyhow::Result<Rules> {
    let Some(dir) = eval_split_dir(path) else { return Ok(Rules::Sudoku) };
    let meta_path = dir.join(crate::dataset::META_FILE);
    let text = crate::fsutil::read_regular(&meta_path, "a split's dataset.json")?;
    let meta: crate::dataset::SplitMeta = serde_json::from_slice(&text)
        .with_context(|| format!("{}: bad dataset.json", meta_path.display()))?;
    split_rules(meta.seq_len, meta.vocab_size, &dir.display().to_string())
}

/// An evaluation set: a Sudoku puzzle file (Sudoku-Extreme CSV or one puzzle per line,
/// solutions computed when absent), or a maze or ARC split in the reference's layout
/// ([`eval_split_dir`]; ARC's with `identifiers.json` beside the split, for the vote); the
/// first `limit` puzzles when given (ARC: the first `limit` tasks, every variant of each).
/// Named after the file (its stem) or the folder.
pub fn load_eval_set(path: &Path, limit: Option<usize>) -> anyhow::Result<EvalSet> {
    let name = path.file_name().map_or("set".into(), |s| s.to_string_lossy().into_owned());
    let Some(dir) = eval_split_dir(path) else {
        let puzzles = crate::sudoku::formats::read_eval_set_limit(path, limit)?;
        let name = path.file_stem().map_or("set".into(), |s| s.to_string_lossy().into_owned());
        return Ok(EvalSet { name, rules: Rules::Sudoku, examples: examples_of(&puzzles), arc: None });
    };
    let (split, meta) = Split::read(&dir)?;
    let what = dir.display().to_string();
    let rules = split_rules(split.seq_len, meta.vocab_size, &what)?;
    let tokens = |t: &[u8]| t.iter().map(|&t| t as i32).collect::<Vec<i32>>();
    if rules == Rules::Arc {
        let ids = dir.parent().unwrap_or(Path::new(".")).join("identifiers.json");
        let names = crate::arc::eval::read_identifiers(&ids)?;
        let (rows, set) = crate::arc::eval::read_split(&split, &names, limit, &what)?;
        let examples = rows
            .iter()
            .map(|(x, y, id)| Example { inputs: tokens(x), labels: tokens(y), puzzle_id: *id })
            .collect();
        return Ok(EvalSet { name, rules, examples, arc: Some(std::sync::Arc::new(set)) });
    }
    if let Some(p) =
        (0..split.num_puzzles()).find(|&p| split.puzzle_indices[p + 1] - split.puzzle_indices[p] != 1)
    {
        bail!("{what}: puzzle {p} has several examples; a maze set has one per puzzle");
    }
    let n = split.num_examples().min(limit.unwrap_or(usize::MAX));
    let examples = (0..n)
        .map(|i| {
            let (x, y) = split.example(i);
            Example { inputs: tokens(x), labels: tokens(y), puzzle_id: split.puzzle_identifiers[i] }
        })
        .collect();
    Ok(EvalSet { name, rules, examples, arc: None })
}

/// A puzzle with a known answer as an evaluation example (token ids).
pub fn example_of(question: &Board, answer: &Board) -> Example {
    Example {
        inputs: to_tokens(question).iter().map(|&t| t as i32).collect(),
        labels: to_tokens(answer).iter().map(|&t| t as i32).collect(),
        puzzle_id: 0,
    }
}

pub fn examples_of(puzzles: &[Puzzle]) -> Vec<Example> {
    puzzles.iter().map(|p| example_of(&p.question, &p.answer)).collect()
}

/// A random solved grid with `blanks` random cells emptied, kept only if the solution is
/// unique (so the answer is the grid). Returns (question, answer).
pub fn blanked_puzzle<R: Rng + ?Sized>(rng: &mut R, blanks: usize) -> (Board, Board) {
    loop {
        let grid = random_grid(rng);
        let mut cells: Vec<usize> = (0..81).collect();
        cells.shuffle(rng);
        let mut q = grid;
        for &c in &cells[..blanks.min(81)] {
            q[c] = 0;
        }
        if matches!(count_solutions(&q, 2), Ok(r) if r.is_unique()) {
            return (q, grid);
        }
    }
}

/// `n` unique puzzles with a blank count drawn uniformly from `blanks`.
pub fn blanked_puzzles(n: usize, blanks: Range<usize>, seed: u64) -> Vec<(Board, Board)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let k = rng.gen_range(blanks.clone());
            blanked_puzzle(&mut rng, k)
        })
        .collect()
}

/// HRM's recipe in memory: every puzzle forms a group with itself and `augment` random
/// symmetry transforms of it (the same transform on question and answer).
pub fn augmented_source(puzzles: &[(Board, Board)], augment: usize, seed: u64) -> VecSource {
    augmented_source_with_hints(puzzles, augment, false, seed)
}

/// [`augmented_source`] with Augmented HRM's hint twins when `hints`: every example is
/// followed, in its group, by a copy with n random blanks filled from the solution, n uniform
/// in [1, blanks - 1] (`hrm data build --hints`'s construction, `dataset::hint_twin`). Without
/// hints the examples are exactly `augmented_source`'s.
pub fn augmented_source_with_hints(
    puzzles: &[(Board, Board)],
    augment: usize,
    hints: bool,
    seed: u64,
) -> VecSource {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut src = VecSource { seq_len: 81, inputs: Vec::new(), labels: Vec::new(), group_offsets: vec![0] };
    let per_group = (1 + augment) * (1 + hints as usize);
    for (q, a) in puzzles {
        for k in 0..=augment {
            let (q, a) = if k == 0 {
                (*q, *a)
            } else {
                let t = Transform::random(&mut rng);
                (t.apply(q), t.apply(a))
            };
            src.inputs.extend(to_tokens(&q));
            src.labels.extend(to_tokens(&a));
            if hints {
                src.inputs.extend(to_tokens(&hint_twin(&q, &a, &mut rng)));
                src.labels.extend(to_tokens(&a));
            }
        }
        src.group_offsets.push(src.group_offsets.last().unwrap() + per_group);
    }
    src
}
