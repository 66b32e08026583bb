//! `hrm data maze build`: maze CSVs into the reference's dataset layout (TASKS_SPEC sections 1
//! and 2, `crate::dataset`). Input = the question's tokens, label = the answer's; one group per
//! maze; every example has identifier 0 (`<blank>`: one shared puzzle embedding), nothing is
//! ignored. With `aug`, each training maze's group holds its 8 dihedral transforms (the
//! reference's numbering, `crate::grid`), one puzzle each, so an epoch still shows every maze
//! once, in a random orientation; the test split is never augmented.

use super::formats::MazeRow;
use crate::dataset::Split;
use anyhow::{Result, bail};

/// Tokens: PAD 0 and `# SGo` 1..=5.
pub const VOCAB: usize = 6;

/// One split of mazes (all of one side) as dataset arrays.
pub fn split_of(rows: &[MazeRow], aug: bool, what: &str) -> Result<Split> {
    let Some(side) = rows.first().map(|r| r.side) else {
        bail!("{what}: no mazes");
    };
    let mut split = Split::new(side * side);
    for (i, r) in rows.iter().enumerate() {
        if r.side != side {
            bail!("{what}: maze {} is {} x {}, the first is {side} x {side}", i + 1, r.side, r.side);
        }
        for tid in 0..if aug { 8 } else { 1 } {
            let q = super::dihedral(&r.question, side, tid);
            let a = super::dihedral(&r.answer, side, tid);
            split.push_puzzle(0, &[(q, a)]);
        }
        split.end_group();
    }
    Ok(split)
}

/// Writes `out/train`, `out/test` and `out/identifiers.json`.
pub fn write(out: &std::path::Path, train: &Split, test: &Split) -> Result<()> {
    if train.seq_len != test.seq_len {
        bail!("train mazes have {} cells, test mazes {}", train.seq_len, test.seq_len);
    }
    train.write(&out.join("train"), VOCAB, 1, Some(0))?;
    test.write(&out.join("test"), VOCAB, 1, Some(0))?;
    crate::dataset::write_identifiers(&out.join("identifiers.json"), &["<blank>".to_string()])
}
