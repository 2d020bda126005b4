//! `consensus_db._core.Database`: the engine's operations as Python methods. Arguments
//! are converted while holding the GIL; the SQLite work runs with it released.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{PyDict, PyMapping, PyString, PyTuple};

use super::convert::{json_text, opt_json_text, opt_text, rows_to_py, text, to_params, type_name};
use super::run;
use super::transaction::PyTransaction;
use crate::error::Error;
use crate::maintenance::{CycleReport, MaintenanceOptions, Stats, DEFAULT_RETENTION_DAYS, DEFAULT_VACUUM_THRESHOLD};
use crate::migrations;
use crate::model::{Artifact, ExtractionFailure, NewArtifact, NewSynthesis, Synthesis};
use crate::transaction::Behavior;
use crate::{Database, Options, Pragmas};

#[pyclass(frozen, subclass, module = "consensus_db", name = "Database")]
pub struct PyDatabase {
    inner: Database,
}

impl PyDatabase {
    pub fn core(&self) -> crate::Result<&Database> {
        Ok(&self.inner)
    }
}

impl Drop for PyDatabase {
    /// A store dropped without `close()` closes here, with the GIL released: closing
    /// waits for the maintenance thread, which may be waiting for the GIL to run its hook.
    fn drop(&mut self) {
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

fn parse_pragmas(overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Pragmas> {
    let mut pragmas = Pragmas::default();
    if let Some(d) = overrides {
        for (k, v) in d.iter() {
            let name = text(&k, "pragma name")?;
            if v.is_none() {
                pragmas.unset(&name)?;
            } else if v.is_instance_of::<pyo3::types::PyBool>() {
                pragmas.set(&name, if v.is_truthy()? { "1" } else { "0" })?;
            } else {
                pragmas.set(&name, &v.str()?.to_string())?;
            }
        }
    }
    Ok(pragmas)
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("page_size", s.page_size)?;
    d.set_item("page_count", s.page_count)?;
    d.set_item("freelist_count", s.freelist_count)?;
    d.set_item("free_fraction", s.free_fraction)?;
    d.set_item("file_size", s.file_size)?;
    d.set_item("wal_size", s.wal_size)?;
    Ok(d)
}

fn cycle_dict<'py>(py: Python<'py>, r: &CycleReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cycle", r.cycle)?;
    d.set_item("executions_deleted", r.executions_deleted)?;
    d.set_item("pages_freed", r.pages_freed)?;
    d.set_item("checkpointed", r.checkpointed)?;
    d.set_item("error", &r.error)?;
    Ok(d)
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
}

impl<'py> Item<'_, 'py> {
    fn get(&self, key: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.fields {
            Fields::Dict(d) => d.get_item(key),
            Fields::Mapping(m) => match m.get_item(key) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(key.py()) => Ok(None),
                Err(e) => Err(e),
            },
        }
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
    let item = Item { i, fields };
    let content = intern!(py, "content_json");
    Ok(NewArtifact {
        spec_id: item.text(intern!(py, "spec_id"))?,
        stage: item.text(intern!(py, "stage"))?,
        agent_name: item.text(intern!(py, "agent_name"))?,
        content_json: json_text(&item.required(content)?, FieldName(i, content))?.to_string(),
        response_text: item.optional_text(intern!(py, "response_text"))?,
        run_id: item.optional_text(intern!(py, "run_id"))?,
        model_version: item.optional_text(intern!(py, "model_version"))?,
    })
}

#[pymethods]
impl PyDatabase {
    #[new]
    #[pyo3(signature = (path, *, pool_size=10, min_idle=1, checkout_timeout=10.0, read_only=false, create=true,
                        migrate=None, pragmas=None, convert_auto_vacuum=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        pool_size: u32,
        min_idle: u32,
        checkout_timeout: f64,
        read_only: bool,
        create: bool,
        migrate: Option<&Bound<'_, PyAny>>,
        pragmas: Option<&Bound<'_, PyDict>>,
        convert_auto_vacuum: bool,
    ) -> PyResult<Self> {
        let path: String = if let Ok(p) = path.extract::<std::path::PathBuf>() {
            p.to_string_lossy().into_owned()
        } else {
            return Err(Error::invalid("path", format!("must be a str or os.PathLike, got {}", type_name(path))).into());
        };
        if !(checkout_timeout.is_finite() && checkout_timeout > 0.0) {
            return Err(Error::invalid("checkout_timeout", format!("must be a positive number of seconds, got {checkout_timeout}")).into());
        }
        let migrate_to = match migrate {
            None => Some(migrations::DEFAULT_VERSION),
            Some(m) if m.is_instance_of::<pyo3::types::PyBool>() => m.is_truthy()?.then_some(migrations::DEFAULT_VERSION),
            Some(m) => Some(non_negative(m, "migrate")?),
        };
        let options = Options {
            pool_size,
            min_idle: min_idle.min(pool_size),
            checkout_timeout: Duration::from_secs_f64(checkout_timeout),
            read_only,
            create,
            pragmas: parse_pragmas(pragmas)?,
            convert_auto_vacuum,
            migrate_to: if read_only { None } else { migrate_to },
        };
        let inner = run(py, move || Database::open(&path, options))?;
        Ok(PyDatabase { inner })
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

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

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    #[getter]
    fn path(&self) -> &str {
        self.inner.path()
    }

    #[getter]
    fn read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    #[getter]
    fn in_memory(&self) -> bool {
        self.inner.is_in_memory()
    }

    /// What opening did: auto_vacuum conversion, journal mode change, migration.
    #[getter]
    fn open_report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.inner.open_report();
        let d = PyDict::new(py);
        d.set_item("auto_vacuum_converted", r.auto_vacuum_converted.clone())?;
        d.set_item("journal_mode_changed", r.journal_mode_changed.clone())?;
        d.set_item("migrated", r.migrated)?;
        d.set_item("shape", &r.shape)?;
        d.set_item("layout_updated", r.layout_updated)?;
        Ok(d)
    }

