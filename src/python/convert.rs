//! Python values in and out: arguments checked with errors that name them, SQL
//! parameters, and SQLite values back to Python objects.

use std::fmt::Display;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyMapping, PyString, PyTuple};
use rusqlite::types::Value;

use crate::error::Error;
use crate::sqlite::transaction::Params;

/// SQLite's longest string or blob (SQLITE_MAX_LENGTH, not changed in the bundled build).
pub const MAX_LENGTH: usize = 1_000_000_000;

/// The longest duration argument, in seconds (about 31 years): longer ones overflow
/// the deadlines computed from them.
const MAX_SECONDS: f64 = 1e9;

fn not_too_long(len: usize, name: impl Display) -> PyResult<()> {
    if len > MAX_LENGTH {
        let message = format!("is {len} bytes long, over SQLite's limit of {MAX_LENGTH} bytes");
        return Err(Error::invalid(name.to_string(), message).into());
    }
    Ok(())
}

/// A required string argument. Non-strings, strings that cannot be encoded (lone
/// surrogates) and strings over SQLite's length limit are the library's invalid-input
/// error, naming the argument. `name` is formatted only when there is an error to report.
pub fn text(obj: &Bound<'_, PyAny>, name: impl Display) -> PyResult<PyBackedStr> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| Error::invalid(name.to_string(), format!("must be a str, got {}", type_name(obj))))?;
    let s = PyBackedStr::try_from(s.clone()).map_err(|_| {
        PyErr::from(Error::invalid(
            name.to_string(),
            "contains characters that cannot be encoded as UTF-8 (lone surrogates?)",
        ))
    })?;
    not_too_long(s.len(), name)?;
    Ok(s)
}

/// A bool argument (not any truthy value).
pub fn flag(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    obj.cast::<PyBool>()
        .map(|b| b.is_true())
        .map_err(|_| Error::invalid(name, format!("must be a bool, got {}", type_name(obj))).into())
}

pub fn opt_flag(obj: Option<&Bound<'_, PyAny>>, name: &str, default: bool) -> PyResult<bool> {
    obj.filter(|o| !o.is_none()).map_or(Ok(default), |o| flag(o, name))
}

/// An int argument within `min..=max` (bools are not ints here).
pub fn int_in<T: TryFrom<i64>>(obj: &Bound<'_, PyAny>, name: &str, min: i64, max: i64) -> PyResult<T> {
    let bad =
        || PyErr::from(Error::invalid(name, format!("must be an int from {min} to {max}, got {}", describe(obj))));
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return Err(bad());
    }
    let n: i64 = obj.extract().map_err(|_| bad())?;
    if !(min..=max).contains(&n) {
        return Err(bad());
    }
    T::try_from(n).map_err(|_| bad())
}

pub fn opt_int_in<T: TryFrom<i64>>(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
    min: i64,
    max: i64,
) -> PyResult<Option<T>> {
    obj.filter(|o| !o.is_none()).map(|o| int_in(o, name, min, max)).transpose()
}

/// A real number (int or float, not bool).
pub fn real(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>() || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>()) {
        return Err(Error::invalid(name, format!("must be a number, got {}", type_name(obj))).into());
    }
    obj.extract::<f64>().map_err(|_| Error::invalid(name, format!("{} is out of range", describe(obj))).into())
}

/// A duration in seconds: positive, not so small it rounds to zero, at most `MAX_SECONDS`.
pub fn seconds(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
    let s = real(obj, name)?;
    match Duration::try_from_secs_f64(s) {
        Ok(d) if !d.is_zero() && s <= MAX_SECONDS => Ok(d),
        _ => Err(Error::invalid(
            name,
            format!("must be a number of seconds above 1e-9 and at most {MAX_SECONDS:e}, got {s}"),
        )
        .into()),
    }
}

/// A callback argument: callable, or `None` for none.
pub fn opt_callable(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Py<PyAny>>> {
    match obj {
        Some(o) if !o.is_none() => {
            if !o.is_callable() {
                return Err(Error::invalid(name, format!("must be callable, got {}", type_name(o))).into());
            }
            Ok(Some(o.clone().unbind()))
        }
        _ => Ok(None),
    }
}

/// An optional argument whose `None` means something ("off"): omitted is `Default`.
pub enum Keep<'py> {
    Default,
    Given(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Keep<'py> {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Keep::Given(obj.to_owned()))
    }
}

