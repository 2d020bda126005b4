//! `consensus_db._core.Database`: the engine's operations as Python methods. Arguments
//! are converted while holding the GIL; the SQLite work runs with it released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString, PyTuple};

use super::convert::{
    agent_route, json_text, opt_callable, opt_flag, opt_int_in, opt_json_text, opt_text, real, rows_with_columns,
    seconds, spawn_info, text, to_params, type_name, Keep,
};
use super::reports::{
    CheckpointReport, Defaults, HealthReport, PoolState, PostgresHealthReport, PostgresVacuumReport, ReaderStats, ToPy,
    VacuumReport,
};
use super::transaction::PyTransaction;
use super::{run, run_keyed};
use crate::backend::{AnyDatabase, Backend};
use crate::cursor::Page;
use crate::error::Error;
use crate::model::{
    AgentExecution, Artifact, Claim, ExtractionFailure, NewArtifact, NewClaim, NewSynthesis, Synthesis,
};
use crate::retry::{Clock, RetryEvent, RetryPolicy};
use crate::sqlite::legacy_rows::Problem;
use crate::sqlite::maintenance::{CycleReport, MaintenanceOptions, Progress, DEFAULT_VACUUM_THRESHOLD};
use crate::sqlite::migrations;
use crate::sqlite::replica::CheckpointMode;
use crate::sqlite::transaction::Behavior;
use crate::{Database, Options, Pragmas, ReadMode, WriteMode};

#[pyclass(frozen, subclass, module = "consensus_db", name = "Database")]
pub struct PyDatabase {
    inner: AnyDatabase,
    /// Handed over by a Rust host (`consensus_db::embed`): the host owns the store's
    /// life, so dropping the Python object does not close it (`close()` still does).
    handed: bool,
}

impl PyDatabase {
    /// The SQLite store, or NotSupported naming `what` on PostgreSQL.
    #[inline]
    pub fn core(&self, what: &str) -> crate::Result<&Database> {
        self.inner.sqlite(what)
    }

    pub fn any(&self) -> &AnyDatabase {
        &self.inner
    }

    #[cfg(feature = "postgres")]
    fn pg(&self) -> Option<&crate::postgres::PgDatabase> {
        match &self.inner {
            AnyDatabase::Postgres(db) => Some(db),
            AnyDatabase::Sqlite(_) => None,
        }
    }

    #[cfg(not(feature = "postgres"))]
    fn pg(&self) -> Option<&std::convert::Infallible> {
        None
    }

    /// The shared engine behind this object (a SQLite store: a PostgreSQL one has no
    /// `Database` to share).
    pub(crate) fn shared(&self) -> crate::Result<&Arc<Database>> {
        match &self.inner {
            AnyDatabase::Sqlite(db) => Ok(db),
            #[cfg(feature = "postgres")]
            AnyDatabase::Postgres(_) => Err(crate::Error::NotSupported(
                "a PostgreSQL store has no SQLite Database to hand to a Rust host".into(),
            )),
        }
    }
}

thread_local! {
    /// A host's `Database` on its way into `Database.__new__` (see `crate::embed`): the
    /// only way to build the Python object around an existing engine, out of Python's reach.
    static HANDOVER: std::cell::RefCell<Option<Arc<Database>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (which calls `Database.__new__` on this thread) with `db` waiting to be
/// adopted; whatever happens in `f`, a panic included, nothing is left waiting after it.
pub(crate) fn with_handover<R>(db: Arc<Database>, f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HANDOVER.with(|h| h.borrow_mut().take());
        }
    }
    HANDOVER.with(|h| *h.borrow_mut() = Some(db));
    let _clear = Clear;
    f()
}

impl Drop for PyDatabase {
    /// A store dropped without `close()` closes here, with the GIL released: closing
    /// waits for the maintenance thread, which may be waiting for the GIL to run its hook.
    fn drop(&mut self) {
        if self.handed {
            return;
        }
        let inner = &self.inner;
        Python::try_attach(|py| py.detach(|| inner.close()));
    }
}

fn non_negative(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() || !obj.is_instance_of::<pyo3::types::PyInt>() {
        return Err(Error::invalid(name, format!("must be an int, got {}", type_name(obj))).into());
    }
    let n: i64 = obj.extract().map_err(|_| PyErr::from(Error::invalid(name, format!("{obj} is out of range"))))?;
    if n < 0 {
        return Err(Error::invalid(name, format!("must be zero or more, got {n}")).into());
    }
    Ok(n)
}

/// A file name, byte for byte: `bytes` as they are, a `str` encoded as `os.fsencode`
/// does (undecodable bytes come back from their surrogate escapes), or an os.PathLike.
fn path_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let py = obj.py();
    let fspath = py.import("os")?.getattr("fspath")?.call1((obj,)).map_err(|_| {
        PyErr::from(Error::invalid(name, format!("must be a str, bytes or os.PathLike, got {}", type_name(obj))))
    })?;
    if let Ok(b) = fspath.cast::<pyo3::types::PyBytes>() {
        return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(b.as_bytes())));
    }
    fspath
        .extract::<PathBuf>()
        .map_err(|_| Error::invalid(name, format!("{} cannot be encoded as a file name", describe_str(&fspath))).into())
}

/// The URL when `path` is a `str` starting with `postgresql://` (a path object or bytes
/// is always a file).
fn postgres_url(path: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    let Ok(py_str) = path.cast::<PyString>() else { return Ok(None) };
    // A str that is not valid UTF-8 (lone surrogates) is a file name.
    let Ok(s) = py_str.to_str() else { return Ok(None) };
    if !s.starts_with("postgresql://") {
        return Ok(None);
    }
    if cfg!(feature = "postgres") {
        Ok(Some(s.to_string()))
    } else {
        Err(Error::NotSupported(
            "this build of consensus-db has no PostgreSQL backend (built without the `postgres` feature)".into(),
        )
        .into())
    }
}

#[cfg(not(feature = "postgres"))]
#[allow(clippy::too_many_arguments)]
fn open_postgres(
    _py: Python<'_>,
    _url: String,
    _pool_size: u32,
    _checkout_timeout: Duration,
    _read_only: bool,
    _migrate: Option<&Bound<'_, PyAny>>,
    _pragmas: Option<&Bound<'_, PyAny>>,
    _convert_auto_vacuum: bool,
    _uri: Option<&Bound<'_, PyAny>>,
    _retry: (Option<RetryPolicy>, i64),
) -> PyResult<PyDatabase> {
    Err(Error::NotSupported("built without the `postgres` feature".into()).into())
}

/// Opens a PostgreSQL store; SQLite-only options given with a value are refused.
#[cfg(feature = "postgres")]
#[allow(clippy::too_many_arguments)]
fn open_postgres(
    py: Python<'_>,
    url: String,
    pool_size: u32,
    checkout_timeout: Duration,
    read_only: bool,
    migrate: Option<&Bound<'_, PyAny>>,
    pragmas: Option<&Bound<'_, PyAny>>,
    _convert_auto_vacuum: bool,
    uri: Option<&Bound<'_, PyAny>>,
    (retry, idempotency_days): (Option<RetryPolicy>, i64),
) -> PyResult<PyDatabase> {
    if let Some(p) = pragmas.filter(|p| !p.is_none()) {
        return Err(Error::NotSupported(format!(
            "pragmas={} are SQLite settings and do not apply on PostgreSQL; configure the server instead",
            describe_str(p)
        ))
        .into());
    }
    if opt_flag(uri, "uri", false)? {
        return Err(Error::NotSupported(
            "uri=True opens an SQLite URI and does not apply to a postgresql:// URL".into(),
        )
        .into());
    }
    let migrate = match migrate {
        None => true,
        Some(m) if m.is_instance_of::<pyo3::types::PyBool>() => m.is_truthy()?,
        Some(m) => non_negative(m, "migrate")? > 0,
    };
    let options = crate::postgres::PgOptions {
        pool_size,
        checkout_timeout,
        migrate: migrate && !read_only,
        read_only,
        retry,
        idempotency_days,
    };
    let db = run(py, move || crate::postgres::PgDatabase::open(&url, options))?;
    Ok(PyDatabase { inner: AnyDatabase::Postgres(db), handed: false })
}

fn describe_str(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| type_name(obj))
}

