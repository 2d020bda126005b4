//! Claims: exactly-once consensus. An orchestrator claims a stage for a lease; while
//! the lease is live no other owner can claim it, and a synthesis of the stage is
//! accepted only under the stage's newest live claim. Each claim of a (spec_id, stage,
//! branch_id) takes the next fencing token of its row (rows are never deleted), so an
//! owner that stalled past its lease and was taken over holds an older token, and its
//! late write is refused (`Error::StaleClaim`). Leases run on the database's clock:
//! the time SQLite computes in the write transaction, plus the store's test offset
//! (`set_clock_offset`). See `docs/claims.md`.

use std::sync::atomic::Ordering;

use rusqlite::OptionalExtension;

use super::database::Database;
use super::validate::check_id;
use crate::error::{Error, Result, StaleClaim};
use crate::model::{Claim, NewClaim};
use crate::sqlite::transaction::Tx;

/// `branch_id` as the claims table keys it: '' for none (ids are never empty).
pub(crate) fn branch_key(branch_id: Option<&str>) -> &str {
    branch_id.unwrap_or("")
}

/// The longest lease taken: a day (a longer one is a lock nobody can recover).
pub(crate) const MAX_LEASE_MS: i64 = 86_400_000;

/// Seconds of a lease as whole milliseconds, checked.
pub fn lease_ms(name: &str, seconds: f64) -> Result<i64> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds * 1000.0 > MAX_LEASE_MS as f64 {
        return Err(Error::invalid(name, format!("must be seconds above 0 and at most 86400, got {seconds}")));
    }
    Ok(((seconds * 1000.0).round() as i64).max(1))
}

pub(crate) fn check_new_claim(c: &NewClaim) -> Result<()> {
    check_id("spec_id", &c.spec_id)?;
    check_id("stage", &c.stage)?;
    check_id("owner", &c.owner)?;
    if let Some(b) = &c.branch_id {
        check_id("branch_id", b)?;
    }
    if let Some(r) = &c.run_id {
        check_id("run_id", r)?;
    }
    if !(1..=MAX_LEASE_MS).contains(&c.lease_ms) {
        return Err(Error::invalid("lease_s", format!("must be above 0 s and at most 86400 s, got {} ms", c.lease_ms)));
    }
    Ok(())
}

/// A claims row as the fence reads it.
#[derive(Clone, Debug)]
pub(crate) struct ClaimRow {
    pub token: i64,
    pub owner: String,
    pub expires_at_ms: i64,
    pub released_at_ms: Option<i64>,
}

impl ClaimRow {
    pub fn live(&self, now: i64) -> bool {
        self.released_at_ms.is_none() && self.expires_at_ms > now
    }

    /// Whether `claim` is this row's live claim.
    pub fn holds(&self, claim: &Claim, now: i64) -> bool {
        self.token == claim.token && self.owner == claim.owner && self.live(now)
    }
}

/// Why `claim` is not the newest live claim of its stage, as the error the write gets.
pub(crate) fn stale(claim: &Claim, row: Option<&ClaimRow>, now: i64, what: &str) -> Error {
    let why = match row {
        None => "no claim of it was ever taken in this store".to_owned(),
        Some(r) if r.token != claim.token || r.owner != claim.owner => {
            let state = if r.live(now) { "live" } else { "no longer live" };
            format!("it was taken over: token {} is the newest, owner {:?} ({state})", r.token, r.owner)
        }
        Some(r) if r.released_at_ms.is_some() => format!("it was released (token {} is the newest)", r.token),
        Some(r) => format!(
            "its lease expired {} ms ago (token {} is still the newest: claim the stage again)",
            now - r.expires_at_ms,
            r.token
        ),
    };
    Error::StaleClaim(Box::new(StaleClaim {
        spec_id: claim.spec_id.clone(),
        stage: claim.stage.clone(),
        branch_id: claim.branch_id.clone(),
        token: Some(claim.token),
        newest: row.map(|r| r.token),
        message: format!(
            "{what} refused: the claim with token {} on spec {:?} stage {:?}{} is stale: {why}",
            claim.token,
            claim.spec_id,
            claim.stage,
            branch_text(claim.branch_id.as_deref())
        ),
    }))
}

/// A synthesis without a claim on a stage another owner holds.
pub(crate) fn claim_required(spec_id: &str, stage: &str, branch_id: Option<&str>, row: &ClaimRow) -> Error {
    Error::StaleClaim(Box::new(StaleClaim {
        spec_id: spec_id.to_owned(),
        stage: stage.to_owned(),
        branch_id: branch_id.map(str::to_owned),
        token: None,
        newest: Some(row.token),
        message: format!(
            "store_synthesis refused: spec {spec_id:?} stage {stage:?}{} has a live claim (token {}, owner {:?}): \
             only its holder may synthesize it, passing claim=",
            branch_text(branch_id),
            row.token,
            row.owner
        ),
    }))
}

fn branch_text(branch_id: Option<&str>) -> String {
    branch_id.map_or_else(String::new, |b| format!(" branch {b:?}"))
}

