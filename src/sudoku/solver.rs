//! Exact Sudoku solver: bitmask candidates, naked and hidden singles, and depth-first search
//! branching on the unsolved cell with the fewest candidates.
//!
//! A *guess* is one branch point: a search node where propagation stalled and a cell with two or
//! more candidates was chosen to branch on. Counting solutions up to a limit of 2 decides
//! uniqueness.

use super::board::{Board, CELL_UNITS, PEERS, UNITS};
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

const ALL: u16 = 0x1FF;

#[derive(Clone, Copy)]
struct State {
    /// Candidate bits per cell: bit d-1 set means digit d is possible.
    cand: [u16; 81],
    /// Bit i set: cell i is not yet assigned.
    unsolved: u128,
    /// Digits already assigned in each unit.
    solved: [u16; 27],
    /// Bit u set: unit u changed since its last hidden-single check.
    dirty: u32,
}

const fn build_unit_masks() -> [u32; 81] {
    let mut t = [0u32; 81];
    let mut c = 0;
    while c < 81 {
        let u = CELL_UNITS[c];
        t[c] = (1 << u[0]) | (1 << u[1]) | (1 << u[2]);
        c += 1;
    }
    t
}

/// For each cell, the bit mask of its three units.
const UNIT_MASK: [u32; 81] = build_unit_masks();

struct Stack {
    cells: [u8; 96],
    len: usize,
}

impl State {
    /// Assigns `bit` to `cell` and removes it from the peers. Returns false on contradiction.
    #[inline(always)]
    fn assign(&mut self, cell: usize, bit: u16, stack: &mut Stack) -> bool {
        self.cand[cell] = bit;
        self.unsolved &= !(1u128 << cell);
        let [r, c, b] = CELL_UNITS[cell];
        self.solved[r as usize] |= bit;
        self.solved[c as usize] |= bit;
        self.solved[b as usize] |= bit;
        for &p in &PEERS[cell] {
            let p = p as usize;
            let c = self.cand[p];
            if c & bit != 0 {
                let n = c & !bit;
                if n == 0 {
                    return false;
                }
                self.cand[p] = n;
                self.dirty |= UNIT_MASK[p];
                if n & (n - 1) == 0 && stack.len < stack.cells.len() {
                    stack.cells[stack.len] = p as u8;
                    stack.len += 1;
                }
            }
        }
        true
    }

    /// Assigns the naked singles on the stack. Returns false on contradiction.
    #[inline(always)]
    fn drain(&mut self, stack: &mut Stack) -> bool {
        while stack.len > 0 {
            stack.len -= 1;
            let cell = stack.cells[stack.len] as usize;
            if self.unsolved & (1u128 << cell) != 0 && !self.assign(cell, self.cand[cell], stack) {
                return false;
            }
        }
        true
    }

    /// Removes `mask` from `cell`. Returns false on contradiction.
    #[inline(always)]
    fn eliminate(&mut self, cell: usize, mask: u16, stack: &mut Stack, changed: &mut bool) -> bool {
        let c = self.cand[cell];
        if c & mask == 0 {
            return true;
        }
        let n = c & !mask;
        if n == 0 {
            return false;
        }
        self.cand[cell] = n;
        self.dirty |= UNIT_MASK[cell];
        *changed = true;
        if n & (n - 1) == 0 && stack.len < stack.cells.len() {
            stack.cells[stack.len] = cell as u8;
            stack.len += 1;
        }
        true
    }

