//! Rates of a query's last batch, as Spark's StreamingQueryProgress
//! defines them: input rows/s is the batch's input over the time since the
//! previous batch was triggered (how fast data arrived); processed rows/s
//! is the same input over the batch's own duration, planned to committed
//! (how fast the query can go).

use std::collections::VecDeque;

use millrace_core::stream::BatchProgress;

/// Batches kept per query for `describe`.
pub const KEPT: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct Recent {
    pub batches: VecDeque<BatchProgress>,
}

impl Recent {
    pub fn push(&mut self, p: BatchProgress) {
        self.batches.push_back(p);
        while self.batches.len() > KEPT {
            self.batches.pop_front();
        }
    }

    pub fn last(&self) -> Option<&BatchProgress> {
        self.batches.back()
    }

    pub fn input_rows_per_sec(&self) -> Option<f64> {
        let n = self.batches.len();
        let last = self.batches.back()?;
        let prev = n.checked_sub(2).and_then(|i| self.batches.get(i))?;
        let secs = (last.planned_at - prev.planned_at) as f64 / 1000.0;
        (secs > 0.0).then(|| last.input_rows as f64 / secs)
    }

    pub fn processed_rows_per_sec(&self) -> Option<f64> {
        let last = self.batches.back()?;
        let secs = (last.committed_at - last.planned_at).max(1) as f64 / 1000.0;
        Some(last.input_rows as f64 / secs)
    }

    pub fn processing_ms(&self) -> Option<i64> {
        self.batches.back().map(|p| p.committed_at - p.planned_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(batch: u64, planned_at: i64, committed_at: i64, input_rows: u64) -> BatchProgress {
        BatchProgress { batch, planned_at, committed_at, input_rows, output_records: 0, watermark: None, lag: Vec::new() }
    }

    #[test]
    fn rates_as_spark_reports_them() {
        let mut r = Recent::default();
        r.push(p(0, 1_000, 1_100, 50));
        assert_eq!(r.input_rows_per_sec(), None);
        assert_eq!(r.processed_rows_per_sec(), Some(500.0));
        r.push(p(1, 3_000, 3_250, 100));
        assert_eq!(r.input_rows_per_sec(), Some(50.0));
        assert_eq!(r.processed_rows_per_sec(), Some(400.0));
        assert_eq!(r.processing_ms(), Some(250));
        for i in 0..30 {
            r.push(p(i, 0, 0, 0));
        }
        assert_eq!(r.batches.len(), KEPT);
    }
}
