//! The records the store takes and returns. With the `python` feature the result
//! types are also Python classes (frozen, with attribute getters); their Python
//! methods live in `python::models`.

#[cfg(feature = "python")]
use pyo3::pyclass;

/// Where a returned row was read from.
pub const SOURCE_V1: &str = "v1";
pub const SOURCE_LEGACY: &str = "legacy";

/// One agent's extracted JSON output for a spec/stage.
#[cfg_attr(feature = "python", pyclass(frozen, eq, get_all, module = "consensus_db"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Row id (of `agent_outputs`, or of the legacy table for legacy rows).
    pub id: i64,
    /// The spec the output is for.
    pub spec_id: String,
    /// The stage (plan, tasks, implement, validate, audit, ...).
    pub stage: String,
    /// The agent that produced it (gemini, claude, code, gpt_pro, ...).
    pub agent_name: String,
    /// The extracted JSON, as text (valid JSON).
    pub content_json: String,
    /// The agent's raw response, if stored.
    pub response_text: Option<String>,
    /// The consensus run it belongs to, if any.
    pub run_id: Option<String>,
    /// When the row was written, Unix milliseconds (UTC); see [`Artifact::created_at`].
    pub created_at_ms: i64,
    /// The model version that answered, if recorded.
    pub model_version: Option<String>,
    /// [`SOURCE_V1`] or [`SOURCE_LEGACY`].
    pub source: &'static str,
}

impl Artifact {
    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    pub fn created_at(&self) -> String {
        format_utc_ms(self.created_at_ms)
    }
}

/// The merged result of a consensus run.
#[cfg_attr(feature = "python", pyclass(frozen, eq, get_all, module = "consensus_db"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synthesis {
    /// Row id (of `consensus_runs`, or of the legacy table for legacy rows).
    pub id: i64,
    /// The spec the run is for.
    pub spec_id: String,
    /// The stage of the run.
    pub stage: String,
    /// The merged result, as markdown.
    pub output_markdown: String,
    /// Where the markdown was written, if anywhere.
    pub output_path: Option<String>,
    /// The run's status ("success" unless told otherwise).
    pub status: String,
    /// How many artifacts were merged, if recorded.
    pub artifacts_count: Option<i64>,
    /// What the agents agreed on, as stored (JSON text; see `agreement_list()`).
    pub agreements: Option<String>,
    /// Where the agents disagreed, as stored (JSON text; see `conflict_list()`).
    pub conflicts: Option<String>,
    /// Whether the run merged fewer outputs than it wanted.
    pub degraded: bool,
    /// The consensus run id, if any.
    pub run_id: Option<String>,
    /// When the synthesis was written, Unix milliseconds (UTC); see [`Synthesis::created_at`].
    pub created_at_ms: i64,
    /// [`SOURCE_V1`] or [`SOURCE_LEGACY`].
    pub source: &'static str,
}

impl Synthesis {
    /// UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from.
    pub fn created_at(&self) -> String {
        format_utc_ms(self.created_at_ms)
    }
}

/// An agent execution whose output could not be parsed as JSON.
#[cfg_attr(feature = "python", pyclass(frozen, eq, get_all, module = "consensus_db"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractionFailure {
    /// The agent execution.
    pub agent_id: String,
    /// The spec it served.
    pub spec_id: String,
    /// The stage it served.
    pub stage: String,
    /// quality_gate or regular_stage.
    pub phase_type: String,
    /// The agent.
    pub agent_name: String,
    /// The consensus run, if any.
    pub run_id: Option<String>,
    /// When it was spawned, UTC `YYYY-MM-DD HH:MM:SS`.
    pub spawned_at: String,
    /// When it completed, UTC `YYYY-MM-DD HH:MM:SS`, or None.
    pub completed_at: Option<String>,
    /// The raw response that could not be parsed.
    pub response_text: Option<String>,
    /// Why the JSON could not be extracted.
    pub extraction_error: String,
}

/// An agent execution as the routing table holds it: the executions of a stage
/// (`query_agent_executions`), one branch's or all of them.
#[cfg_attr(feature = "python", pyclass(frozen, eq, get_all, module = "consensus_db"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentExecution {
    /// The agent execution.
    pub agent_id: String,
    /// The spec it served.
    pub spec_id: String,
    /// The stage it served.
    pub stage: String,
    /// quality_gate or regular_stage.
    pub phase_type: String,
    /// The agent.
    pub agent_name: String,
    /// The consensus run, if any.
    pub run_id: Option<String>,
    /// The pipeline branch it was spawned on, if any.
    pub branch_id: Option<String>,
    /// When it was spawned, UTC `YYYY-MM-DD HH:MM:SS`.
    pub spawned_at: String,
    /// When it completed, UTC `YYYY-MM-DD HH:MM:SS`, or None.
    pub completed_at: Option<String>,
    /// The agent's response, once completed.
    pub response_text: Option<String>,
}

/// Where a completion goes (the predecessor's routing read): the spawn's phase type,
/// stage and branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRoute {
    pub phase_type: String,
    pub stage: String,
    /// None: spawned without a branch (or the file has no branch column).
    pub branch_id: Option<String>,
}

/// An artifact to store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewArtifact {
    pub spec_id: String,
    pub stage: String,
    pub agent_name: String,
    /// Must be valid JSON (checked before anything is written).
    pub content_json: String,
    pub response_text: Option<String>,
    pub run_id: Option<String>,
    pub model_version: Option<String>,
    /// A repeat with the same key returns the first write's id and writes nothing
    /// (`docs/claims.md`).
    pub idempotency_key: Option<String>,
}

