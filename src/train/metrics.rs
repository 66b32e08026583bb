//! `RUN/metrics.jsonl`: one JSON object per line. Each record goes out in one `write` call on
//! a file opened for appending, so a crash leaves at most one torn (unterminated) last line;
//! a resume cuts that line and every record past the checkpoint it resumes from, so the file
//! never holds two versions of a step.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Append one record as a single line, written with one `write` call.
pub fn append(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let n = f.write(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    if n != line.len() {
        // A short write on a regular file means the disk is full: finish the line so the
        // next record starts on its own line, and report it.
        f.write_all(&line.as_bytes()[n..]).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What [`repair`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// An unterminated last line was cut.
    pub torn_line: bool,
    /// Records whose step is past the resume step.
    pub dropped: usize,
    /// Line numbers (from 1) of lines that are not JSON records with a step: moved to
    /// [`DAMAGED_FILE`] next to the file, so that nothing reading the metrics trips on them.
    pub damaged: Vec<usize>,
}

/// Where [`repair`] sets aside damaged lines of `metrics.jsonl` (appended, never replaced).
pub const DAMAGED_FILE: &str = "metrics.jsonl.damaged";

/// Before a resume at `step`: cut a torn last line and drop every record whose `step` is past
/// `step` (written after the checkpoint by the interrupted process; the resumed run writes them
/// again); move lines that are not JSON objects with a step to [`DAMAGED_FILE`]. Rewrites the
/// file atomically only when something changes.
pub fn repair(path: &Path, step: u64) -> Result<Repair> {
    let mut rep = Repair::default();
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rep),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut body: &[u8] = &text;
    if !body.is_empty() && !body.ends_with(b"\n") {
        let cut = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        body = &body[..cut];
        rep.torn_line = true;
    }
    let mut kept = Vec::with_capacity(body.len());
    let mut damaged = Vec::new();
    for (i, line) in body.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            kept.extend_from_slice(line);
            continue;
        }
        let record_step = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        match record_step {
            Some(s) if s > step => rep.dropped += 1,
            Some(_) => kept.extend_from_slice(line),
            None => {
                rep.damaged.push(i + 1);
                damaged.extend_from_slice(line);
            }
        }
    }
    if !damaged.is_empty() {
        let aside = path.with_file_name(DAMAGED_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&aside)
            .with_context(|| format!("opening {}", aside.display()))?;
        f.write_all(&damaged)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", aside.display()))?;
    }
    if rep.torn_line || rep.dropped > 0 || !rep.damaged.is_empty() {
        crate::fsutil::write_atomic(path, &kept)?;
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_line_and_later_steps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"lm").unwrap();
        let r = repair(&p, 2).unwrap();
        assert_eq!(r, Repair { torn_line: true, dropped: 1, damaged: vec![] });
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n{\"step\":2}\n");
        assert_eq!(repair(&p, 2).unwrap(), Repair::default());
        append(&p, &serde_json::json!({"step": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
    }

    #[test]
    fn damaged_lines_are_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{not json\n[1,2]\n{\"step\":2}\n").unwrap();
        let r = repair(&p, 2).unwrap();
        assert_eq!(r, Repair { torn_line: false, dropped: 0, damaged: vec![2, 3] });
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n{\"step\":2}\n");
        let aside = dir.path().join(DAMAGED_FILE);
        assert_eq!(std::fs::read_to_string(&aside).unwrap(), "{not json\n[1,2]\n");
        assert_eq!(repair(&p, 2).unwrap(), Repair::default());
    }
}
