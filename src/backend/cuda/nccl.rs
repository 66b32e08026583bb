//! NCCL collectives of the CUDA backend, through cudarc's `nccl` feature (the library is loaded
//! at run time). On a GPU machine that is the real `libnccl` (the `nvidia-nccl-cu13` wheel that
//! `scripts/setup-cuda --nccl` installs; its directory must be on `LD_LIBRARY_PATH`, which
//! `hrm train --nproc N` arranges for its ranks). Under the CPU emulation it is the stand-in
//! `OUT_DIR/emu/libnccl.so.2` built from `emu/nccl.cpp`, loaded here by full path so cudarc's
//! own `dlopen("libnccl.so")` returns it (the same trick as the stand-in driver).
//!
//! Every collective is issued on the device's one stream and waited for, so a failure (a peer
//! that died, an aborted communicator) is reported by the call that met it, with NCCL's own
//! last-error text.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaSlice, DevicePtr};
use cudarc::nccl::{result, sys};

use super::device::{CudaDevice, DeviceKind, select};
use crate::backend::collective::{Collective, GroupComm, ProcessGroup};

static LOADED: OnceLock<std::result::Result<DeviceKind, String>> = OnceLock::new();

#[cfg(hrm_emu)]
fn load_stand_in() -> std::result::Result<(), String> {
    let path = std::path::Path::new(env!("HRM_EMU_DIR")).join("libnccl.so.2");
    // SAFETY: our own stand-in library; it has no initialisers beyond the C++ runtime's.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("cannot load the NCCL stand-in {}: {e}", path.display()))?;
    std::mem::forget(lib); // stays loaded for the life of the process
    Ok(())
}

#[cfg(not(hrm_emu))]
fn load_stand_in() -> std::result::Result<(), String> {
    Err("the CPU emulation (and its NCCL stand-in) was not built".into())
}

