//! Background maintenance on PostgreSQL: retention (executions older than
//! `retention_days`) and `VACUUM (ANALYZE)` of the store's tables every `interval`, on a
//! thread that shares the store's pool. `vacuum_pages` and `checkpoint` are SQLite's and
//! are not used here (PostgreSQL's vacuum is not bounded by pages; the server checkpoints).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::PgDatabase;
use crate::error::Result;
use crate::maintenance::{CycleReport, MaintenanceOptions};

pub(crate) struct PgMaintenance {
    stop: Arc<(Mutex<bool>, Condvar)>,
    pub(crate) cycles: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl PgMaintenance {
    /// `db` shares the store's pool; it is the thread's own handle.
    pub(crate) fn start(db: PgDatabase, options: MaintenanceOptions) -> Result<PgMaintenance> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let cycles = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (stop.clone(), cycles.clone());
        let thread = std::thread::Builder::new().name("consensus-db-pg-maintenance".into()).spawn(move || loop {
            {
                let (lock, wake) = &*stop_flag;
                let mut stopped = lock.lock();
                if !*stopped {
                    wake.wait_for(&mut stopped, options.interval);
                }
                if *stopped {
                    return;
                }
            }
            let n = counter.load(Ordering::Acquire) + 1;
            let mut report = CycleReport { cycle: n, ..Default::default() };
            let mut cycle = || -> Result<()> {
                if let Some(days) = options.retention_days {
                    report.executions_deleted = db.cleanup_old_executions(days)?;
                }
                db.vacuum(false)
            };
            if let Err(e) = cycle() {
                report.error = Some(e.to_string());
            }
            counter.store(n, Ordering::Release);
            if let Some(hook) = &options.on_cycle {
                hook(&report);
            }
        })?;
        Ok(PgMaintenance { stop, cycles, thread })
    }

    pub(crate) fn stop(self) {
        let (lock, wake) = &*self.stop;
        *lock.lock() = true;
        wake.notify_all();
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
    }
}
