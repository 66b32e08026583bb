//! The reference's on-disk dataset layout (TASKS_SPEC section 1), task-agnostic: a split folder
//! (`train/`, `test/`) holds, for its one set `all`, `all__inputs.npy` and `all__labels.npy`
//! ([examples, seq_len] uint8 token ids), `all__puzzle_identifiers.npy` ([puzzles] int32),
//! `all__puzzle_indices.npy` ([puzzles + 1] int32, each puzzle's first example),
//! `all__group_indices.npy` ([groups + 1] int32, each group's first puzzle) and `dataset.json`;
//! `identifiers.json` at the top names the identifiers (0 = `<blank>`). An example is one
//! (input, label) pair, a puzzle the examples sharing an identifier, a group the puzzles that are
//! variants of one original. Written so that the reference's loader reads it, and read so that a
//! dataset the reference's builders made can be checked and used.

pub mod npy;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `dataset.json` of a split, with the reference's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub pad_id: u8,
    pub ignore_label_id: Option<u8>,
    pub blank_identifier_id: i32,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub num_puzzle_identifiers: usize,
    pub total_groups: usize,
    pub mean_puzzle_examples: f64,
    pub sets: Vec<String>,
}

/// One split's arrays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub seq_len: usize,
    pub inputs: Vec<u8>,
    pub labels: Vec<u8>,
    pub puzzle_identifiers: Vec<i32>,
    pub puzzle_indices: Vec<i32>,
    pub group_indices: Vec<i32>,
}

const SET: &str = "all";
/// A split folder's metadata file.
pub const META_FILE: &str = "dataset.json";

impl Split {
    /// An empty split of sequences of `seq_len`.
    pub fn new(seq_len: usize) -> Self {
        Split { seq_len, puzzle_indices: vec![0], group_indices: vec![0], ..Default::default() }
    }

    pub fn num_examples(&self) -> usize {
        self.inputs.len() / self.seq_len.max(1)
    }
    pub fn num_puzzles(&self) -> usize {
        self.puzzle_identifiers.len()
    }
    pub fn num_groups(&self) -> usize {
        self.group_indices.len() - 1
    }

    /// Appends a puzzle (identifier `id`) of the given (input, label) examples to the current
    /// group.
    pub fn push_puzzle(&mut self, id: i32, examples: &[(Vec<u8>, Vec<u8>)]) {
        for (i, l) in examples {
            assert!(i.len() == self.seq_len && l.len() == self.seq_len, "an example of the wrong length");
            self.inputs.extend_from_slice(i);
            self.labels.extend_from_slice(l);
        }
        self.puzzle_identifiers.push(id);
        self.puzzle_indices.push(self.num_examples() as i32);
    }

    /// Closes the current group (its puzzles are those pushed since the last call).
    pub fn end_group(&mut self) {
        self.group_indices.push(self.num_puzzles() as i32);
    }

    /// Input and label of example `i`.
    pub fn example(&self, i: usize) -> (&[u8], &[u8]) {
        let r = i * self.seq_len..(i + 1) * self.seq_len;
        (&self.inputs[r.clone()], &self.labels[r])
    }

    /// A hash of the arrays ([`crate::fsutil::content_hash`]): the data's identity for a
    /// run's resume.
    pub fn content_hash(&self) -> String {
        let ints = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (ids, puzzles, groups) =
            (ints(&self.puzzle_identifiers), ints(&self.puzzle_indices), ints(&self.group_indices));
        let seq = (self.seq_len as u64).to_le_bytes();
        crate::fsutil::content_hash(&[&seq, &self.inputs, &self.labels, &ids, &puzzles, &groups])
    }

    /// The consistency the reference's loader relies on; errors say which array is off.
    pub fn check(&self, what: &str) -> Result<()> {
        let (n, p) = (self.num_examples(), self.num_puzzles());
        if self.seq_len == 0
            || self.inputs.len() != n * self.seq_len
            || self.labels.len() != self.inputs.len()
        {
            bail!(
                "{what}: inputs ({}) and labels ({}) are not [examples, {}]",
                self.inputs.len(),
                self.labels.len(),
                self.seq_len
            );
        }
        let increasing = |v: &[i32], last: usize| {
            v.first() == Some(&0) && v.last() == Some(&(last as i32)) && v.windows(2).all(|w| w[0] <= w[1])
        };
        if self.puzzle_indices.len() != p + 1 || !increasing(&self.puzzle_indices, n) {
            bail!("{what}: puzzle_indices are not {} offsets rising from 0 to {n} examples", p + 1);
        }
        if !increasing(&self.group_indices, p) {
            bail!("{what}: group_indices do not rise from 0 to {p} puzzles");
        }
        Ok(())
    }

