//! Stream queries on a real `millrace serve`, through the `millrace stream`
//! CLI (each test starts its own server process):
//!
//! - `windowed_counts_follow_the_input`: JSON click events in two rounds; a
//!   windowed count per user in update mode, 200 ms trigger; the latest
//!   output per group equals the counts the input implies; `list` and
//!   `describe` show its progress; state versions two behind the last
//!   commit are deleted.
//! - `exactly_once_across_server_kills`: a stateless query copies ids
//!   while the server is killed (SIGKILL) twice mid-stream and restarted
//!   on the same data; producers keep writing; every id is in the output
//!   exactly once.
//! - `once_and_available_now_end`: both triggers read what is there and
//!   finish; available-now in capped batches.
//! - `a_stream_table_join_sees_table_updates_in_later_batches`: views
//!   joined with a compacted users topic (`topic_table`), stateless and
//!   aggregated; a user's row changes between two rounds of views: the
//!   first round's output keeps the old value, the second has the new.
//! - `a_dataset_api_query_runs_like_sql`: a count per user built with the
//!   Rust Dataset API and started with `client::start_dataset`; a sorted
//!   stream is refused with SQL's message.
//! - `a_state_larger_than_a_message_survives_a_crash`: 40,000 groups (a
//!   state of several MB) stored in parts; after a SIGKILL the counts go
//!   on from it.
//! - `a_query_reads_two_topics`: a count over a UNION ALL of two topics
//!   covers both.
//! - `bad_input_is_one_clear_line`: unknown topic, name taken, bad SQL, an
//!   output mode that does not fit, unknown query, bad flags: exit 1, one
//!   line, no panic.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::server::*;

fn tempdir(name: &str) -> PathBuf {
    common::server::tempdir("stream", name)
}

/// Produces `key|value` lines to `topic` as keyed records.
fn produce_keyed(bootstrap: &str, topic: &str, lines: &[String]) {
    produce_with(bootstrap, topic, lines, &["--key-separator", "|"]);
}

/// Every record of `topic`: (key, value) in partition order.
fn consume(bootstrap: &str, topic: &str) -> Vec<(String, String)> {
    let out = ok(&["consume", topic, "--exit-at-end", "--print-key", "-b", bootstrap]);
    out.lines().map(|l| l.split_once('\t').map(|(k, v)| (k.to_string(), v.to_string())).unwrap_or_default()).collect()
}

fn stream(server: &Server, args: &[&str]) -> String {
    let mut a = vec!["stream"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--server", &server.batch]);
    ok(&a)
}

fn describe(server: &Server, name: &str) -> String {
    stream(server, &["describe", name])
}

fn field<'a>(describe: &'a str, name: &str) -> &'a str {
    describe.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("")
}

fn json_field(value: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    let at = value.find(&key).unwrap_or_else(|| panic!("no {name} in {value}")) + key.len();
    value[at..].split([',', '}']).next().unwrap().trim_matches('"').to_string()
}

const USERS: u64 = 3;

