//! Admission control: the bounded queue and the `Retry-After` estimate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back completions count for the completion rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Seconds a client should wait before retrying: the time the queue ahead of it takes to drain at the recent
/// completion rate (`completions` finished within the last `window`), at least 1 s and at most 60 s. With no
/// recent completion the estimate falls back to one second per queued request.
pub fn retry_after_secs(queue_len: usize, completions: usize, window: Duration) -> u64 {
    let secs = if completions == 0 {
        queue_len as f64 + 1.0
    } else {
        let rate = completions as f64 / window.as_secs_f64().max(1e-3);
        (queue_len as f64 + 1.0) / rate
    };
    secs.ceil().clamp(1.0, 60.0) as u64
}

/// Timestamps of recent completions.
#[derive(Debug, Default)]
pub struct CompletionLog {
    times: VecDeque<Instant>,
    start: Option<Instant>,
}

impl CompletionLog {
    pub fn record(&mut self, now: Instant) {
        self.start.get_or_insert(now);
        self.times.push_back(now);
        self.prune(now);
    }

    /// Completions within the window and the window actually observed (shorter right after start).
    pub fn recent(&mut self, now: Instant) -> (usize, Duration) {
        self.prune(now);
        let observed = self.start.map_or(RATE_WINDOW, |s| {
            now.saturating_duration_since(s).min(RATE_WINDOW)
        });
        (self.times.len(), observed.max(Duration::from_secs(1)))
    }

    fn prune(&mut self, now: Instant) {
        while self
            .times
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > RATE_WINDOW)
        {
            self.times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_queue_drain_time_at_the_recent_rate() {
        // 10 completions per 10 s = 1/s; 4 queued + this one = 5 s.
        assert_eq!(retry_after_secs(4, 10, Duration::from_secs(10)), 5);
        // Fast servers still ask for at least a second.
        assert_eq!(retry_after_secs(0, 1000, Duration::from_secs(1)), 1);
        // Slow ones at most a minute.
        assert_eq!(retry_after_secs(1000, 1, Duration::from_secs(60)), 60);
    }

    #[test]
    fn with_no_completions_yet_each_queued_request_counts_a_second() {
        assert_eq!(retry_after_secs(3, 0, RATE_WINDOW), 4);
    }

    #[test]
    fn completions_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut log = CompletionLog::default();
        log.record(t0);
        log.record(t0 + Duration::from_secs(30));
        let (n, window) = log.recent(t0 + Duration::from_secs(70));
        assert_eq!(n, 1);
        assert_eq!(window, RATE_WINDOW);
    }
}
