//! Milliseconds for the core machines: wall-clock time at start plus the
//! runtime's monotonic clock since (simulated under madsim).

use millrace_core::Millis;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_ms: Millis,
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0);
        Self { start_ms, start: Instant::now() }
    }

    pub fn now(&self) -> Millis {
        self.start_ms + self.start.elapsed().as_millis() as Millis
    }

    /// The runtime instant at which `now()` reaches `at`.
    pub fn instant_at(&self, at: Millis) -> Instant {
        let ms = (at - self.start_ms).max(0) as u64;
        self.start + std::time::Duration::from_millis(ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
