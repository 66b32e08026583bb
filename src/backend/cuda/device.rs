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
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, ValidAsZeroBits,
};
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
/// Why the emulation was chosen: no usable GPU (the reason), or it was asked for.
static EMULATION_REASON: OnceLock<String> = OnceLock::new();
static SHARED: OnceLock<std::result::Result<Arc<CudaDevice>, String>> = OnceLock::new();

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The loaded stand-in libraries (libcuda, libcublasLt), kept for the life of the process.
static EMULATION_LIBS: OnceLock<Vec<libloading::Library>> = OnceLock::new();

#[cfg(hrm_emu)]
fn load_emulation() -> std::result::Result<(), String> {
    // Loading the stand-ins by full path first makes cudarc's later dlopen("libcuda.so") and
    // dlopen("libcublasLt.so") return them (the loader matches already loaded SONAMEs).
    let dir = std::path::Path::new(env!("HRM_EMU_DIR"));
    // HRM_EMU_RACECHECK=1: the driver whose kernels check every shared-memory access for races
    // (emu/racecheck.cpp; slower), with the same cuBLASLt stand-in.
    let driver_dir = if race_check() { std::path::Path::new(env!("HRM_EMU_RACE_DIR")) } else { dir };
    let mut libs = Vec::new();
    // HRM_EMU_NO_CUBLASLT=1 (tests): a machine with the driver but without cuBLASLt
    let stand_ins: &[(&str, &std::path::Path)] = if super::libraries::emulated_cublaslt_absent() {
        &[("libcuda.so", driver_dir)]
    } else {
        &[("libcuda.so", driver_dir), ("libcublasLt.so", dir)]
    };
    for (lib, dir) in stand_ins {
        let path = dir.join(lib);
        // SAFETY: our own stand-in libraries; their initialisers only register kernels.
        let l = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load the CPU emulation {}: {e}", path.display()))?;
        libs.push(l);
    }
    let _ = EMULATION_LIBS.set(libs);
    Ok(())
}

/// Whether the emulation checks shared-memory accesses for races (`HRM_EMU_RACECHECK=1`; what
/// compute-sanitizer's racecheck does on a GPU). Read when the emulation is loaded.
pub fn race_check() -> bool {
    env_on("HRM_EMU_RACECHECK")
}

/// Where the CPU emulation's stand-in libraries were built (`None`: not built).
pub fn emulation_dir() -> Option<&'static str> {
    option_env!("HRM_EMU_DIR")
}

/// (kernel launches, cuBLASLt matmuls) the host issued so far, when running on the emulation
/// (`None` on a GPU). The same code issues the same launches on a GPU, so differences of these
/// counts measure launches per step.
pub fn emulated_launch_counts() -> Option<(u64, u64)> {
    let libs = EMULATION_LIBS.get()?;
    type Count = unsafe extern "C" fn() -> u64;
    // SAFETY: both symbols are `unsigned long long f(void)` in emu/driver.cpp, emu/cublaslt.cpp.
    unsafe {
        let launches: libloading::Symbol<Count> = libs[0].get(b"hrm_emu_launch_count\0").ok()?;
        let matmuls: libloading::Symbol<Count> = libs.get(1)?.get(b"hrm_emu_matmul_count\0").ok()?;
        Some((launches(), matmuls()))
    }
}

/// Host synchronisations (stream, context, and event waits that had to wait) so far, when
/// running on the emulation (`None` on a GPU): a training step must make none.
pub fn emulated_sync_count() -> Option<u64> {
    let libs = EMULATION_LIBS.get()?;
    type Count = unsafe extern "C" fn() -> u64;
    // SAFETY: `unsigned long long hrm_emu_sync_count(void)` in emu/driver.cpp.
    unsafe {
        let syncs: libloading::Symbol<Count> = libs[0].get(b"hrm_emu_sync_count\0").ok()?;
        Some(syncs())
    }
}

#[cfg(not(hrm_emu))]
fn load_emulation() -> std::result::Result<(), String> {
    Err("the CPU emulation was not built (no nvcc/C++ compiler at build time)".into())
}

/// The `LOCAL_RANK` of a data-parallel rank; `usize::MAX` for a single process (device 0).
static LOCAL_RANK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Opens the device of a data-parallel rank's `LOCAL_RANK` instead of device 0 (see
/// [`device_for_local_rank`]). Must come before the device is first opened.
pub fn use_ordinal(local_rank: usize) {
    LOCAL_RANK.store(local_rank, std::sync::atomic::Ordering::SeqCst);
}

