//! Helpers for tests that drive the binary over a directory: a byte-for-byte snapshot of a
//! tree and the difference between two, to show that a command touched only its outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every path under a directory with its kind and content.
pub type Snapshot = BTreeMap<PathBuf, String>;

/// Everything under `root`: each path with its kind and content (length and hash of a file,
/// target of a symlink).
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            let what = if t.is_symlink() {
                format!("symlink to {}", std::fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if t.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                format!("file of {} bytes, hash {:x}", bytes.len(), fnv(&bytes))
            } else {
                format!("special {t:?}")
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// What changed between two snapshots, apart from paths under `except` (relative paths).
pub fn changes(before: &Snapshot, after: &Snapshot, except: &[&str]) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| !except.iter().any(|e| k.starts_with(e)))
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect()
}