/// Refuses a claim for another spec/stage than the write's, before anything is written.
pub(crate) fn check_claim_scope(claim: &Claim, spec_id: &str, stage: &str) -> Result<()> {
    if claim.spec_id != spec_id || claim.stage != stage {
        return Err(Error::invalid(
            "claim",
            format!("is for spec {:?} stage {:?}, not spec {spec_id:?} stage {stage:?}", claim.spec_id, claim.stage),
        ));
    }
    Ok(())
}

const ROW: &str = "SELECT token, owner, expires_at_ms, released_at_ms FROM consensus_claims
                   WHERE spec_id = ?1 AND stage = ?2 AND branch_id = ?3";

fn read_row(tx: &Tx, spec_id: &str, stage: &str, branch_id: Option<&str>) -> Result<Option<ClaimRow>> {
    Ok(tx
        .prepare_cached(ROW)?
        .query_row(rusqlite::params![spec_id, stage, branch_key(branch_id)], |r| {
            Ok(ClaimRow { token: r.get(0)?, owner: r.get(1)?, expires_at_ms: r.get(2)?, released_at_ms: r.get(3)? })
        })
        .optional()?)
}

/// Now on the database's clock, Unix milliseconds: SQLite's time in this statement plus
/// `offset_ms` (the store's test offset).
pub(crate) fn db_now(tx: &Tx, offset_ms: i64) -> Result<i64> {
    let now: i64 = tx
        .prepare_cached("SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)")?
        .query_row([], |r| r.get(0))?;
    Ok(now.saturating_add(offset_ms))
}

impl Database {
    /// Now on the database's clock inside `tx` (see [`db_now`]).
    pub(crate) fn db_now(&self, tx: &Tx) -> Result<i64> {
        db_now(tx, self.clock_offset())
    }

