//! The reference's training-data order: an epoch is a random permutation of the puzzle groups
//! and each group contributes one random puzzle with all its examples in random order, cut to
//! what still fits in the batch (TASKS_SPEC section 1; Sudoku's and Maze's puzzles are one
//! example each). The cursor (epoch, position) is all the state: permutations and member choices
//! are derived from (seed, epoch, position), so a resumed run continues the exact same stream.

use crate::act::Batch;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Training examples: groups of puzzles (an original with its augmentations and hint twins),
/// each puzzle one example or several sharing a puzzle identifier (ARC's demonstrations).
pub trait PuzzleSource: Sync {
    fn num_groups(&self) -> usize;
    /// The puzzles of group `g`.
    fn group(&self, g: usize) -> Range<usize>;
    /// The examples of puzzle `p` (by default one, example `p`).
    fn puzzle_examples(&self, p: usize) -> Range<usize> {
        p..p + 1
    }
    /// The puzzle identifier of puzzle `p` (by default 0, the blank).
    fn puzzle_id(&self, _p: usize) -> i32 {
        0
    }
    /// Token ids of example `i`: (inputs, labels), each `seq_len` long.
    fn example(&self, i: usize) -> (&[u8], &[u8]);
}

/// splitmix64: decorrelates nearby integers into independent seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampler {
    pub seed: u64,
    pub epoch: u64,
    pub pos: usize,
    #[serde(skip)]
    order: Vec<u32>,
    #[serde(skip)]
    order_epoch: Option<u64>,
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Sampler { seed, epoch: 0, pos: 0, order: Vec::new(), order_epoch: None }
    }

    fn ensure_order(&mut self, groups: usize) {
        if self.order_epoch != Some(self.epoch) || self.order.len() != groups {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(self.epoch)));
            self.order = (0..groups as u32).collect();
            self.order.shuffle(&mut rng);
            self.order_epoch = Some(self.epoch);
        }
    }

    /// The next `batch` examples of the stream (crossing epoch boundaries as needed).
    pub fn next_batch(&mut self, data: &dyn PuzzleSource, batch: usize, seq_len: usize) -> Batch {
        let groups = data.num_groups();
        assert!(groups > 0, "the training set is empty");
        let mut inputs = Vec::with_capacity(batch * seq_len);
        let mut labels = Vec::with_capacity(batch * seq_len);
        let mut puzzle_ids = Vec::with_capacity(batch);
        let mut examples = Vec::new();
        while puzzle_ids.len() < batch {
            if self.pos >= groups {
                self.epoch += 1;
                self.pos = 0;
            }
            self.ensure_order(groups);
            let g = self.order[self.pos] as usize;
            let mut pick = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(self.epoch ^ mix(self.pos as u64))));
            let p = pick.gen_range(data.group(g));
            examples.clear();
            examples.extend(data.puzzle_examples(p));
            // (a one-example puzzle draws nothing here)
            examples.shuffle(&mut pick);
            // the examples past the batch's end are skipped, as the reference does
            for &i in examples.iter().take(batch - puzzle_ids.len()) {
                let (x, y) = data.example(i);
                inputs.extend(x.iter().map(|&t| t as i32));
                labels.extend(y.iter().map(|&t| t as i32));
                puzzle_ids.push(data.puzzle_id(p));
            }
            self.pos += 1;
        }
        Batch { inputs, puzzle_ids, labels: Some(labels) }
    }
}

/// An in-memory source (tests, generated demo data).
pub struct VecSource {
    pub seq_len: usize,
    pub inputs: Vec<u8>,
    pub labels: Vec<u8>,
    /// group g = examples group_offsets[g]..group_offsets[g+1]
    pub group_offsets: Vec<usize>,
}

