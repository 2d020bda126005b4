//! One group of writes in one transaction: each write in a `SAVEPOINT` of its own, so a
//! failing write is undone alone; the group commits once. When SQLite ends the whole
//! transaction, the writes that had run are run again (repeatable) or failed, and the
//! rest go on in a new transaction (see the lane's opening comment, `mod.rs`).

use crate::error::{Error, Result};
use crate::sqlite::pool::Pool;
use crate::sqlite::transaction::{Behavior, Tx};

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::jobs::Job;
use super::panic_message;

/// The writes that had run in a round SQLite rolled back: run again (repeatable) or failed.
fn unwind(jobs: &mut [&mut (dyn Job + 'static)], ran: &[usize], why: &str, again: &mut Vec<usize>) {
    for &j in ran {
        if jobs[j].repeatable() {
            again.push(j);
        } else {
            jobs[j].fail(Error::Transaction(format!(
                "rolled back with its group: another write committed with it ended the transaction ({why}); \
                 nothing of this write persists"
            )));
        }
    }
}

pub(super) fn run_group(pool: &Pool, jobs: &mut [&mut (dyn Job + 'static)]) {
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    while !pending.is_empty() {
        let tx = match pool.get().and_then(|conn| Tx::begin(conn, Behavior::Immediate)) {
            Ok(tx) => tx,
            Err(e) => {
                // Nothing of these ran in this round: each caller may retry (outside the lane).
                for &i in &pending {
                    jobs[i].fail_begin(e.clone());
                }
                return;
            }
        };
        let alone = pending.len() == 1;
        let mut ran = Vec::with_capacity(pending.len());
        let mut again = Vec::new();
        let mut ended = false;
        for (pos, &i) in pending.iter().enumerate() {
            let opened = if alone { Ok(()) } else { savepoint(&tx, "SAVEPOINT lane_member") };
            let mut ok = match opened {
                Err(e) => {
                    jobs[i].fail(e);
                    false
                }
                Ok(()) => match catch_unwind(AssertUnwindSafe(|| jobs[i].run(&tx))) {
                    Ok(Some(ok)) => ok,
                    Ok(None) => {
                        jobs[i].fail(Error::Transaction("the write was rolled back and cannot run again".into()));
                        false
                    }
                    Err(panic) => {
                        jobs[i].fail(Error::Internal(panic_message(&*panic)));
                        false
                    }
                },
            };
            if ok && !alone && !tx.is_autocommit() && leaves_deferred_violations(&tx) {
                // Its own COMMIT would fail; the group's must not fail for it.
                jobs[i].fail(Error::Integrity(
                    "FOREIGN KEY constraint failed: the write left a deferred foreign key violation, which its \
                     COMMIT would refuse; nothing of it persists"
                        .into(),
                ));
                ok = false;
            }
            if !tx.is_autocommit() && !alone {
                let closed = savepoint(
                    &tx,
                    if ok { "RELEASE lane_member" } else { "ROLLBACK TO lane_member; RELEASE lane_member" },
                );
                if let Err(e) = closed {
                    if ok {
                        jobs[i].fail(e);
                        ok = false;
                    }
                    let _ = tx.execute_batch("ROLLBACK");
                }
                // A savepoint does not undo `PRAGMA defer_foreign_keys`: the next member
                // starts with foreign keys checked as usual.
                if !tx.is_autocommit() {
                    let _ = savepoint(&tx, "PRAGMA defer_foreign_keys = OFF");
                }
            }
            if tx.is_autocommit() {
                // SQLite ended the transaction: nothing of this round persists.
                let why = format!("a write in the group ended the transaction (member {pos} of {})", pending.len());
                if ok {
                    // It ended the transaction yet reported success: never acknowledged.
                    jobs[i].fail(Error::Transaction(why.clone()));
                }
                unwind(jobs, &ran, &why, &mut again);
                again.extend_from_slice(&pending[pos + 1..]);
                ended = true;
                break;
            }
            if ok {
                ran.push(i);
            }
        }
        if ended {
            drop(tx);
            again.sort_unstable();
            pending = again;
            continue;
        }
        if ran.is_empty() {
            drop(tx); // rolls back: nothing to keep
        } else if let Err(e) = tx.commit() {
            for &j in &ran {
                jobs[j].fail(e.clone());
            }
        }
        pending.clear();
    }
}

/// Whether the transaction holds foreign key violations that are checked only at
/// COMMIT (`DEFERRABLE INITIALLY DEFERRED`, `PRAGMA defer_foreign_keys`). Every member
/// before this one left none, so any there are belong to the member that just ran.
fn leaves_deferred_violations(tx: &Tx) -> bool {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: the handle is this open connection's, used on the thread that holds it.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            tx.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highest,
            0,
        )
    };
    rc == rusqlite::ffi::SQLITE_OK && current > 0
}

fn savepoint(tx: &Tx, sql: &str) -> Result<()> {
    let mut stmts = sql.split("; ");
    stmts.try_for_each(|s| tx.prepare_cached(s).and_then(|mut st| st.execute([])).map(drop)).map_err(Error::from)
}
