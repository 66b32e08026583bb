//! Maze-Hard (TASKS_SPEC section 2): square grids of walls and open cells with a start S and a
//! goal G; the answer marks one shortest 4-connected path between them with `o`.
//!
//! Tokens are the position in `"# SGo"` plus 1 (PAD = 0): wall 1, open 2, start 3, goal 4,
//! path 5. A grid is row-major, `side * side` cells (30 x 30 = 900 for Maze-Hard).
//!
//! This module holds the grid logic every maze tool shares: breadth-first distances, the
//! number of shortest paths, the project's labeling rule and the answer check ("valid and
//! optimal"); `generate` makes Maze-Hard sets, `formats` reads and writes the official CSV.

pub mod build;
pub mod cli;
pub mod formats;
pub mod generate;

/// The characters of a maze string, in token order (token = index + 1).
pub const CHARS: &[u8; 5] = b"# SGo";
pub const WALL: u8 = 1;
pub const OPEN: u8 = 2;
pub const START: u8 = 3;
pub const GOAL: u8 = 4;
pub const PATH: u8 = 5;
/// Maze-Hard's side (30 x 30 = 900 cells).
pub const SIDE: usize = 30;
/// "Unreachable" in a distance map.
pub const FAR: u32 = u32::MAX;

/// The token of a maze character (`None` for any other byte).
pub fn token_of(c: u8) -> Option<u8> {
    CHARS.iter().position(|&x| x == c).map(|i| i as u8 + 1)
}

/// The character of a token (1..=5).
pub fn char_of(t: u8) -> char {
    CHARS[(t - 1) as usize] as char
}

/// The grid as text, one row per line.
pub fn render(tokens: &[u8], side: usize) -> String {
    tokens.chunks(side).map(|row| row.iter().map(|&t| char_of(t)).collect::<String>() + "\n").collect()
}

/// The 4 neighbours of cell `i` in the fixed order up, down, left, right (those on the grid).
pub fn neighbours(i: usize, side: usize) -> impl Iterator<Item = usize> {
    let (y, x) = (i / side, i % side);
    [
        (y > 0).then(|| i - side),
        (y + 1 < side).then(|| i + side),
        (x > 0).then(|| i - 1),
        (x + 1 < side).then(|| i + 1),
    ]
    .into_iter()
    .flatten()
}

/// Moves from `from` to every cell through non-wall cells (`FAR`: unreachable; walls are
/// `FAR`). `queue` is scratch of at least `side * side` entries.
pub fn bfs_into(grid: &[u8], side: usize, from: usize, dist: &mut [u32], queue: &mut Vec<u32>) {
    dist.fill(FAR);
    queue.clear();
    dist[from] = 0;
    queue.push(from as u32);
    let mut head = 0;
    while head < queue.len() {
        let c = queue[head] as usize;
        head += 1;
        for n in neighbours(c, side) {
            if grid[n] != WALL && dist[n] == FAR {
                dist[n] = dist[c] + 1;
                queue.push(n as u32);
            }
        }
    }
}

/// [`bfs_into`] with its own buffers.
pub fn bfs(grid: &[u8], side: usize, from: usize) -> Vec<u32> {
    let mut dist = vec![FAR; grid.len()];
    bfs_into(grid, side, from, &mut dist, &mut Vec::with_capacity(grid.len()));
    dist
}

/// The one start and one goal of a question grid.
pub fn endpoints(grid: &[u8]) -> Option<(usize, usize)> {
    let one = |t: u8| {
        let mut it = grid.iter().enumerate().filter(|&(_, &x)| x == t).map(|(i, _)| i);
        match (it.next(), it.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
    };
    Some((one(START)?, one(GOAL)?))
}

/// The number of distinct shortest paths from `s` to `g` (0 when unreachable), as f64: exact up
/// to 2^53, then rounded (hard mazes have tens of thousands to millions).
pub fn shortest_path_count(grid: &[u8], side: usize, s: usize, g: usize) -> f64 {
    let dist = bfs(grid, side, s);
    if dist[g] == FAR {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..grid.len()).filter(|&i| dist[i] != FAR && dist[i] <= dist[g]).collect();
    order.sort_by_key(|&i| dist[i]);
    let mut ways = vec![0.0f64; grid.len()];
    ways[s] = 1.0;
    for &c in &order {
        if c == s {
            continue;
        }
        ways[c] =
            neighbours(c, side).filter(|&n| dist[n] != FAR && dist[n] + 1 == dist[c]).map(|n| ways[n]).sum();
    }
    ways[g]
}

/// The project's labeling rule (TASKS_SPEC section 2, recommendation 4): breadth-first distance
/// from G, then walk from S, always stepping to the first neighbour in the order up, down,
/// left, right whose distance is one less. Returns the answer grid (the question with the path's
/// cells between S and G set to `o`), or `None` when G is unreachable or the grid lacks one S
/// and one G.
pub fn label(question: &[u8], side: usize) -> Option<Vec<u8>> {
    let (s, g) = endpoints(question)?;
    let dist = bfs(question, side, g);
    if dist[s] == FAR {
        return None;
    }
    let mut answer = question.to_vec();
    let mut c = s;
    while c != g {
        c = neighbours(c, side)
            .find(|&n| dist[n] != FAR && dist[n] + 1 == dist[c])
            .expect("a BFS predecessor");
        if c != g {
            answer[c] = PATH;
        }
    }
    Some(answer)
}

/// A maze grid (question or answer) under the dihedral transform `tid` (`crate::grid`; the
/// optional training augmentation of TASKS_SPEC section 2). A transformed label is still a valid
/// shortest path, though not always the one the labeling rule picks in the new orientation.
pub fn dihedral(tokens: &[u8], side: usize, tid: usize) -> Vec<u8> {
    crate::grid::dihedral(tokens, side, side, tid).0
}

/// What an answer grid says about its question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathCheck {
    /// The answer keeps the question's walls, S and G, and its `o` cells with S and G form one
    /// 4-connected path from S to G (no branch, no loop, no stray `o`).
    pub valid: bool,
    /// Valid, and as short as possible (moves = the breadth-first distance).
    pub optimal: bool,
    /// Moves of the marked path (valid answers only).
    pub moves: Option<u32>,
}

