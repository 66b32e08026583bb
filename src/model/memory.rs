//! How many bytes a model needs, estimated from its config before anything is allocated, so an
//! absurd size (hidden_size 1e9, expansion 1e12, H_layers 1e9, batch 1e8) is refused with a
//! figure instead of an allocation failure, an abort or an endless swap.
//!
//! All arithmetic is in f64: the sizes in question overflow `usize`, and an estimate needs no
//! more than f64's precision. The figures are lower bounds (what the parameters, the optimizer
//! state and the tensors a step must hold at once take), so a refusal is certain to be right;
//! allocator overhead and scratch buffers come on top.

use super::checkpoint::TensorFile;
use crate::backend::DeviceChoice;
use crate::config::{ModelConfig, PosEncodings};
use anyhow::{Result, bail};
use std::path::Path;

/// Number of f32 values in the parameter set (weights, puzzle embedding table and buffers):
///
/// ```text
/// P = blocks * (4 d^2 + 3 d i)                      attention qkv + o, SwiGLU gate_up + down
///   + 2 V d + 2 d + 2                               token embedding, lm head, q head
///   + num_puzzle_identifiers * puzzle_emb_ndim      puzzle embedding table
///   + S d  (learned positions only) + 2 d           positions, H_init and L_init
/// ```
///
/// with d = hidden_size, i = SwiGLU width (`ModelConfig::intermediate_size`), V = vocab_size,
/// S = total sequence length, blocks = H_layers + L_layers (TRM: L_layers). TRM's token-mixing
/// SwiGLU (`mlp_t`) replaces 4 d^2 by 3 S t (t its width, `ModelConfig::token_intermediate_size`).
pub fn param_count(cfg: &ModelConfig) -> f64 {
    let d = cfg.hidden_size as f64;
    let i = intermediate(cfg);
    let layers = blocks(cfg);
    let mixer = if cfg.uses_mlp_t() { 3.0 * seq(cfg) * token_intermediate(cfg) } else { 4.0 * d * d };
    let pos = match cfg.pos_encodings {
        PosEncodings::Learned => seq(cfg) * d,
        PosEncodings::Rope | PosEncodings::None => 0.0,
    };
    layers * (mixer + 3.0 * d * i)
        + 2.0 * cfg.vocab_size as f64 * d
        + 2.0 * d
        + 2.0
        + cfg.num_puzzle_identifiers as f64 * cfg.puzzle_emb_ndim as f64
        + pos
        + 2.0 * d
}

/// `ModelConfig::intermediate_size` without the `usize` overflow.
fn intermediate(cfg: &ModelConfig) -> f64 {
    let inter = (cfg.expansion * cfg.hidden_size as f64 * 2.0 / 3.0).round();
    (inter / 256.0).ceil() * 256.0
}

fn seq(cfg: &ModelConfig) -> f64 {
    let fitted = (cfg.puzzle_emb_ndim as f64 / cfg.hidden_size.max(1) as f64).ceil();
    let prefix = match cfg.puzzle_emb_len {
        Some(n) if cfg.is_trm() && n > 0 => n as f64,
        None if cfg.is_trm() => 16.0,
        _ => fitted,
    };
    cfg.seq_len as f64 + prefix
}

/// `ModelConfig::token_intermediate_size` without the `usize` overflow.
fn token_intermediate(cfg: &ModelConfig) -> f64 {
    ((cfg.expansion * seq(cfg) * 2.0 / 3.0).round() / 256.0).ceil() * 256.0
}

/// Blocks holding parameters: H_layers + L_layers (TRM: its one network's L_layers).
fn blocks(cfg: &ModelConfig) -> f64 {
    if cfg.is_trm() { cfg.L_layers as f64 } else { cfg.H_layers as f64 + cfg.L_layers as f64 }
}

/// What a job needs: bytes on the host and, on a GPU, on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Need {
    pub host: f64,
    pub device: f64,
}

/// What the memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// ACT training with batch `batch` (EMA weights when `ema`).
    Train { batch: usize, ema: bool },
    /// Evaluation / inference with batch `batch`.
    Eval { batch: usize },
}

