//! Time windows in batch SQL: exact windows at the boundaries, sliding
//! windows multiplying rows, and the errors.

use millrace_engine::dataset::Context;
use millrace_engine::expr::{col, count_star};
use millrace_engine::reference::{evaluate, same_rows};
use millrace_engine::types::{DataType, Field, Schema, Value};
use millrace_engine::value::batches_to_rows;

const MIN: i64 = 60_000;

fn ctx(rows: Vec<(i64, &str)>) -> Context {
    let mut ctx = Context::new();
    let schema = Schema::new(vec![
        Field::new("ts", DataType::Timestamp),
        Field::new("page", DataType::Utf8),
    ]);
    let rows = rows
        .into_iter()
        .map(|(t, p)| vec![Value::Timestamp(t), Value::Str(p.into())])
        .chain([vec![Value::Null, Value::Str("nowhen".into())]])
        .collect();
    let ds = ctx.from_rows(schema, rows, 3).unwrap();
    ctx.register("t", &ds);
    ctx
}

/// The query's rows, checked against the reference evaluator.
fn rows(ctx: &Context, sql: &str) -> Vec<Vec<Value>> {
    let ds = ctx.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let got = batches_to_rows(&ds.collect().unwrap());
    let expected = evaluate(&ds.plan, None).unwrap();
    same_rows(&got, &expected, true).unwrap_or_else(|e| panic!("{sql}: {e}"));
    got
}

fn ts(t: i64) -> Value {
    Value::Timestamp(t)
}

#[test]
fn tumbling_window_boundaries() {
    let c = ctx(vec![
        (0, "a"),
        (MIN - 1, "a"),
        (MIN, "a"),
        (MIN + 1, "b"),
        (-1, "a"),
    ]);
    let got = rows(
        &c,
        "SELECT window_start, window_end, page, count(*) AS n FROM t GROUP BY window(ts, '1 minute'), page ORDER BY window_start, page",
    );
    assert_eq!(
        got,
        vec![
            vec![ts(-MIN), ts(0), Value::Str("a".into()), Value::Int(1)],
            vec![ts(0), ts(MIN), Value::Str("a".into()), Value::Int(2)],
            vec![ts(MIN), ts(2 * MIN), Value::Str("a".into()), Value::Int(1)],
            vec![ts(MIN), ts(2 * MIN), Value::Str("b".into()), Value::Int(1)],
        ]
    );
}

#[test]
fn sliding_windows_count_a_row_in_every_window_containing_it() {
    let c = ctx(vec![(7 * MIN, "a"), (5 * MIN, "a"), (12 * MIN, "a")]);
    let got = rows(
        &c,
        "SELECT window_start, window_end, count(*) AS n FROM t GROUP BY window(ts, '10 minutes', '5 minutes') ORDER BY 1",
    );
    assert_eq!(
        got,
        vec![
            vec![ts(0), ts(10 * MIN), Value::Int(2)],
            vec![ts(5 * MIN), ts(15 * MIN), Value::Int(3)],
            vec![ts(10 * MIN), ts(20 * MIN), Value::Int(1)],
        ]
    );
}

#[test]
fn windows_in_the_dataset_api_and_sub_second_intervals() {
    let c = ctx(vec![(0, "a"), (499, "a"), (500, "a"), (1250, "b")]);
    let t = c.sql("SELECT * FROM t").unwrap();
    let ds = t
        .window(col("ts"), "500 milliseconds", None)
        .unwrap()
        .group_by(vec![col("window_start")])
        .agg(vec![count_star()])
        .unwrap()
        .sort(vec![millrace_engine::plan::SortKey::asc(col(
            "window_start",
        ))])
        .unwrap();
    let got = batches_to_rows(&ds.collect().unwrap());
    assert_eq!(
        got,
        vec![
            vec![ts(0), Value::Int(2)],
            vec![ts(500), Value::Int(1)],
            vec![ts(1000), Value::Int(1)],
        ]
    );
    assert_eq!(
        same_rows(&got, &evaluate(&ds.plan, None).unwrap(), true),
        Ok(())
    );
}

#[test]
fn window_errors_name_the_problem() {
    let c = ctx(vec![(0, "a")]);
    let err = |sql: &str| match c.sql(sql) {
        Ok(_) => panic!("{sql} should not plan"),
        Err(e) => e.to_string(),
    };
    let e = err("SELECT count(*) FROM t GROUP BY window(ts, '5 minutes', '10 minutes')");
    assert!(
        e.contains("slide '10 minutes' is longer than the window size '5 minutes'"),
        "{e}"
    );
    let e = err("SELECT count(*) FROM t GROUP BY window(page, '5 minutes')");
    assert!(
        e.contains("window() needs a TIMESTAMP column, but page is STRING"),
        "{e}"
    );
    let e = err("SELECT count(*) FROM t GROUP BY window(ts, '5 minuets')");
    assert!(e.contains("bad interval '5 minuets'"), "{e}");
    let e = err("SELECT count(*) FROM t GROUP BY window(ts, 5)");
    assert!(e.contains("window() takes a TIMESTAMP column"), "{e}");
    let e = err("SELECT count(*) FROM t WHERE window(ts, '1 minute') IS NOT NULL");
    assert!(e.contains("only supported in GROUP BY"), "{e}");
    let e = err("SELECT count(*) FROM t GROUP BY window(ts, '1 minute'), window(ts, '2 minutes')");
    assert!(e.contains("only one window()"), "{e}");
}