    pub(crate) fn clock_offset(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Shifts this store's clock for leases and keys by `offset_ms` (tests: a lease
    /// expires without waiting for it). Not persisted; other stores keep their own.
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// Whether the file has the coordination tables. A store opened on a file without
    /// them (migrate=False) looks again until they appear: another store may add them.
    pub(crate) fn has_coordination(&self) -> Result<bool> {
        if self.layout.coordination.load(Ordering::Acquire) {
            return Ok(true);
        }
        let has = self.read(|conn| {
            for table in crate::sqlite::schema::COORDINATION_TABLES {
                if !crate::sqlite::schema::table_exists(conn, table)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        self.layout.coordination.store(has, Ordering::Release);
        Ok(has)
    }

    pub(crate) fn require_coordination(&self, what: &str) -> Result<()> {
        if self.has_coordination()? {
            return Ok(());
        }
        Err(Error::Migration(format!(
            "{what} needs the tables consensus_claims and consensus_idempotency (layout revision 5), which {:?} does \
             not have: open it writable with migrate=True (or run `consensus-db upgrade`)",
            self.path
        )))
    }

    /// Claims a stage for `lease_ms`: the claim, with the stage's next token, or None
    /// while another owner's lease is live. The same owner claiming again while its own
    /// lease is live gets a new token too (its earlier claim is fenced off: a restarted
    /// orchestrator under the same name cannot be written over by its former self).
    pub fn claim_stage(&self, c: &NewClaim) -> Result<Option<Claim>> {
        check_new_claim(c)?;
        self.require_coordination("claim_stage")?;
        self.write_repeatable_as("claim_stage", |tx| {
            let now = self.db_now(tx)?;
            let row = read_row(tx, &c.spec_id, &c.stage, c.branch_id.as_deref())?;
            if row.as_ref().is_some_and(|r| r.live(now) && r.owner != c.owner) {
                return Ok(None);
            }
            let token = row.as_ref().map_or(1, |r| r.token + 1);
            tx.prepare_cached(
                "INSERT INTO consensus_claims (spec_id, stage, branch_id, token, owner, run_id, lease_ms, claimed_at_ms,
                        expires_at_ms, released_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL)
                 ON CONFLICT (spec_id, stage, branch_id) DO UPDATE SET token = excluded.token, owner = excluded.owner,
                   run_id = excluded.run_id, lease_ms = excluded.lease_ms, claimed_at_ms = excluded.claimed_at_ms,
                   expires_at_ms = excluded.expires_at_ms, released_at_ms = NULL",
            )?
            .execute(rusqlite::params![
                c.spec_id,
                c.stage,
                branch_key(c.branch_id.as_deref()),
                token,
                c.owner,
                c.run_id,
                c.lease_ms,
                now,
                now + c.lease_ms
            ])?;
            Ok(Some(Claim {
                spec_id: c.spec_id.clone(),
                stage: c.stage.clone(),
                branch_id: c.branch_id.clone(),
                run_id: c.run_id.clone(),
                owner: c.owner.clone(),
                token,
                lease_ms: c.lease_ms,
                claimed_at_ms: now,
                expires_at_ms: now + c.lease_ms,
                took_over_from: row.filter(|r| r.released_at_ms.is_none()).map(|r| r.owner),
            }))
        })
    }

    /// Extends a live claim's lease to now + `lease_ms` (None: its own length); a claim
    /// taken over, expired or released is `Error::StaleClaim`.
    pub fn renew_claim(&self, claim: &Claim, lease_ms: Option<i64>) -> Result<Claim> {
        let lease = lease_ms.unwrap_or(claim.lease_ms);
        if !(1..=MAX_LEASE_MS).contains(&lease) {
            return Err(Error::invalid("lease_s", format!("must be above 0 s and at most 86400 s, got {lease} ms")));
        }
        self.require_coordination("renew_claim")?;
        self.write_repeatable_as("renew_claim", |tx| {
            let now = self.db_now(tx)?;
            let row = read_row(tx, &claim.spec_id, &claim.stage, claim.branch_id.as_deref())?;
            if !row.as_ref().is_some_and(|r| r.holds(claim, now)) {
                return Err(stale(claim, row.as_ref(), now, "renew_claim"));
            }
            tx.prepare_cached(
                "UPDATE consensus_claims SET expires_at_ms = ?4, lease_ms = ?5
                 WHERE spec_id = ?1 AND stage = ?2 AND branch_id = ?3",
            )?
            .execute(rusqlite::params![
                claim.spec_id,
                claim.stage,
                branch_key(claim.branch_id.as_deref()),
                now + lease,
                lease
            ])?;
            Ok(Claim { lease_ms: lease, expires_at_ms: now + lease, ..claim.clone() })
        })
    }

    /// Ends a claim before its lease: the stage is claimable at once. Returns whether
    /// it was released (False: it had been taken over or released already).
    pub fn release_claim(&self, claim: &Claim) -> Result<bool> {
        self.require_coordination("release_claim")?;
        self.write_repeatable_as("release_claim", |tx| {
            let now = self.db_now(tx)?;
            let n = tx
                .prepare_cached(
                    "UPDATE consensus_claims SET released_at_ms = ?6, expires_at_ms = min(expires_at_ms, ?6)
                     WHERE spec_id = ?1 AND stage = ?2 AND branch_id = ?3 AND token = ?4 AND owner = ?5
                       AND released_at_ms IS NULL",
                )?
                .execute(rusqlite::params![
                    claim.spec_id,
                    claim.stage,
                    branch_key(claim.branch_id.as_deref()),
                    claim.token,
                    claim.owner,
                    now
                ])?;
            Ok(n > 0)
        })
    }

    /// The live claims (of one spec, or all), by spec, stage and branch.
    pub fn query_claims(&self, spec_id: Option<&str>) -> Result<Vec<Claim>> {
        if !self.has_coordination()? {
            return Ok(Vec::new());
        }
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT spec_id, stage, NULLIF(branch_id, ''), run_id, owner, token, lease_ms, claimed_at_ms,
                        expires_at_ms
                 FROM consensus_claims
                 WHERE (?1 IS NULL OR spec_id = ?1) AND released_at_ms IS NULL
                   AND expires_at_ms > CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + ?2
                 ORDER BY spec_id, stage, branch_id",
            )?;
            let rows = stmt.query_map(rusqlite::params![spec_id, offset], |r| {
                Ok(Claim {
                    spec_id: r.get(0)?,
                    stage: r.get(1)?,
                    branch_id: r.get(2)?,
                    run_id: r.get(3)?,
                    owner: r.get(4)?,
                    token: r.get(5)?,
                    lease_ms: r.get(6)?,
                    claimed_at_ms: r.get(7)?,
                    expires_at_ms: r.get(8)?,
                    took_over_from: None,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

/// The fence of a write that advances a stage (`store_synthesis`), inside its
/// transaction: with a claim, it must be the stage's newest live claim; without one,
/// no other owner may hold a live claim on the stage (any branch).
pub(crate) fn check_fence(tx: &Tx, spec_id: &str, stage: &str, claim: Option<&Claim>, now: i64) -> Result<()> {
    match claim {
        Some(claim) => {
            let row = read_row(tx, spec_id, stage, claim.branch_id.as_deref())?;
            if row.as_ref().is_some_and(|r| r.holds(claim, now)) {
                Ok(())
            } else {
                Err(stale(claim, row.as_ref(), now, "store_synthesis"))
            }
        }
        None => {
            let live = tx
                .prepare_cached(
                    "SELECT NULLIF(branch_id, ''), token, owner, expires_at_ms FROM consensus_claims
                     WHERE spec_id = ?1 AND stage = ?2 AND released_at_ms IS NULL AND expires_at_ms > ?3
                     ORDER BY token DESC LIMIT 1",
                )?
                .query_row(rusqlite::params![spec_id, stage, now], |r| {
                    let branch: Option<String> = r.get(0)?;
                    let row =
                        ClaimRow { token: r.get(1)?, owner: r.get(2)?, expires_at_ms: r.get(3)?, released_at_ms: None };
                    Ok((branch, row))
                })
                .optional()?;
            match live {
                Some((branch, row)) => Err(claim_required(spec_id, stage, branch.as_deref(), &row)),
                None => Ok(()),
            }
        }
    }
}