/// Checks `answer` (tokens, as predicted: any token per cell) against `question`.
pub fn check_answer(question: &[u8], answer: &[u8], side: usize) -> PathCheck {
    let invalid = PathCheck { valid: false, optimal: false, moves: None };
    let Some((s, g)) = endpoints(question) else { return invalid };
    if answer.len() != question.len() {
        return invalid;
    }
    // Outside the path, the answer is the question; `o` only on the question's open cells.
    for (i, (&q, &a)) in question.iter().zip(answer).enumerate() {
        let ok = a == q || (a == PATH && q == OPEN);
        if !ok || (i == s && a != START) || (i == g && a != GOAL) {
            return invalid;
        }
    }
    let on_path = |i: usize| matches!(answer[i], PATH | START | GOAL);
    // Walk from S: each step has exactly one unvisited path neighbour until G.
    let (mut prev, mut cur, mut moves) = (usize::MAX, s, 0u32);
    let path_cells = answer.iter().filter(|&&a| a == PATH).count();
    if neighbours(s, side).filter(|&n| on_path(n)).count() != 1 {
        return invalid;
    }
    loop {
        let next: Vec<usize> = neighbours(cur, side).filter(|&n| n != prev && on_path(n)).collect();
        if cur == g {
            // G ends the path: its only path neighbour is the one we came from
            if !next.is_empty() {
                return invalid;
            }
            break;
        }
        if next.len() != 1 || moves as usize > path_cells {
            return invalid;
        }
        prev = cur;
        cur = next[0];
        moves += 1;
    }
    // every `o` cell was on the walk (moves - 1 of them)
    if moves as usize != path_cells + 1 {
        return invalid;
    }
    let shortest = bfs(question, side, s)[g];
    PathCheck { valid: true, optimal: moves == shortest, moves: Some(moves) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<u8>, usize) {
        let side = rows.len();
        (rows.iter().flat_map(|r| r.bytes().map(|c| token_of(c).unwrap())).collect(), side)
    }

    #[test]
    fn label_follows_the_fixed_rule_and_checks_as_optimal() {
        let (q, side) = grid(&["S   ", " ## ", "    ", "   G"]);
        let a = label(&q, side).unwrap();
        // whenever both down and right lead one step closer to G, down comes first
        assert_eq!(render(&a, side), "S   \no## \no   \noooG\n");
        let c = check_answer(&q, &a, side);
        assert_eq!(c, PathCheck { valid: true, optimal: true, moves: Some(6) });
        // 20 monotone paths, 15 of them through a wall
        assert_eq!(shortest_path_count(&q, side, 0, 15), 5.0);
    }

    #[test]
    fn invalid_and_suboptimal_answers_are_told_apart() {
        // S (0,0), G (2,0) under a wall: 4 moves round the right of the wall's column, 6 round
        // the far side
        let (q, side) = grid(&["S  ", "#  ", "G  "]);
        let check = |rows: &[&str]| check_answer(&q, &grid(rows).0, side);
        assert_eq!(check(&["So ", "#o ", "Go "]), PathCheck { valid: true, optimal: true, moves: Some(4) });
        assert_eq!(check(&["Soo", "# o", "Goo"]), PathCheck { valid: true, optimal: false, moves: Some(6) });
        for (rows, why) in [
            (["So ", "#oo", "Go "], "a branch"),
            (["Soo", "#oo", "Go "], "a loop"),
            (["So ", "#o ", "G o"], "a stray o"),
            (["So ", "#  ", "G  "], "a path that stops short"),
            (["S  ", "#  ", "G  "], "no path"),
            (["So ", "oo ", "G  "], "a path through a wall"),
            (["So ", "#o ", "oo "], "G overwritten"),
            (["Go ", "#o ", "So "], "S and G swapped"),
        ] {
            assert!(!check(&rows).valid, "{why}");
        }
    }

    #[test]
    fn unreachable_goals_have_no_label() {
        let (q, side) = grid(&["S#  ", "##  ", "    ", "   G"]);
        assert_eq!(label(&q, side), None);
        assert_eq!(shortest_path_count(&q, side, 0, 15), 0.0);
        assert_eq!(bfs(&q, side, 0)[15], FAR);
    }
}
