//! ARC-AGI tasks (TASKS_SPEC section 3): reading the public task files and the augmentation
//! of HRM's and TRM's builders (section 3.3), a dihedral transform times a permutation of the
//! colors 1-9 (black, 0, stays), with its inverse for de-augmenting predictions.
//!
//! A task file is `{"train": [{"input": grid, "output": grid}, ...], "test": [...]}`, a grid a
//! list of rows of colors 0-9, at most 30 x 30. What is here so far: reading and checking
//! them, the variants of a task with duplicates removed, a grid as a sequence and back
//! (`sequence`), and `hrm data arc check`; the training-set builder (puzzle identifiers,
//! splits, the dataset file) comes next.

pub mod build;
pub mod cli;
pub mod eval;
pub mod sequence;
pub mod vote;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::seq::SliceRandom;
use std::collections::HashSet;
use std::path::Path;

/// Largest side of an ARC grid.
pub const MAX_SIDE: usize = 30;

/// A grid of colors 0-9, row-major.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    pub cells: Vec<u8>,
}

impl Grid {
    /// A grid from text: rows of digits joined by `/` ("12/34" is 2 x 2).
    pub fn from_text(text: &str) -> Grid {
        let rows: Vec<Vec<u8>> = text.split('/').map(|r| r.bytes().map(|c| c - b'0').collect()).collect();
        let rows: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        Grid::from_rows(&rows)
    }

    /// A grid from its rows (all of one length).
    pub fn from_rows(rows: &[&[u8]]) -> Grid {
        let cols = rows.first().map_or(0, |r| r.len());
        assert!(rows.iter().all(|r| r.len() == cols), "rows of different lengths");
        Grid { rows: rows.len(), cols, cells: rows.iter().flat_map(|r| r.iter().copied()).collect() }
    }
}

/// An input and its output (the test outputs of the public files are there too).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    pub input: Grid,
    pub output: Grid,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// the file name without `.json`
    pub name: String,
    pub train: Vec<Pair>,
    pub test: Vec<Pair>,
}

fn grid_of(v: &serde_json::Value, at: &str) -> Result<Grid> {
    let rows = v.as_array().with_context(|| format!("{at}: expected a list of rows"))?;
    if rows.is_empty() || rows.len() > MAX_SIDE {
        bail!("{at}: {} rows; expected 1 to {MAX_SIDE}", rows.len());
    }
    let mut cells = Vec::new();
    let mut cols = 0;
    for (i, r) in rows.iter().enumerate() {
        let r = r.as_array().with_context(|| format!("{at} row {i}: expected a list of colors"))?;
        if i == 0 {
            cols = r.len();
            if cols == 0 || cols > MAX_SIDE {
                bail!("{at} row 0: {cols} columns; expected 1 to {MAX_SIDE}");
            }
        } else if r.len() != cols {
            bail!("{at} row {i}: {} columns, row 0 has {cols}", r.len());
        }
        for (j, c) in r.iter().enumerate() {
            match c.as_u64() {
                Some(c) if c <= 9 => cells.push(c as u8),
                _ => bail!("{at} row {i} column {j}: {c}; expected a color 0-9"),
            }
        }
    }
    Ok(Grid { rows: rows.len(), cols, cells })
}

fn pairs_of(v: &serde_json::Value, split: &str, at: &str) -> Result<Vec<Pair>> {
    let list =
        v.get(split).and_then(|l| l.as_array()).with_context(|| format!("{at}: no \"{split}\" list"))?;
    list.iter()
        .enumerate()
        .map(|(k, p)| {
            let at = format!("{at}: {split}[{k}]");
            Ok(Pair {
                input: grid_of(
                    p.get("input").with_context(|| format!("{at}: no input"))?,
                    &format!("{at}.input"),
                )?,
                output: grid_of(
                    p.get("output").with_context(|| format!("{at}: no output"))?,
                    &format!("{at}.output"),
                )?,
            })
        })
        .collect()
}

/// Reads one task file; errors name the file, the pair, the row and the column.
pub fn read_task(path: &Path) -> Result<Task> {
    let bytes = crate::fsutil::read_regular(path, "an ARC task (JSON)")?;
    let at = path.display().to_string();
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{at}: malformed JSON"))?;
    let task = Task {
        name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        train: pairs_of(&v, "train", &at)?,
        test: pairs_of(&v, "test", &at)?,
    };
    if task.train.is_empty() || task.test.is_empty() {
        bail!("{at}: a task needs at least one train and one test pair");
    }
    Ok(task)
}