/// Click `i`: user `u{i % 3}`, event time `i` seconds (so three 1-minute
/// windows over 0..180).
fn clicks(from: u64, to: u64) -> Vec<String> {
    (from..to).map(|i| format!(r#"{{"user":"u{}","ts":{}}}"#, i % USERS, i * 1_000)).collect()
}

#[test]
fn windowed_counts_follow_the_input() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("window"));
    let b = server.bootstrap.as_str();
    ok(&["topic", "create", "clicks", "-p", "2", "-b", b]);
    ok(&["topic", "create", "counts", "-p", "2", "-b", b]);
    produce(b, "clicks", &clicks(0, 90));
    let sql = "INSERT INTO counts SELECT user, window_start, count(*) AS n \
               FROM topic('clicks', 'json', 'user STRING, ts TIMESTAMP') GROUP BY window(ts, '1 minute'), user";
    let out = stream(&server, &["start", "wc", "--sql", sql, "--trigger", "200ms", "--output-mode", "update", "--from", "earliest"]);
    assert!(out.contains("stream query wc started"), "{out}");
    wait_until("the first batch", Duration::from_secs(10), || field(&describe(&server, "wc"), "batch:").parse::<u64>().is_ok());
    // Three batches at least, so that a state version gets old enough to
    // be deleted (checked at the end).
    produce(b, "clicks", &clicks(90, 135));
    wait_until("the second batch", Duration::from_secs(10), || field(&describe(&server, "wc"), "batch:").parse::<u64>().is_ok_and(|n| n >= 1));
    produce(b, "clicks", &clicks(135, 180));

    // The latest value per group is the group's count in the input.
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..180u64 {
        *want.entry((format!("u{}", i % USERS), (i / 60 * 60_000).to_string())).or_default() += 1;
    }
    let latest = || {
        let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (_, v) in consume(b, "counts") {
            let ws = json_field(&v, "window_start");
            let ms = [("1970-01-01T00:00:00.000Z", 0), ("1970-01-01T00:01:00.000Z", 60_000), ("1970-01-01T00:02:00.000Z", 120_000)]
                .iter()
                .find(|(t, _)| *t == ws)
                .map_or(ws.clone(), |(_, ms)| ms.to_string());
            got.insert((json_field(&v, "user"), ms), json_field(&v, "n").parse().unwrap());
        }
        got
    };
    wait_until("the counts of all 180 clicks", Duration::from_secs(10), || latest() == want);
    assert_eq!(latest(), want);

    let d = describe(&server, "wc");
    assert_eq!(field(&d, "state:"), "waiting", "{d}");
    assert!(d.contains("clicks") && d.contains("LAG"), "per-partition lag: {d}");
    assert!(field(&d, "processed rows/s:").parse::<f64>().is_ok(), "{d}");
    let list = stream(&server, &["list"]);
    assert!(list.lines().any(|l| l.starts_with("wc ") && l.contains("update")), "{list}");
    let out = stream(&server, &["stop", "wc"]);
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(field(&describe(&server, "wc"), "state:"), "stopped");
    // Old state versions are deleted (tombstones: a key and no value);
    // the last commit's is kept.
    let state = ok(&["consume", "__millrace_stream_state", "--exit-at-end", "--print-key", "-b", &server.bootstrap]);
    let dropped: Vec<u64> = state.lines().filter_map(|l| l.strip_prefix("wc/")?.strip_suffix('\t')?.parse().ok()).collect();
    let stored: Vec<u64> = state.lines().filter_map(|l| l.strip_prefix("wc/")?.split_once('\t')).filter(|(_, v)| !v.is_empty()).filter_map(|(k, _)| k.parse().ok()).collect();
    let last = stored.iter().max().copied().unwrap_or(0);
    assert!(!dropped.is_empty() && dropped.iter().all(|d| d + 2 <= last), "dropped {dropped:?}, stored {stored:?}");
}

