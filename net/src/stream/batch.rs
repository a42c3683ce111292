//! One micro-batch as a job on the cluster: the batch plan reads exactly
//! the logged ranges (and, for a stream-table join, each table's logged
//! snapshot), the node's driver runs it on every live node's workers (its
//! topic scans on the partitions' leaders), and `finish_batch` folds the
//! result into the state here, on the node that runs the query.

use millrace_core::stream::OffsetEntry;
use millrace_engine::source::TopicRange;
use millrace_engine::stream::{BatchOutput, StreamPlan, StreamState, TableSnapshot};

use crate::batch::service::Jobs;

/// Computes the batch `entry` of query `name` from `state`. Deterministic: the same entry
/// and state give the same records in the same order and the same state,
/// whatever the workers and the number of shuffle partitions
/// (`finish_batch` sorts what the job returns).
pub async fn compute(jobs: &Jobs, name: &str, plan: &StreamPlan, entry: OffsetEntry, state: StreamState) -> Result<BatchOutput, String> {
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
    let batch = plan.batch_plan_for(&inputs, &tables, entry.watermark).map_err(|e| format!("planning batch {}: {e}", entry.batch))?;
    let label = format!("stream {name} batch {}", entry.batch);
    let result = jobs.run(&label, batch, None).await.map_err(|e| format!("running batch {}: {e}", entry.batch))?;
    let plan = plan.clone();
    let job = tokio::task::spawn_blocking(move || {
        plan.finish_batch(&state, &result, entry.watermark).map_err(|e| format!("finishing batch {}: {e}", entry.batch))
    });
    job.await.map_err(|e| format!("the batch's thread failed: {e}"))?
}
