//! The reports as Python dicts: [`ToPy`] (what each field becomes in Python), the
//! Python-facing reports whose dicts carry derived values (a vacuum's `pages_freed`, a
//! checkpoint's `blocked`, PostgreSQL's health), each built from the engine's struct in
//! one `From`/constructor, and [`REPORTS`]: every report's keys under its `TypedDict`'s
//! name in `results.py` (`_core._report_fields()`, checked by tests/test_reports.py).

use std::collections::{BTreeMap, HashMap};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::model::{LatencySummary, ReaderCounts, SchemaGroup, SchemaMismatch, SchemaReport};
use crate::sqlite::database::OpenReport;
use crate::sqlite::legacy_rows::Problem;
use crate::sqlite::maintenance::{CycleReport, Stats, VacuumReport as EngineVacuum};
use crate::sqlite::migrations::RowsMoved;
use crate::sqlite::replica::{Checkpoint, CheckpointMode};
use crate::sqlite::writer::LaneStats;
use crate::wait::{AgentSet, WaitFor, WaitOutcome};

/// What a report's field becomes in Python. Reports (`report!`) become dicts; a
/// `Vec<(key, value)>` — the engine's ordered map (rows per table, commits per group
/// size) — a dict in its order; a `Vec` of strings or of reports a list; a tuple a
/// tuple; `Option` the value or None; a `BTreeMap`/`HashMap` a dict.
pub trait ToPy {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

macro_rules! to_py_as_is {
    ($($ty:ty),*) => {$(
        impl ToPy for $ty {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                self.into_bound_py_any(py)
            }
        }
    )*};
}
to_py_as_is!(bool, i64, u32, u64, usize, f64, String, &'static str);

/// A list of each item's Python value.
pub fn list<'py, T: ToPy>(py: Python<'py>, items: &[T]) -> PyResult<Bound<'py, PyAny>> {
    let items = items.iter().map(|item| item.to_py(py)).collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?.into_any())
}

impl ToPy for Vec<String> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        list(py, self)
    }
}

impl ToPy for Vec<&'static str> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        list(py, self)
    }
}

impl ToPy for Py<PyAny> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.bind(py).clone())
    }
}

/// A checkpoint mode by its name ("passive", "full", "restart", "truncate").
impl ToPy for CheckpointMode {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.name().to_py(py)
    }
}

impl<T: ToPy> ToPy for Option<T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Some(value) => value.to_py(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
}

impl<A: ToPy, B: ToPy> ToPy for (A, B) {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyTuple::new(py, [self.0.to_py(py)?, self.1.to_py(py)?])?.into_any())
    }
}

fn dict<'a, 'py, K: ToPy + 'a, V: ToPy + 'a>(
    py: Python<'py>,
    pairs: impl Iterator<Item = (&'a K, &'a V)>,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    for (key, value) in pairs {
        d.set_item(key.to_py(py)?, value.to_py(py)?)?;
    }
    Ok(d.into_any())
}

impl<K: ToPy, V: ToPy> ToPy for Vec<(K, V)> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dict(py, self.iter().map(|(k, v)| (k, v)))
    }
}

impl<K: ToPy, V: ToPy> ToPy for BTreeMap<K, V> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dict(py, self.iter())
    }
}

impl<K: ToPy, V: ToPy, S> ToPy for HashMap<K, V, S> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dict(py, self.iter())
    }
}

report! {
    /// `checkpoint()`: the mode run, `PRAGMA wal_checkpoint`'s three numbers, and
    /// `blocked`: why it left WAL frames uncopied (another connection's reader), or None.
    pub struct CheckpointReport {
        pub mode: CheckpointMode,
        pub busy: i64,
        pub log_frames: i64,
        pub checkpointed_frames: i64,
        pub blocked: Option<String>,
    }
}

impl From<&Checkpoint> for CheckpointReport {
    fn from(c: &Checkpoint) -> Self {
        CheckpointReport {
            mode: c.mode,
            busy: c.busy,
            log_frames: c.log_frames,
            checkpointed_frames: c.checkpointed_frames,
            blocked: c.blocked(),
        }
    }
}

report! {
    /// `vacuum()` on SQLite: before/after statistics and what they mean (see
    /// [`EngineVacuum`]'s methods, which compute every derived figure).
    pub struct VacuumReport {
        pub full: bool,
        pub before: Stats,
        pub after: Stats,
        pub pages_freed: i64,
        pub page_count_change: i64,
        pub bytes_reclaimed: i64,
        pub file_bytes_before: u64,
        pub file_bytes_after: u64,
        pub wal_bytes_before: u64,
        pub wal_bytes_after: u64,
        pub disk_bytes_change: i64,
        pub checkpoint: Option<CheckpointReport>,
        pub checkpoint_blocked: Option<String>,
    }
}

