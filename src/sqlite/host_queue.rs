//! The host-wide writer queue: writers of different processes on one database wait for
//! each other in the kernel instead of in SQLite's busy handler.
//!
//! The front writer of each process's write lane (`writer/`) takes an
//! open-file-description lock (`fcntl(F_OFD_SETLKW)`, byte 0, exclusive) on a sidecar
//! file beside the database, `<database>-writer`, before `BEGIN IMMEDIATE` and releases
//! it after `COMMIT` (or the rollback): the kernel wakes a waiting process the moment
//! the lock is free. SQLite's own locking stays the arbiter: a program that does not
//! know the queue (an older build, the `sqlite3` shell, Python's `sqlite3`) meets the
//! queue's holder in SQLite's lock as before, and the kernel drops the lock with a
//! process that dies, however it dies (the lock belongs to the open file description,
//! which a killed process's exit closes).
//!
//! `F_OFD_SETLKW` has no timeout. So a contended wait is made by a helper thread (one
//! per open database, started on the first contended wait, parked between waits): it
//! blocks in `F_OFD_SETLKW` and, the moment it has the lock, runs the front's group
//! itself (the lane already runs writes on whichever thread is front) and releases
//! it; the front waits on a condition variable, at most `busy_timeout` for the helper
//! to start (what it waited is spent of the group's `BEGIN` budget: the two waits share
//! one `busy_timeout`, `busy::with_spent`). Past that it takes its group back unrun and gets [`Error::Busy`] naming
//! the queue, retried under the retry deadline like any busy `BEGIN`; the helper, when
//! its wait ends, drops the lock at once. No polling, no signals, and no hand-off
//! between threads while the lock is held (measured: handing the lock to the waiting
//! front cost a third of the throughput at 4 processes × 4 threads on 2 CPUs). An
//! uncontended turn is one `F_OFD_SETLK` on the front's own thread.
//!
//! The sidecar: created with the database file's permission bits (and, for root, its
//! owner), opened `O_NOFOLLOW` (a symbolic link there is refused, as SQLite refuses one
//! for `-wal`). It lives while a store has it open, like `-wal` and `-shm`: every store
//! holds a shared lock on byte 1 while open, and the last to close (the one that can
//! turn that into an exclusive lock) removes it. An opener checks, once it holds its
//! shared lock, that the name still leads to the file it opened, and opens again if
//! not: a removal never races a live process (removing the file under a waiting one
//! would split the queue in two). Backup, restore and replication neither copy nor
//! remove it. Read-only and in-memory stores have none; a directory where it cannot be created
//! (or a sidecar this user cannot open for writing) means no queue. A filesystem that
//! does not support OFD locks (`EINVAL`, `ENOLCK`, `EOPNOTSUPP`: some network and FUSE
//! filesystems; NFS forwards them to the server as POSIX locks) switches the queue off
//! for that store at the first try: writes go on, through SQLite's locking alone.
//!
//! fork: a child would share the parent's open file description, and with it a held
//! lock, past the parent's death; an at-fork handler closes every sidecar descriptor in
//! the child.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::sqlite::{busy, fork};

/// What the sidecar's name adds to the database file's (like `-wal` and `-shm`).
pub const SUFFIX: &str = "-writer";

/// A process's open sidecars, for the at-fork handler (which may take no lock).
const SLOTS: usize = 256;
static FORK_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

extern "C" fn close_in_child() {
    for slot in &FORK_FDS {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: close is async-signal-safe; the child's queue never uses this fd again.
            unsafe { libc::close(fd) };
        }
    }
}

fn register_for_fork(fd: RawFd) -> Option<usize> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only closes descriptors (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(close_in_child)) };
    });
    FORK_FDS.iter().position(|slot| slot.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst).is_ok())
}

