//! Retry in the engine: busy databases and pool timeouts (`Error::is_retryable`) are
//! tried again with capped exponential backoff and full jitter, within a total deadline
//! that counts everything since the operation started (`busy_timeout` waits and waits
//! for the write lane included). Every write, `begin`, and opening goes through it.
//!
//! The retry loop always runs *outside* the write lane: an attempt that fails takes
//! the lane back down before the hook runs and before sleeping, so no user callback
//! (the hook, an injected sleeper) ever runs while the lane is held.
//!
//! Time comes from a [`Clock`] (`now` + `sleep`), injectable so tests never sleep.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where the retry loop reads the time and how it waits.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, delay: Duration);
    /// A uniform number in `[0, 1)` for jitter.
    fn random(&self) -> f64 {
        thread_random()
    }
}

/// The real clock: `Instant::now` and `thread::sleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, delay: Duration) {
        std::thread::sleep(delay)
    }
}

fn thread_random() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9E37_79B9_7F4A_7C15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// One retry about to happen: told to the hook before the sleep.
#[derive(Debug, Clone)]
pub struct RetryEvent<'a> {
    /// The operation retried: `"open"`, `"write"`, `"begin"`, `"migrate"`, …
    pub operation: &'a str,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    pub delay: Duration,
    pub error: &'a Error,
}

pub type RetryHook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Capped exponential backoff: `initial_delay` doubling up to `max_delay`,
/// `max_attempts` tries in all, none started or slept into past `deadline` (measured
/// from the operation's start). With `jitter` each delay is uniform in `[0, delay]`.
#[derive(Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub jitter: bool,
    pub deadline: Duration,
    pub clock: Arc<dyn Clock>,
    /// Called before each sleep, never while the write lane is held.
    pub on_retry: Option<RetryHook>,
}

impl Default for RetryPolicy {
    /// 6 attempts, 100 ms doubling to a 1.6 s cap (reached by the 5th delay), full
    /// jitter, a 10 s deadline.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1600),
            jitter: true,
            deadline: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            on_retry: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_delay", &self.initial_delay)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("deadline", &self.deadline)
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// The capped delay before retry `n` (1-based), without jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(31));
        self.initial_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The planned delays between attempts, without jitter (deadline not applied).
    pub fn delays(&self) -> Vec<Duration> {
        (1..self.max_attempts).map(|n| self.backoff(n)).collect()
    }
}

/// A store's retry state: the policy (or none) and the count of retries made.
#[derive(Debug, Default)]
pub struct Retrier {
    policy: Option<RetryPolicy>,
    retries: AtomicU64,
}

/// One operation's run through the policy.
pub(crate) struct Attempts<'a> {
    retrier: &'a Retrier,
    op: &'a str,
    start: Option<Instant>,
    attempt: u32,
    /// The call carries an idempotency key: an outcome left unknown may be repeated
    /// (the key makes a repeat return the first write's id).
    keyed: bool,
}

impl<'a> Attempts<'a> {
    /// Marks the call as carrying an idempotency key (see [`Attempts::again`]); only
    /// PostgreSQL's writes can end with their outcome unknown.
    #[cfg(any(feature = "postgres", test))]
    pub(crate) fn keyed(mut self, keyed: bool) -> Self {
        self.keyed = keyed;
        self
    }

    /// Whether `e` may be tried again: a retryable error, or an outcome left unknown
    /// of a call carrying a key (never one that stopped waiting for a standby).
    fn repeatable(&self, e: &Error) -> bool {
        e.is_retryable() || (self.keyed && matches!(e, Error::OutcomeUnknown(_)))
    }

    /// How long the operation may still wait (for the write lane): `None` is unbounded.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let p = self.retrier.policy.as_ref()?;
        let start = self.start?;
        Some(p.deadline.saturating_sub(p.clock.now().saturating_duration_since(start)))
    }

    /// After attempt failed with `e`: sleeps and returns `true` to try again, or
    /// `false` when `e` must be returned (permanent, attempts or deadline spent).
    pub(crate) fn again(&mut self, e: &Error) -> bool {
        self.attempt += 1;
        let Some(p) = self.retrier.policy.as_ref() else { return false };
        let Some(start) = self.start else { return false };
        if !self.repeatable(e) || self.attempt >= p.max_attempts {
            return false;
        }
        let mut delay = p.backoff(self.attempt);
        if p.jitter {
            delay = delay.mul_f64(p.clock.random().clamp(0.0, 1.0));
        }
        let elapsed = p.clock.now().saturating_duration_since(start);
        if elapsed + delay >= p.deadline {
            return false;
        }
        self.retrier.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &p.on_retry {
            hook(&RetryEvent { operation: self.op, attempt: self.attempt, delay, error: e });
        }
        p.clock.sleep(delay);
        true
    }
}

