//! `hrm data arc build`: ARC task folders into the reference's dataset layout (TASKS_SPEC
//! sections 1 and 3, `crate::dataset`), HRM's recipe:
//! - every immediate sub-folder of each given folder is a source (ARC's `training` and
//!   `evaluation`, or a ConceptARC concept); the tasks of a folder named `evaluation` (by
//!   default) are *held out*: their demonstration pairs train, their test pairs form the test
//!   split; every pair of any other task trains;
//! - each task gives the identity and up to `variants` distinct dihedral x color-permutation
//!   variants (`super::variants`), each one puzzle with its own identifier, named as HRM names
//!   them (`super::Aug::name`); a task's puzzles form one group, in both splits, and a held-out
//!   variant has one identifier for its demonstrations (train) and its test inputs (test);
//! - identifiers go by first appearance, train split first (so the test split repeats train
//!   identifiers), from 1 (0 is the blank);
//! - on the train split each example sits at a random offset on the 30 x 30 canvas, except one
//!   example per puzzle at (0, 0); test examples all sit at (0, 0).
//!
//! The task order is the sorted paths shuffled by the seed (the reference shuffles the
//! file-system order with NumPy's seed 42, which no other program can repeat), and every task
//! draws its variants and offsets from its own stream of the seed, so a build is the same bytes
//! on every machine and thread count.

use super::sequence::{CANVAS, example};
use super::{Aug, Pair, Task, read_dir, variants};
use crate::dataset::Split;
use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// PAD, EOS and the 10 colors.
pub const VOCAB: usize = 12;

/// A task and whether its test pairs are held out.
#[derive(Clone, Debug)]
pub struct Source {
    pub task: Task,
    pub held_out: bool,
}

/// The tasks of every immediate sub-folder of `dirs` (its `*.json` files, recursively), those
/// of sub-folders named `held_out_dir` held out. Task names must be unique over all folders
/// (they name the puzzle identifiers).
pub fn read_sources(dirs: &[PathBuf], held_out_dir: &str) -> Result<Vec<Source>> {
    let mut out: Vec<Source> = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the folder {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        subs.retain(|p| p.is_dir());
        subs.sort();
        if subs.is_empty() {
            bail!(
                "{}: no sub-folders; ARC folders hold their tasks in sub-folders (training, evaluation, \
                 or ConceptARC's concepts)",
                dir.display()
            );
        }
        for sub in subs {
            let held_out = sub.file_name().is_some_and(|n| n == held_out_dir);
            for task in read_dir(&sub)? {
                if let Some(first) = seen.insert(task.name.clone(), sub.clone()) {
                    bail!(
                        "task {} is in both {} and {}: task names must be unique (they name the puzzle \
                         identifiers)",
                        task.name,
                        first.display(),
                        sub.display()
                    );
                }
                out.push(Source { task, held_out });
            }
        }
    }
    Ok(out)
}

/// The built dataset: the two splits and the identifier names (index = identifier, 0 =
/// `<blank>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    pub train: Split,
    pub test: Split,
    pub names: Vec<String>,
    /// tasks with fewer than `variants` augmented variants (too few colors, symmetric grids)
    pub short_tasks: usize,
}

/// One task's puzzles (variant name, train examples, test examples), from its own stream.
type TaskPuzzles = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>)>;

fn task_puzzles(s: &Source, num_aug: usize, seed: u64, stream: u64) -> (TaskPuzzles, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6172_6362_7569_6c64);
    rng.set_stream(stream);
    let augs = variants(&s.task, num_aug, &mut rng);
    let mut train_pairs: Vec<&Pair> = s.task.train.iter().collect();
    if !s.held_out {
        train_pairs.extend(&s.task.test);
    }
    let puzzles = augs
        .iter()
        .map(|a: &Aug| {
            let at_origin = rng.gen_range(0..train_pairs.len());
            let train: Vec<(Vec<u8>, Vec<u8>)> = train_pairs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let p = Pair { input: a.apply(&p.input), output: a.apply(&p.output) };
                    let r: Option<&mut dyn rand::RngCore> =
                        if i == at_origin { None } else { Some(&mut rng) };
                    let (x, y, _) = example(&p, r);
                    (x, y)
                })
                .collect();
            let test: Vec<(Vec<u8>, Vec<u8>)> = if s.held_out {
                s.task
                    .test
                    .iter()
                    .map(|p| {
                        let (x, y, _) =
                            example(&Pair { input: a.apply(&p.input), output: a.apply(&p.output) }, None);
                        (x, y)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (a.name(&s.task.name), train, test)
        })
        .collect();
    (puzzles, augs.len())
}

