//! A partition's log: segmented, sparsely indexed, recovered on open;
//! old segments deleted by retention, closed ones compacted by key.

mod cleaner;
mod partition_log;
mod reader;
mod retention;
mod segment;

pub use cleaner::{CleanProgress, CleanSummary, Cleaner, CleanerLimits, dirty_bytes};
pub use partition_log::{LogConfig, LogError, PartitionLog, Recovery};
pub use retention::{CleanupPolicy, Ratio, RetentionOutcome};
pub use segment::{Segment, parse_segment_file, segment_file};