impl PuzzleSource for VecSource {
    fn num_groups(&self) -> usize {
        self.group_offsets.len() - 1
    }
    fn group(&self, g: usize) -> Range<usize> {
        self.group_offsets[g]..self.group_offsets[g + 1]
    }
    fn example(&self, i: usize) -> (&[u8], &[u8]) {
        let n = self.seq_len;
        (&self.inputs[i * n..(i + 1) * n], &self.labels[i * n..(i + 1) * n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(groups: usize, per: usize) -> VecSource {
        let n = groups * per;
        VecSource {
            seq_len: 1,
            inputs: (0..n).map(|i| i as u8).collect(),
            labels: (0..n).map(|i| i as u8).collect(),
            group_offsets: (0..=groups).map(|g| g * per).collect(),
        }
    }

    /// Two groups: group 0 = puzzles 0 (3 examples) and 1 (1 example), group 1 = puzzle 2 (2
    /// examples); identifiers 5, 6, 7.
    struct Multi;
    impl PuzzleSource for Multi {
        fn num_groups(&self) -> usize {
            2
        }
        fn group(&self, g: usize) -> Range<usize> {
            [0..2, 2..3][g].clone()
        }
        fn puzzle_examples(&self, p: usize) -> Range<usize> {
            [0..3, 3..4, 4..6][p].clone()
        }
        fn puzzle_id(&self, p: usize) -> i32 {
            5 + p as i32
        }
        fn example(&self, i: usize) -> (&[u8], &[u8]) {
            const T: [u8; 6] = [0, 1, 2, 3, 4, 5];
            (&T[i..i + 1], &T[i..i + 1])
        }
    }

    #[test]
    fn a_puzzle_brings_all_its_examples_with_its_identifier_cut_at_the_batch_end() {
        let mut puzzles_seen = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut s = Sampler::new(seed);
            let b = s.next_batch(&Multi, 64, 1);
            assert_eq!((b.inputs.len(), b.puzzle_ids.len()), (64, 64));
            for (&x, &id) in b.inputs.iter().zip(&b.puzzle_ids) {
                let p = [0, 0, 0, 1, 2, 2][x as usize];
                assert_eq!(id, 5 + p, "example {x} carries its puzzle's identifier");
            }
            // every puzzle's run is whole (except possibly the last, cut at the batch end)
            let mut i = 0;
            while i < 64 {
                let id = b.puzzle_ids[i];
                let len = [3, 1, 2][(id - 5) as usize];
                let run: Vec<i32> = b.inputs[i..(i + len).min(64)].to_vec();
                let mut sorted = run.clone();
                sorted.sort();
                sorted.dedup();
                let first = [0, 3, 4][(id - 5) as usize];
                assert_eq!(sorted.len(), run.len(), "seed {seed} at {i}: an example twice");
                assert!(sorted.iter().all(|x| (first..first + len as i32).contains(x)), "seed {seed} at {i}");
                puzzles_seen.insert((id, run));
                i += len;
            }
        }
        // both orders of a multi-example puzzle occur, and puzzle 0 and 1 of group 0 both
        assert!(puzzles_seen.contains(&(5, vec![0, 1, 2])) || puzzles_seen.contains(&(5, vec![2, 1, 0])));
        assert!(puzzles_seen.iter().filter(|(id, _)| *id == 5).count() > 1, "examples shuffled");
        assert!(puzzles_seen.iter().any(|(id, _)| *id == 6));
    }

    #[test]
    fn an_epoch_visits_every_group_once_with_one_member_each() {
        let src = source(10, 3);
        let mut s = Sampler::new(4);
        let b = s.next_batch(&src, 10, 1);
        let mut groups: Vec<i32> = b.inputs.iter().map(|&i| i / 3).collect();
        groups.sort();
        assert_eq!(groups, (0..10).collect::<Vec<_>>());
        assert_eq!((s.epoch, s.pos), (0, 10));
        // The next batch starts a new epoch with a different order.
        let b2 = s.next_batch(&src, 10, 1);
        assert_eq!(s.epoch, 1);
        assert_ne!(b.inputs, b2.inputs);
    }

    #[test]
    fn a_restored_cursor_continues_the_same_stream() {
        let src = source(7, 4);
        let mut a = Sampler::new(9);
        let _ = a.next_batch(&src, 5, 1);
        let saved = serde_json::to_string(&a).unwrap();
        let rest_a: Vec<Batch> = (0..4).map(|_| a.next_batch(&src, 5, 1)).collect();
        let mut b: Sampler = serde_json::from_str(&saved).unwrap();
        let rest_b: Vec<Batch> = (0..4).map(|_| b.next_batch(&src, 5, 1)).collect();
        assert_eq!(rest_a, rest_b);
    }
}
