//! What one micro-batch computes, seen from the simulator: the real path
//! (`run`) and a reference for the checker (`reference`), each folding the
//! batch's input into the state left by the batch before.

use std::collections::BTreeMap;
use std::fmt::Debug;

/// One input record as a batch reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    pub partition: i32,
    pub offset: i64,
    /// Kafka's record timestamp (ms).
    pub timestamp: i64,
    pub key: Option<String>,
    pub value: String,
}

/// One output record: what the sink writes.
pub type OutputRecord = (Option<String>, String);

#[derive(Debug, Clone, PartialEq)]
pub struct BatchOut<S> {
    pub records: Vec<OutputRecord>,
    pub state: S,
    pub max_event_time: Option<i64>,
}

pub trait StreamLogic {
    type State: Clone + PartialEq + Debug + Default;
    fn stateful(&self) -> bool;
    fn watermark_delay_ms(&self) -> Option<i64>;
    /// The production path; an error fails the batch (it is retried).
    fn run(&self, state: &Self::State, input: &[InputRecord], watermark: Option<i64>) -> Result<BatchOut<Self::State>, String>;
    /// What the batch must produce, computed independently.
    fn reference(&self, state: &Self::State, input: &[InputRecord], watermark: Option<i64>) -> BatchOut<Self::State>;
    fn describe(&self) -> String;
}

/// A tumbling-window count per record key with a watermark, append mode:
/// a window's count is written once, when the watermark passes its end;
/// records older than the watermark are dropped. Small enough to be
/// obviously right, stateful enough to catch state taken from the wrong
/// batch.
#[derive(Debug, Clone)]
pub struct WindowedCount {
    pub window_ms: i64,
    pub delay_ms: i64,
}

impl StreamLogic for WindowedCount {
    /// (window start, key) → count of the windows not yet final.
    type State = BTreeMap<(i64, String), u64>;

    fn stateful(&self) -> bool {
        true
    }

    fn watermark_delay_ms(&self) -> Option<i64> {
        Some(self.delay_ms)
    }

    fn run(&self, state: &Self::State, input: &[InputRecord], watermark: Option<i64>) -> Result<BatchOut<Self::State>, String> {
        Ok(self.reference(state, input, watermark))
    }

    fn reference(&self, state: &Self::State, input: &[InputRecord], watermark: Option<i64>) -> BatchOut<Self::State> {
        let mut state = state.clone();
        let mut max_event_time = None;
        for r in input {
            max_event_time = max_event_time.max(Some(r.timestamp));
            if watermark.is_some_and(|w| r.timestamp < w) {
                continue; // late
            }
            let start = r.timestamp.div_euclid(self.window_ms) * self.window_ms;
            *state.entry((start, r.key.clone().unwrap_or_default())).or_default() += 1;
        }
        let mut records = Vec::new();
        if let Some(w) = watermark {
            let done: Vec<(i64, String)> = state.keys().filter(|(start, _)| start + self.window_ms <= w).cloned().collect();
            for k in done {
                let n = state.remove(&k).expect("present");
                records.push((Some(k.1.clone()), format!("{{\"window_start\":{},\"key\":\"{}\",\"n\":{n}}}", k.0, k.1)));
            }
        }
        BatchOut { records, state, max_event_time }
    }

    fn describe(&self) -> String {
        format!("windowed count per key ({} ms windows, watermark delay {} ms, append)", self.window_ms, self.delay_ms)
    }
}
