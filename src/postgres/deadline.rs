//! A deadline on what the server does not bound: PostgreSQL disables `statement_timeout`
//! before it commits, so a COMMIT waiting for a synchronous standby that is gone waits
//! forever. A write arms a deadline for its connection; while the write runs past it, a
//! cancel request is sent to the server, again every `limit` (a call that commits twice
//! is bounded twice). The server then ends the wait and warns that the transaction
//! committed locally but may not be replicated (`Session::unreplicated`).
//!
//! Disarming waits for a cancel being sent and says whether one was: such a connection
//! is discarded, never pooled, since a cancel can reach the server after the call ended
//! and would hit whatever ran next on it. One watch thread per process sleeps until the
//! earliest deadline, never polls; each cancel is sent from a short-lived thread of its
//! own (it connects to the server, up to `connect_timeout` when the server is gone).
//! A forked child gets a new watch of its own and never touches the parent's.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::{CancelToken, NoTls};

/// Past the connection's `statement_timeout` by this much: the server's own timeout
/// ends a statement first, and only what it does not bound meets ours.
const MARGIN: Duration = Duration::from_secs(1);

struct Entry {
    token: CancelToken,
    limit: Duration,
    due: Instant,
    sending: bool,
    sent: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    schedule: BTreeSet<(Instant, u64)>,
    next: u64,
    /// When the watch thread will next look; None: it waits for a wake-up.
    wakes_at: Option<Instant>,
}

struct Watch {
    pid: u32,
    state: Mutex<State>,
    changed: Condvar,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// This process's watch (one per process: a child made by fork starts its own).
static CURRENT: AtomicPtr<Watch> = AtomicPtr::new(std::ptr::null_mut());

fn watch() -> Option<&'static Watch> {
    let pid = std::process::id();
    // SAFETY: CURRENT only ever holds a leaked `Box<Watch>`, never freed.
    if let Some(current) = unsafe { CURRENT.load(Ordering::Acquire).as_ref() } {
        if current.pid == pid {
            return Some(current);
        }
    }
    let fresh: &'static Watch =
        Box::leak(Box::new(Watch { pid, state: Mutex::new(State::default()), changed: Condvar::new() }));
    std::thread::Builder::new().name("consensus-db-pg-deadline".into()).spawn(move || run(fresh)).ok()?;
    let previous = CURRENT.load(Ordering::Acquire);
    // SAFETY: as above; `previous` is a leaked watch or null.
    match CURRENT.compare_exchange(previous, fresh as *const Watch as *mut Watch, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(fresh),
        // Another thread of this process made one first: use it (ours idles, harmless).
        Err(won) => unsafe { won.as_ref() },
    }
}

/// A deadline armed for one connection's call. [`Armed::disarm`] (or dropping it) ends it.
pub struct Armed {
    watch: &'static Watch,
    id: u64,
    done: bool,
}

impl Armed {
    /// Ends the deadline, waiting for a cancel being sent; whether one was sent.
    pub fn disarm(mut self) -> bool {
        self.end()
    }

    fn end(&mut self) -> bool {
        self.done = true;
        let mut state = self.watch.lock();
        while state.entries.get(&self.id).is_some_and(|e| e.sending) {
            state = self.watch.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        match state.entries.remove(&self.id) {
            Some(entry) => {
                state.schedule.remove(&(entry.due, self.id));
                entry.sent
            }
            None => false,
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if !self.done {
            self.end();
        }
    }
}

/// Cancels the query running on `token`'s connection while it runs past `limit` (plus
/// [`MARGIN`]). None if no watch thread could be started (then nothing is bounded).
pub fn arm(token: &CancelToken, limit: Duration) -> Option<Armed> {
    let watch = watch()?;
    let limit = limit + MARGIN;
    let due = Instant::now() + limit;
    let mut state = watch.lock();
    state.next += 1;
    let id = state.next;
    state.entries.insert(id, Entry { token: token.clone(), limit, due, sending: false, sent: false });
    state.schedule.insert((due, id));
    if state.wakes_at.is_none_or(|at| due < at) {
        watch.changed.notify_all();
    }
    Some(Armed { watch, id, done: false })
}

fn run(watch: &'static Watch) {
    let mut state = watch.lock();
    loop {
        let now = Instant::now();
        while let Some(&(due, id)) = state.schedule.first().filter(|(due, _)| *due <= now) {
            state.schedule.remove(&(due, id));
            let Some(entry) = state.entries.get_mut(&id) else { continue };
            entry.sending = true;
            let token = entry.token.clone();
            let sender = std::thread::Builder::new().name("consensus-db-pg-cancel".into()).spawn(move || {
                // Fails only if the server cannot be reached: then the call fails by itself.
                let _ = token.cancel_query(NoTls);
                sent(watch, id);
            });
            if sender.is_err() {
                drop(state);
                sent(watch, id); // no thread to send it: the next round tries again
                state = watch.lock();
            }
        }
        state.wakes_at = state.schedule.first().map(|(due, _)| *due);
        state = match state.wakes_at {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                watch.changed.wait_timeout(state, wait).map(|(s, _)| s).unwrap_or_else(|p| p.into_inner().0)
            }
            None => watch.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
    }
}

/// A cancel was sent (or could not be): the call, if still running, is due again one
/// `limit` later.
fn sent(watch: &Watch, id: u64) {
    let mut state = watch.lock();
    let again = state.entries.get_mut(&id).map(|entry| {
        entry.sending = false;
        entry.sent = true;
        entry.due = Instant::now() + entry.limit;
        entry.due
    });
    if let Some(due) = again {
        state.schedule.insert((due, id));
    }
    watch.changed.notify_all();
}
