//! Guards around a run directory: one trainer at a time (an advisory lock), no silent mixing of
//! a new run into an old one, and the choice of the checkpoint a resume starts from.

use super::checkpoint::{MARKER, checkpoints_dir, complete_checkpoints};
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Files and directories that make a directory a run (what `--overwrite` removes).
pub const RUN_ENTRIES: &[&str] = &[
    "config.json",
    "run.json",
    "metrics.jsonl",
    "metrics.jsonl.damaged",
    "demo.json",
    "checkpoints",
    "plots",
    "analysis",
];

/// An exclusive advisory lock (`flock`) on `RUN/.lock`, held while the value lives. The OS
/// drops it when the process exits in any way (kill -9 included), so a dead trainer never
/// leaves a stale lock; the file itself stays and means nothing on its own.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Lock `run` (created if missing), failing at once if another process holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run).with_context(|| format!("creating run directory {}", run.display()))?;
        let path = run.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        lock_exclusive(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                anyhow::anyhow!(
                    "run directory {} is in use by another trainer (lock {} is held); wait for it to \
                     finish or stop it first",
                    run.display(),
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("locking {}", path.display()))
            }
        })?;
        Ok(RunLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(unix)]
fn lock_exclusive(f: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this process owns; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(unix))]
fn lock_exclusive(_f: &File) -> std::io::Result<()> {
    Ok(())
}

/// The run files already in `dir` (empty when `dir` is missing or holds no run).
pub fn existing_run_entries(dir: &Path) -> Vec<&'static str> {
    RUN_ENTRIES.iter().copied().filter(|e| dir.join(e).exists()).collect()
}

/// Make `dir` ready for a new run: refuse when it already holds one, unless `overwrite`, in
/// which case the old run's files are removed first: only what the project writes (see
/// [`remove_run_entry`]); other files in `dir`, `checkpoints/` and `plots/` are left alone.
/// Call with the run's lock held.
/// `resume_hint` is the command that continues such a run, when there is one.
pub fn prepare_new_run(dir: &Path, overwrite: bool, resume_hint: Option<&str>) -> Result<()> {
    let found = existing_run_entries(dir);
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        // A run stopped before its first checkpoint has nothing to continue from.
        let resumable = complete_checkpoints(dir).is_ok_and(|c| !c.is_empty());
        let resume = match resume_hint {
            Some(h) if resumable => format!("continue it with `{h} {}`, ", dir.display()),
            Some(_) => "it stopped before its first checkpoint, so there is nothing to resume; ".into(),
            None => String::new(),
        };
        bail!(
            "{} already holds a run ({}); {resume}pass a new directory, or add --overwrite to delete \
             the old run first",
            dir.display(),
            found.join(", "),
        );
    }
    for e in found {
        remove_run_entry(&dir.join(e))?;
    }
    eprintln!("--overwrite: removed the previous run in {}", dir.display());
    Ok(())
}

/// Remove one of [`RUN_ENTRIES`] for `--overwrite`: a file by its name; in `checkpoints/` only
/// the checkpoint directories a run writes (`step_N`, `discarded_step_N*` and the temporary
/// `.step_N.tmp.PID`), in `plots/` only the charts `hrm plot` draws, in `analysis/` only the
/// demo's analysis files; the directory itself goes
/// only when nothing else is left in it.
fn remove_run_entry(p: &Path) -> Result<()> {
    let context = || format!("--overwrite: removing {}", p.display());
    if !p.is_dir() {
        return std::fs::remove_file(p).with_context(context);
    }
    let ours: fn(&str) -> bool = if p.ends_with("plots") {
        |name| crate::analysis::plot::PLOT_FILES.contains(&name)
    } else if p.ends_with("analysis") {
        |name| crate::analysis::DEMO_FILES.contains(&name)
    } else {
        is_checkpoint_dir_name
    };
    for e in std::fs::read_dir(p).with_context(context)? {
        let e = e.with_context(context)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !ours(&name) {
            continue;
        }
        let q = e.path();
        crate::fsutil::remove_path(&q).with_context(|| format!("--overwrite: removing {}", q.display()))?;
    }
    let left: Vec<String> = std::fs::read_dir(p)
        .with_context(context)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if left.is_empty() {
        std::fs::remove_dir(p).with_context(context)?;
    } else {
        eprintln!("--overwrite: kept {} in {} (not written by hrm)", left.join(", "), p.display());
    }
    Ok(())
}

