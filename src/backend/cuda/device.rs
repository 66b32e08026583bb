//! Device selection and the per-process device handle.
//!
//! Order: `HRM_CUDA_EMU=1` forces the CPU emulation; otherwise a real driver with at least one
//! device is used; otherwise the CPU emulation when it was built; otherwise no device. Nothing
//! here panics without libcuda: cudarc's loader panics when no driver library is found, so the
//! presence of one is probed first. `HRM_REQUIRE_GPU=1` (set by `scripts/device-check`) makes
//! [`CudaDevice::for_tests`] fail instead of skipping, and refuses the emulation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::gemm::Gemm;
use super::module::{self, MODULES};

/// What runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A real GPU through the NVIDIA driver.
    Gpu,
    /// The CPU emulation (stand-in driver running host-compiled kernels).
    Emulation,
}

/// Which compiled form of the kernels to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleForm {
    /// sm_90a cubins: used on compute capability 9.0.
    Cubin,
    /// sm_90 PTX, JIT-compiled by the driver: any other device, or `HRM_CUDA_PTX=1`.
    Ptx,
}

/// A CUDA device with the kernel modules loaded, one stream, and the GEMM plan cache.
pub struct CudaDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kind: DeviceKind,
    pub name: String,
    pub form: ModuleForm,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
    gemm: OnceLock<Gemm>,
}

static SELECTED: OnceLock<std::result::Result<DeviceKind, String>> = OnceLock::new();
static SHARED: OnceLock<std::result::Result<Arc<CudaDevice>, String>> = OnceLock::new();

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

#[cfg(hrm_emu)]
fn load_emulation() -> std::result::Result<(), String> {
    // Loading the stand-ins by full path first makes cudarc's later dlopen("libcuda.so") and
    // dlopen("libcublasLt.so") return them (the loader matches already loaded SONAMEs).
    let dir = std::path::Path::new(env!("HRM_EMU_DIR"));
    for lib in ["libcuda.so", "libcublasLt.so"] {
        let path = dir.join(lib);
        // SAFETY: our own stand-in libraries; their initialisers only register kernels.
        let l = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load the CPU emulation {}: {e}", path.display()))?;
        std::mem::forget(l); // stays loaded for the life of the process
    }
    Ok(())
}

#[cfg(not(hrm_emu))]
fn load_emulation() -> std::result::Result<(), String> {
    Err("the CPU emulation was not built (no nvcc/C++ compiler at build time)".into())
}

/// Decides once per process what backs cudarc. `Err` says why there is no device.
pub fn select() -> std::result::Result<DeviceKind, String> {
    SELECTED
        .get_or_init(|| {
            if !module::HAS_KERNELS {
                return Err("built without nvcc: no CUDA kernels (run scripts/setup-cuda)".into());
            }
            let want_gpu = env_on("HRM_REQUIRE_GPU");
            if env_on("HRM_CUDA_EMU") && !want_gpu {
                load_emulation()?;
                return Ok(DeviceKind::Emulation);
            }
            // SAFETY: only tries to dlopen the driver library names.
            if unsafe { cudarc::driver::sys::is_culib_present() } {
                return match CudaContext::device_count() {
                    Ok(n) if n > 0 => Ok(DeviceKind::Gpu),
                    Ok(_) => Err("NVIDIA driver found but no CUDA device".into()),
                    Err(e) => Err(format!("NVIDIA driver found but cuInit failed: {e:?}")),
                };
            }
            if want_gpu {
                return Err("HRM_REQUIRE_GPU=1 but no NVIDIA driver (libcuda) found".into());
            }
            load_emulation()?;
            Ok(DeviceKind::Emulation)
        })
        .clone()
}

