//! File formats: the Sudoku-Extreme CSV (`source,question,answer,rating`) and the
//! one-puzzle-per-line format of `shared/data/sudoku/` (81 chars, `.` blanks, `#` comments).
//!
//! Every problem with an input line is a [`LineError`] naming `file:line`. Writers go through a
//! temporary file and a rename, so a failed run leaves nothing half-written.

use super::board::{Board, board_to_string, is_solution_of, parse_board};
use super::rating::rate;
use crate::fsutil::TextLines;
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A puzzle with its unique solution and rating.
#[derive(Debug, Clone, PartialEq)]
pub struct Puzzle {
    pub source: String,
    pub question: Board,
    pub answer: Board,
    pub rating: f32,
}

/// A bad input line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {msg}", file.display())]
pub struct LineError {
    pub file: PathBuf,
    pub line: usize,
    pub msg: String,
}

/// The CSV header of Sudoku-Extreme.
pub const CSV_HEADER: &str = "source,question,answer,rating";

/// One parsed (not yet solved) input record.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    pub line: usize,
    pub source: String,
    pub question: Board,
    pub answer: Option<Board>,
    pub rating: Option<f32>,
}

/// Input file kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Lines,
}

/// The file stem, used as `source` for one-per-line files.
pub fn file_stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn parse_csv_line(line: &str) -> Result<(String, Board, Option<Board>, Option<f32>), String> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != 4 {
        return Err(format!("expected 4 comma-separated fields ({CSV_HEADER}), found {}", fields.len()));
    }
    let q = parse_board(fields[1]).map_err(|e| format!("question: {e}"))?;
    let a = match fields[2].trim() {
        "" => None,
        s => {
            let b = parse_board(s).map_err(|e| format!("answer: {e}"))?;
            if b.contains(&0) {
                return Err("answer: expected 81 digits 1-9, found a blank".into());
            }
            Some(b)
        }
    };
    let r = match fields[3].trim() {
        "" => None,
        s => Some(
            s.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("rating: expected a number, found {s:?}"))?,
        ),
    };
    Ok((fields[0].to_string(), q, a, r))
}

/// What a puzzle input is expected to be, in errors of the line reader.
const EXPECTED: &str = "a puzzle file (CSV or one puzzle per line)";

/// The records of one puzzle input, parsed line by line as they are read (each input is read
/// once, front to back, so a pipe or FIFO works and `--limit` reads no further than it needs).
/// A line too long, a NUL byte or invalid UTF-8 ends the input with an error naming `file:line`
/// (see [`TextLines`]); a bad record is a [`LineError`] the caller keeps or skips.
pub struct RawReader<R> {
    lines: TextLines<R>,
    path: PathBuf,
    stem: String,
    /// Decided at the first record: CSV if it is the Sudoku-Extreme header or the extension
    /// is `.csv`.
    format: Option<Format>,
    header_seen: bool,
}

impl RawReader<std::io::BufReader<std::fs::File>> {
    /// Opens `path` (a directory is refused); also returns its size when it is a regular file.
    pub fn open(path: &Path) -> anyhow::Result<(Self, Option<u64>)> {
        let (file, size) = crate::fsutil::open_input(path, EXPECTED)?;
        Ok((RawReader::new(std::io::BufReader::new(file), path), size))
    }
}

impl<R: std::io::BufRead> RawReader<R> {
    /// Records of `reader`; `path` names it in errors (and gives the format by its extension).
    pub fn new(reader: R, path: &Path) -> Self {
        RawReader {
            lines: TextLines::new(reader, path, EXPECTED),
            path: path.to_path_buf(),
            stem: file_stem(path),
            format: None,
            header_seen: false,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.lines.bytes_read()
    }

    /// The next record (or the error of its line), `None` at the end of the input. Blank lines,
    /// `#` comments, the CSV header and a UTF-8 byte order mark at the start are skipped.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Result<RawEntry, LineError>>> {
        loop {
            let Some((lineno, line)) = self.lines.next_line()? else { return Ok(None) };
            let line = if lineno == 1 { line.strip_prefix('\u{feff}').unwrap_or(line) } else { line };
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let format = *self.format.get_or_insert_with(|| {
                let csv_ext = self.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
                if csv_ext || t.starts_with("source,question") { Format::Csv } else { Format::Lines }
            });
            let parsed = match format {
                Format::Csv => {
                    if !self.header_seen && t.starts_with("source,") {
                        self.header_seen = true;
                        if t == CSV_HEADER {
                            continue;
                        }
                        Err(format!("expected header {CSV_HEADER:?}, found {t:?}"))
                    } else {
                        self.header_seen = true;
                        parse_csv_line(t)
                    }
                }
                Format::Lines => parse_board(t)
                    .map(|q| (self.stem.clone(), q, None, None))
                    .map_err(|e| format!("{e}; expected 81 characters of '1'-'9' and '.'")),
            };
            return Ok(Some(match parsed {
                Ok((source, question, answer, rating)) => {
                    Ok(RawEntry { line: lineno, source, question, answer, rating })
                }
                Err(msg) => Err(LineError { file: self.path.clone(), line: lineno, msg }),
            }));
        }
    }