/// Names of the checkpoint directories a run writes: `step_N`, `discarded_step_N` (with an
/// optional `_K` suffix) and the temporary `.step_N.tmp.PID`.
fn is_checkpoint_dir_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let step = |s: &str| s.strip_prefix("step_").is_some_and(digits);
    if let Some(rest) = name.strip_prefix("discarded_") {
        return step(rest) || rest.rsplit_once('_').is_some_and(|(s, k)| step(s) && digits(k));
    }
    if let Some((s, pid)) = name.strip_prefix('.').and_then(|n| n.split_once(".tmp.")) {
        return step(s) && digits(pid);
    }
    step(name)
}

/// Removes the temporary checkpoint directories (`.step_N.tmp.PID`) that a killed trainer left
/// in `run`. Call with the run's lock held: no live trainer of this run is writing one then.
pub fn remove_stale_temporaries(run: &Path) -> Result<Vec<PathBuf>> {
    let dir = checkpoints_dir(run);
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(removed) };
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && is_checkpoint_dir_name(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// The checkpoint a resume of `run` starts from: `explicit` (a checkpoint directory with its
/// `COMPLETE` marker) or the newest complete one.
pub fn resume_checkpoint(run: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(c) = explicit {
        if !c.join(MARKER).exists() {
            bail!(
                "--resume-from {}: not a complete checkpoint directory (no {MARKER} marker); \
                 complete checkpoints of {}: {}",
                c.display(),
                run.display(),
                list(run)
            );
        }
        // Compared after resolving symlinks: a link into another run is that other run.
        let parent = std::fs::canonicalize(c).ok().and_then(|p| p.parent().map(Path::to_path_buf));
        let own = std::fs::canonicalize(checkpoints_dir(run)).ok();
        if parent.is_none() || parent != own {
            bail!(
                "--resume-from {}: not a checkpoint of {} (expected a directory in {}); resuming \
                 one run from another's weights would mix the two runs: start a new run with \
                 `hrm train --init CHECKPOINT/model.safetensors --out NEW_RUN` instead; complete \
                 checkpoints of {}: {}",
                c.display(),
                run.display(),
                checkpoints_dir(run).display(),
                run.display(),
                list(run)
            );
        }
        return Ok(c.to_path_buf());
    }
    complete_checkpoints(run)?.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no complete checkpoint to resume from (the run stopped before its first); \
                 start it again with `hrm train --data DATA --out {} --overwrite` and the flags it \
                 was started with",
            run.display(),
            run.display()
        )
    })
}

fn list(run: &Path) -> String {
    match complete_checkpoints(run) {
        Ok(v) if !v.is_empty() => {
            v.iter().map(|(_, p)| p.display().to_string()).collect::<Vec<_>>().join(", ")
        }
        _ => "none".into(),
    }
}

/// The complete checkpoint before `ckpt` in `run`, if any.
pub fn previous_checkpoint(run: &Path, ckpt: &Path) -> Option<PathBuf> {
    let all = complete_checkpoints(run).ok()?;
    let k = all.iter().position(|(_, p)| p == ckpt)?;
    k.checked_sub(1).map(|j| all[j].1.clone())
}

/// Resuming from an older checkpoint forks the run at `step`: the complete checkpoints after it
/// are renamed `discarded_step_N` (kept on disk, no longer picked by a resume or pruned). A
/// name already taken by an earlier fork gets the first free suffix `_2`, `_3`, ...: a set
/// aside checkpoint is never deleted.
pub fn discard_checkpoints_after(run: &Path, step: u64) -> Result<Vec<PathBuf>> {
    let mut moved = Vec::new();
    for (s, p) in complete_checkpoints(run)? {
        if s > step {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let dir = checkpoints_dir(run);
            let to = std::iter::once(format!("discarded_{name}"))
                .chain((2..).map(|k| format!("discarded_{name}_{k}")))
                .map(|n| dir.join(n))
                .find(|p| std::fs::symlink_metadata(p).is_err())
                .expect("an unbounded sequence of names has a free one");
            std::fs::rename(&p, &to).with_context(|| format!("renaming {}", p.display()))?;
            moved.push(to);
        }
    }
    Ok(moved)
}
