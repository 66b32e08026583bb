//! Checks `hrm train` and `hrm demo` make before any work: the model config (the one stored in
//! `--init` weights by default), `run.json`, the dataset split, and the checkpoint a resume
//! starts from (a corrupt newest checkpoint names the previous complete one).

use super::train::TrainArgs;
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::model::checkpoint::{CONFIG_KEY, TensorFile};
use crate::sudoku::dataset::{DATA_FILE, MANIFEST_FILE};
use crate::train::Trainer;
use crate::train::rundir::previous_checkpoint;
use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The config stored in a checkpoint's metadata.
pub fn checkpoint_config(path: &Path) -> Result<ModelConfig> {
    let f = TensorFile::open(path)?;
    let json = f.metadata().get(CONFIG_KEY).ok_or_else(|| {
        anyhow!("{}: no model config in the safetensors metadata; pass --preset or --config", f.path())
    })?;
    ModelConfig::from_json_str(json).with_context(|| format!("{}: config in metadata", f.path()))
}

/// The model of a new run: `--config`, else `--preset`, else the config stored in `--init`
/// weights, else the paper's Sudoku model; then `--halt-exploration-prob`.
pub fn model_config(a: &TrainArgs) -> Result<ModelConfig> {
    let (mut cfg, origin) = match (&a.config, &a.preset, &a.init) {
        (Some(p), _, _) => (ModelConfig::from_json_file(p)?, p.display().to_string()),
        (None, Some(name), _) => (ModelConfig::preset(name)?, format!("preset {name}")),
        (None, None, Some(w)) => {
            let cfg = checkpoint_config(w)?;
            eprintln!("model config: the one stored in {}", w.display());
            (cfg, w.display().to_string())
        }
        (None, None, None) => {
            let name = a.arch.unwrap_or(crate::config::Arch::Hrm).pick("sudoku", "trm-sudoku-mlp");
            (ModelConfig::preset(name)?, format!("preset {name}"))
        }
    };
    crate::config::Arch::check(a.arch, &cfg, &origin)?;
    if let Some(p) = a.halt_exploration_prob {
        cfg.halt_exploration_prob = p;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// How errors about the model of a new run name it (the data decides what it must read:
/// `TrainData::check_model`).
pub fn model_source(a: &TrainArgs) -> String {
    a.config.as_ref().map_or("the model".to_string(), |p| p.display().to_string())
}

/// A JSON file of the run, with the file named when it is malformed.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = crate::fsutil::read_regular(path, "a JSON file")?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: malformed JSON", path.display()))
}

/// The training split a `--data` path means: a split directory (or its `data.bin`) as is; a
/// dataset root from `hrm data build` when it holds exactly one training split (`train/`); in
/// the reference's layout (`hrm data maze build`), a split folder or the root's `train/`.
pub fn train_split(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("--data {}: no such file or directory", path.display());
    }
    if path.is_file() || path.join(DATA_FILE).exists() || path.join(crate::dataset::META_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    if path.join("train").join(crate::dataset::META_FILE).exists() {
        return Ok(path.join("train"));
    }
    let mut splits = Vec::new();
    for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let p = e?.path();
        if p.join(DATA_FILE).exists() && p.join(MANIFEST_FILE).exists() {
            let split = read_json::<serde_json::Value>(&p.join(MANIFEST_FILE))
                .ok()
                .and_then(|m| m.get("split").and_then(|s| s.as_str()).map(str::to_string));
            if split.as_deref() == Some("train") {
                splits.push(p);
            }
        }
    }
    splits.sort();
    match splits.len() {
        1 => {
            let s = splits.pop().expect("one split");
            eprintln!("--data {}: using its training split {}", path.display(), s.display());
            Ok(s)
        }
        0 => bail!(
            "--data {}: no {DATA_FILE} here and no training split below it; expected a split \
             directory from `hrm data build` (DIR/train, holding {DATA_FILE} and {MANIFEST_FILE})",
            path.display()
        ),
        _ => bail!(
            "--data {}: {} training splits below it ({}); pass the one to train on",
            path.display(),
            splits.len(),
            splits.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Restore the trainer from `ckpt`. When it cannot be read (truncated, corrupt, NaN/Inf), the
/// error says so and names the previous complete checkpoint and how to resume from it.
/// `shard` = (rank, world size) of a data-parallel run, (0, 1) for a single process.
pub fn resume_trainer<B: Backend>(
    be: &B,
    run: &Path,
    ckpt: &Path,
    explicit: bool,
    shard: (usize, usize),
) -> Result<Trainer<B>> {
    let check_model = |t: Trainer<B>| -> Result<Trainer<B>> {
        crate::model::checkpoint::load_checkpoint(&ckpt.join("model.safetensors"), Some(&t.cfg.model))?;
        Ok(t)
    };
    let r = crate::train::checkpoint::resume_shard(be, ckpt, shard.0, shard.1);
    // Another world size is a usage error, not damage: say only that.
    if let Err(e) = &r
        && format!("{e}").contains("world size")
    {
        return r;
    }
    r.and_then(check_model).map_err(|e| {
        let what = format!("checkpoint {} is corrupt or truncated", ckpt.display());
        let hint = match previous_checkpoint(run, ckpt) {
            Some(p) => format!(
                "{what}; the previous complete checkpoint is {}: resume from it with \
                 `hrm train --resume {} --resume-from {}`",
                p.display(),
                run.display(),
                p.display()
            ),
            None if explicit => what,
            None => format!("{what}, and the run has no earlier complete checkpoint"),
        };
        e.context(hint)
    })
}