fn parse_pragmas(overrides: Option<&Bound<'_, PyAny>>) -> PyResult<Pragmas> {
    let mut pragmas = Pragmas::default();
    let Some(overrides) = overrides.filter(|o| !o.is_none()) else { return Ok(pragmas) };
    let d = overrides.cast::<PyMapping>().map_err(|_| {
        PyErr::from(Error::invalid(
            "pragmas",
            format!("must be a mapping of pragma names to values, got {}", type_name(overrides)),
        ))
    })?;
    for item in d.items()?.iter() {
        let (k, v) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
        let name = text(&k, "pragma name")?;
        if v.is_none() {
            pragmas.unset(&name)?;
        } else if v.is_instance_of::<pyo3::types::PyBool>() {
            pragmas.set(&name, if v.is_truthy()? { "1" } else { "0" })?;
        } else {
            pragmas.set(&name, &text(&v.str()?.into_any(), format_args!("pragma {}", &*name))?)?;
        }
    }
    Ok(pragmas)
}

/// A Python `progress` callback as the engine's [`Progress`], the GIL attached only
/// around the call: `progress(done, total)` when the total is known (a chunked job),
/// `progress(done)` when not (a full VACUUM). Returning False stops the job. An exception
/// stops a chunked job and is kept in `raised`, for [`raise_from_progress`] once the job
/// has returned; in a full VACUUM, which an interruption undoes, it goes to
/// `sys.unraisablehook` and the VACUUM goes on, as it always has.
fn progress_callback(cb: Py<PyAny>, raised: Arc<parking_lot::Mutex<Option<PyErr>>>) -> Progress {
    Box::new(move |done: u64, total: Option<u64>| {
        Python::try_attach(|py| {
            let answer = match total {
                Some(total) => cb.call1(py, (done, total)),
                None => cb.call1(py, (done,)),
            };
            match answer {
                Ok(v) => !matches!(v.extract::<bool>(py), Ok(false)),
                Err(e) if total.is_none() => {
                    e.write_unraisable(py, None);
                    true
                }
                Err(e) => {
                    *raised.lock() = Some(e);
                    false
                }
            }
        })
        .unwrap_or(true)
    })
}

/// Raises what a `progress` callback raised during the job, if it did.
fn raise_from_progress(raised: &parking_lot::Mutex<Option<PyErr>>) -> PyResult<()> {
    match raised.lock().take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `artifacts[i].key`, formatted only when an error names it.
struct FieldName<'a, 'py>(usize, &'a Bound<'py, PyString>);

impl std::fmt::Display for FieldName<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "artifacts[{}].{}", self.0, self.1)
    }
}

/// One item of `store_artifacts`. A plain dict is read with `dict.get` (interned keys,
/// no KeyError round trips); any other mapping through `__getitem__`.
enum Fields<'a, 'py> {
    Dict(&'a Bound<'py, PyDict>),
    Mapping(&'a Bound<'py, PyMapping>),
}

struct Item<'a, 'py> {
    i: usize,
    fields: Fields<'a, 'py>,
    /// How many of the known keys the item has: fewer than its length means unknown ones.
    found: std::cell::Cell<usize>,
}

const ARTIFACT_KEYS: [&str; 8] =
    ["spec_id", "stage", "agent_name", "content_json", "response_text", "run_id", "model_version", "idempotency_key"];

impl<'py> Item<'_, 'py> {
    fn get(&self, key: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let value = match self.fields {
            Fields::Dict(d) => d.get_item(key)?,
            Fields::Mapping(m) => match m.get_item(key) {
                Ok(v) => Some(v),
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(key.py()) => None,
                Err(e) => return Err(e),
            },
        };
        self.found.set(self.found.get() + value.is_some() as usize);
        Ok(value)
    }

    /// Refuses keys that are not `store_artifact` arguments (a typo such as `runid`
    /// would otherwise drop that field silently), naming them.
    fn no_unknown_keys(&self) -> PyResult<()> {
        let len = match self.fields {
            Fields::Dict(d) => d.len(),
            Fields::Mapping(m) => m.len()?,
        };
        if len <= self.found.get() {
            return Ok(());
        }
        let keys = match self.fields {
            Fields::Dict(d) => d.keys().into_any(),
            Fields::Mapping(m) => m.keys()?.into_any(),
        };
        let mut unknown = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            if !key.extract::<&str>().is_ok_and(|k| ARTIFACT_KEYS.contains(&k)) {
                unknown.push(key.repr()?.to_string());
            }
        }
        let message = format!("unknown key(s) {}; known: {}", unknown.join(", "), ARTIFACT_KEYS.join(", "));
        Err(Error::invalid(format!("artifacts[{}]", self.i), message).into())
    }

    fn required(&self, key: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        self.get(key)?.ok_or_else(|| Error::invalid(format!("artifacts[{}].{key}", self.i), "is missing").into())
    }

    fn text(&self, key: &Bound<'py, PyString>) -> PyResult<String> {
        Ok(text(&self.required(key)?, FieldName(self.i, key))?.to_string())
    }

    fn optional_text(&self, key: &Bound<'py, PyString>) -> PyResult<Option<String>> {
        Ok(opt_text(self.get(key)?.as_ref(), FieldName(self.i, key))?.map(|s| s.to_string()))
    }
}

fn new_artifact(item: &Bound<'_, PyAny>, i: usize) -> PyResult<NewArtifact> {
    let py = item.py();
    let fields = match (item.cast_exact::<PyDict>(), item.cast::<PyMapping>()) {
        (Ok(d), _) => Fields::Dict(d),
        (_, Ok(m)) => Fields::Mapping(m),
        _ => {
            let message = format!("must be a mapping, got {}", type_name(item));
            return Err(Error::invalid(format!("artifacts[{i}]"), message).into());
        }
    };
    let item = Item { i, fields, found: std::cell::Cell::new(0) };
    let content = intern!(py, "content_json");
    let artifact = NewArtifact {
        spec_id: item.text(intern!(py, "spec_id"))?,
        stage: item.text(intern!(py, "stage"))?,
        agent_name: item.text(intern!(py, "agent_name"))?,
        content_json: json_text(&item.required(content)?, FieldName(i, content))?.to_string(),
        response_text: item.optional_text(intern!(py, "response_text"))?,
        run_id: item.optional_text(intern!(py, "run_id"))?,
        model_version: item.optional_text(intern!(py, "model_version"))?,
        idempotency_key: item.optional_text(intern!(py, "idempotency_key"))?,
    };
    item.no_unknown_keys()?;
    Ok(artifact)
}

