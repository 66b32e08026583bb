//! Input perturbations for Augmented HRM's perturbed inference, each with its exact inverse.
//!
//! A [`Perturbation`] is an element of the Sudoku symmetry group written as a digit map and a
//! cell map: `apply(x)[i] = digit_map[x[cell_map[i]]]` (new cell `i` takes old cell
//! `cell_map[i]`). Digit relabelings act on values and geometric symmetries on positions, so
//! they commute and compose freely. The model sees `p.apply(puzzle)`; its answer is mapped back
//! with `p.inverse()` before any vote, so every pass answers the original puzzle.
//!
//! `--perturb` grammar (see [`parse_spec`]):
//!
//! ```text
//! SPEC   := FACTOR ('+' FACTOR)*        the product: every combination of one member per factor
//! FACTOR := relabel9                    the 9 cyclic relabelings d -> ((d - 1 + k) mod 9) + 1, k = 0..8
//!         | perm:N                      the identity and N random digit permutations
//!         | sym:N                       the identity and N random geometric symmetries (transpose,
//!                                       band/stack and row/column permutations; digits kept)
//!         | aug:N                       the identity and N random full HRM augmentations
//!                                       (`shuffle_sudoku`: digits and geometry together)
//!         | none                        the identity only
//! ```
//!
//! Pass 0 is always the identity (the unperturbed puzzle); random members are drawn from a
//! seeded stream, so a spec and a seed name the same passes on every run.
//!
//! Other tasks' maps ([`PassMap`], [`parse_spec_for`]): a maze's label-preserving transforms
//! are the 8 dihedral maps of its square grid (`dihedral8`; a transformed shortest path is a
//! shortest path of the transformed maze), and `none`.

use crate::sudoku::board::Board;
use crate::sudoku::symmetry::Transform;
use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One perturbation: `apply(x)[i] = digit_map[x[cell_map[i]]]` (digit 0 = blank stays blank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perturbation {
    pub digit_map: [u8; 10],
    pub cell_map: [u8; 81],
}

const ID_CELLS: [u8; 81] = {
    let mut m = [0u8; 81];
    let mut i = 0;
    while i < 81 {
        m[i] = i as u8;
        i += 1;
    }
    m
};

impl Perturbation {
    pub const IDENTITY: Perturbation =
        Perturbation { digit_map: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], cell_map: ID_CELLS };

    /// The `k`-th cyclic relabeling: digit d -> ((d - 1 + k) mod 9) + 1 (the paper's
    /// t -> ((t - 2 + k) mod 9) + 2 on token ids). `k = 0` is the identity.
    pub fn relabel(k: u8) -> Perturbation {
        let mut p = Perturbation::IDENTITY;
        for d in 1..10u8 {
            p.digit_map[d as usize] = (d - 1 + k) % 9 + 1;
        }
        p
    }

    /// The same group element as a symmetry [`Transform`] (digits and geometry).
    pub fn from_transform(t: &Transform) -> Perturbation {
        let mut cell_map = [0u8; 81];
        for (i, c) in cell_map.iter_mut().enumerate() {
            let mut src = (t.row_perm[i / 9] * 9 + t.col_perm[i % 9]) as usize;
            if t.transpose {
                src = (src % 9) * 9 + src / 9;
            }
            *c = src as u8;
        }
        Perturbation { digit_map: t.digit_map, cell_map }
    }

    /// Only the digit relabeling of `t`.
    pub fn digits_of(t: &Transform) -> Perturbation {
        Perturbation { digit_map: t.digit_map, cell_map: ID_CELLS }
    }

    /// Only the geometry of `t` (digits kept).
    pub fn geometry_of(t: &Transform) -> Perturbation {
        Perturbation { digit_map: Perturbation::IDENTITY.digit_map, ..Perturbation::from_transform(t) }
    }

    pub fn is_identity(&self) -> bool {
        *self == Perturbation::IDENTITY
    }

    /// The board (0 = blank, 1..=9) under the perturbation.
    pub fn apply(&self, b: &Board) -> Board {
        let mut out = [0u8; 81];
        for (o, &src) in out.iter_mut().zip(&self.cell_map) {
            *o = self.digit_map[b[src as usize] as usize];
        }
        out
    }

    /// A token sequence (0 = PAD and 1 = blank kept, 2..=10 digits) under the perturbation.
    /// Any other value (not produced by the model's vocabulary) is kept as is.
    pub fn apply_tokens(&self, t: &[u8]) -> [u8; 81] {
        assert_eq!(t.len(), 81, "a Sudoku token sequence has 81 cells");
        let mut out = [0u8; 81];
        for (o, &src) in out.iter_mut().zip(&self.cell_map) {
            let v = t[src as usize];
            *o = if (2..=10).contains(&v) { self.digit_map[(v - 1) as usize] + 1 } else { v };
        }
        out
    }

    /// The inverse: `p.inverse().apply(&p.apply(b)) == b`.
    pub fn inverse(&self) -> Perturbation {
        let mut inv = Perturbation::IDENTITY;
        for d in 0..10 {
            inv.digit_map[self.digit_map[d] as usize] = d as u8;
        }
        for (i, &src) in self.cell_map.iter().enumerate() {
            inv.cell_map[src as usize] = i as u8;
        }
        inv
    }

    /// `self` then `next`: `a.then(&b).apply(x) == b.apply(&a.apply(x))`.
    pub fn then(&self, next: &Perturbation) -> Perturbation {
        let mut out = Perturbation::IDENTITY;
        for d in 0..10 {
            out.digit_map[d] = next.digit_map[self.digit_map[d] as usize];
        }
        for (i, o) in out.cell_map.iter_mut().enumerate() {
            *o = self.cell_map[next.cell_map[i] as usize];
        }
        out
    }
}

