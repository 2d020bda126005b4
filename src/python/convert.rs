//! Python values in and out: arguments checked with errors that name them, SQL
//! parameters, and SQLite values back to Python objects.

use std::fmt::Display;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyString, PyTuple};
use rusqlite::types::Value;

use crate::error::Error;

/// A required string argument. Non-strings and strings that cannot be encoded
/// (lone surrogates) are the library's invalid-input error, naming the argument.
/// `name` is formatted only when there is an error to report.
pub fn text(obj: &Bound<'_, PyAny>, name: impl Display) -> PyResult<PyBackedStr> {
    let s = obj.cast::<PyString>().map_err(|_| {
        Error::invalid(name.to_string(), format!("must be a str, got {}", type_name(obj)))
    })?;
    PyBackedStr::try_from(s.clone()).map_err(|_| {
        Error::invalid(name.to_string(), "contains characters that cannot be encoded as UTF-8 (lone surrogates?)").into()
    })
}

pub fn opt_text(obj: Option<&Bound<'_, PyAny>>, name: impl Display) -> PyResult<Option<PyBackedStr>> {
    match obj {
        Some(o) if !o.is_none() => text(o, name).map(Some),
        _ => Ok(None),
    }
}

/// JSON text: a `str` is passed through (validated later, in the core); any other
/// value is serialized with `json.dumps` (no NaN, which is not JSON).
pub fn json_text(obj: &Bound<'_, PyAny>, name: impl Display) -> PyResult<PyBackedStr> {
    if obj.is_instance_of::<PyString>() {
        return text(obj, name);
    }
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    let dumps = DUMPS.get_or_try_init(py, || -> PyResult<_> { Ok(py.import("json")?.getattr("dumps")?.unbind()) })?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("ensure_ascii", false)?;
    kwargs.set_item("allow_nan", false)?;
    let dumped = dumps.bind(py).call((obj,), Some(&kwargs)).map_err(|e| {
        PyErr::from(Error::invalid(name.to_string(), format!("cannot be serialized as JSON: {e}")))
    })?;
    text(&dumped, name)
}

pub fn opt_json_text(obj: Option<&Bound<'_, PyAny>>, name: impl Display) -> PyResult<Option<PyBackedStr>> {
    match obj {
        Some(o) if !o.is_none() => json_text(o, name).map(Some),
        _ => Ok(None),
    }
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// One SQL parameter.
pub fn to_value(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::Null)
    } else if obj.is_instance_of::<PyString>() {
        Ok(Value::Text(text(obj, name)?.to_string()))
    } else if obj.is_instance_of::<PyInt>() {
        obj.extract::<i64>().map(Value::Integer).map_err(|_| {
            Error::invalid(name, format!("integer {obj} does not fit in SQLite's 64-bit integers")).into()
        })
    } else if obj.is_instance_of::<PyFloat>() {
        Ok(Value::Real(obj.extract()?))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(Value::Blob(b.as_bytes().to_vec()))
    } else {
        Err(Error::invalid(name, format!("type {} is not a SQL value (None, int, float, str, bytes)", type_name(obj))).into())
    }
}

/// Positional SQL parameters from any sequence (or `None` for none).
pub fn to_params(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Value>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Vec::new()) };
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(Error::invalid("params", "must be a sequence of values, not a single str/bytes").into());
    }
    let mut out = Vec::new();
    for (i, item) in obj.try_iter().map_err(|_| {
        PyErr::from(Error::invalid("params", format!("must be a sequence, got {}", type_name(obj))))
    })?.enumerate() {
        out.push(to_value(&item?, &format!("params[{i}]"))?);
    }
    Ok(out)
}

pub fn to_py<'py>(py: Python<'py>, value: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Integer(i) => i.into_pyobject(py)?.into_any(),
        Value::Real(f) => f.into_pyobject(py)?.into_any(),
        Value::Text(s) => PyString::new(py, &s).into_any(),
        Value::Blob(b) => PyBytes::new(py, &b).into_any(),
    })
}

pub fn rows_to_py<'py>(py: Python<'py>, rows: Vec<Vec<Value>>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    rows.into_iter()
        .map(|row| {
            let items = row.into_iter().map(|v| to_py(py, v)).collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, items)
        })
        .collect()
}