/// `store_artifact`'s arguments (`spec_id`, `stage`, `agent_name`, `content_json`; then
/// `response_text`, `run_id`, `model_version`, `idempotency_key`), checked and converted
/// in one place for the call and its lane submission (`new_artifact` reads a batch's items).
fn artifact_from_args(
    [spec_id, stage, agent_name, content_json]: [&Bound<'_, PyAny>; 4],
    [response_text, run_id, model_version, idempotency_key]: [Option<&Bound<'_, PyAny>>; 4],
) -> PyResult<NewArtifact> {
    Ok(NewArtifact {
        spec_id: text(spec_id, "spec_id")?.to_string(),
        stage: text(stage, "stage")?.to_string(),
        agent_name: text(agent_name, "agent_name")?.to_string(),
        content_json: json_text(content_json, "content_json")?.to_string(),
        response_text: opt_text(response_text, "response_text")?.map(|s| s.to_string()),
        run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
        model_version: opt_text(model_version, "model_version")?.map(|s| s.to_string()),
        idempotency_key: opt_text(idempotency_key, "idempotency_key")?.map(|s| s.to_string()),
    })
}

/// A clock whose sleep is a Python callable (the GIL taken only for the call).
struct PyClock {
    sleep: Py<PyAny>,
}

impl Clock for PyClock {
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn sleep(&self, delay: Duration) {
        Python::try_attach(|py| {
            if let Err(e) = self.sleep.call1(py, (delay.as_secs_f64(),)) {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// The completion of a submitted write: `on_done(value, None)` or `on_done(None, error)`,
/// called with the GIL by the thread that committed the write (an exception from it
/// is unraisable: it cannot reach the caller any more).
fn completion<T>(on_done: Py<PyAny>) -> impl FnOnce(crate::Result<T>) + Send + 'static
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    move |result| {
        Python::try_attach(|py| {
            let called = match result {
                Ok(value) => match pyo3::IntoPyObjectExt::into_py_any(value, py) {
                    Ok(v) => on_done.call1(py, (v, py.None())),
                    Err(e) => on_done.call1(py, (py.None(), e.into_value(py))),
                },
                Err(e) => on_done.call1(py, (py.None(), PyErr::from(e).into_value(py))),
            };
            if let Err(e) = called {
                e.write_unraisable(py, Some(on_done.bind(py)));
            }
        });
    }
}

/// A `consensus_db.retry.RetryPolicy` (or anything with its attributes) as the
/// engine's policy: `max_attempts`, `initial_delay`, `max_delay`, `jitter`, `deadline`
/// (absent: 10 s; None: none), `sleep` (None: real sleep with the GIL released) and
/// `on_retry(operation, attempt, delay, error)`.
fn retry_policy(obj: &Bound<'_, PyAny>) -> PyResult<RetryPolicy> {
    let py = obj.py();
    let defaults = RetryPolicy::default();
    let attr = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        match obj.getattr(name) {
            Ok(v) if v.is_none() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let max_attempts: u32 = opt_int_in(attr("max_attempts")?.as_ref(), "max_attempts", 1, u32::MAX.into())?
        .unwrap_or(defaults.max_attempts);
    let secs = |name: &str, default: Duration| -> PyResult<Duration> {
        match attr(name)? {
            Some(v) => seconds(&v, name),
            None => Ok(default),
        }
    };
    let initial_delay = secs("initial_delay", defaults.initial_delay)?;
    let max_delay = secs("max_delay", defaults.max_delay)?;
    // `deadline=None` on a policy object means no deadline; an object without the
    // attribute gets the engine's default.
    let deadline = match obj.getattr("deadline") {
        Ok(v) if v.is_none() => Duration::MAX,
        _ => secs("deadline", defaults.deadline)?,
    };
    let jitter = opt_flag(attr("jitter")?.as_ref(), "jitter", defaults.jitter)?;
    let clock: Arc<dyn Clock> = match opt_callable(attr("sleep")?.as_ref(), "sleep")? {
        Some(sleep) => Arc::new(PyClock { sleep }),
        None => defaults.clock.clone(),
    };
    let on_retry = opt_callable(attr("on_retry")?.as_ref(), "on_retry")?.map(|cb| {
        Arc::new(move |ev: &RetryEvent<'_>| {
            Python::try_attach(|py| {
                let err = PyErr::from(ev.error.clone()).into_value(py);
                if let Err(e) = cb.call1(py, (ev.operation, ev.attempt, ev.delay.as_secs_f64(), err)) {
                    e.write_unraisable(py, None);
                }
            });
        }) as crate::retry::RetryHook
    });
    Ok(RetryPolicy { max_attempts, initial_delay, max_delay, jitter, deadline, clock, on_retry })
}

/// Takes the GIL once for a batch of completions (`callbacks::COMPLETION_SCOPE`).
pub(crate) fn completion_scope(f: &mut dyn FnMut()) {
    if Python::try_attach(|_py| f()).is_none() {
        f(); // the interpreter is gone: each completion finds that out itself
    }
}

fn non_callable(on_done: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    if !on_done.is_callable() {
        return Err(Error::invalid("on_done", format!("must be callable, got {}", type_name(on_done))).into());
    }
    Ok(on_done.clone().unbind())
}

#[pymethods]
impl PyDatabase {
    #[new]
    /// Every argument but `path` may be None for its default (`_core.DEFAULTS`).
    #[pyo3(signature = (path, *, pool_size=None, min_idle=None, checkout_timeout=None, read_only=None, create=None,
                        migrate=None, pragmas=None, convert_auto_vacuum=None, uri=None, retry=Keep::Default,
                        replicated=None, write_mode=None, read_mode=None, idempotency_days=None),
           text_signature = "(path, *, pool_size=10, min_idle=1, checkout_timeout=10.0, read_only=False, create=True, migrate=True, pragmas=None, convert_auto_vacuum=True, uri=False, retry=..., replicated=False, write_mode='v1', read_mode='dual', idempotency_days=7)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        pool_size: Option<&Bound<'_, PyAny>>,
        min_idle: Option<&Bound<'_, PyAny>>,
        checkout_timeout: Option<&Bound<'_, PyAny>>,
        read_only: Option<&Bound<'_, PyAny>>,
        create: Option<&Bound<'_, PyAny>>,
        migrate: Option<&Bound<'_, PyAny>>,
        pragmas: Option<&Bound<'_, PyAny>>,
        convert_auto_vacuum: Option<&Bound<'_, PyAny>>,
        uri: Option<&Bound<'_, PyAny>>,
        retry: Keep<'_>,
        replicated: Option<&Bound<'_, PyAny>>,
        write_mode: Option<&Bound<'_, PyAny>>,
        read_mode: Option<&Bound<'_, PyAny>>,
        idempotency_days: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if let Some(inner) = HANDOVER.with(|h| h.borrow_mut().take()) {
            return Ok(PyDatabase { inner: AnyDatabase::Sqlite(inner), handed: true });
        }
        let defaults = Options::default();
        let retry = match retry {
            Keep::Default => defaults.retry.clone(),
            Keep::Given(r) if r.is_none() => None,
            Keep::Given(r) => Some(retry_policy(&r)?),
        };
        let pool_size: u32 = opt_int_in(pool_size, "pool_size", 1, u32::MAX.into())?.unwrap_or(defaults.pool_size);
        let min_idle: u32 = opt_int_in(min_idle, "min_idle", 0, u32::MAX.into())?.unwrap_or(defaults.min_idle);
        let checkout_timeout = match checkout_timeout.filter(|o| !o.is_none()) {
            Some(t) => seconds(t, "checkout_timeout")?,
            None => defaults.checkout_timeout,
        };
        let read_only = opt_flag(read_only, "read_only", defaults.read_only)?;
        let idempotency_days: i64 =
            opt_int_in(idempotency_days, "idempotency_days", 1, 36_500)?.unwrap_or(defaults.idempotency_days);
        let create = opt_flag(create, "create", defaults.create)?;
        let convert_auto_vacuum = opt_flag(convert_auto_vacuum, "convert_auto_vacuum", defaults.convert_auto_vacuum)?;
        let write_mode: WriteMode = match write_mode.filter(|m| !m.is_none()) {
            Some(m) => text(m, "write_mode")?.parse()?,
            None => WriteMode::default(),
        };
        let read_mode: ReadMode = match read_mode.filter(|m| !m.is_none()) {
            Some(m) => text(m, "read_mode")?.parse()?,
            None => ReadMode::default(),
        };
        if let Some(url) = postgres_url(path)? {
            if write_mode != WriteMode::V1 || read_mode == ReadMode::Legacy {
                return Err(Error::NotSupported(format!(
                    "write_mode='{write_mode}', read_mode='{read_mode}': a PostgreSQL store has no legacy tables; \
                     it writes and reads the new schema only"
                ))
                .into());
            }
            return open_postgres(
                py,
                url,
                pool_size,
                checkout_timeout,
                read_only,
                migrate,
                pragmas,
                convert_auto_vacuum,
                uri,
                (retry, idempotency_days),
            );
        }
        let path = path_arg(path, "path")?;
        let uri = opt_flag(uri, "uri", defaults.uri)?;
        let replicated = opt_flag(replicated, "replicated", defaults.replicated)?;
        let migrate_to = match migrate {
            None => Some(migrations::DEFAULT_VERSION),
            Some(m) if m.is_instance_of::<pyo3::types::PyBool>() => {
                m.is_truthy()?.then_some(migrations::DEFAULT_VERSION)
            }
            Some(m) => Some(non_negative(m, "migrate")?),
        };
        let options = Options {
            pool_size,
            min_idle: min_idle.min(pool_size),
            checkout_timeout,
            read_only,
            create,
            pragmas: parse_pragmas(pragmas)?,
            convert_auto_vacuum,
            migrate_to: if read_only { None } else { migrate_to },
            uri,
            retry,
            replicated,
            idempotency_days,
        };
        let inner = run(py, move || {
            let db = Database::open(&path, options)?;
            let modes = db.set_read_mode(read_mode).and_then(|()| db.set_write_mode(write_mode));
            if let Err(e) = modes {
                db.close();
                return Err(e);
            }
            Ok(db)
        })?;
        Ok(PyDatabase { inner: AnyDatabase::Sqlite(Arc::new(inner)), handed: false })
    }

    /// The schemas this store writes: "v1" (the new tables) or "dual" (both, linked).
    #[getter]
    fn write_mode(&self) -> &'static str {
        match &self.inner {
            AnyDatabase::Sqlite(db) => db.write_mode().as_str(),
            #[allow(unreachable_patterns)]
            _ => WriteMode::V1.as_str(),
        }
    }

    /// The schemas this store reads: "dual" (new, then legacy rows without a copy),
    /// "v1" or "legacy".
    #[getter]
    fn read_mode(&self) -> &'static str {
        match &self.inner {
            AnyDatabase::Sqlite(db) => db.read_mode().as_str(),
            #[allow(unreachable_patterns)]
            _ => ReadMode::V1.as_str(),
        }
    }

    /// Retries the engine made for this store (busy databases, pool timeouts), opening included.
    #[getter]
    fn retry_count(&self) -> u64 {
        self.inner.retry_count()
    }

    /// `with` returns the store itself; leaving the block closes it.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Closes the store; never swallows the block's exception.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// Stops maintenance and closes every pooled connection before returning (one in
    /// use by a transaction still open closes when it ends). Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    /// "sqlite" or "postgresql".
    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.backend_name()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The path as given (a str; undecodable bytes as surrogate escapes, like os.fsdecode).
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let Ok(url) = pg.url().into_pyobject(py);
            return url.into_any();
        }
        let Ok(db) = self.core("path") else { return py.None().into_bound(py) };
        let Ok(path) = db.given_path().as_os_str().into_pyobject(py);
        path.into_any()
    }

    /// Whether the store was opened read-only.
    #[getter]
    fn read_only(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.options().read_only;
        }
        self.core("read_only").is_ok_and(|db| db.is_read_only())
    }

    /// Whether the store is an in-memory database (`":memory:"`).
    #[getter]
    fn in_memory(&self) -> bool {
        self.core("in_memory").is_ok_and(|db| db.is_in_memory())
    }

    /// The host-wide writer queue's file (`<database>-writer`, a str) while this store's
    /// writes take their turn in it; None in memory, read-only, on PostgreSQL, where the
    /// file cannot be created, or on a filesystem without OFD locks.
    #[getter]
    fn writer_queue(&self) -> Option<std::ffi::OsString> {
        let db = self.core("writer_queue").ok()?;
        db.writer_queue().map(|p| p.as_os_str().to_os_string())
    }

    /// What opening did: auto_vacuum conversion, journal mode change, migration.
    #[getter]
    fn open_report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.core("open_report")?.open_report().to_py(py)
    }

    /// What the last migration of this store (opening's, or `migrate()`'s) copied between
    /// the schemas: legacy rows backfilled into the new tables and new rows written back
    /// into the legacy ones, per kind, counted inside each step's transaction (never the
    /// runs made to hold them, nor rows other writers added meanwhile). All zero on
    /// PostgreSQL, which has no legacy tables.
    #[getter]
    fn rows_moved<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let moved = if self.pg().is_some() { Default::default() } else { self.core("rows_moved")?.rows_moved() };
        moved.to_py(py)
    }

    /// Every configured pragma's current value.
    fn pragmas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let values = run(py, || self.core("pragmas()")?.pragmas())?;
        let d = PyDict::new(py);
        for (name, value) in values {
            match value.parse::<i64>() {
                Ok(n) => d.set_item(name, n)?,
                Err(_) => d.set_item(name, value)?,
            }
        }
        Ok(d)
    }

    /// Re-reads every configured pragma; raises PragmaVerificationError on a mismatch.
    fn verify_pragmas(&self, py: Python<'_>) -> PyResult<()> {
        run(py, || self.core("verify_pragmas()")?.verify_pragmas())
    }

    /// The write lane's counters: group commits, writes they carried, holds
    /// (transaction blocks, maintenance), callers waiting now, and `sizes`:
    /// `{group size: commits}`.
    fn lane_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.core("lane_stats() (the SQLite write lane)")?.lane_stats().to_py(py)
    }

    /// Connections open and idle in the pool.
    fn pool_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let (connections, idle) = pg.pool_state();
            return PoolState { connections, idle, max_size: pg.options().pool_size }.to_py(py);
        }
        let (connections, idle) = self.core("pool_state")?.pool_state()?;
        PoolState { connections, idle, max_size: self.core("pool_state")?.options().pool_size }.to_py(py)
    }

    /// A transaction block: `with db.transaction("immediate") as tx:` commits on success
    /// and rolls back on any exception. `behavior` is deferred, immediate (the default:
    /// write transactions begin IMMEDIATE) or exclusive.
    #[pyo3(signature = (behavior=None), text_signature = "($self, behavior='immediate')")]
    fn transaction(slf: Bound<'_, Self>, behavior: Option<&Bound<'_, PyAny>>) -> PyResult<PyTransaction> {
        let given: Option<Behavior> = match behavior.filter(|b| !b.is_none()) {
            Some(b) => Some(text(b, "behavior")?.parse()?),
            None => None,
        };
        if slf.get().pg().is_some() {
            if let Some(b @ (Behavior::Immediate | Behavior::Exclusive)) = given {
                return Err(Error::NotSupported(format!(
                    "transaction({:?}) is a SQLite locking mode and does not apply on PostgreSQL; use transaction() \
                     or transaction(\"deferred\") (BEGIN, READ COMMITTED)",
                    format!("{b:?}").to_lowercase()
                ))
                .into());
            }
        }
        let behavior = given.unwrap_or(Behavior::Immediate);
        Ok(PyTransaction::new(slf.unbind(), behavior))
    }

    /// Runs one statement in its own IMMEDIATE transaction; returns rows changed.
    #[pyo3(signature = (sql, params=None))]
    fn execute(&self, py: Python<'_>, sql: &Bound<'_, PyAny>, params: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let sql = text(sql, "sql")?;
        let params = to_params(params)?;
        run(py, move || self.inner.execute(&sql, &params))
    }

    /// Runs a query outside any transaction; returns `Rows`: a list of tuples whose
    /// `columns` attribute names the columns.
    #[pyo3(signature = (sql, params=None))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sql = text(sql, "sql")?;
        let params = to_params(params)?;
        let (columns, rows) = run(py, move || self.inner.query_columns(&sql, &params))?;
        rows_with_columns(py, columns, rows)
    }

    // ---- schema -------------------------------------------------------------------

    /// The schema version (`PRAGMA user_version`: 0 legacy, 1 both, 2 legacy dropped).
    #[getter]
    fn schema_version(&self, py: Python<'_>) -> PyResult<i64> {
        run(py, || self.inner.schema_version())
    }

    /// Legacy rows whose values had to be converted to be read, one dict each
    /// (table, id, column, problem).
    fn legacy_row_problems<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.pg().is_some() {
            return Vec::<Problem>::new().to_py(py); // no legacy tables on PostgreSQL
        }
        run(py, || self.core("legacy_row_problems")?.legacy_row_problems())?.to_py(py)
    }

    /// The legacy tables against the new ones, per spec/stage: counts, content hashes and
    /// the rows that differ, with their ids. Reads one snapshot; writes nothing.
    fn verify_schemas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        run(py, || self.core("verify_schemas() (legacy tables against the new ones)")?.verify_schemas())?.to_py(py)
    }

    /// Migrates to `target`, up or down; without one, up to at least the default
    /// version, as opening does. Returns the version reached. Moving down loses no row.
    /// A move that drops or downgrades tables refuses while agents are in flight (spawned
    /// within `in_flight_age` seconds and not completed) unless `force`. With `dry_run`
    /// (a `target` needed) nothing moves: what the move would refuse is raised, else the
    /// target returned; a read-only store can check (as the CLI does before its backup).
    /// A copy between the schemas (the backfill, a write-back) runs in chunks of ~10 ms,
    /// writers in between; `progress(done, total)` is called after each with the rows gone
    /// through so far and an estimate of how many (raised as it is passed). Returning False
    /// or raising stops the move after that chunk (raised here; what was copied stays,
    /// linked to its original, and the next move copies the rest). PostgreSQL has no
    /// such copy and never calls it.
    #[pyo3(signature = (target=None, *, force=false, in_flight_age=None, dry_run=None, progress=None),
           text_signature = "($self, target=None, *, force=False, in_flight_age=3600.0, dry_run=False, progress=None)")]
    fn migrate(
        &self,
        py: Python<'_>,
        target: Option<&Bound<'_, PyAny>>,
        force: bool,
        in_flight_age: Option<&Bound<'_, PyAny>>,
        dry_run: Option<&Bound<'_, PyAny>>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let mut guard = migrations::InFlightGuard::default();
        if let Some(age) = in_flight_age.filter(|a| !a.is_none()) {
            guard.max_age_ms = i64::try_from(seconds(age, "in_flight_age")?.as_millis()).unwrap_or(i64::MAX);
        }
        let guard = (!force).then_some(guard);
        let dry_run = opt_flag(dry_run, "dry_run", false)?;
        let raised = Arc::new(parking_lot::Mutex::new(None));
        let progress = opt_callable(progress, "progress")?.map(|cb| progress_callback(cb, raised.clone()));
        let reached = match target {
            Some(t) if !t.is_none() => {
                let target = non_negative(t, "target")?;
                run(py, move || match self.core("migrate(target)")? {
                    db if dry_run => db.check_migration(target, guard).map(|()| target),
                    db => db.migrate_reporting(target, guard, progress),
                })
            }
            _ if dry_run => Err(Error::invalid("target", "a dry run needs a target version").into()),
            _ => run(py, move || match self.pg() {
                #[cfg(feature = "postgres")]
                Some(pg) => pg.migrate(),
                _ => self.core("migrate")?.upgrade_reporting(migrations::DEFAULT_VERSION, progress),
            }),
        };
        raise_from_progress(&raised)?;
        reached
    }

    // ---- agent executions ----------------------------------------------------------

    /// Records a spawned agent (`phase_type` is quality_gate or regular_stage);
    /// `spawned_at` is now (UTC). A second spawn of the same `agent_id` replaces it,
    /// branch included. `branch_id`: the pipeline branch the agent serves (the
    /// predecessor's resume filter); a file without that column (read-only, or opened
    /// with migrate=False) refuses a branch, naming the column.
    #[pyo3(signature = (agent_id, spec_id, stage, phase_type, agent_name, run_id=None, branch_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_agent_spawn(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        phase_type: &Bound<'_, PyAny>,
        agent_name: &Bound<'_, PyAny>,
        run_id: Option<&Bound<'_, PyAny>>,
        branch_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (a, s, st) = (text(agent_id, "agent_id")?, text(spec_id, "spec_id")?, text(stage, "stage")?);
        let (p, n, r) = (text(phase_type, "phase_type")?, text(agent_name, "agent_name")?, opt_text(run_id, "run_id")?);
        let b = opt_text(branch_id, "branch_id")?;
        run(py, || self.inner.record_agent_spawn_on_branch(&a, &s, &st, &p, &n, r.as_deref(), b.as_deref()))
    }

    /// `record_agent_spawn` without waiting: the arguments are checked now (an error is
    /// raised here); the result (None) or the error goes to `on_done(value, error)`,
    /// called by the thread that commits the write. No retry.
    #[pyo3(name = "_record_agent_spawn_async",
           signature = (on_done, agent_id, spec_id, stage, phase_type, agent_name, run_id=None, branch_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_agent_spawn_async(
        &self,
        on_done: &Bound<'_, PyAny>,
        agent_id: &Bound<'_, PyAny>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        phase_type: &Bound<'_, PyAny>,
        agent_name: &Bound<'_, PyAny>,
        run_id: Option<&Bound<'_, PyAny>>,
        branch_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let on_done = non_callable(on_done)?;
        let spawn = crate::NewSpawn {
            agent_id: text(agent_id, "agent_id")?.to_string(),
            spec_id: text(spec_id, "spec_id")?.to_string(),
            stage: text(stage, "stage")?.to_string(),
            phase_type: text(phase_type, "phase_type")?.to_string(),
            agent_name: text(agent_name, "agent_name")?.to_string(),
            run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
            branch_id: opt_text(branch_id, "branch_id")?.map(|s| s.to_string()),
        };
        let done = completion::<Option<bool>>(on_done);
        self.core("submit_agent_spawn")?.submit_agent_spawn(spawn, move |r| done(r.map(|()| None)));
        Ok(())
    }

    /// `record_agent_completion` without waiting (see `_record_agent_spawn_async`).
    #[pyo3(name = "_record_agent_completion_async")]
    fn record_agent_completion_async(
        &self,
        on_done: &Bound<'_, PyAny>,
        agent_id: &Bound<'_, PyAny>,
        response_text: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let on_done = non_callable(on_done)?;
        let (a, r) = (text(agent_id, "agent_id")?.to_string(), text(response_text, "response_text")?.to_string());
        self.core("submit_agent_completion")?.submit_agent_completion(a, r, completion::<bool>(on_done));
        Ok(())
    }

    /// `SpawnInfo(phase_type, stage)` of a spawned agent (a named 2-tuple), or None.
    fn get_agent_spawn_info<'py>(
        &self,
        py: Python<'py>,
        agent_id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let a = text(agent_id, "agent_id")?;
        let info = run(py, || self.inner.get_agent_spawn_info(&a))?;
        spawn_info(py, info)
    }

    /// `AgentRoute(phase_type, stage, branch_id)` of a spawned agent (a named 3-tuple: the
    /// predecessor's routing read), or None. `branch_id` is None for a spawn without a
    /// branch, and on a file without the branch column.
    fn get_agent_route<'py>(
        &self,
        py: Python<'py>,
        agent_id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let a = text(agent_id, "agent_id")?;
        let route = run(py, || self.inner.get_agent_route(&a))?;
        agent_route(py, route)
    }

    /// The executions of a spec's stage as `AgentExecution` records, newest spawn first
    /// (ties by agent id, last first); `order="oldest"` for the exact reverse; at most
    /// `limit` (None: all). With a `branch_id`, only that branch's (what a resume on it
    /// takes: an abandoned run's branch is left out); `branch_id=None` means every
    /// execution of the stage, whatever its branch or none. `after=` / `before=` a row's
    /// `cursor`: the page that follows (or precedes) that row in this order (see
    /// `query_artifacts`).
    #[pyo3(signature = (spec_id, stage, branch_id=None, *, order=None, limit=None, after=None, before=None),
           text_signature = "(self, spec_id, stage, branch_id=None, *, order='newest', limit=None, after=None, before=None)")]
    #[allow(clippy::too_many_arguments)]
    fn query_agent_executions(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        branch_id: Option<&Bound<'_, PyAny>>,
        order: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
        after: Option<&Bound<'_, PyAny>>,
        before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<AgentExecution>> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        let b = opt_text(branch_id, "branch_id")?;
        let page = page(order, limit, after, before)?;
        run(py, || self.inner.query_agent_executions_page(&s, &st, b.as_deref(), &page))
    }

    /// The agent name a spawned agent was recorded with, or None.
    fn get_agent_name(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let a = text(agent_id, "agent_id")?;
        run(py, || self.inner.get_agent_name(&a))
    }

    /// Records an agent's response and completion time; False when the agent is unknown.
    fn record_agent_completion(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        response_text: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let (a, r) = (text(agent_id, "agent_id")?, text(response_text, "response_text")?);
        run(py, || self.inner.record_agent_completion(&a, &r))
    }

    /// Records a completion whose output could not be parsed as JSON, with the parse
    /// error; False when the agent is unknown.
    fn record_extraction_failure(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        response_text: &Bound<'_, PyAny>,
        extraction_error: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let a = text(agent_id, "agent_id")?;
        let r = text(response_text, "response_text")?;
        let e = text(extraction_error, "extraction_error")?;
        run(py, || self.inner.record_extraction_failure(&a, &r, &e))
    }

    /// Declares the agents a run of a stage waits for (`wait_for_agents(run_id=...)`),
    /// persisted in the store so a wait started before every agent is spawned, or by
    /// another process, waits for all of them. Declaring the same agents again writes
    /// nothing; new agents extend the set; an agent id another set expects is refused
    /// (`InvalidInputError` naming `agent_ids`), and then nothing is written. Returns
    /// how many agents were added.
    #[pyo3(signature = (spec_id, stage, run_id, agent_ids, *, branch_id=None))]
    fn expect_agents(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        run_id: &Bound<'_, PyAny>,
        agent_ids: &Bound<'_, PyAny>,
        branch_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let set = crate::wait::Expectation::new(
            text(spec_id, "spec_id")?.to_string(),
            text(stage, "stage")?.to_string(),
            text(run_id, "run_id")?.to_string(),
            super::wait::agent_ids(agent_ids)?,
            opt_text(branch_id, "branch_id")?.map(|s| s.to_string()),
        )?;
        run(py, || self.inner.expect_agents(&set))
    }

    /// Waits until the agents' executions of the stage are finished — all of them, or
    /// `quorum` — and returns a `WaitResult`: which completed, which failed (a recorded
    /// extraction failure counts as finished), which are pending, and `timed_out`. The
    /// agents are `agent_ids=[...]` or the set `expect_agents` declared for `run_id`
    /// (exactly one of the two; `branch_id` scopes either, and alone is refused).
    /// `timeout` in seconds: None waits without limit, 0 checks once; on timeout the
    /// result has `timed_out=True` and the pending agents (no exception). Woken by
    /// commits of this process and, through one watcher per store (a connection of its
    /// own, alive while someone waits), of other processes; each wake-up checks with one
    /// query. `close()` wakes it with `ClosedError`.
    #[pyo3(signature = (spec_id, stage, *, agent_ids=None, run_id=None, branch_id=None, quorum=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn wait_for_agents<'py>(
        &self,
        py: Python<'py>,
        spec_id: &Bound<'py, PyAny>,
        stage: &Bound<'py, PyAny>,
        agent_ids: Option<&Bound<'py, PyAny>>,
        run_id: Option<&Bound<'py, PyAny>>,
        branch_id: Option<&Bound<'py, PyAny>>,
        quorum: Option<&Bound<'py, PyAny>>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let condition = super::wait::condition(spec_id, stage, agent_ids, run_id, branch_id, quorum)?;
        let timeout = super::wait::timeout(timeout)?;
        let outcome = super::wait::wait_blocking(py, self, &condition, timeout)?;
        super::wait::outcome_dict(py, &condition, outcome)
    }

    /// A wait in steps (`AgentsWaiter`: `start`, `check`, `on_change`, `close`), which
    /// `AsyncStore.wait_for_agents` runs and another event loop can too; the arguments
    /// are `wait_for_agents`'s, checked here (no I/O).
    #[pyo3(signature = (spec_id, stage, *, agent_ids=None, run_id=None, branch_id=None, quorum=None))]
    fn agents_waiter(
        slf: Bound<'_, Self>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        agent_ids: Option<&Bound<'_, PyAny>>,
        run_id: Option<&Bound<'_, PyAny>>,
        branch_id: Option<&Bound<'_, PyAny>>,
        quorum: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<super::wait::PyAgentsWaiter> {
        let condition = super::wait::condition(spec_id, stage, agent_ids, run_id, branch_id, quorum)?;
        if slf.get().inner.is_closed() {
            return Err(Error::Closed.into());
        }
        Ok(super::wait::PyAgentsWaiter::new(slf.unbind(), condition))
    }

    /// The spec's executions with an extraction error, newest spawn first (ties by
    /// agent id, last first); `order="oldest"` for oldest first. `limit`, `after=`,
    /// `before=`: a page, as `query_artifacts` takes them.
    #[pyo3(signature = (spec_id, *, order=None, limit=None, after=None, before=None),
           text_signature = "(self, spec_id, *, order='newest', limit=None, after=None, before=None)")]
    fn query_extraction_failures(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        order: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
        after: Option<&Bound<'_, PyAny>>,
        before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<ExtractionFailure>> {
        let s = text(spec_id, "spec_id")?;
        let page = page(order, limit, after, before)?;
        run(py, || self.inner.query_extraction_failures_page(&s, &page))
    }

    /// Deletes executions spawned more than `days` days ago; returns how many. On SQLite
    /// they go in chunks of ~10 ms each, writers in between; `progress(done, total)` is
    /// called after each chunk with the rows deleted so far and of how many (counted
    /// first). Returning False stops after that chunk, an exception stops there too and
    /// is raised; what was deleted stays deleted, and a later call deletes the rest. On
    /// PostgreSQL (one DELETE) `progress` is called once, at the end. The expected sets
    /// (`expect_agents`) declared more than `days` days ago go too (not counted).
    #[pyo3(signature = (days, *, progress=None))]
    fn cleanup_old_executions(
        &self,
        py: Python<'_>,
        days: &Bound<'_, PyAny>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let days = non_negative(days, "days")?;
        let Some(progress) = opt_callable(progress, "progress")? else {
            return run(py, || self.inner.cleanup_old_executions(days));
        };
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let deleted = run(py, || pg.cleanup_old_executions(days))?;
            progress.call1(py, (deleted, deleted))?;
            return Ok(deleted);
        }
        let raised = Arc::new(parking_lot::Mutex::new(None));
        let progress = progress_callback(progress, raised.clone());
        let deleted = run(py, move || {
            self.core("cleanup_old_executions")?.cleanup_old_executions_in_chunks(days, Some(progress))
        });
        raise_from_progress(&raised)?;
        Ok(deleted? as usize)
    }

    // ---- artifacts -----------------------------------------------------------------

    /// Stores one agent's output for a spec/stage; `content_json` is a JSON `str`
    /// (validated) or a dict/list (serialized). Returns the new id. With
    /// `idempotency_key`, a repeat of the call returns the first write's id and writes
    /// nothing; the key with other content raises `IdempotencyKeyError` (`docs/claims.md`).
    #[pyo3(signature = (spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None, model_version=None,
                        idempotency_key=None))]
    #[allow(clippy::too_many_arguments)]
    fn store_artifact(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        agent_name: &Bound<'_, PyAny>,
        content_json: &Bound<'_, PyAny>,
        response_text: Option<&Bound<'_, PyAny>>,
        run_id: Option<&Bound<'_, PyAny>>,
        model_version: Option<&Bound<'_, PyAny>>,
        idempotency_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let artifact = artifact_from_args(
            [spec_id, stage, agent_name, content_json],
            [response_text, run_id, model_version, idempotency_key],
        )?;
        run_keyed(py, artifact.idempotency_key.as_deref(), || self.inner.store_artifact(&artifact))
    }

    /// `store_artifact` without waiting (see `_record_agent_spawn_async`): the id goes
    /// to `on_done(id, None)`.
    #[pyo3(name = "_store_artifact_async",
           signature = (on_done, spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None, model_version=None,
                        idempotency_key=None))]
    #[allow(clippy::too_many_arguments)]
    fn store_artifact_async(
        &self,
        on_done: &Bound<'_, PyAny>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        agent_name: &Bound<'_, PyAny>,
        content_json: &Bound<'_, PyAny>,
        response_text: Option<&Bound<'_, PyAny>>,
        run_id: Option<&Bound<'_, PyAny>>,
        model_version: Option<&Bound<'_, PyAny>>,
        idempotency_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let on_done = non_callable(on_done)?;
        let artifact = artifact_from_args(
            [spec_id, stage, agent_name, content_json],
            [response_text, run_id, model_version, idempotency_key],
        )?;
        self.core("submit_artifact")?.submit_artifact(artifact, completion::<i64>(on_done));
        Ok(())
    }

    /// Stores many artifacts (mappings with the `store_artifact` argument names,
    /// `idempotency_key` included) in one transaction: all or none. An item whose key
    /// was used gets the first write's id.
    fn store_artifacts(&self, py: Python<'_>, artifacts: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
        let iter = artifacts.try_iter().map_err(|_| {
            PyErr::from(Error::invalid(
                "artifacts",
                format!("must be an iterable of mappings, got {}", type_name(artifacts)),
            ))
        })?;
        let mut batch = Vec::new();
        for (i, item) in iter.enumerate() {
            batch.push(new_artifact(&item?, i)?);
        }
        // Repeatable after a lost outcome only when no item would be written twice.
        let key = batch
            .first()
            .and_then(|a| a.idempotency_key.clone())
            .filter(|_| batch.iter().all(|a| a.idempotency_key.is_some()));
        run_keyed(py, key.as_deref(), || self.inner.store_artifacts(&batch))
    }

    /// The artifacts of a spec/stage from both schemas, newest first (by time; at one
    /// time legacy rows before new-schema ones, then by id, last first); `order="oldest"`
    /// for the exact reverse. A page: at most `limit` rows (None: all), `after=` a row's
    /// `cursor` for the rows that follow it in this order (the next page), `before=` for
    /// the `limit` rows that precede it (the previous page, still in this order). Rows
    /// inserted between pages never shift one: every row present when the first page was
    /// read comes exactly once. A cursor of another listing or spec/stage, or one this
    /// store did not make, is an `InvalidInputError` naming it.
    #[pyo3(signature = (spec_id, stage, *, order=None, limit=None, after=None, before=None),
           text_signature = "(self, spec_id, stage, *, order='newest', limit=None, after=None, before=None)")]
    #[allow(clippy::too_many_arguments)]
    fn query_artifacts(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        order: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
        after: Option<&Bound<'_, PyAny>>,
        before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Artifact>> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        let page = page(order, limit, after, before)?;
        run(py, || self.inner.query_artifacts_page(&s, &st, &page))
    }

    /// How many artifacts a spec/stage has (what `query_artifacts` returns), counted by
    /// SQL on the indexes, without reading the rows.
    fn count_artifacts(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>, stage: &Bound<'_, PyAny>) -> PyResult<usize> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.count_artifacts(&s, &st))
    }

    /// Deletes every artifact of a spec (both schemas); returns how many.
    fn delete_spec_artifacts(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>) -> PyResult<usize> {
        let s = text(spec_id, "spec_id")?;
        run(py, || self.inner.delete_spec_artifacts(&s))
    }

    /// Deletes the artifacts of one stage of a spec (both schemas); returns how many.
    fn delete_stage_artifacts(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.delete_stage_artifacts(&s, &st))
    }

    /// Deletes whole runs (syntheses and outputs) of a spec, or of one of its stages.
    #[pyo3(signature = (spec_id, stage=None))]
    fn delete_runs(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let (s, st) = (text(spec_id, "spec_id")?, opt_text(stage, "stage")?);
        run(py, || self.inner.delete_runs(&s, st.as_deref()))
    }

    // ---- synthesis -----------------------------------------------------------------

    /// Stores the merged result of a run; `agreements`/`conflicts` are JSON text or a
    /// list/dict (serialized). Returns the new id. `claim`: the stage's claim
    /// (`claim_stage`), refused with `StaleClaimError` unless it is the stage's newest
    /// live claim; without one, refused while another owner holds a live claim on the
    /// stage. `idempotency_key`: as `store_artifact`'s.
    #[pyo3(signature = (spec_id, stage, output_markdown, *, output_path=None, status=None, artifacts_count=None,
                        agreements=None, conflicts=None, degraded=None, run_id=None, claim=None, idempotency_key=None),
           text_signature = "($self, spec_id, stage, output_markdown, *, output_path=None, status='success', artifacts_count=None, agreements=None, conflicts=None, degraded=False, run_id=None, claim=None, idempotency_key=None)")]
    #[allow(clippy::too_many_arguments)]
    fn store_synthesis(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        output_markdown: &Bound<'_, PyAny>,
        output_path: Option<&Bound<'_, PyAny>>,
        status: Option<&Bound<'_, PyAny>>,
        artifacts_count: Option<&Bound<'_, PyAny>>,
        agreements: Option<&Bound<'_, PyAny>>,
        conflicts: Option<&Bound<'_, PyAny>>,
        degraded: Option<&Bound<'_, PyAny>>,
        run_id: Option<&Bound<'_, PyAny>>,
        claim: Option<&Bound<'_, PyAny>>,
        idempotency_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let synthesis = NewSynthesis {
            spec_id: text(spec_id, "spec_id")?.to_string(),
            stage: text(stage, "stage")?.to_string(),
            output_markdown: text(output_markdown, "output_markdown")?.to_string(),
            output_path: opt_text(output_path, "output_path")?.map(|s| s.to_string()),
            status: opt_text(status, "status")?.map_or_else(|| "success".to_owned(), |s| s.to_string()),
            artifacts_count: opt_int_in(artifacts_count, "artifacts_count", i64::MIN, i64::MAX)?,
            agreements: opt_json_text(agreements, "agreements")?.map(|s| s.to_string()),
            conflicts: opt_json_text(conflicts, "conflicts")?.map(|s| s.to_string()),
            degraded: opt_flag(degraded, "degraded", false)?,
            run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
            idempotency_key: opt_text(idempotency_key, "idempotency_key")?.map(|s| s.to_string()),
            claim: opt_claim(claim)?,
        };
        run_keyed(py, synthesis.idempotency_key.as_deref(), || self.inner.store_synthesis(&synthesis))
    }

    // ---- claims --------------------------------------------------------------------

    /// Claims a stage for `lease_s` seconds (on the database's clock): a `Claim` with
    /// the stage's next fencing token (strictly increasing per spec/stage/branch, never
    /// reused), or None while another owner's lease is live. Claiming again as the same
    /// owner while its own lease is live takes a new token (the earlier claim is then
    /// stale). See `docs/claims.md`.
    #[pyo3(signature = (spec_id, stage, run_id=None, *, owner, lease_s, branch_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn claim_stage(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        run_id: Option<&Bound<'_, PyAny>>,
        owner: &Bound<'_, PyAny>,
        lease_s: &Bound<'_, PyAny>,
        branch_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Claim>> {
        let claim = NewClaim {
            spec_id: text(spec_id, "spec_id")?.to_string(),
            stage: text(stage, "stage")?.to_string(),
            branch_id: opt_text(branch_id, "branch_id")?.map(|s| s.to_string()),
            run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
            owner: text(owner, "owner")?.to_string(),
            lease_ms: crate::store::lease_ms("lease_s", real(lease_s, "lease_s")?)?,
        };
        run(py, || self.inner.claim_stage(&claim))
    }

    /// Extends a live claim's lease to now + `lease_s` (None: its own length); returns
    /// the renewed claim. A claim taken over, expired or released raises
    /// `StaleClaimError`.
    #[pyo3(signature = (claim, *, lease_s=None))]
    fn renew_claim(
        &self,
        py: Python<'_>,
        claim: &Bound<'_, PyAny>,
        lease_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claim> {
        let claim = claim_arg(claim)?;
        let lease = match lease_s.filter(|l| !l.is_none()) {
            Some(l) => Some(crate::store::lease_ms("lease_s", real(l, "lease_s")?)?),
            None => None,
        };
        run(py, || self.inner.renew_claim(&claim, lease))
    }

    /// Ends a claim before its lease: the stage is claimable at once. Returns whether it
    /// was released (False: it had been taken over or released already).
    fn release_claim(&self, py: Python<'_>, claim: &Bound<'_, PyAny>) -> PyResult<bool> {
        let claim = claim_arg(claim)?;
        run(py, || self.inner.release_claim(&claim))
    }

    /// The live claims, of one spec or of all, by spec, stage and branch.
    #[pyo3(signature = (spec_id=None))]
    fn query_claims(&self, py: Python<'_>, spec_id: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Claim>> {
        let spec = opt_text(spec_id, "spec_id")?.map(|s| s.to_string());
        run(py, || self.inner.query_claims(spec.as_deref()))
    }

    /// Test hook: shifts this store's clock for leases and idempotency keys by
    /// `seconds` (a lease expires without waiting for it). Other stores, and other
    /// processes, keep their own clocks.
    fn _set_clock_offset(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = real(seconds, "seconds")?;
        if !s.is_finite() || s.abs() > 1e10 {
            return Err(Error::invalid("seconds", format!("must be a finite number of seconds, got {s}")).into());
        }
        self.inner.set_clock_offset((s * 1000.0).round() as i64);
        Ok(())
    }

    /// The newest synthesis of a spec/stage from either schema, or None.
    fn query_latest_synthesis(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Synthesis>> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.query_latest_synthesis(&s, &st))
    }

    /// How often each schema served `query_artifacts` / `query_latest_synthesis`.
    fn reader_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        ReaderStats::from(&self.core("reader_stats() (the dual-schema reader)")?.reader_counts()).to_py(py)
    }

    // ---- vacuum, health, maintenance -----------------------------------------------------

    /// Page size and count, free pages and fraction, file and WAL size.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        run(py, || self.core("stats() (SQLite pages)")?.stats())?.to_py(py)
    }

    /// Statistics, rows per table, journal mode, auto_vacuum, schema version, and
    /// `needs_vacuum` (the free fraction is above `threshold`). Rows are counted where
    /// that is cheap and otherwise estimated — the tables named in `rows_estimated`:
    /// on SQLite an upper bound from the rowid span (`max(rowid) - min(rowid) + 1`), on
    /// PostgreSQL the planner's `reltuples`; `exact=True` counts every table (a read of
    /// every page of each table's smallest index: slow on big files).
    #[pyo3(signature = (threshold=None, *, exact=None), text_signature = "($self, threshold=0.5, *, exact=False)")]
    fn health<'py>(
        &self,
        py: Python<'py>,
        threshold: Option<&Bound<'py, PyAny>>,
        exact: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let threshold =
            threshold.filter(|t| !t.is_none()).map_or(Ok(DEFAULT_VACUUM_THRESHOLD), |t| real(t, "threshold"))?;
        let exact = opt_flag(exact, "exact", false)?;
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let h = run(py, || pg.health(exact))?;
            return PostgresHealthReport::new(h, threshold, self.path(py).unbind()).to_py(py);
        }
        let h = run(py, || self.core("health")?.health(threshold, exact))?;
        let reader = self.core("health")?.reader_counts();
        HealthReport::new(h, self.path(py).unbind(), &reader).to_py(py)
    }

    /// Reclaims free pages: `pages` of them incrementally (None: all), in chunks of ~10 ms
    /// each, writers in between; or the whole file rebuilt in one piece with `full=True`
    /// (also what runs on a file whose auto_vacuum is not incremental). `progress` is
    /// called after each chunk as `progress(done, total)`, pages freed so far of those
    /// to free; during a full VACUUM, which knows no total, as `progress(calls)` every
    /// thousand SQLite steps (a callback for both takes `total=None`). Returning False
    /// stops the chunks after the current one (what was freed stays freed), or interrupts
    /// a full VACUUM (nothing changes). An exception stops the chunks and is raised; in a
    /// full VACUUM it goes to `sys.unraisablehook` and the VACUUM goes on. Returns
    /// before/after statistics and what they
    /// mean: `pages_freed` and `bytes_reclaimed` (pages × page size) are never negative;
    /// `file_bytes_*`/`wal_bytes_*` are the main file and the WAL before and after, and
    /// `page_count_change`/`disk_bytes_change` are after minus before; `checkpoint` is the
    /// checkpoint that follows, `checkpoint_blocked` why it left WAL frames (None: it did not).
    #[pyo3(signature = (*, full=None, pages=None, progress=None), text_signature = "($self, *, full=False, pages=None, progress=None)")]
    fn vacuum<'py>(
        &self,
        py: Python<'py>,
        full: Option<&Bound<'py, PyAny>>,
        pages: Option<&Bound<'py, PyAny>>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let full = opt_flag(full, "full", false)?;
        let pages: Option<u32> = opt_int_in(pages, "pages", 0, u32::MAX.into())?;
        let raised = Arc::new(parking_lot::Mutex::new(None));
        let progress = opt_callable(progress, "progress")?.map(|cb| progress_callback(cb, raised.clone()));
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            if pages.is_some() {
                return Err(Error::NotSupported(format!(
                    "vacuum(pages={}) is SQLite's incremental vacuum and does not apply on PostgreSQL; vacuum() runs VACUUM (ANALYZE)",
                    pages.unwrap_or_default()
                ))
                .into());
            }
            run(py, || pg.vacuum(full))?;
            return PostgresVacuumReport::new(full).to_py(py);
        }
        let r = run(py, move || self.core("vacuum")?.vacuum(full, pages, progress));
        raise_from_progress(&raised)?;
        VacuumReport::from(&r?).to_py(py)
    }

    /// `wal_checkpoint(MODE)`: `mode` is "passive", "full", "restart" or "truncate";
    /// None runs TRUNCATE, or PASSIVE on a replicated store (which refuses the others).
    /// `blocked` says why it left WAL frames uncopied (another connection's reader, say), or None.
    #[pyo3(signature = (mode=None))]
    fn checkpoint<'py>(&self, py: Python<'py>, mode: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let mode = match opt_text(mode, "mode")? {
            Some(text) => Some(CheckpointMode::parse(&text)?),
            None => None,
        };
        let done = run(py, || self.core("checkpoint() (the SQLite WAL)")?.checkpoint(mode))?;
        CheckpointReport::from(&done).to_py(py)
    }

    /// Whether a replica (Litestream) is attached: opened with `replicated=True`, or
    /// Litestream's tables are in the file. Checkpoints are PASSIVE only then.
    #[getter]
    fn replicated(&self, py: Python<'_>) -> PyResult<bool> {
        run(py, || self.core("replicated")?.is_replicated())
    }

    /// An online backup into the new file `dest` (a str, bytes or os.PathLike, named byte
    /// for byte as `connect` names files; refused if anything exists there); without
    /// `dest`, beside the database under a fresh unique name. Returns the path (a str, as
    /// `os.fsdecode` gives it).
    #[pyo3(signature = (dest=None))]
    fn backup(&self, py: Python<'_>, dest: Option<&Bound<'_, PyAny>>) -> PyResult<std::ffi::OsString> {
        let dest = dest.filter(|d| !d.is_none()).map(|d| path_arg(d, "dest")).transpose()?;
        let path = run(py, || match dest {
            Some(dest) => self.core("backup()")?.backup(&dest).map(|()| dest),
            None => self.core("backup()")?.backup_beside(),
        })?;
        Ok(path.into_os_string())
    }

    /// `PRAGMA integrity_check` (or `quick_check`): `["ok"]` or the problems found.
    #[pyo3(signature = (quick=None), text_signature = "($self, quick=False)")]
    fn integrity_check(&self, py: Python<'_>, quick: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
        let quick = opt_flag(quick, "quick", false)?;
        run(py, || self.core("integrity_check()")?.integrity_check(quick))
    }

    /// Starts the background maintenance thread: retention, incremental vacuum and a
    /// WAL checkpoint every `interval_s` seconds. `on_cycle(report: dict)` is called
    /// after each cycle (from the maintenance thread).
    /// `retention_days` and `vacuum_pages` default to 30 and 1000 when omitted; None
    /// turns retention off and frees every free page.
    #[pyo3(signature = (interval_s=None, *, retention_days=Keep::Default, vacuum_pages=Keep::Default, checkpoint=None, on_cycle=None),
           text_signature = "($self, interval_s=300.0, *, retention_days=30, vacuum_pages=1000, checkpoint=True, on_cycle=None)")]
    fn start_maintenance(
        &self,
        py: Python<'_>,
        interval_s: Option<&Bound<'_, PyAny>>,
        retention_days: Keep<'_>,
        vacuum_pages: Keep<'_>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        on_cycle: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let defaults = MaintenanceOptions::default();
        let interval = match interval_s.filter(|o| !o.is_none()) {
            Some(s) => seconds(s, "interval_s")?,
            None => defaults.interval,
        };
        let retention_days = match retention_days {
            Keep::Default => defaults.retention_days,
            Keep::Given(d) => opt_int_in(Some(&d), "retention_days", 0, i64::MAX)?,
        };
        let vacuum_pages = match vacuum_pages {
            Keep::Default => defaults.vacuum_pages,
            Keep::Given(p) => opt_int_in(Some(&p), "vacuum_pages", 0, u32::MAX.into())?,
        };
        let checkpoint = opt_flag(checkpoint, "checkpoint", defaults.checkpoint)?;
        let on_cycle = opt_callable(on_cycle, "on_cycle")?;
        let on_cycle = on_cycle.map(|cb| {
            Arc::new(move |report: &CycleReport| {
                Python::try_attach(|py| {
                    if let Err(e) = report.to_py(py).and_then(|d| cb.call1(py, (d,))) {
                        e.write_unraisable(py, None);
                    }
                });
            }) as crate::sqlite::maintenance::CycleHook
        });
        let options = MaintenanceOptions { interval, retention_days, vacuum_pages, checkpoint, on_cycle };
        run(py, || self.inner.start_maintenance(options))
    }

    /// Stops the maintenance thread (waiting for a running cycle); a no-op if none runs.
    fn stop_maintenance(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop_maintenance());
    }

    /// Cycles completed by the running maintenance thread, or None.
    #[getter]
    fn maintenance_cycles(&self) -> Option<u64> {
        self.inner.maintenance_cycles()
    }
}

