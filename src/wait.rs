//! Waiting for agents (`wait_for_agents`), the same on both backends: what is waited
//! for ([`AgentSet`]), what a check finds ([`AgentsStatus`]), and how a waiter learns
//! that something may have changed ([`Changes`]) without polling the tables.
//!
//! A waiter reads the store's change generation, checks its condition with one query,
//! and sleeps until the generation moves past what it read (or its deadline). The
//! generation moves on every commit this process's write lane makes (SQLite), and on
//! what a **watcher** sees from other processes: one thread per store, alive only while
//! someone waits, on a connection of its own — on SQLite it sleeps on an inotify watch
//! of the `-wal` and confirms with `PRAGMA data_version` (or reads that every
//! [`SQLITE_POLL`] where the WAL cannot be watched), on PostgreSQL it `LISTEN`s for the
//! notification a completion's own transaction sends. A subscription returns only once its watcher has its baseline
//! (SQLite's first `data_version`, PostgreSQL's `LISTEN`), so no change between the
//! waiter's check and its sleep is missed.
//!
//! An asynchronous waiter registers a one-shot callback ([`Changes::on_change`]) instead
//! of sleeping on a thread: the thread that moves the generation calls it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::store::validate::check_id;

/// How often the SQLite watcher reads `PRAGMA data_version` where it cannot watch the
/// WAL: measured, every 5 ms cost an idle process 0.75% of a core, every 10 ms 0.4-0.8%
/// (`benches/wait.py`), against ~0.15% for the inotify watch.
pub const SQLITE_POLL: Duration = Duration::from_millis(10);

/// How long the PostgreSQL listener waits for a notification before it looks whether it
/// is still wanted (a close or the last waiter leaving also ends it within this).
pub const PG_LISTEN_SLICE: Duration = Duration::from_millis(50);

/// A watcher's wait for the next change: `Ok(true)` when something changed (or may
/// have), `Ok(false)` when nothing did within its wait. An error ends nothing: the
/// waiters are woken to check (their query reports a store that is really gone), and
/// the watcher tries again after a pause.
pub(crate) type Poll = Box<dyn FnMut(&Changes) -> Result<bool> + Send>;
/// Opens a watcher's connection and takes its baseline; the thread then polls.
pub(crate) type OpenWatcher = Arc<dyn Fn() -> Result<Poll> + Send + Sync>;

/// Which agents a wait is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSet {
    /// These agents' executions of the stage (on `branch_id`'s branch when given).
    Agents { agent_ids: Vec<String>, branch_id: Option<String> },
    /// The set `expect_agents` persisted for the run (and branch).
    Run { run_id: String, branch_id: Option<String> },
}

impl AgentSet {
    /// Checks the ids; duplicates in a list are dropped (the first kept).
    pub fn agents(agent_ids: Vec<String>, branch_id: Option<String>) -> Result<AgentSet> {
        Ok(AgentSet::Agents { agent_ids: checked_agents(agent_ids)?, branch_id: checked_branch(branch_id)? })
    }

    pub fn run(run_id: String, branch_id: Option<String>) -> Result<AgentSet> {
        check_id("run_id", &run_id)?;
        Ok(AgentSet::Run { run_id, branch_id: checked_branch(branch_id)? })
    }
}

fn checked_branch(branch_id: Option<String>) -> Result<Option<String>> {
    if let Some(b) = &branch_id {
        check_id("branch_id", b)?;
    }
    Ok(branch_id)
}

