//! The engine's stream plans as a [`StreamLogic`]: `run` executes the
//! batch plan with the Arrow executor (stages, shuffles) and folds the
//! result with `finish_batch`; `reference` evaluates the same batch with
//! the single-threaded reference evaluator (`reference_batch`). The checker
//! replays the offset log through `reference`, so a state or output that
//! depends on how often or where a batch ran fails the seed.

use std::collections::BTreeMap;

use millrace_engine::local::run_local;
use millrace_engine::physical::PlannerConfig;
use millrace_engine::source::{TopicRange, TopicRecord};
use millrace_engine::stream::{MemoryTopic, OutputMode, StreamOptions, StreamPlan, StreamState, TableSnapshot, WithTables};

use super::logic::{BatchOut, InputRecord, OutputRecord, StreamLogic};

/// The input topic's values, as the simulator's producers write them.
pub const SCHEMA: &str = "id BIGINT, page STRING, ts TIMESTAMP";

pub struct EngineLogic {
    pub plan: StreamPlan,
    pub sql: String,
    pub shuffle_partitions: u32,
    /// The `topic_table()`s the query joins, by topic name. They do not
    /// change during a run, so every batch's snapshot is all of each.
    pub tables: BTreeMap<String, MemoryTopic>,
}

/// The `pages` table the join queries read: a category per page key, with
/// an update (the later record wins), a tombstone (k4 is deleted, so its
/// events find no match) and a record without a key (skipped).
fn pages() -> MemoryTopic {
    let rec = |offset: i64, key: Option<&str>, value: Option<&str>| TopicRecord {
        offset,
        timestamp: offset,
        key: key.map(str::to_string),
        value: value.map(str::to_string),
    };
    MemoryTopic::new(&[
        (0, vec![rec(0, Some("k0"), Some(r#"{"category":"home"}"#)), rec(1, Some("k2"), Some(r#"{"category":"shop"}"#)), rec(2, Some("k0"), Some(r#"{"category":"start"}"#))]),
        (1, vec![rec(0, Some("k1"), Some(r#"{"category":"news"}"#)), rec(1, Some("k4"), Some(r#"{"category":"gone"}"#)), rec(2, None, Some(r#"{"category":"nokey"}"#)), rec(3, Some("k4"), None)]),
    ])
}

impl EngineLogic {
    pub fn new(sql: &str, options: StreamOptions, shuffle_partitions: u32) -> EngineLogic {
        let plan = StreamPlan::from_sql(sql, options).unwrap_or_else(|e| panic!("the suite's query does not plan: {e}\n{sql}"));
        EngineLogic { plan, sql: sql.to_string(), shuffle_partitions, tables: BTreeMap::new() }
    }

    /// The queries the suite draws from: windowed counts (tumbling and
    /// sliding, append and update, with a watermark), a complete-mode
    /// aggregate without one, a stateless filter, and joins with a table
    /// (a stateless left join; a windowed count per category through an
    /// inner join).
    pub fn pick(n: u64, delay_ms: i64) -> EngineLogic {
        let from = format!("topic('events', 'json', '{SCHEMA}')");
        let table = "topic_table('pages', 'json', 'category STRING')";
        if n % 6 >= 4 {
            let (sql, options) = if n % 6 == 4 {
                (format!("INSERT INTO out SELECT e.id, e.page, t.category FROM {from} e LEFT JOIN {table} t ON e.page = t.key"), StreamOptions::new(OutputMode::Append))
            } else {
                (
                    format!("INSERT INTO out SELECT window_start, t.category, count(*) AS n, max(e.id) AS last FROM {from} e JOIN {table} t ON e.page = t.key GROUP BY window(e.ts, '1 second'), t.category"),
                    StreamOptions::new(OutputMode::Update).with_watermark("ts", delay_ms),
                )
            };
            let mut logic = EngineLogic::new(&sql, options, 1 + (n / 6 % 3) as u32);
            logic.tables.insert("pages".to_string(), pages());
            return logic;
        }
        let (sql, options) = match n % 4 {
            0 => (
                format!("INSERT INTO out SELECT window_start, window_end, page, count(*) AS n, sum(id) AS s FROM {from} GROUP BY window(ts, '1 second'), page"),
                StreamOptions::new(OutputMode::Append).with_watermark("ts", delay_ms),
            ),
            1 => (
                format!("INSERT INTO out SELECT window_start, page, count(*) AS n, max(id) AS last FROM {from} GROUP BY window(ts, '2 seconds', '500 milliseconds'), page"),
                StreamOptions::new(OutputMode::Update).with_watermark("ts", delay_ms),
            ),
            2 => (
                format!("INSERT INTO out SELECT page, count(*) AS n, min(id) AS lo, max(id) AS hi, avg(id) AS mean FROM {from} GROUP BY page"),
                StreamOptions::new(OutputMode::Complete),
            ),
            _ => (format!("INSERT INTO out SELECT id, page, ts FROM {from} WHERE id % 3 <> 0"), StreamOptions::new(OutputMode::Append)),
        };
        EngineLogic::new(&sql, options, 1 + (n / 4 % 3) as u32)
    }
}

fn by_partition(input: &[InputRecord]) -> Vec<(i32, Vec<TopicRecord>)> {
    let mut parts: BTreeMap<i32, Vec<TopicRecord>> = BTreeMap::new();
    for r in input {
        parts.entry(r.partition).or_default().push(TopicRecord {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: Some(r.value.clone()),
        });
    }
    parts.into_iter().collect()
}

fn records(out: &[millrace_engine::stream::OutputRecord]) -> Vec<OutputRecord> {
    out.iter().map(|r| (r.key.clone(), r.value.clone())).collect()
}

impl StreamLogic for EngineLogic {
    type State = StreamState;

    fn stateful(&self) -> bool {
        self.plan.is_stateful()
    }

    fn watermark_delay_ms(&self) -> Option<i64> {
        self.plan.watermark_delay_ms()
    }

    fn run(&self, state: &StreamState, input: &[InputRecord], watermark: Option<i64>) -> Result<BatchOut<StreamState>, String> {
        let parts = by_partition(input);
        let ranges: Vec<TopicRange> = parts
            .iter()
            .map(|(p, rs)| TopicRange { partition: *p, start: rs[0].offset, end: rs[rs.len() - 1].offset + 1 })
            .collect();
        let topic = MemoryTopic::new(&parts);
        let snapshot: TableSnapshot = self.tables.iter().map(|(name, t)| (name.clone(), t.whole())).collect();
        let plan = self.plan.batch_plan_with_tables(&ranges, &snapshot, watermark).map_err(|e| e.to_string())?;
        let config = PlannerConfig { shuffle_partitions: self.shuffle_partitions };
        let reader = WithTables { stream: &topic, tables: &self.tables };
        let result = run_local(&plan, config, Some(&reader)).map_err(|e| e.to_string())?;
        let out = self.plan.finish_batch(state, &result, watermark).map_err(|e| e.to_string())?;
        Ok(BatchOut { records: records(&out.records), state: out.state, max_event_time: out.max_event_time })
    }

    fn reference(&self, state: &StreamState, input: &[InputRecord], watermark: Option<i64>) -> BatchOut<StreamState> {
        let out = self
            .plan
            .reference_batch_with_tables(state, &by_partition(input), &self.tables, watermark)
            .unwrap_or_else(|e| panic!("the reference evaluator failed: {e}"));
        BatchOut { records: records(&out.records), state: out.state, max_event_time: out.max_event_time }
    }

    fn describe(&self) -> String {
        format!("{} ({:?}, watermark delay {:?}, {} shuffle partitions)", self.sql, self.plan.options().output_mode, self.plan.watermark_delay_ms(), self.shuffle_partitions)
    }
}
