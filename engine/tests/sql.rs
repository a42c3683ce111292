//! SQL end to end over real files: each query's rows, and the errors that
//! must name what is wrong.

use std::path::PathBuf;

use millrace_engine::dataset::Context;
use millrace_engine::expr::{col, count_star, lit, sum};
use millrace_engine::plan::SortKey;
use millrace_engine::reference::{evaluate, same_rows};
use millrace_engine::types::Value;
use millrace_engine::value::batches_to_rows;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("millrace-sql-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tests run in parallel threads: every file gets its own name.
fn write(name: &str, text: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir().join(format!("{n}-{name}"));
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn sales() -> String {
    write(
        "sales.csv",
        "region,product,amount,qty\nnorth,apple,10.5,1\nsouth,apple,3.0,2\nnorth,pear,7.25,3\neast,fig,,4\nsouth,pear,1.0,5\nnorth,apple,2.0,6\n",
    )
}

fn rows(sql: &str) -> Vec<Vec<Value>> {
    let ctx = Context::new();
    let ds = ctx.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let got = batches_to_rows(&ds.collect().unwrap());
    // Every query here is also checked against the reference evaluator.
    let expected = evaluate(&ds.plan, None).unwrap();
    same_rows(&got, &expected, sql.to_lowercase().contains("order by"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    got
}

fn err(sql: &str) -> String {
    match Context::new().sql(sql) {
        Ok(_) => panic!("{sql} should not plan"),
        Err(e) => e.to_string(),
    }
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

#[test]
fn group_by_with_having_and_order_by_an_aggregate() {
    let p = sales();
    let got = rows(&format!(
        "SELECT region, sum(amount) AS total, count(*) AS n FROM read_csv('{p}', 3) GROUP BY region HAVING count(*) > 1 ORDER BY total DESC"
    ));
    assert_eq!(
        got,
        vec![
            vec![s("north"), Value::Float(19.75), Value::Int(3)],
            vec![s("south"), Value::Float(4.0), Value::Int(2)]
        ]
    );
}

#[test]
fn word_count_with_explode_in_a_subquery() {
    let p = write("words.txt", "the cat the dog\n\nthe end\ncat\n");
    let got = rows(&format!(
        "SELECT word, count(*) AS n FROM (SELECT explode(split(value, ' ')) AS word FROM read_text('{p}', 2)) GROUP BY word ORDER BY n DESC, word"
    ));
    assert_eq!(
        got,
        vec![
            vec![s("the"), Value::Int(3)],
            vec![s("cat"), Value::Int(2)],
            vec![s("dog"), Value::Int(1)],
            vec![s("end"), Value::Int(1)]
        ]
    );
}

#[test]
fn joins_with_ctes_and_aliases() {
    let p = sales();
    let d = write(
        "dim.csv",
        "name,color\napple,red\npear,green\nplum,purple\n",
    );
    let got = rows(&format!(
        "WITH s AS (SELECT product, qty FROM read_csv('{p}')) \
         SELECT d.name, d.color, sum(s.qty) AS q FROM read_csv('{d}') AS d LEFT JOIN s ON s.product = d.name \
         GROUP BY d.name, d.color ORDER BY d.name"
    ));
    assert_eq!(
        got,
        vec![
            vec![s("apple"), s("red"), Value::Int(9)],
            vec![s("pear"), s("green"), Value::Int(8)],
            vec![s("plum"), s("purple"), Value::Null],
        ]
    );
    let full = rows(&format!(
        "SELECT a.product, d.name FROM read_csv('{p}') a FULL JOIN read_csv('{d}') d ON a.product = d.name"
    ));
    assert_eq!(full.len(), 7, "6 sales + the unmatched plum");
}

#[test]
fn expressions_case_cast_like_in_between() {
    let p = sales();
    let got = rows(&format!(
        "SELECT upper(product) AS p, CASE WHEN amount IS NULL THEN 'none' WHEN amount > 5 THEN 'big' ELSE 'small' END AS size, \
         CAST(qty AS DOUBLE) / 2 AS half, substring(region, 1, 2) || '!' AS r FROM read_csv('{p}') \
         WHERE product LIKE 'p%' OR qty IN (4, 6) OR qty BETWEEN 100 AND 200 ORDER BY qty"
    ));
    assert_eq!(
        got,
        vec![
            vec![s("PEAR"), s("big"), Value::Float(1.5), s("no!")],
            vec![s("FIG"), s("none"), Value::Float(2.0), s("ea!")],
            vec![s("PEAR"), s("small"), Value::Float(2.5), s("so!")],
            vec![s("APPLE"), s("small"), Value::Float(3.0), s("no!")],
        ]
    );
}

#[test]
fn distinct_union_limit_offset_and_count_distinct() {
    let p = sales();
    assert_eq!(
        rows(&format!(
            "SELECT DISTINCT region FROM read_csv('{p}') ORDER BY region"
        ))
        .len(),
        3
    );
    assert_eq!(
        rows(&format!(
            "SELECT product FROM read_csv('{p}') UNION SELECT region FROM read_csv('{p}')"
        ))
        .len(),
        6
    );
    assert_eq!(
        rows(&format!(
            "SELECT product FROM read_csv('{p}') UNION ALL SELECT region FROM read_csv('{p}')"
        ))
        .len(),
        12
    );
    let got = rows(&format!(
        "SELECT qty FROM read_csv('{p}', 2) ORDER BY qty DESC LIMIT 2 OFFSET 1"
    ));
    assert_eq!(got, vec![vec![Value::Int(5)], vec![Value::Int(4)]]);
    let got = rows(&format!(
        "SELECT count(DISTINCT product) AS n, count(amount) AS a, avg(qty) AS q FROM read_csv('{p}', 3)"
    ));
    assert_eq!(
        got,
        vec![vec![Value::Int(3), Value::Int(5), Value::Float(3.5)]]
    );
}

#[test]
fn json_and_parquet_sources() {
    let j = write(
        "events.json",
        "{\"who\":\"a\",\"n\":1}\n{\"who\":\"b\",\"n\":2}\n{\"who\":\"a\",\"n\":5}\n",
    );
    let got = rows(&format!(
        "SELECT who, sum(n) AS n FROM read_json('{j}', 2) GROUP BY who ORDER BY who"
    ));
    assert_eq!(
        got,
        vec![vec![s("a"), Value::Int(6)], vec![s("b"), Value::Int(2)]]
    );
}

#[test]
fn the_dataset_api_builds_the_same_plans() {
    let p = sales();
    let ctx = Context::new();
    let out = ctx
        .read_csv(&p)
        .unwrap()
        .filter(col("qty").gt(lit(1)))
        .unwrap()
        .group_by(vec![col("region")])
        .agg(vec![sum(col("qty")), count_star()])
        .unwrap()
        .sort(vec![SortKey::asc(col("region"))])
        .unwrap()
        .collect()
        .unwrap();
    assert_eq!(
        batches_to_rows(&out),
        vec![
            vec![s("east"), Value::Int(4), Value::Int(1)],
            vec![s("north"), Value::Int(9), Value::Int(2)],
            vec![s("south"), Value::Int(7), Value::Int(2)],
        ]
    );
}

#[test]
fn errors_name_the_problem() {
    let p = sales();
    assert!(
        err(&format!("SELECT regoin FROM read_csv('{p}')")).contains("unknown column 'regoin'")
    );
    assert!(
        err(&format!(
            "SELECT product, count(*) FROM read_csv('{p}') GROUP BY region"
        ))
        .contains("column 'product' in SELECT must appear in GROUP BY")
    );
    assert!(
        err(&format!("SELECT * FROM read_csv('{p}') WHERE sum(qty) > 1"))
            .contains("not allowed in WHERE")
    );
    assert!(err(&format!("SELECT region + 1 FROM read_csv('{p}')")).contains("needs numbers"));
    assert!(err("SELECT * FROM nowhere").contains("unknown table 'nowhere'"));
    assert!(err("SELEC 1").contains("syntax"));
    assert!(
        err(&format!(
            "SELECT * FROM read_csv('{p}') a JOIN read_csv('{p}') b ON a.qty > b.qty"
        ))
        .contains("at least one equality")
    );
    assert!(
        err(&format!(
            "SELECT * FROM read_csv('{p}') a JOIN read_csv('{p}') b ON a.qty = b.qty WHERE qty > 1"
        ))
        .contains("ambiguous")
    );
    assert!(err("SELECT * FROM read_csv('/no/such/file.csv')").contains("/no/such/file.csv"));
    assert!(err(&format!("SELECT lower(qty) FROM read_csv('{p}')")).contains("lower() argument 1"));
    assert!(err("DELETE FROM t").contains("only SELECT"));
}

/// sqlparser is built unoptimised (its frames are larger then): a deeply
/// nested query must still be an error that says so, not a stack overflow,
/// on a thread with a small stack like a server's.
#[test]
fn deeply_nested_sql_is_an_error_not_a_crash() {
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let e = std::thread::Builder::new().stack_size(2 << 20).spawn(move || err(&deep)).unwrap().join().unwrap();
    assert!(e.to_lowercase().contains("recursion"), "{e}");
    // Just inside the parser's limit still plans.
    let ok = format!("SELECT {}qty{} AS x FROM read_csv('{}')", "(".repeat(40), ")".repeat(40), sales());
    let ctx = Context::new();
    std::thread::Builder::new().stack_size(2 << 20).spawn(move || ctx.sql(&ok).map(|_| ()).map_err(|e| e.to_string())).unwrap().join().unwrap().unwrap();
}