    /// Every configured pragma's current value.
    fn pragmas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let values = run(py, || self.inner.pragmas())?;
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
        run(py, || self.inner.verify_pragmas())
    }

    /// Connections open and idle in the pool.
    fn pool_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (connections, idle) = self.inner.pool_state()?;
        let d = PyDict::new(py);
        d.set_item("connections", connections)?;
        d.set_item("idle", idle)?;
        d.set_item("max_size", self.inner.options().pool_size)?;
        Ok(d)
    }

    #[pyo3(signature = (behavior="immediate"))]
    fn transaction(slf: Bound<'_, Self>, behavior: &str) -> PyResult<PyTransaction> {
        let behavior: Behavior = behavior.parse()?;
        Ok(PyTransaction::new(slf.unbind(), behavior))
    }

    /// Runs one statement in its own IMMEDIATE transaction; returns rows changed.
    #[pyo3(signature = (sql, params=None))]
    fn execute(&self, py: Python<'_>, sql: &str, params: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let params = to_params(params)?;
        let sql = sql.to_owned();
        run(py, move || self.inner.write(|tx| tx.execute(&sql, &params)))
    }

    /// Runs a query outside any transaction; returns every row as a tuple.
    #[pyo3(signature = (sql, params=None))]
    fn query<'py>(&self, py: Python<'py>, sql: &str, params: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let params = to_params(params)?;
        let sql = sql.to_owned();
        let rows = run(py, move || self.inner.query(&sql, &params))?;
        rows_to_py(py, rows)
    }

    // ---- schema -------------------------------------------------------------------

    #[getter]
    fn schema_version(&self, py: Python<'_>) -> PyResult<i64> {
        run(py, || self.inner.schema_version())
    }

    /// Migrates to `target`, up or down; without one, up to at least the default
    /// version, as opening does. Returns the version reached.
    #[pyo3(signature = (target=None))]
    fn migrate(&self, py: Python<'_>, target: Option<&Bound<'_, PyAny>>) -> PyResult<i64> {
        match target {
            Some(t) if !t.is_none() => {
                let target = non_negative(t, "target")?;
                run(py, || self.inner.migrate(target))
            }
            _ => run(py, || self.inner.upgrade(migrations::DEFAULT_VERSION)),
        }
    }

    // ---- agent executions ----------------------------------------------------------

    #[pyo3(signature = (agent_id, spec_id, stage, phase_type, agent_name, run_id=None))]
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
    ) -> PyResult<()> {
        let (a, s, st) = (text(agent_id, "agent_id")?, text(spec_id, "spec_id")?, text(stage, "stage")?);
        let (p, n, r) = (text(phase_type, "phase_type")?, text(agent_name, "agent_name")?, opt_text(run_id, "run_id")?);
        run(py, || self.inner.record_agent_spawn(&a, &s, &st, &p, &n, r.as_deref()))
    }

    fn get_agent_spawn_info(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<(String, String)>> {
        let a = text(agent_id, "agent_id")?;
        run(py, || self.inner.get_agent_spawn_info(&a))
    }

    fn get_agent_name(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let a = text(agent_id, "agent_id")?;
        run(py, || self.inner.get_agent_name(&a))
    }

    fn record_agent_completion(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>, response_text: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (a, r) = (text(agent_id, "agent_id")?, text(response_text, "response_text")?);
        run(py, || self.inner.record_agent_completion(&a, &r))
    }

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

    fn query_extraction_failures(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>) -> PyResult<Vec<ExtractionFailure>> {
        let s = text(spec_id, "spec_id")?;
        run(py, || self.inner.query_extraction_failures(&s))
    }

    fn cleanup_old_executions(&self, py: Python<'_>, days: &Bound<'_, PyAny>) -> PyResult<usize> {
        let days = non_negative(days, "days")?;
        run(py, || self.inner.cleanup_old_executions(days))
    }

    // ---- artifacts -----------------------------------------------------------------

    #[pyo3(signature = (spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None, model_version=None))]
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
    ) -> PyResult<i64> {
        let artifact = NewArtifact {
            spec_id: text(spec_id, "spec_id")?.to_string(),
            stage: text(stage, "stage")?.to_string(),
            agent_name: text(agent_name, "agent_name")?.to_string(),
            content_json: json_text(content_json, "content_json")?.to_string(),
            response_text: opt_text(response_text, "response_text")?.map(|s| s.to_string()),
            run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
            model_version: opt_text(model_version, "model_version")?.map(|s| s.to_string()),
        };
        run(py, || self.inner.store_artifact(&artifact))
    }

    /// Stores many artifacts (mappings with the `store_artifact` argument names) in
    /// one transaction: all or none.
    fn store_artifacts(&self, py: Python<'_>, artifacts: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
        let iter = artifacts.try_iter().map_err(|_| {
            PyErr::from(Error::invalid("artifacts", format!("must be an iterable of mappings, got {}", type_name(artifacts))))
        })?;
        let mut batch = Vec::new();
        for (i, item) in iter.enumerate() {
            batch.push(new_artifact(&item?, i)?);
        }
        run(py, || self.inner.store_artifacts(&batch))
    }

    fn query_artifacts(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>, stage: &Bound<'_, PyAny>) -> PyResult<Vec<Artifact>> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.query_artifacts(&s, &st))
    }

    fn delete_spec_artifacts(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>) -> PyResult<usize> {
        let s = text(spec_id, "spec_id")?;
        run(py, || self.inner.delete_spec_artifacts(&s))
    }

    fn delete_stage_artifacts(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>, stage: &Bound<'_, PyAny>) -> PyResult<usize> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.delete_stage_artifacts(&s, &st))
    }

    /// Deletes whole runs (syntheses and outputs) of a spec, or of one of its stages.
    #[pyo3(signature = (spec_id, stage=None))]
    fn delete_runs(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>, stage: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let (s, st) = (text(spec_id, "spec_id")?, opt_text(stage, "stage")?);
        run(py, || self.inner.delete_runs(&s, st.as_deref()))
    }

    // ---- synthesis -----------------------------------------------------------------

    #[pyo3(signature = (spec_id, stage, output_markdown, *, output_path=None, status="success", artifacts_count=None,
                        agreements=None, conflicts=None, degraded=false, run_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn store_synthesis(
        &self,
        py: Python<'_>,
        spec_id: &Bound<'_, PyAny>,
        stage: &Bound<'_, PyAny>,
        output_markdown: &Bound<'_, PyAny>,
        output_path: Option<&Bound<'_, PyAny>>,
        status: &str,
        artifacts_count: Option<i64>,
        agreements: Option<&Bound<'_, PyAny>>,
        conflicts: Option<&Bound<'_, PyAny>>,
        degraded: bool,
        run_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let synthesis = NewSynthesis {
            spec_id: text(spec_id, "spec_id")?.to_string(),
            stage: text(stage, "stage")?.to_string(),
            output_markdown: text(output_markdown, "output_markdown")?.to_string(),
            output_path: opt_text(output_path, "output_path")?.map(|s| s.to_string()),
            status: status.to_owned(),
            artifacts_count,
            agreements: opt_json_text(agreements, "agreements")?.map(|s| s.to_string()),
            conflicts: opt_json_text(conflicts, "conflicts")?.map(|s| s.to_string()),
            degraded,
            run_id: opt_text(run_id, "run_id")?.map(|s| s.to_string()),
        };
        run(py, || self.inner.store_synthesis(&synthesis))
    }

    fn query_latest_synthesis(&self, py: Python<'_>, spec_id: &Bound<'_, PyAny>, stage: &Bound<'_, PyAny>) -> PyResult<Option<Synthesis>> {
        let (s, st) = (text(spec_id, "spec_id")?, text(stage, "stage")?);
        run(py, || self.inner.query_latest_synthesis(&s, &st))
    }

    /// How often each schema served `query_artifacts` / `query_latest_synthesis`.
    fn reader_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.reader_counts();
        let d = PyDict::new(py);
        d.set_item("v1", c.v1)?;
        d.set_item("legacy", c.legacy)?;
        d.set_item("empty", c.empty)?;
        Ok(d)
    }

    // ---- vacuum, health, maintenance -----------------------------------------------------

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = run(py, || self.inner.stats())?;
        stats_dict(py, &s)
    }

    #[pyo3(signature = (threshold=DEFAULT_VACUUM_THRESHOLD))]
    fn health<'py>(&self, py: Python<'py>, threshold: f64) -> PyResult<Bound<'py, PyDict>> {
        let h = run(py, || self.inner.health(threshold))?;
        let d = stats_dict(py, &h.stats)?;
        let rows = PyDict::new(py);
        for (table, n) in &h.rows {
            rows.set_item(table, n)?;
        }
        d.set_item("rows", rows)?;
        d.set_item("journal_mode", &h.journal_mode)?;
        d.set_item("auto_vacuum", h.auto_vacuum)?;
        d.set_item("schema_version", h.schema_version)?;
        d.set_item("needs_vacuum", h.needs_vacuum)?;
        d.set_item("vacuum_threshold", h.vacuum_threshold)?;
        d.set_item("path", self.inner.path())?;
        Ok(d)
    }

    /// Reclaims free pages; returns before/after statistics.
    #[pyo3(signature = (*, full=false, pages=None, progress=None))]
    fn vacuum<'py>(&self, py: Python<'py>, full: bool, pages: Option<u32>, progress: Option<Py<PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        let progress: Option<Box<dyn FnMut(u64) -> bool + Send>> = progress.map(|cb| {
            Box::new(move |calls: u64| {
                Python::try_attach(|py| match cb.call1(py, (calls,)) {
                    Ok(v) => !matches!(v.extract::<bool>(py), Ok(false)),
                    Err(e) => {
                        e.write_unraisable(py, None);
                        true
                    }
                })
                .unwrap_or(true)
            }) as Box<dyn FnMut(u64) -> bool + Send>
        });
        let r = run(py, move || self.inner.vacuum(full, pages, progress))?;
        let d = PyDict::new(py);
        d.set_item("full", r.full)?;
        d.set_item("before", stats_dict(py, &r.before)?)?;
        d.set_item("after", stats_dict(py, &r.after)?)?;
        d.set_item("pages_freed", r.pages_freed())?;
        d.set_item("bytes_reclaimed", r.bytes_reclaimed())?;
        Ok(d)
    }

    /// `wal_checkpoint(TRUNCATE)`.
    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (busy, log, done) = run(py, || self.inner.checkpoint())?;
        let d = PyDict::new(py);
        d.set_item("busy", busy)?;
        d.set_item("log_frames", log)?;
        d.set_item("checkpointed_frames", done)?;
        Ok(d)
    }

    #[pyo3(signature = (quick=false))]
    fn integrity_check(&self, py: Python<'_>, quick: bool) -> PyResult<Vec<String>> {
        run(py, || self.inner.integrity_check(quick))
    }

    /// Starts the background maintenance thread: retention, incremental vacuum and a
    /// WAL checkpoint every `interval_s` seconds. `on_cycle(report: dict)` is called
    /// after each cycle (from the maintenance thread).
    #[pyo3(signature = (interval_s=300.0, *, retention_days=Some(DEFAULT_RETENTION_DAYS), vacuum_pages=Some(1000), checkpoint=true, on_cycle=None))]
    fn start_maintenance(
        &self,
        py: Python<'_>,
        interval_s: f64,
        retention_days: Option<i64>,
        vacuum_pages: Option<u32>,
        checkpoint: bool,
        on_cycle: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        if !(interval_s.is_finite() && interval_s > 0.0) {
            return Err(Error::invalid("interval_s", format!("must be a positive number of seconds, got {interval_s}")).into());
        }
        let on_cycle = on_cycle.map(|cb| {
            Arc::new(move |report: &CycleReport| {
                Python::try_attach(|py| {
                    if let Err(e) = cycle_dict(py, report).and_then(|d| cb.call1(py, (d,))) {
                        e.write_unraisable(py, None);
                    }
                });
            }) as crate::maintenance::CycleHook
        });
        let options = MaintenanceOptions {
            interval: Duration::from_secs_f64(interval_s),
            retention_days,
            vacuum_pages,
            checkpoint,
            on_cycle,
        };
        run(py, || self.inner.start_maintenance(options))
    }

    fn stop_maintenance(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop_maintenance());
    }

    /// Cycles completed by the running maintenance thread, or None.
    #[getter]
    fn maintenance_cycles(&self) -> Option<u64> {
        self.inner.maintenance_cycles()
    }
}
