//! Python methods of the result types: a readable repr and `to_dict()`.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::convert::{json_items, utc_from_ms, utc_from_text};
use crate::cursor;
use crate::error::Error;
use crate::model::{AgentExecution, Artifact, Claim, ExtractionFailure, Synthesis, SOURCE_LEGACY, SOURCE_V1};

/// `"v1"` or `"legacy"`, the only sources a row can have.
fn source(value: &str) -> PyResult<&'static str> {
    match value {
        "v1" => Ok(SOURCE_V1),
        "legacy" => Ok(SOURCE_LEGACY),
        other => Err(Error::invalid("source", format!("must be 'v1' or 'legacy', got {other:?}")).into()),
    }
}

/// A Python-looking repr of a string, cut at 40 characters.
fn short(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars().take(40) {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    if s.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "None".to_string(), short)
}

fn flag(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

#[pymethods]
impl Artifact {
    /// Builds an artifact as the store returns it (for tests, fakes and unpickling).
    #[new]
    #[pyo3(signature = (id, spec_id, stage, agent_name, content_json, response_text=None, run_id=None,
                        created_at_ms=0, model_version=None, source="v1"))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        id: i64,
        spec_id: String,
        stage: String,
        agent_name: String,
        content_json: String,
        response_text: Option<String>,
        run_id: Option<String>,
        created_at_ms: i64,
        model_version: Option<String>,
        source: &str,
    ) -> PyResult<Self> {
        let source = self::source(source)?;
        Ok(Artifact {
            id,
            spec_id,
            stage,
            agent_name,
            content_json,
            response_text,
            run_id,
            created_at_ms,
            model_version,
            source,
        })
    }

    /// Pickling: the constructor and every field, in its order.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let a = slf.get();
        let args = (
            a.id,
            &a.spec_id,
            &a.stage,
            &a.agent_name,
            &a.content_json,
            &a.response_text,
            &a.run_id,
            a.created_at_ms,
            &a.model_version,
            a.source,
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args))
    }

    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    #[getter(created_at)]
    fn py_created_at(&self) -> String {
        self.created_at()
    }

    /// This row's position in `query_artifacts`' order: pass it as `after=` (or
    /// `before=`) for the page that follows (or precedes) it. Opaque.
    #[getter]
    fn cursor(&self) -> String {
        cursor::artifact_cursor(self)
    }

    /// `created_at_ms` as an aware `datetime` in UTC.
    #[getter]
    fn created_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_ms(py, self.created_at_ms)
    }

    fn __repr__(&self) -> String {
        format!(
            "Artifact(id={}, spec_id={}, stage={}, agent_name={}, run_id={}, created_at={}, source={}, content_json={})",
            self.id, short(&self.spec_id), short(&self.stage), short(&self.agent_name), opt(&self.run_id),
            short(&self.created_at()), short(self.source), short(&self.content_json)
        )
    }

    /// The fields as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", self.id)?;
        d.set_item("spec_id", &self.spec_id)?;
        d.set_item("stage", &self.stage)?;
        d.set_item("agent_name", &self.agent_name)?;
        d.set_item("content_json", &self.content_json)?;
        d.set_item("response_text", &self.response_text)?;
        d.set_item("run_id", &self.run_id)?;
        d.set_item("created_at", self.created_at())?;
        d.set_item("created_at_ms", self.created_at_ms)?;
        d.set_item("model_version", &self.model_version)?;
        d.set_item("source", self.source)?;
        Ok(d)
    }

    /// `content_json` parsed.
    fn content<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (&self.content_json,))
    }
}

