//! Stream queries, the engine half: analysis errors, and the properties
//! that make micro-batches an implementation detail — folding batches in
//! complete mode equals the batch engine over all input at once; update
//! mode's last value per key equals the same; append mode with a
//! watermark writes each window once, after the watermark passes its end,
//! without late rows; the executor's batch equals the reference's.

use std::collections::BTreeMap;

use millrace_engine::local::run_local;
use millrace_engine::physical::PlannerConfig;
use millrace_engine::reference::evaluate;
use millrace_engine::source::{TopicRange, TopicRecord};
use millrace_engine::sql::{Catalog, plan_sql};
use millrace_engine::stream::{
    BatchOutput, MemoryTopic, OutputMode, OutputRecord, StreamOptions, StreamPlan, StreamState,
    output_record,
};
use proptest::prelude::*;

const SCHEMA: &str = "'json', 'page STRING, ts TIMESTAMP, v BIGINT'";

fn insert(select: &str) -> String {
    format!("INSERT INTO out {select}")
}

fn grouped() -> String {
    format!(
        "SELECT page, count(*) AS n, count(v) AS nv, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS mean FROM topic('pv', {SCHEMA}) GROUP BY page"
    )
}

fn windowed(window: &str) -> String {
    format!(
        "SELECT window_start, window_end, page, count(*) AS n, sum(v) AS s, max(ts) AS last, avg(v) AS mean FROM topic('pv', {SCHEMA}) WHERE page <> 'skip' GROUP BY window(ts, {window}), page"
    )
}

fn global() -> String {
    format!("SELECT count(*) AS n, min(ts) AS first, sum(v) AS s FROM topic('pv', {SCHEMA})")
}

// ---------------------------------------------------------------- inputs

/// One event: (partition, page, event time, v, whether the value is garbage).
type Event = (i32, usize, i64, Option<i64>, bool);

fn events(max: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (
            0i32..2,
            0usize..4,
            -30_000i64..30_000,
            prop::option::of(-5i64..20),
            prop::bool::weighted(0.05),
        ),
        0..max,
    )
    .prop_map(|v| {
        // Event time mostly rises with position, with jitter: late rows.
        v.into_iter()
            .enumerate()
            .map(|(i, (p, page, jitter, x, bad))| (p, page, i as i64 * 4_000 + jitter, x, bad))
            .collect()
    })
}

/// Records per partition, offsets from 0.
fn records(events: &[Event]) -> BTreeMap<i32, Vec<TopicRecord>> {
    let pages = ["home", "cart", "skip", "help"];
    let mut out: BTreeMap<i32, Vec<TopicRecord>> = BTreeMap::new();
    for (p, page, ts, v, bad) in events {
        let list = out.entry(*p).or_default();
        let value = if *bad {
            "{not json".to_string()
        } else {
            let v = v.map(|x| x.to_string()).unwrap_or_else(|| "null".into());
            format!(r#"{{"page":"{}","ts":{ts},"v":{v}}}"#, pages[*page])
        };
        list.push(TopicRecord {
            offset: list.len() as i64,
            timestamp: 0,
            key: None,
            value: Some(value),
        });
    }
    out
}

/// Splits each partition at the same fractions: one range per partition
/// per batch (empty ones left out, so a batch may read nothing).
fn batches(recs: &BTreeMap<i32, Vec<TopicRecord>>, cuts: &[u8]) -> Vec<Vec<TopicRange>> {
    let mut cuts: Vec<u8> = cuts.iter().map(|c| c % 101).collect();
    cuts.sort();
    cuts.push(100);
    let mut from = 0u8;
    let mut out = Vec::new();
    for c in cuts {
        let mut ranges = Vec::new();
        for (p, rs) in recs {
            let n = rs.len() as i64;
            let (s, e) = (n * from as i64 / 100, n * c as i64 / 100);
            if e > s {
                ranges.push(TopicRange {
                    partition: *p,
                    start: s,
                    end: e,
                });
            }
        }
        out.push(ranges);
        from = c;
    }
    out
}

fn slice(
    recs: &BTreeMap<i32, Vec<TopicRecord>>,
    ranges: &[TopicRange],
) -> Vec<(i32, Vec<TopicRecord>)> {
    ranges
        .iter()
        .map(|r| {
            (
                r.partition,
                recs[&r.partition][r.start as usize..r.end as usize].to_vec(),
            )
        })
        .collect()
}

// ------------------------------------------------------------ comparing

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
        },
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && close(v1, v2))
        }
        (x, y) => x == y,
    }
}

