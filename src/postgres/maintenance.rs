//! Background maintenance on PostgreSQL: retention (executions older than
//! `retention_days`) and `VACUUM (ANALYZE)` of the store's tables every `interval`, on a
//! thread that shares the store's pool. `vacuum_pages` and `checkpoint` are SQLite's and
//! are not used here (PostgreSQL's vacuum is not bounded by pages; the server checkpoints).

use super::PgDatabase;
use crate::error::Result;
use crate::sqlite::maintenance::Maintenance;
use crate::sqlite::maintenance::{CycleReport, MaintenanceOptions};

/// The PostgreSQL store's maintenance thread (the SQLite store's, with its own cycle).
pub(crate) type PgMaintenance = Maintenance;

/// Starts it: `db` shares the store's pool; it is the thread's own handle.
pub(crate) fn start(db: PgDatabase, options: MaintenanceOptions) -> Result<PgMaintenance> {
    let retention_days = options.retention_days;
    Maintenance::spawn("consensus-db-pg-maintenance", options, move |report: &mut CycleReport, _stopping| {
        if let Some(days) = retention_days {
            report.executions_deleted = db.cleanup_old_executions(days)?;
        }
        db.vacuum(false)
    })
}
