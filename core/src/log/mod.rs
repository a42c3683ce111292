//! A partition's log: segmented, sparsely indexed, recovered on open.

mod partition_log;
mod reader;
mod segment;

pub use partition_log::{LogConfig, LogError, PartitionLog, Recovery};
pub use segment::{Segment, parse_segment_file, segment_file};
