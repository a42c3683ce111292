//! How a stream query emits results and when event time counts as late.

use serde::{Deserialize, Serialize};

/// Spark's output modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputMode {
    /// Each result row once, when it is final: input rows of a stateless
    /// query; a window's aggregate once the watermark passes its end.
    Append,
    /// The groups a batch changed, with their new values.
    Update,
    /// Every group after every batch (aggregations only).
    Complete,
}

/// Rows whose `column` is below (max event time seen) - `delay_ms` are
/// late: dropped, and windows ending at or before that are final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub column: String,
    pub delay_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    pub output_mode: OutputMode,
    pub watermark: Option<Watermark>,
}

impl StreamOptions {
    pub fn new(output_mode: OutputMode) -> StreamOptions {
        StreamOptions {
            output_mode,
            watermark: None,
        }
    }

    /// The same, with a watermark on `column` `delay_ms` behind.
    pub fn with_watermark(self, column: &str, delay_ms: i64) -> StreamOptions {
        StreamOptions {
            watermark: Some(Watermark {
                column: column.to_string(),
                delay_ms,
            }),
            ..self
        }
    }
}
