//! The PyO3 bindings: `consensus_db._core`. Every call into the engine goes through
//! [`run`], which releases the GIL and turns a Rust panic into `InternalError`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

mod convert;
pub(crate) mod database;
mod errors;
mod models;
pub mod reports;
mod transaction;
mod wait;

use crate::error::Error;

/// Runs engine work without the GIL; a panic becomes the library's InternalError
/// instead of crossing the FFI boundary.
pub(crate) fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!("a Rust panic was caught: {what}")))
        })
        .map_err(PyErr::from)
}

/// [`run`] for a call carrying an idempotency key (`key`): an `OutcomeUnknownError` it
/// raises names the key (see `errors::mark_keyed`).
pub(crate) fn run_keyed<T: Send>(
    py: Python<'_>,
    key: Option<&str>,
    f: impl FnOnce() -> crate::Result<T> + Send,
) -> PyResult<T> {
    run(py, f).map_err(|e| match key {
        Some(key) => errors::mark_keyed(py, e, key),
        None => e,
    })
}

/// Panics inside the engine boundary; exists so tests can prove panics become errors.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>) -> PyResult<()> {
    run(py, || -> crate::Result<()> { panic!("deliberate panic for tests") })
}

/// The SQLite library version linked into the extension.
#[pyfunction]
fn sqlite_version() -> &'static str {
    rusqlite::version()
}

/// (version, description) of every known migration, in order.
#[pyfunction]
fn migrations() -> Vec<(i64, &'static str)> {
    crate::sqlite::migrations::list()
}

/// A PostgreSQL URL (or `key=value` connection string) with every secret masked:
/// the password of `user:password@` and the values of `password`, `sslpassword`,
/// `passfile` and `sslkey` become `***`. What the store shows as its `path`.
#[pyfunction]
fn redact_url(url: &str) -> String {
    crate::conninfo::redact(url)
}

/// The module: loaded from the wheel's extension, or registered by a Rust host with
/// `consensus_db::embed::register` (then the host's copy of the crate is the only one).
#[pymodule]
pub(crate) fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = crate::callbacks::COMPLETION_SCOPE.set(database::completion_scope);
    // SQLite's process-wide settings as the module loads, before any connection of
    // this library: the earliest point at which another user of a shared (system)
    // SQLite can have got there first — said as a RuntimeWarning.
    if crate::sqlite::mutex::configure_sqlite() == crate::sqlite::mutex::Setup::AlreadyInitialised
        && cfg!(feature = "system-sqlite")
    {
        let py = m.py();
        let message = std::ffi::CString::new(crate::sqlite::mutex::ALREADY_INITIALISED).unwrap_or_default();
        PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(), &message, 1)?;
    }
    m.add_class::<database::PyDatabase>()?;
    m.add_class::<transaction::PyTransaction>()?;
    m.add_class::<transaction::PySavepoint>()?;
    m.add_class::<wait::PyAgentsWaiter>()?;
    m.add_class::<crate::model::Artifact>()?;
    m.add_class::<crate::model::Synthesis>()?;
    m.add_class::<crate::model::ExtractionFailure>()?;
    m.add_class::<crate::model::AgentExecution>()?;
    m.add_class::<crate::model::Claim>()?;
    m.add_function(wrap_pyfunction!(sqlite_version, m)?)?;
    m.add_function(wrap_pyfunction!(migrations, m)?)?;
    m.add_function(wrap_pyfunction!(redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(reports::_report_fields, m)?)?;
    m.add("LEGACY_SCHEMA_SQL", crate::sqlite::migrations::LEGACY_SCHEMA_SQL)?;
    m.add("DEFAULT_SCHEMA_VERSION", crate::sqlite::migrations::DEFAULT_VERSION)?;
    m.add("LATEST_SCHEMA_VERSION", crate::sqlite::migrations::LATEST_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULTS", database::defaults(m.py())?)?;
    Ok(())
}