fn same_records(a: &[OutputRecord], b: &[OutputRecord]) -> Result<(), String> {
    let msg = || format!("records differ:\n{a:#?}\nexpected:\n{b:#?}");
    if a.len() != b.len() {
        return Err(msg());
    }
    for (x, y) in a.iter().zip(b) {
        let (vx, vy): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&x.value).map_err(|e| e.to_string())?,
            serde_json::from_str(&y.value).map_err(|e| e.to_string())?,
        );
        if x.key != y.key || !close(&vx, &vy) {
            return Err(msg());
        }
    }
    Ok(())
}

/// The batch engine's answer over all input: the SELECT by the reference
/// evaluator, as records keyed by the first `g` columns.
fn batch_answer(
    select: &str,
    recs: &BTreeMap<i32, Vec<TopicRecord>>,
    g: usize,
) -> Vec<OutputRecord> {
    let all: Vec<(i32, Vec<TopicRecord>)> = recs.iter().map(|(p, r)| (*p, r.clone())).collect();
    let ranges: Vec<TopicRange> = all
        .iter()
        .map(|(p, r)| TopicRange {
            partition: *p,
            start: 0,
            end: r.len() as i64,
        })
        .collect();
    let mut catalog = Catalog::default();
    catalog.topics = Some(Box::new(move |_| Ok(ranges.clone())));
    let plan = plan_sql(select, &catalog).unwrap();
    let schema = plan.schema().unwrap();
    let rows = evaluate(&plan, Some(&MemoryTopic::new(&all))).unwrap();
    let mut out: Vec<OutputRecord> = rows
        .iter()
        .map(|r| output_record(&schema, r, Some(&r[..g])))
        .collect();
    out.sort();
    out
}

