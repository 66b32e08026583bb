//! Exact Sudoku solver: per-digit band bitboards, naked and hidden singles plus locked
//! candidates (pointing and claiming), and depth-first search branching on the unsolved cell
//! with the fewest candidates.
//!
//! A *guess* is one branch point: a search node where propagation stalled and a cell with two or
//! more candidates was chosen to branch on. Counting solutions up to a limit of 2 decides
//! uniqueness.

use super::board::{Board, PEERS, UNITS};
use rand::Rng;
use rand::seq::SliceRandom;

/// Givens that cannot be a Sudoku at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    #[error("cell r{}c{} holds {value}, expected 0..=9", cell / 9 + 1, cell % 9 + 1)]
    BadValue { cell: usize, value: u8 },
    #[error(
        "contradictory givens: digit {digit} appears at r{}c{} and r{}c{} of the same unit",
        cell_a / 9 + 1, cell_a % 9 + 1, cell_b / 9 + 1, cell_b % 9 + 1
    )]
    Conflict { cell_a: usize, cell_b: usize, digit: u8 },
}

/// Outcome of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolveResult {
    /// Number of solutions found, capped at the requested limit (0 = no solution).
    pub solutions: usize,
    /// The first solution found.
    pub solution: Option<Board>,
    /// The second solution found (only when the limit is 2 or more and one exists).
    pub second: Option<Board>,
    /// Branch points visited by the search.
    pub guesses: u64,
}

impl SolveResult {
    pub fn is_unique(&self) -> bool {
        self.solutions == 1
    }
}

// Representation: one 128-bit board per digit ("where can digit k still go"), laid out band by
// band: band i (rows 3i..3i+3) occupies bits 32i..32i+27, row-major inside the band, so cell c
// lives at bit `pos(c) = (c / 27) * 32 + c % 27`. A placed cell keeps only its own digit's bit.
// Rows and boxes are then masks inside one 32-bit lane, and columns are found by folding the
// three rows of each band. The whole search state is 160 bytes, copied on each branch.

/// The 27 cell bits of one band.
const BAND: u128 = 0x7FF_FFFF;
/// Every cell bit.
const FULL: u128 = BAND | (BAND << 32) | (BAND << 64);
/// Row r (0..3) of a band, then box s (0..3) of a band, as 27-bit lane masks.
const LANE_UNITS: [u32; 6] = [0x1FF, 0x1FF << 9, 0x1FF << 18, 0x1C0E07, 0x1C0E07 << 3, 0x1C0E07 << 6];

/// A 3-bit set if it has exactly one member, else 0.
const ONE_OF_3: [u32; 8] = [0, 1, 2, 0, 4, 0, 0, 0];

/// For the columns (9 bits) where a digit occurs in one band: the columns that are the only
/// one of their box holding it (pointing candidates for the other bands).
const POINT_COLS: [u16; 512] = build_point_cols();

const fn build_point_cols() -> [u16; 512] {
    let mut t = [0u16; 512];
    let mut f = 0;
    while f < 512 {
        let mut s = 0;
        while s < 3 {
            t[f] |= (ONE_OF_3[(f >> (3 * s)) & 7] << (3 * s)) as u16;
            s += 1;
        }
        f += 1;
    }
    t
}

/// For the columns (9 bits) of a band that alone hold a digit within their column: the band
/// cells claiming clears (the rest of each such column's box; a whole box when two of its
/// columns claim, which is a contradiction).
const CLAIM_CELLS: [u32; 512] = build_claim_cells();

const fn build_claim_cells() -> [u32; 512] {
    let mut t = [0u32; 512];
    let mut c = 0;
    while c < 512 {
        let mut s = 0;
        while s < 3 {
            let cs = (c >> (3 * s)) & 7;
            if cs != 0 {
                let keep = ONE_OF_3[cs] << (3 * s);
                t[c] |= LANE_UNITS[3 + s] & !(keep | (keep << 9) | (keep << 18));
            }
            s += 1;
        }
        c += 1;
    }
    t
}

/// For the 9-bit set of occupied row segments of a band (bit 3r+s: row r within box s), the
/// segments that pointing (a box whose digit lies in one row leaves that row's other boxes)
/// and then claiming (a row whose digit lies in one box leaves that box's other rows) clear.
const LOCKED_SEGS: [u16; 512] = build_locked_segs();