    /// Every record. With `skip_invalid`, bad lines are returned as errors next to the good
    /// entries; without it the first bad line is the error.
    pub fn read_all(mut self, skip_invalid: bool) -> anyhow::Result<(Vec<RawEntry>, Vec<LineError>)> {
        let (mut entries, mut errors) = (Vec::new(), Vec::new());
        while let Some(r) = self.next_record()? {
            match r {
                Ok(e) => entries.push(e),
                Err(e) if skip_invalid => errors.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        Ok((entries, errors))
    }
}

/// Parses a file into raw entries (see [`RawReader::read_all`]).
pub fn read_raw(path: &Path, skip_invalid: bool) -> anyhow::Result<(Vec<RawEntry>, Vec<LineError>)> {
    RawReader::open(path)?.0.read_all(skip_invalid)
}

/// [`read_raw`] on text already in memory (`path` names it in errors). A UTF-8 byte order mark
/// at the start is ignored.
pub fn parse_raw(
    path: &Path,
    text: &str,
    skip_invalid: bool,
) -> anyhow::Result<(Vec<RawEntry>, Vec<LineError>)> {
    RawReader::new(text.as_bytes(), path).read_all(skip_invalid)
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub skip_invalid: bool,
    /// Orientations averaged by the rating; 0 keeps ratings from a CSV where present and
    /// computes 1-orientation ratings otherwise.
    pub rating_samples: usize,
    /// Recompute ratings even when a CSV supplies one.
    pub rerate: bool,
    /// Take at most this many puzzles of each file; the rest of the file is not read.
    pub limit: Option<usize>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            skip_invalid: false,
            rating_samples: super::rating::DEFAULT_SAMPLES,
            rerate: true,
            limit: None,
        }
    }
}

/// The unique solution of `question` and its rating (`samples` orientations); contradictory
/// givens, no solution and several solutions are errors.
pub fn unique_solution(question: &Board, samples: usize) -> Result<(Board, f32), String> {
    let r = rate(question, samples.max(1)).map_err(|x| x.to_string())?;
    match r.solutions {
        0 => Err("puzzle has no solution".into()),
        1 => r.solution.map(|s| (s, r.rating)).ok_or_else(|| "internal: missing solution".into()),
        _ => Err("puzzle has more than one solution".into()),
    }
}

/// Solves, checks and rates one entry.
fn check_entry(path: &Path, e: &RawEntry, opts: &ImportOptions) -> Result<Puzzle, LineError> {
    let err = |msg: String| LineError { file: path.to_path_buf(), line: e.line, msg };
    let (solution, rated) = unique_solution(&e.question, opts.rating_samples).map_err(err)?;
    if let Some(a) = e.answer {
        if !is_solution_of(&e.question, &a) {
            return Err(err("answer is not a valid grid keeping the givens".into()));
        }
        if a != solution {
            return Err(err("answer differs from the unique solution".into()));
        }
    }
    let rating = match e.rating {
        Some(x) if !opts.rerate => x,
        _ => rated,
    };
    Ok(Puzzle { source: e.source.clone(), question: e.question, answer: solution, rating })
}

/// Records solved together (in parallel) as they are read.
const CHUNK: usize = 1024;