/// The device a rank with `local_rank` uses when `count` devices are visible to it:
/// `local_rank % count`. With one GPU per process (a scheduler setting `CUDA_VISIBLE_DEVICES`
/// per task, as Slurm commonly does) every rank sees one device, numbered 0, whatever its local
/// rank; with all of a node's GPUs visible it is the usual one GPU per local rank.
pub fn device_for_local_rank(local_rank: usize, count: usize) -> usize {
    local_rank % count.max(1)
}

static FORCE_EMULATION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for the CPU emulation even where a GPU exists (`--device emu`). Must come before the
/// first [`select`]; returns false when the choice was already made otherwise.
pub fn request_emulation() -> bool {
    FORCE_EMULATION.store(true, std::sync::atomic::Ordering::SeqCst);
    match SELECTED.get() {
        None => true,
        Some(k) => k.as_ref().is_ok_and(|k| *k == DeviceKind::Emulation),
    }
}

/// What the real driver library says, asked without cudarc (whose loader would keep the
/// library it loads for the process).
#[derive(Clone, Debug)]
pub struct DriverProbe {
    /// `cuDriverGetVersion` (12040 is CUDA 12.4); `None` when the call failed.
    pub cuda_version: Option<i32>,
    /// The number of CUDA devices, or why they cannot be counted.
    pub devices: std::result::Result<i32, String>,
}

/// Probes the NVIDIA driver (`libcuda.so.1`): `None` when no driver library loads.
pub fn probe_driver() -> Option<DriverProbe> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuIntOut = unsafe extern "C" fn(*mut i32) -> i32;
    // The driver's own SONAME; the emulation registers itself as plain `libcuda.so`.
    // SAFETY: loading the NVIDIA driver library runs its initialisers only.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }.ok()?;
    // SAFETY: the three symbols have these C signatures in every CUDA driver.
    let probe = unsafe {
        let version: Option<libloading::Symbol<CuIntOut>> = lib.get(b"cuDriverGetVersion\0").ok();
        let cuda_version = version.and_then(|f| {
            let mut v = 0;
            (f(&mut v) == 0).then_some(v)
        });
        let devices = match (lib.get::<CuInit>(b"cuInit\0"), lib.get::<CuIntOut>(b"cuDeviceGetCount\0")) {
            (Ok(init), Ok(count)) => match init(0) {
                0 => {
                    let mut n = 0;
                    match count(&mut n) {
                        0 => Ok(n),
                        code => Err(format!("cuDeviceGetCount failed with CUDA error {code}")),
                    }
                }
                code => Err(format!("cuInit failed with CUDA error {code}")),
            },
            (Err(e), _) | (_, Err(e)) => Err(format!("libcuda.so.1 lacks a basic symbol: {e}")),
        };
        DriverProbe { cuda_version, devices }
    };
    std::mem::forget(lib); // a driver library is never unloaded
    Some(probe)
}

/// One GPU as the driver describes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// "9.0"
    pub compute_capability: String,
    pub memory_total_bytes: u64,
    /// Free now (`None`: no context could be made to ask).
    pub memory_free_bytes: Option<u64>,
}

/// Every GPU of the real driver (empty without one; the emulation is never listed). Opens
/// each device's primary context to ask for its free memory.
pub fn gpu_inventory() -> std::result::Result<Vec<GpuInfo>, String> {
    if select()? != DeviceKind::Gpu {
        return Ok(Vec::new());
    }
    let count = CudaContext::device_count().map_err(|e| format!("cuDeviceGetCount: {e:?}"))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) as usize {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("CudaContext::new({ordinal}): {e:?}"))?;
        let (major, minor) = ctx.compute_capability().unwrap_or((0, 0));
        let (free, total) = match ctx.mem_get_info() {
            Ok((free, total)) => (Some(free as u64), total as u64),
            Err(_) => (None, ctx.total_mem().unwrap_or(0) as u64),
        };
        gpus.push(GpuInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "?".into()),
            compute_capability: format!("{major}.{minor}"),
            memory_total_bytes: total,
            memory_free_bytes: free,
        });
    }
    Ok(gpus)
}