impl From<&EngineVacuum> for VacuumReport {
    fn from(r: &EngineVacuum) -> Self {
        VacuumReport {
            full: r.full,
            before: r.before.clone(),
            after: r.after.clone(),
            pages_freed: r.pages_freed(),
            page_count_change: r.page_count_change(),
            bytes_reclaimed: r.bytes_reclaimed(),
            file_bytes_before: r.before.file_size,
            file_bytes_after: r.after.file_size,
            wal_bytes_before: r.before.wal_size,
            wal_bytes_after: r.after.wal_size,
            disk_bytes_change: r.disk_bytes_change(),
            checkpoint: r.checkpoint.as_ref().map(CheckpointReport::from),
            checkpoint_blocked: r.checkpoint_blocked(),
        }
    }
}

report! {
    /// `vacuum()` on PostgreSQL: VACUUM (ANALYZE) ran, FULL or not.
    pub struct PostgresVacuumReport {
        pub full: bool,
        pub backend: &'static str,
    }
}

impl PostgresVacuumReport {
    pub fn new(full: bool) -> Self {
        PostgresVacuumReport { full, backend: "postgresql" }
    }
}

report! {
    /// One read path's latency in microseconds (`LatencySummary` under Python's names).
    pub struct PathLatency {
        pub count: u64,
        pub p50: f64,
        pub p90: f64,
        pub p99: f64,
        pub max: f64,
    }
}

impl From<&LatencySummary> for PathLatency {
    fn from(l: &LatencySummary) -> Self {
        PathLatency { count: l.count, p50: l.p50_us, p90: l.p90_us, p99: l.p99_us, max: l.max_us }
    }
}

report! {
    /// `reader_stats()["latency_us"]`: per read path.
    pub struct ReadPathLatency {
        pub v1: PathLatency,
        pub legacy: PathLatency,
        pub empty: PathLatency,
    }
}

report! {
    /// `reader_stats()`: reads per schema, the fallback rate, each read path's latency.
    pub struct ReaderStats {
        pub v1: u64,
        pub legacy: u64,
        pub empty: u64,
        pub reads: u64,
        pub fallback_rate: f64,
        pub latency_us: ReadPathLatency,
    }
}

impl From<&ReaderCounts> for ReaderStats {
    fn from(c: &ReaderCounts) -> Self {
        ReaderStats {
            v1: c.v1,
            legacy: c.legacy,
            empty: c.empty,
            reads: c.reads,
            fallback_rate: c.fallback_rate,
            latency_us: ReadPathLatency {
                v1: (&c.latency_v1).into(),
                legacy: (&c.latency_legacy).into(),
                empty: (&c.latency_empty).into(),
            },
        }
    }
}

report! {
    /// `health()` on SQLite: the statistics (`Stats`' fields first), rows per table,
    /// modes, `needs_vacuum`, the path and the dual-schema reader's counters.
    pub struct HealthReport {
        pub page_size: i64,
        pub page_count: i64,
        pub freelist_count: i64,
        pub free_fraction: f64,
        pub file_size: u64,
        pub wal_size: u64,
        pub rows: Vec<(String, i64)>,
        pub rows_estimated: Vec<String>,
        pub journal_mode: String,
        pub auto_vacuum: i64,
        pub schema_version: i64,
        pub shape: String,
        pub needs_vacuum: bool,
        pub vacuum_threshold: f64,
        pub path: Py<PyAny>,
        pub reader: Option<ReaderStats>,
    }
}

impl HealthReport {
    pub fn new(h: crate::sqlite::maintenance::Health, path: Py<PyAny>, reader: &ReaderCounts) -> Self {
        let s = h.stats;
        HealthReport {
            page_size: s.page_size,
            page_count: s.page_count,
            freelist_count: s.freelist_count,
            free_fraction: s.free_fraction,
            file_size: s.file_size,
            wal_size: s.wal_size,
            rows: h.rows,
            rows_estimated: h.estimated,
            journal_mode: h.journal_mode,
            auto_vacuum: h.auto_vacuum,
            schema_version: h.schema_version,
            shape: h.shape,
            needs_vacuum: h.needs_vacuum,
            vacuum_threshold: h.vacuum_threshold,
            path,
            reader: Some(reader.into()),
        }
    }
}

report! {
    /// `health()` on PostgreSQL: rows per table (counted, or the planner's estimate for
    /// the tables in `rows_estimated`), the database's size and server version, and the
    /// SQLite report's keys where they have a meaning (`needs_vacuum` is False:
    /// autovacuum reclaims space; `journal_mode`, `auto_vacuum` and `reader` are None).
    pub struct PostgresHealthReport {
        pub backend: &'static str,
        pub rows: Vec<(String, i64)>,
        pub rows_estimated: Vec<String>,
        pub database_size: i64,
        pub server_version: String,
        pub schema_version: i64,
        pub layout_revision: i64,
        pub shape: &'static str,
        pub needs_vacuum: bool,
        pub vacuum_threshold: f64,
        pub journal_mode: Option<String>,
        pub auto_vacuum: Option<i64>,
        pub path: Py<PyAny>,
        pub reader: Option<ReaderStats>,
    }
}

