//! NCCL collectives of the CUDA backend, through cudarc's `nccl` feature (the library is loaded
//! at run time). On a GPU machine that is the real `libnccl` (the `nvidia-nccl-cu13` wheel that
//! `scripts/setup-cuda --nccl` installs; its directory must be on `LD_LIBRARY_PATH`, which
//! `hrm train --nproc N` arranges for its ranks). Under the CPU emulation it is the stand-in
//! `OUT_DIR/emu/libnccl.so.2` built from `emu/nccl.cpp`, loaded here by full path so cudarc's
//! own `dlopen("libnccl.so")` returns it (the same trick as the stand-in driver).
//!
//! Failures as a GPU reports them: NCCL puts a communicator's failures (a peer that died, a
//! network error) in `ncclCommGetAsyncError`, while the call that issued the collective
//! returned `ncclSuccess`, and a collective cut short by `ncclCommAbort` still completes its
//! stream work, with partial data. So every collective is issued, then waited for (host side:
//! the non-blocking communicator's `ncclInProgress`; device side: an event on the stream, polled)
//! and its result is trusted only once the asynchronous error says success and the
//! communicator was not aborted meanwhile.
//!
//! The communicator is non-blocking (`ncclCommInitRankConfig` with `blocking = 0`): no NCCL
//! call waits for other ranks, so its start-up can be given up (a rank that died before
//! joining) and an abort from the watchdog thread never waits behind a blocked call. Aborting
//! frees the communicator, so the handle lives behind a lock that every call holds: the
//! abort and the calls never overlap, and a call after the abort is an error that never
//! touches the freed handle.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

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

