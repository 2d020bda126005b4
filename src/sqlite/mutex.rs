//! SQLite's process-wide settings (`configure_sqlite`, before the first connection):
//! memory statistics off, and SQLite's own mutexes as parking_lot mutexes: they spin
//! briefly before sleeping.
//!
//! Why: every read transaction takes the WAL read lock on the `-shm` file, and SQLite's
//! unix VFS holds a mutex across that `fcntl()` call. With SQLite's default (a plain
//! pthread mutex, which sleeps at once), two threads reading at the same time put each
//! other to sleep on it — a futex wait and a wake per read — and two reader threads
//! together ran slower than one. A mutex that spins for the length of a system call
//! first keeps both threads running.

use std::ffi::c_int;

use parking_lot::lock_api::{RawMutex as _, RawReentrantMutex};
use parking_lot::{RawMutex, RawThreadId};
use rusqlite::ffi;

enum Mutex {
    Fast(RawMutex),
    Recursive(RawReentrantMutex<RawMutex, RawThreadId>),
}

/// SQLite's static mutexes, `SQLITE_MUTEX_STATIC_MAIN` (2) to `SQLITE_MUTEX_STATIC_VFS3`
/// (13). None is recursive.
const FIRST_STATIC: c_int = ffi::SQLITE_MUTEX_STATIC_MAIN;
const LAST_STATIC: c_int = ffi::SQLITE_MUTEX_STATIC_VFS3;
static STATICS: [Mutex; (LAST_STATIC - FIRST_STATIC + 1) as usize] =
    [const { Mutex::Fast(RawMutex::INIT) }; (LAST_STATIC - FIRST_STATIC + 1) as usize];

static METHODS: ffi::sqlite3_mutex_methods = ffi::sqlite3_mutex_methods {
    xMutexInit: Some(init),
    xMutexEnd: Some(init),
    xMutexAlloc: Some(alloc),
    xMutexFree: Some(free),
    xMutexEnter: Some(enter),
    xMutexTry: Some(try_enter),
    xMutexLeave: Some(leave),
    xMutexHeld: Some(cannot_tell),
    xMutexNotheld: Some(cannot_tell),
};

/// Installs these mutexes. SQLite accepts them only before it is initialised, so this
/// runs before the first connection opens; if something else in the process opened one
/// first, SQLite keeps its own (see [`installed`]). Returns SQLite's answer.
pub(crate) fn install() -> c_int {
    // SAFETY: SQLITE_CONFIG_MUTEX takes a pointer to a methods struct, which SQLite
    // copies; after initialisation it changes nothing and answers SQLITE_MISUSE.
    unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MUTEX, &METHODS as *const ffi::sqlite3_mutex_methods) }
}

/// What became of this library's process-wide SQLite settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// SQLite runs on this library's mutexes (and without memory statistics).
    Installed,
    /// Something else in the process initialised SQLite before this library's first
    /// connection: SQLite keeps its own mutexes. Correct, but parallel reads are slower.
    /// It happens only with the `system-sqlite` feature (the SQLite library is shared
    /// with every other user of it in the process: Python's `sqlite3`, another crate)
    /// or when a bundled copy is opened by another rusqlite user first.
    AlreadyInitialised,
}

/// What to do about [`Setup::AlreadyInitialised`], for warnings and errors.
pub const ALREADY_INITIALISED: &str = "consensus-db: SQLite was initialised by another user of the same SQLite \
library in this process before consensus-db's first connection, so SQLite keeps its default mutexes \
(correct, but parallel reads are slower). Open a consensus_db Database (or import consensus_db) before \
anything else opens an SQLite connection, or have the other user share consensus-db's Database \
(the Embedding section of docs/embedding.md) instead of opening the file itself.";

static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();

/// Process-wide SQLite settings, applied before the first connection opens: memory
/// statistics off (otherwise every SQLite allocation takes a global mutex) and
/// mutexes that spin before sleeping (see this module). With `system-sqlite`, a
/// refusal (SQLite already initialised by someone else) is reported once on stderr;
/// [`setup`] returns it to a host that wants to handle it itself.
pub(crate) fn configure_sqlite() -> Setup {
    *SETUP.get_or_init(|| {
        // SAFETY: runs once, before this library opens any connection; SQLite answers
        // SQLITE_MISUSE if something else initialised it already.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
        let setup = if install() == ffi::SQLITE_OK { Setup::Installed } else { Setup::AlreadyInitialised };
        #[cfg(feature = "system-sqlite")]
        if setup == Setup::AlreadyInitialised {
            eprintln!("warning: {ALREADY_INITIALISED}");
        }
        setup
    })
}

