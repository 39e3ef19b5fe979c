//! Counters over the last minute: samples of cumulative counters every few seconds, so that
//! `isthmusctl show` can say what was dropped in the last minute without a Prometheus.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the window reaches.
pub const MINUTE: Duration = Duration::from_secs(60);
/// How often the timer thread samples.
pub const EVERY: Duration = Duration::from_secs(5);

/// Samples of a set of cumulative counters (always the same set, in the same order).
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, Vec<u64>)>,
}

impl Window {
    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= EVERY)
    }

    /// Records the counters' values at `now`, forgetting the samples that a minute-old one
    /// makes useless.
    pub fn record(&mut self, now: Instant, values: Vec<u64>) {
        self.samples.push_back((now, values));
        // Keep the newest sample that is at least a minute old, and all after it.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            self.samples.pop_front();
        }
    }

    /// How much each counter grew from the oldest sample within the last minute (the first
    /// one, when the window is younger) to `current`.
    pub fn growth(&self, current: &[u64]) -> Vec<u64> {
        let base = self
            .samples
            .front()
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        current
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(base.get(i).copied().unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_over_the_last_minute_only() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.growth(&[7]), vec![7], "nothing sampled: all of it");
        w.record(t0, vec![0, 10]);
        assert!(!w.due(t0 + Duration::from_secs(1)));
        assert!(w.due(t0 + EVERY));
        // Counters rise by 1 a second for 2 minutes, sampled every 5 s.
        let mut now = t0;
        for s in (5..=120).step_by(5) {
            now = t0 + Duration::from_secs(s);
            w.record(now, vec![s, 10]);
        }
        assert_eq!(w.growth(&[120, 10]), vec![60, 0]);
        assert!(w.samples.len() <= 14, "{} samples kept", w.samples.len());
        assert!(now.duration_since(w.samples[0].0) >= MINUTE);
        assert!(now.duration_since(w.samples[1].0) < MINUTE);
    }
}
