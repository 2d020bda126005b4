//! The write lane: one per open database (LevelDB's writer queue, `DBImpl::Write`).
//!
//! A writer queues itself and waits until its write is done (another writer ran it) or
//! it is at the front. The front writer takes every write queued behind it (up to
//! [`MAX_GROUP`]), runs them in one `BEGIN IMMEDIATE` transaction — each in its own
//! `SAVEPOINT`, so a write that fails is undone alone and gets its own error — commits
//! once, then wakes every member with its own result. A lone writer is the front at
//! once and runs without a savepoint: exactly today's transaction.
//!
//! When SQLite ends the whole transaction (an `OR ROLLBACK` conflict, a full disk, an
//! I/O error), no member of that round is acknowledged: the member that ended it gets
//! its error, members that had already run are run again in a new transaction (store
//! writes, which can be repeated) or fail with [`Error::Transaction`] (a `FnOnce`
//! write), and members not yet run go on in the new transaction. A failed `COMMIT`
//! fails every member; so that one write cannot fail its group's COMMIT, a write that
//! leaves a deferred foreign key violation (checked only at COMMIT) fails alone, as its
//! own COMMIT would, before the group commits.
//!
//! Explicit write transactions, migrations and maintenance *hold* the lane: they wait
//! their turn like a write, then run alone until they release it. A write from the
//! thread that holds the lane (a store write inside its own `transaction()` block)
//! would wait for itself: it fails at once instead.
//!
//! A write may also be *submitted* ([`WriteLane::submit`]: an owned job and a
//! completion callback) by a caller that must not block (an asyncio event loop). It
//! queues like any write and rides in the group of whichever writer is front; its
//! callback is called with its result by the thread that committed it, after the lane
//! is released. When a submitted write is at the front of an idle lane, a short-lived
//! lane thread becomes its front (one at a time, and it exits when no submitted write
//! is at the front): N waiting submitted writes need no thread of their own.
//!
//! Between processes, the front's group runs in a turn of the host-wide writer queue
//! (`host_queue.rs`), taken before its `BEGIN IMMEDIATE` and released after the
//! `COMMIT`: fronts of other processes on the same file wait their turn in the kernel,
//! not in SQLite's busy handler. (A group that had to wait runs on the queue's helper
//! thread, the front waiting for it as its members wait for the front.) Holds
//! (transaction blocks, migrations, maintenance) do not take it: a block may only
//! read, and must not keep other processes' writes waiting.
//!
//! Safety: a queued write lives on its caller's stack (the closure may borrow from it).
//! The caller does not return before its `done` flag is set, and the lane stops
//! touching a member before setting that flag (under the lane's mutex).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::sqlite::host_queue::HostQueue;
use crate::sqlite::pool::Pool;
use crate::wait::Changes;

mod group;
mod jobs;

use group::run_group;
use jobs::complete_all;
pub(crate) use jobs::{Job, OnceJob, Outcome, OwnedJob, RepeatJob, SubmittedJob};

/// The most writes one group commits together.
pub const MAX_GROUP: usize = 64;

