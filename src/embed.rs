//! Embedding (feature `python`): a Rust host that runs Python code hands its own
//! [`Database`] to that code as the very object `consensus_db.connect()` returns — a
//! `consensus_db.Store` sharing the host's pool, write lane, maintenance thread and
//! SQLite. One file, one engine, one SQLite library in the process.
//!
//! ```no_run
//! # fn main() -> pyo3::PyResult<()> {
//! use std::sync::Arc;
//! use pyo3::prelude::*;
//! use consensus_db::{embed, Database, Options};
//!
//! let db = Arc::new(Database::open("consensus.db", Options::default())?);
//! Python::attach(|py| {
//!     embed::register(py)?; // before anything imports consensus_db
//!     let store = embed::store(py, db.clone())?;
//!     store.call_method1("record_agent_spawn", ("agent-1", "SPEC-1", "plan", "quality_gate", "gemini"))?;
//!     Ok::<_, PyErr>(())
//! })?;
//! assert!(db.get_agent_spawn_info("agent-1")?.is_some());
//! # Ok(()) }
//! ```
//!
//! The host must not also load the wheel's `consensus_db/_core*.so`: that would be a
//! second copy of this crate — a second SQLite (POSIX locks are per process: one copy
//! closing the file drops the other's locks) and classes that are not the host's.
//! [`register`] puts a finder first on `sys.meta_path` that answers `consensus_db._core`
//! with the host's module, so `import consensus_db` (its Python files from an installed
//! wheel or from `python/`) binds to it and never opens the wheel's extension file.
//! The Python files must be of the same version as the crate.

use std::sync::Arc;

use pyo3::exceptions::{PyImportError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::python::database::{with_handover, PyDatabase};
use crate::Database;

/// The module's import name.
pub const MODULE: &str = "consensus_db._core";

/// Whether `module` is this copy of the crate's `_core` (not the wheel's).
fn is_ours(module: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = module.py();
    Ok(module.getattr("Database").is_ok_and(|t| t.is(py.get_type::<PyDatabase>())))
}

fn describe(module: &Bound<'_, PyAny>) -> String {
    module
        .getattr("__file__")
        .and_then(|f| f.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "an unknown place".into())
}

/// The host's module, made once per process.
static MODULE_OBJECT: pyo3::sync::PyOnceLock<Py<PyModule>> = pyo3::sync::PyOnceLock::new();

/// A finder on `sys.meta_path` that answers `consensus_db._core` with the host's module
/// (ahead of the path finder that would load the wheel's extension file); the import
/// system then binds it as `consensus_db._core` like any submodule.
const FINDER: &str = r#"
import importlib.util, sys

class ConsensusDbHostCore:
    """consensus_db._core from the Rust host that embeds this interpreter."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "consensus_db._core":
            return importlib.util.spec_from_loader(name, cls, origin="built-in (host)")
        return None

    @classmethod
    def create_module(cls, spec):
        return module

    @classmethod
    def exec_module(cls, mod):
        pass

sys.meta_path.insert(0, ConsensusDbHostCore)
"#;

/// Registers this crate's `consensus_db._core` with the import system. Call it before
/// anything imports `consensus_db` (right after the interpreter starts); calling it
/// again is a no-op. Fails with `ImportError` when the wheel's extension was imported
/// first — the process would then hold two copies of the crate and two SQLites.
pub fn register(py: Python<'_>) -> PyResult<()> {
    let modules = py.import("sys")?.getattr("modules")?.cast_into::<PyDict>()?;
    if let Some(existing) = modules.get_item(MODULE)? {
        if is_ours(&existing)? {
            return Ok(());
        }
        return Err(PyImportError::new_err(format!(
            "{MODULE} was already imported from {} (another copy of consensus-db): call \
             consensus_db::embed::register() before anything imports consensus_db",
            describe(&existing)
        )));
    }
    if MODULE_OBJECT.get(py).is_some() {
        return Ok(()); // the finder is in place; nothing imported the module yet
    }
    let module = MODULE_OBJECT.get_or_try_init(py, || crate::python::_core::_PYO3_DEF.make_module(py))?;
    let globals = PyDict::new(py);
    globals.set_item("module", module.bind(py))?;
    py.run(&std::ffi::CString::new(FINDER)?, Some(&globals), None)?;
    Ok(())
}

/// The host's `Database` as a `consensus_db.Store` (what `consensus_db.connect()`
/// returns): Python writes go through the host's write lane, reads through its pool.
/// Registers the module if [`register`] was not called yet.
///
/// The host owns the store's life: dropping the Python object does not close it;
/// `close()` from Python closes it for everyone (as it would any store). Retries are
/// the engine's, as the host's `Options::retry` set them (the object's `retry_policy`
/// is None: the asyncio layer adds no retries of its own).
pub fn store<'py>(py: Python<'py>, db: Arc<Database>) -> PyResult<Bound<'py, PyAny>> {
    register(py)?;
    let core = py.import(MODULE)?;
    if !is_ours(core.as_any())? {
        return Err(PyImportError::new_err(format!(
            "{MODULE} is the copy from {}, not this host's",
            describe(core.as_any())
        )));
    }
    let class = py.import("consensus_db")?.getattr("Store")?;
    let path = db.given_path().as_os_str().into_pyobject(py)?;
    let new = py.get_type::<PyDatabase>().getattr("__new__")?;
    let store = with_handover(db, || new.call1((&class, &path)))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("retry", py.None())?;
    class.getattr("__init__")?.call((&store, &path), Some(&kwargs))?;
    Ok(store)
}

/// The `Database` behind a store object from Python (one [`store`] handed over, or one
/// Python opened with `connect()`), shared: the host can keep using it after Python
/// lets go of the object.
pub fn database(store: &Bound<'_, PyAny>) -> PyResult<Arc<Database>> {
    let db = store.cast::<PyDatabase>().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a consensus_db store (of this host's {MODULE}), got {}",
            store.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    Ok(db.get().shared()?.clone())
}