/// Decides once per process what backs cudarc. `Err` says why there is no device.
///
/// A real GPU when the driver reports one; else the CPU emulation (also when a driver is
/// installed but has no usable device), unless `HRM_REQUIRE_GPU=1`.
pub fn select() -> std::result::Result<DeviceKind, String> {
    SELECTED
        .get_or_init(|| {
            if !module::HAS_KERNELS {
                return Err("built without nvcc: no CUDA kernels (run scripts/setup-cuda)".into());
            }
            let want_gpu = env_on("HRM_REQUIRE_GPU");
            let want_emu =
                env_on("HRM_CUDA_EMU") || FORCE_EMULATION.load(std::sync::atomic::Ordering::SeqCst);
            if want_emu && !want_gpu {
                load_emulation()?;
                let _ = EMULATION_REASON
                    .set("the CPU emulation was asked for (--device emu or HRM_CUDA_EMU=1)".into());
                return Ok(DeviceKind::Emulation);
            }
            let why_not_gpu = match probe_driver().map(|p| p.devices) {
                Some(Ok(n)) if n > 0 => return Ok(DeviceKind::Gpu),
                Some(Ok(_)) => "NVIDIA driver found but no CUDA device".to_string(),
                Some(Err(e)) => format!("NVIDIA driver found but unusable: {e}"),
                None => "no NVIDIA driver (libcuda.so.1) found".to_string(),
            };
            if want_gpu {
                return Err(format!("HRM_REQUIRE_GPU=1 but {why_not_gpu}"));
            }
            load_emulation().map_err(|e| format!("{why_not_gpu}; {e}"))?;
            let _ = EMULATION_REASON.set(why_not_gpu);
            Ok(DeviceKind::Emulation)
        })
        .clone()
}

/// Test only (`HRM_TEST_EMU_AS_GPU=1`): `--device auto` and `--device cuda` treat the CPU
/// emulation as if it were a GPU, so the handling of an unusable GPU (driver too old, cuBLASLt
/// missing, no memory) is tested on machines without one. Never set it in normal use.
pub fn emulation_counts_as_gpu() -> bool {
    env_on("HRM_TEST_EMU_AS_GPU")
}

/// The CUDA version the driver supports (`cuDriverGetVersion`: 12040 is CUDA 12.4), through
/// the library [`select`] chose (the stand-in reports 13000, or `HRM_EMU_DRIVER_VERSION`).
pub fn driver_cuda_version() -> std::result::Result<i32, String> {
    select()?;
    let mut version = 0;
    // SAFETY: a driver library (or the stand-in) is present, as select() checked.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDriverGetVersion failed: {status:?}"));
    }
    Ok(version)
}

/// Refuses a driver older than the kernels need, naming both ways out.
fn check_driver_version() -> std::result::Result<(), String> {
    let Some(minimum) = module::minimum_driver_cuda_version() else { return Ok(()) };
    let found = driver_cuda_version()?;
    if found >= minimum {
        return Ok(());
    }
    Err(driver_too_old_message(found, minimum))
}

/// The message for a driver of CUDA version `found` when the kernels need `minimum`.
pub fn driver_too_old_message(found: i32, minimum: i32) -> String {
    let need = module::format_cuda_version(minimum);
    let upgrade =
        module::linux_driver_for(minimum).map_or_else(|| "a newer one".into(), |b| format!(">= {b}"));
    let mut msg = format!(
        "the NVIDIA driver supports CUDA {} (cuDriverGetVersion = {found}), but this binary's \
         kernels were built with CUDA {need} and need a driver for CUDA {need} or newer \
         (driver {upgrade}). Either upgrade the NVIDIA driver to {upgrade}",
        module::format_cuda_version(found),
    );
    const CUDA12_BUILD: i32 = 12080;
    if minimum > CUDA12_BUILD && found >= CUDA12_BUILD {
        msg.push_str(
            ", or build for CUDA 12.8: `bash scripts/setup-cuda --cuda 12` then \
             `HRM_CUDA_TOOLKIT=12 cargo build --release` (needs driver >= 570)",
        );
    } else if minimum > CUDA12_BUILD {
        msg.push_str(
            " (a CUDA 12.8 build, `bash scripts/setup-cuda --cuda 12` then \
             `HRM_CUDA_TOOLKIT=12 cargo build --release`, needs driver >= 570: this one is older still)",
        );
    }
    msg
}

/// Why the CPU emulation backs cudarc in this process (`None` when it does not).
pub fn emulation_reason() -> Option<&'static str> {
    match select() {
        Ok(DeviceKind::Emulation) => Some(EMULATION_REASON.get().map(String::as_str).unwrap_or("asked for")),
        _ => None,
    }
}

