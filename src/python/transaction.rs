//! `with db.transaction("immediate") as tx:` — commit on success, rollback on any
//! exception; `with tx.savepoint():` nests. Each statement releases the GIL.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyAny;

use super::convert::{rows_with_columns, text, to_params, type_name};
use super::run;
use crate::backend::AnyTx as Tx;
use crate::error::Error;
use crate::sqlite::transaction::Behavior;

/// `with db.transaction(behavior) as tx:` — commits when the block ends, rolls back
/// when it raises; `tx.execute`/`tx.query` run inside it, `tx.savepoint()` nests.
#[pyclass(frozen, module = "consensus_db", name = "Transaction")]
pub struct PyTransaction {
    db: Py<super::database::PyDatabase>,
    behavior: Behavior,
    tx: Mutex<Option<Tx>>,
}

impl PyTransaction {
    pub fn new(db: Py<super::database::PyDatabase>, behavior: Behavior) -> Self {
        PyTransaction { db, behavior, tx: Mutex::new(None) }
    }

    fn with_tx<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Tx) -> crate::Result<T> + Send) -> PyResult<T> {
        run(py, || {
            let mut guard = self.tx.lock();
            let tx = guard.as_mut().ok_or_else(|| {
                Error::Transaction("the transaction is not active: use it inside its `with` block".into())
            })?;
            tx.check_origin()?;
            f(tx)
        })
    }
}

#[pymethods]
impl PyTransaction {
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        {
            let this = slf.get();
            let db = this.db.get();
            let behavior = this.behavior;
            let tx = run(py, || db.any().begin(behavior))?;
            let mut slot = this.tx.lock();
            if slot.is_some() {
                return Err(Error::Sqlite("the transaction is already active".into()).into());
            }
            *slot = Some(tx);
        }
        Ok(slf)
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let failed = exc_type.is_some_and(|t| !t.is_none());
        let tx = self.tx.lock().take();
        if let Some(tx) = tx {
            run(py, || if failed { tx.rollback() } else { tx.commit() })?;
        }
        Ok(false)
    }

    /// Runs one statement; returns the number of rows it changed.
    #[pyo3(signature = (sql, params=None))]
    fn execute(&self, py: Python<'_>, sql: &Bound<'_, PyAny>, params: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let sql = text(sql, "sql")?;
        let params = to_params(params)?;
        self.with_tx(py, move |tx| tx.execute_params(&sql, &params))
    }

    /// Runs one statement for every parameter row (prepared once); returns rows changed.
    fn executemany(&self, py: Python<'_>, sql: &Bound<'_, PyAny>, rows: &Bound<'_, PyAny>) -> PyResult<usize> {
        let sql = text(sql, "sql")?;
        let iter = rows.try_iter().map_err(|_| {
            PyErr::from(Error::invalid(
                "rows",
                format!("must be an iterable of parameter rows, got {}", type_name(rows)),
            ))
        })?;
        let mut all = Vec::new();
        for (i, row) in iter.enumerate() {
            all.push(
                to_params(Some(&row?)).map_err(|e| PyErr::from(Error::invalid(format!("rows[{i}]"), e.to_string())))?,
            );
        }
        self.with_tx(py, move |tx| tx.execute_many_params(&sql, &all))
    }

    /// Runs a query; returns `Rows` (a list of tuples with `columns`).
    #[pyo3(signature = (sql, params=None))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sql = text(sql, "sql")?;
        let params = to_params(params)?;
        let (columns, rows) = self.with_tx(py, move |tx| tx.query_columns(&sql, &params))?;
        rows_with_columns(py, columns, rows)
    }

    /// The rowid of the last row inserted through this transaction.
    #[getter]
    fn lastrowid(&self, py: Python<'_>) -> PyResult<i64> {
        self.with_tx(py, |tx| tx.last_insert_rowid())
    }

    /// A nested savepoint: `with tx.savepoint(): ...` undoes only its own part on error.
    fn savepoint(slf: Bound<'_, Self>) -> PySavepoint {
        PySavepoint { tx: slf.unbind(), name: Mutex::new(None) }
    }
}

/// `with tx.savepoint():` — undoes only its own part of the transaction when the block raises.
#[pyclass(frozen, module = "consensus_db", name = "Savepoint")]
pub struct PySavepoint {
    tx: Py<PyTransaction>,
    name: Mutex<Option<String>>,
}

#[pymethods]
impl PySavepoint {
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        {
            let this = slf.get();
            let tx = this.tx.get();
            let name = tx.with_tx(py, |tx| tx.savepoint())?;
            *this.name.lock() = Some(name);
        }
        Ok(slf)
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let failed = exc_type.is_some_and(|t| !t.is_none());
        if let Some(name) = self.name.lock().take() {
            let tx = self.tx.get();
            tx.with_tx(py, move |tx| if failed { tx.rollback_to(&name) } else { tx.release(&name) })?;
        }
        Ok(false)
    }
}