const fn build_locked_segs() -> [u16; 512] {
    let mut t = [0u16; 512];
    let mut v = 0;
    while v < 512 {
        let mut elim = 0u16;
        let mut s = 0;
        while s < 3 {
            let rows: usize = ((v >> s) & 1) | ((v >> (s + 3 - 1)) & 2) | ((v >> (s + 6 - 2)) & 4);
            if rows == 1 || rows == 2 || rows == 4 {
                let r = rows.trailing_zeros() as usize;
                elim |= (7 << (3 * r)) & !(1 << (3 * r + s));
            }
            s += 1;
        }
        let v2 = v as u16 & !elim;
        let mut r = 0;
        while r < 3 {
            let boxes = (v2 >> (3 * r)) & 7;
            if boxes == 1 || boxes == 2 || boxes == 4 {
                let s = boxes.trailing_zeros() as usize;
                elim |= 0x49 << s & !(1 << (3 * r + s));
            }
            r += 1;
        }
        t[v] = elim;
        v += 1;
    }
    t
}

/// The lane cells of a set of row segments (bit 3r+s: the three cells of row r in box s).
const SEG_CELLS: [u32; 512] = build_seg_cells();

const fn build_seg_cells() -> [u32; 512] {
    let mut t = [0u32; 512];
    let mut v = 0;
    while v < 512 {
        let mut i = 0;
        while i < 9 {
            if v >> i & 1 != 0 {
                t[v] |= 7 << (3 * i);
            }
            i += 1;
        }
        v += 1;
    }
    t
}

/// A 9-bit column set as the lane mask of those columns.
#[inline(always)]
fn spread(c: u32) -> u32 {
    c | (c << 9) | (c << 18)
}

/// Bit position of cell `c`.
const fn pos(c: usize) -> usize {
    (c / 27) * 32 + c % 27
}

/// Cell of bit position `p`.
const fn cell_of(p: usize) -> usize {
    (p / 32) * 27 + p % 32
}

const fn build_peer_bits() -> [u128; 128] {
    let mut t = [0u128; 128];
    let mut c = 0;
    while c < 81 {
        let mut m = 0u128;
        let mut i = 0;
        while i < 20 {
            m |= 1u128 << pos(PEERS[c][i] as usize);
            i += 1;
        }
        t[pos(c)] = m;
        c += 1;
    }
    t
}

/// Peers of each bit position (indexed by position, 0 for the unused ones).
const PEER_BITS: [u128; 128] = build_peer_bits();

const fn build_col_bits() -> [u128; 9] {
    let mut t = [0u128; 9];
    let mut j = 0;
    while j < 9 {
        let mut r = 0;
        while r < 9 {
            t[j] |= 1u128 << pos(r * 9 + j);
            r += 1;
        }
        j += 1;
    }
    t
}

/// Column j as a board.
const COL_BITS: [u128; 9] = build_col_bits();

/// The 27-bit lane of band `i`.
#[inline(always)]
fn lane(x: u128, i: usize) -> u32 {
    (x >> (32 * i)) as u32 & BAND as u32
}

/// Columns (9 bits) holding at least one bit of a 27-bit lane.
#[inline(always)]
fn fold(w: u32) -> u32 {
    (w | (w >> 9) | (w >> 18)) & 0x1FF
}

#[derive(Clone, Copy)]
struct State {
    /// Per digit, the cells where it can go (its placed cells included).
    d: [u128; 9],
    /// Cells not yet assigned.
    unsolved: u128,
}

impl State {
    /// Places digit `k` at bit position `p` and removes it from the peers.
    #[inline(always)]
    fn place(&mut self, p: usize, k: usize) {
        let b = 1u128 << p;
        for x in self.d.iter_mut() {
            *x &= !b;
        }
        self.d[k] = (self.d[k] & !PEER_BITS[p & 127]) | b;
        self.unsolved &= !b;
    }