/// Every `*.json` task under `dir` (recursively: ConceptARC keeps one folder per concept),
/// sorted by path.
pub fn read_dir(dir: &Path) -> Result<Vec<Task>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read the folder {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no .json task files", dir.display());
    }
    files.iter().map(|f| read_task(f)).collect()
}

/// One augmentation: colors mapped by `map` (`map[old] = new`, `map[0] = 0`), then the dihedral
/// transform `tid` (`crate::grid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aug {
    pub tid: usize,
    pub map: [u8; 10],
}

impl Aug {
    pub const IDENTITY: Aug = Aug { tid: 0, map: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] };

    /// A random one as the reference draws it: `tid` uniform in 0..8, `map = [0] + a random
    /// permutation of 1..9`.
    pub fn random(rng: &mut impl Rng) -> Aug {
        let tid = rng.gen_range(0..8);
        let mut colors: Vec<u8> = (1..=9).collect();
        colors.shuffle(rng);
        let mut map = [0u8; 10];
        map[1..].copy_from_slice(&colors);
        Aug { tid, map }
    }

    pub fn apply(&self, g: &Grid) -> Grid {
        let mapped: Vec<u8> = g.cells.iter().map(|&c| self.map[c as usize]).collect();
        let (cells, rows, cols) = crate::grid::dihedral(&mapped, g.rows, g.cols, self.tid);
        Grid { rows, cols, cells }
    }

    /// De-augmentation: the inverse dihedral transform, then `old = argsort(map)[new]`.
    pub fn invert(&self, g: &Grid) -> Grid {
        let (cells, rows, cols) = crate::grid::inverse_dihedral(&g.cells, g.rows, g.cols, self.tid);
        let mut back = [0u8; 10];
        for (old, &new) in self.map.iter().enumerate() {
            back[new as usize] = old as u8;
        }
        Grid { rows, cols, cells: cells.iter().map(|&c| back[c as usize]).collect() }
    }

    /// HRM's variant name: `{task}_t{tid}_{map as 10 digits}`; the identity keeps the bare name.
    pub fn name(&self, task: &str) -> String {
        if *self == Aug::IDENTITY {
            return task.to_string();
        }
        let digits: String = self.map.iter().map(|d| char::from(b'0' + d)).collect();
        format!("{task}_t{}_{digits}", self.tid)
    }

    /// The task and augmentation of a variant name ([`Aug::name`]); a name without a valid
    /// `_t{tid}_{map}` suffix (10 digits, a permutation keeping 0) is the identity of that task.
    pub fn parse(name: &str) -> (String, Aug) {
        let parsed = (|| {
            let (rest, digits) = name.rsplit_once('_')?;
            let (task, t) = rest.rsplit_once("_t")?;
            let tid = match t.as_bytes() {
                [d @ b'0'..=b'7'] => (d - b'0') as usize,
                _ => return None,
            };
            let d = digits.as_bytes();
            if d.len() != 10 || !d.iter().all(u8::is_ascii_digit) || d[0] != b'0' {
                return None;
            }
            let mut map = [0u8; 10];
            let mut seen = [false; 10];
            for (m, &c) in map.iter_mut().zip(d) {
                *m = c - b'0';
                if std::mem::replace(&mut seen[*m as usize], true) {
                    return None;
                }
            }
            Some((task.to_string(), Aug { tid, map }))
        })();
        parsed.unwrap_or_else(|| (name.to_string(), Aug::IDENTITY))
    }

    fn apply_pairs(&self, pairs: &[Pair]) -> Vec<Pair> {
        pairs.iter().map(|p| Pair { input: self.apply(&p.input), output: self.apply(&p.output) }).collect()
    }
}