/// One caller waiting in the lane; `job` is `None` for a hold (a transaction block).
struct Waiter {
    job: Option<*mut (dyn Job + 'static)>,
    done: AtomicBool,
}

impl Waiter {
    fn new(job: Option<*mut (dyn Job + 'static)>) -> Waiter {
        Waiter { job, done: AtomicBool::new(false) }
    }
}

/// A member of the queue: a blocked caller's waiter, or a submitted write.
enum Member {
    Blocked(*const Waiter),
    Owned(Box<dyn OwnedJob>),
}
// SAFETY: a waiter is only touched under the lane's rules (see the module docs); an
// owned job is `Send`.
unsafe impl Send for Member {}

impl Member {
    fn is_job(&self) -> bool {
        match self {
            // SAFETY: a queued waiter is alive until it is marked done.
            Member::Blocked(w) => unsafe { (**w).job.is_some() },
            Member::Owned(_) => true,
        }
    }
    fn is(&self, w: &Waiter) -> bool {
        matches!(self, Member::Blocked(p) if std::ptr::eq(*p, w))
    }
    fn is_owned(&self) -> bool {
        matches!(self, Member::Owned(_))
    }
}

struct State {
    queue: VecDeque<Member>,
    busy: bool,
    holder: Option<ThreadId>,
    closed: bool,
    /// A lane thread is running (fronting submitted writes).
    driver: bool,
    /// The pool submitted writes run against (set by the first `submit`).
    pool: Option<Pool>,
}

report! {
    /// Commits by number of members, and holds (transaction blocks, maintenance).
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct LaneStats {
        /// Group commits (transactions the lane ran for queued writes).
        pub groups: u64,
        /// Writes those groups carried.
        pub members: u64,
        /// Times the lane was held alone (transaction blocks, migrations, maintenance).
        pub holds: u64,
        /// Callers waiting in the lane right now.
        pub queued: u64,
        /// `(group size, number of groups)` for every size seen, smallest first.
        pub sizes: Vec<(usize, u64)>,
    }
}

pub struct WriteLane {
    state: Mutex<State>,
    /// Where the lane thread waits for an idle lane (blocked callers wait on their own).
    cv: Condvar,
    groups: AtomicU64,
    members: AtomicU64,
    holds: AtomicU64,
    sizes: [AtomicU64; MAX_GROUP + 1],
    /// The host-wide writer queue every group takes its turn in (none in memory, read-only).
    host: Option<Arc<HostQueue>>,
    /// Moved after every group and hold: waiters for agents check again (`wait.rs`).
    changes: Arc<Changes>,
}

/// The lane held alone until dropped.
pub(crate) struct LaneHold {
    lane: Arc<WriteLane>,
}

impl Drop for LaneHold {
    fn drop(&mut self) {
        self.lane.release(Vec::new());
    }
}

/// Releases the lane even if the front writer's own code panics (its members then
/// get an internal error, not a hang).
struct Front<'a> {
    lane: &'a Arc<WriteLane>,
    group: Vec<Member>,
}

impl Drop for Front<'_> {
    fn drop(&mut self) {
        self.lane.release(std::mem::take(&mut self.group));
    }
}

fn reentrant() -> Error {
    Error::Transaction(
        "this thread holds the write lane (an open write transaction block): a write through the store here would wait \
         for the block itself; run it through the block's transaction, or after the block ends"
            .into(),
    )
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("a write panicked: {what}")
}

impl Default for WriteLane {
    fn default() -> Self {
        WriteLane::new(None, Changes::new(None))
    }
}

impl WriteLane {
    /// A lane whose groups take their turn in `host` (the file's writer queue) and
    /// move `changes` when they end.
    pub(crate) fn new(host: Option<HostQueue>, changes: Arc<Changes>) -> Self {
        WriteLane {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                busy: false,
                holder: None,
                closed: false,
                driver: false,
                pool: None,
            }),
            cv: Condvar::new(),
            groups: AtomicU64::new(0),
            members: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            sizes: std::array::from_fn(|_| AtomicU64::new(0)),
            host: host.map(Arc::new),
            changes,
        }
    }

    /// The writer queue's sidecar, while turns are taken in it.
    pub(crate) fn host_queue(&self) -> Option<&std::path::Path> {
        self.host.as_deref().filter(|q| q.is_on()).map(HostQueue::path)
    }
}

impl WriteLane {
    /// Queues `w` and waits: `None` when its write was done by another writer (or the
    /// lane closed), else the group it leads (its first member is `w`).
    /// `wait` bounds the wait for the lane: past it the waiter leaves the queue and
    /// gets a busy error naming the wait.
    fn queue_up(self: &Arc<Self>, w: &Waiter, wait: Option<Duration>) -> Result<Option<Vec<Member>>> {
        // A wait too long to express (no deadline) is unbounded.
        let until = wait.and_then(|d| Instant::now().checked_add(d));
        let me = std::thread::current().id();
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        if st.busy && st.holder == Some(me) {
            return Err(reentrant());
        }
        st.queue.push_back(Member::Blocked(w));
        loop {
            if w.done.load(Ordering::Acquire) {
                return Ok(None);
            }
            if !st.busy && st.queue.front().is_some_and(|m| m.is(w)) {
                break;
            }
            match (until, wait) {
                (Some(until), Some(wait)) => {
                    if self.cv.wait_until(&mut st, until).timed_out()
                        && !w.done.load(Ordering::Acquire)
                        && (st.busy || !st.queue.front().is_some_and(|m| m.is(w)))
                    {
                        st.queue.retain(|m| !m.is(w));
                        let spawn = self.wake_all(&mut st);
                        drop(st);
                        if spawn {
                            self.spawn_driver();
                        }
                        return Err(Error::Busy(format!(
                            "waited {:.1}s for the write lane (held by another write, a transaction block, a migration \
                             or maintenance such as a full VACUUM) and gave up: the retry deadline passed",
                            wait.as_secs_f64()
                        )));
                    }
                }
                _ => self.cv.wait(&mut st),
            }
        }
        Ok(Some(Self::take_group(&mut st, me)))
    }