impl CudaDevice {
    /// Opens device 0 of the selected kind and loads every kernel module. `Ok(None)` when there
    /// is no device (the reason is in [`select`]).
    pub fn new() -> Result<Option<Self>> {
        let kind = match select() {
            Ok(k) => k,
            Err(_) => return Ok(None),
        };
        let ctx = CudaContext::new(0).map_err(|e| anyhow!("CudaContext::new(0): {e:?}"))?;
        let stream = ctx.new_stream().map_err(|e| anyhow!("new_stream: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "?".into());
        let cc = ctx.compute_capability().map_err(|e| anyhow!("{e:?}"))?;
        let form = if cc == (9, 0) && !env_on("HRM_CUDA_PTX") { ModuleForm::Cubin } else { ModuleForm::Ptx };
        let mut modules = HashMap::new();
        for m in MODULES {
            let image = match form {
                ModuleForm::Cubin => Ptx::from_binary(m.cubin_sm90a.to_vec()),
                ModuleForm::Ptx => Ptx::from_src(m.ptx),
            };
            let loaded = ctx
                .load_module(image)
                .map_err(|e| anyhow!("loading kernel module {} ({form:?}): {e:?}", m.name))?;
            modules.insert(m.name, loaded);
        }
        Ok(Some(CudaDevice {
            ctx,
            stream,
            kind,
            name,
            form,
            modules,
            funcs: Mutex::new(HashMap::new()),
            gemm: OnceLock::new(),
        }))
    }

    /// One device shared by every caller in the process (tests run in parallel threads).
    pub fn shared() -> std::result::Result<Arc<CudaDevice>, String> {
        SHARED
            .get_or_init(|| match CudaDevice::new() {
                Ok(Some(d)) => {
                    eprintln!("hrm cuda: {} ({:?}, {:?} modules)", d.name, d.kind, d.form);
                    Ok(Arc::new(d))
                }
                Ok(None) => Err(select().err().unwrap_or_default()),
                Err(e) => Err(format!("{e:#}")),
            })
            .clone()
    }

    /// The device for a kernel test: `None` (after printing why) when there is none, unless
    /// `HRM_REQUIRE_GPU=1`, which turns a missing GPU (or the emulation) into a panic.
    pub fn for_tests(test: &str) -> Option<Arc<CudaDevice>> {
        let require = env_on("HRM_REQUIRE_GPU");
        match CudaDevice::shared() {
            Ok(d) => {
                if require && d.kind != DeviceKind::Gpu {
                    panic!("{test}: HRM_REQUIRE_GPU=1 but running on {}", d.name);
                }
                Some(d)
            }
            Err(why) => {
                if require {
                    panic!("{test}: HRM_REQUIRE_GPU=1 but no GPU: {why}");
                }
                eprintln!("{test}: no CUDA device, skipping: {why}");
                None
            }
        }
    }

    /// A kernel by module (file stem) and name, cached.
    pub fn func(&self, module: &'static str, kernel: &'static str) -> Result<CudaFunction> {
        let mut funcs = self.funcs.lock().unwrap();
        if let Some(f) = funcs.get(kernel) {
            return Ok(f.clone());
        }
        let m = self.modules.get(module).with_context(|| format!("no kernel module {module}"))?;
        let f = m.load_function(kernel).map_err(|e| anyhow!("kernel {kernel} in module {module}: {e:?}"))?;
        funcs.insert(kernel, f.clone());
        Ok(f)
    }

    /// The cuBLASLt GEMM wrapper (created on first use).
    pub fn gemm(&self) -> Result<&Gemm> {
        if let Some(g) = self.gemm.get() {
            return Ok(g);
        }
        let g = Gemm::new(self.stream.clone())?;
        Ok(self.gemm.get_or_init(|| g))
    }

    /// Runs `f` (which enqueues work on [`CudaDevice::stream`]) between two CUDA events and
    /// returns the elapsed device time in milliseconds (host time under the emulation, where
    /// work completes as it is issued).
    pub fn time_ms(&self, f: impl FnOnce(&CudaDevice) -> Result<()>) -> Result<f32> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags).map_err(|e| anyhow!("event: {e}"))?;
        let end = self.ctx.new_event(flags).map_err(|e| anyhow!("event: {e}"))?;
        start.record(&self.stream).map_err(|e| anyhow!("event record: {e}"))?;
        f(self)?;
        end.record(&self.stream).map_err(|e| anyhow!("event record: {e}"))?;
        start.elapsed_ms(&end).map_err(|e| anyhow!("event elapsed: {e}"))
    }

    /// An additional stream on this device's context (work on it is ordered independently).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(|e| anyhow!("new_stream: {e}"))
    }

    /// Waits for all work on the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| anyhow!("stream synchronize: {e:?}"))
    }
}