impl Retrier {
    pub fn new(policy: Option<RetryPolicy>) -> Retrier {
        Retrier { policy, retries: AtomicU64::new(0) }
    }

    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.policy.as_ref()
    }

    /// Retries made so far.
    pub fn count(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub(crate) fn start<'a>(&'a self, op: &'a str) -> Attempts<'a> {
        Attempts { retrier: self, op, start: self.policy.as_ref().map(|p| p.clock.now()), attempt: 0, keyed: false }
    }

    /// Runs `f` until it succeeds, fails for good, or the policy gives up.
    pub fn run<T>(&self, op: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempts = self.start(op);
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if attempts.again(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A clock whose time moves only when slept on (or when told to).
    #[derive(Default)]
    struct FakeClock {
        offset: Mutex<Duration>,
        slept: Mutex<Vec<Duration>>,
        base: std::sync::OnceLock<Instant>,
        random: Option<f64>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.base.get_or_init(Instant::now) + *self.offset.lock()
        }
        fn sleep(&self, d: Duration) {
            self.slept.lock().push(d);
            *self.offset.lock() += d;
        }
        fn random(&self) -> f64 {
            self.random.unwrap_or(0.5)
        }
    }

    fn policy(clock: Arc<FakeClock>, jitter: bool) -> RetryPolicy {
        RetryPolicy { jitter, clock, ..RetryPolicy::default() }
    }

    #[test]
    fn the_default_schedule_reaches_its_cap_and_never_passes_the_deadline() {
        let p = RetryPolicy::default();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(p.delays(), vec![ms(100), ms(200), ms(400), ms(800), ms(1600)]);
        assert_eq!(p.delays().last(), Some(&p.max_delay));

        // Without jitter: every delay slept, the cap included, then the last error.
        let clock = Arc::new(FakeClock::default());
        let r = Retrier::new(Some(policy(clock.clone(), false)));
        let mut calls = 0;
        let out: Result<()> = r.run("write", || {
            calls += 1;
            Err(Error::Busy("locked".into()))
        });
        assert!(matches!(out, Err(Error::Busy(_))));
        assert_eq!(calls, 6);
        assert_eq!(*clock.slept.lock(), p.delays());
        assert_eq!(r.count(), 5);

        // Each attempt waits 2 s in busy_timeout: the deadline (10 s) stops it early.
        let clock = Arc::new(FakeClock::default());
        let r = Retrier::new(Some(policy(clock.clone(), false)));
        let start = clock.now();
        let mut calls = 0;
        let _ = r.run("write", || -> Result<()> {
            calls += 1;
            *clock.offset.lock() += Duration::from_secs(2);
            Err(Error::Busy("locked".into()))
        });
        let slept: Duration = clock.slept.lock().iter().sum();
        assert!(clock.now() - start <= p.deadline + Duration::from_secs(2), "{:?}", clock.now() - start);
        assert!((3..6).contains(&calls), "{calls}");
        assert!(slept + Duration::from_secs(2) * (calls - 1) < p.deadline);

        // With full jitter every delay stays within [0, backoff].
        let clock = Arc::new(FakeClock { random: Some(0.999), ..FakeClock::default() });
        let r = Retrier::new(Some(policy(clock.clone(), true)));
        let _ = r.run("write", || -> Result<()> { Err(Error::PoolTimeout("pool".into())) });
        let slept = clock.slept.lock().clone();
        assert_eq!(slept.len(), 5);
        for (d, cap) in slept.iter().zip(p.delays()) {
            assert!(*d <= cap && *d > cap.mul_f64(0.99));
        }
    }

    #[test]
    fn permanent_errors_and_no_policy_are_tried_once_and_the_hook_hears_the_operation() {
        let clock = Arc::new(FakeClock::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook: RetryHook = Arc::new(move |e: &RetryEvent<'_>| s.lock().push((e.operation.to_string(), e.attempt)));
        let r = Retrier::new(Some(RetryPolicy { on_retry: Some(hook), ..policy(clock.clone(), false) }));
        let mut calls = 0;
        let out: Result<()> = r.run("open", || {
            calls += 1;
            Err(Error::Pragma { pragma: "journal_mode".into(), wanted: "wal".into(), actual: "delete".into() })
        });
        assert!(out.is_err() && calls == 1 && clock.slept.lock().is_empty());
        let mut calls = 0;
        let out = r.run("open", || {
            calls += 1;
            if calls < 3 {
                Err(Error::Busy("locked".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(out.unwrap(), 3);
        assert_eq!(*seen.lock(), vec![("open".to_string(), 1), ("open".to_string(), 2)]);
        assert_eq!(r.count(), 2);

        // A write that may have committed is never repeated.
        let mut calls = 0;
        let out: Result<()> = r.run("store_artifact", || {
            calls += 1;
            Err(Error::OutcomeUnknown("lost during COMMIT".into()))
        });
        assert!(matches!(out, Err(Error::OutcomeUnknown(_))) && calls == 1);

        let off = Retrier::new(None);
        let mut calls = 0;
        let _ = off.run("write", || -> Result<()> {
            calls += 1;
            Err(Error::Busy("locked".into()))
        });
        assert_eq!((calls, off.count()), (1, 0));
    }

    #[test]
    fn an_outcome_left_unknown_is_repeated_only_for_a_call_carrying_a_key() {
        let clock = Arc::new(FakeClock::default());
        let retrier = Retrier::new(Some(policy(clock, false)));
        let lost = Error::OutcomeUnknown("lost after sending".into());
        let mut unkeyed = retrier.start("store_artifact");
        assert!(!unkeyed.again(&lost), "without a key a repeat could store it twice");
        let mut keyed = retrier.start("store_artifact").keyed(true);
        assert!(keyed.again(&lost), "with a key a repeat returns the first write's id");
        let unreplicated = Error::NotReplicated("standby gone".into());
        assert!(!retrier.start("store_artifact").keyed(true).again(&unreplicated));
    }
}
