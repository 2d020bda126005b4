//! The kinds of write the lane runs: a write that runs once (`OnceJob`: a closure that
//! may borrow from its caller), one that may run again when SQLite rolls its group back
//! (`RepeatJob`: a store write), and one submitted by a caller that does not wait
//! (`SubmittedJob`: owned, with a completion callback). Each keeps its own typed result
//! (`Outcome`) for the caller.

use crate::error::{Error, Result};
use crate::sqlite::transaction::Tx;

/// A queued write, type-erased: runs against the group's transaction and keeps its
/// own typed result.
pub(crate) trait Job: Send {
    /// Runs the write: `Some(succeeded)`, or `None` when it cannot run again.
    fn run(&mut self, tx: &Tx) -> Option<bool>;
    /// Replaces the result with an error (the write was rolled back, or never ran).
    fn fail(&mut self, e: Error);
    /// Whether `run` may be called again after its work was rolled back.
    fn repeatable(&self) -> bool;
    /// Fails the write because the group's `BEGIN` (or its checkout) failed: nothing
    /// of it ran, so its caller may try again (outside the lane).
    fn fail_begin(&mut self, e: Error);
    /// The error `fail_begin` left, taken (and the result cleared) for a retry.
    fn take_begin_failure(&mut self) -> Option<Error>;
}

/// A queued write's result, and whether it is a failed `BEGIN` its caller may retry.
pub(crate) struct Outcome<T> {
    result: Option<Result<T>>,
    begin_failed: bool,
}

impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Outcome { result: None, begin_failed: false }
    }
}

impl<T> Outcome<T> {
    fn set(&mut self, result: Result<T>) -> bool {
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail_begin(&mut self, e: Error) {
        self.result = Some(Err(e));
        self.begin_failed = true;
    }

    fn take_begin_failure(&mut self) -> Option<Error> {
        if !std::mem::take(&mut self.begin_failed) {
            return None;
        }
        match self.result.take() {
            Some(Err(e)) => Some(e),
            other => {
                self.result = other;
                None
            }
        }
    }

    /// The result the lane left (every path through it leaves one).
    pub(crate) fn into_result(self) -> Result<T> {
        self.result.unwrap_or_else(|| Err(Error::Internal("the write lane lost a write's result".into())))
    }
}

/// A `FnOnce` write (`Engine::write`).
pub(crate) struct OnceJob<F, T> {
    pub f: Option<F>,
    pub outcome: Outcome<T>,
}

impl<F: FnOnce(&Tx) -> Result<T> + Send, T: Send> Job for OnceJob<F, T> {
    fn run(&mut self, tx: &Tx) -> Option<bool> {
        let f = self.f.take()?;
        Some(self.outcome.set(f(tx)))
    }
    fn fail(&mut self, e: Error) {
        self.outcome.set(Err(e));
    }
    fn repeatable(&self) -> bool {
        false
    }
    fn fail_begin(&mut self, e: Error) {
        self.outcome.fail_begin(e)
    }
    fn take_begin_failure(&mut self) -> Option<Error> {
        self.outcome.take_begin_failure()
    }
}

/// A write that can run again (`Engine::write_repeatable`: every store write).
pub(crate) struct RepeatJob<F, T> {
    pub f: F,
    pub outcome: Outcome<T>,
}

impl<F: Fn(&Tx) -> Result<T> + Send, T: Send> Job for RepeatJob<F, T> {
    fn run(&mut self, tx: &Tx) -> Option<bool> {
        Some(self.outcome.set((self.f)(tx)))
    }
    fn fail(&mut self, e: Error) {
        self.outcome.set(Err(e));
    }
    fn repeatable(&self) -> bool {
        true
    }
    fn fail_begin(&mut self, e: Error) {
        self.outcome.fail_begin(e)
    }
    fn take_begin_failure(&mut self) -> Option<Error> {
        self.outcome.take_begin_failure()
    }
}

/// A write submitted without a waiting caller: owned by the lane until it is done.
pub(crate) trait OwnedJob: Job + 'static {
    fn as_job(&mut self) -> &mut (dyn Job + 'static);
    /// Hands the result to the submitter (called once, without the lane's lock).
    fn complete(self: Box<Self>);
}

/// [`RepeatJob`] with a completion callback (`Engine::submit_repeatable`).
pub(crate) struct SubmittedJob<F, T, D> {
    pub job: RepeatJob<F, T>,
    pub on_done: D,
}

impl<F: Fn(&Tx) -> Result<T> + Send + 'static, T: Send + 'static, D: FnOnce(Result<T>) + Send + 'static> Job
    for SubmittedJob<F, T, D>
{
    fn run(&mut self, tx: &Tx) -> Option<bool> {
        self.job.run(tx)
    }
    fn fail(&mut self, e: Error) {
        self.job.fail(e)
    }
    fn repeatable(&self) -> bool {
        true
    }
    fn fail_begin(&mut self, e: Error) {
        self.job.fail_begin(e)
    }
    fn take_begin_failure(&mut self) -> Option<Error> {
        self.job.take_begin_failure()
    }
}

impl<F: Fn(&Tx) -> Result<T> + Send + 'static, T: Send + 'static, D: FnOnce(Result<T>) + Send + 'static> OwnedJob
    for SubmittedJob<F, T, D>
{
    fn as_job(&mut self) -> &mut (dyn Job + 'static) {
        self
    }
    fn complete(self: Box<Self>) {
        let SubmittedJob { job, on_done } = *self;
        // A failed BEGIN comes back as it is: nothing of the write ran, and the
        // submitter decides whether to try again (the blocking forms retry by policy).
        on_done(job.outcome.into_result());
    }
}

pub(super) fn complete_all(jobs: Vec<Box<dyn OwnedJob>>) {
    if jobs.is_empty() {
        return;
    }
    let mut jobs = Some(jobs);
    crate::callbacks::in_scope(&mut || jobs.take().into_iter().flatten().for_each(|job| job.complete()));
}
