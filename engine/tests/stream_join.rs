//! Stream-table joins, the engine half: which joins a stream query may
//! have (and why the others are refused), `topic_table()` as the latest
//! record per key, and a batch's join reading exactly the table snapshot
//! it is given, by the executor as by the reference evaluator.

use std::collections::BTreeMap;

use millrace_engine::local::run_local;
use millrace_engine::physical::PlannerConfig;
use millrace_engine::reference::evaluate;
use millrace_engine::source::{TopicRange, TopicReader, TopicRecord, fold_table};
use millrace_engine::stream::{
    MemoryTopic, OutputMode, OutputRecord, StreamOptions, StreamPlan, StreamState, TableSnapshot,
};
use millrace_engine::value::batches_to_rows;

const VIEWS: &str = "topic('views', 'json', 'user STRING, page STRING')";
const USERS: &str = "topic_table('users', 'json', 'country STRING')";

fn plan(select: &str, mode: OutputMode) -> Result<StreamPlan, String> {
    StreamPlan::from_sql(&format!("INSERT INTO out {select}"), StreamOptions::new(mode))
        .map_err(|e| e.to_string())
}

fn refused(select: &str) -> String {
    match plan(select, OutputMode::Append) {
        Ok(_) => panic!("accepted: {select}"),
        Err(e) => e,
    }
}

/// Topics in memory, by name.
#[derive(Default)]
struct Topics(BTreeMap<String, MemoryTopic>);

impl TopicReader for Topics {
    fn read(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
    ) -> millrace_engine::error::Result<Vec<TopicRecord>> {
        match self.0.get(topic) {
            Some(t) => t.read(topic, partition, start, end),
            None => Ok(Vec::new()),
        }
    }
}

fn rec(offset: i64, key: Option<&str>, value: Option<&str>) -> TopicRecord {
    TopicRecord {
        offset,
        timestamp: 1_000 + offset,
        key: key.map(str::to_string),
        value: value.map(str::to_string),
    }
}

