//! The process group of data-parallel training as the backends see it: this process's rank,
//! the world size, the NCCL unique id the ranks agreed on, and the backend's communicator,
//! created on the first collective. [`crate::backend::Backend::collective_f32`] runs one
//! [`Collective`] over f32 buffers; the CUDA backend does it with NCCL
//! (`src/backend/cuda/nccl.rs`), the CPU backend has none (world size 1 only).

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A collective over the same list of buffers on every rank, in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// Element-wise sum over the ranks; every rank gets the sum.
    Sum,
    /// Every rank gets `root`'s values.
    Broadcast { root: usize },
    /// Each buffer holds `world` equal chunks; rank r contributes chunk r and every rank gets
    /// all chunks.
    AllGather,
}

/// A backend's communicator, kept in its group (so aborting the group reaches it).
pub trait GroupComm: Send + Sync {
    /// Stops the communicator; a collective blocked on it (in another thread) returns an error.
    fn abort(&self);
    fn as_any(&self) -> &dyn Any;
}

/// Rank, world size and NCCL unique id of a data-parallel run, and its communicator.
pub struct ProcessGroup {
    pub rank: usize,
    pub world: usize,
    /// The 128-byte NCCL unique id made by rank 0 and handed out at the rendezvous.
    pub nccl_id: [u8; 128],
    /// The longest the communicator's start-up may take (the run's `HRM_DIST_TIMEOUT_S`): a
    /// rank that never joins makes it fail instead of waiting forever.
    pub timeout: Duration,
    comm: OnceLock<Arc<dyn GroupComm>>,
    aborted: AtomicBool,
    /// Why the group was aborted (a dead or failing peer), for the error of a collective.
    reason: Mutex<Option<String>>,
}

impl ProcessGroup {
    pub fn new(rank: usize, world: usize, nccl_id: [u8; 128], timeout: Duration) -> Self {
        ProcessGroup {
            rank,
            world,
            nccl_id,
            timeout,
            comm: OnceLock::new(),
            aborted: AtomicBool::new(false),
            reason: Mutex::new(None),
        }
    }

    /// The backend's communicator, made by `init` on first use.
    pub fn comm_or_init(
        &self,
        init: impl FnOnce() -> anyhow::Result<Arc<dyn GroupComm>>,
    ) -> anyhow::Result<Arc<dyn GroupComm>> {
        if let Some(c) = self.comm.get() {
            return Ok(c.clone());
        }
        let c = init()?;
        let c = self.comm.get_or_init(|| c).clone();
        if self.is_aborted() {
            c.abort();
        }
        Ok(c)
    }

    /// Aborts the communicator (from any thread); the first reason given is kept.
    pub fn abort(&self, reason: &str) {
        {
            let mut r = self.reason.lock().unwrap();
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
        if let Some(c) = self.comm.get() {
            c.abort();
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Why the group was aborted, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        self.reason.lock().unwrap().clone()
    }
}