/// One batch by the executor, checked against the reference batch.
fn run_batch(
    q: &StreamPlan,
    state: &StreamState,
    recs: &BTreeMap<i32, Vec<TopicRecord>>,
    ranges: &[TopicRange],
    watermark: Option<i64>,
    shuffle_partitions: u32,
) -> Result<BatchOutput, String> {
    let topic = MemoryTopic::new(
        &recs
            .iter()
            .map(|(p, r)| (*p, r.clone()))
            .collect::<Vec<_>>(),
    );
    let plan = q.batch_plan(ranges, watermark).map_err(|e| e.to_string())?;
    let result = run_local(&plan, PlannerConfig { shuffle_partitions }, Some(&topic))
        .map_err(|e| e.to_string())?;
    let out = q
        .finish_batch(state, &result, watermark)
        .map_err(|e| e.to_string())?;
    let reference = q
        .reference_batch(state, &slice(recs, ranges), watermark)
        .map_err(|e| e.to_string())?;
    same_records(&out.records, &reference.records)?;
    if out.max_event_time != reference.max_event_time
        || out.input_rows != reference.input_rows
        || out.state.groups() != reference.state.groups()
    {
        return Err(format!("executor {out:?}\nreference {reference:?}"));
    }
    Ok(out)
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn complete_mode_folds_to_the_batch_answer(
        evs in events(40),
        cuts in prop::collection::vec(any::<u8>(), 0..5),
        which in 0usize..4,
        sp in 1u32..4,
    ) {
        let (select, g) = [
            (grouped(), 1),
            (windowed("'10 seconds'"), 3),
            (windowed("'20 seconds', '5 seconds'"), 3),
            (global(), 0),
        ][which].clone();
        let q = StreamPlan::from_sql(&insert(&select), StreamOptions::new(OutputMode::Complete)).unwrap();
        let recs = records(&evs);
        let mut state = StreamState::default();
        let mut last = Vec::new();
        for ranges in batches(&recs, &cuts) {
            let out = run_batch(&q, &state, &recs, &ranges, None, sp).map_err(TestCaseError::fail)?;
            state = out.state;
            last = out.records;
        }
        let expected = batch_answer(&select, &recs, g);
        same_records(&last, &expected).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn update_mode_last_value_per_key_is_the_batch_answer(
        evs in events(40),
        cuts in prop::collection::vec(any::<u8>(), 0..5),
        windowed_query in any::<bool>(),
    ) {
        let (select, g) = if windowed_query { (windowed("'15 seconds'"), 3) } else { (grouped(), 1) };
        let q = StreamPlan::from_sql(&insert(&select), StreamOptions::new(OutputMode::Update)).unwrap();
        let recs = records(&evs);
        let mut state = StreamState::default();
        let mut latest: BTreeMap<Option<String>, OutputRecord> = BTreeMap::new();
        for ranges in batches(&recs, &cuts) {
            let out = run_batch(&q, &state, &recs, &ranges, None, 2).map_err(TestCaseError::fail)?;
            state = out.state;
            for r in out.records {
                latest.insert(r.key.clone(), r);
            }
        }
        let got: Vec<OutputRecord> = latest.into_values().collect();
        same_records(&got, &batch_answer(&select, &recs, g)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn append_mode_writes_each_window_once_after_the_watermark(
        evs in events(50),
        cuts in prop::collection::vec(any::<u8>(), 1..6),
        delay in 0i64..20_000,
    ) {
        let select = format!(
            "SELECT window_start, window_end, count(*) AS n FROM topic('pv', {SCHEMA}) GROUP BY window(ts, '10 seconds')"
        );
        let opts = StreamOptions::new(OutputMode::Append).with_watermark("ts", delay);
        let q = StreamPlan::from_sql(&insert(&select), opts).unwrap();
        let recs = records(&evs);
        // The model: late rows dropped; windows counted; a window written
        // (and forgotten) in the first batch whose watermark is >= its end.
        let mut model: BTreeMap<i64, i64> = BTreeMap::new();
        let mut expected: Vec<(i64, i64)> = Vec::new();
        let mut state = StreamState::default();
        let mut watermark: Option<i64> = None;
        let mut written: Vec<(i64, i64)> = Vec::new();
        for ranges in batches(&recs, &cuts) {
            let mut max_t: Option<i64> = None;
            for (_, rs) in slice(&recs, &ranges) {
                for r in rs {
                    let v: serde_json::Value = match serde_json::from_str(r.value.as_deref().unwrap_or("")) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    let t = v["ts"].as_i64().unwrap();
                    if watermark.is_some_and(|w| t < w) {
                        continue;
                    }
                    *model.entry(t.div_euclid(10_000) * 10_000).or_default() += 1;
                    max_t = Some(max_t.map_or(t, |m| m.max(t)));
                }
            }
            if let Some(w) = watermark {
                let done: Vec<i64> = model.keys().copied().filter(|s| s + 10_000 <= w).collect();
                for s in done {
                    expected.push((s, model.remove(&s).unwrap_or(0)));
                }
            }
            let out = run_batch(&q, &state, &recs, &ranges, watermark, 2).map_err(TestCaseError::fail)?;
            prop_assert_eq!(out.max_event_time, max_t);
            for r in &out.records {
                let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
                let start = millrace_engine::time::parse_rfc3339(v["window_start"].as_str().unwrap()).unwrap();
                let end = millrace_engine::time::parse_rfc3339(v["window_end"].as_str().unwrap()).unwrap();
                prop_assert!(watermark.is_some_and(|w| end <= w), "window ending {} written at watermark {:?}", end, watermark);
                written.push((start, v["n"].as_i64().unwrap()));
            }
            state = out.state;
            watermark = q.advance_watermark(watermark, out.max_event_time);
        }
        written.sort();
        expected.sort();
        prop_assert_eq!(written, expected);
        prop_assert_eq!(state.groups(), model.len());
    }
}

// ------------------------------------------------------------- examples

fn example_records() -> BTreeMap<i32, Vec<TopicRecord>> {
    // (partition, page, ts, v, garbage)
    records(&[
        (0, 0, 1_000, Some(1), false),
        (0, 1, 9_999, Some(2), false),
        (1, 0, 10_000, None, false),
        (1, 0, 25_000, Some(4), false),
        (0, 1, 3_000, Some(5), false),
        (0, 0, 0, None, true),
    ])
}

#[test]
fn a_batch_is_the_same_when_run_again_and_its_state_round_trips() {
    let q = StreamPlan::from_sql(
        &insert(&windowed("'10 seconds', '5 seconds'")),
        StreamOptions::new(OutputMode::Update).with_watermark("ts", 2_000),
    )
    .unwrap();
    let recs = example_records();
    let ranges = [
        TopicRange {
            partition: 0,
            start: 0,
            end: 3,
        },
        TopicRange {
            partition: 1,
            start: 0,
            end: 2,
        },
    ];
    let a = run_batch(&q, &StreamState::default(), &recs, &ranges, None, 3).unwrap();
    let b = run_batch(&q, &StreamState::default(), &recs, &ranges, None, 1).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.state.to_bytes(), b.state.to_bytes());
    assert_eq!(
        StreamState::from_bytes(&a.state.to_bytes()).unwrap(),
        a.state
    );
    assert_eq!(a.max_event_time, Some(25_000));
    // The plan itself is serde data.
    let json = serde_json::to_string(&q).unwrap();
    assert_eq!(serde_json::from_str::<StreamPlan>(&json).unwrap(), q);
    assert_eq!(
        (
            q.input_topic(),
            q.sink_topic(),
            q.is_stateful(),
            q.watermark_delay_ms()
        ),
        ("pv", "out", true, Some(2_000))
    );
}

#[test]
fn output_records_name_their_group_and_format_times() {
    let q = StreamPlan::from_sql(
        &insert(&format!(
            "SELECT window_start, window_end, page, count(*) AS n FROM topic('pv', {SCHEMA}) GROUP BY window(ts, '10 seconds'), page HAVING count(*) > 1"
        )),
        StreamOptions::new(OutputMode::Complete),
    )
    .unwrap();
    let recs = example_records();
    let ranges = [
        TopicRange {
            partition: 0,
            start: 0,
            end: 3,
        },
        TopicRange {
            partition: 1,
            start: 0,
            end: 2,
        },
    ];
    let out = run_batch(&q, &StreamState::default(), &recs, &ranges, None, 2).unwrap();
    assert_eq!(
        out.records,
        vec![OutputRecord {
            key: Some(r#"["1970-01-01T00:00:00.000Z","1970-01-01T00:00:10.000Z","cart"]"#.into()),
            value: r#"{"window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:00:10.000Z","page":"cart","n":2}"#.into(),
        }]
    );
    // 4 groups: the HAVING filter hides the others, the state keeps them.
    assert_eq!(out.state.groups(), 4);
    assert_eq!(out.input_rows, 5);
}

#[test]
fn stateless_queries_and_key_value_columns() {
    let q = StreamPlan::from_sql(
        &insert(&format!(
            "SELECT page AS key, CAST(v * 10 AS STRING) AS value FROM topic('pv', {SCHEMA}) WHERE v IS NOT NULL"
        )),
        StreamOptions::new(OutputMode::Append),
    )
    .unwrap();
    assert!(!q.is_stateful());
    let recs = example_records();
    let ranges = [TopicRange {
        partition: 0,
        start: 0,
        end: 4,
    }];
    let out = run_batch(&q, &StreamState::default(), &recs, &ranges, None, 2).unwrap();
    let kv: Vec<(Option<&str>, &str)> = out
        .records
        .iter()
        .map(|r| (r.key.as_deref(), r.value.as_str()))
        .collect();
    assert_eq!(
        kv,
        vec![
            (Some("cart"), "20"),
            (Some("cart"), "50"),
            (Some("home"), "10")
        ]
    );
    assert_eq!(out.state.groups(), 0);
}

#[test]
fn update_mode_evicts_windows_the_watermark_passed() {
    let q = StreamPlan::from_sql(
        &insert(&windowed("'10 seconds'")),
        StreamOptions::new(OutputMode::Update).with_watermark("ts", 0),
    )
    .unwrap();
    let recs = example_records();
    let first = [TopicRange {
        partition: 0,
        start: 0,
        end: 2,
    }];
    let a = run_batch(&q, &StreamState::default(), &recs, &first, None, 2).unwrap();
    assert_eq!(a.state.groups(), 2);
    let wm = q.advance_watermark(None, a.max_event_time);
    assert_eq!(wm, Some(9_999));
    // Offset 2 of partition 0 (ts 3000) is late now; partition 1's are not.
    let second = [
        TopicRange {
            partition: 0,
            start: 2,
            end: 3,
        },
        TopicRange {
            partition: 1,
            start: 0,
            end: 2,
        },
    ];
    let b = run_batch(&q, &a.state, &recs, &second, wm, 2).unwrap();
    assert_eq!(b.input_rows, 2);
    assert_eq!(b.records.len(), 2);
    // The windows [0, 10 s) are not evicted yet (end 10000 > 9999).
    assert_eq!(b.state.groups(), 4);
    let c = run_batch(
        &q,
        &b.state,
        &recs,
        &[],
        q.advance_watermark(wm, b.max_event_time),
        2,
    )
    .unwrap();
    assert!(c.records.is_empty());
    // Watermark 25000: windows ending at 10 s and 20 s are gone.
    assert_eq!(c.state.groups(), 1);
}

#[test]
fn with_a_watermark_rows_without_event_time_never_count() {
    let q = StreamPlan::from_sql(
        &insert(&grouped()),
        StreamOptions::new(OutputMode::Update).with_watermark("ts", 1_000),
    )
    .unwrap();
    let recs = example_records();
    // Offset 3 of partition 0 is not JSON: its ts (and page) are NULL.
    let ranges = [TopicRange {
        partition: 0,
        start: 0,
        end: 4,
    }];
    let out = run_batch(&q, &StreamState::default(), &recs, &ranges, None, 2).unwrap();
    assert_eq!((out.input_rows, out.state.groups()), (3, 2));
    assert_eq!(out.max_event_time, Some(9_999));
}

// ----------------------------------------------------------------- errors

fn err(sql: &str, opts: StreamOptions) -> String {
    match StreamPlan::from_sql(sql, opts) {
        Ok(_) => panic!("{sql} should be refused"),
        Err(e) => e.to_string(),
    }
}

fn mode(m: OutputMode) -> StreamOptions {
    StreamOptions::new(m)
}

#[test]
fn append_mode_needs_a_watermark_on_the_windows_time_column() {
    let e = err(&insert(&windowed("'1 minute'")), mode(OutputMode::Append));
    assert!(e.contains("append mode needs a watermark"), "{e}");
    let e = err(
        &insert(&grouped()),
        mode(OutputMode::Append).with_watermark("ts", 10),
    );
    assert!(
        e.contains("append mode needs a watermark on the window's time column"),
        "{e}"
    );
}

#[test]
fn complete_mode_needs_an_aggregation() {
    let e = err(
        &insert(&format!("SELECT page FROM topic('pv', {SCHEMA})")),
        mode(OutputMode::Complete),
    );
    assert!(
        e.contains("complete output mode needs an aggregation"),
        "{e}"
    );
}

#[test]
fn order_by_limit_distinct_and_stream_joins_are_refused() {
    let e = err(
        &insert(&format!("{} ORDER BY n", grouped())),
        mode(OutputMode::Complete),
    );
    assert!(
        e.contains("ORDER BY is not supported in a stream query"),
        "{e}"
    );
    let e = err(
        &insert(&format!("SELECT page FROM topic('pv', {SCHEMA}) LIMIT 3")),
        mode(OutputMode::Append),
    );
    assert!(
        e.contains("LIMIT is not supported in a stream query"),
        "{e}"
    );
    let e = err(
        &insert(&format!("SELECT DISTINCT page FROM topic('pv', {SCHEMA})")),
        mode(OutputMode::Append),
    );
    assert!(
        e.contains("DISTINCT is not supported in a stream query"),
        "{e}"
    );
    let e = err(
        &insert("SELECT a.key FROM topic('a') a JOIN topic('b') b ON a.key = b.key"),
        mode(OutputMode::Append),
    );
    assert!(e.contains("a join of two streams is not supported"), "{e}");
    let e = err(
        &insert("SELECT key FROM topic('a') UNION ALL SELECT key FROM topic_table('b')"),
        mode(OutputMode::Append),
    );
    assert!(e.contains("a UNION with topic_table() is not supported"), "{e}");
    let csv = std::env::temp_dir().join(format!("millrace-union-{}.csv", std::process::id()));
    std::fs::write(&csv, "key\nk1\n").unwrap();
    let e = err(
        &insert(&format!("SELECT key FROM topic('a') UNION ALL SELECT key FROM read_csv('{}')", csv.display())),
        mode(OutputMode::Append),
    );
    let _ = std::fs::remove_file(&csv);
    assert!(e.contains("a stream query must read topics"), "{e}");
}

/// A UNION ALL of topics reads each topic's own ranges in a batch: the
/// engine's batch over two topics equals the reference's, and each
/// topic's rows come from its own records.
#[test]
fn a_union_of_topics_reads_each_topic_s_ranges() {
    use millrace_engine::stream::StreamState;
    let q = StreamPlan::from_sql(
        &insert("SELECT key, count(*) AS n FROM (SELECT key FROM topic('a') UNION ALL SELECT key FROM topic('b')) GROUP BY key"),
        mode(OutputMode::Update),
    )
    .unwrap();
    assert_eq!(q.input_topics(), ["a".to_string(), "b".to_string()]);
    // Topic a: x, x, y at offsets 0-2 of partition 0; topic b: y at 0-1.
    struct Two;
    impl millrace_engine::source::TopicReader for Two {
        fn read(&self, topic: &str, _: i32, start: i64, end: i64) -> millrace_engine::Result<Vec<TopicRecord>> {
            let all: Vec<TopicRecord> = match topic {
                "a" => vec![TopicRecord { offset: 0, timestamp: 0, key: Some("x".into()), value: Some("v".into()) }, TopicRecord { offset: 1, timestamp: 1, key: Some("x".into()), value: Some("v".into()) }, TopicRecord { offset: 2, timestamp: 2, key: Some("y".into()), value: Some("v".into()) }],
                _ => vec![TopicRecord { offset: 0, timestamp: 0, key: Some("y".into()), value: Some("v".into()) }, TopicRecord { offset: 1, timestamp: 1, key: Some("z".into()), value: Some("v".into()) }],
            };
            Ok(all.into_iter().filter(|r| r.offset >= start && r.offset < end).collect())
        }
    }
    let inputs: BTreeMap<String, Vec<TopicRange>> = [
        ("a".to_string(), vec![TopicRange { partition: 0, start: 0, end: 3 }]),
        ("b".to_string(), vec![TopicRange { partition: 0, start: 0, end: 1 }]),
    ]
    .into_iter()
    .collect();
    let plan = q.batch_plan_for(&inputs, &Default::default(), None).unwrap();
    let engine = run_local(&plan, PlannerConfig { shuffle_partitions: 2 }, Some(&Two)).unwrap();
    let out = q.finish_batch(&StreamState::default(), &engine, None).unwrap();
    let mut values: Vec<String> = out.records.iter().map(|r| r.value.clone()).collect();
    values.sort();
    // x twice from a; y once from a and once from b; b's z is past its range.
    assert_eq!(values, vec![r#"{"key":"x","n":2}"#.to_string(), r#"{"key":"y","n":2}"#.to_string()]);
    let reference = evaluate(&plan, Some(&Two)).unwrap();
    assert_eq!(reference.len(), 2);
}

#[test]
fn only_count_sum_min_max_avg_aggregate_a_stream() {
    let e = err(
        &insert(&format!(
            "SELECT page, count(DISTINCT v) AS d FROM topic('pv', {SCHEMA}) GROUP BY page"
        )),
        mode(OutputMode::Update),
    );
    assert!(
        e.contains("count(DISTINCT v) is not supported in a stream query"),
        "{e}"
    );
}

#[test]
fn the_watermark_column_must_exist_and_be_a_timestamp() {
    let e = err(
        &insert(&grouped()),
        mode(OutputMode::Update).with_watermark("when", 10),
    );
    assert!(
        e.contains("the watermark column 'when' is not a column of the stream"),
        "{e}"
    );
    let e = err(
        &insert(&grouped()),
        mode(OutputMode::Update).with_watermark("page", 10),
    );
    assert!(
        e.contains("the watermark column 'page' is STRING; a watermark needs a TIMESTAMP"),
        "{e}"
    );
}

#[test]
fn a_stream_query_is_insert_into_select() {
    let e = err(&grouped(), mode(OutputMode::Update));
    assert!(
        e.contains("a stream query is INSERT INTO <sink topic> SELECT"),
        "{e}"
    );
    let e = err("INSERT INTO out VALUES (1)", mode(OutputMode::Update));
    assert!(e.contains("a stream query is INSERT INTO"), "{e}");
}

#[test]
fn the_dataset_api_builds_stream_plans() {
    use millrace_engine::expr::{col, count_star};
    use millrace_engine::plan::LogicalPlan;
    use millrace_engine::source::Source;
    use millrace_engine::topic_format::TopicFormat;
    let scan = LogicalPlan::scan(Source::Topic {
        topic: "pv".into(),
        ranges: vec![TopicRange {
            partition: 0,
            start: 5,
            end: 9,
        }],
        format: Some(TopicFormat::parse("json", "page STRING, ts TIMESTAMP, v BIGINT").unwrap()),
        table: false,
    })
    .unwrap();
    let plan = scan
        .time_window(col("ts"), 10_000, 10_000)
        .unwrap()
        .aggregate(
            vec![
                (col("window_start"), "window_start".into()),
                (col("window_end"), "window_end".into()),
            ],
            vec![(count_star(), "n".into())],
        )
        .unwrap();
    let q = StreamPlan::from_plan(
        plan,
        "out",
        mode(OutputMode::Append).with_watermark("ts", 0),
    )
    .unwrap();
    let recs = example_records();
    // The plan's own ranges are ignored: the batch reads what it is given.
    let out = run_batch(
        &q,
        &StreamState::default(),
        &recs,
        &[TopicRange {
            partition: 1,
            start: 0,
            end: 2,
        }],
        None,
        1,
    )
    .unwrap();
    assert_eq!((out.input_rows, out.state.groups()), (2, 2));
}