/// Makes sure cudarc will find a libnccl that matches the device in use: the stand-in under
/// the emulation, the real library on a GPU (an error naming the fix when it is missing,
/// instead of cudarc's panic).
pub fn ensure_loaded() -> Result<DeviceKind> {
    LOADED
        .get_or_init(|| {
            let kind = select()?;
            match kind {
                DeviceKind::Emulation => load_stand_in()?,
                // SAFETY: probing loads and unloads the library by name.
                DeviceKind::Gpu => {
                    if !unsafe { sys::is_culib_present() } {
                        return Err("NCCL (libnccl.so) not found: install it with `bash \
                                    scripts/setup-cuda --nccl` and put the directory it prints on \
                                    LD_LIBRARY_PATH (`hrm train --nproc N` does that by itself)"
                            .into());
                    }
                }
            }
            Ok(kind)
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// NCCL's version as (major, minor, patch).
pub fn version() -> Result<(i32, i32, i32)> {
    ensure_loaded()?;
    let v = result::get_nccl_version().map_err(|e| anyhow!("ncclGetVersion: {e:?}"))?;
    Ok((v / 10000, (v % 10000) / 100, v % 100))
}

/// A fresh NCCL unique id (rank 0 makes it and hands it to the others).
pub fn unique_id() -> Result<[u8; 128]> {
    ensure_loaded()?;
    let id = result::get_uniqueid().map_err(|e| anyhow!("ncclGetUniqueId: {}", describe(e.0, None)))?;
    Ok(id.internal.map(|c| c as u8))
}

fn describe(code: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> String {
    // SAFETY: both functions return static or communicator-owned C strings.
    let s = unsafe { CStr::from_ptr(sys::ncclGetErrorString(code)) }.to_string_lossy().into_owned();
    let last = unsafe { CStr::from_ptr(sys::ncclGetLastError(comm.unwrap_or(std::ptr::null_mut()))) }
        .to_string_lossy()
        .into_owned();
    if last.is_empty() { format!("{s} ({code:?})") } else { format!("{s} ({code:?}): {last}") }
}

/// One NCCL communicator (this process's rank of the group).
pub struct NcclComm {
    comm: sys::ncclComm_t,
    dev: Arc<CudaDevice>,
    aborted: AtomicBool,
}

// SAFETY: NCCL communicators may be used from any thread; ncclCommAbort is documented as safe
// to call from another thread while an operation is in flight.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// Joins the group described by `group` (blocks until every rank has joined).
    pub fn init(dev: &Arc<CudaDevice>, group: &ProcessGroup) -> Result<NcclComm> {
        ensure_loaded()?;
        dev.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let id = sys::ncclUniqueId { internal: group.nccl_id.map(|b| b as ::core::ffi::c_char) };
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is written by NCCL on success.
        unsafe { result::comm_init_rank(&mut comm, group.world as i32, id, group.rank as i32) }.map_err(
            |e| anyhow!("ncclCommInitRank (rank {} of {}): {}", group.rank, group.world, describe(e.0, None)),
        )?;
        let c = NcclComm { comm, dev: dev.clone(), aborted: AtomicBool::new(false) };
        // SAFETY: a live communicator.
        let (n, r) = unsafe { (result::comm_count(comm), result::comm_user_rank(comm)) };
        let (n, r) = (n.map_err(|e| anyhow!("{e:?}"))?, r.map_err(|e| anyhow!("{e:?}"))?);
        if n as usize != group.world || r as usize != group.rank {
            bail!("NCCL communicator says rank {r} of {n}, expected rank {} of {}", group.rank, group.world);
        }
        Ok(c)
    }

    fn check(&self, what: &str, r: std::result::Result<result::NcclStatus, result::NcclError>) -> Result<()> {
        r.map(|_| ()).map_err(|e| anyhow!("{what}: {}", describe(e.0, Some(self.comm))))
    }

    fn sync(&self, what: &str) -> Result<()> {
        self.dev.stream.synchronize().map_err(|e| anyhow!("{what}: waiting for the stream: {e:?}"))
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.dev.stream.cu_stream() as sys::cudaStream_t
    }

    /// In-place sum of one buffer across the ranks.
    pub fn all_reduce_sum(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        let n = buf.len();
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        // SAFETY: `ptr` holds `n` f32 on this device; NCCL allows sendbuff == recvbuff.
        let r = unsafe {
            result::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                n,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream(),
            )
        };
        self.check("ncclAllReduce", r)?;
        self.sync("ncclAllReduce")
    }

    /// Out-of-place sum: `dst` (on every rank) = the sum over the ranks of `src`.
    pub fn all_reduce_sum_into(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        if src.len() != dst.len() {
            bail!("ncclAllReduce: {} values into a buffer of {}", src.len(), dst.len());
        }
        let n = src.len();
        let (sp, _s) = src.device_ptr(&self.dev.stream);
        let (dp, _d) = dst.device_ptr(&self.dev.stream);
        // SAFETY: both hold `n` f32 on this device.
        let r = unsafe {
            result::all_reduce(
                sp as *const _,
                dp as *mut _,
                n,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream(),
            )
        };
        self.check("ncclAllReduce", r)?;
        self.sync("ncclAllReduce")
    }

    /// In-place broadcast of one buffer from `root`.
    pub fn broadcast(&self, buf: &mut CudaSlice<f32>, root: usize) -> Result<()> {
        let n = buf.len();
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        // SAFETY: as above; in place is allowed.
        let r = unsafe {
            result::broadcast(
                ptr as *const _,
                ptr as *mut _,
                n,
                sys::ncclDataType_t::ncclFloat32,
                root as i32,
                self.comm,
                self.stream(),
            )
        };
        self.check("ncclBroadcast", r)?;
        self.sync("ncclBroadcast")
    }

    /// In-place all-gather: `buf` holds `world` chunks; this rank's chunk is its input.
    pub fn all_gather(&self, buf: &mut CudaSlice<f32>, rank: usize, world: usize) -> Result<()> {
        let n = buf.len();
        if !n.is_multiple_of(world) {
            bail!("all-gather of {n} values over {world} ranks: not a whole number of chunks");
        }
        let chunk = n / world;
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        let send = ptr + (rank * chunk * 4) as u64;
        // SAFETY: in place (sendbuff = recvbuff + rank * chunk), as NCCL documents.
        let r = unsafe {
            result::all_gather(
                send as *const _,
                ptr as *mut _,
                chunk,
                sys::ncclDataType_t::ncclFloat32,
                self.comm,
                self.stream(),
            )
        };
        self.check("ncclAllGather", r)?;
        self.sync("ncclAllGather")
    }

    /// Several in-place sums as one NCCL group call.
    pub fn all_reduce_sum_group(&self, bufs: &mut [&mut CudaSlice<f32>]) -> Result<()> {
        result::group_start().map_err(|e| anyhow!("ncclGroupStart: {e:?}"))?;
        let mut first: Result<()> = Ok(());
        let mut syncs = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            let n = b.len();
            let (ptr, s) = b.device_ptr(&self.dev.stream);
            syncs.push(s);
            // SAFETY: as in all_reduce_sum.
            let r = unsafe {
                result::all_reduce(
                    ptr as *const _,
                    ptr as *mut _,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    self.stream(),
                )
            };
            if first.is_ok() {
                first = self.check("ncclAllReduce", r);
            }
        }
        let end = result::group_end();
        first?;
        self.check("ncclGroupEnd", end)?;
        drop(syncs);
        self.sync("ncclAllReduce")
    }
}

impl GroupComm for NcclComm {
    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: a live communicator; abort may run concurrently with a blocked call.
            let _ = unsafe { result::comm_abort(self.comm) };
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if !self.aborted.load(Ordering::SeqCst) {
            // SAFETY: a live communicator, no operation in flight (we own it).
            let _ = unsafe { result::comm_destroy(self.comm) };
        }
    }
}

