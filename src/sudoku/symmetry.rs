//! The HRM `shuffle_sudoku` augmentation, its inverse, and a canonical form up to the same
//! symmetry group (digit relabeling x transpose x band/row x stack/column permutations).

use super::board::Board;
use rand::Rng;
use rand::seq::SliceRandom;

/// One element of the Sudoku symmetry group, in HRM's `shuffle_sudoku` form:
/// `if transpose { x = x^T }; y[i] = digit_map[x[row_perm[i / 9] * 9 + col_perm[i % 9]]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// `digit_map[0] == 0` (blank stays blank); 1..=9 is a permutation of 1..=9.
    pub digit_map: [u8; 10],
    pub transpose: bool,
    /// New row r takes old row `row_perm[r]` (band-preserving permutation).
    pub row_perm: [u8; 9],
    /// New column c takes old column `col_perm[c]` (stack-preserving permutation).
    pub col_perm: [u8; 9],
}

fn band_perm<R: Rng + ?Sized>(rng: &mut R) -> [u8; 9] {
    let mut bands = [0u8, 1, 2];
    bands.shuffle(rng);
    let mut out = [0u8; 9];
    for (k, &b) in bands.iter().enumerate() {
        let mut inner = [0u8, 1, 2];
        inner.shuffle(rng);
        for j in 0..3 {
            out[k * 3 + j] = b * 3 + inner[j];
        }
    }
    out
}

fn invert9(p: &[u8; 9]) -> [u8; 9] {
    let mut q = [0u8; 9];
    for (i, &v) in p.iter().enumerate() {
        q[v as usize] = i as u8;
    }
    q
}

impl Transform {
    pub const IDENTITY: Transform = Transform {
        digit_map: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        transpose: false,
        row_perm: [0, 1, 2, 3, 4, 5, 6, 7, 8],
        col_perm: [0, 1, 2, 3, 4, 5, 6, 7, 8],
    };

    /// A uniformly random transform, drawn in the order of HRM's `shuffle_sudoku`:
    /// digit permutation, transpose coin, bands + rows, stacks + columns.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Transform {
        let mut digits = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        digits.shuffle(rng);
        let mut digit_map = [0u8; 10];
        digit_map[1..].copy_from_slice(&digits);
        let transpose = rng.r#gen::<f64>() < 0.5;
        let row_perm = band_perm(rng);
        let col_perm = band_perm(rng);
        Transform { digit_map, transpose, row_perm, col_perm }
    }

    /// `mapping[i]`: new cell i takes old cell `mapping[i]` (after the optional transpose).
    pub fn mapping(&self) -> [u8; 81] {
        let mut m = [0u8; 81];
        for (i, v) in m.iter_mut().enumerate() {
            *v = self.row_perm[i / 9] * 9 + self.col_perm[i % 9];
        }
        m
    }

    /// Applies the transform to a board (0 = blank, 1..=9 digits).
    pub fn apply(&self, b: &Board) -> Board {
        let mut out = [0u8; 81];
        for (i, o) in out.iter_mut().enumerate() {
            let mut src = (self.row_perm[i / 9] * 9 + self.col_perm[i % 9]) as usize;
            if self.transpose {
                src = (src % 9) * 9 + src / 9;
            }
            *o = self.digit_map[b[src] as usize];
        }
        out
    }

    /// Applies the transform to a token-id sequence (1 = blank, 2..=10 digits; 0 = pad kept).
    pub fn apply_tokens(&self, t: &[u8; 81]) -> [u8; 81] {
        let mut out = [0u8; 81];
        for (i, o) in out.iter_mut().enumerate() {
            let mut src = (self.row_perm[i / 9] * 9 + self.col_perm[i % 9]) as usize;
            if self.transpose {
                src = (src % 9) * 9 + src / 9;
            }
            let v = t[src];
            *o = if v >= 2 { self.digit_map[(v - 1) as usize] + 1 } else { v };
        }
        out
    }

    /// The inverse transform: `t.inverse().apply(&t.apply(b)) == b`.
    pub fn inverse(&self) -> Transform {
        let mut digit_map = [0u8; 10];
        for d in 1..10 {
            digit_map[self.digit_map[d] as usize] = d as u8;
        }
        let rpi = invert9(&self.row_perm);
        let cpi = invert9(&self.col_perm);
        // Forward: y[r][c] = d(x'[rp[r]][cp[c]]), x' = x^T if transposed. Undoing the
        // permutation gives x'[R][C] = d^-1(y[rpi[R]][cpi[C]]); a trailing transpose is the
        // same as a leading one with the roles of the two permutations swapped.
        if self.transpose {
            Transform { digit_map, transpose: true, row_perm: cpi, col_perm: rpi }
        } else {
            Transform { digit_map, transpose: false, row_perm: rpi, col_perm: cpi }
        }
    }

    /// True if this is a member of the group (valid digit map and band/stack structure).
    pub fn is_valid(&self) -> bool {
        let perm_ok = |p: &[u8; 9]| {
            let mut seen = 0u16;
            for (i, &v) in p.iter().enumerate() {
                if v > 8 || v / 3 != p[i / 3 * 3] / 3 {
                    return false;
                }
                seen |= 1 << v;
            }
            seen == 0x1FF
        };
        let mut seen = 0u16;
        for &d in &self.digit_map[1..] {
            if d == 0 || d > 9 {
                return false;
            }
            seen |= 1 << d;
        }
        self.digit_map[0] == 0 && seen == 0x3FE && perm_ok(&self.row_perm) && perm_ok(&self.col_perm)
    }
}

