//! One micro-batch computed by the engine, in this process, on a blocking
//! thread: the batch job reads exactly the logged ranges through the Kafka
//! client (and, for a stream-table join, each table's logged snapshot),
//! and `finish_batch` folds its result into the state.

use millrace_core::stream::OffsetEntry;
use millrace_engine::physical::PlannerConfig;
use millrace_engine::source::TopicRange;
use millrace_engine::stream::{BatchOutput, StreamPlan, StreamState, TableSnapshot};

use crate::batch::topics::KafkaTopics;

/// Reduce partitions of a batch's shuffle: batches are small and run on
/// one thread here.
const SHUFFLE_PARTITIONS: u32 = 2;

/// Computes the batch `entry` from `state`. Deterministic: the same entry
/// and state give the same records in the same order and the same state.
pub async fn compute(plan: StreamPlan, entry: OffsetEntry, state: StreamState, bootstrap: String) -> Result<BatchOutput, String> {
    let mut inputs: std::collections::BTreeMap<String, Vec<TopicRange>> = std::collections::BTreeMap::new();
    for r in entry.ranges.iter().filter(|r| plan.input_topics().contains(&r.topic)) {
        inputs.entry(r.topic.clone()).or_default().push(TopicRange { partition: r.partition, start: r.start, end: r.end });
    }
    let mut tables = TableSnapshot::new();
    for r in &entry.tables {
        tables.entry(r.topic.clone()).or_default().push(TopicRange { partition: r.partition, start: r.start, end: r.end });
    }
    if let Some(t) = plan.table_topics().iter().find(|t| !tables.contains_key(*t)) {
        // An entry without the snapshot would join an empty table.
        return Err(format!("batch {}'s offset log entry has no snapshot of table topic {t}", entry.batch));
    }
    let job = tokio::task::spawn_blocking(move || {
        let topics = KafkaTopics::new(&bootstrap);
        let batch = plan.batch_plan_for(&inputs, &tables, entry.watermark).map_err(|e| format!("planning batch {}: {e}", entry.batch))?;
        let result = millrace_engine::local::run_local(&batch, PlannerConfig { shuffle_partitions: SHUFFLE_PARTITIONS }, Some(&topics))
            .map_err(|e| format!("running batch {}: {e}", entry.batch))?;
        plan.finish_batch(&state, &result, entry.watermark).map_err(|e| format!("finishing batch {}: {e}", entry.batch))
    });
    job.await.map_err(|e| format!("the batch's thread failed: {e}"))?
}
