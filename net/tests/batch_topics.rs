//! Batch SQL over Kafka topics: `topic('name')` in `millrace sql`.
//!
//! - `local_sql_reads_a_topic`: one `millrace serve`; records produced with
//!   `millrace produce` in batches of every codec; `millrace sql
//!   --bootstrap` (in-process) and `--server` (the node's batch service)
//!   count and sum them per key and per partition, and `topic_table()`
//!   reads the latest value per key; an unknown topic and an unreachable
//!   broker are clear errors.
//! - `cluster_sql_reads_a_topic`: the same over `millrace dev-cluster
//!   --nodes 3`, submitted to each node in turn and run locally through one
//!   node's Kafka port (the client routes each partition to its leader).

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_millrace");

/// One server or cluster at a time: the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
/// Records produced per codec.
const PER_CODEC: u64 = 300;
const KEYS: u64 = 7;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port P with every `P + off` free.
fn free_port(offsets: &[u16]) -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut x = (u64::from(std::process::id()) ^ nanos ^ 0x5bd1_e995) | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20_000 + (x % 30_000) as u16;
        if offsets.iter().all(|off| bindable(base + off)) {
            return base;
        }
    }
    panic!("no free ports");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("millrace-batch-topics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn millrace(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_BACKTRACE", "0").env_remove("MILLRACE_BATCH_SERVER").env_remove("MILLRACE_BOOTSTRAP").output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = millrace(args);
    assert!(o.status.success(), "millrace {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces PER_CODEC records per codec to `topic`: key `k{i % KEYS}`, value `i`.
fn produce_all(bootstrap: &str, topic: &str) {
    let mut i = 0u64;
    for codec in CODECS {
        let mut lines = String::new();
        for _ in 0..PER_CODEC {
            lines += &format!("k{}:{i}\n", i % KEYS);
            i += 1;
        }
        let mut child = Command::new(BIN)
            .args(["produce", topic, "--key-separator", ":", "--compression", codec, "--batch-records", "100", "-b", bootstrap])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "produce --compression {codec}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// (count, sum of values) per key of what `produce_all` sent.
fn expected() -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in 0..PER_CODEC * CODECS.len() as u64 {
        let e = out.entry(format!("k{}", i % KEYS)).or_default();
        e.0 += 1;
        e.1 += i;
    }
    out
}

const BY_KEY: &str = "SELECT key, count(*) AS n, sum(CAST(value AS BIGINT)) AS s FROM topic('orders') GROUP BY key ORDER BY key";
const BY_PARTITION: &str =
    "SELECT partition, count(*) AS n, min(offset) AS lo, max(offset) AS hi, count(DISTINCT offset) AS d FROM topic('orders') GROUP BY partition ORDER BY partition";

/// Runs `sql` with `mode` and returns the rows of its CSV output (header dropped).
fn rows(dir: &Path, mode: &[&str], sql: &str, name: &str) -> Vec<Vec<String>> {
    let out = dir.join(format!("{name}.csv"));
    let out_s = out.display().to_string();
    let mut args = vec!["sql"];
    args.extend_from_slice(mode);
    args.extend_from_slice(&["--output", &out_s, sql]);
    ok(&args);
    let text = std::fs::read_to_string(&out).unwrap();
    text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn check_by_key(rows: &[Vec<String>], what: &str) {
    let got: BTreeMap<String, (u64, u64)> = rows.iter().map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap()))).collect();
    assert_eq!(got, expected(), "{what}");
}