/// A synthesis to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSynthesis {
    pub spec_id: String,
    pub stage: String,
    pub output_markdown: String,
    pub output_path: Option<String>,
    pub status: String,
    pub artifacts_count: Option<i64>,
    pub agreements: Option<String>,
    pub conflicts: Option<String>,
    pub degraded: bool,
    pub run_id: Option<String>,
    /// As [`NewArtifact::idempotency_key`].
    pub idempotency_key: Option<String>,
    /// The stage's claim this synthesis is written under: refused unless it is the
    /// newest live claim of the stage (`docs/claims.md`).
    pub claim: Option<Claim>,
}

impl Default for NewSynthesis {
    fn default() -> Self {
        NewSynthesis {
            spec_id: String::new(),
            stage: String::new(),
            output_markdown: String::new(),
            output_path: None,
            status: "success".into(),
            artifacts_count: None,
            agreements: None,
            conflicts: None,
            degraded: false,
            run_id: None,
            idempotency_key: None,
            claim: None,
        }
    }
}

/// A claim on a stage (`claim_stage`): its owner alone may advance the stage while the
/// lease is live. `token` fences it: strictly increasing per (spec_id, stage,
/// branch_id), never reused, so a write under an older token is refused.
#[cfg_attr(feature = "python", pyclass(frozen, eq, get_all, module = "consensus_db"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The spec whose stage is claimed.
    pub spec_id: String,
    /// The stage claimed.
    pub stage: String,
    /// The pipeline branch the claim is for (None: none); claims fence per branch.
    pub branch_id: Option<String>,
    /// The consensus run the owner is synthesizing, if given.
    pub run_id: Option<String>,
    /// Who holds it (a name unique per orchestrator process).
    pub owner: String,
    /// The fencing token: strictly increasing per (spec_id, stage, branch_id).
    pub token: i64,
    /// The lease's length, milliseconds (what a renewal without `lease_s` grants).
    pub lease_ms: i64,
    /// When it was taken, Unix milliseconds on the database's clock.
    pub claimed_at_ms: i64,
    /// When the lease ends unless renewed, Unix milliseconds on the database's clock.
    pub expires_at_ms: i64,
    /// The owner whose claim this one replaced without a release (its lease had
    /// expired, or the same owner claimed again), or None.
    pub took_over_from: Option<String>,
}

/// A claim to take (`claim_stage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewClaim {
    pub spec_id: String,
    pub stage: String,
    pub branch_id: Option<String>,
    pub run_id: Option<String>,
    pub owner: String,
    /// The lease's length, milliseconds (1 or more).
    pub lease_ms: i64,
}

/// Which schema served the dual-schema reader's queries, counted per query, and how
/// long each read path took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReaderCounts {
    /// Queries that returned rows from the new schema.
    pub v1: u64,
    /// Queries that returned rows only an old binary wrote (legacy tables).
    pub legacy: u64,
    /// Queries that found nothing in either.
    pub empty: u64,
    /// Every query counted once (a query with rows from both schemas counts in `v1` and
    /// `legacy` above, and once here).
    pub reads: u64,
    /// The share of reads that returned legacy rows (0 without reads).
    pub fallback_rate: f64,
    /// Latency of the reads served by the new tables alone.
    pub latency_v1: LatencySummary,
    /// ... of the reads that returned legacy rows (the fallback).
    pub latency_legacy: LatencySummary,
    /// ... of the reads that found nothing.
    pub latency_empty: LatencySummary,
}

/// Percentiles of one read path, in microseconds: bucket estimates within 12.5%; `max_us` exact.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS` (on the query hot path: no `format!`).
pub fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    }
    let mut out = *b"0000-00-00 00:00:00";
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, rem / 3600, 2);
    put(14, rem % 3600 / 60, 2);
    put(17, rem % 60, 2);
    String::from_utf8_lossy(&out).into_owned()
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc_ms(1_735_787_045_999), "2025-01-02 03:04:05");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc_ms(-1000), "1969-12-31 23:59:59");
        assert_eq!(format_utc_ms(253_402_300_799_000), "9999-12-31 23:59:59");
        assert_eq!(format_utc_ms(253_402_300_800_000), "10000-01-01 00:00:00");
    }
}

report! {
    /// What `verify_schemas` found: the legacy tables against the new ones, per spec/stage.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct SchemaReport {
        /// Whether the file has both schemas to compare (legacy tables and the new ones).
        pub comparable: bool,
        /// Why not, when it has only one.
        pub reason: Option<String>,
        /// Every group's counts and hashes agree and no row is listed below.
        pub consistent: bool,
        pub groups: Vec<SchemaGroup>,
        pub mismatches: Vec<SchemaMismatch>,
    }
}

report! {
    /// One spec/stage's rows of one kind ("artifacts" or "syntheses") on each side.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SchemaGroup {
        pub kind: &'static str,
        pub spec_id: String,
        pub stage: String,
        pub legacy_count: usize,
        pub v1_count: usize,
        /// SHA-256 (hex) of the side's rows as the API returns them, sorted.
        pub legacy_hash: String,
        pub v1_hash: String,
        pub matches: bool,
    }
}

report! {
    /// A row on one side without its copy on the other ("legacy_only", "v1_only"), or a
    /// pair whose fields differ ("differs", naming them).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SchemaMismatch {
        pub kind: &'static str,
        pub spec_id: String,
        pub stage: String,
        pub problem: &'static str,
        pub legacy_id: Option<i64>,
        pub v1_id: Option<i64>,
        pub fields: Vec<&'static str>,
    }
}

/// Up to this many rows `health()` counts a table rather than estimating it: a count of
/// this many index entries takes well under a millisecond.
pub const HEALTH_EXACT_BELOW: i64 = 10_000;