/// The communicator of `group` on `dev`, joined on first use.
pub fn comm_of(dev: &Arc<CudaDevice>, group: &ProcessGroup) -> Result<Arc<dyn GroupComm>> {
    group.comm_or_init(|| Ok(Arc::new(NcclComm::init(dev, group)?) as Arc<dyn GroupComm>))
}

/// [`crate::backend::Backend::collective_f32`] for the CUDA backend. Several buffers are
/// reduced as one flat buffer (copied in and out on the device), as data-parallel training
/// reduces its gradients in one call; a single buffer is reduced in place.
pub fn collective(
    dev: &Arc<CudaDevice>,
    group: &ProcessGroup,
    op: Collective,
    bufs: &mut [&mut CudaSlice<f32>],
) -> Result<()> {
    if group.world == 1 && bufs.is_empty() {
        return Ok(());
    }
    if let Some(why) = group.abort_reason() {
        bail!("{why}");
    }
    let comm = comm_of(dev, group)?;
    let comm = comm.as_any().downcast_ref::<NcclComm>().expect("the CUDA backend's communicator");
    let run = |r: Result<()>| -> Result<()> {
        // A collective that failed because the group was aborted reports why it was aborted.
        r.map_err(|e| match group.abort_reason() {
            Some(why) => anyhow!("{why} ({e:#})"),
            None => e,
        })
    };
    match op {
        Collective::AllGather => {
            for b in bufs.iter_mut() {
                run(comm.all_gather(b, group.rank, group.world))?;
            }
            Ok(())
        }
        Collective::Sum | Collective::Broadcast { .. } => {
            if bufs.len() == 1 {
                return run(match op {
                    Collective::Sum => comm.all_reduce_sum(bufs[0]),
                    Collective::Broadcast { root } => comm.broadcast(bufs[0], root),
                    Collective::AllGather => unreachable!(),
                });
            }
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let stream = &dev.stream;
            let mut flat =
                stream.alloc_zeros::<f32>(total).map_err(|e| anyhow!("allocating {total} f32: {e:?}"))?;
            let mut off = 0;
            for b in bufs.iter() {
                let n = b.len();
                stream.memcpy_dtod(&**b, &mut flat.slice_mut(off..off + n)).map_err(|e| anyhow!("{e:?}"))?;
                off += n;
            }
            run(match op {
                Collective::Sum => comm.all_reduce_sum(&mut flat),
                Collective::Broadcast { root } => comm.broadcast(&mut flat, root),
                Collective::AllGather => unreachable!(),
            })?;
            let mut off = 0;
            for b in bufs.iter_mut() {
                let n = b.len();
                stream.memcpy_dtod(&flat.slice(off..off + n), &mut **b).map_err(|e| anyhow!("{e:?}"))?;
                off += n;
            }
            Ok(())
        }
    }
}
