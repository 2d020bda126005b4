//! The connection pool. Connections are opened on the thread that needs one and
//! closed on the thread that closes the pool (or, for one in use at that moment, on
//! the thread that returns it): no housekeeping thread, so nothing runs after
//! `close()` returns, nothing is left behind per pool, and a forked child opens new
//! stores like any process.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::sqlite::fork;

type Opener = Box<dyn Fn() -> Result<Connection> + Send + Sync>;

/// A cheap handle to one pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    open: Opener,
    max_size: u32,
    timeout: Duration,
    state: Mutex<State>,
    returned: Condvar,
    /// Read without the lock: a forked child must never wait on a lock that a
    /// thread of its parent held at the fork.
    closed: AtomicBool,
    opened_in: fork::Origin,
}

#[derive(Default)]
struct State {
    idle: Vec<Connection>,
    /// Idle, in use, and being opened.
    open: u32,
}

impl Pool {
    /// A pool of at most `max_size` connections made by `open`; none is opened yet.
    pub fn new(
        max_size: u32,
        timeout: Duration,
        open: impl Fn() -> Result<Connection> + Send + Sync + 'static,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                open: Box::new(open),
                max_size,
                timeout,
                state: Mutex::new(State::default()),
                returned: Condvar::new(),
                closed: AtomicBool::new(false),
                opened_in: fork::Origin::here(),
            }),
        }
    }

    /// An idle connection, or a new one opened on this thread while fewer than
    /// `max_size` exist; otherwise waits up to the timeout for one to be returned.
    pub fn get(&self) -> Result<Conn> {
        let shared = &*self.shared;
        shared.opened_in.check()?;
        let mut deadline = None;
        let mut state = shared.state.lock();
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if let Some(conn) = state.idle.pop() {
                return Ok(self.wrap(conn));
            }
            if state.open < shared.max_size {
                state.open += 1;
                drop(state);
                let opened = (shared.open)().map(|conn| self.wrap(conn));
                if opened.is_err() {
                    shared.state.lock().open -= 1;
                    shared.returned.notify_one();
                }
                // Closed meanwhile: the new connection is closed again as it drops.
                return opened.and_then(|c| if self.is_closed() { Err(Error::Closed) } else { Ok(c) });
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.timeout);
            if shared.returned.wait_until(&mut state, deadline).timed_out() {
                return Err(Error::PoolTimeout(format!(
                    "no connection free within {:?} (pool_size {})",
                    shared.timeout, shared.max_size
                )));
            }
        }
    }

    /// Adds a connection opened elsewhere, as idle.
    pub fn add_idle(&self, conn: Connection) {
        let mut state = self.shared.state.lock();
        state.open += 1;
        state.idle.push(conn);
    }

    fn wrap(&self, conn: Connection) -> Conn {
        Conn { conn: ManuallyDrop::new(conn), pool: self.shared.clone() }
    }

    /// Closes every idle connection on this thread before returning; one in use is
    /// closed by the thread that returns it. Later checkouts fail with `Closed`.
    /// In a forked child nothing is closed: the connections are the parent's.
    pub fn close(&self) {
        let shared = &*self.shared;
        if shared.opened_in.check().is_err() {
            shared.closed.store(true, Ordering::Release);
            return;
        }
        let idle = {
            let mut state = shared.state.lock();
            shared.closed.store(true, Ordering::Release);
            state.open -= state.idle.len() as u32;
            std::mem::take(&mut state.idle)
        };
        shared.returned.notify_all();
        drop(idle);
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// (connections open, of which idle).
    pub fn state(&self) -> (u32, u32) {
        let state = self.shared.state.lock();
        (state.open, state.idle.len() as u32)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.opened_in.check().is_err() {
            // Closing the parent's connections here could checkpoint or unlink its WAL.
            std::mem::forget(std::mem::take(&mut self.state.get_mut().idle));
        }
    }
}

/// A checked-out connection; returned to its pool when dropped.
pub struct Conn {
    conn: ManuallyDrop<Connection>,
    pool: Arc<Shared>,
}

impl Conn {
    /// `Forked` when used in a process forked after the checkout.
    pub fn check_origin(&self) -> Result<()> {
        self.pool.opened_in.check()
    }
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: `conn` is not used again; this is the only place it is taken.
        let conn = unsafe { ManuallyDrop::take(&mut self.conn) };
        let shared = &*self.pool;
        if shared.opened_in.check().is_err() {
            std::mem::forget(conn);
            return;
        }
        let mut state = shared.state.lock();
        if shared.closed.load(Ordering::Acquire) {
            state.open -= 1;
            drop(state);
            drop(conn);
        } else {
            state.idle.push(conn);
            drop(state);
            shared.returned.notify_one();
        }
    }
}