/// Most passes a spec may ask for: each pass is one full inference of every puzzle, and the
/// votes keep one answer per pass and puzzle (published settings use tens to hundreds).
pub const MAX_PASSES: usize = 4096;

fn count_of(term: &str, name: &str) -> Result<usize> {
    let n = &term[name.len() + 1..];
    match n.parse::<usize>() {
        Ok(n) if (1..MAX_PASSES).contains(&n) => Ok(n),
        Ok(n) if n >= 1 => bail!(
            "--perturb: '{term}': {n} passes per puzzle; at most {MAX_PASSES} are supported \
             (each pass is a full inference of every puzzle)"
        ),
        _ => bail!("--perturb: '{term}': expected {name}:N with N a positive integer, got '{n}'"),
    }
}

/// The members of one factor, identity first.
fn factor(term: &str, rng: &mut ChaCha8Rng) -> Result<Vec<Perturbation>> {
    let mut out = vec![Perturbation::IDENTITY];
    let random = |n: usize, rng: &mut ChaCha8Rng, f: fn(&Transform) -> Perturbation| -> Vec<Perturbation> {
        (0..n).map(|_| f(&Transform::random(rng))).collect()
    };
    match term {
        "none" | "identity" => {}
        "relabel9" => out.extend((1..9).map(Perturbation::relabel)),
        t if t.starts_with("perm:") => {
            let n = count_of(t, "perm")?;
            out.extend((0..n).map(|_| {
                let mut d = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
                d.shuffle(rng);
                let mut p = Perturbation::IDENTITY;
                p.digit_map[1..].copy_from_slice(&d);
                p
            }));
        }
        t if t.starts_with("sym:") => out.extend(random(count_of(t, "sym")?, rng, Perturbation::geometry_of)),
        t if t.starts_with("aug:") => {
            out.extend(random(count_of(t, "aug")?, rng, Perturbation::from_transform))
        }
        t => bail!(
            "--perturb: unknown term '{t}': expected relabel9, perm:N, sym:N, aug:N or none, \
             joined with '+' (e.g. relabel9+sym:3)"
        ),
    }
    Ok(out)
}

/// Parses a `--perturb` spec (grammar in the module docs) into its passes, identity first.
/// Random members come from a ChaCha8 stream seeded with `seed`.
pub fn parse_spec(spec: &str, seed: u64) -> Result<Vec<Perturbation>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("--perturb: empty spec: expected e.g. relabel9, sym:8, perm:4 or relabel9+sym:3");
    }
    let mut passes = vec![Perturbation::IDENTITY];
    for term in spec.split('+') {
        let members = factor(term.trim(), &mut rng)?;
        if passes.len() * members.len() > MAX_PASSES {
            bail!(
                "--perturb {spec}: {} passes per puzzle and more; at most {MAX_PASSES} are \
                 supported (each pass is a full inference of every puzzle)",
                passes.len() * members.len()
            );
        }
        let mut next = Vec::with_capacity(passes.len() * members.len());
        for p in &passes {
            for m in &members {
                next.push(p.then(m));
            }
        }
        passes = next;
    }
    debug_assert!(passes[0].is_identity());
    Ok(passes)
}

/// What perturbed inference needs of an input map: the map of a token sequence and its inverse.
pub trait InputMap: Sync {
    /// The sequence under the map.
    fn map_tokens(&self, t: &[u8]) -> Vec<u8>;
    /// The inverse map (answers go back through it).
    fn inverse_map(&self) -> Self
    where
        Self: Sized;
}

impl InputMap for Perturbation {
    fn map_tokens(&self, t: &[u8]) -> Vec<u8> {
        self.apply_tokens(t).to_vec()
    }
    fn inverse_map(&self) -> Self {
        self.inverse()
    }
}

/// One pass's input map for any task with perturbed inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassMap {
    /// Sudoku's symmetry group.
    Sudoku(Perturbation),
    /// A dihedral transform of a `side` x `side` grid (`crate::grid`'s numbering).
    Dihedral { tid: usize, side: usize },
}

