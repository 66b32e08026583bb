//! ARC grids as model sequences (TASKS_SPEC section 3.2, identical in HRM and TRM) and back
//! (section 3.5's crop). A grid sits on a 30 x 30 canvas, row-major, colors as tokens 2..=11,
//! PAD 0, with an EOS (1) border: the row under the grid and the column right of it, each over
//! the grid's extent (the corner stays PAD). An example's input and output share one top-left
//! offset, drawn for training examples (translation augmentation) and (0, 0) otherwise.

use super::{Grid, MAX_SIDE, Pair};
use rand::Rng;

/// The canvas side and sequence length (30 x 30 = 900).
pub const CANVAS: usize = MAX_SIDE;
pub const PAD: u8 = 0;
pub const EOS: u8 = 1;
/// Token of color 0 (color c is `c + COLOR0`); vocabulary 12.
pub const COLOR0: u8 = 2;

/// `g` on a canvas with its top-left cell at (`r0`, `c0`).
pub fn to_canvas(g: &Grid, r0: usize, c0: usize) -> Vec<u8> {
    assert!(
        r0 + g.rows <= CANVAS && c0 + g.cols <= CANVAS,
        "a {}x{} grid at ({r0}, {c0}) leaves the canvas",
        g.rows,
        g.cols
    );
    let mut t = vec![PAD; CANVAS * CANVAS];
    for i in 0..g.rows {
        for j in 0..g.cols {
            t[(r0 + i) * CANVAS + c0 + j] = g.cells[i * g.cols + j] + COLOR0;
        }
    }
    if r0 + g.rows < CANVAS {
        for j in c0..c0 + g.cols {
            t[(r0 + g.rows) * CANVAS + j] = EOS;
        }
    }
    if c0 + g.cols < CANVAS {
        for i in r0..r0 + g.rows {
            t[i * CANVAS + c0 + g.cols] = EOS;
        }
    }
    t
}

/// An example (input and label sequences) from a pair: at (0, 0), or with `rng` at an offset
/// uniform in [0, 30 - max(rows)] x [0, 30 - max(cols)] of the two grids, the same for both.
pub fn example(p: &Pair, rng: Option<&mut dyn rand::RngCore>) -> (Vec<u8>, Vec<u8>, (usize, usize)) {
    let (r0, c0) = match rng {
        Some(rng) => {
            let rmax = CANVAS - p.input.rows.max(p.output.rows);
            let cmax = CANVAS - p.input.cols.max(p.output.cols);
            (rng.gen_range(0..=rmax), rng.gen_range(0..=cmax))
        }
        None => (0, 0),
    };
    (to_canvas(&p.input, r0, c0), to_canvas(&p.output, r0, c0), (r0, c0))
}

/// The reference's crop of a predicted canvas: the largest top-left rectangle of color tokens,
/// scanned row by row with the width shrinking at the first non-color token (so a grid at
/// (0, 0) with its EOS border comes back whole); colors out. May be empty (0 x 0).
pub fn crop(t: &[u8]) -> Grid {
    assert_eq!(t.len(), CANVAS * CANVAS);
    let is_color = |x: u8| (COLOR0..COLOR0 + 10).contains(&x);
    let (mut best, mut size, mut ncols) = (0, (0, 0), CANVAS);
    for r in 1..=CANVAS {
        for c in 1..=ncols {
            if !is_color(t[(r - 1) * CANVAS + c - 1]) {
                ncols = c - 1;
                break;
            }
        }
        if r * ncols > best {
            best = r * ncols;
            size = (r, ncols);
        }
    }
    let (rows, cols) = size;
    let cells = (0..rows).flat_map(|i| (0..cols).map(move |j| t[i * CANVAS + j] - COLOR0)).collect();
    Grid { rows, cols, cells }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn grid(rows: usize, cols: usize, f: impl Fn(usize, usize) -> u8) -> Grid {
        Grid {
            rows,
            cols,
            cells: (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j))).map(|(i, j)| f(i, j)).collect(),
        }
    }

    #[test]
    fn a_grid_sits_on_the_canvas_with_its_eos_border() {
        let g = grid(2, 3, |i, j| (3 * i + j) as u8); // colors 0..5
        let t = to_canvas(&g, 1, 2);
        let at = |i: usize, j: usize| t[i * CANVAS + j];
        // the grid, colors + 2
        assert_eq!([at(1, 2), at(1, 3), at(1, 4), at(2, 2), at(2, 3), at(2, 4)], [2, 3, 4, 5, 6, 7]);
        // EOS under it (row 3, columns 2..5) and right of it (column 5, rows 1..3)
        assert_eq!([at(3, 2), at(3, 3), at(3, 4)], [EOS; 3]);
        assert_eq!([at(1, 5), at(2, 5)], [EOS; 2]);
        // the corner and everything else PAD
        assert_eq!(at(3, 5), PAD);
        assert_eq!(t.iter().filter(|&&x| x != PAD).count(), 6 + 3 + 2);
        // a full canvas has no border
        let full = grid(30, 30, |i, j| ((i + j) % 10) as u8);
        assert!(to_canvas(&full, 0, 0).iter().all(|&x| x >= COLOR0));
        // a 30-row grid: the column border only
        let tall = to_canvas(&grid(30, 4, |_, _| 9), 0, 0);
        assert_eq!(tall.iter().filter(|&&x| x == EOS).count(), 30);
    }

    #[test]
    fn crop_recovers_every_grid_placed_at_the_origin() {
        for (r, c) in [(1, 1), (2, 3), (30, 1), (1, 30), (30, 30), (17, 29), (5, 5)] {
            let g = grid(r, c, |i, j| ((7 * i + 3 * j) % 10) as u8);
            assert_eq!(crop(&to_canvas(&g, 0, 0)), g, "{r} x {c}");
        }
        // a prediction that is not a clean grid: the largest top-left rectangle of colors
        let mut t = to_canvas(&grid(4, 5, |_, _| 1), 0, 0);
        t[2 * CANVAS + 3] = EOS; // row 2 stops at column 3
        assert_eq!((crop(&t).rows, crop(&t).cols), (4, 3));
        t[0] = PAD;
        assert_eq!((crop(&t).rows, crop(&t).cols), (0, 0), "no color at the origin: empty");
    }

    #[test]
    fn translation_keeps_both_grids_on_the_canvas_at_one_offset() {
        let p = Pair { input: grid(3, 28, |_, _| 4), output: grid(25, 2, |_, _| 5) };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (x, y, (r0, c0)) = example(&p, Some(&mut rng));
            assert!(r0 <= 5 && c0 <= 2, "({r0}, {c0})");
            seen.insert((r0, c0));
            assert_eq!(x[r0 * CANVAS + c0], 4 + COLOR0);
            assert_eq!(y[r0 * CANVAS + c0], 5 + COLOR0);
        }
        assert_eq!(seen.len(), 6 * 3, "every offset drawn");
        let (x, _, at) = example(&p, None);
        assert_eq!((at, crop(&x)), ((0, 0), p.input.clone()));
    }
}