    /// Hidden singles of digit `k` in the bands selected by `bands` (bit i: band i changed);
    /// columns are always checked. Returns the positions to place, or `None` on contradiction
    /// (a unit with no place left for `k`).
    #[inline(always)]
    fn hidden(&self, k: usize, bands: u32) -> Option<u128> {
        let x = self.d[k];
        let u = self.unsolved;
        let mut found = 0u128;
        let w = [lane(x, 0), lane(x, 1), lane(x, 2)];
        for (i, &wi) in w.iter().enumerate() {
            if bands >> i & 1 == 0 {
                continue;
            }
            // Branch-free over the three rows and three boxes of the band: a unit holding one
            // bit contributes that bit, an empty unit is a contradiction.
            let mut single = 0u32;
            let mut empty = false;
            for &m in &LANE_UNITS {
                let v = wi & m;
                empty |= v == 0;
                single |= v & (((v & v.wrapping_sub(1)) == 0) as u32).wrapping_neg();
            }
            if empty {
                return None;
            }
            found |= ((single & lane(u, i)) as u128) << (32 * i);
        }
        // Columns: count the nine row slices, then drop columns where `k` is already placed.
        let mut once = 0u32;
        let mut twice = 0u32;
        for wi in w {
            for r in [wi & 0x1FF, (wi >> 9) & 0x1FF, wi >> 18] {
                twice |= once & r;
                once |= r;
            }
        }
        if once != 0x1FF {
            return None;
        }
        let placed = x & !u;
        let mut single =
            once & !twice & !(fold(lane(placed, 0)) | fold(lane(placed, 1)) | fold(lane(placed, 2)));
        while single != 0 {
            let j = single.trailing_zeros() as usize;
            single &= single - 1;
            found |= x & COL_BITS[j];
        }
        Some(found)
    }

    /// Locked candidates (pointing and claiming) for every digit. Returns whether anything was
    /// eliminated. Placed digits are never touched: their peers already lack them. The result
    /// for a digit depends on its board alone, so a digit whose board equals `done` (its board
    /// after the previous pass) is skipped; `done` is updated.
    fn locked_candidates(&mut self, done: &mut [u128; 9]) -> bool {
        let mut changed = false;
        for (x, dn) in self.d.iter_mut().zip(done.iter_mut()) {
            let before = *x;
            if before == *dn {
                continue;
            }
            let mut w = [lane(*x, 0), lane(*x, 1), lane(*x, 2)];
            // Rows and boxes inside each band: which of the nine row-in-box segments hold the
            // digit, then one table lookup for the segments that pointing and claiming clear.
            for wi in w.iter_mut() {
                let t = *wi | (*wi >> 1) | (*wi >> 2);
                let mut seg = 0u32;
                for i in 0..9 {
                    seg |= ((t >> (3 * i)) & 1) << i;
                }
                *wi &= !SEG_CELLS[LOCKED_SEGS[seg as usize & 511] as usize & 511];
            }
            // Columns and boxes across bands.
            let f = [fold(w[0]), fold(w[1]), fold(w[2])];
            // Pointing: boxes holding the digit in one column only clear it from that column
            // in the other bands.
            let point = [
                POINT_COLS[f[0] as usize & 511] as u32,
                POINT_COLS[f[1] as usize & 511] as u32,
                POINT_COLS[f[2] as usize & 511] as u32,
            ];
            w[0] &= !spread(point[1] | point[2]);
            w[1] &= !spread(point[0] | point[2]);
            w[2] &= !spread(point[0] | point[1]);
            let f = [fold(w[0]), fold(w[1]), fold(w[2])];
            // Claiming: columns holding the digit in one band only keep it, within their box,
            // to that column.
            let one = (f[0] ^ f[1] ^ f[2]) & !(f[0] & f[1] & f[2]);
            for (wi, &fi) in w.iter_mut().zip(&f) {
                *wi &= !CLAIM_CELLS[(one & fi) as usize & 511];
            }
            *x = (w[0] as u128) | ((w[1] as u128) << 32) | ((w[2] as u128) << 64);
            changed |= *x != before;
            *dn = *x;
        }
        changed
    }

