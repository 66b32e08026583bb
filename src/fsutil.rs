//! The one output-path policy of every writer (checkpoints, run files, Sudoku data files,
//! reports), in two halves:
//!
//! - [`check_output`] / [`check_output_dir`], called by each command before any work: the path
//!   can be written (not a directory, its parent a writable directory), it is not one of the
//!   command's inputs (same device and inode, so hard links and symlinks are caught too), and
//!   two outputs of one command are not the same file.
//! - [`write_atomic_with`] / [`write_atomic`], which look at what the path is when they write:
//!   a regular file (or a missing one) is replaced atomically (a temporary file in the same
//!   directory, fsync, rename), so a crash leaves either the old file or the new one, never a
//!   torn one; a symlink is followed and its target replaced, the link itself is kept; a device,
//!   FIFO or socket (`/dev/null`, `/dev/stdout` on a pipe) is opened and written through, never
//!   replaced, and a failed write (ENOSPC from `/dev/full`) is an error; the file this process
//!   already writes as standard output or error is written through that stream.
//!
//! And the input side: [`open_input`] (a stream read once; a directory refused),
//! [`read_regular`] (a whole regular file; a device, FIFO or directory refused before reading)
//! and [`TextLines`] (lines with a bounded buffer, named `file:line` in errors).