/// Applies this library's SQLite settings now if no connection has yet (a host may
/// call it first thing) and says whether they took.
pub fn setup() -> Setup {
    configure_sqlite()
}

/// [`setup`] as a `Result`: `Err(Error::Sqlite(..))` naming what to do when SQLite was
/// initialised by someone else first (a host that wants to refuse to run that way).
pub fn require() -> crate::Result<()> {
    match setup() {
        Setup::Installed => Ok(()),
        Setup::AlreadyInitialised => Err(crate::Error::Sqlite(ALREADY_INITIALISED.into())),
    }
}

/// Whether SQLite runs on these mutexes (false if something else in the process
/// initialised SQLite before this library opened its first connection).
pub fn installed() -> bool {
    configure_sqlite();
    // SAFETY: SQLite is initialised (or this initialises it); a static mutex is
    // SQLite's own, so allocating one only looks it up.
    let app1 = unsafe { ffi::sqlite3_mutex_alloc(ffi::SQLITE_MUTEX_STATIC_APP1) };
    !app1.is_null() && is_static(app1)
}

unsafe extern "C" fn init() -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn alloc(kind: c_int) -> *mut ffi::sqlite3_mutex {
    let mutex = match kind {
        ffi::SQLITE_MUTEX_FAST => Mutex::Fast(RawMutex::INIT),
        ffi::SQLITE_MUTEX_RECURSIVE => Mutex::Recursive(RawReentrantMutex::INIT),
        FIRST_STATIC..=LAST_STATIC => {
            return &STATICS[(kind - FIRST_STATIC) as usize] as *const Mutex as *mut ffi::sqlite3_mutex;
        }
        _ => return std::ptr::null_mut(),
    };
    Box::into_raw(Box::new(mutex)).cast()
}

fn is_static(p: *mut ffi::sqlite3_mutex) -> bool {
    STATICS.as_ptr_range().contains(&(p as *const Mutex))
}

unsafe extern "C" fn free(p: *mut ffi::sqlite3_mutex) {
    if !p.is_null() && !is_static(p) {
        // SAFETY: every non-static mutex came from Box::into_raw in `alloc`, and SQLite
        // frees each once.
        drop(unsafe { Box::from_raw(p.cast::<Mutex>()) });
    }
}

/// SAFETY (for the callers below): SQLite passes only pointers `alloc` returned.
unsafe fn mutex<'a>(p: *mut ffi::sqlite3_mutex) -> &'a Mutex {
    unsafe { &*p.cast::<Mutex>() }
}

unsafe extern "C" fn enter(p: *mut ffi::sqlite3_mutex) {
    match unsafe { mutex(p) } {
        Mutex::Fast(m) => m.lock(),
        Mutex::Recursive(m) => m.lock(),
    }
}

unsafe extern "C" fn try_enter(p: *mut ffi::sqlite3_mutex) -> c_int {
    let taken = match unsafe { mutex(p) } {
        Mutex::Fast(m) => m.try_lock(),
        Mutex::Recursive(m) => m.try_lock(),
    };
    if taken {
        ffi::SQLITE_OK
    } else {
        ffi::SQLITE_BUSY
    }
}

unsafe extern "C" fn leave(p: *mut ffi::sqlite3_mutex) {
    // SAFETY: SQLite leaves only a mutex this thread entered.
    match unsafe { mutex(p) } {
        Mutex::Fast(m) => unsafe { m.unlock() },
        Mutex::Recursive(m) => unsafe { m.unlock() },
    }
}

/// `sqlite3_mutex_held`/`_notheld` serve SQLite's debug assertions only; an
/// implementation that cannot tell answers true.
unsafe extern "C" fn cannot_tell(_: *mut ffi::sqlite3_mutex) -> c_int {
    1
}
