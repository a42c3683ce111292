//! When batches start (Spark's `Trigger`).

use serde::{Deserialize, Serialize};

use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// A batch every `interval_ms` (0: as soon as the previous one ends);
    /// a batch that takes longer delays the next, it is never skipped or
    /// overlapped. With nothing new to read, no batch runs.
    Interval { interval_ms: Millis },
    /// One batch of everything available, then stop.
    Once,
    /// Everything available when the query starts, in as many batches as
    /// the per-batch limit needs, then stop.
    AvailableNow,
}

impl Trigger {
    /// When the batch after one planned at `last_planned` may start.
    pub(crate) fn next_due(self, last_planned: Millis, now: Millis) -> Millis {
        match self {
            Trigger::Interval { interval_ms } if interval_ms > 0 => {
                // Aligned to the interval, as Spark's ProcessingTimeExecutor does.
                let next = (last_planned / interval_ms + 1) * interval_ms;
                next.max(now)
            }
            _ => now,
        }
    }
}
