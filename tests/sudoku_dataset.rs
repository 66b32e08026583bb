//! Builder determinism, dataset structure, hint twins, split disjointness, load errors, and
//! thread-count-independent generation.

use hrm::sudoku::board::{Board, count_givens, from_tokens, is_solution_of, is_valid_solution};
use hrm::sudoku::dataset::{BuildConfig, Dataset, build, canonical_set, hint_twin};
use hrm::sudoku::formats::Puzzle;
use hrm::sudoku::generate::{GenConfig, Mode, generate};
use hrm::sudoku::symmetry::{Transform, canonical};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::path::Path;

fn puzzles(n: usize, seed: u64) -> Vec<Puzzle> {
    let cfg = GenConfig::new(n, Mode::Minimal, seed);
    generate(&cfg, 1000, &|_| {})
        .into_iter()
        .map(|g| Puzzle { source: "gen".into(), question: g.question, answer: g.answer, rating: g.rating })
        .collect()
}

fn cfg(seed: u64) -> BuildConfig {
    BuildConfig { train: 12, test: 4, augment: 5, hint_twins: true, test_augment: 0, seed }
}

fn build_to(dir: &Path, input: Vec<Puzzle>, seed: u64) {
    build(input, &HashSet::new(), &[], &cfg(seed), dir, &|_| {}).unwrap();
}

#[test]
fn builder_output_is_byte_identical_for_the_same_seed() {
    let input = puzzles(20, 1);
    let (a, b, c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_to(a.path(), input.clone(), 42);
    build_to(b.path(), input.clone(), 42);
    build_to(c.path(), input, 43);
    for f in ["train/data.bin", "train/manifest.json", "test/data.bin", "test/manifest.json"] {
        let x = std::fs::read(a.path().join(f)).unwrap();
        assert_eq!(x, std::fs::read(b.path().join(f)).unwrap(), "{f} differs for the same seed");
        if f.ends_with(".bin") {
            assert_ne!(x, std::fs::read(c.path().join(f)).unwrap(), "{f} equal for another seed");
        }
    }
}

#[test]
fn dataset_structure_hints_and_disjoint_splits() {
    let input = puzzles(20, 2);
    let dir = tempfile::tempdir().unwrap();
    build_to(dir.path(), input, 7);
    let train = Dataset::load(&dir.path().join("train")).unwrap();
    let test = Dataset::load(&dir.path().join("test/data.bin")).unwrap();
    assert_eq!(train.num_groups(), 12);
    assert_eq!(train.len(), 12 * 6 * 2);
    assert_eq!(train.manifest().examples_per_group, 12);
    assert_eq!(test.len(), 4);
    assert_eq!(test.num_groups(), 4);
    let mut train_keys = HashSet::new();
    for g in 0..train.num_groups() {
        let r = train.group(g);
        assert_eq!(r.len(), 12);
        let first_q = from_tokens(train.inputs(r.start)).unwrap();
        let key = canonical(&first_q);
        train_keys.insert(key);
        let mut distinct = HashSet::new();
        for i in r.clone() {
            let q: Board = from_tokens(train.inputs(i)).unwrap();
            let a: Board = from_tokens(train.labels(i)).unwrap();
            assert!(is_valid_solution(&a));
            assert!(is_solution_of(&q, &a), "example {i}: input not consistent with label");
            if (i - r.start).is_multiple_of(2) {
                // Original or augmentation: same puzzle up to symmetry.
                assert_eq!(canonical(&q), key);
                distinct.insert(q);
            } else {
                // Hint twin of the previous example: strictly more givens, not complete.
                let prev: Board = from_tokens(train.inputs(i - 1)).unwrap();
                assert_eq!(train.labels(i), train.labels(i - 1));
                assert!(count_givens(&q) > count_givens(&prev));
                assert!(count_givens(&q) < 81);
                assert!((0..81).all(|c| prev[c] == 0 || prev[c] == q[c]));
            }
        }
        assert!(distinct.len() >= 5, "augmentations should differ");
    }
    for g in 0..test.num_groups() {
        let q = from_tokens(test.inputs(test.group(g).start)).unwrap();
        assert!(!train_keys.contains(&canonical(&q)), "test puzzle {g} also in train");
    }
}

#[test]
fn duplicates_and_excluded_sets_are_dropped() {
    let mut input = puzzles(20, 3);
    // Add symmetric copies of the first three puzzles.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for i in 0..3 {
        let t = Transform::random(&mut rng);
        let p = &input[i];
        input.push(Puzzle { question: t.apply(&p.question), answer: t.apply(&p.answer), ..p.clone() });
    }
    // Exclude a transformed copy of puzzle 5 via a file.
    let dir = tempfile::tempdir().unwrap();
    let ex_path = dir.path().join("eval.txt");
    let t = Transform::random(&mut rng);
    hrm::sudoku::formats::write_lines(&ex_path, &[t.apply(&input[5].question)], "eval").unwrap();
    let ex = canonical_set(&[ex_path]).unwrap();
    let c = BuildConfig { train: 16, test: 0, augment: 1, hint_twins: false, test_augment: 0, seed: 0 };
    let rep = build(input.clone(), &ex, &[], &c, dir.path(), &|_| {}).unwrap();
    assert_eq!(rep.duplicates, 3);
    assert_eq!(rep.excluded, 1);
    // Asking for more than remain is an error, not a panic.
    let c2 = BuildConfig { train: 20, ..c };
    let e = build(input, &ex, &[], &c2, dir.path(), &|_| {}).unwrap_err().to_string();
    assert!(e.contains("only 19 remain"), "{e}");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    build_to(dir.path(), puzzles(20, 4), 1);
    let bin = dir.path().join("train/data.bin");
    let bytes = std::fs::read(&bin).unwrap();
    let e = Dataset::load(&dir.path().join("nope")).err().unwrap().to_string();
    assert!(e.contains("nope"), "{e}");
    std::fs::write(&bin, &bytes[..bytes.len() - 5]).unwrap();
    let e = Dataset::load(&bin).err().unwrap().to_string();
    assert!(e.contains("data.bin") && e.contains("truncated"), "{e}");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    std::fs::write(&bin, &bad).unwrap();
    let e = Dataset::load(&bin).err().unwrap().to_string();
    assert!(e.contains("data.bin") && e.contains("magic"), "{e}");
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] = 0; // a label id of 0
    std::fs::write(&bin, &bad).unwrap();
    let e = Dataset::load(&bin).err().unwrap().to_string();
    assert!(e.contains("out of range"), "{e}");
    std::fs::write(&bin, &bytes).unwrap();
    assert!(Dataset::load(&bin).is_ok());
}