/// The variants of a task as the reference builds them: the identity, then up to `num_aug`
/// random augmentations whose transformed task (every pair, demonstration and test, as a set)
/// differs from the original's and every accepted one's, from at most `5 * num_aug` draws.
/// Tasks with few colors or symmetric grids have fewer distinct variants.
pub fn variants(task: &Task, num_aug: usize, rng: &mut impl Rng) -> Vec<Aug> {
    let key = |a: &Aug| {
        let mut pairs = a.apply_pairs(&task.train);
        pairs.extend(a.apply_pairs(&task.test));
        let mut set: Vec<(Grid, Grid)> = pairs.into_iter().map(|p| (p.input, p.output)).collect();
        set.sort_by(|x, y| {
            (x.0.rows, x.0.cols, &x.0.cells, &x.1.cells).cmp(&(y.0.rows, y.0.cols, &y.0.cells, &y.1.cells))
        });
        set
    };
    let mut seen = HashSet::new();
    seen.insert(key(&Aug::IDENTITY));
    let mut out = vec![Aug::IDENTITY];
    for _ in 0..5 * num_aug {
        if out.len() > num_aug {
            break;
        }
        let a = Aug::random(rng);
        if seen.insert(key(&a)) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn g(rows: &[&[u8]]) -> Grid {
        Grid::from_rows(rows)
    }

    #[test]
    fn an_augmentation_is_hand_checkable_and_inverts() {
        // map 1 -> 2, 2 -> 3, 3 -> 1; rot90 counter-clockwise
        let a = Aug { tid: 1, map: [0, 2, 3, 1, 4, 5, 6, 7, 8, 9] };
        let x = g(&[&[0, 1, 2], &[3, 0, 5]]);
        assert_eq!(a.apply(&x), g(&[&[3, 5], &[2, 0], &[0, 1]]));
        assert_eq!(a.invert(&a.apply(&x)), x);
        assert_eq!(a.name("abc"), "abc_t1_0231456789");
        assert_eq!(Aug::IDENTITY.name("abc"), "abc");
        assert_eq!(Aug::parse("abc_t1_0231456789"), ("abc".to_string(), a));
        assert_eq!(Aug::parse("a_b_t7_0987654321").1.tid, 7);
        assert_eq!(Aug::parse("a_b_t7_0987654321").0, "a_b");
        for bare in ["abc", "abc_t8_0231456789", "abc_t1_1230456789", "abc_t1_0231456788", "abc_t1_023"] {
            assert_eq!(Aug::parse(bare), (bare.to_string(), Aug::IDENTITY), "{bare}");
        }
        // every transform and random maps: the inverse restores, black stays black
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let y = Grid { rows: 3, cols: 5, cells: (0..15).map(|i| (i * 7 % 10) as u8).collect() };
        for tid in 0..8 {
            let a = Aug { tid, ..Aug::random(&mut rng) };
            assert_eq!(a.map[0], 0);
            let t = a.apply(&y);
            assert_eq!(a.invert(&t), y, "tid {tid}");
            assert_eq!(
                t.cells.iter().filter(|&&c| c == 0).count(),
                y.cells.iter().filter(|&&c| c == 0).count()
            );
        }
    }

    #[test]
    fn variants_are_distinct_and_limited_by_the_task() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let pair = |i: Grid, o: Grid| Pair { input: i, output: o };
        // one color, a symmetric 2x2 block: a variant is only the color (9 choices), the
        // dihedral transforms all give the same grids
        let sym = Task {
            name: "sym".into(),
            train: vec![pair(g(&[&[1, 1], &[1, 1]]), g(&[&[0, 1], &[1, 0]]))],
            test: vec![pair(g(&[&[1, 0], &[0, 1]]), g(&[&[1, 1], &[1, 1]]))],
        };
        let v = variants(&sym, 1000, &mut rng);
        assert_eq!(v[0], Aug::IDENTITY);
        // 9 colors x 2 shapes (rot90 and the flips swap the diagonals): 18, found among 5,000 draws
        assert_eq!(v.len(), 18);
        // a task with many colors and no symmetry fills up
        let rich = Task {
            name: "rich".into(),
            train: vec![pair(g(&[&[1, 2, 3], &[4, 5, 6]]), g(&[&[7, 8], &[9, 0]]))],
            test: vec![pair(g(&[&[3, 1], &[2, 0]]), g(&[&[5]]))],
        };
        let v = variants(&rich, 100, &mut rng);
        assert_eq!(v.len(), 101);
        let names: HashSet<String> = v.iter().map(|a| a.name("rich")).collect();
        assert_eq!(names.len(), 101, "distinct variants have distinct names");
    }
}
