//! fsync latency, as monitoring wants it: since start, and over the last
//! minute (a ring of [`BUCKETS`] histograms of [`BUCKET`] each, so old
//! samples age out without keeping them one by one).
//!
//! Every sync is also recorded as `keel_flush_duration_seconds` through the
//! `metrics` facade (a no-op unless the process installed a recorder).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Width of one bucket of the recent window.
pub const BUCKET: Duration = Duration::from_secs(5);
/// Buckets kept: with [`BUCKET`], one minute.
pub const BUCKETS: usize = 12;

/// Largest latency the histograms track exactly (longer ones saturate).
const MAX_TRACKED_US: u64 = 600_000_000;

/// Quantiles of a set of fsync durations, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// fsync latency since start and recently, and when the last sync ended.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncLatency {
    pub since_start: LatencySummary,
    pub last_minute: LatencySummary,
    /// Time since the last sync finished; `None` before the first.
    pub last_sync_age: Option<Duration>,
}

#[derive(Debug)]
struct State {
    since_start: Histogram<u64>,
    /// Newest last; each covers [start, start + BUCKET).
    recent: VecDeque<(Instant, Histogram<u64>)>,
    /// Since the last [`LatencyRecorder::take_interval`].
    interval: Histogram<u64>,
    last_sync: Option<Instant>,
}

#[derive(Debug)]
pub struct LatencyRecorder {
    state: Mutex<State>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 2).expect("valid histogram bounds")
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                since_start: histogram(),
                recent: VecDeque::new(),
                interval: histogram(),
                last_sync: None,
            }),
        }
    }
}

impl LatencyRecorder {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sync that took `took` and ended at `now`.
    pub fn record(&self, took: Duration, now: Instant) {
        metrics::histogram!("keel_flush_duration_seconds").record(took.as_secs_f64());
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_TRACKED_US);
        let mut s = self.state();
        s.since_start.saturating_record(us);
        s.interval.saturating_record(us);
        s.last_sync = Some(now);
        if s.recent.back().is_none_or(|(start, _)| now.duration_since(*start) >= BUCKET) {
            if s.recent.len() == BUCKETS {
                s.recent.pop_front();
            }
            s.recent.push_back((now, histogram()));
        }
        if let Some((_, h)) = s.recent.back_mut() {
            h.saturating_record(us);
        }
    }

    /// Latency of the syncs that ended within `window` before `now` (at
    /// bucket granularity: buckets that started within the window).
    pub fn recent(&self, window: Duration, now: Instant) -> LatencySummary {
        let s = self.state();
        let mut merged = histogram();
        for (start, h) in &s.recent {
            if now.saturating_duration_since(*start) < window {
                merged.add(h).expect("same bounds");
            }
        }
        LatencySummary::of(&merged)
    }

    /// Latency of the syncs since the previous call, and start anew (for
    /// one periodic reader, e.g. a chart's points).
    pub fn take_interval(&self) -> LatencySummary {
        let mut s = self.state();
        let summary = LatencySummary::of(&s.interval);
        s.interval.reset();
        summary
    }

    pub fn report(&self, now: Instant) -> SyncLatency {
        let last_minute = self.recent(BUCKET * BUCKETS as u32, now);
        let s = self.state();
        SyncLatency {
            since_start: LatencySummary::of(&s.since_start),
            last_minute,
            last_sync_age: s.last_sync.map(|t| now.saturating_duration_since(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_minute_forgets_old_syncs_and_since_start_keeps_them() {
        let r = LatencyRecorder::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            r.record(Duration::from_millis(200), t0);
        }
        let later = t0 + Duration::from_secs(120);
        r.record(Duration::from_micros(300), later);
        let rep = r.report(later + Duration::from_millis(5));
        assert_eq!(rep.since_start.count, 11);
        assert!(rep.since_start.max_us >= 199_000, "{rep:?}");
        assert_eq!(rep.last_minute.count, 1, "{rep:?}");
        assert!((299..=301).contains(&rep.last_minute.p99_us), "{rep:?}");
        assert_eq!(rep.last_sync_age, Some(Duration::from_millis(5)));
    }

    #[test]
    fn quantiles_follow_the_recorded_values() {
        let r = LatencyRecorder::default();
        let t0 = Instant::now();
        for i in 1..=100u64 {
            r.record(Duration::from_micros(i * 100), t0 + Duration::from_millis(i));
        }
        let rep = r.report(t0 + Duration::from_secs(1));
        assert_eq!(rep.last_minute.count, 100);
        assert!((4_900..=5_100).contains(&rep.last_minute.p50_us), "{rep:?}");
        assert!((9_800..=10_100).contains(&rep.last_minute.p99_us), "{rep:?}");
        assert!((9_900..=10_100).contains(&rep.last_minute.max_us), "{rep:?}");
        assert!((rep.since_start.mean_us - 5_050.0).abs() < 100.0, "{rep:?}");
        assert_eq!(LatencyRecorder::default().report(t0).last_sync_age, None);
    }

    #[test]
    fn an_interval_holds_exactly_the_syncs_since_the_last_take() {
        let r = LatencyRecorder::default();
        let t0 = Instant::now();
        assert_eq!(r.take_interval().count, 0);
        r.record(Duration::from_millis(2), t0);
        r.record(Duration::from_millis(4), t0 + Duration::from_secs(9));
        let first = r.take_interval();
        assert_eq!(first.count, 2);
        assert!((3_950..=4_050).contains(&first.max_us), "{first:?}");
        r.record(Duration::from_micros(100), t0 + Duration::from_secs(10));
        let second = r.take_interval();
        assert_eq!(second.count, 1);
        assert!((99..=101).contains(&second.p99_us), "{second:?}");
        assert_eq!(r.take_interval().count, 0);
        assert_eq!(r.report(t0 + Duration::from_secs(10)).since_start.count, 3);
    }
}
