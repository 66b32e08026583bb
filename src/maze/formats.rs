//! The official Maze-Hard CSV (`sapientinc/maze-30x30-hard-1k`, read by HRM's
//! `dataset/build_maze_dataset.py`): a header, then `source,q,a,rating` per maze, `q` and `a`
//! row-major grids of `"# SGo"` characters whose length is a perfect square (900 for 30 x 30).
//! `hrm data maze generate` writes this layout and every maze tool reads it, so a user with the
//! published set can use it as is. Our generated files put the shortest-path length (moves) in
//! `rating` and the seed, index and number of shortest paths in `source`.

use super::{START, endpoints, token_of};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;

/// One maze of a CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct MazeRow {
    pub source: String,
    /// question tokens
    pub question: Vec<u8>,
    /// answer tokens
    pub answer: Vec<u8>,
    pub rating: String,
    /// grid side (sqrt of the length)
    pub side: usize,
}

/// Tokens of one grid string, checked: only `"# SGo"`, a perfect-square length.
fn grid_of(text: &str, what: &str) -> Result<(Vec<u8>, usize)> {
    let side = (text.len() as f64).sqrt().round() as usize;
    if text.is_empty() || side * side != text.len() {
        bail!("{what}: {} characters, not a square grid (900 for 30 x 30)", text.len());
    }
    let tokens = text
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            token_of(c).ok_or_else(|| {
                anyhow::anyhow!(
                    "{what}: character {:?} at cell {i} (row {}, column {}); expected one of \"# SGo\"",
                    c as char,
                    i / side,
                    i % side
                )
            })
        })
        .collect::<Result<Vec<u8>>>()?;
    Ok((tokens, side))
}

/// Parses a Maze CSV; errors name the file and line. Every question must hold one S and one G,
/// and its answer the same grid size (the answer's path itself is judged by
/// [`super::check_answer`], which the callers report).
pub fn parse_csv(text: &str, path: &str) -> Result<Vec<MazeRow>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end_matches('\r') == "source,q,a,rating" => {}
        Some((_, h)) => bail!("{path}:1: expected the header 'source,q,a,rating', found {h:?}"),
        None => bail!("{path}: empty file (expected the header 'source,q,a,rating')"),
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let at = || format!("{path}:{}", n + 1);
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 4 {
            bail!("{}: {} fields; expected 4 (source,q,a,rating)", at(), fields.len());
        }
        let (question, side) = grid_of(fields[1], &format!("{}: q", at()))?;
        let (answer, side_a) = grid_of(fields[2], &format!("{}: a", at()))?;
        if side_a != side {
            bail!("{}: q is {side} x {side} but a is {side_a} x {side_a}", at());
        }
        if endpoints(&question).is_none() {
            let s = question.iter().filter(|&&t| t == START).count();
            bail!("{}: q must hold exactly one S and one G ({s} S)", at());
        }
        rows.push(MazeRow {
            source: fields[0].to_string(),
            question,
            answer,
            rating: fields[3].to_string(),
            side,
        });
    }
    Ok(rows)
}

/// Reads a Maze CSV (see [`parse_csv`]).
pub fn read_csv(path: &Path) -> Result<Vec<MazeRow>> {
    let bytes = crate::fsutil::read_regular(path, "a Maze CSV")?;
    let text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

fn grid_text(tokens: &[u8]) -> String {
    tokens.iter().map(|&t| super::char_of(t)).collect()
}

/// Writes rows as a Maze CSV, atomically.
pub fn write_csv(path: &Path, rows: &[MazeRow]) -> Result<()> {
    for r in rows {
        if r.source.contains([',', '\n']) || r.rating.contains([',', '\n']) {
            bail!("{}: source {:?} / rating {:?} would break the CSV", path.display(), r.source, r.rating);
        }
    }
    crate::fsutil::write_atomic_with(path, |w| {
        writeln!(w, "source,q,a,rating")?;
        for r in rows {
            writeln!(w, "{},{},{},{}", r.source, grid_text(&r.question), grid_text(&r.answer), r.rating)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_bad_lines_name_the_line() {
        let q = "S   # ##    #  G";
        let a = "Sooo# ##   o#  G";
        let text = format!("source,q,a,rating\nx,{q},{a},5\n\n");
        let rows = parse_csv(&text, "m.csv").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].side, rows[0].rating.as_str()), (4, "5"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        write_csv(&p, &rows).unwrap();
        assert_eq!(read_csv(&p).unwrap(), rows);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("source,q,a,rating\nx,{q},{a},5\n"));

        let bad =
            |body: &str| parse_csv(&format!("source,q,a,rating\n{body}\n"), "m.csv").unwrap_err().to_string();
        assert!(bad(&format!("x,{q},{a}")).contains("m.csv:2: 3 fields"));
        assert!(bad(&format!("x,{q}x,{a},1")).contains("m.csv:2: q: 17 characters, not a square"));
        let e = bad(&format!("x,{},{a},1", q.replace('#', "X")));
        assert!(e.contains("m.csv:2: q: character 'X' at cell 4 (row 1, column 0)"), "{e}");
        assert!(bad(&format!("x,{},{a},1", q.replace('G', " "))).contains("exactly one S and one G"));
        assert!(bad(&format!("x,{q},S  G,1")).contains("m.csv:2: q is 4 x 4 but a is 2 x 2"));
        assert!(
            parse_csv("q,a\n", "m.csv").unwrap_err().to_string().contains("m.csv:1: expected the header")
        );
    }
}
