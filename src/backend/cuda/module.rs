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
