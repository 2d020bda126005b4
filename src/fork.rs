//! Detecting use after `fork()`. A SQLite connection must never cross a fork
//! (Python's multiprocessing forks by default on Linux). A `pthread_atfork` child
//! handler bumps a generation counter, so the check on every checkout is one load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use crate::error::{Error, Result};

static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that only touches an atomic (async-signal-safe).
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
}

/// Which process this is: bumped in every forked child. (The pool keys its worker
/// threads by it: a child needs threads of its own.)
pub fn generation() -> u64 {
    install();
    GENERATION.load(Ordering::SeqCst)
}

/// Where (which process generation) a store was opened.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    generation: u64,
    pid: u32,
}

impl Origin {
    pub fn here() -> Origin {
        Origin { generation: generation(), pid: std::process::id() }
    }

    pub fn check(&self) -> Result<()> {
        if GENERATION.load(Ordering::Relaxed) == self.generation {
            Ok(())
        } else {
            Err(Error::Forked { opened_in: self.pid, used_in: std::process::id() })
        }
    }
}