impl InputMap for PassMap {
    fn map_tokens(&self, t: &[u8]) -> Vec<u8> {
        match self {
            PassMap::Sudoku(p) => p.map_tokens(t),
            &PassMap::Dihedral { tid, side } => crate::grid::dihedral(t, side, side, tid).0,
        }
    }
    fn inverse_map(&self) -> Self {
        match self {
            PassMap::Sudoku(p) => PassMap::Sudoku(p.inverse()),
            &PassMap::Dihedral { tid, side } => {
                PassMap::Dihedral { tid: crate::grid::DIHEDRAL_INVERSE[tid], side }
            }
        }
    }
}

/// The passes of `spec` for `rules`' task: Sudoku's grammar ([`parse_spec`]); for mazes
/// `dihedral8` (the 8 dihedral maps, identity first) or `none`. ARC has no perturbed inference
/// here: its own vote over the built variants is `hrm eval` on an ARC set.
pub fn parse_spec_for(rules: crate::task::Rules, spec: &str, seed: u64) -> Result<Vec<PassMap>> {
    use crate::task::Rules;
    match rules {
        Rules::Sudoku => Ok(parse_spec(spec, seed)?.into_iter().map(PassMap::Sudoku).collect()),
        Rules::Maze { side } => match spec.trim() {
            "none" | "identity" => Ok(vec![PassMap::Dihedral { tid: 0, side }]),
            "dihedral8" => Ok((0..8).map(|tid| PassMap::Dihedral { tid, side }).collect()),
            t => bail!("--perturb {t}: maze sets take dihedral8 (the 8 dihedral maps of the grid) or none"),
        },
        Rules::Arc => bail!(
            "--perturb: ARC sets are voted over their built variants by plain `hrm eval` (no --perturb)"
        ),
    }
}

/// Decodes model tokens to a board: 2..=10 -> digits 1..=9, anything else -> 0 (no digit).
pub fn tokens_to_board(t: &[u8]) -> Board {
    let mut b = [0u8; 81];
    for (o, &v) in b.iter_mut().zip(t) {
        *o = if (2..=10).contains(&v) { v - 1 } else { 0 };
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_matches_the_paper_on_tokens() {
        for k in 0..9u8 {
            let p = Perturbation::relabel(k);
            let t: Vec<u8> = (0..81).map(|i| (i % 11) as u8).collect();
            let out = p.apply_tokens(&t);
            for (a, b) in t.iter().zip(out) {
                let want = if *a >= 2 { (*a - 2 + k) % 9 + 2 } else { *a };
                assert_eq!(b, want);
            }
        }
    }

    #[test]
    fn maze_maps_invert_and_keep_shortest_paths() {
        use crate::task::Rules;
        let maps = parse_spec_for(Rules::Maze { side: 4 }, "dihedral8", 0).unwrap();
        assert_eq!(maps.len(), 8);
        assert_eq!(maps[0], PassMap::Dihedral { tid: 0, side: 4 });
        let t = |rows: &[&str]| -> Vec<u8> {
            rows.iter().flat_map(|r| r.bytes().map(|c| crate::maze::token_of(c).unwrap())).collect()
        };
        let q = t(&["S  #", " # #", "    ", "#  G"]);
        let a = crate::maze::label(&q, 4).unwrap();
        for m in &maps {
            let (mq, ma) = (m.map_tokens(&q), m.map_tokens(&a));
            let c = crate::maze::check_answer(&mq, &ma, 4);
            assert!(c.valid && c.optimal, "{m:?}");
            assert_eq!(m.inverse_map().map_tokens(&mq), q, "{m:?}");
        }
        assert_eq!(parse_spec_for(Rules::Maze { side: 4 }, "none", 0).unwrap().len(), 1);
        for (rules, spec) in [(Rules::Maze { side: 4 }, "relabel9"), (Rules::Arc, "none")] {
            assert!(parse_spec_for(rules, spec, 0).unwrap_err().to_string().contains("--perturb"));
        }
        // Sudoku's grammar, wrapped
        assert_eq!(parse_spec_for(Rules::Sudoku, "relabel9", 0).unwrap().len(), 9);
    }

    #[test]
    fn spec_sizes_and_identity_first() {
        assert_eq!(parse_spec("relabel9", 0).unwrap().len(), 9);
        assert_eq!(parse_spec("sym:4", 0).unwrap().len(), 5);
        assert_eq!(parse_spec("relabel9+sym:3", 0).unwrap().len(), 36);
        assert_eq!(parse_spec("none", 0).unwrap().len(), 1);
        for s in ["relabel9", "perm:3", "sym:2", "aug:2", "relabel9+perm:2"] {
            let p = parse_spec(s, 7).unwrap();
            assert!(p[0].is_identity(), "{s}");
            assert_eq!(p, parse_spec(s, 7).unwrap(), "{s}: not deterministic");
        }
        for bad in ["", "relabel8", "sym:0", "sym:x", "perm", "relabel9+"] {
            let e = parse_spec(bad, 0).unwrap_err().to_string();
            assert!(e.contains("--perturb"), "{bad}: {e}");
        }
    }
}