    /// Naked singles, hidden singles and locked candidates to a fixpoint. Returns false on
    /// contradiction.
    fn propagate(&mut self) -> bool {
        // Each digit's board as last checked for hidden singles (all-ones: never checked).
        let mut checked = [u128::MAX; 9];
        // Each digit's board after its last locked-candidates pass (all-ones: none yet).
        let mut lc_done = [u128::MAX; 9];
        loop {
            let mut once = 0u128;
            let mut twice = 0u128;
            for &x in &self.d {
                twice |= once & x;
                once |= x;
            }
            if self.unsolved & !once != 0 {
                return false;
            }
            let singles = self.unsolved & !twice;
            if singles != 0 {
                // Place all naked singles of a digit at once. Their cells hold no other digit,
                // so only that digit's board changes; two of them seeing each other is a
                // contradiction.
                for x in self.d.iter_mut() {
                    let s = singles & *x;
                    if s == 0 {
                        continue;
                    }
                    let mut peers = 0u128;
                    let mut t = s;
                    while t != 0 {
                        peers |= PEER_BITS[t.trailing_zeros() as usize & 127];
                        t &= t - 1;
                    }
                    if peers & s != 0 {
                        return false;
                    }
                    *x &= !peers;
                }
                self.unsolved &= !singles;
                continue;
            }
            if self.unsolved == 0 {
                return true;
            }
            let mut progress = false;
            for (k, seen) in checked.iter_mut().enumerate() {
                let x = self.d[k];
                let diff = x ^ *seen;
                if diff == 0 {
                    continue;
                }
                *seen = x;
                let bands = (lane(diff, 0) != 0) as u32
                    | ((lane(diff, 1) != 0) as u32) << 1
                    | ((lane(diff, 2) != 0) as u32) << 2;
                let Some(mut found) = self.hidden(k, bands) else {
                    return false;
                };
                while found != 0 {
                    let p = found.trailing_zeros() as usize;
                    found &= found - 1;
                    // Skip a position lost to an earlier hidden single of the same digit; its
                    // unit is then empty and the next check reports it.
                    if self.d[k] & self.unsolved & (1u128 << p) != 0 {
                        self.place(p, k);
                        progress = true;
                    }
                }
            }
            if !progress && !self.locked_candidates(&mut lc_done) {
                return true;
            }
        }
    }

    fn to_board(self) -> Board {
        let mut b = [0u8; 81];
        for (k, &x) in self.d.iter().enumerate() {
            let mut m = x;
            while m != 0 {
                let p = m.trailing_zeros() as usize;
                m &= m - 1;
                b[cell_of(p) % 81] = k as u8 + 1;
            }
        }
        b
    }
}

struct Search<'r, R: Rng + ?Sized> {
    limit: usize,
    count: usize,
    guesses: u64,
    first: Option<Board>,
    second: Option<Board>,
    rng: Option<&'r mut R>,
}

impl<R: Rng + ?Sized> Search<'_, R> {
    /// Branch cell: fewest candidates, first in cell order; among bivalue cells, the one with
    /// the most peers that share one of its two candidates (either choice eliminates the most).
    fn branch_cell(st: &State) -> usize {
        let (mut c1, mut c2, mut c3) = (0u128, 0u128, 0u128);
        for &x in &st.d {
            c3 |= c2 & x;
            c2 |= c1 & x;
            c1 |= x;
        }
        let mut bi = st.unsolved & c2 & !c3;
        if bi != 0 {
            let mut best = 0usize;
            let mut best_hits = 0u32;
            while bi != 0 {
                let cell = bi & bi.wrapping_neg();
                bi ^= cell;
                let p = cell.trailing_zeros() as usize;
                let mut both = 0u128;
                for &x in &st.d {
                    both |= x & 0u128.wrapping_sub((x & cell != 0) as u128);
                }
                let hits = (PEER_BITS[p & 127] & both).count_ones() + 1;
                if hits > best_hits {
                    best_hits = hits;
                    best = p;
                }
            }
            return best;
        }
        let mut best = 0usize;
        let mut best_n = u32::MAX;
        let mut bits = st.unsolved;
        while bits != 0 {
            let p = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let n: u32 = st.d.iter().map(|&x| (x >> p) as u32 & 1).sum();
            if n < best_n {
                best_n = n;
                best = p;
            }
        }
        best
    }

    fn run(&mut self, st: &State) {
        if st.unsolved == 0 {
            self.count += 1;
            if self.first.is_none() {
                self.first = Some(st.to_board());
            } else if self.second.is_none() {
                self.second = Some(st.to_board());
            }
            return;
        }
        let p = Self::branch_cell(st);
        self.guesses += 1;
        let mut digits = [0usize; 16];
        let mut nd = 0;
        let cell = 1u128 << p;
        for (k, &x) in st.d.iter().enumerate() {
            digits[nd & 15] = k;
            nd += (x & cell != 0) as usize;
        }
        if let Some(rng) = self.rng.as_deref_mut() {
            digits[..nd].shuffle(rng);
        }
        for &k in &digits[..nd] {
            let mut next = *st;
            next.place(p, k);
            if next.propagate() {
                self.run(&next);
                if self.count >= self.limit {
                    return;
                }
            }
        }
    }
}

