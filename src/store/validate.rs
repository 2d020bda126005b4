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
    serde_json::from_str::<serde::de::IgnoredAny>(value).map_err(|e| {
        let shown: String = value.chars().take(80).collect();
        let more = if value.chars().count() > 80 { "…" } else { "" };
        Error::invalid(name, format!("is not valid JSON ({e}): {shown:?}{more}"))
    })?;
    match lone_surrogate_escape(value) {
        Some(escape) => Err(Error::invalid(
            name,
            format!(
                "holds the escape {escape}, half of a UTF-16 surrogate pair without its other half: it names no \
                 character (a lone surrogate has no UTF-8 form), and PostgreSQL cannot store it"
            ),
        )),
        None => Ok(()),
    }
}

/// The first `\uXXXX` escape of valid JSON text that is a surrogate outside a
/// high-low pair. Backslashes occur only inside strings, so no string state is needed.
fn lone_surrogate_escape(json: &str) -> Option<&str> {
    let b = json.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        if b.get(at + 1) != Some(&b'u') {
            return None;
        }
        u16::from_str_radix(json.get(at + 2..at + 6)?, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = json.get(i..).and_then(|rest| rest.find('\\')) {
        let at = i + off;
        match unit(at) {
            Some(0xD800..=0xDBFF) if b.get(at + 6) == Some(&b'\\') && matches!(unit(at + 6), Some(0xDC00..=0xDFFF)) => {
                i = at + 12;
            }
            Some(0xD800..=0xDFFF) => return json.get(at..at + 6),
            Some(_) => i = at + 6,
            // Any other escape is two characters (`\\`, `\"`, `\n`, ...).
            None => i = at + 2,
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::check_json;

    #[test]
    fn json_naming_a_lone_surrogate_is_refused() {
        for ok in
            [r#"{"a": "\ud83d\ude00"}"#, r#""\\ud800""#, r#"["\u00e9", "\\\ud83d\ude00"]"#, r#"{"\uD83D\uDE00": 1}"#]
        {
            assert!(check_json("c", ok).is_ok(), "{ok}");
        }
        for bad in [r#"{"a": "\ud800"}"#, r#""\udc00""#, r#""\ud800\u0041""#, r#""x\uDBFF""#, r#""\\\ud800""#] {
            let e = check_json("content_json", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid content_json: holds the escape \\u"), "{bad}: {e}");
        }
    }
}