/// `_core.DEFAULTS` (see [`Defaults`]).
pub(crate) fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Defaults::default().to_py(py)
}

/// `claim=`: a `Claim` (`claim_stage`'s), or None.
fn opt_claim(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Claim>> {
    obj.filter(|c| !c.is_none()).map(claim_arg).transpose()
}

fn claim_arg(obj: &Bound<'_, PyAny>) -> PyResult<Claim> {
    match obj.cast::<Claim>() {
        Ok(c) => Ok(c.get().clone()),
        Err(_) => {
            Err(Error::invalid("claim", format!("must be a Claim (from claim_stage), got {}", type_name(obj))).into())
        }
    }
}

/// `order` of the queries: `"newest"` (the default, as the predecessor had it) or `"oldest"`.
/// A listing's page arguments: `order`, `limit` (0 or more; None: all), `after`/`before`.
fn page(
    order: Option<&Bound<'_, PyAny>>,
    limit: Option<&Bound<'_, PyAny>>,
    after: Option<&Bound<'_, PyAny>>,
    before: Option<&Bound<'_, PyAny>>,
) -> PyResult<Page> {
    Ok(Page {
        newest_first: newest_first(order)?,
        limit: opt_int_in(limit, "limit", 0, i64::MAX)?,
        after: opt_text(after, "after")?.map(|s| s.to_string()),
        before: opt_text(before, "before")?.map(|s| s.to_string()),
    })
}

fn newest_first(order: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
    let Some(order) = order else { return Ok(true) };
    match &*text(order, "order")? {
        "newest" => Ok(true),
        "oldest" => Ok(false),
        other => Err(Error::invalid("order", format!("must be \"newest\" or \"oldest\", got {other:?}")).into()),
    }
}