/// `NCCL_CONFIG_INITIALIZER` of the NCCL 2.30 header that cudarc's bindings follow, with
/// `blocking = 0`. `size` and `version` tell the library which layout of the struct it is
/// given; every other field stays "undefined" (NCCL's defaults).
fn non_blocking_config() -> sys::ncclConfig_t {
    const UNDEF: i32 = i32::MIN; // NCCL_CONFIG_UNDEF_INT
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: 2 * 10000 + 30 * 100, // NCCL_VERSION(2, 30, 0)
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

static PLANT_SKIP_ASYNC_ERROR_CHECK: AtomicBool = AtomicBool::new(false);
static PLANT_CALL_AFTER_ABORT: AtomicBool = AtomicBool::new(false);

/// Planted bugs for the tests of `tests/distributed.rs`, which must then fail:
/// `skip_async_error_check` trusts a collective once it left the host (the asynchronous error
/// is ignored, as if only the call's own result were checked); `call_after_abort` keeps using
/// the handle after `ncclCommAbort` freed it.
#[doc(hidden)]
pub fn plant_fault(skip_async_error_check: bool, call_after_abort: bool) {
    PLANT_SKIP_ASYNC_ERROR_CHECK.store(skip_async_error_check, Ordering::SeqCst);
    PLANT_CALL_AFTER_ABORT.store(call_after_abort, Ordering::SeqCst);
}

/// Waiting for NCCL without a blocking call: yields first (a GPU collective takes well under
/// a millisecond), then sleeps a little longer each time up to 1 ms.
struct Backoff(u32);

impl Backoff {
    fn wait(&mut self) {
        self.0 += 1;
        match self.0 {
            0..200 => std::thread::yield_now(),
            200..2000 => std::thread::sleep(Duration::from_micros(50)),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

enum Handle {
    Live(sys::ncclComm_t),
    /// `ncclCommAbort` freed it (or start-up failed and was aborted).
    Aborted,
}

/// One NCCL communicator (this process's rank of the group).
pub struct NcclComm {
    handle: Mutex<Handle>,
    dev: Arc<CudaDevice>,
    rank: usize,
    world: usize,
}

// SAFETY: the handle is only used under its lock (one NCCL call at a time, from any thread);
// NCCL communicators are not tied to the thread that made them.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

fn is_pending(r: sys::ncclResult_t) -> bool {
    r == sys::ncclResult_t::ncclInProgress
}

fn is_ok_or_pending(r: sys::ncclResult_t) -> bool {
    r == sys::ncclResult_t::ncclSuccess || is_pending(r)
}

impl NcclComm {
    /// Joins the group described by `group`: a non-blocking start-up, polled until every rank
    /// has joined. Gives up (aborting the half-made communicator) when the group is aborted
    /// meanwhile (a peer died: the health channel names it) or after `group.timeout`.
    pub fn init(dev: &Arc<CudaDevice>, group: &ProcessGroup) -> Result<NcclComm> {
        ensure_loaded()?;
        dev.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let what = format!("ncclCommInitRankConfig (rank {} of {})", group.rank, group.world);
        let id = sys::ncclUniqueId { internal: group.nccl_id.map(|b| b as ::core::ffi::c_char) };
        let mut config = non_blocking_config();
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` and `config` outlive the call; NCCL writes the handle at once, even
        // while the start-up goes on in the background.
        let r = unsafe {
            sys::ncclCommInitRankConfig(&mut comm, group.world as i32, id, group.rank as i32, &mut config)
        };
        if !is_ok_or_pending(r) || comm.is_null() {
            bail!("{what}: {}", describe(r, None));
        }
        let c = NcclComm {
            handle: Mutex::new(Handle::Live(comm)),
            dev: dev.clone(),
            rank: group.rank,
            world: group.world,
        };
        let start = Instant::now();
        let mut backoff = Backoff(0);
        loop {
            if let Some(why) = group.abort_reason() {
                c.abort();
                bail!("{what} given up: {why}");
            }
            if start.elapsed() > group.timeout {
                let last = c.last_error();
                c.abort();
                bail!(
                    "{what} given up after {:.0} s (HRM_DIST_TIMEOUT_S): not every rank joined{}",
                    group.timeout.as_secs_f64(),
                    if last.is_empty() { String::new() } else { format!(" ({last})") }
                );
            }
            match c.async_error("ncclCommInitRankConfig") {
                Ok(true) => backoff.wait(),
                Ok(false) => break,
                Err(e) => {
                    c.abort();
                    return Err(e);
                }
            }
        }
        let (n, r) = c.with_live("ncclCommCount", |comm| {
            // SAFETY: a live communicator.
            unsafe { (result::comm_count(comm), result::comm_user_rank(comm)) }
        })?;
        let (n, r) = (
            n.map_err(|e| anyhow!("ncclCommCount: {e:?}"))?,
            r.map_err(|e| anyhow!("ncclCommUserRank: {e:?}"))?,
        );
        if n as usize != group.world || r as usize != group.rank {
            c.abort();
            bail!("NCCL communicator says rank {r} of {n}, expected rank {} of {}", group.rank, group.world);
        }
        Ok(c)
    }

    fn lock(&self) -> MutexGuard<'_, Handle> {
        // A panic elsewhere while holding the lock leaves the handle as it was: still usable.
        self.handle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `call` on the live handle, holding the lock (so an abort cannot free it meanwhile);
    /// an error, without touching the handle, once it was aborted.
    fn with_live<T>(&self, what: &str, call: impl FnOnce(sys::ncclComm_t) -> T) -> Result<T> {
        let handle = self.lock();
        match *handle {
            Handle::Live(comm) => Ok(call(comm)),
            Handle::Aborted => bail!(
                "{what}: the NCCL communicator (rank {} of {}) was aborted; its result is not used",
                self.rank,
                self.world
            ),
        }
    }

    /// NCCL's last error text for this communicator (empty when aborted).
    fn last_error(&self) -> String {
        self.with_live("ncclGetLastError", |comm| {
            // SAFETY: a live communicator; the string is copied before the lock is released.
            unsafe { CStr::from_ptr(sys::ncclGetLastError(comm)) }.to_string_lossy().into_owned()
        })
        .unwrap_or_default()
    }

    /// The communicator's asynchronous state: `Ok(true)` while an operation is still being
    /// issued (`ncclInProgress`), `Ok(false)` when done, an error when it failed or was aborted.
    fn async_error(&self, what: &str) -> Result<bool> {
        let (r, state, text) = self.with_live(what, |comm| {
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator; `state` outlives the call.
            let r = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
            let failed = if r != sys::ncclResult_t::ncclSuccess { r } else { state };
            let text = (!is_ok_or_pending(failed)).then(|| describe(failed, Some(comm)));
            (r, state, text)
        })?;
        if let Some(text) = text
            && !PLANT_SKIP_ASYNC_ERROR_CHECK.load(Ordering::Relaxed)
        {
            let call = if r != sys::ncclResult_t::ncclSuccess {
                "ncclCommGetAsyncError"
            } else {
                "asynchronous error"
            };
            bail!("{what} on rank {} of {}: {call}: {text}", self.rank, self.world);
        }
        Ok(is_pending(state))
    }

    /// Issues one NCCL call (or a group) and waits for it to complete: see the module comment.
    fn run(&self, what: &str, issue: impl FnOnce(sys::ncclComm_t) -> sys::ncclResult_t) -> Result<()> {
        let issued = self.with_live(what, |comm| {
            let r = issue(comm);
            (!is_ok_or_pending(r)).then(|| describe(r, Some(comm)))
        })?;
        if let Some(text) = issued {
            bail!("{what} on rank {} of {}: {text}", self.rank, self.world);
        }
        self.complete(what)
    }

    /// Waits for the operation just issued and checks that it succeeded.
    fn complete(&self, what: &str) -> Result<()> {
        // Host side: a non-blocking communicator may still be issuing it.
        let mut backoff = Backoff(0);
        while self.async_error(what)? {
            backoff.wait();
        }
        // Device side: the stream's work, polled through an event so that a failure or an
        // abort (from the watchdog thread) is seen while the kernels run.
        let done = self
            .dev
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(|e| anyhow!("{what}: recording an event: {e:?}"))?;
        let mut backoff = Backoff(0);
        while !done.try_is_complete().map_err(|e| anyhow!("{what}: waiting for the stream: {e:?}"))? {
            self.async_error(what)?;
            backoff.wait();
        }
        // A collective that failed or was aborted completes its stream work too: only the
        // asynchronous error (and a handle that is still live) says the data is whole.
        self.async_error(what).map(|_| ())
    }

    /// In-place sum of one buffer across the ranks.
    pub fn all_reduce_sum(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        let n = buf.len();
        let stream = self.stream();
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        self.run("ncclAllReduce", |comm| {
            // SAFETY: `ptr` holds `n` f32 on this device; NCCL allows sendbuff == recvbuff.
            unsafe {
                sys::ncclAllReduce(
                    ptr as *const _,
                    ptr as *mut _,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }

    /// Out-of-place sum: `dst` (on every rank) = the sum over the ranks of `src`.
    pub fn all_reduce_sum_into(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        if src.len() != dst.len() {
            bail!("ncclAllReduce: {} values into a buffer of {}", src.len(), dst.len());
        }
        let n = src.len();
        let stream = self.stream();
        let (sp, _s) = src.device_ptr(&self.dev.stream);
        let (dp, _d) = dst.device_ptr(&self.dev.stream);
        self.run("ncclAllReduce", |comm| {
            // SAFETY: both hold `n` f32 on this device.
            unsafe {
                sys::ncclAllReduce(
                    sp as *const _,
                    dp as *mut _,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }

    /// In-place broadcast of one buffer from `root`.
    pub fn broadcast(&self, buf: &mut CudaSlice<f32>, root: usize) -> Result<()> {
        let n = buf.len();
        let stream = self.stream();
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        self.run("ncclBroadcast", |comm| {
            // SAFETY: as above; in place is allowed.
            unsafe {
                sys::ncclBroadcast(
                    ptr as *const _,
                    ptr as *mut _,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    comm,
                    stream,
                )
            }
        })
    }

    /// In-place all-gather: `buf` holds `world` chunks; this rank's chunk is its input.
    pub fn all_gather(&self, buf: &mut CudaSlice<f32>, rank: usize, world: usize) -> Result<()> {
        let n = buf.len();
        if !n.is_multiple_of(world) {
            bail!("all-gather of {n} values over {world} ranks: not a whole number of chunks");
        }
        let chunk = n / world;
        let stream = self.stream();
        let (ptr, _sync) = buf.device_ptr(&self.dev.stream);
        let send = ptr + (rank * chunk * 4) as u64;
        self.run("ncclAllGather", |comm| {
            // SAFETY: in place (sendbuff = recvbuff + rank * chunk), as NCCL documents.
            unsafe {
                sys::ncclAllGather(
                    send as *const _,
                    ptr as *mut _,
                    chunk,
                    sys::ncclDataType_t::ncclFloat32,
                    comm,
                    stream,
                )
            }
        })
    }

    /// Several in-place sums as one NCCL group call (issued and waited for as one).
    pub fn all_reduce_sum_group(&self, bufs: &mut [&mut CudaSlice<f32>]) -> Result<()> {
        let stream = self.stream();
        let mut ptrs = Vec::with_capacity(bufs.len());
        let mut syncs = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            let n = b.len();
            let (ptr, s) = b.device_ptr(&self.dev.stream);
            ptrs.push((ptr, n));
            syncs.push(s);
        }
        let r = self.run("ncclAllReduce (group)", |comm| {
            // SAFETY: group calls take no communicator; the calls between them are as in
            // all_reduce_sum. The group is ended even when a call inside failed.
            unsafe {
                let start = sys::ncclGroupStart();
                if !is_ok_or_pending(start) {
                    return start;
                }
                let mut first = sys::ncclResult_t::ncclSuccess;
                for &(ptr, n) in &ptrs {
                    let r = sys::ncclAllReduce(
                        ptr as *const _,
                        ptr as *mut _,
                        n,
                        sys::ncclDataType_t::ncclFloat32,
                        sys::ncclRedOp_t::ncclSum,
                        comm,
                        stream,
                    );
                    if !is_ok_or_pending(r) && is_ok_or_pending(first) {
                        first = r;
                    }
                }
                let end = sys::ncclGroupEnd();
                if is_ok_or_pending(first) { end } else { first }
            }
        });
        drop(syncs);
        r
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.dev.stream.cu_stream() as sys::cudaStream_t
    }
}

impl GroupComm for NcclComm {
    /// Frees the communicator (`ncclCommAbort`); waits for a call in progress on another
    /// thread (each returns at once on a non-blocking communicator). Later calls are errors.
    fn abort(&self) {
        let mut handle = self.lock();
        if let Handle::Live(comm) = *handle {
            // SAFETY: a live communicator, no other call on it (we hold the lock).
            let _ = unsafe { sys::ncclCommAbort(comm) };
            if !PLANT_CALL_AFTER_ABORT.load(Ordering::Relaxed) {
                *handle = Handle::Aborted;
            }
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for NcclComm {
    /// The orderly end: `ncclCommFinalize` (polled: it flushes what is in flight), then
    /// `ncclCommDestroy`; a finalize that fails or takes more than 10 s ends in an abort.
    fn drop(&mut self) {
        let Handle::Live(comm) = *self.lock() else { return };
        // SAFETY: a live communicator, no call in flight (we own it).
        let finalized = unsafe { sys::ncclCommFinalize(comm) };
        let mut flushed = is_ok_or_pending(finalized);
        let start = Instant::now();
        let mut backoff = Backoff(0);
        while flushed {
            match self.async_error("ncclCommFinalize") {
                Ok(true) if start.elapsed() < Duration::from_secs(10) => backoff.wait(),
                Ok(false) => break,
                _ => flushed = false,
            }
        }
        if flushed {
            // SAFETY: as above; the handle is not used afterwards.
            let _ = unsafe { sys::ncclCommDestroy(comm) };
        } else {
            self.abort();
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