/// `repr(obj)` for messages, shortened.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    let r = obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| type_name(obj));
    if r.chars().count() > 60 {
        format!("{}...", r.chars().take(60).collect::<String>())
    } else {
        r
    }
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
    let dumped = dumps
        .bind(py)
        .call((obj,), Some(&kwargs))
        .map_err(|e| PyErr::from(Error::invalid(name.to_string(), format!("cannot be serialized as JSON: {e}"))))?;
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
        obj.extract::<i64>()
            .map(Value::Integer)
            .map_err(|_| Error::invalid(name, format!("integer {obj} does not fit in SQLite's 64-bit integers")).into())
    } else if obj.is_instance_of::<PyFloat>() {
        Ok(Value::Real(obj.extract()?))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        not_too_long(b.as_bytes().len(), name)?;
        Ok(Value::Blob(b.as_bytes().to_vec()))
    } else {
        Err(Error::invalid(name, format!("type {} is not a SQL value (None, int, float, str, bytes)", type_name(obj)))
            .into())
    }
}

/// SQL parameters: a mapping binds by name (`:x`, `@x`, `$x`), any other sequence by
/// position; `None` is none.
pub fn to_params(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Params> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Params::Positional(Vec::new())) };
    if let Ok(mapping) = obj.cast::<PyMapping>() {
        let mut named = Vec::new();
        for item in mapping.items()?.iter() {
            let (key, value) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            let name = text(&key, "params key")?;
            let value = to_value(&value, &format!("params[{}]", key.repr()?))?;
            named.push((name.to_string(), value));
        }
        return Ok(Params::Named(named));
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(Error::invalid("params", "must be a sequence of values, not a single str/bytes").into());
    }
    let mut out = Vec::new();
    for (i, item) in obj
        .try_iter()
        .map_err(|_| {
            PyErr::from(Error::invalid("params", format!("must be a sequence or a mapping, got {}", type_name(obj))))
        })?
        .enumerate()
    {
        out.push(to_value(&item?, &format!("params[{i}]"))?);
    }
    Ok(Params::Positional(out))
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

/// A class or function of `consensus_db.results`, imported once.
fn results_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.import(py, "consensus_db.results", name)
}

/// `query()`'s rows: a `consensus_db.results.Rows` (a list of tuples with `.columns`).
pub fn rows_with_columns<'py>(
    py: Python<'py>,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
) -> PyResult<Bound<'py, PyAny>> {
    static ROWS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let rows = rows_to_py(py, rows)?;
    results_attr(py, &ROWS, "Rows")?.call1((rows, PyTuple::new(py, columns)?))
}

/// `get_agent_spawn_info`'s result: a `consensus_db.results.SpawnInfo(phase_type, stage)`,
/// made by `tuple.__new__(SpawnInfo, (phase_type, stage))`: the named tuple's own
/// `__new__` is a Python function, twice the cost on this hot path.
pub fn spawn_info<'py>(py: Python<'py>, info: Option<(String, String)>) -> PyResult<Option<Bound<'py, PyAny>>> {
    static SPAWN_INFO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static TUPLE_NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let Some((phase_type, stage)) = info else { return Ok(None) };
    let new = TUPLE_NEW.get_or_try_init(py, || py.get_type::<PyTuple>().getattr("__new__").map(Bound::unbind))?;
    let cls = results_attr(py, &SPAWN_INFO, "SpawnInfo")?;
    Ok(Some(new.bind(py).call1((cls, (phase_type, stage)))?))
}

/// `get_agent_route`'s result: a `consensus_db.results.AgentRoute(phase_type, stage,
/// branch_id)`, made as [`spawn_info`] makes its tuple.
pub fn agent_route<'py>(
    py: Python<'py>,
    route: Option<crate::model::AgentRoute>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    static AGENT_ROUTE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static TUPLE_NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let Some(route) = route else { return Ok(None) };
    let new = TUPLE_NEW.get_or_try_init(py, || py.get_type::<PyTuple>().getattr("__new__").map(Bound::unbind))?;
    let cls = results_attr(py, &AGENT_ROUTE, "AgentRoute")?;
    Ok(Some(new.bind(py).call1((cls, (route.phase_type, route.stage, route.branch_id)))?))
}

/// An aware UTC `datetime` from Unix milliseconds.
pub fn utc_from_ms<'py>(py: Python<'py>, ms: i64) -> PyResult<Bound<'py, PyAny>> {
    static FROM_MS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    results_attr(py, &FROM_MS, "_utc_from_ms")?.call1((ms,))
}

/// An aware UTC `datetime` from `YYYY-MM-DD HH:MM:SS` text (None stays None).
pub fn utc_from_text<'py>(py: Python<'py>, text: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    static FROM_TEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    results_attr(py, &FROM_TEXT, "_utc_from_text")?.call1((text,))
}

/// A JSON list field (a synthesis's agreements or conflicts) as a Python list.
pub fn json_items<'py>(py: Python<'py>, text: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    static ITEMS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    results_attr(py, &ITEMS, "_json_items")?.call1((text,))
}