    /// Locked candidates (pointing and claiming) on every box/line intersection. Returns
    /// `None` on contradiction, otherwise whether anything changed.
    fn locked_candidates(&mut self, stack: &mut Stack) -> Option<bool> {
        let mut changed = false;
        for dir in 0..2 {
            // dir 0: rows and their segments per stack; dir 1: columns per band. Segment masks
            // are not refreshed after eliminations: stale masks are supersets, and every
            // deduction made from them is still sound (or the state is already contradictory).
            let cell =
                |line: usize, k: usize| -> usize { if dir == 0 { line * 9 + k } else { k * 9 + line } };
            let mut seg = [[0u16; 3]; 9];
            for (line, sl) in seg.iter_mut().enumerate() {
                for (part, sg) in sl.iter_mut().enumerate() {
                    *sg = self.cand[cell(line, part * 3)]
                        | self.cand[cell(line, part * 3 + 1)]
                        | self.cand[cell(line, part * 3 + 2)];
                }
            }
            for line in 0..9 {
                let base = line - line % 3;
                for part in 0..3 {
                    let here = seg[line][part];
                    let mut box_others = 0u16;
                    for l2 in base..base + 3 {
                        if l2 != line {
                            box_others |= seg[l2][part];
                        }
                    }
                    let line_others = seg[line][(part + 1) % 3] | seg[line][(part + 2) % 3];
                    // Pointing: digits of the box confined to this segment leave the line.
                    let pointing = here & !box_others & line_others;
                    if pointing != 0 {
                        for p2 in 0..3 {
                            if p2 != part {
                                for k in p2 * 3..p2 * 3 + 3 {
                                    if !self.eliminate(cell(line, k), pointing, stack, &mut changed) {
                                        return None;
                                    }
                                }
                            }
                        }
                    }
                    // Claiming: digits of the line confined to this segment leave the box.
                    let claiming = here & !line_others & box_others;
                    if claiming != 0 {
                        for l2 in base..base + 3 {
                            if l2 != line {
                                for k in part * 3..part * 3 + 3 {
                                    if !self.eliminate(cell(l2, k), claiming, stack, &mut changed) {
                                        return None;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if changed {
                return Some(true);
            }
        }
        Some(changed)
    }

    /// Naked and hidden singles to a fixpoint. Returns false on contradiction.
    fn propagate(&mut self, stack: &mut Stack) -> bool {
        loop {
            while stack.len > 0 {
                stack.len -= 1;
                let cell = stack.cells[stack.len] as usize;
                if self.unsolved & (1u128 << cell) != 0 && !self.assign(cell, self.cand[cell], stack) {
                    return false;
                }
            }
            if self.unsolved == 0 {
                return true;
            }
            while self.dirty != 0 {
                let u = self.dirty.trailing_zeros() as usize;
                self.dirty &= self.dirty - 1;
                let unit = &UNITS[u];
                let solved = self.solved[u];
                if solved == ALL {
                    continue;
                }
                let mut once = 0u16;
                let mut twice = 0u16;
                for &c in unit {
                    let m = self.cand[c as usize];
                    twice |= once & m;
                    once |= m;
                }
                if once != ALL {
                    return false;
                }
                let mut hidden = once & !twice & !solved;
                while hidden != 0 {
                    let bit = hidden & hidden.wrapping_neg();
                    hidden &= hidden - 1;
                    for &c in unit {
                        let c = c as usize;
                        if self.cand[c] & bit != 0 {
                            if self.unsolved & (1u128 << c) != 0 {
                                if !self.assign(c, bit, stack) {
                                    return false;
                                }
                            }
                            break;
                        }
                    }
                }
                if !self.drain(stack) {
                    return false;
                }
            }
            if self.unsolved == 0 {
                return true;
            }
            match self.locked_candidates(stack) {
                None => return false,
                Some(false) => return true,
                Some(true) => {}
            }
        }
    }

    fn to_board(&self) -> Board {
        let mut b = [0u8; 81];
        for (i, v) in b.iter_mut().enumerate() {
            *v = self.cand[i].trailing_zeros() as u8 + 1;
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
        // Cell with the fewest candidates; among bivalue cells, the one with the most peers
        // that share one of its two candidates (either choice eliminates the most).
        let mut best = 0usize;
        let mut best_key = u32::MAX;
        let mut bits = st.unsolved;
        while bits != 0 {
            let c = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let m = st.cand[c];
            let n = m.count_ones();
            if n * 64 > best_key.saturating_add(63) {
                continue;
            }
            let key = if n == 2 {
                let mut hits = 0u32;
                for &p in &PEERS[c] {
                    hits += (st.cand[p as usize] & m != 0) as u32;
                }
                n * 64 + (40 - hits)
            } else {
                n * 64
            };
            if key < best_key {
                best_key = key;
                best = c;
            }
        }
        self.guesses += 1;
        let mut digits = [0u16; 9];
        let mut nd = 0;
        let mut m = st.cand[best];
        while m != 0 {
            digits[nd] = m & m.wrapping_neg();
            m &= m - 1;
            nd += 1;
        }
        if let Some(rng) = self.rng.as_deref_mut() {
            digits[..nd].shuffle(rng);
        }
        for &bit in &digits[..nd] {
            let mut next = *st;
            let mut stack = Stack { cells: [0; 96], len: 0 };
            if next.assign(best, bit, &mut stack) && next.propagate(&mut stack) {
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
    let mut st =
        State { cand: [ALL; 81], unsolved: (1u128 << 81) - 1, solved: [0; 27], dirty: (1 << 27) - 1 };
    let mut stack = Stack { cells: [0; 96], len: 0 };
    let mut s = Search { limit: limit.max(1), count: 0, guesses: 0, first: None, second: None, rng };
    let mut ok = true;
    for (i, &v) in b.iter().enumerate() {
        if v != 0 {
            let bit = 1u16 << (v - 1);
            if st.cand[i] & bit == 0 || !st.assign(i, bit, &mut stack) {
                ok = false;
                break;
            }
        }
    }
    if ok && st.propagate(&mut stack) {
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