/// The waiting front's work, for the helper to run in the turn it gets, and when the
/// front began to wait.
struct Work(*mut (dyn FnMut() + Send + 'static), Instant);
// SAFETY: the closure is `Send`; its front waits until the helper is done with it (or
// took it back before the helper started it).
unsafe impl Send for Work {}

/// How the helper left a front's work.
enum Outcome {
    /// Run in the turn.
    Ran,
    /// Not run: the filesystem refused the lock; the front runs it without the queue.
    Off,
    /// Run, and it panicked.
    Panicked,
}

#[derive(Default)]
struct State {
    /// The sidecar; `None` once the store closed.
    fd: Option<Arc<OwnedFd>>,
    /// The work of a front waiting for its turn, until the helper takes it.
    work: Option<Work>,
    outcome: Option<Outcome>,
    /// The helper is blocked in `F_OFD_SETLKW` (while it is, it alone touches the lock).
    waiting: bool,
    helper: bool,
}

pub(crate) struct HostQueue {
    path: PathBuf,
    /// How long a front waits for its turn: the store's `busy_timeout`.
    budget: Duration,
    /// Set when the filesystem turned out not to support OFD locks.
    off: AtomicBool,
    slot: Option<usize>,
    opened_in: fork::Origin,
    state: Mutex<State>,
    cv: Condvar,
}

/// The queue held by this process; released when dropped.
struct Turn {
    fd: Arc<OwnedFd>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Cannot fail on a lock this description holds; if it did, the close of the
        // description (at the store's close, or the process's exit) drops it.
        let _ = set_lock(self.fd.as_raw_fd(), libc::F_OFD_SETLK, libc::F_UNLCK);
    }
}

/// The byte the queue's turn locks (exclusive).
const TURN: libc::off_t = 0;
/// The byte every store with the file open holds (shared): see the module docs.
const PRESENCE: libc::off_t = 1;

fn set_lock(fd: RawFd, cmd: libc::c_int, kind: libc::c_int) -> io::Result<()> {
    lock_byte(fd, cmd, kind, TURN)
}

fn lock_byte(fd: RawFd, cmd: libc::c_int, kind: libc::c_int, byte: libc::off_t) -> io::Result<()> {
    // SAFETY: a zeroed `flock` is valid; OFD locks need `l_pid` 0.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    loop {
        // SAFETY: `fd` is an open descriptor owned by the caller; `lock` outlives the call.
        if unsafe { libc::fcntl(fd, cmd, &mut lock) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn contended(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

/// The sidecar of the database file SQLite opened (`sqlite3_db_filename`).
pub(crate) fn sidecar_of(db_file: &Path) -> PathBuf {
    let mut name = OsString::from(db_file.as_os_str());
    name.push(SUFFIX);
    PathBuf::from(name)
}

fn refused(path: &Path, why: &str) -> Error {
    Error::invalid(
        "path",
        format!(
            "the writer queue file {:?} beside the database {why}: refused (it is never followed or replaced); \
             remove it and open again",
            path.display().to_string()
        ),
    )
}

fn open_flags() -> libc::c_int {
    libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK
}

fn open_raw(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated path; the descriptor returned is owned by the result.
    let fd = unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens (creating it with the database file's mode) the sidecar of `db_file`.
/// `Ok(None)`: no queue here (the directory or the file is not writable for us).
fn open_sidecar(path: &Path, db_file: &Path) -> Result<Option<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    let Ok(db) = std::fs::metadata(db_file) else { return Ok(None) };
    let mode = (db.mode() & 0o777) as libc::mode_t;
    let fd = match open_raw(path, open_flags() | libc::O_CREAT | libc::O_EXCL, mode) {
        Ok(fd) => {
            // SAFETY: `fd` is the file just created; exact bits whatever the umask, and
            // root gives it the database's owner, as SQLite does for `-wal`/`-shm`.
            unsafe {
                libc::fchmod(fd.as_raw_fd(), mode);
                if libc::geteuid() == 0 {
                    libc::fchown(fd.as_raw_fd(), db.uid(), db.gid());
                }
            }
            fd
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match open_raw(path, open_flags(), 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refused(path, "is a symbolic link")),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => return Err(refused(path, "is not a regular file")),
            Err(_) => return Ok(None),
        },
        Err(_) => return Ok(None),
    };
    // SAFETY: a zeroed `stat` is valid; `fd` is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Ok(None);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(path, "is not a regular file"));
    }
    Ok(Some(fd))
}

/// Whether `path` still names the file open as `fd` (not removed, nor replaced).
fn still_named(path: &Path, fd: RawFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: a zeroed `stat` is valid; `fd` is open.
    let mut open: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut open) } != 0 {
        return false;
    }
    std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == open.st_dev && m.ino() == open.st_ino)
}

/// Opens the sidecar and holds its presence byte (shared), opening again when the last
/// store to close removed the file meanwhile. `Ok(None)`: no queue here.
fn open_present(path: &Path, db_file: &Path) -> Result<Option<OwnedFd>> {
    for _ in 0..1000 {
        let Some(fd) = open_sidecar(path, db_file)? else { return Ok(None) };
        match lock_byte(fd.as_raw_fd(), libc::F_OFD_SETLK, libc::F_RDLCK, PRESENCE) {
            Ok(()) if still_named(path, fd.as_raw_fd()) => return Ok(Some(fd)),
            Ok(()) => {} // removed after we opened it: open the new one
            // The last store to close holds it exclusively while it removes the file.
            Err(e) if contended(&e) => std::thread::sleep(Duration::from_micros(100)),
            Err(_) => return Ok(None), // no OFD locks on this filesystem
        }
    }
    Ok(None)
}

impl HostQueue {
    /// The queue of the database file `db_file` (as SQLite names it), waiting at most
    /// `budget` for a turn; `Ok(None)` where there can be none (see the module docs).
    pub(crate) fn open(db_file: &Path, budget: Duration) -> Result<Option<HostQueue>> {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return Ok(None);
        }
        let path = sidecar_of(db_file);
        let Some(fd) = open_present(&path, db_file)? else { return Ok(None) };
        let Some(slot) = register_for_fork(fd.as_raw_fd()) else { return Ok(None) };
        Ok(Some(HostQueue {
            path,
            budget,
            off: AtomicBool::new(false),
            slot: Some(slot),
            opened_in: fork::Origin::here(),
            state: Mutex::new(State { fd: Some(Arc::new(fd)), ..State::default() }),
            cv: Condvar::new(),
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether turns are taken (false once the filesystem refused OFD locks).
    pub(crate) fn is_on(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// Runs `work` (a group's transaction) in this process's turn: at once when the
    /// queue is free, else on the helper thread the moment the kernel gives it the
    /// lock, while this thread waits at most `busy_timeout` for that moment (then the
    /// work is taken back, not run, and the error names the wait). Without a queue
    /// (switched off, the store closed) `work` runs here on SQLite's locking alone.
    /// Only the lane's front calls it: one caller at a time.
    pub(crate) fn in_turn(self: &Arc<Self>, work: &mut (dyn FnMut() + Send + '_)) -> Result<()> {
        let mut st = self.state.lock();
        let fd = match st.fd.clone() {
            Some(fd) if self.is_on() => fd,
            _ => {
                drop(st);
                work();
                return Ok(());
            }
        };
        if !st.waiting {
            match set_lock(fd.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK) {
                Ok(()) => {
                    drop(st);
                    let turn = Turn { fd };
                    work();
                    drop(turn);
                    return Ok(());
                }
                Err(e) if contended(&e) => {}
                Err(_) => {
                    self.off.store(true, Ordering::Relaxed);
                    drop(st);
                    work();
                    return Ok(());
                }
            }
        }
        if self.budget.is_zero() {
            return Err(self.gave_up());
        }
        let work: *mut (dyn FnMut() + Send + '_) = work;
        // SAFETY: only the lifetime is erased; this call does not return while the
        // helper may still run it (see `Work`).
        let work: *mut (dyn FnMut() + Send + 'static) = unsafe { std::mem::transmute(work) };
        let since = Instant::now();
        st.work = Some(Work(work, since));
        st.outcome = None;
        if !st.helper {
            let queue = self.clone();
            let spawned = std::thread::Builder::new().name("consensus-db-queue".into()).spawn(move || queue.help());
            if spawned.is_err() {
                st.work = None;
                self.off.store(true, Ordering::Relaxed);
                drop(st);
                // SAFETY: taken back before any other thread saw it.
                unsafe { (*work)() };
                return Ok(());
            }
            st.helper = true;
        }
        self.cv.notify_all();
        let mut until = since.checked_add(self.budget);
        loop {
            match st.outcome.take() {
                Some(Outcome::Ran) => return Ok(()),
                Some(Outcome::Panicked) => return Err(Error::Internal("a write group panicked".into())),
                Some(Outcome::Off) => {
                    drop(st);
                    // SAFETY: the helper handed it back without running it.
                    unsafe { (*work)() };
                    return Ok(());
                }
                None => {}
            }
            // Past the deadline the work is taken back if the helper has not started it;
            // once started, its turn began and it runs to its end (waited for untimed:
            // a timed wait past the deadline would return at once, spinning).
            if st.work.is_none() {
                until = None;
            }
            let timed_out = match until {
                Some(until) => self.cv.wait_until(&mut st, until).timed_out(),
                None => {
                    self.cv.wait(&mut st);
                    false
                }
            };
            if timed_out && st.outcome.is_none() && st.work.take().is_some() {
                return Err(self.gave_up());
            }
        }
    }

    fn gave_up(&self) -> Error {
        Error::Busy(format!(
            "waited {:.3}s in the host-wide writer queue ({:?}: another process's write holds it) and gave up: \
             busy_timeout ({} ms) passed",
            self.budget.as_secs_f64(),
            self.path.display().to_string(),
            self.budget.as_millis()
        ))
    }

    /// The helper thread: blocks in `F_OFD_SETLKW` whenever a front waits, and runs
    /// the front's work in the turn it gets (no hand-off while the lock is held); drops
    /// the turn at once when the front gave up meanwhile.
    fn help(self: Arc<Self>) {
        let mut st = self.state.lock();
        loop {
            while st.work.is_none() && st.fd.is_some() {
                self.cv.wait(&mut st);
            }
            let Some(fd) = st.fd.clone() else { break };
            st.waiting = true;
            drop(st);
            let locked = set_lock(fd.as_raw_fd(), libc::F_OFD_SETLKW, libc::F_WRLCK);
            st = self.state.lock();
            st.waiting = false;
            match (locked, st.work.take()) {
                (Ok(()), Some(Work(work, since))) => {
                    drop(st);
                    let turn = Turn { fd };
                    // The wait here counts against the group's BEGIN: one busy_timeout for both.
                    // SAFETY: its front waits for the outcome (see `Work`).
                    let ran =
                        catch_unwind(AssertUnwindSafe(|| busy::with_spent(since.elapsed(), || unsafe { (*work)() })));
                    drop(turn);
                    st = self.state.lock();
                    st.outcome = Some(if ran.is_ok() { Outcome::Ran } else { Outcome::Panicked });
                }
                (Ok(()), None) => drop(Turn { fd }),
                (Err(_), work) => {
                    self.off.store(true, Ordering::Relaxed);
                    if work.is_some() {
                        st.outcome = Some(Outcome::Off);
                    }
                }
            }
            self.cv.notify_all();
        }
        st.helper = false;
    }

    /// Closes the sidecar, removing it when no other store has it open (a helper still
    /// waiting closes its copy when its wait ends).
    pub(crate) fn close(&self) {
        let fd = {
            let mut st = self.state.lock();
            let fd = st.fd.take();
            self.cv.notify_all();
            fd
        };
        let Some(fd) = fd else { return };
        if let Some(slot) = self.slot {
            let _ = FORK_FDS[slot].compare_exchange(fd.as_raw_fd(), -1, Ordering::SeqCst, Ordering::SeqCst);
        }
        // Exclusive only when no other open file description holds the presence byte.
        let last = lock_byte(fd.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, PRESENCE).is_ok();
        if last && still_named(&self.path, fd.as_raw_fd()) {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(fd);
    }
}

impl Drop for HostQueue {
    fn drop(&mut self) {
        if self.opened_in.check().is_err() {
            // A forked child: the at-fork handler closed the descriptor, whose number
            // may since name another file.
            if let Some(fd) = self.state.get_mut().fd.take() {
                std::mem::forget(fd);
            }
            return;
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(db: &Path, budget_ms: u64) -> Arc<HostQueue> {
        Arc::new(HostQueue::open(db, Duration::from_millis(budget_ms)).unwrap().expect("a queue"))
    }

    #[test]
    fn a_turn_held_elsewhere_bounds_the_wait_then_the_helper_runs_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        std::fs::write(&db, b"").unwrap();
        // Stores on one file (each its own open file description) queue like processes.
        let (a, b, c) = (queue(&db, 100), queue(&db, 100), queue(&db, 5000));
        let gate = Arc::new((std::sync::Mutex::new((false, false)), std::sync::Condvar::new()));
        let holder = {
            let (a, gate) = (a.clone(), gate.clone());
            std::thread::spawn(move || {
                a.in_turn(&mut || {
                    let (m, cv) = &*gate;
                    m.lock().unwrap().0 = true; // held
                    cv.notify_all();
                    drop(cv.wait_while(m.lock().unwrap(), |s| !s.1).unwrap()); // until released
                })
            })
        };
        let (m, cv) = &*gate;
        drop(cv.wait_while(m.lock().unwrap(), |s| !s.0).unwrap());
        let started = Instant::now();
        let mut ran = false;
        let e = b.in_turn(&mut || ran = true);
        assert!(matches!(&e, Err(Error::Busy(m)) if m.contains("writer queue")), "{e:?}");
        assert!(!ran && started.elapsed() >= Duration::from_millis(100));
        // A longer budget: the helper thread runs the work the moment the turn is free.
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut ran = None;
                c.in_turn(&mut || ran = Some(std::thread::current().name().map(String::from))).map(|()| ran)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        m.lock().unwrap().1 = true;
        cv.notify_all();
        holder.join().unwrap().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), Some(Some("consensus-db-queue".into())));
        let path = a.path().to_path_buf();
        a.close();
        b.close();
        assert!(path.exists(), "still open by the third store");
        c.close();
        assert!(!path.exists(), "the last to close removes it");
    }

    #[test]
    fn a_symbolic_link_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        std::fs::write(&db, b"").unwrap();
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, sidecar_of(&db)).unwrap();
        let e = HostQueue::open(&db, Duration::ZERO).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("symbolic link") && e.contains("-writer"), "{e}");
        assert!(!target.exists());
    }
}