    /// Makes `me` the front: takes the queue's first member and, when it is a write,
    /// the writes queued behind it (up to [`MAX_GROUP`]).
    fn take_group(st: &mut State, me: ThreadId) -> Vec<Member> {
        st.busy = true;
        st.holder = Some(me);
        let first = st.queue.pop_front().expect("the front member");
        let grouping = first.is_job();
        let mut group = vec![first];
        if grouping {
            while group.len() < MAX_GROUP && st.queue.front().is_some_and(Member::is_job) {
                group.push(st.queue.pop_front().expect("front"));
            }
        }
        group
    }

    /// Wakes every waiter (the one now at the front of an idle lane takes it) and
    /// returns whether a lane thread must be started ([`WriteLane::needs_driver`]).
    /// Every waiter, not just the front: measured, the herd's few microseconds before
    /// the next front takes its group let more writers join it (8 writer threads, no
    /// Python: 3.7 writes per commit, against 1.1 when only the front was woken).
    fn wake_all(&self, st: &mut State) -> bool {
        self.cv.notify_all();
        Self::needs_driver(st)
    }

    /// Whether a lane thread must be started: a submitted write is at the front of an
    /// idle lane and no lane thread runs. Marks one as running.
    fn needs_driver(st: &mut State) -> bool {
        let wanted = !st.closed && !st.busy && !st.driver && st.queue.front().is_some_and(Member::is_owned);
        if wanted {
            st.driver = true;
        }
        wanted
    }

    /// Starts a lane thread: it is the front for submitted writes at the front of the
    /// idle lane, and exits when there is none.
    fn spawn_driver(self: &Arc<Self>) {
        let lane = self.clone();
        let spawned = std::thread::Builder::new().name("consensus-db-lane".into()).spawn(move || lane.drive());
        if spawned.is_err() {
            // No thread: fail the submitted writes at the front rather than leave them waiting.
            let mut failed = Vec::new();
            let mut st = self.state.lock();
            st.driver = false;
            while st.queue.front().is_some_and(Member::is_owned) {
                if let Some(Member::Owned(mut job)) = st.queue.pop_front() {
                    job.fail(Error::Internal("could not start a write lane thread".into()));
                    failed.push(job);
                }
            }
            drop(st);
            complete_all(failed);
        }
    }

    fn drive(self: Arc<Self>) {
        let me = std::thread::current().id();
        loop {
            let mut st = self.state.lock();
            let (group, pool) = loop {
                if st.closed || !st.queue.front().is_some_and(Member::is_owned) {
                    st.driver = false;
                    return;
                }
                if !st.busy {
                    let pool = st.pool.clone().expect("submit sets the pool");
                    break (Self::take_group(&mut st, me), pool);
                }
                self.cv.wait(&mut st);
            };
            drop(st);
            self.run_front(&pool, group);
        }
    }

    /// Submits `job` without waiting: it runs in a group like any write, and its
    /// `complete` is called with its result by the thread that committed it (this
    /// one, at once, when the lane is closed).
    pub(crate) fn submit(self: &Arc<Self>, pool: &Pool, mut job: Box<dyn OwnedJob>) {
        let mut st = self.state.lock();
        if st.closed {
            drop(st);
            job.fail(Error::Closed);
            return job.complete();
        }
        if st.pool.is_none() {
            st.pool = Some(pool.clone());
        }
        st.queue.push_back(Member::Owned(job));
        let spawn = Self::needs_driver(&mut st);
        drop(st);
        if spawn {
            self.spawn_driver();
        }
    }

    /// Marks `group` done and frees the lane for the next front; then hands each
    /// submitted member its result.
    fn release(self: &Arc<Self>, group: Vec<Member>) {
        let mut owned = Vec::new();
        let mut st = self.state.lock();
        for m in group {
            match m {
                // SAFETY: the waiter is blocked until this flag is set; not touched after.
                Member::Blocked(w) => unsafe { (*w).done.store(true, Ordering::Release) },
                Member::Owned(job) => owned.push(job),
            }
        }
        st.busy = false;
        st.holder = None;
        let spawn = self.wake_all(&mut st);
        drop(st);
        if spawn {
            self.spawn_driver();
        }
        // Committed (or rolled back): waiters for agents check again.
        self.changes.bump();
        complete_all(owned);
    }