/// A list of agent ids: non-empty, each a non-empty string, duplicates dropped.
pub fn checked_agents(agent_ids: Vec<String>) -> Result<Vec<String>> {
    if agent_ids.is_empty() {
        return Err(Error::invalid("agent_ids", "must name at least one agent, got an empty list"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(agent_ids.len());
    for id in agent_ids {
        check_id("agent_ids", &id)?;
        if seen.insert(id.clone()) {
            kept.push(id);
        }
    }
    Ok(kept)
}

/// An expected set to declare (`expect_agents`), checked: the ids non-empty strings,
/// the list non-empty, duplicates dropped.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub spec_id: String,
    pub stage: String,
    pub run_id: String,
    pub branch_id: Option<String>,
    pub agent_ids: Vec<String>,
}

impl Expectation {
    pub fn new(
        spec_id: String,
        stage: String,
        run_id: String,
        agent_ids: Vec<String>,
        branch_id: Option<String>,
    ) -> Result<Expectation> {
        check_id("spec_id", &spec_id)?;
        check_id("stage", &stage)?;
        check_id("run_id", &run_id)?;
        Ok(Expectation {
            spec_id,
            stage,
            run_id,
            branch_id: checked_branch(branch_id)?,
            agent_ids: checked_agents(agent_ids)?,
        })
    }

    /// The branch as the table keeps it: '' for none (a key column is never NULL).
    pub fn branch_key(&self) -> &str {
        self.branch_id.as_deref().unwrap_or("")
    }

    /// Whether a row `(spec_id, stage, run_id, branch key)` is this set.
    pub fn is(&self, row: &(String, String, String, String)) -> bool {
        (row.0.as_str(), row.1.as_str(), row.2.as_str(), row.3.as_str())
            == (&self.spec_id, &self.stage, &self.run_id, self.branch_key())
    }

    /// The refusal of an agent already expected by another set: nothing is written.
    pub fn conflict(&self, agent_id: &str, row: &(String, String, String, String)) -> Error {
        let branch = |b: &str| if b.is_empty() { String::new() } else { format!(" on branch {b:?}") };
        Error::invalid(
            "agent_ids",
            format!(
                "agent {agent_id:?} is already expected by run {:?} of ({:?}, {:?}){}, not run {:?} of ({:?}, {:?}){}: \
                 an agent id belongs to one expected set (nothing was declared)",
                row.2,
                row.0,
                row.1,
                branch(&row.3),
                self.run_id,
                self.spec_id,
                self.stage,
                branch(self.branch_key())
            ),
        )
    }
}

/// The state of a set's agents, each in the set's order: completed (a completion
/// recorded), failed (an extraction failure recorded: finished too), pending (not
/// spawned, running, or an execution of another stage or branch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentsStatus {
    pub expected: Vec<String>,
    pub completed: Vec<String>,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
}

impl AgentsStatus {
    /// Sorts `(agent_id, completed, failed)` rows, in the set's order, into the lists.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, bool, bool)>) -> AgentsStatus {
        let mut s = AgentsStatus::default();
        for (id, completed, failed) in rows {
            s.expected.push(id.clone());
            match (completed, failed) {
                (_, true) => s.failed.push(id),
                (true, false) => s.completed.push(id),
                (false, false) => s.pending.push(id),
            }
        }
        s
    }

    pub fn finished(&self) -> usize {
        self.completed.len() + self.failed.len()
    }
}

/// What a wait ended with: the set's status when it was satisfied or the deadline came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitOutcome {
    pub status: AgentsStatus,
    /// The number of finished agents it waited for (all of the set without a quorum).
    pub quorum: usize,
    pub timed_out: bool,
}

/// A wait's condition, checked against each status read.
#[derive(Clone, Debug)]
pub struct WaitFor {
    pub spec_id: String,
    pub stage: String,
    pub set: AgentSet,
    pub quorum: Option<usize>,
}

impl WaitFor {
    pub fn new(spec_id: String, stage: String, set: AgentSet, quorum: Option<usize>) -> Result<WaitFor> {
        check_id("spec_id", &spec_id)?;
        check_id("stage", &stage)?;
        match (quorum, &set) {
            (Some(0), _) => return Err(Error::invalid("quorum", "must be at least 1, got 0")),
            (Some(q), AgentSet::Agents { agent_ids, .. }) if q > agent_ids.len() => {
                return Err(too_big_a_quorum(q, agent_ids.len()))
            }
            _ => {}
        }
        Ok(WaitFor { spec_id, stage, set, quorum })
    }

    /// The outcome if `status` satisfies the wait (or `timed_out`), else None. A run's
    /// set must have been declared, and a quorum must not exceed it.
    pub fn judge(&self, status: AgentsStatus, timed_out: bool) -> Result<Option<WaitOutcome>> {
        if let AgentSet::Run { run_id, branch_id } = &self.set {
            if status.expected.is_empty() {
                let on = branch_id.as_deref().map(|b| format!(" on branch {b:?}")).unwrap_or_default();
                return Err(Error::invalid(
                    "run_id",
                    format!(
                        "no agents are expected for run {run_id:?} of ({:?}, {:?}){on}: declare them with \
                         expect_agents() first (a wait on an empty set would return at once)",
                        self.spec_id, self.stage
                    ),
                ));
            }
        }
        let quorum = match self.quorum {
            Some(q) if q > status.expected.len() => return Err(too_big_a_quorum(q, status.expected.len())),
            Some(q) => q,
            None => status.expected.len(),
        };
        let done = status.finished() >= quorum;
        Ok((done || timed_out).then_some(WaitOutcome { status, quorum, timed_out: !done }))
    }
}

fn too_big_a_quorum(quorum: usize, agents: usize) -> Error {
    Error::invalid("quorum", format!("{quorum} is more than the {agents} agents waited for"))
}