/// The estimate, with `a` bytes per activation element (4 on the CPU, 2 in bf16 on a GPU),
/// rows R = batch * S and P from [`param_count`]:
///
/// ```text
/// parameters   4P host copy + 4P backend copy
/// training     + 4P gradients + 8P AdamATan2 moments (+ 4P EMA)
///              + a R (7 d + 3 i) (H_layers + L_layers)    saved block activations of the
///                                                          one-step gradient (qkv 3d, attention,
///                                                          projection, norm, output 4d, SwiGLU 3i)
///                                                          (TRM: (L_cycles + 1) L_layers blocks,
///                                                          the whole last recursion; with
///                                                          `mlp_t` a block also keeps
///                                                          d (3 + 3 t / S) per row)
/// evaluation   + a R (7 d + 3 i)                           one block's working set
/// both         + 2 a R d + 4 R V                           ACT carry z_H, z_L and the logits
/// ```
///
/// On the CPU everything is host memory; on a GPU the host holds the 4P host copy and the rest
/// is device memory.
pub fn estimate(cfg: &ModelConfig, purpose: Purpose, on_gpu: bool) -> Need {
    let p = param_count(cfg);
    let d = cfg.hidden_size as f64;
    let i = intermediate(cfg);
    let v = cfg.vocab_size as f64;
    let a = if on_gpu { 2.0 } else { 4.0 };
    let layers = if cfg.is_trm() { (cfg.L_cycles as f64 + 1.0) * cfg.L_layers as f64 } else { blocks(cfg) };
    let token = if cfg.uses_mlp_t() { d * (3.0 + 3.0 * token_intermediate(cfg) / seq(cfg)) } else { 0.0 };
    let block = 7.0 * d + 3.0 * i + token;
    let (batch, state, saved_blocks) = match purpose {
        Purpose::Train { batch, ema } => (batch as f64, 4.0 * p * (3.0 + ema as u8 as f64), layers),
        Purpose::Eval { batch } => (batch as f64, 0.0, 1.0),
    };
    let rows = batch * seq(cfg);
    let work = 4.0 * p + state + a * rows * block * saved_blocks + 2.0 * a * rows * d + 4.0 * rows * v;
    if on_gpu { Need { host: 4.0 * p, device: work } } else { Need { host: 4.0 * p + work, device: 0.0 } }
}

/// Bytes the OS can give this process now, if known: the least of the machine's
/// `MemAvailable` (/proc/meminfo), the room left under the cgroup's memory limit (containers,
/// batch schedulers) and the address space left under `RLIMIT_AS` (`ulimit -v`). Past any of
/// them an allocation fails, and in Rust a failed allocation aborts: hence checked before.
pub fn host_available() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_mem_available(&t));
    [machine, cgroup_room(), address_space_room()].into_iter().flatten().min()
}

/// `memory.max - memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    let dir = Path::new("/sys/fs/cgroup").join(rel);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
    // "max" (no limit) does not parse: no bound from here.
    let (max, current) = (read("memory.max")?, read("memory.current")?);
    Some(max.saturating_sub(current))
}

/// `RLIMIT_AS` minus the address space already mapped (`VmSize`), when a limit is set.
fn address_space_room() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct passed; nothing else is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let used = line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024;
    Some(lim.rlim_cur.saturating_sub(used))
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free memory of the device behind `be` (`None` for the CPU).
pub fn device_available<B: crate::backend::Backend>(be: &B) -> Option<u64> {
    be.device_memory_free().map(|(free, _)| free)
}

/// Human-readable bytes.
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = b;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if x >= 1e6 { format!("{b:.3e} B") } else { format!("{x:.1} {}", UNITS[u]) }
}

fn describe(cfg: &ModelConfig, purpose: Purpose) -> String {
    let what = match purpose {
        Purpose::Train { batch, .. } => format!("training with batch {batch}"),
        Purpose::Eval { batch: 0 } => "the parameters".to_string(),
        Purpose::Eval { batch } => format!("evaluation with batch {batch}"),
    };
    format!(
        "{what} (hidden_size {}, expansion {}, H_layers {}, L_layers {}, {:.3e} parameters)",
        cfg.hidden_size,
        cfg.expansion,
        cfg.H_layers,
        cfg.L_layers,
        param_count(cfg)
    )
}

