//! SIGINT and SIGTERM during training (Ctrl-C, `timeout`, a scheduler's preemption): the step
//! under way finishes, a checkpoint is written, and the run ends with [`Interrupted`], which
//! the binary turns into the conventional exit status 128 + signal. A second signal stops at
//! once (the last complete checkpoint is still there: they are written atomically).
//!
//! Only a single-process run installs the handler: the ranks of a data-parallel run would see
//! the signal at different steps, and a checkpoint needs all of them; their launcher stops
//! them instead.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// The run ended early on a signal, after writing its checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The exit status a shell reports for a process ended by this signal.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// Handlers installed for its lifetime; the previous ones come back on drop.
pub struct Guard {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl Guard {
    pub fn install() -> Guard {
        RECEIVED.store(0, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and calls _exit.
        let previous = [libc::SIGINT, libc::SIGTERM].map(|s| (s, unsafe { libc::signal(s, handler) }));
        for (s, h) in previous {
            if h == libc::SIG_IGN {
                // Ignored by whoever started us (`nohup`, a background job): stays ignored.
                // SAFETY: restores the disposition found.
                unsafe { libc::signal(s, h) };
            }
        }
        Guard { previous }
    }

    /// The signal received since `install`, if any.
    pub fn received(&self) -> Option<Interrupted> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(Interrupted { signal }),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (s, h) in self.previous {
            // SAFETY: restores the handler that was there before `install`.
            unsafe { libc::signal(s, h) };
        }
    }
}