/// Builds the dataset of `sources` (in the order the seed shuffles them to) with up to
/// `num_aug` variants per task; `progress(done)` as tasks finish.
pub fn build(
    sources: &[Source],
    num_aug: usize,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Built> {
    build_in_chunks(sources, num_aug, seed, progress, 64)
}

/// [`build`], making `chunk` tasks at a time.
fn build_in_chunks(
    sources: &[Source],
    num_aug: usize,
    seed: u64,
    progress: &(dyn Fn(usize) + Sync),
    chunk: usize,
) -> Result<Built> {
    if !sources.iter().any(|s| s.held_out) {
        bail!("no held-out tasks (none in a folder named for the test split): the test split would be empty");
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut train = Split::new(CANVAS * CANVAS);
    let mut test = Split::new(CANVAS * CANVAS);
    let mut names = vec!["<blank>".to_string()];
    let mut ids: HashMap<String, i32> = HashMap::new();
    let mut short_tasks = 0;
    // Tasks are made in parallel a chunk at a time and copied into the splits, so the build
    // holds the splits and one chunk's examples, not every example twice (ARC-AGI-1 at 1,000
    // variants: 5.7 GB of examples). The splits' contents do not depend on the chunking.
    for chunk in order.chunks(chunk.max(1)) {
        let per_task: Vec<(TaskPuzzles, usize)> = chunk
            .par_iter()
            .map(|&i| {
                let r = task_puzzles(&sources[i], num_aug, seed, i as u64);
                progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                r
            })
            .collect();
        for (puzzles, count) in per_task {
            short_tasks += (count < num_aug + 1) as usize;
            let held_out = puzzles.first().is_some_and(|p| !p.2.is_empty());
            for (name, examples, held) in &puzzles {
                if ids.contains_key(name) {
                    bail!("variant {name} twice: task names must be unique");
                }
                ids.insert(name.clone(), names.len() as i32);
                train.push_puzzle(names.len() as i32, examples);
                if held_out {
                    test.push_puzzle(names.len() as i32, held);
                }
                names.push(name.clone());
            }
            train.end_group();
            if held_out {
                test.end_group();
            }
        }
    }
    Ok(Built { train, test, names, short_tasks })
}

/// Writes `out/train`, `out/test` and `out/identifiers.json`.
pub fn write(out: &Path, b: &Built) -> Result<()> {
    let ids = b.names.len();
    b.train.write(&out.join("train"), VOCAB, ids, Some(0))?;
    b.test.write(&out.join("test"), VOCAB, ids, Some(0))?;
    crate::dataset::write_identifiers(&out.join("identifiers.json"), &b.names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arc::Grid;
    use crate::arc::sequence::crop;

    fn task(name: &str, train: &[(&str, &str)], test: &[(&str, &str)]) -> Task {
        let pairs = |ps: &[(&str, &str)]| {
            ps.iter().map(|(i, o)| Pair { input: Grid::from_text(i), output: Grid::from_text(o) }).collect()
        };
        Task { name: name.into(), train: pairs(train), test: pairs(test) }
    }

    fn sources() -> Vec<Source> {
        vec![
            Source { task: task("a", &[("10", "01"), ("22", "22")], &[("30", "03")]), held_out: false },
            Source { task: task("e", &[("1/0", "0/1")], &[("4/0", "0/4"), ("5", "5")]), held_out: true },
        ]
    }

    #[test]
    fn splits_identifiers_and_groups_follow_the_recipe() {
        let b = build(&sources(), 3, 7, &|_| {}).unwrap();
        // made a task at a time or all at once: the same dataset
        assert_eq!(build_in_chunks(&sources(), 3, 7, &|_| {}, 1).unwrap(), b);
        b.train.check("train").unwrap();
        b.test.check("test").unwrap();
        assert_eq!(b.train.num_groups(), 2, "one group per task");
        assert_eq!(b.test.num_groups(), 1, "the held-out task only");
        // 1 + 3 variants each (colors 1-5 leave plenty)
        assert_eq!((b.train.num_puzzles(), b.test.num_puzzles(), b.names.len()), (8, 4, 9));
        assert_eq!(b.short_tasks, 0);
        // every puzzle of task a has its 3 pairs (demos and test), of task e its 1 demo
        let ex = |s: &Split, p: usize| (s.puzzle_indices[p + 1] - s.puzzle_indices[p]) as usize;
        let per_task: Vec<&str> = b.names[1..].iter().map(|n| n.split('_').next().unwrap()).collect();
        for (p, t) in per_task.iter().enumerate() {
            assert_eq!(ex(&b.train, p), if *t == "a" { 3 } else { 1 }, "puzzle {p} ({t})");
            assert_eq!(b.train.puzzle_identifiers[p], p as i32 + 1, "first appearance");
        }
        // the test split: task e's variants with the train identifiers, 2 test inputs each
        for p in 0..4 {
            let id = b.test.puzzle_identifiers[p] as usize;
            assert!(b.names[id].starts_with('e'), "{}", b.names[id]);
            assert_eq!(ex(&b.test, p), 2);
        }
        // the identity variant of e keeps the bare name and its test pairs at (0, 0)
        let e = b.names.iter().position(|n| n == "e").unwrap() as i32;
        let p = b.test.puzzle_identifiers.iter().position(|&i| i == e).unwrap();
        let first = b.test.puzzle_indices[p] as usize;
        let (x, y) = b.test.example(first);
        assert_eq!(crop(x), Grid::from_text("4/0"));
        assert_eq!(crop(y), Grid::from_text("0/4"));
        assert_eq!(x[0], 4 + 2);
        assert_eq!(x[1], super::super::sequence::EOS, "EOS right of the column");
        // the same seed, the same bytes; another seed, other draws
        assert_eq!(build(&sources(), 3, 7, &|_| {}).unwrap(), b);
        assert_ne!(build(&sources(), 3, 8, &|_| {}).unwrap().train, b.train);
    }

    #[test]
    fn every_train_puzzle_has_one_example_at_the_origin_and_decodes_to_its_variant() {
        let b = build(&sources(), 5, 1, &|_| {}).unwrap();
        let srcs = sources();
        for p in 0..b.train.num_puzzles() {
            let name = &b.names[b.train.puzzle_identifiers[p] as usize];
            let (task_name, aug) = Aug::parse(name);
            let src = srcs.iter().find(|s| s.task.name == task_name).unwrap();
            let mut pairs: Vec<&Pair> = src.task.train.iter().collect();
            if !src.held_out {
                pairs.extend(&src.task.test);
            }
            let range = b.train.puzzle_indices[p] as usize..b.train.puzzle_indices[p + 1] as usize;
            let mut at_origin = 0;
            for (k, i) in range.enumerate() {
                let (x, y) = b.train.example(i);
                // the grid's top-left corner: the first color token in reading order
                let first = x.iter().position(|&t| t >= 2).unwrap();
                at_origin += (first == 0) as usize;
                // shifted back to the origin, the canvas decodes to the variant's pair
                let shift = |c: &[u8]| {
                    let mut t = vec![0u8; CANVAS * CANVAS];
                    let (r0, c0) = (first / CANVAS, first % CANVAS);
                    for r in r0..CANVAS {
                        for col in c0..CANVAS {
                            t[(r - r0) * CANVAS + col - c0] = c[r * CANVAS + col];
                        }
                    }
                    t
                };
                assert_eq!(aug.invert(&crop(&shift(x))), pairs[k].input, "{name} example {k}");
                assert_eq!(aug.invert(&crop(&shift(y))), pairs[k].output, "{name} example {k}");
            }
            assert!(at_origin >= 1, "{name}: no example at (0, 0)");
        }
    }

    #[test]
    fn no_held_out_task_is_an_error() {
        let mut s = sources();
        s[1].held_out = false;
        assert!(build(&s, 2, 0, &|_| {}).unwrap_err().to_string().contains("no held-out tasks"));
    }
}