/// Refuse a job that holds `items` things of about `bytes_each` bytes at once when the host
/// cannot give that much (f64 so that an absurd count cannot overflow). `what` says what is
/// counted, naming the flag that sets it.
pub fn check_items(what: &str, items: f64, bytes_each: f64) -> Result<()> {
    let need = items * bytes_each;
    if let Some(avail) = host_available()
        && need > avail as f64
    {
        bail!(
            "{what}: about {} of memory at once; {} is available on this machine",
            fmt_bytes(need),
            fmt_bytes(avail as f64)
        );
    }
    Ok(())
}

/// Refuse when `need` bytes exceed `avail` (where `avail` is known).
pub fn ensure(need: f64, avail: Option<u64>, place: &str, what: &str) -> Result<()> {
    if let Some(avail) = avail
        && need > avail as f64
    {
        bail!(
            "{what} needs at least {} of {place} memory; {} is available. Use a smaller model or batch",
            fmt_bytes(need),
            fmt_bytes(avail as f64)
        );
    }
    Ok(())
}

/// Whether `device` will run on a GPU (asks the driver once; `auto` without a GPU is the CPU).
fn on_gpu(device: DeviceChoice) -> bool {
    match device {
        DeviceChoice::Cpu => false,
        // bf16 on the emulated device, checked by `check_device` against both its capacity
        // and the host memory it lives in.
        DeviceChoice::Emu => true,
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => {
            matches!(
                crate::backend::cuda::device::select(),
                Ok(crate::backend::cuda::device::DeviceKind::Gpu)
            )
        }
    }
}

/// The host-side check, before anything is allocated: on the CPU the whole estimate, on a GPU
/// the host copy of the parameters (the device side is [`check_device`], once the device is
/// open).
pub fn check_host(cfg: &ModelConfig, purpose: Purpose, device: DeviceChoice) -> Result<()> {
    let need = estimate(cfg, purpose, on_gpu(device));
    ensure(need.host, host_available(), "host", &describe(cfg, purpose))
}

/// The device-side check (a no-op off a GPU).
pub fn check_device<B: crate::backend::Backend>(be: &B, cfg: &ModelConfig, purpose: Purpose) -> Result<()> {
    let Some(free) = device_available(be) else { return Ok(()) };
    let need = estimate(cfg, purpose, true);
    ensure(need.device, Some(free), "free GPU", &describe(cfg, purpose))?;
    // The emulated device's memory is this machine's memory.
    if matches!(
        crate::backend::cuda::device::select(),
        Ok(crate::backend::cuda::device::DeviceKind::Emulation)
    ) {
        ensure(need.device, host_available(), "host (the emulated GPU's)", &describe(cfg, purpose))?;
    }
    Ok(())
}

/// A checkpoint file cannot hold fewer bytes than its config's parameters take at 2 bytes each
/// (bf16/f16, the narrowest dtype accepted): refuse a config that claims more before any
/// tensor is read or any shape is computed.
pub fn check_file_size(file: &TensorFile, cfg: &ModelConfig, file_bytes: usize) -> Result<()> {
    let need = 2.0 * param_count(cfg);
    if need > file_bytes as f64 {
        bail!(
            "{}: the config ({:.3e} parameters) needs at least {} but the file holds {} bytes",
            file.path(),
            param_count(cfg),
            fmt_bytes(need),
            file_bytes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_model() {
        for cfg in [ModelConfig::sudoku(), ModelConfig::tiny(), ModelConfig::demo()] {
            let specs: usize = crate::model::tensor_specs(&cfg).iter().map(|s| s.numel()).sum();
            assert_eq!(param_count(&cfg), specs as f64);
        }
    }

    #[test]
    fn meminfo_is_parsed() {
        let t = "MemTotal:       32000000 kB\nMemFree: 1 kB\nMemAvailable:   23161808 kB\n";
        assert_eq!(parse_mem_available(t), Some(23161808 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn absurd_sizes_are_refused_with_the_figure() {
        let mut cfg = ModelConfig::tiny();
        cfg.hidden_size = 1_000_000_000;
        let need = estimate(&cfg, Purpose::Train { batch: 1, ema: false }, false).host;
        let e = ensure(need, Some(64 << 30), "host", "x").unwrap_err().to_string();
        assert!(e.contains("needs at least") && e.contains("64.0 GiB"), "{e}");
    }
}