/// The total size of `paths` when every one is a regular file (a progress bar's length for
/// [`import`]'s byte count), else `None`. Only the metadata is looked at: each input is read
/// once, by the import.
pub fn total_size(paths: &[PathBuf]) -> Option<u64> {
    paths.iter().map(|p| std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len())).sum()
}

/// Reads, solves, checks and rates every puzzle of `paths` (in parallel, output in file and
/// line order), reading each file once as a stream; `progress` gets the bytes read since its
/// last call. Without `skip_invalid` the first bad line (in file order) is the error; with it,
/// bad lines come back as the second element. A file without a single puzzle line (empty, only
/// comments or a header) is an error naming it.
pub fn import(
    paths: &[PathBuf],
    opts: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(Vec<Puzzle>, Vec<LineError>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let (mut reader, _) = RawReader::open(path)?;
        let (mut taken, mut records, mut reported) = (0usize, 0usize, 0u64);
        let limit = opts.limit.unwrap_or(usize::MAX);
        loop {
            // Without skipping, every record read is a puzzle or the error, so a chunk never
            // reads past the limit.
            let want = CHUNK.min(limit - taken);
            let mut chunk = Vec::with_capacity(want);
            while chunk.len() < want {
                match reader.next_record()? {
                    Some(Ok(e)) => chunk.push(e),
                    Some(Err(e)) if opts.skip_invalid => skipped.push(e),
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                }
                records += 1;
            }
            let more = chunk.len() == want;
            let results: Vec<Result<Puzzle, LineError>> =
                chunk.par_iter().map(|e| check_entry(path, e, opts)).collect();
            for r in results {
                match r {
                    Ok(p) if taken < limit => {
                        out.push(p);
                        taken += 1;
                    }
                    Ok(_) => {}
                    Err(e) if opts.skip_invalid => skipped.push(e),
                    Err(e) => return Err(e.into()),
                }
            }
            progress(reader.bytes_read() - reported);
            reported = reader.bytes_read();
            if !more || taken >= limit {
                break;
            }
        }
        if records == 0 && limit > 0 {
            anyhow::bail!(
                "{}: no puzzles (the file is empty or holds only comments or a header)",
                path.display()
            );
        }
    }
    skipped.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok((out, skipped))
}

/// Formats a rating: integers without decimals, otherwise up to 3 decimals.
pub fn format_rating(r: f32) -> String {
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        let s = format!("{r:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub use crate::fsutil::write_atomic_with as write_atomic;

/// Writes the Sudoku-Extreme CSV.
pub fn write_csv(path: &Path, puzzles: &[Puzzle]) -> anyhow::Result<()> {
    write_atomic(path, |w| {
        writeln!(w, "{CSV_HEADER}")?;
        for p in puzzles {
            writeln!(
                w,
                "{},{},{},{}",
                p.source.replace(',', ";"),
                board_to_string(&p.question, '.'),
                board_to_string(&p.answer, '0'),
                format_rating(p.rating)
            )?;
        }
        Ok(())
    })
}

/// Writes one puzzle per line (`.` blanks) with an optional `#` comment header.
pub fn write_lines(path: &Path, puzzles: &[Board], comment: &str) -> anyhow::Result<()> {
    write_atomic(path, |w| {
        for c in comment.lines() {
            writeln!(w, "# {c}")?;
        }
        for p in puzzles {
            writeln!(w, "{}", board_to_string(p, '.'))?;
        }
        Ok(())
    })
}

/// Reads an evaluation set (CSV or one-per-line), solving every puzzle (a CSV answer must equal
/// the unique solution) and rejecting any invalid, unsolvable or ambiguous puzzle with its
/// `file:line`. Ratings: a CSV's own rating is kept; otherwise it is the identity-orientation
/// guess count (1 sample, to keep loading fast; `hrm data import` computes the 8-sample one).
/// A set without a single puzzle (an empty file, only comments or a header) is an error.
pub fn read_eval_set(path: &Path) -> anyhow::Result<Vec<Puzzle>> {
    read_eval_set_limit(path, None)
}

/// [`read_eval_set`] of the first `limit` puzzles only: the lines after them are not read.
pub fn read_eval_set_limit(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Puzzle>> {
    let opts = ImportOptions { skip_invalid: false, rating_samples: 1, rerate: false, limit };
    Ok(import(&[path.to_path_buf()], &opts, &|_| {})?.0)
}
