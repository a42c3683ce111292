//! `topic('name', 'json' | 'csv', 'schema')` in batch SQL: the topic's
//! columns plus the declared ones parsed from each value, NULLs for a
//! value that does not parse.

use millrace_engine::dataset::Context;
use millrace_engine::local::run_local;
use millrace_engine::physical::PlannerConfig;
use millrace_engine::reference::{evaluate, same_rows};
use millrace_engine::source::{TopicRange, TopicRecord};
use millrace_engine::stream::MemoryTopic;
use millrace_engine::types::Value;
use millrace_engine::value::batches_to_rows;

fn rec(offset: i64, value: &str) -> TopicRecord {
    TopicRecord {
        offset,
        timestamp: 1000 + offset,
        key: None,
        value: Some(value.to_string()),
    }
}

fn topic() -> MemoryTopic {
    MemoryTopic::new(&[
        (
            0,
            vec![
                rec(0, r#"{"user":"ann","page":"home","ts":60000}"#),
                rec(
                    1,
                    r#"{"user":"bob","page":"home","ts":"1970-01-01T00:01:30Z"}"#,
                ),
                rec(2, "garbage"),
            ],
        ),
        (
            1,
            vec![rec(0, r#"{"user":"ann","page":"cart","ts":125000}"#)],
        ),
    ])
}

fn context() -> Context {
    let mut ctx = Context::new();
    ctx.catalog.topics = Some(Box::new(|_| {
        Ok(vec![
            TopicRange {
                partition: 0,
                start: 0,
                end: 3,
            },
            TopicRange {
                partition: 1,
                start: 0,
                end: 1,
            },
        ])
    }));
    ctx
}

fn run(sql: &str) -> Vec<Vec<Value>> {
    let ds = context().sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let t = topic();
    let got = batches_to_rows(&run_local(&ds.plan, PlannerConfig::default(), Some(&t)).unwrap());
    let expected = evaluate(&ds.plan, Some(&t)).unwrap();
    same_rows(&got, &expected, sql.contains("ORDER BY")).unwrap_or_else(|e| panic!("{sql}: {e}"));
    got
}

#[test]
fn declared_json_columns_follow_the_topics_own() {
    let got = run(
        "SELECT partition, \"offset\", user, page, ts FROM topic('pv', 'json', 'user STRING, page STRING, ts TIMESTAMP') ORDER BY partition, \"offset\"",
    );
    let s = |x: &str| Value::Str(x.into());
    assert_eq!(
        got,
        vec![
            vec![
                Value::Int(0),
                Value::Int(0),
                s("ann"),
                s("home"),
                Value::Timestamp(60_000)
            ],
            vec![
                Value::Int(0),
                Value::Int(1),
                s("bob"),
                s("home"),
                Value::Timestamp(90_000)
            ],
            vec![
                Value::Int(0),
                Value::Int(2),
                Value::Null,
                Value::Null,
                Value::Null
            ],
            vec![
                Value::Int(1),
                Value::Int(0),
                s("ann"),
                s("cart"),
                Value::Timestamp(125_000)
            ],
        ]
    );
}

#[test]
fn a_windowed_count_over_a_topic() {
    let got = run(
        "SELECT window_start, page, count(*) AS n FROM topic('pv', 'json', 'user STRING, page STRING, ts TIMESTAMP') GROUP BY window(ts, '1 minute'), page ORDER BY window_start, page",
    );
    let s = |x: &str| Value::Str(x.into());
    assert_eq!(
        got,
        vec![
            vec![Value::Timestamp(60_000), s("home"), Value::Int(2)],
            vec![Value::Timestamp(120_000), s("cart"), Value::Int(1)],
        ]
    );
}

#[test]
fn csv_values_and_plain_topics() {
    let got = run(
        "SELECT count(*) AS n, count(user) AS users FROM topic('pv', 'csv', 'user STRING, n BIGINT')",
    );
    // Every value is one CSV field (no commas outside quotes here, but JSON
    // has commas: the first field is `{"user":"ann"`).
    assert_eq!(got, vec![vec![Value::Int(4), Value::Int(4)]]);
    let got = run("SELECT count(*) AS n FROM topic('pv')");
    assert_eq!(got, vec![vec![Value::Int(4)]]);
}

#[test]
fn topic_argument_errors() {
    let err = |sql: &str| match context().sql(sql) {
        Ok(_) => panic!("{sql} should plan"),
        Err(e) => e.to_string(),
    };
    assert!(err("SELECT * FROM topic('pv', 'json')").contains("topic() takes a name"));
    assert!(
        err("SELECT * FROM topic('pv', 'avro', 'a STRING')")
            .contains("unknown value format 'avro'")
    );
    assert!(err("SELECT * FROM topic('pv', 'json', 'a MAP')").contains("unknown type MAP"));
}