/// Why no real GPU is used in this process (`None` when one is).
pub fn gpu_unavailable_reason() -> Option<String> {
    match select() {
        Ok(DeviceKind::Gpu) => None,
        Ok(DeviceKind::Emulation) => {
            Some(format!("running on the CPU emulation: {}", emulation_reason().unwrap_or_default()))
        }
        Err(e) => Some(e),
    }
}

impl CudaDevice {
    /// Opens the device of the selected kind (GPU 0, or the one set by [`use_ordinal`]) and
    /// loads every kernel module. `Ok(None)` when there is no device (the reason is in
    /// [`select`]).
    pub fn new() -> Result<Option<Self>> {
        let kind = match select() {
            Ok(k) => k,
            Err(_) => return Ok(None),
        };
        // What a GPU node with only the driver lacks, said before anything is opened.
        check_driver_version().map_err(|e| anyhow!(e))?;
        super::libraries::ensure_cublaslt(kind).map_err(|e| anyhow!(e))?;
        // A data-parallel rank uses the device of its local rank (modulo the visible devices),
        // and says which: a rank on the wrong GPU is otherwise hard to see.
        let ordinal = match LOCAL_RANK.load(std::sync::atomic::Ordering::SeqCst) {
            usize::MAX => 0,
            local_rank => {
                let count = CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount: {e:?}"))?;
                let count = count.max(0) as usize;
                let ordinal = device_for_local_rank(local_rank, count);
                let visible = std::env::var("CUDA_VISIBLE_DEVICES")
                    .map(|v| format!(", CUDA_VISIBLE_DEVICES={v}"))
                    .unwrap_or_default();
                eprintln!(
                    "hrm cuda: LOCAL_RANK {local_rank} uses device {ordinal} of the {count} visible \
                     ({kind:?}{visible})"
                );
                ordinal
            }
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("CudaContext::new({ordinal}): {e:?}"))?;
        // One stream and no cross-stream sharing: cudarc's per-buffer event tracking (an event
        // record per argument per launch) is pure overhead here.
        // SAFETY: every buffer of this context is used on its one stream only.
        unsafe { ctx.disable_event_tracking() };
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
        let dev = CudaDevice {
            ctx,
            stream,
            kind,
            name,
            form,
            modules,
            funcs: Mutex::new(HashMap::new()),
            gemm: OnceLock::new(),
        };
        // cuBLASLt now, so a missing library is reported when the device is opened, not at
        // the first matmul of a run
        dev.gemm()?;
        Ok(Some(dev))
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

    /// The device for a kernel test. Without one it prints why and returns `None`, except
    /// that `HRM_REQUIRE_GPU=1` turns a missing GPU (or the emulation) into a panic, and
    /// `HRM_REQUIRE_NVCC=1` (CI) turns a missing device of either kind into a panic, so a
    /// kernel test never passes by skipping there.
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
                if env_on("HRM_REQUIRE_NVCC") {
                    panic!("{test}: HRM_REQUIRE_NVCC=1 but neither a GPU nor the CPU emulation runs: {why}");
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

    /// Device allocations made through this handle so far. Every buffer of the CUDA backend is
    /// allocated here ([`CudaDevice::alloc_zeros`], [`CudaDevice::alloc_uninit`],
    /// [`CudaDevice::clone_htod`]), so a steady training step can be checked to allocate
    /// nothing on any device (the driver's free-memory figure also moves with graph
    /// instantiation and library workspaces, which are not ours).
    pub fn allocations(&self) -> u64 {
        ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `n` zeroed elements on the device (at least one: the driver refuses 0 bytes).
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> std::result::Result<CudaSlice<T>, DriverError> {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stream.alloc_zeros::<T>(n.max(1))
    }

    /// `n` uninitialised elements on the device (at least one).
    ///
    /// # Safety
    /// Nothing may read an element before it is written.
    pub unsafe fn alloc_uninit<T: DeviceRepr>(
        &self,
        n: usize,
    ) -> std::result::Result<CudaSlice<T>, DriverError> {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { self.stream.alloc::<T>(n.max(1)) }
    }

    /// A device copy of `host` (which must not be empty: the driver refuses 0 bytes).
    pub fn clone_htod<T: DeviceRepr>(&self, host: &[T]) -> std::result::Result<CudaSlice<T>, DriverError> {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stream.clone_htod(host)
    }
}

/// Device allocations of the process (see [`CudaDevice::allocations`]).
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
