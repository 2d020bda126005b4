//! The PyO3 bindings: `consensus_db._core`. Every call into the engine goes through
//! [`run`], which releases the GIL and turns a Rust panic into `InternalError`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

mod convert;
mod database;
mod errors;
mod models;
mod transaction;

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
    crate::migrations::list()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = crate::sqlite::writer::COMPLETION_SCOPE.set(database::completion_scope);
    m.add_class::<database::PyDatabase>()?;
    m.add_class::<transaction::PyTransaction>()?;
    m.add_class::<transaction::PySavepoint>()?;
    m.add_class::<crate::model::Artifact>()?;
    m.add_class::<crate::model::Synthesis>()?;
    m.add_class::<crate::model::ExtractionFailure>()?;
    m.add_function(wrap_pyfunction!(sqlite_version, m)?)?;
    m.add_function(wrap_pyfunction!(migrations, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add("LEGACY_SCHEMA_SQL", crate::migrations::LEGACY_SCHEMA_SQL)?;
    m.add("DEFAULT_SCHEMA_VERSION", crate::migrations::DEFAULT_VERSION)?;
    m.add("LATEST_SCHEMA_VERSION", crate::migrations::LATEST_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULTS", database::defaults(m.py())?)?;
    Ok(())
}
