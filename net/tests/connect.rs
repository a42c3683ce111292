//! Connectors on a real `millrace serve`, through the `millrace connect`
//! CLI (each test starts its own server process):
//!
//! - `file_source_is_exactly_once_across_server_kills`: a folder of JSON
//!   files tailed into a topic while lines are appended and the server is
//!   killed (SIGKILL) twice and restarted on the same data; every line is
//!   in the topic exactly once, each file's lines in order; a malformed
//!   line is skipped and counted.
//! - `file_sink_writes_every_record_once`: a topic written to rolling
//!   files while the server is killed mid-way; the folder holds every
//!   record exactly once, no temporary file left.
//! - `generator_and_bad_input`: a finite generator fills a topic with its
//!   sequence; bad requests are one clear line, never a panic.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::io::Write;
use std::time::Duration;

use common::server::*;

fn tempdir(name: &str) -> PathBuf {
    common::server::tempdir("connect", name)
}

/// Every value of `topic`, partition by partition, each in offset order.
fn consume(bootstrap: &str, topic: &str) -> Vec<String> {
    ok(&["consume", topic, "--exit-at-end", "-b", bootstrap]).lines().map(str::to_string).collect()
}

fn connect(server: &Server, args: &[&str]) -> String {
    let mut a = vec!["connect"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--server", &server.batch]);
    ok(&a)
}

fn field<'a>(describe: &'a str, name: &str) -> &'a str {
    describe.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("")
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(lines.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes()).unwrap();
}