    /// Runs `group` (this thread is its front) and releases the lane.
    fn run_front(self: &Arc<Self>, pool: &Pool, group: Vec<Member>) {
        let mut front = Front { lane: self, group };
        let size = front.group.len();
        // SAFETY: every blocked member's caller waits until `front` drops; each job is
        // reached through exactly one `&mut`.
        let mut jobs: Vec<&mut (dyn Job + 'static)> = front
            .group
            .iter_mut()
            .map(|m| match m {
                Member::Blocked(w) => unsafe { &mut *(**w).job.expect("a write") },
                Member::Owned(job) => job.as_job(),
            })
            .collect();
        match &self.host {
            Some(queue) => {
                match queue.in_turn(&mut || run_group(pool, &mut jobs)) {
                    Ok(()) => {}
                    // A panic outside any job (those are caught in `run_group`): the group
                    // may have committed, so no write is offered for a retry.
                    Err(e @ Error::Internal(_)) => jobs.iter_mut().for_each(|job| job.fail(e.clone())),
                    // Gave up waiting for the turn: nothing of the group ran.
                    Err(e) => jobs.iter_mut().for_each(|job| job.fail_begin(e.clone())),
                }
            }
            None => run_group(pool, &mut jobs),
        }
        drop(jobs);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.members.fetch_add(size as u64, Ordering::Relaxed);
        self.sizes[size].fetch_add(1, Ordering::Relaxed);
        drop(front);
    }

    /// Holds the lane alone (a transaction block, a migration, maintenance) until the
    /// returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>, wait: Option<Duration>) -> Result<LaneHold> {
        let w = Waiter::new(None);
        match self.queue_up(&w, wait)? {
            Some(_) => {
                self.holds.fetch_add(1, Ordering::Relaxed);
                Ok(LaneHold { lane: self.clone() })
            }
            None => Err(Error::Closed),
        }
    }

    /// Runs `job` through the lane; its result is in the job when this returns.
    pub(crate) fn write(self: &Arc<Self>, pool: &Pool, job: &mut (dyn Job + '_), wait: Option<Duration>) {
        let ptr: *mut (dyn Job + '_) = job;
        // SAFETY: only the lifetime is erased; the job is not touched after this
        // call returns (see the module docs).
        let ptr: *mut (dyn Job + 'static) = unsafe { std::mem::transmute(ptr) };
        let w = Waiter::new(Some(ptr));
        let group = match self.queue_up(&w, wait) {
            Ok(Some(group)) => group,
            Ok(None) => return,
            Err(e) => return job.fail(e),
        };
        self.run_front(pool, group);
    }

    /// Fails every waiting caller with `Error::Closed`; later calls fail at once.
    pub(crate) fn close(&self) {
        let mut owned = Vec::new();
        let mut st = self.state.lock();
        st.closed = true;
        st.pool = None;
        while let Some(m) = st.queue.pop_front() {
            match m {
                // SAFETY: a queued waiter is blocked until marked done; its job is not running.
                Member::Blocked(w) => unsafe {
                    if let Some(job) = (*w).job {
                        (*job).fail(Error::Closed);
                    }
                    (*w).done.store(true, Ordering::Release);
                },
                Member::Owned(mut job) => {
                    job.fail(Error::Closed);
                    owned.push(job);
                }
            }
        }
        drop(st);
        self.cv.notify_all();
        if let Some(host) = &self.host {
            host.close();
        }
        complete_all(owned);
    }

    pub fn stats(&self) -> LaneStats {
        let queued = self.state.lock().queue.len() as u64;
        LaneStats {
            groups: self.groups.load(Ordering::Relaxed),
            members: self.members.load(Ordering::Relaxed),
            holds: self.holds.load(Ordering::Relaxed),
            queued,
            sizes: (1..=MAX_GROUP)
                .filter_map(|n| match self.sizes[n].load(Ordering::Relaxed) {
                    0 => None,
                    count => Some((n, count)),
                })
                .collect(),
        }
    }
}