#[pymethods]
impl Synthesis {
    /// Builds a synthesis as the store returns it (for tests, fakes and unpickling).
    #[new]
    #[pyo3(signature = (id, spec_id, stage, output_markdown, output_path=None, status="success".to_owned(),
                        artifacts_count=None, agreements=None, conflicts=None, degraded=false, run_id=None,
                        created_at_ms=0, source="v1"),
           text_signature = "(id, spec_id, stage, output_markdown, output_path=None, status='success', artifacts_count=None, agreements=None, conflicts=None, degraded=False, run_id=None, created_at_ms=0, source='v1')")]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        id: i64,
        spec_id: String,
        stage: String,
        output_markdown: String,
        output_path: Option<String>,
        status: String,
        artifacts_count: Option<i64>,
        agreements: Option<String>,
        conflicts: Option<String>,
        degraded: bool,
        run_id: Option<String>,
        created_at_ms: i64,
        source: &str,
    ) -> PyResult<Self> {
        let source = self::source(source)?;
        Ok(Synthesis {
            id,
            spec_id,
            stage,
            output_markdown,
            output_path,
            status,
            artifacts_count,
            agreements,
            conflicts,
            degraded,
            run_id,
            created_at_ms,
            source,
        })
    }

    /// Pickling: the constructor and every field, in its order.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let s = slf.get();
        let args = (
            s.id,
            &s.spec_id,
            &s.stage,
            &s.output_markdown,
            &s.output_path,
            &s.status,
            s.artifacts_count,
            &s.agreements,
            &s.conflicts,
            s.degraded,
            &s.run_id,
            s.created_at_ms,
        )
            .into_pyobject(py)?;
        let mut items: Vec<Bound<'py, PyAny>> = args.iter().collect();
        items.push(s.source.into_pyobject(py)?.into_any());
        let args = PyTuple::new(py, items)?;
        Ok((slf.get_type().into_any(), args))
    }

    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    #[getter(created_at)]
    fn py_created_at(&self) -> String {
        self.created_at()
    }

    /// `created_at_ms` as an aware `datetime` in UTC.
    #[getter]
    fn created_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_ms(py, self.created_at_ms)
    }

    /// `agreements` parsed: a list (`[]` when there are none; legacy free text that is
    /// not JSON comes back as a one-item list).
    fn agreement_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_items(py, self.agreements.as_deref())
    }

    /// `conflicts` parsed, as `agreement_list` parses `agreements`.
    fn conflict_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_items(py, self.conflicts.as_deref())
    }

    fn __repr__(&self) -> String {
        format!(
            "Synthesis(id={}, spec_id={}, stage={}, status={}, degraded={}, run_id={}, created_at={}, source={}, output_markdown={})",
            self.id, short(&self.spec_id), short(&self.stage), short(&self.status), flag(self.degraded),
            opt(&self.run_id), short(&self.created_at()), short(self.source), short(&self.output_markdown)
        )
    }

    /// The fields as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", self.id)?;
        d.set_item("spec_id", &self.spec_id)?;
        d.set_item("stage", &self.stage)?;
        d.set_item("output_markdown", &self.output_markdown)?;
        d.set_item("output_path", &self.output_path)?;
        d.set_item("status", &self.status)?;
        d.set_item("artifacts_count", self.artifacts_count)?;
        d.set_item("agreements", &self.agreements)?;
        d.set_item("conflicts", &self.conflicts)?;
        d.set_item("degraded", self.degraded)?;
        d.set_item("run_id", &self.run_id)?;
        d.set_item("created_at", self.created_at())?;
        d.set_item("created_at_ms", self.created_at_ms)?;
        d.set_item("source", self.source)?;
        Ok(d)
    }
}