#[test]
fn hint_twin_fills_between_one_and_all_but_one_blank() {
    let p = &puzzles(1, 5)[0];
    let blanks = 81 - count_givens(&p.question);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut seen = HashSet::new();
    for _ in 0..2000 {
        let t = hint_twin(&p.question, &p.answer, &mut rng);
        let filled = count_givens(&t) - count_givens(&p.question);
        assert!(filled >= 1 && filled < blanks);
        assert!(is_solution_of(&t, &p.answer));
        seen.insert(filled);
    }
    // n is uniform over [1, blanks-1]: both ends show up.
    assert!(seen.contains(&1) && seen.contains(&(blanks - 1)), "{seen:?}");
}

#[test]
fn generation_does_not_depend_on_thread_count() {
    let run = |threads: usize, mode: Mode| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut c = GenConfig::new(40, mode, 77);
        c.max_steps_per_chain = 30;
        c.per_chain = 2;
        pool.install(|| generate(&c, 4, &|_| {}))
    };
    for mode in [Mode::Minimal, Mode::Easy, Mode::Hard { min_rating: 3.0, max_rating: 1000.0 }] {
        let a = run(1, mode);
        let b = run(2, mode);
        assert!(!a.is_empty());
        assert_eq!(a, b, "{mode:?}");
        let keys: HashSet<Board> = a.iter().map(|g| canonical(&g.question)).collect();
        assert_eq!(keys.len(), a.len(), "duplicates up to symmetry in {mode:?}");
        for g in &a {
            assert!(is_solution_of(&g.question, &g.answer));
            if let Mode::Hard { min_rating, max_rating } = mode {
                assert!(g.rating >= min_rating && g.rating <= max_rating);
            }
        }
    }
}

#[test]
fn a_rebuild_without_a_split_removes_the_old_one_but_keeps_foreign_files() {
    let input = puzzles(20, 4);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_to(a.path(), input.clone(), 1);
    build_to(b.path(), input.clone(), 1);
    std::fs::write(b.path().join("test/notes.txt"), "mine").unwrap();
    let no_test = BuildConfig { test: 0, ..cfg(1) };
    for d in [a.path(), b.path()] {
        build(input.clone(), &HashSet::new(), &[], &no_test, d, &|_| {}).unwrap();
        assert!(Dataset::load(&d.join("train")).is_ok());
    }
    assert!(!a.path().join("test").exists(), "the old test split is still there");
    assert!(!b.path().join("test/data.bin").exists() && !b.path().join("test/manifest.json").exists());
    assert_eq!(std::fs::read_to_string(b.path().join("test/notes.txt")).unwrap(), "mine");
}
