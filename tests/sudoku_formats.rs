//! File formats: import, CSV round trip, errors naming file:line, --skip-invalid, atomic writes.

use hrm::sudoku::board::{board_to_string, is_solution_of};
use hrm::sudoku::dataset::read_eval_set;
use hrm::sudoku::formats::{ImportOptions, import, write_csv};
use std::path::{Path, PathBuf};

const GOOD: &str = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........";
const GOOD2: &str = "98.7..6..75..4......3..8.7.5....7.3...94.........2.1..3.......1.9...5.8...52....6";
// A 17-clue puzzle with one clue removed: 16 clues, several solutions.
const MULTI: &str = ".................1.....2.3......3.2...1.4......5....6..3......4.7..8...962.......";
// Contradiction: two 4s in row 1.
const CONFLICT: &str = "4...3...4...6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_of(path: &Path) -> String {
    let opts = ImportOptions::default();
    import(&[path.to_path_buf()], &opts, &|_| {}).unwrap_err().to_string()
}

#[test]
fn imports_line_format_with_comments() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mini.txt", &format!("# header\n{GOOD}\n\n# c\n{GOOD2}\n"));
    let (puzzles, skipped) = import(&[p], &ImportOptions::default(), &|_| {}).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(puzzles.len(), 2);
    assert_eq!(puzzles[0].source, "mini");
    assert_eq!(board_to_string(&puzzles[0].question, '.'), GOOD);
    for p in &puzzles {
        assert!(is_solution_of(&p.question, &p.answer));
        assert!(p.rating > 0.0);
    }
}

#[test]
fn error_cases_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("short.txt", format!("# c\n{GOOD}\n{}\n", &GOOD[..80]), ":3:", "expected 81 cells"),
        ("chars.txt", format!("{}x{}\n", &GOOD[..10], &GOOD[11..]), ":1:", "bad character 'x'"),
        ("multi.txt", format!("{GOOD}\n{GOOD2}\n{MULTI}\n"), ":3:", "more than one solution"),
        ("conflict.txt", format!("{GOOD}\n{CONFLICT}\n"), ":2:", "contradictory givens"),
        (
            "nosol.txt",
            format!("12345678.{}\n", ".".repeat(36) + "........9" + &".".repeat(27)),
            ":1:",
            "no solution",
        ),
    ];
    for (name, text, line, what) in cases {
        let p = write(dir.path(), name, &text);
        let e = err_of(&p);
        assert!(e.contains(&format!("{name}{line}")), "{name}: error {e:?} lacks {name}{line}");
        assert!(e.contains(what), "{name}: error {e:?} lacks {what:?}");
    }
}

#[test]
fn csv_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let solved = {
        let p = write(dir.path(), "one.txt", &format!("{GOOD}\n"));
        let (v, _) = import(&[p], &ImportOptions::default(), &|_| {}).unwrap();
        board_to_string(&v[0].answer, '0')
    };
    let mut wrong = solved.clone().into_bytes();
    wrong.swap(1, 2); // still digits, no longer a solution
    let wrong = String::from_utf8(wrong).unwrap();
    let cases = [
        (
            "fields.csv",
            format!("source,question,answer,rating\nx,{GOOD},{solved}\n"),
            ":2:",
            "4 comma-separated",
        ),
        ("answer.csv", format!("source,question,answer,rating\nx,{GOOD},{wrong},3\n"), ":2:", "answer"),
        ("rating.csv", format!("source,question,answer,rating\nx,{GOOD},{solved},abc\n"), ":2:", "rating"),
        ("header.csv", format!("source,question,answer\nx,{GOOD},{solved},1\n"), ":1:", "header"),
    ];
    for (name, text, line, what) in cases {
        let p = write(dir.path(), name, &text);
        let e = err_of(&p);
        assert!(e.contains(&format!("{name}{line}")), "{name}: error {e:?} lacks {name}{line}");
        assert!(e.contains(what), "{name}: error {e:?} lacks {what:?}");
    }
    // A good CSV with an answer and an empty answer both load.
    let p = write(
        dir.path(),
        "ok.csv",
        &format!("source,question,answer,rating\na,{GOOD},{solved},5\nb,{GOOD2},,\n"),
    );
    let v = read_eval_set(&p).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].rating, 5.0);
    assert!(is_solution_of(&v[1].question, &v[1].answer));
}

#[test]
fn skip_invalid_reports_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let p =
        write(dir.path(), "mixed.txt", &format!("{GOOD}\n{}\n{MULTI}\n{CONFLICT}\n{GOOD2}\n", &GOOD[..50]));
    let opts = ImportOptions { skip_invalid: true, ..ImportOptions::default() };
    let (puzzles, skipped) = import(&[p], &opts, &|_| {}).unwrap();
    assert_eq!(puzzles.len(), 2);
    let lines: Vec<usize> = skipped.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4]);
    assert!(skipped[0].to_string().contains("mixed.txt:2:"));
}

#[test]
fn csv_round_trip_and_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "src.txt", &format!("{GOOD}\n{GOOD2}\n"));
    let (puzzles, _) = import(&[p], &ImportOptions::default(), &|_| {}).unwrap();
    let out = dir.path().join("out.csv");
    write_csv(&out, &puzzles).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("source,question,answer,rating\nsrc,"));
    let back = read_eval_set(&out).unwrap();
    assert_eq!(back.len(), 2);
    for (a, b) in puzzles.iter().zip(&back) {
        assert_eq!(a.question, b.question);
        assert_eq!(a.answer, b.answer);
        assert!((a.rating - b.rating).abs() < 1e-3);
    }
    // Writing below a regular file fails and leaves no file or temporary behind (a missing
    // parent directory is created, like every writer's).
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let bad = dir.path().join("afile").join("x.csv");
    assert!(write_csv(&bad, &puzzles).is_err());
    assert!(!bad.exists());
    let created = dir.path().join("missing").join("x.csv");
    write_csv(&created, &puzzles).unwrap();
    assert_eq!(std::fs::read_to_string(&created).unwrap(), text);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let e = err_of(Path::new("/nonexistent/dir/puzzles.txt"));
    assert!(e.contains("/nonexistent/dir/puzzles.txt"), "{e}");
}

#[test]
fn a_limit_reads_no_further_and_empty_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "lim.txt", &format!("# c\n{GOOD}\nnot a puzzle\n"));
    let v = hrm::sudoku::formats::read_eval_set_limit(&p, Some(1)).unwrap();
    assert_eq!(v.len(), 1);
    assert!(err_of(&p).contains("lim.txt:3:"));
    for (name, text) in [
        ("empty.txt", ""),
        ("comments.txt", "# a\n\n# b\n"),
        ("header.csv", "source,question,answer,rating\n"),
    ] {
        let e = err_of(&write(dir.path(), name, text));
        assert!(e.contains(name) && e.contains("no puzzles"), "{name}: {e}");
    }
}

#[test]
fn binary_data_stops_the_reader_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let long = write(dir.path(), "long.txt", &format!("{GOOD}\n{}\n", "1".repeat(100_000)));
    let e = err_of(&long);
    assert!(e.contains("long.txt:2: line longer than 65536 bytes"), "{e}");
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, format!("{GOOD}\n{GOOD}\0\n")).unwrap();
    assert!(err_of(&nul).contains("nul.txt:2: a NUL byte at column 82"), "{}", err_of(&nul));
}
