//! A deadline on what the server does not bound: PostgreSQL disables `statement_timeout`
//! before it commits, so a COMMIT waiting for a synchronous standby that is gone waits
//! forever. A write arms a deadline for its connection; if the write is still running
//! when it passes, one process-wide watch thread sends the server a cancel request,
//! which ends the wait (the server then warns that the transaction committed locally
//! but may not be replicated: `Session::unreplicated`).
//!
//! Arming costs a mutex and, only when the new deadline is the earliest, a wake-up of
//! the watch thread; the thread sleeps until the earliest deadline, never polls. A forked
//! child starts a watch thread of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::{CancelToken, NoTls};

struct Watch {
    armed: BTreeMap<(Instant, u64), CancelToken>,
    next: u64,
    /// When the watch thread will next look; None: it waits for a wake-up.
    wakes_at: Option<Instant>,
    /// The process the watch thread runs in.
    pid: u32,
}

struct Shared {
    watch: Mutex<Watch>,
    changed: Condvar,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Arc::new(Shared {
            watch: Mutex::new(Watch { armed: BTreeMap::new(), next: 0, wakes_at: None, pid: 0 }),
            changed: Condvar::new(),
        })
    })
}

/// A deadline armed for one connection's call; dropping it disarms it.
pub struct Armed {
    key: (Instant, u64),
}

impl Drop for Armed {
    fn drop(&mut self) {
        shared().watch.lock().armed.remove(&self.key);
    }
}

/// Cancels the query running on `token`'s connection if it is still running after `limit`.
pub fn arm(token: &CancelToken, limit: Duration) -> Armed {
    let shared = shared();
    let deadline = Instant::now() + limit;
    let mut watch = shared.watch.lock();
    if watch.pid != std::process::id() {
        // First use, or a forked child (threads do not survive fork).
        watch.pid = std::process::id();
        watch.wakes_at = None;
        let for_thread = Arc::clone(shared);
        std::thread::Builder::new().name("consensus-db-pg-deadline".into()).spawn(move || run(&for_thread)).ok();
    }
    watch.next += 1;
    let key = (deadline, watch.next);
    watch.armed.insert(key, token.clone());
    if watch.wakes_at.is_none_or(|at| deadline < at) {
        shared.changed.notify_one();
    }
    Armed { key }
}

fn run(shared: &Shared) {
    let mut watch = shared.watch.lock();
    loop {
        let now = Instant::now();
        let due: Vec<(Instant, u64)> = watch.armed.range(..(now, u64::MAX)).map(|(k, _)| *k).collect();
        let tokens: Vec<CancelToken> = due.iter().filter_map(|k| watch.armed.remove(k)).collect();
        if !tokens.is_empty() {
            drop(watch);
            for token in tokens {
                // Fails only if the server cannot be reached: then the call fails by itself.
                let _ = token.cancel_query(NoTls);
            }
            watch = shared.watch.lock();
            continue;
        }
        watch.wakes_at = watch.armed.keys().next().map(|k| k.0);
        match watch.wakes_at {
            Some(at) => {
                shared.changed.wait_until(&mut watch, at);
            }
            None => shared.changed.wait(&mut watch),
        }
    }
}