/// Runs a wait: check, and until satisfied or `timeout` passes, sleep until the next
/// change and check again (one query per wake-up). The first check runs before the
/// subscription: a wait satisfied at once, refused (a run with no declared set, a quorum
/// above the set), or with `timeout` zero (one check) starts no watcher, and a forked
/// child's refusal comes before any lock its parent may hold. `interrupt` runs between
/// sleeps of at most `slice` (Python's signals).
pub fn wait(
    changes: &Arc<Changes>,
    condition: &WaitFor,
    timeout: Option<Duration>,
    slice: Duration,
    check: &mut dyn FnMut() -> Result<AgentsStatus>,
    interrupt: &mut dyn FnMut() -> Result<()>,
) -> Result<WaitOutcome> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future));
    if let Some(outcome) = condition.judge(check()?, timeout.is_some_and(|t| t.is_zero()))? {
        return Ok(outcome);
    }
    let _subscription = changes.subscribe()?;
    loop {
        let seen = changes.generation()?;
        let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
        if let Some(outcome) = condition.judge(check()?, past_deadline)? {
            return Ok(outcome);
        }
        loop {
            let now = Instant::now();
            let until = match deadline {
                Some(d) if d <= now => break,
                Some(d) => d.min(now + slice),
                None => now + slice,
            };
            if changes.wait_past(seen, until)? {
                break;
            }
            interrupt()?;
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

/// A one-shot callback: `Ok(())` when the generation moved, `Err(Closed)` at close.
pub type OnChange = Box<dyn FnOnce(Result<()>) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatcherState {
    Idle,
    Starting,
    Running,
    /// Decided to exit (no subscriber left): dropping its connection.
    Stopping,
}

struct State {
    generation: u64,
    closed: bool,
    subscribers: usize,
    watcher: WatcherState,
    /// The error opening the watcher failed with, for the subscriber that started it.
    failed: Option<Error>,
    thread: Option<JoinHandle<()>>,
    callbacks: Vec<(u64, OnChange)>,
}

/// A store's change signal: a generation counter, its waiters, and the watcher that
/// moves it for other processes' commits.
pub struct Changes {
    state: Mutex<State>,
    cv: Condvar,
    /// Opens the watcher's connection; None: no other process can write (in memory).
    open: Option<OpenWatcher>,
}

/// Keeps the watcher alive while it lives.
pub struct Subscription {
    changes: Arc<Changes>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.changes.state.lock();
        st.subscribers -= 1;
        if st.subscribers == 0 {
            self.changes.cv.notify_all(); // the watcher looks and leaves
        }
    }
}

impl Changes {
    pub(crate) fn new(open: Option<OpenWatcher>) -> Arc<Changes> {
        Arc::new(Changes {
            state: Mutex::new(State {
                generation: 0,
                closed: false,
                subscribers: 0,
                watcher: WatcherState::Idle,
                failed: None,
                thread: None,
                callbacks: Vec::new(),
            }),
            cv: Condvar::new(),
            open,
        })
    }

    /// The current generation; `Closed` once the store closed.
    pub fn generation(&self) -> Result<u64> {
        let st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        Ok(st.generation)
    }

    /// Something may have changed: wakes every waiter and calls the callbacks.
    pub fn bump(&self) {
        let mut st = self.state.lock();
        st.generation += 1;
        let due = std::mem::take(&mut st.callbacks);
        drop(st);
        self.cv.notify_all();
        fire(due.into_iter().map(|(_, cb)| cb), Ok(()));
    }

    /// Waits until the generation is past `seen` (true), `until` passes (false), or the
    /// store closes (`Closed`).
    pub fn wait_past(&self, seen: u64, until: Instant) -> Result<bool> {
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return Err(Error::Closed);
            }
            if st.generation > seen {
                return Ok(true);
            }
            if self.cv.wait_until(&mut st, until).timed_out() {
                return if st.closed { Err(Error::Closed) } else { Ok(st.generation > seen) };
            }
        }
    }

    /// Calls `cb` once the generation is past `seen` (at once if it is already, or if
    /// the store closed: then with `Closed`), on the thread that moved it.
    pub fn on_change(&self, seen: u64, cb: OnChange) {
        let mut st = self.state.lock();
        if st.closed {
            drop(st);
            return cb(Err(Error::Closed));
        }
        if st.generation > seen {
            drop(st);
            return cb(Ok(()));
        }
        st.callbacks.push((seen, cb));
    }

    /// Subscribes: the watcher runs (started if needed, with its baseline taken) until
    /// the last subscription drops.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let Some(open) = self.open.clone() else {
            st.subscribers += 1;
            return Ok(Subscription { changes: self.clone() });
        };
        st.subscribers += 1;
        let failed = loop {
            match st.watcher {
                WatcherState::Running => return Ok(Subscription { changes: self.clone() }),
                WatcherState::Starting | WatcherState::Stopping => self.cv.wait(&mut st),
                WatcherState::Idle if st.closed => break Error::Closed,
                WatcherState::Idle => {
                    if let Some(e) = st.failed.take() {
                        break e;
                    }
                    st.watcher = WatcherState::Starting;
                    let changes = self.clone();
                    let open = open.clone();
                    let spawned = std::thread::Builder::new()
                        .name("consensus-db-watch".into())
                        .spawn(move || changes.watch(&*open));
                    match spawned {
                        Ok(handle) => st.thread = Some(handle),
                        Err(e) => {
                            st.watcher = WatcherState::Idle;
                            break Error::Internal(format!("could not start the change watcher thread: {e}"));
                        }
                    }
                }
            }
        };
        st.subscribers -= 1;
        Err(failed)
    }

    /// The watcher thread: opens its connection (its first subscriber waits for that),
    /// then polls until no one subscribes or the store closes. Its connection is closed
    /// before it says it stopped, so `close()` returns with every handle closed.
    fn watch(self: &Arc<Self>, open: &(dyn Fn() -> Result<Poll> + Send + Sync)) {
        let mut poll = match open() {
            Ok(poll) => poll,
            Err(e) => {
                let mut st = self.state.lock();
                st.watcher = WatcherState::Idle;
                st.failed = Some(e);
                drop(st);
                self.cv.notify_all();
                return;
            }
        };
        {
            let mut st = self.state.lock();
            st.watcher = WatcherState::Running;
            self.cv.notify_all();
            drop(st);
        }
        loop {
            {
                let mut st = self.state.lock();
                if st.closed || st.subscribers == 0 {
                    st.watcher = WatcherState::Stopping;
                    break;
                }
            }
            match poll(self) {
                Ok(true) => self.bump(),
                Ok(false) => {}
                Err(_) => {
                    // Woken to check: a store that is really gone answers their query.
                    self.bump();
                    self.pause(Duration::from_millis(100));
                }
            }
        }
        drop(poll);
        self.state.lock().watcher = WatcherState::Idle;
        self.cv.notify_all();
    }

    /// Sleeps for `d`, or less when the store closes or the last subscriber leaves.
    pub(crate) fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = self.state.lock();
        while !st.closed && st.subscribers > 0 {
            if self.cv.wait_until(&mut st, until).timed_out() {
                return;
            }
        }
    }

    /// Wakes every waiter with `Closed` and waits for the watcher to have closed its
    /// connection. Idempotent.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        let due = std::mem::take(&mut st.callbacks);
        let thread = st.thread.take();
        drop(st);
        self.cv.notify_all();
        fire(due.into_iter().map(|(_, cb)| cb), Err(Error::Closed));
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Whether the watcher thread runs (for tests and the benchmark's thread count).
    pub fn watcher_running(&self) -> bool {
        self.state.lock().watcher != WatcherState::Idle
    }
}

