//! Jittered exponential backoff that resets after a healthy run (rathole's rule):
//! a connection that stayed up longer than `healthy_after` starts again from `min`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    healthy_after: Duration,
    started: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
            healthy_after: Duration::from_secs(30),
            started: None,
        }
    }

    /// Call when a connection/session starts; used to decide whether the next
    /// failure follows a healthy run.
    pub fn mark_started(&mut self) {
        self.started = Some(Instant::now());
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The delay before the next attempt: full jitter in [current/2, current],
    /// then the base doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        if let Some(started) = self.started.take()
            && started.elapsed() >= self.healthy_after
        {
            self.reset();
        }
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        let jitter_ns = fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d2 = b.next_delay();
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        let d = b.next_delay();
        assert!(d >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn healthy_run_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        b.healthy_after = Duration::ZERO;
        b.mark_started();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
