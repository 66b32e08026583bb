//! Kernel modules embedded by `build.rs`: PTX for sm_90 and cubins for sm_90a, plus the
//! `ptxas -v` resource table.

/// One `kernels/<name>.cu` file, compiled.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    pub name: &'static str,
    pub ptx: &'static str,
    pub cubin_sm90a: &'static [u8],
}

/// Resource usage of one kernel as reported by `ptxas -v` for sm_90a.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: &'static str,
    pub file: &'static str,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// True when the crate was built with nvcc (kernels embedded).
pub const HAS_KERNELS: bool = cfg!(hrm_kernels);

/// Finds a module by file stem ("norm", "loss", ...).
pub fn module(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// The CUDA toolkit the kernels were built with ("13.0", "12.8"; `None` without kernels).
pub const TOOLKIT: Option<&str> = option_env!("HRM_KERNEL_TOOLKIT");

/// What the embedded kernels are compiled for.
pub const ARCHITECTURES: &str = "PTX for compute_90 (JIT-compiled by the driver on any GPU of \
                                 compute capability 9.0 or newer), cubin for sm_90a (used on 9.0)";

/// A CUDA version as the driver API encodes it: 1000 * major + 10 * minor (13.0 -> 13000).
pub fn encode_cuda_version(text: &str) -> Option<i32> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(major.parse::<i32>().ok()? * 1000 + minor.parse::<i32>().ok()? * 10)
}

/// "13.0" from 13000.
pub fn format_cuda_version(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

/// The oldest driver (as the CUDA version it supports) that loads these kernels: PTX and
/// cubins of toolkit X.Y need a driver for CUDA X.Y or newer.
pub fn minimum_driver_cuda_version() -> Option<i32> {
    TOOLKIT.and_then(encode_cuda_version)
}

/// The first Linux driver branch that supports a CUDA version (NVIDIA's release notes, table
/// 3), for messages that tell what to install.
pub fn linux_driver_for(cuda_version: i32) -> Option<u32> {
    const BRANCHES: &[(i32, u32)] = &[
        (12000, 525),
        (12010, 530),
        (12020, 535),
        (12030, 545),
        (12040, 550),
        (12050, 555),
        (12060, 560),
        (12080, 570),
        (12090, 575),
        (13000, 580),
        (13010, 590),
    ];
    BRANCHES.iter().find(|(v, _)| *v >= cuda_version).map(|(_, branch)| *branch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions() {
        assert_eq!(encode_cuda_version("13.0"), Some(13000));
        assert_eq!(encode_cuda_version("12.8"), Some(12080));
        assert_eq!(encode_cuda_version("junk"), None);
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(linux_driver_for(13000), Some(580));
        assert_eq!(linux_driver_for(12080), Some(570));
        assert_eq!(linux_driver_for(12070), Some(570)); // there was no 12.7
    }
}