/// Calls the callbacks, in one batch under the bindings' completion scope (one GIL
/// acquisition for all of them) when there is one.
fn fire(callbacks: impl Iterator<Item = OnChange>, result: Result<()>) {
    let mut callbacks: Vec<OnChange> = callbacks.collect();
    if callbacks.is_empty() {
        return;
    }
    crate::callbacks::in_scope(&mut || callbacks.drain(..).for_each(|cb| cb(result.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_woken_by_a_bump_and_by_close() {
        let changes = Changes::new(None);
        let seen = changes.generation().unwrap();
        let c = changes.clone();
        let bumper = std::thread::spawn(move || c.bump());
        assert!(changes.wait_past(seen, Instant::now() + Duration::from_secs(10)).unwrap());
        bumper.join().unwrap();
        let seen = changes.generation().unwrap();
        assert!(!changes.wait_past(seen, Instant::now()).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        changes.on_change(seen, Box::new(move |r| tx.send(r.is_err()).unwrap()));
        changes.close();
        assert!(rx.recv().unwrap(), "a callback pending at close gets Closed");
        assert!(matches!(changes.wait_past(seen, Instant::now() + Duration::from_secs(10)), Err(Error::Closed)));
    }

    #[test]
    fn a_watcher_runs_only_while_someone_subscribes() {
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = opened.clone();
        let open: OpenWatcher = Arc::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(|c: &Changes| {
                c.pause(Duration::from_millis(1));
                Ok(false)
            }) as Poll)
        });
        let changes = Changes::new(Some(open));
        let a = changes.subscribe().unwrap();
        let b = changes.subscribe().unwrap();
        assert!(changes.watcher_running());
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop((a, b));
        let until = Instant::now() + Duration::from_secs(10);
        while changes.watcher_running() && Instant::now() < until {
            std::thread::yield_now();
        }
        assert!(!changes.watcher_running());
        drop(changes.subscribe().unwrap());
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
        changes.close();
        assert!(!changes.watcher_running());
    }
}
