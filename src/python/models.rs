//! Python methods of the result types: a readable repr and `to_dict()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::model::{Artifact, ExtractionFailure, Synthesis};

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
    if b { "True" } else { "False" }
}

#[pymethods]
impl Artifact {
    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    #[getter(created_at)]
    fn py_created_at(&self) -> String {
        self.created_at()
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
    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    #[getter(created_at)]
    fn py_created_at(&self) -> String {
        self.created_at()
    }

    fn __repr__(&self) -> String {
        format!(
            "Synthesis(id={}, spec_id={}, stage={}, status={}, degraded={}, run_id={}, created_at={}, source={}, output_markdown={})",
            self.id, short(&self.spec_id), short(&self.stage), short(&self.status), flag(self.degraded),
            opt(&self.run_id), short(&self.created_at()), short(self.source), short(&self.output_markdown)
        )
    }

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
    fn __repr__(&self) -> String {
        format!(
            "ExtractionFailure(agent_id={}, spec_id={}, stage={}, agent_name={}, spawned_at={}, extraction_error={})",
            short(&self.agent_id), short(&self.spec_id), short(&self.stage), short(&self.agent_name),
            short(&self.spawned_at), short(&self.extraction_error)
        )
    }

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