/// Every partition read whole: offsets 0..n, none twice, all partitions there.
fn check_by_partition(rows: &[Vec<String>], partitions: usize, what: &str) {
    assert_eq!(rows.len(), partitions, "{what}: {rows:?}");
    let mut total = 0;
    for r in rows {
        let [n, lo, hi, d]: [u64; 4] = [1, 2, 3, 4].map(|i| r[i].parse().unwrap());
        assert_eq!((lo, hi + 1, d), (0, n, n), "{what}: partition {}", r[0]);
        total += n;
    }
    assert_eq!(total, PER_CODEC * CODECS.len() as u64, "{what}");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn local_sql_reads_a_topic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("local");
    let port = free_port(&[0, 2]);
    let bootstrap = format!("127.0.0.1:{port}");
    let batch = format!("127.0.0.1:{}", port + 2);
    let child = Command::new(BIN)
        .args(["serve", "--listen", &bootstrap, "--data-dir"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    wait_until("the server", Duration::from_secs(10), || TcpStream::connect(&bootstrap).is_ok() && TcpStream::connect(&batch).is_ok());
    ok(&["topic", "create", "orders", "-p", "3", "-b", &bootstrap]);
    produce_all(&bootstrap, "orders");

    let local = ["--bootstrap", bootstrap.as_str(), "--slots", "2"];
    check_by_key(&rows(&dir, &local, BY_KEY, "local-key"), "local, by key");
    check_by_partition(&rows(&dir, &local, BY_PARTITION, "local-partition"), 3, "local, by partition");
    let remote = ["--server", batch.as_str()];
    check_by_key(&rows(&dir, &remote, BY_KEY, "server-key"), "--server, by key");
    check_by_partition(&rows(&dir, &remote, BY_PARTITION, "server-partition"), 3, "--server, by partition");

    // The columns, and a filter on them.
    let r = rows(&dir, &local, r#"SELECT key, value, partition, "offset", timestamp FROM topic('orders') WHERE value = '42'"#, "one");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0][0].as_str(), r[0][1].as_str()), ("k0", "42"));

    // The topic as a table: one row per key, its latest value (each key
    // in one partition, so its last produced record), locally and on the
    // node.
    let total = PER_CODEC * CODECS.len() as u64;
    let latest: Vec<Vec<String>> = (0..KEYS).map(|k| vec![format!("k{k}"), ((0..total).filter(|i| i % KEYS == k).max().unwrap()).to_string()]).collect();
    for (mode, name) in [(&local[..], "table-local"), (&remote[..], "table-server")] {
        let mut r = rows(&dir, mode, "SELECT key, value FROM topic_table('orders') ORDER BY key", name);
        r.sort_by_key(|row| row[0][1..].parse::<u64>().unwrap_or(0));
        assert_eq!(r, latest, "{name}");
    }

    // Errors: an unknown topic, an unreachable broker; no panics.
    for mode in [&local[..], &remote[..]] {
        let mut args = vec!["sql"];
        args.extend_from_slice(mode);
        args.push("SELECT count(*) FROM topic('no_such_topic')");
        let o = millrace(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("no topic named 'no_such_topic'") && !err.contains("panick"), "{mode:?}: {err}");
    }
    drop(server);
    let o = millrace(&["sql", "--bootstrap", &bootstrap, "SELECT count(*) FROM topic('orders')"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("cannot reach the Kafka broker at {bootstrap}")) && !err.contains("panick"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_sql_reads_a_topic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("cluster");
    let config = dir.join("node.toml");
    std::fs::write(&config, "[batch]\nslots = 2\n").unwrap();
    let base = free_port(&[0, 1, 2, 100, 101, 102, 200, 201, 202]);
    let supervisor = Command::new(BIN)
        .args(["dev-cluster", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.join("cluster"))
        .arg("--")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cluster = Server(supervisor);
    let kafka = |i: u16| format!("127.0.0.1:{}", base + i - 1);
    let batch = |i: u16| format!("127.0.0.1:{}", base + 200 + i - 1);
    wait_until("three live workers", Duration::from_secs(20), || {
        (1..=3).all(|i| {
            let o = millrace(&["job", "status", "--server", &batch(i)]);
            String::from_utf8_lossy(&o.stdout).contains("live workers 1 (2 slots), 2 (2 slots), 3 (2 slots)")
        })
    });
    wait_until("the topic to be created", Duration::from_secs(10), || millrace(&["topic", "create", "orders", "-p", "3", "-b", &kafka(1)]).status.success());
    // Leaders elected before producing.
    wait_until("the topic's leaders", Duration::from_secs(10), || {
        let o = millrace(&["topic", "describe", "orders", "-b", &kafka(1)]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let leaders: Vec<&str> =
            text.lines().filter(|l| l.split_whitespace().next().is_some_and(|p| p.parse::<u32>().is_ok())).filter_map(|l| l.split_whitespace().nth(3)).collect();
        o.status.success() && leaders.len() == 3 && leaders.iter().all(|l| *l != "-1")
    });
    produce_all(&kafka(1), "orders");

    for node in 1..=3u16 {
        let remote = ["--server", &batch(node), "--shuffle-partitions", "3"].map(String::from);
        let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
        check_by_key(&rows(&dir, &remote, BY_KEY, &format!("node{node}-key")), &format!("through node {node}, by key"));
        check_by_partition(&rows(&dir, &remote, BY_PARTITION, &format!("node{node}-partition")), 3, &format!("through node {node}, by partition"));
    }
    let local = ["--bootstrap", &kafka(2), "--slots", "2"].map(String::from);
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    check_by_key(&rows(&dir, &local, BY_KEY, "local-key"), "local through node 2, by key");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