#[pymethods]
impl ExtractionFailure {
    /// Builds an extraction failure as the store returns it (for tests and unpickling).
    #[new]
    #[pyo3(signature = (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at, completed_at,
                        response_text, extraction_error))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        agent_id: String,
        spec_id: String,
        stage: String,
        phase_type: String,
        agent_name: String,
        run_id: Option<String>,
        spawned_at: String,
        completed_at: Option<String>,
        response_text: Option<String>,
        extraction_error: String,
    ) -> Self {
        ExtractionFailure {
            agent_id,
            spec_id,
            stage,
            phase_type,
            agent_name,
            run_id,
            spawned_at,
            completed_at,
            response_text,
            extraction_error,
        }
    }

    /// Pickling: the constructor and every field, in its order.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let f = slf.get();
        let args = (
            &f.agent_id,
            &f.spec_id,
            &f.stage,
            &f.phase_type,
            &f.agent_name,
            &f.run_id,
            &f.spawned_at,
            &f.completed_at,
            &f.response_text,
            &f.extraction_error,
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args))
    }

    /// `spawned_at` (UTC text) as an aware `datetime` in UTC.
    #[getter]
    fn spawned_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_text(py, Some(&self.spawned_at))
    }

    /// `completed_at` as an aware `datetime` in UTC, or None.
    #[getter]
    fn completed_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_text(py, self.completed_at.as_deref())
    }

    /// This row's position in `query_extraction_failures`' order (`after=`/`before=`). Opaque.
    #[getter]
    fn cursor(&self) -> String {
        cursor::failure_cursor(self)
    }

    fn __repr__(&self) -> String {
        format!(
            "ExtractionFailure(agent_id={}, spec_id={}, stage={}, agent_name={}, spawned_at={}, extraction_error={})",
            short(&self.agent_id),
            short(&self.spec_id),
            short(&self.stage),
            short(&self.agent_name),
            short(&self.spawned_at),
            short(&self.extraction_error)
        )
    }

    /// The fields as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("agent_id", &self.agent_id)?;
        d.set_item("spec_id", &self.spec_id)?;
        d.set_item("stage", &self.stage)?;
        d.set_item("phase_type", &self.phase_type)?;
        d.set_item("agent_name", &self.agent_name)?;
        d.set_item("run_id", &self.run_id)?;
        d.set_item("spawned_at", &self.spawned_at)?;
        d.set_item("completed_at", &self.completed_at)?;
        d.set_item("response_text", &self.response_text)?;
        d.set_item("extraction_error", &self.extraction_error)?;
        Ok(d)
    }
}

#[pymethods]
impl AgentExecution {
    /// Builds an execution as the store returns it (for tests and unpickling).
    #[new]
    #[pyo3(signature = (agent_id, spec_id, stage, phase_type, agent_name, run_id, branch_id, spawned_at,
                        completed_at, response_text))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        agent_id: String,
        spec_id: String,
        stage: String,
        phase_type: String,
        agent_name: String,
        run_id: Option<String>,
        branch_id: Option<String>,
        spawned_at: String,
        completed_at: Option<String>,
        response_text: Option<String>,
    ) -> Self {
        AgentExecution {
            agent_id,
            spec_id,
            stage,
            phase_type,
            agent_name,
            run_id,
            branch_id,
            spawned_at,
            completed_at,
            response_text,
        }
    }

    /// Pickling: the constructor and every field, in its order.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let e = slf.get();
        let args = (
            &e.agent_id,
            &e.spec_id,
            &e.stage,
            &e.phase_type,
            &e.agent_name,
            &e.run_id,
            &e.branch_id,
            &e.spawned_at,
            &e.completed_at,
            &e.response_text,
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args))
    }

    /// `spawned_at` (UTC text) as an aware `datetime` in UTC.
    #[getter]
    fn spawned_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_text(py, Some(&self.spawned_at))
    }

    /// `completed_at` as an aware `datetime` in UTC, or None.
    #[getter]
    fn completed_at_datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_from_text(py, self.completed_at.as_deref())
    }

    /// This row's position in `query_agent_executions`' order (`after=`/`before=`): one
    /// position among the stage's executions, with or without a `branch_id`. Opaque.
    #[getter]
    fn cursor(&self) -> String {
        cursor::execution_cursor(self)
    }

    fn __repr__(&self) -> String {
        format!(
            "AgentExecution(agent_id={}, spec_id={}, stage={}, agent_name={}, run_id={}, branch_id={}, spawned_at={}, \
             completed_at={})",
            short(&self.agent_id),
            short(&self.spec_id),
            short(&self.stage),
            short(&self.agent_name),
            opt(&self.run_id),
            opt(&self.branch_id),
            short(&self.spawned_at),
            opt(&self.completed_at)
        )
    }

    /// The fields as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("agent_id", &self.agent_id)?;
        d.set_item("spec_id", &self.spec_id)?;
        d.set_item("stage", &self.stage)?;
        d.set_item("phase_type", &self.phase_type)?;
        d.set_item("agent_name", &self.agent_name)?;
        d.set_item("run_id", &self.run_id)?;
        d.set_item("branch_id", &self.branch_id)?;
        d.set_item("spawned_at", &self.spawned_at)?;
        d.set_item("completed_at", &self.completed_at)?;
        d.set_item("response_text", &self.response_text)?;
        Ok(d)
    }
}