const PERM3: [[u8; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

/// All 1296 stack-preserving column permutations.
fn all_band_perms() -> Vec<[u8; 9]> {
    let mut v = Vec::with_capacity(1296);
    for outer in &PERM3 {
        for a in &PERM3 {
            for b in &PERM3 {
                for c in &PERM3 {
                    let inner = [a, b, c];
                    let mut p = [0u8; 9];
                    for k in 0..3 {
                        for j in 0..3 {
                            p[k * 3 + j] = outer[k] * 3 + inner[k][j];
                        }
                    }
                    v.push(p);
                }
            }
        }
    }
    v
}

struct Canon<'a> {
    grid: &'a Board,
    col: [u8; 9],
    best: [[u8; 9]; 9],
    /// Rows `0..valid` of `best` hold the best string found so far.
    valid: usize,
}

impl Canon<'_> {
    /// Relabels source row `r` (under the fixed column order) with first-appearance labels,
    /// extending `labels`/`next`. Returns the relabeled row.
    #[inline]
    fn row(&self, r: usize, labels: &mut [u8; 10], next: &mut u8) -> [u8; 9] {
        let mut out = [0u8; 9];
        for (j, o) in out.iter_mut().enumerate() {
            let v = self.grid[r * 9 + self.col[j] as usize] as usize;
            if v != 0 {
                if labels[v] == 0 {
                    *next += 1;
                    labels[v] = *next;
                }
                *o = labels[v];
            }
        }
        out
    }

    /// Depth-first over the remaining row order; `order` holds the source rows chosen so far.
    fn dfs(&mut self, order: &mut [u8; 9], depth: usize, labels: [u8; 10], next: u8) {
        if depth == 9 {
            return;
        }
        // Candidates for position `depth`.
        let mut cands = [0u8; 3];
        let mut n = 0;
        if depth % 3 != 0 {
            // Remaining rows of the current band.
            let band = order[depth - 1] / 3;
            for r in band * 3..band * 3 + 3 {
                if !order[..depth].contains(&r) {
                    cands[n] = r;
                    n += 1;
                }
            }
        } else {
            // Any row of an unused band.
            let mut used = [false; 3];
            for k in (0..depth).step_by(3) {
                used[(order[k] / 3) as usize] = true;
            }
            let mut all = [0u8; 9];
            let mut m = 0;
            for b in 0..3u8 {
                if !used[b as usize] {
                    for r in b * 3..b * 3 + 3 {
                        all[m] = r;
                        m += 1;
                    }
                }
            }
            for &r in &all[..m] {
                self.try_row(order, depth, r, labels, next);
            }
            return;
        }
        for &r in &cands[..n] {
            self.try_row(order, depth, r, labels, next);
        }
    }

    fn try_row(&mut self, order: &mut [u8; 9], depth: usize, r: u8, labels: [u8; 10], next: u8) {
        let mut labels = labels;
        let mut next = next;
        let row = self.row(r as usize, &mut labels, &mut next);
        if depth < self.valid {
            match row.cmp(&self.best[depth]) {
                std::cmp::Ordering::Greater => return,
                std::cmp::Ordering::Less => {
                    self.best[depth] = row;
                    self.valid = depth + 1;
                }
                std::cmp::Ordering::Equal => {}
            }
        } else {
            self.best[depth] = row;
            self.valid = depth + 1;
        }
        order[depth] = r;
        self.dfs(order, depth + 1, labels, next);
    }
}

/// Canonical form up to the symmetry group: the lexicographically smallest board (blank = 0
/// sorts first) over all transposes, row and column permutations, with digits relabeled in
/// order of first appearance. Two boards have equal canonical forms iff one is a transform of
/// the other.
pub fn canonical(b: &Board) -> Board {
    thread_local! {
        static COLS: Vec<[u8; 9]> = all_band_perms();
    }
    let mut tr = [0u8; 81];
    for i in 0..81 {
        tr[i] = b[(i % 9) * 9 + i / 9];
    }
    COLS.with(|cols| {
        let mut canon = Canon { grid: b, col: [0; 9], best: [[0; 9]; 9], valid: 0 };
        for grid in [b, &tr] {
            canon.grid = grid;
            for col in cols {
                canon.col = *col;
                let mut order = [0u8; 9];
                canon.dfs(&mut order, 0, [0; 10], 0);
            }
        }
        let mut out = [0u8; 81];
        for r in 0..9 {
            out[r * 9..r * 9 + 9].copy_from_slice(&canon.best[r]);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn inverse_round_trip() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut b = [0u8; 81];
        for (i, v) in b.iter_mut().enumerate() {
            *v = ((i * 7 + i / 9) % 10) as u8;
        }
        for _ in 0..200 {
            let t = Transform::random(&mut rng);
            assert!(t.is_valid());
            assert_eq!(t.inverse().apply(&t.apply(&b)), b);
            assert_eq!(t.apply(&t.inverse().apply(&b)), b);
        }
    }
}
