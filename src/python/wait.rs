//! Waiting for agents from Python: the arguments of `expect_agents` and
//! `wait_for_agents` (each refused by name), the `WaitResult` dict, and
//! `_core.AgentsWaiter`, the handle the async twin waits through without a thread
//! (`consensus_db.aio`: a check on the executor, then a callback from the thread that
//! moves the store's change generation).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::convert::{opt_int_in, opt_text, real, text, type_name};
use super::database::PyDatabase;
use super::reports::{ToPy, WaitResult};
use super::run;
use crate::backend::Backend;
use crate::error::Error;
use crate::wait::{AgentSet, Subscription, WaitFor, WaitOutcome};

/// The longest timeout taken (about 31 years): longer is no limit in practice.
const MAX_TIMEOUT_S: f64 = 1e9;

/// A list of agent ids: a list or tuple of str (a str alone is refused, not iterated).
pub(crate) fn agent_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if obj.is_instance_of::<PyString>()
        || !(obj.is_instance_of::<pyo3::types::PyList>() || obj.is_instance_of::<pyo3::types::PyTuple>())
    {
        return Err(Error::invalid("agent_ids", format!("must be a list of str, got {}", type_name(obj))).into());
    }
    obj.try_iter()?.map(|item| Ok(text(&item?, "agent_ids")?.to_string())).collect()
}

/// The wait's condition from its keyword arguments: exactly one of `agent_ids` and
/// `run_id`; `branch_id` scopes either and is refused alone.
pub(crate) fn condition(
    spec_id: &Bound<'_, PyAny>,
    stage: &Bound<'_, PyAny>,
    agents: Option<&Bound<'_, PyAny>>,
    run_id: Option<&Bound<'_, PyAny>>,
    branch_id: Option<&Bound<'_, PyAny>>,
    quorum: Option<&Bound<'_, PyAny>>,
) -> PyResult<WaitFor> {
    let spec_id = text(spec_id, "spec_id")?.to_string();
    let stage = text(stage, "stage")?.to_string();
    let agents = agents.filter(|o| !o.is_none());
    let run_id = opt_text(run_id, "run_id")?.map(|s| s.to_string());
    let branch_id = opt_text(branch_id, "branch_id")?.map(|s| s.to_string());
    let set = match (agents, run_id) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid("agent_ids", "give agent_ids or run_id, not both").into());
        }
        (Some(list), None) => AgentSet::agents(agent_ids(list)?, branch_id)?,
        (None, Some(run)) => AgentSet::run(run, branch_id)?,
        (None, None) if branch_id.is_some() => {
            return Err(Error::invalid(
                "branch_id",
                "scopes agent_ids or run_id and says nothing alone: give one of them too",
            )
            .into());
        }
        (None, None) => {
            return Err(Error::invalid(
                "agent_ids",
                "name the agents to wait for: agent_ids=[...] or run_id= (the set expect_agents declared)",
            )
            .into());
        }
    };
    let quorum = opt_int_in::<usize>(quorum, "quorum", 1, i64::MAX)?;
    Ok(WaitFor::new(spec_id, stage, set, quorum)?)
}

/// A timeout in seconds: None for no limit, else a number from 0 (check once).
pub(crate) fn timeout(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let s = real(obj, "timeout")?;
    if !(0.0..=MAX_TIMEOUT_S).contains(&s) {
        return Err(Error::invalid(
            "timeout",
            format!("must be None (no limit) or a number of seconds from 0 to {MAX_TIMEOUT_S:e}, got {s}"),
        )
        .into());
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

/// The `WaitResult` dict (`consensus_db.results.WaitResult`).
pub(crate) fn outcome_dict<'py>(py: Python<'py>, c: &WaitFor, o: WaitOutcome) -> PyResult<Bound<'py, PyAny>> {
    WaitResult::new(c, o).to_py(py)
}

/// Runs a blocking wait with the GIL released, looking at Python's signals (Ctrl-C)
/// every 100 ms between wake-ups.
pub(crate) fn wait_blocking(
    py: Python<'_>,
    db: &PyDatabase,
    c: &WaitFor,
    t: Option<Duration>,
) -> PyResult<WaitOutcome> {
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let db = db.any();
    let result = run(py, || {
        crate::wait::wait(
            db.changes(),
            c,
            t,
            Duration::from_millis(100),
            &mut || db.agents_status(&c.spec_id, &c.stage, &c.set),
            &mut || {
                Python::attach(|py| py.check_signals()).map_err(|e| {
                    *raised.lock() = Some(e);
                    Error::Internal("interrupted by a signal".into())
                })
            },
        )
    });
    match raised.into_inner() {
        Some(e) => Err(e),
        None => result,
    }
}

/// A wait in steps, for the async twin: `start()` (subscribes: the watcher is up),
/// then `check(timed_out)` — a `WaitResult` when the wait is over, else None —
/// and `on_change(callback)` between checks, until `close()`.
#[pyclass(frozen, module = "consensus_db", name = "AgentsWaiter")]
pub struct PyAgentsWaiter {
    db: Py<PyDatabase>,
    condition: WaitFor,
    /// The generation the last check read.
    seen: Mutex<u64>,
    subscription: Mutex<Option<Subscription>>,
}

impl PyAgentsWaiter {
    pub(crate) fn new(db: Py<PyDatabase>, condition: WaitFor) -> Self {
        PyAgentsWaiter { db, condition, seen: Mutex::new(0), subscription: Mutex::new(None) }
    }
}

#[pymethods]
impl PyAgentsWaiter {
    /// Subscribes to the store's changes (starting its watcher if none runs); blocks
    /// until the watcher has its baseline.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let changes = self.db.get().any().changes().clone();
        let subscription = run(py, || changes.subscribe())?;
        *self.subscription.lock() = Some(subscription);
        Ok(())
    }

    /// One check (one query): the `WaitResult` if the wait is over — satisfied, or
    /// `timed_out` — else None.
    fn check<'py>(&self, py: Python<'py>, timed_out: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let db = self.db.get().any();
        let c = &self.condition;
        let outcome = run(py, || {
            *self.seen.lock() = db.changes().generation()?;
            c.judge(db.agents_status(&c.spec_id, &c.stage, &c.set)?, timed_out)
        })?;
        outcome.map(|o| outcome_dict(py, c, o)).transpose()
    }

    /// Calls `callback(None)` once the store changed after the last check, or
    /// `callback(ClosedError(...))` when it closes — on the thread that saw it (at once,
    /// here, if that already happened). The callback must not block.
    fn on_change(&self, callback: Py<PyAny>) {
        let seen = *self.seen.lock();
        let changes: &Arc<crate::wait::Changes> = self.db.get().any().changes();
        changes.on_change(
            seen,
            Box::new(move |result| {
                Python::attach(|py| {
                    let arg = match result {
                        Ok(()) => py.None(),
                        Err(e) => PyErr::from(e).into_value(py).into_any(),
                    };
                    if let Err(e) = callback.call1(py, (arg,)) {
                        e.write_unraisable(py, Some(callback.bind(py)));
                    }
                })
            }),
        );
    }

    /// Ends the subscription (the watcher stops with the last one). Idempotent.
    fn close(&self) {
        drop(self.subscription.lock().take());
    }
}