#[test]
fn exactly_once_across_server_kills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Slow output writes: a kill most likely finds a batch half written,
    // which the restarted query must complete without duplicating.
    let dir = tempdir("kill");
    let mut server = Server::start_with(&dir, &[("MILLRACE_STREAM_WRITE_DELAY_MS", "100"), ("MILLRACE_LOG", "info,millrace_net::stream=debug")]);
    let b = server.bootstrap.clone();
    ok(&["topic", "create", "ids", "-p", "3", "-b", &b]);
    ok(&["topic", "create", "copied", "-p", "2", "-b", &b]);
    let sql = "INSERT INTO copied SELECT id FROM topic('ids', 'json', 'id BIGINT')";
    // Keeping 2 batches, the logs are purged (every 10 batches) before the
    // last kills: a restart must resume from purged logs.
    stream(&server, &["start", "copy", "--sql", sql, "--trigger", "100ms", "--from", "earliest", "--max-records-per-batch", "70", "--retain-batches", "2"]);
    let ids = |from: u64, to: u64| (from..to).map(|i| format!(r#"{{"id":{i}}}"#)).collect::<Vec<_>>();
    let mut next = 0u64;
    for round in 0..4 {
        // Write in a few bursts so batches are running when the kill comes.
        for _ in 0..4 {
            produce(&b, "ids", &ids(next, next + 100));
            next += 100;
            std::thread::sleep(Duration::from_millis(120));
        }
        if round < 3 {
            std::thread::sleep(Duration::from_millis(150));
            server.kill();
            server.restart();
        }
    }
    let total = next as usize;
    let count = || consume(&b, "copied").len();
    wait_until("every id in the output", Duration::from_secs(15), || count() >= total);
    // A little longer: a duplicate would show up now.
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for (_, v) in consume(&b, "copied") {
        *seen.entry(json_field(&v, "id").parse().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids written more than once: {twice:?}");
    let missing: Vec<u64> = (0..next).filter(|i| !seen.contains_key(i)).collect();
    assert!(missing.is_empty(), "ids lost: {missing:?}");
    assert_eq!(seen.len(), total);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let reruns = log.lines().filter(|l| l.contains("re-running a batch logged before the restart")).count();
    eprintln!("batches re-run after a kill: {reruns}");
    // With slow writes a kill almost always lands inside a batch; make sure
    // the re-run path was the one under test.
    assert!(reruns >= 1, "no kill landed inside a batch; the test did not exercise a re-run");
    let d = describe(&server, "copy");
    assert!(!field(&d, "state:").starts_with("failed"), "{d}");
    // Old entries of both logs were tombstoned (a key and no value), and
    // only entries of old batches: the last committed batch is kept.
    let last: u64 = field(&d, "batch:").parse().unwrap();
    for topic in ["__millrace_stream_offsets", "__millrace_stream_commits"] {
        let log = ok(&["consume", topic, "--exit-at-end", "--print-key", "-b", &b]);
        let batch = |k: &str| k.strip_prefix("copy/")?.split('/').next()?.parse::<u64>().ok();
        let purged: Vec<u64> = log.lines().filter_map(|l| batch(l.strip_suffix('\t')?)).collect();
        assert!(purged.len() >= 10 && purged.iter().all(|&p| p + 2 <= last), "{topic}: tombstones for batches {purged:?}, last commit {last}");
    }
}

#[test]
fn once_and_available_now_end() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("once"));
    let b = server.bootstrap.as_str();
    ok(&["topic", "create", "events", "-p", "2", "-b", b]);
    ok(&["topic", "create", "once_out", "-p", "1", "-b", b]);
    ok(&["topic", "create", "now_out", "-p", "1", "-b", b]);
    produce(b, "events", &clicks(0, 100));
    let stateless = |sink: &str| format!("INSERT INTO {sink} SELECT user, ts FROM topic('events', 'json', 'user STRING, ts TIMESTAMP')");
    stream(&server, &["start", "one", "--sql", &stateless("once_out"), "--trigger", "once", "--from", "earliest"]);
    wait_until("the once query to finish", Duration::from_secs(10), || field(&describe(&server, "one"), "state:") == "finished");
    assert_eq!(consume(b, "once_out").len(), 100);
    assert_eq!(field(&describe(&server, "one"), "batch:"), "0");

    stream(&server, &["start", "now", "--sql", &stateless("now_out"), "--trigger", "available-now", "--from", "earliest", "--max-records-per-batch", "30"]);
    wait_until("the available-now query to finish", Duration::from_secs(10), || field(&describe(&server, "now"), "state:") == "finished");
    assert_eq!(consume(b, "now_out").len(), 100);
    // 100 records, at most 30 a batch: batches 0..=3.
    assert_eq!(field(&describe(&server, "now"), "batch:"), "3");
    // Finished queries are not defined any more: the name can be used again
    // for the same query, which resumes its logs and finds nothing new.
    stream(&server, &["start", "one", "--sql", &stateless("once_out"), "--trigger", "once", "--from", "earliest"]);
    wait_until("the once query to finish again", Duration::from_secs(10), || field(&describe(&server, "one"), "state:") == "finished");
    assert_eq!(consume(b, "once_out").len(), 100);
}

#[test]
fn a_stream_table_join_sees_table_updates_in_later_batches() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("join"));
    let b = server.bootstrap.as_str();
    ok(&["topic", "create", "users", "-p", "2", "-c", "cleanup.policy=compact", "-b", b]);
    ok(&["topic", "create", "views", "-p", "2", "-b", b]);
    ok(&["topic", "create", "enriched", "-p", "1", "-b", b]);
    ok(&["topic", "create", "by_country", "-p", "1", "-b", b]);
    let user = |id: &str, country: &str| format!(r#"{id}|{{"country":"{country}"}}"#);
    produce_keyed(b, "users", &[user("u0", "FR"), user("u1", "FR"), user("u2", "US")]);
    let views = |from: u64, to: u64| (from..to).map(|i| format!(r#"{{"user":"u{}","seq":{i}}}"#, i % 4)).collect::<Vec<_>>();
    let from = "FROM topic('views', 'json', 'user STRING, seq BIGINT') v LEFT JOIN topic_table('users', 'json', 'country STRING') u ON v.user = u.key";
    let enrich = format!("INSERT INTO enriched SELECT v.seq, v.user, u.country {from}");
    let count = format!("INSERT INTO by_country SELECT u.country, count(*) AS n {from} GROUP BY u.country");
    stream(&server, &["start", "enrich", "--sql", &enrich, "--trigger", "200ms", "--from", "earliest"]);
    stream(&server, &["start", "count", "--sql", &count, "--trigger", "200ms", "--from", "earliest", "--output-mode", "update"]);
    // u3 is not in the table: the left join gives it no country.
    let mut country: BTreeMap<String, String> = [("u0", "FR"), ("u1", "FR"), ("u2", "US"), ("u3", "null")].iter().map(|(u, c)| (u.to_string(), c.to_string())).collect();
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..30 {
        want.insert(i, country[&format!("u{}", i % 4)].clone());
    }
    produce(b, "views", &views(0, 30));
    let enriched = || -> BTreeMap<u64, String> {
        let mut got = BTreeMap::new();
        for (_, v) in consume(b, "enriched") {
            let seq: u64 = json_field(&v, "seq").parse().unwrap();
            assert!(got.insert(seq, json_field(&v, "country")).is_none(), "view {seq} written twice");
        }
        got
    };
    wait_until("the first round of views, joined", Duration::from_secs(15), || enriched().len() == 30);
    assert_eq!(enriched(), want);
    let counts = |want: &BTreeMap<u64, String>| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for c in want.values() {
            *counts.entry(c.clone()).or_default() += 1;
        }
        counts
    };
    let latest = || {
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (_, v) in consume(b, "by_country") {
            got.insert(json_field(&v, "country"), json_field(&v, "n").parse().unwrap());
        }
        got
    };
    // Both queries are done with the first round before the table changes.
    wait_until("the first round's counts per country", Duration::from_secs(15), || latest() == counts(&want));
    // u1 moves; u3 appears. Later batches see the new rows.
    produce_keyed(b, "users", &[user("u1", "DE"), user("u3", "JP")]);
    country.insert("u1".into(), "DE".into());
    country.insert("u3".into(), "JP".into());
    for i in 30..60 {
        want.insert(i, country[&format!("u{}", i % 4)].clone());
    }
    produce(b, "views", &views(30, 60));
    wait_until("the second round of views, joined", Duration::from_secs(15), || enriched().len() == 60);
    assert_eq!(enriched(), want, "the first round keeps the countries of its snapshot");
    // The aggregate over the join: the latest count per country.
    wait_until("the counts per country", Duration::from_secs(15), || latest() == counts(&want));
    let d = describe(&server, "enrich");
    assert_eq!(field(&d, "state:"), "waiting", "{d}");
    // A table topic that does not exist is refused when the query starts.
    let e = fails(&["stream", "start", "nope", "--sql", &enrich.replace("topic_table('users'", "topic_table('nobody'"), "--server", &server.batch]);
    assert!(e.contains("unknown topic 'nobody'") && e.contains("topic_table('nobody'"), "{e}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("bad"));
    let b = server.bootstrap.clone();
    let b = b.as_str();
    let s = server.batch.clone();
    let s = s.as_str();
    ok(&["topic", "create", "in", "-p", "1", "-b", b]);
    ok(&["topic", "create", "out", "-p", "1", "-b", b]);
    let good = "INSERT INTO out SELECT user FROM topic('in', 'json', 'user STRING, ts TIMESTAMP')";
    let agg = "INSERT INTO out SELECT user, count(*) AS n FROM topic('in', 'json', 'user STRING, ts TIMESTAMP') GROUP BY user";
    let start = |name: &str, sql: &str, extra: &[&str]| {
        let mut a = vec!["stream", "start", name, "--sql", sql, "--server", s];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(start("q", "INSERT INTO out SELECT user FROM topic('nope', 'json', 'user STRING')", &[]));
    assert!(e.contains("unknown topic 'nope'"), "{e}");
    let e = run(start("q", "INSERT INTO nowhere SELECT user FROM topic('in', 'json', 'user STRING')", &[]));
    assert!(e.contains("unknown topic 'nowhere'"), "{e}");
    let e = run(start("q", "SELEKT oops", &[]));
    assert!(e.contains("bad stream query"), "{e}");
    let e = run(start("q", agg, &["--output-mode", "append"]));
    assert!(e.contains("append mode needs a watermark"), "{e}");
    let e = run(start("q", good, &["--output-mode", "complete"]));
    assert!(e.contains("complete output mode needs an aggregation"), "{e}");
    let e = run(start("q", good, &["--trigger", "soon"]));
    assert!(e.contains("bad trigger"), "{e}");
    let e = run(start("q", agg, &["--watermark", "ts"]));
    assert!(e.contains("bad watermark"), "{e}");
    let e = run(start("bad/name", good, &[]));
    assert!(e.contains("bad query name"), "{e}");
    ok(&start("q", good, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(start("q", good, &[]));
    assert!(e.contains("already running"), "{e}");
    let e = run(start("q", agg, &["--output-mode", "update"]).into_iter().collect());
    assert!(e.contains("already running"), "{e}");
    let e = fails(&["stream", "describe", "nobody", "--server", s]);
    assert!(e.contains("no stream query named nobody"), "{e}");
    let e = fails(&["stream", "stop", "nobody", "--server", s]);
    assert!(e.contains("no stream query named nobody"), "{e}");
    ok(&["stream", "stop", "q", "--server", s]);
    // The name's logs remain: another query may not take it over.
    let e = run(start("q", agg, &["--output-mode", "update"]));
    assert!(e.contains("used before for a different query"), "{e}");
    drop(server);
    let e = fails(&["stream", "list", "--server", s]);
    assert!(e.contains("cannot reach the batch service"), "{e}");
}

/// A stream query built with the Rust Dataset API (`Context::read_topic`,
/// `client::start_dataset`) runs like its SQL twin: a count per user in
/// update mode; a plan the engine cannot run incrementally is refused with
/// SQL's message.
#[test]
fn a_dataset_api_query_runs_like_sql() {
    use millrace_core::stream::{StartAt, Trigger};
    use millrace_engine::dataset::Context;
    use millrace_engine::expr::{col, count_star};
    use millrace_engine::stream::{OutputMode, StreamOptions};
    use millrace_net::stream::client;

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("dataset"));
    let b = server.bootstrap.as_str();
    ok(&["topic", "create", "clicks", "-p", "2", "-b", b]);
    ok(&["topic", "create", "per_user", "-p", "1", "-b", b]);
    produce(b, "clicks", &clicks(0, 60));
    let ctx = Context::new();
    let clicks_ds = ctx.read_topic("clicks", "json", "user STRING, ts TIMESTAMP").unwrap();
    let counts = clicks_ds.clone().group_by(vec![col("user")]).agg(vec![count_star()]).unwrap();
    let trigger = Trigger::Interval { interval_ms: 200 };
    let out = client::start_dataset(&server.batch, "ds", &counts, "per_user", StreamOptions::new(OutputMode::Update), trigger, StartAt::Earliest).unwrap();
    assert!(out.contains("stream query ds started"), "{out}");
    produce(b, "clicks", &clicks(60, 90));
    let latest = || {
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (_, v) in consume(b, "per_user") {
            got.insert(json_field(&v, "user"), json_field(&v, "count(*)").parse().unwrap_or(0));
        }
        got
    };
    let want: BTreeMap<String, u64> = (0..USERS).map(|u| (format!("u{u}"), 90 / USERS)).collect();
    wait_until("the counts of all 90 clicks", Duration::from_secs(10), || latest() == want);
    let d = describe(&server, "ds");
    assert!(d.contains("Dataset API") && d.contains("per_user"), "{d}");
    // A sorted stream is refused before anything is stored, as in SQL.
    let sorted = clicks_ds.sort(vec![millrace_engine::plan::SortKey { expr: col("user"), descending: false, nulls_first: false }]).unwrap();
    let e = client::start_dataset(&server.batch, "bad", &sorted, "per_user", StreamOptions::new(OutputMode::Append), trigger, StartAt::Earliest).unwrap_err();
    assert!(e.to_string().contains("ORDER BY"), "{e}");
    assert!(stream(&server, &["stop", "ds"]).contains("stopped"));
}

/// A state larger than the broker's largest message (1 MB) is stored in
/// parts and read back whole after a crash: 40,000 groups with long keys,
/// the server SIGKILLed and restarted, and the counts go on from the
/// stored state.
#[test]
fn a_state_larger_than_a_message_survives_a_crash() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start(&tempdir("bigstate"));
    let b = server.bootstrap.clone();
    ok(&["topic", "create", "ids", "-p", "1", "-b", &b]);
    ok(&["topic", "create", "id_counts", "-p", "1", "-b", &b]);
    let id = |i: u64| format!("an-identifier-long-enough-to-make-the-state-big-{i:08}");
    let lines: Vec<String> = (0..40_000).map(|i| format!(r#"{{"id":"{}"}}"#, id(i))).collect();
    produce(&b, "ids", &lines);
    let sql = "INSERT INTO id_counts SELECT id, count(*) AS c FROM topic('ids', 'json', 'id STRING') GROUP BY id";
    let out = stream(&server, &["start", "big", "--sql", sql, "--trigger", "200ms", "--output-mode", "update", "--from", "earliest"]);
    assert!(out.contains("started"), "{out}");
    wait_until("the first batch", Duration::from_secs(20), || field(&describe(&server, "big"), "batch:").parse::<u64>().is_ok());
    let state = ok(&["consume", "__millrace_stream_state", "--exit-at-end", "--print-key", "-b", &b]);
    assert!(state.lines().any(|l| l.starts_with("big/0/1/")), "the state was not stored in parts: {}", &state[..state.len().min(300)]);
    server.kill();
    server.restart();
    produce(&b, "ids", &(0..10).map(|i| format!(r#"{{"id":"{}"}}"#, id(i))).collect::<Vec<_>>());
    let twice = || {
        let mut n = 0;
        for (_, v) in consume(&b, "id_counts") {
            if json_field(&v, "c") == "2" {
                n += 1;
            }
        }
        n
    };
    wait_until("ids 0-9 counted twice", Duration::from_secs(30), || twice() == 10);
    let d = describe(&server, "big");
    assert!(field(&d, "error:").is_empty(), "{d}");
}

/// A query over two topics (UNION ALL): each batch reads both topics'
/// new records; the counts cover both.
#[test]
fn a_query_reads_two_topics() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&tempdir("union"));
    let b = server.bootstrap.as_str();
    ok(&["topic", "create", "web", "-p", "2", "-b", b]);
    ok(&["topic", "create", "app", "-p", "1", "-b", b]);
    ok(&["topic", "create", "all_clicks", "-p", "1", "-b", b]);
    produce(b, "web", &clicks(0, 30));
    let sql = "INSERT INTO all_clicks SELECT user, count(*) AS n FROM (\
               SELECT user FROM topic('web', 'json', 'user STRING') UNION ALL SELECT user FROM topic('app', 'json', 'user STRING')) GROUP BY user";
    let out = stream(&server, &["start", "both", "--sql", sql, "--trigger", "200ms", "--output-mode", "update", "--from", "earliest"]);
    assert!(out.contains("web, app") || out.contains("app, web"), "{out}");
    produce(b, "app", &clicks(30, 60));
    produce(b, "web", &clicks(60, 90));
    let latest = || {
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (_, v) in consume(b, "all_clicks") {
            got.insert(json_field(&v, "user"), json_field(&v, "n").parse().unwrap_or(0));
        }
        got
    };
    let want: BTreeMap<String, u64> = (0..USERS).map(|u| (format!("u{u}"), 90 / USERS)).collect();
    wait_until("the counts of both topics", Duration::from_secs(10), || latest() == want);
    let d = describe(&server, "both");
    assert!(d.contains("web") && d.contains("app"), "lag per topic partition: {d}");
    let e = fails(&["stream", "start", "nope", "--server", &server.batch, "--sql", "INSERT INTO all_clicks SELECT user FROM topic('web', 'json', 'user STRING') UNION ALL SELECT user FROM topic('missing', 'json', 'user STRING')"]);
    assert!(e.contains("unknown topic 'missing'"), "{e}");
}
