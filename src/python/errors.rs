//! The core's error enum mapped, variant by variant, onto the Python exception tree
//! defined in `consensus_db/errors.py` (one base class, `consensus_db.Error`).

use pyo3::prelude::*;

use crate::error::Error;

mod py {
    pyo3::import_exception!(consensus_db.errors, BusyError);
    pyo3::import_exception!(consensus_db.errors, PoolTimeoutError);
    pyo3::import_exception!(consensus_db.errors, IntegrityError);
    pyo3::import_exception!(consensus_db.errors, InvalidInputError);
    pyo3::import_exception!(consensus_db.errors, SchemaVersionError);
    pyo3::import_exception!(consensus_db.errors, MigrationError);
    pyo3::import_exception!(consensus_db.errors, ExecutionsInFlightError);
    pyo3::import_exception!(consensus_db.errors, TransactionError);
    pyo3::import_exception!(consensus_db.errors, PragmaVerificationError);
    pyo3::import_exception!(consensus_db.errors, CorruptDatabaseError);
    pyo3::import_exception!(consensus_db.errors, ReadOnlyError);
    pyo3::import_exception!(consensus_db.errors, ClosedError);
    pyo3::import_exception!(consensus_db.errors, ForkedProcessError);
    pyo3::import_exception!(consensus_db.errors, DiskFullError);
    pyo3::import_exception!(consensus_db.errors, DatabaseError);
    pyo3::import_exception!(consensus_db.errors, InternalError);
    pyo3::import_exception!(consensus_db.errors, NotSupportedError);
    pyo3::import_exception!(consensus_db.errors, ConnectionLostError);
    pyo3::import_exception!(consensus_db.errors, OutcomeUnknownError);
    pyo3::import_exception!(consensus_db.errors, NotReplicatedError);
    pyo3::import_exception!(consensus_db.errors, StaleClaimError);
    pyo3::import_exception!(consensus_db.errors, IdempotencyKeyError);
}

/// Attributes set on an exception's instance (what a caller matches on besides the text).
trait WithAttributes {
    fn with_attrs(self, set: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<()>) -> PyErr;
}

impl WithAttributes for PyErr {
    fn with_attrs(self, set: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<()>) -> PyErr {
        Python::attach(|py| match set(self.value(py).as_any()) {
            Ok(()) => self,
            Err(e) => e,
        })
    }
}

pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Busy(_) => py::BusyError::new_err(message),
        Error::PoolTimeout(_) => py::PoolTimeoutError::new_err(message),
        Error::Integrity(_) => py::IntegrityError::new_err(message),
        Error::InvalidInput { .. } => py::InvalidInputError::new_err(message),
        Error::SchemaTooNew { .. } | Error::LayoutTooNew { .. } => py::SchemaVersionError::new_err(message),
        Error::Migration(_) => py::MigrationError::new_err(message),
        Error::InFlight { .. } => py::ExecutionsInFlightError::new_err(message),
        Error::Transaction(_) => py::TransactionError::new_err(message),
        Error::Pragma { .. } => py::PragmaVerificationError::new_err(message),
        Error::Corrupt(_) => py::CorruptDatabaseError::new_err(message),
        Error::ReadOnly(_) | Error::CannotWrite(_) => py::ReadOnlyError::new_err(message),
        Error::Closed => py::ClosedError::new_err(message),
        Error::Forked { .. } => py::ForkedProcessError::new_err(message),
        Error::DiskFull(_) => py::DiskFullError::new_err(message),
        Error::Sqlite(_) => py::DatabaseError::new_err(message),
        Error::Internal(_) => py::InternalError::new_err(message),
        Error::NotSupported(_) => py::NotSupportedError::new_err(message),
        Error::ConnectionLost(_) => py::ConnectionLostError::new_err(message),
        Error::OutcomeUnknown(_) => py::OutcomeUnknownError::new_err(message),
        Error::NotReplicated(_) => py::NotReplicatedError::new_err(message),
        Error::StaleClaim(c) => py::StaleClaimError::new_err(message).with_attrs(|e| {
            e.setattr("spec_id", c.spec_id)?;
            e.setattr("stage", c.stage)?;
            e.setattr("branch_id", c.branch_id)?;
            e.setattr("token", c.token)?;
            e.setattr("newest_token", c.newest)
        }),
        Error::IdempotencyConflict { key, .. } => py::IdempotencyKeyError::new_err(message).with_attrs(key_of(key)),
    }
}

/// Sets `idempotency_key` on an exception.
fn key_of(key: String) -> impl FnOnce(&Bound<'_, PyAny>) -> PyResult<()> {
    move |e| e.setattr("idempotency_key", key)
}

/// An outcome left unknown of a call that carried an idempotency key: the exception
/// names the key, which makes repeating the call safe (`consensus_db.retry` repeats it).
/// A NotReplicatedError is left as it is: never repeated.
pub fn mark_keyed(py: Python<'_>, err: PyErr, key: &str) -> PyErr {
    if err.is_instance_of::<py::OutcomeUnknownError>(py) && !err.is_instance_of::<py::NotReplicatedError>(py) {
        if let Err(e) = err.value(py).setattr("idempotency_key", key) {
            return e;
        }
    }
    err
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        to_py(err)
    }
}
