//! The dual-schema reader's metrics: reads served per schema and the latency of each
//! read path, recorded with relaxed atomics only (no lock, no allocation on a read).
//!
//! Latencies go into a log-linear histogram: four buckets per power of two of
//! nanoseconds, so a percentile read back as its bucket's midpoint is within 12.5% of
//! the true value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{LatencySummary, ReaderCounts};

/// The path one read took: which schema its rows came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadPath {
    /// The new tables only.
    V1 = 0,
    /// Legacy rows were returned: the fallback.
    Legacy = 1,
    /// Nothing found.
    Empty = 2,
}

#[derive(Debug, Default)]
pub(crate) struct ReadMetrics {
    v1: AtomicU64,
    legacy: AtomicU64,
    empty: AtomicU64,
    latency: [Histogram; 3],
}

impl ReadMetrics {
    /// Counts one read: `v1` and `legacy` say which schemas contributed rows (both may).
    pub fn record(&self, v1: bool, legacy: bool, elapsed: Duration) {
        if v1 {
            self.v1.fetch_add(1, Ordering::Relaxed);
        }
        if legacy {
            self.legacy.fetch_add(1, Ordering::Relaxed);
        }
        if !v1 && !legacy {
            self.empty.fetch_add(1, Ordering::Relaxed);
        }
        let path = match (v1, legacy) {
            (_, true) => ReadPath::Legacy,
            (true, false) => ReadPath::V1,
            (false, false) => ReadPath::Empty,
        };
        self.latency[path as usize].record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn counts(&self) -> ReaderCounts {
        let [v1, legacy, empty] =
            [ReadPath::V1, ReadPath::Legacy, ReadPath::Empty].map(|p| self.latency[p as usize].summary());
        let reads = v1.count + legacy.count + empty.count;
        ReaderCounts {
            v1: self.v1.load(Ordering::Relaxed),
            legacy: self.legacy.load(Ordering::Relaxed),
            empty: self.empty.load(Ordering::Relaxed),
            reads,
            fallback_rate: if reads == 0 { 0.0 } else { legacy.count as f64 / reads as f64 },
            latency_v1: v1,
            latency_legacy: legacy,
            latency_empty: empty,
        }
    }
}

/// Sub-buckets per power of two (as bits): 2 bits, four buckets.
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` have a bucket each; above, `SUB` per power of two up to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS + 1) * SUB as u32) as usize;

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), max: AtomicU64::new(0) }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The smallest value of bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB + SUB_BITS as u64 - 1;
    (SUB + i % SUB) << (exp - SUB_BITS as u64)
}

fn midpoint(i: usize) -> u64 {
    let low = lower_bound(i);
    let next = if i + 1 < BUCKETS { lower_bound(i + 1) } else { u64::MAX };
    low + (next - low) / 2
}

impl Histogram {
    fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        // A new maximum is rare: a plain load spares most reads the read-modify-write.
        if ns > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(ns, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let percentile = |q: f64| -> f64 {
            if count == 0 {
                return 0.0;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return midpoint(i).min(max) as f64 / 1000.0;
                }
            }
            max as f64 / 1000.0
        };
        LatencySummary {
            count,
            p50_us: percentile(0.50),
            p90_us: percentile(0.90),
            p99_us: percentile(0.99),
            max_us: max as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_an_eighth() {
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert!((1..5_000u64).all(|ns| bucket_of(ns) >= bucket_of(ns - 1)), "buckets go up with the value");
        for ns in (0..5_000u64).chain([1 << 20, (1 << 20) + 1, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let i = bucket_of(ns);
            assert!(lower_bound(i) <= ns && (i + 1 == BUCKETS || ns < lower_bound(i + 1)), "{ns} in bucket {i}");
            let mid = midpoint(i) as f64;
            assert!((mid - ns as f64).abs() <= ns as f64 / 8.0 + 1.0, "{ns}: midpoint {mid}");
        }
    }

    #[test]
    fn percentiles_read_back_within_the_stated_error() {
        let h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 1000); // 1 µs .. 1 ms, uniform
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max_us, 1000.0);
        for (got, want) in [(s.p50_us, 500.0), (s.p90_us, 900.0), (s.p99_us, 990.0)] {
            assert!((got - want).abs() <= want / 8.0, "{got} vs {want}");
        }
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.max_us);
        assert_eq!(Histogram::default().summary().p99_us, 0.0);
    }

    #[test]
    fn each_read_has_one_latency_path_and_the_fallback_rate_counts_legacy_reads() {
        let m = ReadMetrics::default();
        m.record(true, false, Duration::from_micros(10));
        m.record(true, true, Duration::from_micros(20));
        m.record(false, true, Duration::from_micros(30));
        m.record(false, false, Duration::from_micros(5));
        let c = m.counts();
        assert_eq!((c.v1, c.legacy, c.empty, c.reads), (2, 2, 1, 4));
        assert_eq!((c.latency_v1.count, c.latency_legacy.count, c.latency_empty.count), (1, 2, 1));
        assert_eq!(c.fallback_rate, 0.5);
    }
}
