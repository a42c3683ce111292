//! A stream query's definition, stored as JSON in `__millrace_streams`:
//! what a node needs to resume the query after a restart without the
//! client that started it.

use millrace_core::stream::{QueryConfig, StartAt, Trigger};
use millrace_engine::stream::{OutputMode, StreamOptions, StreamPlan};
use serde::{Deserialize, Serialize};

use crate::batch::proto::StreamSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryDef {
    pub spec: StreamSpec,
    /// The node that runs it.
    pub owner: u32,
    /// The idempotent producer identity of its output, allocated once when
    /// the query is first defined: every run and re-run of a batch writes
    /// under it, so the broker drops chunks written before.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The input topics, comma-separated (for display: the plan says
    /// which topics the query reads).
    pub input_topic: String,
    pub sink_topic: String,
    /// The sink's partition count when the query was defined: output
    /// partitions are a hash of the key modulo this, fixed, so a re-run
    /// batch writes each record where its first attempt did.
    pub sink_partitions: u32,
    pub created_at: i64,
}

/// Spark's default `minBatchesToRetain`.
pub const DEFAULT_RETAIN_BATCHES: u64 = 100;

/// The characters a query name may have: it is a record key and a prefix
/// of state keys (`name/version`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("bad query name {name:?}: use 1 to 200 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

impl QueryDef {
    pub fn options(&self) -> StreamOptions {
        StreamOptions { output_mode: self.spec.output_mode, watermark: self.spec.watermark.clone() }
    }

    /// The analysed query; an error names what the SQL gets wrong.
    pub fn plan(&self) -> Result<StreamPlan, String> {
        match &self.spec.dataset {
            Some(d) => StreamPlan::from_plan(d.plan.clone(), &d.sink, self.options()),
            None => StreamPlan::from_sql(&self.spec.sql, self.options()),
        }
        .map_err(|e| e.to_string())
    }

    /// How many batches the offset and commit logs keep behind the last
    /// commit (Spark's `minBatchesToRetain`).
    pub fn retain_batches(&self) -> u64 {
        self.spec.retain_batches.unwrap_or(DEFAULT_RETAIN_BATCHES).max(1)
    }

    /// The coordinator's configuration for this query.
    pub fn config(&self, plan: &StreamPlan) -> QueryConfig {
        QueryConfig {
            inputs: plan.input_topics().to_vec(),
            tables: plan.table_topics().to_vec(),
            trigger: self.spec.trigger,
            start_at: self.spec.start_at,
            watermark_delay_ms: plan.watermark_delay_ms(),
            stateful: plan.is_stateful(),
            max_records_per_batch: self.spec.max_records_per_batch,
            ..QueryConfig::default()
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<QueryDef, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("a query definition does not decode: {e}"))
    }

    /// Whether `other` computes the same thing (so it may resume these logs).
    pub fn same_query(&self, spec: &StreamSpec) -> bool {
        self.spec.sql.trim() == spec.sql.trim() && self.spec.dataset == spec.dataset && self.spec.output_mode == spec.output_mode && self.spec.watermark == spec.watermark
    }
}

pub fn trigger_text(t: Trigger) -> String {
    match t {
        Trigger::Interval { interval_ms } if interval_ms > 0 && interval_ms % 1000 == 0 => format!("every {}s", interval_ms / 1000),
        Trigger::Interval { interval_ms } => format!("every {interval_ms}ms"),
        Trigger::Once => "once".into(),
        Trigger::AvailableNow => "available-now".into(),
    }
}

pub fn mode_text(m: OutputMode) -> String {
    match m {
        OutputMode::Append => "append",
        OutputMode::Update => "update",
        OutputMode::Complete => "complete",
    }
    .into()
}

/// `1s`, `500ms`, `2m`, `once`, `available-now`.
pub fn parse_trigger(s: &str) -> Result<Trigger, String> {
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        "once" => return Ok(Trigger::Once),
        "available-now" | "availablenow" => return Ok(Trigger::AvailableNow),
        _ => {}
    }
    let bad = || format!("bad trigger {s:?}: write an interval (500ms, 1s, 2m), once or available-now");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" | "" => n * 1_000,
        "m" | "min" => n * 60_000,
        _ => return Err(bad()),
    };
    Ok(Trigger::Interval { interval_ms: ms })
}

/// `ts 10 seconds`: a column, then an interval.
pub fn parse_watermark(s: &str) -> Result<millrace_engine::stream::Watermark, String> {
    let s = s.trim();
    let bad = |why: String| format!("bad watermark {s:?}: {why} (write a column and a delay, e.g. 'ts 10 seconds')");
    let (col, delay) = s.split_once(char::is_whitespace).ok_or_else(|| bad("no delay".into()))?;
    let delay_ms = millrace_engine::time::parse_interval(delay.trim()).map_err(|e| bad(e.to_string()))?;
    Ok(millrace_engine::stream::Watermark { column: col.to_string(), delay_ms })
}

pub fn parse_mode(s: &str) -> Result<OutputMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "append" => Ok(OutputMode::Append),
        "update" => Ok(OutputMode::Update),
        "complete" => Ok(OutputMode::Complete),
        _ => Err(format!("bad output mode {s:?}: append, update or complete")),
    }
}

pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => Err(format!("bad start {s:?}: earliest or latest")),
    }
}