#[pymethods]
impl Claim {
    /// Builds a claim as `claim_stage` returns it (a claim handed to another process,
    /// unpickling, tests). A hand-made claim grants nothing: every write under it is
    /// checked against the stage's newest live claim in the database.
    #[new]
    #[pyo3(signature = (spec_id, stage, owner, token, *, branch_id=None, run_id=None, lease_ms=0, claimed_at_ms=0,
                        expires_at_ms=0, took_over_from=None))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        spec_id: String,
        stage: String,
        owner: String,
        token: i64,
        branch_id: Option<String>,
        run_id: Option<String>,
        lease_ms: i64,
        claimed_at_ms: i64,
        expires_at_ms: i64,
        took_over_from: Option<String>,
    ) -> Self {
        Claim {
            spec_id,
            stage,
            branch_id,
            run_id,
            owner,
            token,
            lease_ms,
            claimed_at_ms,
            expires_at_ms,
            took_over_from,
        }
    }

    /// Pickling: the constructor and every field.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let c = slf.get();
        let build = py.import("functools")?.getattr("partial")?.call(
            (slf.get_type(),),
            Some(&{
                let kw = PyDict::new(py);
                kw.set_item("branch_id", &c.branch_id)?;
                kw.set_item("run_id", &c.run_id)?;
                kw.set_item("lease_ms", c.lease_ms)?;
                kw.set_item("claimed_at_ms", c.claimed_at_ms)?;
                kw.set_item("expires_at_ms", c.expires_at_ms)?;
                kw.set_item("took_over_from", &c.took_over_from)?;
                kw
            }),
        )?;
        let args = (&c.spec_id, &c.stage, &c.owner, c.token).into_pyobject(py)?;
        Ok((build, args))
    }

    /// The lease's length in seconds.
    #[getter]
    fn lease_s(&self) -> f64 {
        self.lease_ms as f64 / 1000.0
    }

    fn __repr__(&self) -> String {
        format!(
            "Claim(spec_id={}, stage={}, branch_id={}, owner={}, token={}, expires_at_ms={})",
            short(&self.spec_id),
            short(&self.stage),
            opt(&self.branch_id),
            short(&self.owner),
            self.token,
            self.expires_at_ms
        )
    }

    /// The fields as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("spec_id", &self.spec_id)?;
        d.set_item("stage", &self.stage)?;
        d.set_item("branch_id", &self.branch_id)?;
        d.set_item("run_id", &self.run_id)?;
        d.set_item("owner", &self.owner)?;
        d.set_item("token", self.token)?;
        d.set_item("lease_ms", self.lease_ms)?;
        d.set_item("claimed_at_ms", self.claimed_at_ms)?;
        d.set_item("expires_at_ms", self.expires_at_ms)?;
        d.set_item("took_over_from", &self.took_over_from)?;
        Ok(d)
    }
}
