//! Row-major 2-D grids shared by the grid tasks (Maze-Hard, ARC): the 8 dihedral transforms
//! with the reference's numbering and inverses (TASKS_SPEC section 3.3, numpy semantics of
//! HRM's `dataset/common.py`). For an H x W array A, B = dihedral(A, tid):
//!
//! | tid | op | B shape | B[i][j] = |
//! |---|---|---|---|
//! | 0 | identity | H x W | A[i][j] |
//! | 1 | rot90 counter-clockwise | W x H | A[j][W-1-i] |
//! | 2 | rot180 | H x W | A[H-1-i][W-1-j] |
//! | 3 | rot90 clockwise | W x H | A[H-1-j][i] |
//! | 4 | flip left-right | H x W | A[i][W-1-j] |
//! | 5 | flip up-down | H x W | A[H-1-i][j] |
//! | 6 | transpose | W x H | A[j][i] |
//! | 7 | anti-transpose | W x H | A[H-1-j][W-1-i] |

/// The inverse of each transform: `dihedral(dihedral(a, t), DIHEDRAL_INVERSE[t]) == a`.
pub const DIHEDRAL_INVERSE: [usize; 8] = [0, 3, 2, 1, 4, 5, 6, 7];

/// `dihedral(a, tid)` of the `h` x `w` grid `a` (row-major) and the result's (rows, columns).
pub fn dihedral<T: Copy>(a: &[T], h: usize, w: usize, tid: usize) -> (Vec<T>, usize, usize) {
    assert_eq!(a.len(), h * w, "dihedral: a {h} x {w} grid has {} cells, not {}", h * w, a.len());
    assert!(tid < 8, "dihedral: transform {tid} (0..8)");
    let (bh, bw) = if matches!(tid, 1 | 3 | 6 | 7) { (w, h) } else { (h, w) };
    let at = |i: usize, j: usize| a[i * w + j];
    let mut b = Vec::with_capacity(h * w);
    for i in 0..bh {
        for j in 0..bw {
            b.push(match tid {
                0 => at(i, j),
                1 => at(j, w - 1 - i),
                2 => at(h - 1 - i, w - 1 - j),
                3 => at(h - 1 - j, i),
                4 => at(i, w - 1 - j),
                5 => at(h - 1 - i, j),
                6 => at(j, i),
                _ => at(h - 1 - j, w - 1 - i),
            });
        }
    }
    (b, bh, bw)
}

/// Undoes [`dihedral`]: `b` is the transformed grid of `bh` x `bw`.
pub fn inverse_dihedral<T: Copy>(b: &[T], bh: usize, bw: usize, tid: usize) -> (Vec<T>, usize, usize) {
    dihedral(b, bh, bw, DIHEDRAL_INVERSE[tid])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_follow_the_table_and_invert() {
        // 2 x 3, distinct values: a[i][j] = 10 i + j
        let a: Vec<u32> = (0..2).flat_map(|i| (0..3).map(move |j| 10 * i + j)).collect();
        let rows = |t: usize| {
            let (b, bh, bw) = dihedral(&a, 2, 3, t);
            (b.chunks(bw).map(|r| r.to_vec()).collect::<Vec<_>>(), bh)
        };
        assert_eq!(rows(0).0, vec![vec![0, 1, 2], vec![10, 11, 12]]);
        assert_eq!(rows(1).0, vec![vec![2, 12], vec![1, 11], vec![0, 10]], "np.rot90: counter-clockwise");
        assert_eq!(rows(2).0, vec![vec![12, 11, 10], vec![2, 1, 0]]);
        assert_eq!(rows(3).0, vec![vec![10, 0], vec![11, 1], vec![12, 2]], "clockwise");
        assert_eq!(rows(4).0, vec![vec![2, 1, 0], vec![12, 11, 10]]);
        assert_eq!(rows(5).0, vec![vec![10, 11, 12], vec![0, 1, 2]]);
        assert_eq!(rows(6).0, vec![vec![0, 10], vec![1, 11], vec![2, 12]]);
        assert_eq!(rows(7).0, vec![vec![12, 2], vec![11, 1], vec![10, 0]]);
        for t in 0..8 {
            let (b, bh, bw) = dihedral(&a, 2, 3, t);
            assert_eq!(inverse_dihedral(&b, bh, bw, t), (a.clone(), 2, 3), "transform {t}");
        }
        // a group: composing any two is one of the eight (rot90 twice is rot180)
        let (r1, h1, w1) = dihedral(&a, 2, 3, 1);
        assert_eq!(dihedral(&r1, h1, w1, 1).0, dihedral(&a, 2, 3, 2).0);
        let all: Vec<Vec<u32>> = (0..8).map(|t| dihedral(&a, 2, 3, t).0).collect();
        for s in 0..8 {
            for t in 0..8 {
                let (x, xh, xw) = dihedral(&a, 2, 3, s);
                assert!(all.contains(&dihedral(&x, xh, xw, t).0), "{s} then {t}");
            }
        }
    }
}
