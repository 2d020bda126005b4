//! Inputs are validated before anything is written: ids, JSON, phase types, artifacts.

use crate::error::{Error, Result};
use crate::model::NewArtifact;

pub const PHASE_TYPES: [&str; 2] = ["quality_gate", "regular_stage"];

pub fn check_id(name: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(name, format!("must be a non-empty string, got {value:?}")));
    }
    Ok(())
}

pub fn check_json(name: &str, value: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(value).map(|_| ()).map_err(|e| {
        let shown: String = value.chars().take(80).collect();
        let more = if value.chars().count() > 80 { "…" } else { "" };
        Error::invalid(name, format!("is not valid JSON ({e}): {shown:?}{more}"))
    })
}

pub(crate) fn check_phase_type(value: &str) -> Result<()> {
    if PHASE_TYPES.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid("phase_type", format!("{value:?} is not one of {}", PHASE_TYPES.join(", "))))
    }
}

pub(crate) fn check_artifact(a: &NewArtifact) -> Result<()> {
    check_id("spec_id", &a.spec_id)?;
    check_id("stage", &a.stage)?;
    check_id("agent_name", &a.agent_name)?;
    check_json("content_json", &a.content_json)
}