/// Checks the givens (values 0..=9, no digit twice in a unit).
pub fn check_givens(b: &Board) -> Result<(), SolveError> {
    if let Some(cell) = b.iter().position(|&v| v > 9) {
        return Err(SolveError::BadValue { cell, value: b[cell] });
    }
    for unit in &UNITS {
        let mut seen = [usize::MAX; 10];
        for &c in unit {
            let c = c as usize;
            let v = b[c] as usize;
            if v != 0 {
                if seen[v] != usize::MAX {
                    let (a, b2) = (seen[v].min(c), seen[v].max(c));
                    return Err(SolveError::Conflict { cell_a: a, cell_b: b2, digit: v as u8 });
                }
                seen[v] = c;
            }
        }
    }
    Ok(())
}

fn search<R: Rng + ?Sized>(b: &Board, limit: usize, rng: Option<&mut R>) -> Result<SolveResult, SolveError> {
    check_givens(b)?;
    let mut st = State { d: [FULL; 9], unsolved: FULL };
    let mut s = Search { limit: limit.max(1), count: 0, guesses: 0, first: None, second: None, rng };
    let mut ok = true;
    for (i, &v) in b.iter().enumerate() {
        if v != 0 {
            let (p, k) = (pos(i), v as usize - 1);
            if st.d[k] >> p & 1 == 0 {
                ok = false;
                break;
            }
            st.place(p, k);
        }
    }
    if ok && st.propagate() {
        s.run(&st);
    }
    Ok(SolveResult { solutions: s.count, solution: s.first, second: s.second, guesses: s.guesses })
}

/// Counts solutions up to `limit` (use 2 to decide uniqueness), recording guesses.
pub fn count_solutions(b: &Board, limit: usize) -> Result<SolveResult, SolveError> {
    search::<rand_chacha::ChaCha8Rng>(b, limit, None)
}

/// Returns the first solution found (deterministic digit order), or None if there is none.
pub fn solve(b: &Board) -> Result<Option<Board>, SolveError> {
    Ok(count_solutions(b, 1)?.solution)
}

/// Like [`count_solutions`] but tries the digits of each branch cell in random order, so the
/// first solution is a random one (used to make random full grids).
pub fn count_solutions_random<R: Rng + ?Sized>(
    b: &Board,
    limit: usize,
    rng: &mut R,
) -> Result<SolveResult, SolveError> {
    search(b, limit, Some(rng))
}

/// True if singles alone (no guess) solve the puzzle uniquely.
pub fn solvable_by_singles(b: &Board) -> Result<bool, SolveError> {
    let r = count_solutions(b, 2)?;
    Ok(r.solutions == 1 && r.guesses == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sudoku::board::{is_solution_of, parse_board};

    #[test]
    fn solves_hard_puzzle() {
        let p =
            parse_board("4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........")
                .unwrap();
        let r = count_solutions(&p, 2).unwrap();
        assert_eq!(r.solutions, 1);
        assert!(is_solution_of(&p, &r.solution.unwrap()));
        assert!(r.guesses > 0);
    }

    #[test]
    fn empty_board_has_many() {
        let r = count_solutions(&[0; 81], 2).unwrap();
        assert_eq!(r.solutions, 2);
        assert_ne!(r.solution, r.second);
    }

    #[test]
    fn conflict_is_error() {
        let mut p = [0u8; 81];
        p[0] = 5;
        p[80 - 8] = 5; // r9c1, same column
        assert!(matches!(count_solutions(&p, 2), Err(SolveError::Conflict { digit: 5, .. })));
    }
}