use anyhow::{Context, Result, anyhow, bail};
use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Symlinks followed by hand (a dangling link's target is created) before giving up.
const MAX_LINK_HOPS: usize = 40;

/// Where the bytes for an output path go.
enum Target {
    /// A regular file, existing or not, at this (symlink-free) path: replace it atomically.
    Replace(PathBuf),
    /// A device, FIFO or socket: open the path and write through it.
    Through,
    /// The file this process writes as standard output (1) or standard error (2).
    Stream(i32),
}

fn file_id(m: &Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// The metadata of this process's standard output or error, when it is open.
fn std_stream_metadata(fd: i32) -> Option<Metadata> {
    use std::os::fd::AsFd;
    let owned = match fd {
        1 => std::io::stdout().as_fd().try_clone_to_owned(),
        _ => std::io::stderr().as_fd().try_clone_to_owned(),
    };
    File::from(owned.ok()?).metadata().ok()
}

/// Follow the symlinks of `path` by hand to the path they end at (which may not exist yet).
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to =
                    std::fs::read_link(&p).with_context(|| format!("reading symlink {}", p.display()))?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

fn target_of(path: &Path) -> Result<Target> {
    match std::fs::metadata(path) {
        Ok(m) => {
            for fd in [1, 2] {
                if std_stream_metadata(fd).is_some_and(|s| file_id(&s) == file_id(&m)) {
                    return Ok(Target::Stream(fd));
                }
            }
            if m.is_dir() {
                bail!("{} is a directory, not a file", path.display());
            }
            if !m.is_file() {
                return Ok(Target::Through);
            }
            // The link is kept and the file it names is replaced.
            let real =
                std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
            Ok(Target::Replace(real))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Target::Replace(follow_links(path)?)),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Write `path` through `f`: atomically for a regular file, straight through for a special
/// file (see the module comment). Missing parent directories are created; on failure any
/// temporary file is removed and the error names `path`.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    match target_of(path)? {
        Target::Replace(real) => replace_atomically(path, &real, f),
        Target::Through => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open {} for writing", path.display()))?;
            let mut w = BufWriter::new(file);
            f(&mut w).and_then(|_| w.flush()).with_context(|| format!("cannot write {}", path.display()))
        }
        Target::Stream(fd) => {
            // Through a clone of the stream's descriptor, so the bytes land at its position
            // (after what was printed) instead of over it; Rust's own buffer is flushed first.
            use std::os::fd::AsFd;
            let owned = if fd == 1 {
                std::io::stdout().flush()?;
                std::io::stdout().as_fd().try_clone_to_owned()
            } else {
                std::io::stderr().as_fd().try_clone_to_owned()
            };
            let mut w = BufWriter::new(File::from(owned?));
            f(&mut w).and_then(|_| w.flush()).with_context(|| format!("cannot write {}", path.display()))
        }
    }
}

/// Removes the temporaries `.NAME.tmp.PID` in `dir` that a killed writer of `name` left: those
/// whose process is gone (a live one may still be writing its own). Returns what was removed.
pub fn remove_dead_temporaries(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.tmp.");
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid <= 0 || process_alive(pid) {
            continue;
        }
        let p = e.path();
        if remove_path(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Removes `p`: a directory with its contents, anything else (a symlink included, not its
/// target) as a file.
pub fn remove_path(p: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(p)?.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
}

/// Whether process `pid` exists (signal 0 probes without sending anything).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn replace_atomically(
    path: &Path,
    real: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = real.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = real.file_name().ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot write {}: creating directory {}", path.display(), dir.display()))?;
    remove_dead_temporaries(dir, &name.to_string_lossy());
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        // The replacement keeps the permissions of the file it replaces.
        if let Ok(old) = std::fs::metadata(real) {
            file.set_permissions(old.permissions())?;
        }
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    })()
    .and_then(|_| std::fs::rename(&tmp, real));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write `bytes` to `path` (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// A file a command reads, named the way the user gave it (`--checkpoint`, `input`, ...).
pub type Input<'a> = (&'a str, &'a Path);

/// The nearest existing ancestor of `path` (after following its symlinks) must be a
/// directory this process may write in, so the output can be created there.
fn check_creatable(flag: &str, path: &Path) -> Result<()> {
    let mut dir = follow_links(path)?;
    loop {
        dir = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => bail!("{flag} {}: {} is not a directory", path.display(), dir.display()),
            Err(_) if dir == Path::new(".") || dir == Path::new("/") => break,
            Err(_) => continue,
        }
    }
    if !writable(&dir) {
        bail!("{flag} {}: directory {} is not writable", path.display(), dir.display());
    }
    Ok(())
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) reads a NUL-terminated path this function owns.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether `input` is the regular file `output` or lies under the directory `output` (a
/// device or FIFO shared by an input and an output destroys nothing).
fn is_at_or_under(input: &Path, output: &Path) -> bool {
    let (Ok(i), Ok(o)) = (std::fs::metadata(input), std::fs::metadata(output)) else { return false };
    if !o.is_file() && !o.is_dir() {
        return false;
    }
    if file_id(&i) == file_id(&o) {
        return true;
    }
    match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(i), Ok(o)) => o.is_dir() && i.starts_with(o),
        _ => false,
    }
}

/// Check an output file before any work: not a directory, creatable, and not the same file as
/// any of `inputs`. A device, FIFO or symlink passes (it is written through or followed).
pub fn check_output(flag: &str, path: &Path, inputs: &[Input<'_>]) -> Result<()> {
    if path.file_name().is_none() {
        bail!("{flag} {:?}: not a file path", path.display().to_string());
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{flag} {}: is a directory, expected a file", path.display()),
        Ok(m) if !m.is_file() => {
            if !writable(path) {
                bail!("{flag} {}: not writable", path.display());
            }
        }
        _ => check_creatable(flag, path)?,
    }
    check_not_an_input(flag, path, inputs)
}

/// Check an output directory before any work: not a file, creatable, and none of `inputs` lies
/// in the entries of it the command replaces (`replaced`, names inside `dir`).
pub fn check_output_dir(flag: &str, dir: &Path, replaced: &[&str], inputs: &[Input<'_>]) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{flag} {}: not a directory", dir.display()),
        Ok(_) => {
            if !writable(dir) {
                bail!("{flag} {}: directory is not writable", dir.display());
            }
        }
        Err(_) => check_creatable(flag, dir)?,
    }
    for entry in replaced {
        check_not_an_input(flag, &dir.join(entry), inputs)?;
    }
    Ok(())
}

fn check_not_an_input(flag: &str, output: &Path, inputs: &[Input<'_>]) -> Result<()> {
    for (what, input) in inputs {
        if is_at_or_under(input, output) {
            let how = if output.is_dir() { "which lies inside it" } else { "the same file" };
            bail!(
                "{flag} {} would overwrite the {what} {} ({how}); choose another output path",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Two outputs of one command must be different files (when neither exists yet, different
/// paths after resolving their directories).
pub fn check_distinct_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    let key = |p: &Path| -> Option<PathBuf> {
        let real = follow_links(p).ok()?;
        let dir = real.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(std::fs::canonicalize(dir).ok()?.join(real.file_name()?))
    };
    for (k, (fa, a)) in outputs.iter().enumerate() {
        for (fb, b) in &outputs[k + 1..] {
            let same = is_at_or_under(a, b) || key(a).is_some_and(|x| Some(x) == key(b));
            if same {
                bail!("{fa} {} and {fb} {} name the same file", a.display(), b.display());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs: every file a command reads is opened here, so a directory, a device that never ends
// (`/dev/zero`) or a pipe is handled the same way by every command.

/// What an input path is, for messages ("a directory", "a character device", ...).
fn kind_of(m: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Open an input to read it once, front to back: a regular file, or a pipe, FIFO or device
/// (read as a stream). A directory is refused, naming the path and what was `expected`.
/// Returns the file and its size when it is a regular file (for a progress measure).
pub fn open_input(path: &Path, expected: &str) -> Result<(File, Option<u64>)> {
    let m = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if m.is_dir() {
        bail!("{}: is a directory; expected {expected}", path.display());
    }
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((f, m.is_file().then_some(m.len())))
}

/// The whole of a regular file, for formats that need all of it at once (safetensors, the
/// dataset, JSON). Anything else (a directory, `/dev/zero`, a FIFO) is refused before reading:
/// its size is unknown, so reading it whole could take unbounded memory or never end.
pub fn read_regular(path: &Path, expected: &str) -> Result<Vec<u8>> {
    let m = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !m.is_file() {
        bail!("{}: is {}; expected {expected}", path.display(), kind_of(&m));
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The longest line a text input may hold. Lines of puzzle files and JSON-lines logs are a few
/// hundred bytes; a longer one means the input is not such a file (binary data, `/dev/zero`),
/// and reading on to its end could take unbounded memory.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// The lines of a text input, read once and front to back with a bounded buffer: a line over
/// [`MAX_LINE_BYTES`], a NUL byte or invalid UTF-8 is an error naming `file:line` and what was
/// expected. `\n` and `\r\n` ends are removed.
pub struct TextLines<R> {
    reader: R,
    name: String,
    expected: &'static str,
    line: usize,
    bytes: u64,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> TextLines<R> {
    /// `name` shows the input in errors; `expected` says what it should be ("a puzzle file").
    pub fn new(reader: R, name: &Path, expected: &'static str) -> Self {
        TextLines { reader, name: name.display().to_string(), expected, line: 0, bytes: 0, buf: Vec::new() }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next line with its 1-based number, or `None` at the end of the input.
    pub fn next_line(&mut self) -> Result<Option<(usize, &str)>> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("cannot read {} (after line {})", self.name, self.line))?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes += n as u64;
        self.line += 1;
        let (name, line, expected) = (&self.name, self.line, self.expected);
        let mut s = &self.buf[..];
        let ended = s.last() == Some(&b'\n');
        if ended {
            s = &s[..s.len() - 1];
        }
        if let Some(i) = s.iter().position(|&b| b == 0) {
            bail!("{name}:{line}: a NUL byte at column {}: binary data; expected {expected}", i + 1);
        }
        if !ended && n as u64 == limit {
            bail!("{name}:{line}: line longer than {MAX_LINE_BYTES} bytes; expected {expected}");
        }
        let s = s.strip_suffix(b"\r").unwrap_or(s);
        let text = std::str::from_utf8(s).map_err(|e| {
            anyhow!(
                "{name}:{line}: not UTF-8 text (invalid byte at column {}); expected {expected}",
                e.valid_up_to() + 1
            )
        })?;
        Ok(Some((line, text)))
    }
}

/// A data set's identity for a run's resume: FNV-1a over 8-byte words (each part's tail
/// zero-padded), the total length folded in, then a final avalanche; 16 hex digits. Not
/// cryptographic: it tells rebuilt or replaced data, not forged data.
pub fn content_hash(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in parts.iter().flat_map(|p| p.chunks(8)) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= parts.iter().map(|p| p.len() as u64).sum::<u64>();
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    format!("{:016x}", h ^ (h >> 33))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_writers_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // pid 999999999 is above any pid_max: no such process.
        std::fs::create_dir(d.join(".train.tmp.999999999")).unwrap();
        std::fs::write(d.join(".train.tmp.999999999/data.bin"), b"partial").unwrap();
        std::fs::write(d.join(".out.csv.tmp.999999999"), b"partial").unwrap();
        let live = format!(".train.tmp.{}", std::process::id());
        std::fs::create_dir(d.join(&live)).unwrap();
        std::fs::write(d.join(".train.tmp.x"), b"not ours").unwrap();
        let removed = remove_dead_temporaries(d, "train");
        assert_eq!(removed, vec![d.join(".train.tmp.999999999")]);
        assert!(d.join(&live).exists() && d.join(".train.tmp.x").exists());
        assert!(d.join(".out.csv.tmp.999999999").exists(), "another name's temporary is left alone");
        write_atomic(&d.join("out.csv"), b"x\n").unwrap();
        assert!(!d.join(".out.csv.tmp.999999999").exists(), "the writer of out.csv removes it");
    }

    fn lines(input: &[u8]) -> Result<Vec<(usize, String)>> {
        let mut r = TextLines::new(input, Path::new("in.txt"), "a puzzle file");
        let mut out = Vec::new();
        while let Some((n, l)) = r.next_line()? {
            out.push((n, l.to_string()));
        }
        assert_eq!(r.bytes_read(), input.len() as u64);
        Ok(out)
    }

    #[test]
    fn text_lines_strip_line_ends_and_count_lines() {
        let got = lines(b"a\r\nb\n\nc").unwrap();
        assert_eq!(got, vec![(1, "a".into()), (2, "b".into()), (3, "".into()), (4, "c".into())]);
        assert!(lines(b"").unwrap().is_empty());
    }

    #[test]
    fn text_lines_bound_the_line_and_name_file_and_line() {
        let ok = vec![b'x'; MAX_LINE_BYTES];
        assert_eq!(lines(&[&ok[..], b"\n"].concat()).unwrap().len(), 1);
        assert_eq!(lines(&ok).unwrap().len(), 1);
        // An endless input (the shape of /dev/zero without its NULs) stops at the bound.
        let mut endless = TextLines::new(
            std::io::BufReader::new(std::io::repeat(b'x')),
            Path::new("in.txt"),
            "a puzzle file",
        );
        let e = endless.next_line().unwrap_err().to_string();
        assert!(e.contains("in.txt:1: line longer than"), "{e}");
        assert!(endless.bytes_read() <= MAX_LINE_BYTES as u64 + 1);
        let e = lines(b"ok\nx\0y\n").unwrap_err().to_string();
        assert!(e.contains("in.txt:2: a NUL byte at column 2"), "{e}");
        let mut zero = TextLines::new(
            std::io::BufReader::new(std::io::repeat(0)),
            Path::new("/dev/zero"),
            "a puzzle file",
        );
        assert!(zero.next_line().unwrap_err().to_string().contains("/dev/zero:1: a NUL byte"));
        let e = lines(b"ok\n\xffab\n").unwrap_err().to_string();
        assert!(e.contains("in.txt:2: not UTF-8 text (invalid byte at column 1)"), "{e}");
        assert!(e.contains("expected a puzzle file"), "{e}");
    }

    #[test]
    fn special_inputs_are_refused_or_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(Path::new("/dev/zero"), "a safetensors file").unwrap_err().to_string();
        assert_eq!(e, "/dev/zero: is a character device; expected a safetensors file");
        let e = read_regular(dir.path(), "a safetensors file").unwrap_err().to_string();
        assert!(e.ends_with(": is a directory; expected a safetensors file"), "{e}");
        let e = open_input(dir.path(), "a puzzle file").unwrap_err().to_string();
        assert!(e.ends_with(": is a directory; expected a puzzle file"), "{e}");
        let (_, size) = open_input(Path::new("/dev/null"), "a puzzle file").unwrap();
        assert_eq!(size, None);
        let f = dir.path().join("f");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(open_input(&f, "x").unwrap().1, Some(3));
        assert_eq!(read_regular(&f, "x").unwrap(), b"abc");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = format!("{:#}", read_regular(&a, "x").unwrap_err());
        assert!(e.contains(&a.display().to_string()), "{e}");
    }
}