#[cfg(feature = "postgres")]
impl PostgresHealthReport {
    pub fn new(h: crate::postgres::PgHealth, threshold: f64, path: Py<PyAny>) -> Self {
        PostgresHealthReport {
            backend: "postgresql",
            rows: h.rows,
            rows_estimated: h.estimated,
            database_size: h.database_size,
            server_version: h.server_version,
            schema_version: crate::sqlite::migrations::LATEST_VERSION,
            layout_revision: h.layout,
            shape: "postgresql",
            needs_vacuum: false,
            vacuum_threshold: threshold,
            journal_mode: None,
            auto_vacuum: None,
            path,
            reader: None, // no dual-schema reader: one schema
        }
    }
}

report! {
    /// `wait_for_agents()`: the agents waited for, each list in the set's order, the
    /// quorum the wait needed and whether the timeout came first.
    pub struct WaitResult {
        pub spec_id: String,
        pub stage: String,
        pub run_id: Option<String>,
        pub branch_id: Option<String>,
        pub expected: Vec<String>,
        pub completed: Vec<String>,
        pub failed: Vec<String>,
        pub pending: Vec<String>,
        pub quorum: usize,
        pub timed_out: bool,
    }
}

impl WaitResult {
    pub fn new(c: &WaitFor, o: WaitOutcome) -> Self {
        let (run_id, branch_id) = match &c.set {
            AgentSet::Agents { branch_id, .. } => (None, branch_id.clone()),
            AgentSet::Run { run_id, branch_id } => (Some(run_id.clone()), branch_id.clone()),
        };
        WaitResult {
            spec_id: c.spec_id.clone(),
            stage: c.stage.clone(),
            run_id,
            branch_id,
            expected: o.status.expected,
            completed: o.status.completed,
            failed: o.status.failed,
            pending: o.status.pending,
            quorum: o.quorum,
            timed_out: o.timed_out,
        }
    }
}

report! {
    /// `pool_state()`: connections open and idle, and the pool's maximum size.
    pub struct PoolState {
        pub connections: u32,
        pub idle: u32,
        pub max_size: u32,
    }
}

/// Every report's Python keys, under the name of its `TypedDict` in `results.py`.
pub const REPORTS: &[(&str, &[&str])] = &[
    ("Stats", Stats::FIELDS),
    ("HealthReport", HealthReport::FIELDS),
    ("PostgresHealthReport", PostgresHealthReport::FIELDS),
    ("VacuumReport", VacuumReport::FIELDS),
    ("PostgresVacuumReport", PostgresVacuumReport::FIELDS),
    ("CheckpointReport", CheckpointReport::FIELDS),
    ("PoolState", PoolState::FIELDS),
    ("WaitResult", WaitResult::FIELDS),
    ("OpenReport", OpenReport::FIELDS),
    ("RowsMoved", RowsMoved::FIELDS),
    ("LaneStats", LaneStats::FIELDS),
    ("PathLatency", PathLatency::FIELDS),
    ("ReadPathLatency", ReadPathLatency::FIELDS),
    ("ReaderStats", ReaderStats::FIELDS),
    ("CycleReport", CycleReport::FIELDS),
    ("LegacyRowProblem", Problem::FIELDS),
    ("SchemaReport", SchemaReport::FIELDS),
    ("SchemaGroup", SchemaGroup::FIELDS),
    ("SchemaMismatch", SchemaMismatch::FIELDS),
];

/// `{TypedDict name: [key, ...]}` of every report, in each report's key order (for the
/// test that keeps `results.py` in step with the Rust declarations).
#[pyfunction]
pub fn _report_fields() -> BTreeMap<&'static str, Vec<&'static str>> {
    REPORTS.iter().map(|&(name, fields)| (name, fields.to_vec())).collect()
}

report! {
    /// `_core.DEFAULTS`: every default of `connect()`, `health()` and
    /// `start_maintenance()`, read from the engine's own `Options`/`MaintenanceOptions`
    /// (the one place they are defined; the text signatures and the stubs are checked
    /// against this dict by tests).
    pub struct Defaults {
        pub pool_size: u32,
        pub min_idle: u32,
        pub checkout_timeout: f64,
        pub read_only: bool,
        pub create: bool,
        pub convert_auto_vacuum: bool,
        pub uri: bool,
        pub replicated: bool,
        pub idempotency_days: i64,
        pub vacuum_threshold: f64,
        pub maintenance_interval_s: f64,
        pub retention_days: Option<i64>,
        pub vacuum_pages: Option<u32>,
        pub checkpoint: bool,
    }
}

impl Default for Defaults {
    fn default() -> Self {
        let o = crate::Options::default();
        let m = crate::sqlite::maintenance::MaintenanceOptions::default();
        Defaults {
            pool_size: o.pool_size,
            min_idle: o.min_idle,
            checkout_timeout: o.checkout_timeout.as_secs_f64(),
            read_only: o.read_only,
            create: o.create,
            convert_auto_vacuum: o.convert_auto_vacuum,
            uri: o.uri,
            replicated: o.replicated,
            idempotency_days: o.idempotency_days,
            vacuum_threshold: crate::sqlite::maintenance::DEFAULT_VACUUM_THRESHOLD,
            maintenance_interval_s: m.interval.as_secs_f64(),
            retention_days: m.retention_days,
            vacuum_pages: m.vacuum_pages,
            checkpoint: m.checkpoint,
        }
    }
}