    /// Writes the split's arrays and `dataset.json` into `dir` (created), each file atomically.
    pub fn write(
        &self,
        dir: &Path,
        vocab_size: usize,
        num_puzzle_identifiers: usize,
        ignore_label_id: Option<u8>,
    ) -> Result<()> {
        self.check(&dir.display().to_string())?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = |name: &str| dir.join(format!("{SET}__{name}.npy"));
        let (n, s) = (self.num_examples(), self.seq_len);
        npy::write_u8(&f("inputs"), &[n, s], &self.inputs)?;
        npy::write_u8(&f("labels"), &[n, s], &self.labels)?;
        npy::write_i32(&f("puzzle_identifiers"), &[self.num_puzzles()], &self.puzzle_identifiers)?;
        npy::write_i32(&f("puzzle_indices"), &[self.puzzle_indices.len()], &self.puzzle_indices)?;
        npy::write_i32(&f("group_indices"), &[self.group_indices.len()], &self.group_indices)?;
        let meta = self.meta(vocab_size, num_puzzle_identifiers, ignore_label_id);
        let json = serde_json::to_vec_pretty(&meta)?;
        crate::fsutil::write_atomic(&dir.join(META_FILE), &json)
    }

    /// The `dataset.json` of this split.
    pub fn meta(
        &self,
        vocab_size: usize,
        num_puzzle_identifiers: usize,
        ignore_label_id: Option<u8>,
    ) -> SplitMeta {
        SplitMeta {
            pad_id: 0,
            ignore_label_id,
            blank_identifier_id: 0,
            vocab_size,
            seq_len: self.seq_len,
            num_puzzle_identifiers,
            total_groups: self.num_groups(),
            mean_puzzle_examples: self.num_examples() as f64 / self.num_puzzles().max(1) as f64,
            sets: vec![SET.to_string()],
        }
    }

    /// Reads a split folder (ours or the reference builders'), checked.
    pub fn read(dir: &Path) -> Result<(Split, SplitMeta)> {
        let d = dir.display();
        let meta_path = dir.join(META_FILE);
        let text = crate::fsutil::read_regular(&meta_path, "a split's dataset.json")?;
        let meta: SplitMeta = serde_json::from_slice(&text)
            .with_context(|| format!("{}: bad dataset.json", meta_path.display()))?;
        let f = |name: &str| npy::read(&dir.join(format!("{SET}__{name}.npy")));
        let inputs = f("inputs")?;
        if inputs.shape.len() != 2 || inputs.shape[1] != meta.seq_len {
            bail!(
                "{d}: {SET}__inputs.npy has shape {:?}, dataset.json says seq_len {}",
                inputs.shape,
                meta.seq_len
            );
        }
        let split = Split {
            seq_len: meta.seq_len,
            inputs: inputs.into_u8("inputs")?,
            labels: f("labels")?.into_u8("labels")?,
            puzzle_identifiers: f("puzzle_identifiers")?.to_i32("puzzle_identifiers")?,
            puzzle_indices: f("puzzle_indices")?.to_i32("puzzle_indices")?,
            group_indices: f("group_indices")?.to_i32("group_indices")?,
        };
        split.check(&d.to_string())?;
        if let Some((i, t)) = (split.inputs.iter().chain(&split.labels).enumerate())
            .find(|(_, t)| **t as usize >= meta.vocab_size)
        {
            bail!(
                "{d}: token {t} at element {i} of the inputs and labels, vocab_size is {}",
                meta.vocab_size
            );
        }
        if let Some(id) =
            split.puzzle_identifiers.iter().find(|&&id| id < 0 || id as usize >= meta.num_puzzle_identifiers)
        {
            bail!("{d}: puzzle identifier {id} outside 0..{}", meta.num_puzzle_identifiers);
        }
        Ok((split, meta))
    }
}

/// Writes `identifiers.json` (identifier -> name, index 0 = `<blank>`).
pub fn write_identifiers(path: &Path, names: &[String]) -> Result<()> {
    crate::fsutil::write_atomic(path, &serde_json::to_vec(names)?)
}
