//! The environment variables `hrm` reads, checked once at start-up: a bad value is an error
//! naming the variable, its value and what was expected, before any work (the code that reads
//! a variable later, or the emulation's C++ stand-ins, would otherwise misread it or abort).

use anyhow::{Result, bail};

/// What a variable must hold.
#[derive(Clone, Copy)]
enum Kind {
    /// `0` or `1`.
    Switch,
    /// A whole number >= 1.
    Positive,
    /// A whole number >= 0.
    Index,
    /// A number of seconds > 0.
    Seconds,
    /// A TCP port, 1..=65535.
    Port,
    /// One of these words.
    OneOf(&'static [&'static str]),
}

/// Every variable with a value to check, with what it sets.
const VARIABLES: &[(&str, Kind, &str)] = &[
    ("HRM_CUDA_GRAPHS", Kind::Switch, "recorded graphs for training steps"),
    ("HRM_CUDA_EMU", Kind::Switch, "the CUDA backend on the CPU emulation"),
    ("HRM_CUDA_PTX", Kind::Switch, "JIT-compiled PTX instead of the sm_90a cubins"),
    ("HRM_REQUIRE_GPU", Kind::Switch, "refuse anything but a real GPU"),
    ("HRM_EMU_RACECHECK", Kind::Switch, "shared-memory race checking in the emulation"),
    ("HRM_EMU_NO_CUBLASLT", Kind::Switch, "an emulated machine without cuBLASLt"),
    ("HRM_TEST_EMU_AS_GPU", Kind::Switch, "the emulated device treated as a GPU (tests)"),
    ("HRM_EMU_DEVICE_MEM_MB", Kind::Positive, "the emulated device's memory in MiB"),
    ("HRM_EMU_DRIVER_VERSION", Kind::Positive, "the emulated driver's version, e.g. 12040"),
    ("HRM_EMU_ORDER", Kind::OneOf(&["shuffle", "forward", "reverse"]), "the emulated block order"),
    ("HRM_PROGRESS_S", Kind::Seconds, "seconds between progress lines when stderr is not a terminal"),
    ("HRM_DIST_TIMEOUT_S", Kind::Seconds, "the longest a data-parallel collective may wait"),
    ("HRM_DIST_JOIN_TIMEOUT_S", Kind::Positive, "seconds data-parallel ranks wait to join"),
    ("HRM_NCCL_EMU_TIMEOUT_S", Kind::Seconds, "the emulated NCCL's timeout"),
    ("RANK", Kind::Index, "this process's data-parallel rank"),
    ("WORLD_SIZE", Kind::Positive, "the number of data-parallel ranks"),
    ("LOCAL_RANK", Kind::Index, "this rank's GPU on its machine"),
    ("LOCAL_WORLD_SIZE", Kind::Positive, "the ranks on this machine"),
    ("MASTER_PORT", Kind::Port, "the rendezvous port of rank 0"),
];

/// Checks every variable of [`VARIABLES`] that is set (an empty value counts as unset, as the
/// readers treat it).
pub fn check() -> Result<()> {
    for &(name, kind, meaning) in VARIABLES {
        let Some(raw) = std::env::var_os(name) else { continue };
        let Some(v) = raw.to_str() else {
            bail!("{name}={raw:?}: not valid UTF-8; expected {} ({meaning})", expected(kind));
        };
        if !v.is_empty() && !valid(kind, v.trim()) {
            bail!("{name}={v:?}: expected {} ({meaning})", expected(kind));
        }
    }
    Ok(())
}

fn valid(kind: Kind, v: &str) -> bool {
    match kind {
        Kind::Switch => v == "0" || v == "1",
        Kind::Positive => v.parse::<u64>().is_ok_and(|n| n >= 1),
        Kind::Index => v.parse::<u64>().is_ok(),
        Kind::Seconds => v.parse::<f64>().is_ok_and(|s| s.is_finite() && s > 0.0),
        Kind::Port => v.parse::<u16>().is_ok_and(|p| p >= 1),
        Kind::OneOf(words) => words.contains(&v),
    }
}

fn expected(kind: Kind) -> String {
    match kind {
        Kind::Switch => "0 or 1".into(),
        Kind::Positive => "a whole number of at least 1".into(),
        Kind::Index => "a whole number of at least 0".into(),
        Kind::Seconds => "a number of seconds above 0".into(),
        Kind::Port => "a TCP port in 1..=65535".into(),
        Kind::OneOf(words) => format!("one of {}", words.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_kind() {
        assert!(valid(Kind::Switch, "1") && valid(Kind::Switch, "0") && !valid(Kind::Switch, "yes"));
        assert!(
            valid(Kind::Positive, "12040") && !valid(Kind::Positive, "0") && !valid(Kind::Positive, "lots")
        );
        assert!(valid(Kind::Seconds, "0.5") && !valid(Kind::Seconds, "-1") && !valid(Kind::Seconds, "inf"));
        assert!(valid(Kind::Port, "29500") && !valid(Kind::Port, "0") && !valid(Kind::Port, "70000"));
        assert!(valid(Kind::Index, "0") && !valid(Kind::Index, "first"));
        let order = Kind::OneOf(&["shuffle", "forward"]);
        assert!(valid(order, "forward") && !valid(order, "sideways"));
        assert!(expected(order).contains("shuffle, forward"));
    }
}
