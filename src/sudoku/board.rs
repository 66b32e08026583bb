//! The Sudoku board type, token conversion and static unit/peer tables.

use std::fmt;

/// A 9x9 board in row-major order: 0 = blank, 1..=9 = digit.
pub type Board = [u8; 81];

/// Token id of padding (never produced for Sudoku, listed for completeness).
pub const PAD_TOKEN: u8 = 0;
/// Token id of a blank cell.
pub const BLANK_TOKEN: u8 = 1;

/// Why a text line or token sequence is not a board.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoardError {
    #[error("expected 81 cells, found {0} characters")]
    Length(usize),
    #[error("bad character {ch:?} at column {col} (expected '1'-'9', '.' or '0')")]
    Char { ch: char, col: usize },
    #[error("bad token id {token} at cell {cell} (expected {min}..={max})")]
    Token { token: u8, cell: usize, min: u8, max: u8 },
    #[error("bad cell value {value} at cell {cell} (expected 0..=9)")]
    Value { value: u8, cell: usize },
}

/// Parses 81 characters: `1`-`9` are digits, `.` or `0` are blanks. Surrounding whitespace is
/// ignored.
pub fn parse_board(s: &str) -> Result<Board, BoardError> {
    let s = s.trim();
    let n = s.chars().count();
    if n != 81 {
        return Err(BoardError::Length(n));
    }
    let mut b = [0u8; 81];
    for (i, ch) in s.chars().enumerate() {
        b[i] = match ch {
            '.' | '0' => 0,
            '1'..='9' => ch as u8 - b'0',
            _ => return Err(BoardError::Char { ch, col: i + 1 }),
        };
    }
    Ok(b)
}

/// Formats a board as 81 characters with `blank` for empty cells.
pub fn board_to_string(b: &Board, blank: char) -> String {
    b.iter().map(|&v| if v == 0 { blank } else { (b'0' + v) as char }).collect()
}

/// Checks that every cell holds 0..=9.
pub fn check_values(b: &Board) -> Result<(), BoardError> {
    match b.iter().position(|&v| v > 9) {
        Some(cell) => Err(BoardError::Value { value: b[cell], cell }),
        None => Ok(()),
    }
}

/// Board -> token ids (blank = 1, digit d = d + 1).
pub fn to_tokens(b: &Board) -> [u8; 81] {
    let mut t = [0u8; 81];
    for i in 0..81 {
        t[i] = b[i] + 1;
    }
    t
}

/// Token ids -> board. Accepts 1 (blank) and 2..=10 (digits).
pub fn from_tokens(t: &[u8; 81]) -> Result<Board, BoardError> {
    let mut b = [0u8; 81];
    for i in 0..81 {
        if !(1..=10).contains(&t[i]) {
            return Err(BoardError::Token { token: t[i], cell: i, min: 1, max: 10 });
        }
        b[i] = t[i] - 1;
    }
    Ok(b)
}

/// Number of givens (non-blank cells).
pub fn count_givens(b: &Board) -> usize {
    b.iter().filter(|&&v| v != 0).count()
}

/// True if `b` is a complete valid Sudoku grid.
pub fn is_valid_solution(b: &Board) -> bool {
    UNITS.iter().all(|u| {
        let mut seen = 0u16;
        for &c in u {
            let v = b[c as usize];
            if v == 0 || v > 9 {
                return false;
            }
            seen |= 1 << v;
        }
        seen == 0x3FE
    })
}

/// True if `answer` is a valid complete grid that keeps every given of `question`.
pub fn is_solution_of(question: &Board, answer: &Board) -> bool {
    is_valid_solution(answer) && question.iter().zip(answer).all(|(&q, &a)| q == 0 || q == a)
}

/// Display wrapper printing a board as a 9x9 grid.
pub struct Grid<'a>(pub &'a Board);

impl fmt::Display for Grid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in 0..9 {
            for c in 0..9 {
                let v = self.0[r * 9 + c];
                write!(f, "{}", if v == 0 { '.' } else { (b'0' + v) as char })?;
                if c == 2 || c == 5 {
                    write!(f, " ")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

const fn build_units() -> [[u8; 9]; 27] {
    let mut u = [[0u8; 9]; 27];
    let mut i = 0;
    while i < 9 {
        let mut j = 0;
        while j < 9 {
            u[i][j] = (i * 9 + j) as u8; // row i
            u[9 + i][j] = (j * 9 + i) as u8; // column i
            let br = (i / 3) * 3;
            let bc = (i % 3) * 3;
            u[18 + i][j] = ((br + j / 3) * 9 + bc + j % 3) as u8; // box i
            j += 1;
        }
        i += 1;
    }
    u
}

/// The 27 units: rows 0..9, columns 9..18, boxes 18..27.
pub const UNITS: [[u8; 9]; 27] = build_units();

const fn build_peers() -> [[u8; 20]; 81] {
    let mut p = [[0u8; 20]; 81];
    let mut c = 0;
    while c < 81 {
        let (r, col) = (c / 9, c % 9);
        let b = (r / 3) * 3 + col / 3;
        let mut n = 0;
        let mut o = 0;
        while o < 81 {
            let (r2, c2) = (o / 9, o % 9);
            let b2 = (r2 / 3) * 3 + c2 / 3;
            if o != c && (r2 == r || c2 == col || b2 == b) {
                p[c][n] = o as u8;
                n += 1;
            }
            o += 1;
        }
        c += 1;
    }
    p
}

const fn build_cell_units() -> [[u8; 3]; 81] {
    let mut t = [[0u8; 3]; 81];
    let mut c = 0;
    while c < 81 {
        let (r, col) = (c / 9, c % 9);
        t[c] = [r as u8, (9 + col) as u8, (18 + (r / 3) * 3 + col / 3) as u8];
        c += 1;
    }
    t
}

/// For each cell: its row, column and box unit indices.
pub const CELL_UNITS: [[u8; 3]; 81] = build_cell_units();

/// The 20 peers of each cell (same row, column or box).
pub const PEERS: [[u8; 20]; 81] = build_peers();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let mut b = [0u8; 81];
        for (i, v) in b.iter_mut().enumerate() {
            *v = (i % 10) as u8;
        }
        let t = to_tokens(&b);
        assert_eq!(t[0], 1);
        assert_eq!(t[9], 10);
        assert_eq!(from_tokens(&t).unwrap(), b);
        let mut bad = t;
        bad[5] = 0;
        assert!(from_tokens(&bad).is_err());
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_board("123"), Err(BoardError::Length(3)));
        let mut s = ".".repeat(81);
        s.replace_range(4..5, "x");
        assert_eq!(parse_board(&s), Err(BoardError::Char { ch: 'x', col: 5 }));
    }
}