fn user(offset: i64, id: &str, country: Option<&str>) -> TopicRecord {
    rec(
        offset,
        Some(id),
        country.map(|c| format!(r#"{{"country":"{c}"}}"#)).as_deref(),
    )
}

fn view(offset: i64, user: &str, page: &str) -> TopicRecord {
    rec(
        offset,
        None,
        Some(&format!(r#"{{"user":"{user}","page":"{page}"}}"#)),
    )
}

/// Users in two partitions: u1 moves from FR to DE at offset 1 of
/// partition 0; u3 is deleted at offset 2 of partition 1; a record with no
/// key is ignored.
fn topics() -> Topics {
    let users = MemoryTopic::new(&[
        (
            0,
            vec![
                user(0, "u1", Some("FR")),
                user(1, "u1", Some("DE")),
                user(2, "u2", Some("US")),
            ],
        ),
        (
            1,
            vec![
                user(0, "u3", Some("JP")),
                rec(1, None, Some(r#"{"country":"XX"}"#)),
                user(2, "u3", None),
            ],
        ),
    ]);
    let views = MemoryTopic::new(&[(
        0,
        vec![
            view(0, "u1", "home"),
            view(1, "u2", "cart"),
            view(2, "u3", "home"),
            view(3, "u9", "help"),
            view(4, "u1", "cart"),
        ],
    )]);
    let mut t = Topics::default();
    t.0.insert("users".into(), users);
    t.0.insert("views".into(), views);
    t
}

/// The snapshot of `users` up to these ends (partition 0, partition 1).
fn snapshot(p0: i64, p1: i64) -> TableSnapshot {
    let mut s = TableSnapshot::new();
    s.insert(
        "users".into(),
        vec![
            TopicRange {
                partition: 0,
                start: 0,
                end: p0,
            },
            TopicRange {
                partition: 1,
                start: 0,
                end: p1,
            },
        ],
    );
    s
}

fn all_views() -> Vec<TopicRange> {
    vec![TopicRange {
        partition: 0,
        start: 0,
        end: 5,
    }]
}

/// One batch by the executor (with 1 and 3 shuffle partitions) and by the
/// reference evaluator: they must agree; the records written.
fn run(q: &StreamPlan, ranges: &[TopicRange], tables: &TableSnapshot) -> Vec<OutputRecord> {
    let topics = topics();
    let batch = q.batch_plan_with_tables(ranges, tables, None).unwrap();
    let mut reference = evaluate(&batch, Some(&topics)).unwrap();
    reference.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    let mut outs = Vec::new();
    for shuffle_partitions in [1, 3] {
        let result = run_local(&batch, PlannerConfig { shuffle_partitions }, Some(&topics)).unwrap();
        let mut rows = batches_to_rows(&result);
        rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(rows, reference, "executor ({shuffle_partitions} shuffle partitions) vs reference");
        outs.push(q.finish_batch(&StreamState::default(), &result, None).unwrap().records);
    }
    assert_eq!(outs[0], outs[1]);
    outs.pop().unwrap()
}

fn values(records: &[OutputRecord]) -> Vec<&str> {
    records.iter().map(|r| r.value.as_str()).collect()
}

#[test]
fn a_table_is_the_latest_record_per_key_whatever_the_partition_order() {
    let parts = vec![
        (1, vec![user(0, "b", Some("x")), user(1, "a", Some("late"))]),
        (0, vec![user(0, "a", Some("early")), user(1, "c", Some("y")), user(2, "c", None), rec(3, None, Some("z"))]),
    ];
    let mut reversed = parts.clone();
    reversed.reverse();
    let folded = fold_table(parts);
    assert_eq!(folded, fold_table(reversed));
    let got: Vec<(i32, &str, i64)> = folded
        .iter()
        .map(|(p, r)| (*p, r.key.as_deref().unwrap(), r.offset))
        .collect();
    // Key order; c deleted; a found in both partitions takes partition 1's.
    assert_eq!(got, vec![(1, "a", 1), (1, "b", 0)]);
}

#[test]
fn a_stateless_inner_join_reads_the_snapshot_it_is_given() {
    let q = plan(
        &format!("SELECT v.user, v.page, u.country FROM {VIEWS} v JOIN {USERS} u ON v.user = u.key"),
        OutputMode::Append,
    )
    .unwrap();
    assert_eq!(q.input_topic(), "views");
    assert_eq!(q.table_topics(), ["users".to_string()]);
    assert!(!q.is_stateful());
    // The whole table: u1 is DE, u3 deleted, u9 unknown.
    let out = run(&q, &all_views(), &snapshot(3, 3));
    assert_eq!(
        values(&out),
        vec![
            r#"{"user":"u1","page":"cart","country":"DE"}"#,
            r#"{"user":"u1","page":"home","country":"DE"}"#,
            r#"{"user":"u2","page":"cart","country":"US"}"#,
        ]
    );
    // An earlier snapshot: u1 still FR, u2 not there yet, u3 alive.
    let early = run(&q, &all_views(), &snapshot(1, 1));
    assert_eq!(
        values(&early),
        vec![
            r#"{"user":"u1","page":"cart","country":"FR"}"#,
            r#"{"user":"u1","page":"home","country":"FR"}"#,
            r#"{"user":"u3","page":"home","country":"JP"}"#,
        ]
    );
    // The same snapshot gives the same records every time.
    assert_eq!(run(&q, &all_views(), &snapshot(1, 1)), early);
    // Without a snapshot the table is empty.
    assert!(run(&q, &all_views(), &TableSnapshot::new()).is_empty());
}

#[test]
fn a_left_join_keeps_unmatched_stream_rows_and_an_aggregate_counts_over_the_join() {
    let q = plan(
        &format!("SELECT v.page, u.country FROM {VIEWS} v LEFT JOIN {USERS} u ON v.user = u.key WHERE v.page <> 'cart'"),
        OutputMode::Append,
    )
    .unwrap();
    let out = run(&q, &all_views(), &snapshot(3, 3));
    assert_eq!(
        values(&out),
        vec![
            r#"{"page":"help","country":null}"#,
            r#"{"page":"home","country":"DE"}"#,
            r#"{"page":"home","country":null}"#,
        ]
    );
    let q = plan(
        &format!("SELECT u.country, count(*) AS n FROM {VIEWS} v LEFT JOIN {USERS} u ON v.user = u.key GROUP BY u.country"),
        OutputMode::Update,
    )
    .unwrap();
    assert!(q.is_stateful());
    let out = run(&q, &all_views(), &snapshot(3, 3));
    assert_eq!(
        values(&out),
        vec![
            r#"{"country":"DE","n":2}"#,
            r#"{"country":"US","n":1}"#,
            r#"{"country":null,"n":2}"#,
        ]
    );
    // The snapshot is serde data in the plan: a stored plan round-trips.
    let again: StreamPlan = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
    assert_eq!(again, q);
}

#[test]
fn joins_a_stream_cannot_compute_batch_by_batch_are_refused_with_the_reason() {
    let e = refused("SELECT a.key FROM topic('a') a JOIN topic('b') b ON a.key = b.key");
    assert!(e.contains("a join of two streams is not supported") && e.contains("topic_table"), "{e}");
    let e = refused(&format!("SELECT u.key FROM {USERS} u JOIN {VIEWS} v ON v.user = u.key"));
    assert!(e.contains("a join with the stream on the right is not supported"), "{e}");
    for kind in ["RIGHT", "FULL OUTER"] {
        let e = refused(&format!("SELECT v.page FROM {VIEWS} v {kind} JOIN {USERS} u ON v.user = u.key"));
        assert!(e.contains("a RIGHT or FULL OUTER join of a stream with a table is not supported"), "{kind}: {e}");
    }
    let dir = std::env::temp_dir().join(format!("millrace-stjoin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.json");
    std::fs::write(&file, "{\"id\":\"u1\",\"country\":\"FR\"}\n").unwrap();
    let e = refused(&format!(
        "SELECT v.page FROM {VIEWS} v JOIN read_json('{}') u ON v.user = u.id",
        file.display()
    ));
    assert!(e.contains("a join with json") && e.contains("must be a compacted topic read with topic_table"), "{e}");
    let e = refused(&format!("SELECT u.key FROM {USERS} u"));
    assert!(e.contains("a stream query must read a stream") && e.contains("topic_table('users'"), "{e}");
    let e = refused("SELECT v.key FROM topic('users') v JOIN topic_table('users') u ON v.key = u.key");
    assert!(e.contains("read both as the stream and as a table"), "{e}");
    // An aggregate below the join (a table of the stream's groups) is not
    // the last wide step.
    let e = refused(&format!(
        "SELECT c.user, u.country FROM (SELECT user, count(*) AS n FROM {VIEWS} GROUP BY user) c JOIN {USERS} u ON c.user = u.key"
    ));
    assert!(e.contains("must be the last wide step"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