#[test]
fn file_source_is_exactly_once_across_server_kills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("source");
    // Small chunks, a pause after each produce: a kill most likely finds a
    // chunk logged and produced but not yet followed by the next one.
    let mut server = Server::start_with(&dir, &[("MILLRACE_CONNECT_PRODUCE_DELAY_MS", "20"), ("MILLRACE_CONNECT_CHUNK_RECORDS", "25"), ("MILLRACE_LOG", "info,millrace_net::connect=debug")]);
    let b = server.bootstrap.clone();
    ok(&["topic", "create", "lines", "-p", "3", "-b", &b]);
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let files = ["a.json", "b.json", "c.json"];
    let line = |f: &str, i: u64| format!(r#"{{"file":"{f}","i":{i}}}"#);
    append(&input.join(files[0]), &(0..50).map(|i| line(files[0], i)).collect::<Vec<_>>());
    let out = connect(&server, &["start", "tail", "--type", "file-source", "--topic", "lines", "--format", "json", "--path", input.to_str().unwrap()]);
    assert!(out.contains("connector tail (file-source) started"), "{out}");
    let mut next = [50u64, 0, 0];
    for round in 0..3 {
        for _ in 0..4 {
            for (k, f) in files.iter().enumerate() {
                append(&input.join(f), &(next[k]..next[k] + 40).map(|i| line(f, i)).collect::<Vec<_>>());
                next[k] += 40;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if round < 2 {
            server.kill();
            server.restart();
        }
    }
    // A malformed line is skipped, counted, and named with its byte offset.
    append(&input.join("c.json"), &["{not json".to_string(), line("c.json", next[2])]);
    next[2] += 1;
    let total: u64 = next.iter().sum();
    wait_until("every line in the topic", Duration::from_secs(20), || consume(&b, "lines").len() as u64 >= total);
    std::thread::sleep(Duration::from_millis(500));
    let values = consume(&b, "lines");
    let mut seen: BTreeMap<(String, u64), u32> = BTreeMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for v in &values {
        let j: serde_json::Value = serde_json::from_str(v).unwrap();
        let (f, i) = (j["file"].as_str().unwrap().to_string(), j["i"].as_u64().unwrap());
        // One file's lines go to one partition, in order.
        if let Some(prev) = last.insert(f.clone(), i) {
            assert!(i > prev, "{f}: line {i} after line {prev}");
        }
        *seen.entry((f, i)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "lines in the topic more than once: {twice:?}");
    for (k, f) in files.iter().enumerate() {
        let missing: Vec<u64> = (0..next[k]).filter(|i| !seen.contains_key(&(f.to_string(), *i))).collect();
        assert!(missing.is_empty(), "{f}: lines lost: {missing:?}");
    }
    assert_eq!(values.len() as u64, total);
    let resent = server.log().matches("re-sending the chunk logged before the restart").count();
    eprintln!("chunks re-sent after a kill: {resent}");
    assert!(resent >= 2, "each restart re-sends the last logged chunk");
    // A restart while caught up: the last chunk, surely in the topic, is
    // re-sent, and the broker drops it (it answers a duplicate as Kafka
    // does: success, with the offset it stored it at).
    server.kill();
    server.restart();
    wait_until("the re-sent chunk", Duration::from_secs(10), || server.log().matches("re-sending the chunk logged before the restart").count() > resent);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(consume(&b, "lines").len() as u64, total, "the re-sent chunk was stored twice");
    let d = connect(&server, &["describe", "tail"]);
    assert_eq!(field(&d, "skipped:"), "1", "{d}");
    assert!(field(&d, "last warning:").contains("c.json at byte"), "{d}");
    assert_eq!(field(&d, "records:"), total.to_string(), "{d}");
    assert_eq!(field(&d, "state:"), "waiting", "{d}");
    let list = connect(&server, &["list"]);
    assert!(list.contains("tail") && list.contains("file-source"), "{list}");
    assert_eq!(connect(&server, &["stop", "tail"]).trim(), "connector tail stopped");
}

/// Every line of the files of `dir` (temporary ones included, if any).
fn output_lines(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().flat_map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>()).collect()
}

#[test]
fn file_sink_writes_every_record_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("sink");
    let mut server = Server::start(&dir);
    let b = server.bootstrap.clone();
    ok(&["topic", "create", "events", "-p", "2", "-b", &b]);
    let out = dir.join("out");
    let ids = |from: u64, to: u64| (from..to).map(|i| format!("e{i}")).collect::<Vec<_>>();
    produce(&b, "events", &ids(0, 600));
    let args = ["start", "dump", "--type", "file-sink", "--topic", "events", "--format", "lines", "--roll-records", "70", "--roll-after", "300ms"];
    let mut args = args.to_vec();
    args.extend(["--path", out.to_str().unwrap()]);
    connect(&server, &args);
    wait_until("some files", Duration::from_secs(10), || !output_lines(&out).is_empty());
    server.kill();
    server.restart();
    produce(&b, "events", &ids(600, 1000));
    wait_until("every record in the files", Duration::from_secs(15), || output_lines(&out).len() >= 1000);
    std::thread::sleep(Duration::from_millis(800));
    let lines = output_lines(&out);
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for l in &lines {
        *seen.entry(l.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records written more than once: {twice:?}");
    assert_eq!(lines.len(), 1000);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.starts_with("events-") && n.ends_with(".txt")), "{names:?}");
    assert!(names.iter().all(|n| millrace_core::connect::parse_segment_name(n).is_some()), "{names:?}");
    let d = connect(&server, &["describe", "dump"]);
    assert_eq!(field(&d, "state:"), "writing", "{d}");
}

#[test]
fn generator_and_bad_input() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("gen");
    let server = Server::start(&dir);
    let b = server.bootstrap.clone();
    let s = server.batch.clone();
    ok(&["topic", "create", "seq", "-p", "1", "-b", &b]);
    connect(&server, &["start", "gen", "--type", "generator", "--topic", "seq", "--kind", "sequence", "--count", "300", "--rate", "2000"]);
    wait_until("the generator's records", Duration::from_secs(10), || consume(&b, "seq").len() >= 300);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(consume(&b, "seq"), (0..300).map(|i| i.to_string()).collect::<Vec<_>>());
    let c = |args: &[&str]| {
        let mut a = vec!["connect"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--server", &s]);
        fails(&a)
    };
    assert!(c(&["start", "x", "--type", "jdbc", "--topic", "seq"]).contains("unknown connector type"));
    assert!(c(&["start", "x", "--type", "file-source", "--topic", "seq"]).contains("needs --path"));
    assert!(c(&["start", "x", "--type", "file-source", "--topic", "seq", "--path", "/no/such/place"]).contains("cannot read /no/such/place"));
    assert!(c(&["start", "x", "--type", "generator", "--topic", "nope"]).contains("unknown topic 'nope'"));
    assert!(c(&["start", "gen", "--type", "generator", "--topic", "seq"]).contains("already running"));
    assert!(c(&["start", "x", "--type", "file-source", "--topic", "seq", "--path", "/tmp", "--format", "xml"]).contains("bad source format"));
    assert!(c(&["start", "bad name", "--type", "generator", "--topic", "seq"]).contains("bad connector name"));
    assert!(c(&["stop", "ghost"]).contains("no connector named ghost"));
    assert!(c(&["describe", "ghost"]).contains("no connector named ghost"));
    let err = fails(&["connect", "start", "x", "--type", "generator", "--topic", "seq"]);
    assert!(err.contains("cannot reach the batch service") || err.contains("Error"), "{err}");
}
