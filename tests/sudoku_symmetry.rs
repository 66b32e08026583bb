//! Augmentation round trips and canonical-form invariance.

use hrm::sudoku::board::{Board, parse_board, to_tokens};
use hrm::sudoku::solver::count_solutions;
use hrm::sudoku::symmetry::{Transform, canonical};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

const PUZZLES: [&str; 3] = [
    "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........",
    "98.7..6..75..4......3..8.7.5....7.3...94.........2.1..3.......1.9...5.8...52....6",
    ".................1.....2.3......3.2...1.4......5....6..3......4.7..8...962...7...",
];

fn boards() -> Vec<Board> {
    PUZZLES.iter().map(|s| parse_board(s).unwrap()).collect()
}

#[test]
fn augmentation_round_trips_through_inverse() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for p in boards() {
        let sol = count_solutions(&p, 1).unwrap().solution.unwrap();
        for _ in 0..500 {
            let t = Transform::random(&mut rng);
            let (tp, ts) = (t.apply(&p), t.apply(&sol));
            assert_ne!(tp, p, "a random transform should move the board");
            assert_eq!(t.inverse().apply(&tp), p);
            assert_eq!(t.inverse().apply(&ts), sol);
            // The transformed puzzle is a puzzle whose unique solution is the transformed one.
            let r = count_solutions(&tp, 2).unwrap();
            assert_eq!(r.solutions, 1);
            assert_eq!(r.solution.unwrap(), ts);
            // The token path agrees with the board path.
            assert_eq!(t.apply_tokens(&to_tokens(&p)), to_tokens(&tp));
        }
    }
}

#[test]
fn transform_draws_cover_the_group_parts() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut transposed, mut band_moved) = (0, 0);
    for _ in 0..1000 {
        let t = Transform::random(&mut rng);
        assert!(t.is_valid());
        transposed += t.transpose as usize;
        band_moved += (t.row_perm[0] / 3 != 0) as usize;
    }
    assert!(
        (400..600).contains(&transposed),
        "transpose ~ 50%: {transposed}"
    );
    assert!(
        (550..780).contains(&band_moved),
        "first band moved ~ 2/3: {band_moved}"
    );
}

#[test]
fn canonical_form_is_invariant_under_every_symmetry() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let t0 = Instant::now();
    let mut n = 0;
    for p in boards() {
        let c = canonical(&p);
        assert_eq!(canonical(&c), c, "canonical form is a fixed point");
        // Random group elements.
        for _ in 0..30 {
            let t = Transform::random(&mut rng);
            assert_eq!(canonical(&t.apply(&p)), c);
            n += 1;
        }
        // Each generator on its own: transpose, a band swap, a row swap, a stack swap,
        // a column swap, a digit swap.
        let id = Transform::IDENTITY;
        let mut gens = vec![Transform {
            transpose: true,
            ..id
        }];
        let mut band = id;
        band.row_perm = [3, 4, 5, 0, 1, 2, 6, 7, 8];
        gens.push(band);
        let mut row = id;
        row.row_perm = [0, 2, 1, 3, 4, 5, 6, 7, 8];
        gens.push(row);
        let mut stack = id;
        stack.col_perm = [6, 7, 8, 3, 4, 5, 0, 1, 2];
        gens.push(stack);
        let mut col = id;
        col.col_perm = [0, 1, 2, 3, 4, 5, 8, 7, 6];
        gens.push(col);
        let mut dig = id;
        dig.digit_map = [0, 2, 1, 3, 4, 5, 6, 7, 8, 9];
        gens.push(dig);
        for g in gens {
            assert!(g.is_valid());
            assert_eq!(canonical(&g.apply(&p)), c);
            n += 1;
        }
    }
    eprintln!("{n} canonical forms in {:.3}s", t0.elapsed().as_secs_f64());
}

#[test]
fn canonical_form_separates_different_puzzles() {
    let b = boards();
    let c: Vec<Board> = b.iter().map(canonical).collect();
    assert_ne!(c[0], c[1]);
    assert_ne!(c[0], c[2]);
    assert_ne!(c[1], c[2]);
    // Changing one given changes the class.
    let mut q = b[0];
    let i = q.iter().position(|&v| v == 0).unwrap();
    q[i] = (1..=9)
        .find(|d| {
            count_solutions(
                &{
                    let mut x = q;
                    x[i] = *d;
                    x
                },
                1,
            )
            .is_ok()
        })
        .unwrap();
    assert_ne!(canonical(&q), c[0]);
}
