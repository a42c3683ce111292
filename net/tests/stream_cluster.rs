//! A stream query outlives the node that ran it: on a three-node
//! `millrace dev-cluster`, a query started on node 1 copies ids from one
//! topic to another; node 1 is SIGKILLed and stays dead while producers
//! keep writing; node 2 (the live node with the smallest id) takes the
//! query over once the controller has fenced node 1, resumes it from its
//! logs, and every id ends up in the output exactly once; node 3 lists
//! it as running on node 2. Each batch is a job of the owner's driver.

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::cluster::{BIN, Cluster, SERIAL};

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("millrace-stream-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let o = cluster.millrace(args);
    assert!(o.status.success(), "millrace {args:?} failed: {}\n{}", String::from_utf8_lossy(&o.stderr), cluster.logs());
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn produce(cluster: &Cluster, bootstrap: &str, topic: &str, from: u64, to: u64) {
    let mut child = Command::new(BIN).args(["produce", topic, "-b", bootstrap]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let lines: String = (from..to).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "produce: {}\n{}", String::from_utf8_lossy(&o.stderr), cluster.logs());
}

/// How many times each id is in `topic`.
fn ids(cluster: &Cluster, bootstrap: &str, topic: &str) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for line in ok(cluster, &["consume", topic, "--exit-at-end", "-b", bootstrap]).lines() {
        let id = line.trim_start_matches("{\"id\":").trim_end_matches('}').parse::<u64>().unwrap_or_else(|_| panic!("not an id record: {line}"));
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn wait_until(what: &str, cluster: &Cluster, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_query_is_taken_over_when_its_node_dies() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("takeover");
    let cluster = Cluster::start(&dir, "[batch]\nslots = 2\n");
    let (k1, k2) = (cluster.kafka(1), cluster.kafka(2));
    // Topics take their replication factor from the brokers live when
    // they are created: wait until a probe topic gets all three.
    let mut probe = 0;
    wait_until("three live brokers", &cluster, Duration::from_secs(20), || {
        probe += 1;
        let name = format!("probe{probe}");
        if !cluster.millrace(&["topic", "create", &name, "-p", "1", "-b", &k1]).status.success() {
            return false;
        }
        // The new topic reaches the node's metadata a moment later.
        std::thread::sleep(Duration::from_millis(300));
        let d = cluster.millrace(&["topic", "describe", &name, "-b", &k1]);
        String::from_utf8_lossy(&d.stdout).lines().any(|l| l.split_whitespace().nth(5).is_some_and(|r| r.split(',').count() == 3))
    });
    ok(&cluster, &["topic", "create", "ids", "-p", "3", "-b", &k1]);
    ok(&cluster, &["topic", "create", "copied", "-p", "2", "-b", &k1]);
    let sql = "INSERT INTO copied SELECT id FROM topic('ids', 'json', 'id BIGINT')";
    let out = ok(&cluster, &["stream", "start", "copy", "--sql", sql, "--trigger", "200ms", "--from", "earliest", "--server", &cluster.batch(1)]);
    assert!(out.contains("on node 1"), "{out}");
    produce(&cluster, &k1, "ids", 0, 300);
    wait_until("node 1's query copied the first 300 ids", &cluster, Duration::from_secs(20), || ids(&cluster, &k2, "copied").len() == 300);

    cluster.kill(1);
    produce(&cluster, &k2, "ids", 300, 600);
    let describe = || cluster.millrace(&["stream", "describe", "copy", "--server", &cluster.batch(2)]);
    wait_until("node 2 runs the query", &cluster, Duration::from_secs(30), || describe().status.success());
    let d = String::from_utf8_lossy(&describe().stdout).to_string();
    assert!(d.contains("node:             2"), "{d}");
    let node3 = cluster.millrace(&["stream", "describe", "copy", "--server", &cluster.batch(3)]);
    assert!(!node3.status.success(), "node 3 must not run it too: {}", String::from_utf8_lossy(&node3.stdout));
    let err = String::from_utf8_lossy(&node3.stderr);
    assert!(err.contains("runs on node 2"), "node 3 points to the owner: {err}");
    let list = ok(&cluster, &["stream", "list", "--server", &cluster.batch(3)]);
    assert!(list.lines().any(|l| l.starts_with("copy ") && l.contains("on node 2")), "{list}");

    wait_until("every id in the output", &cluster, Duration::from_secs(30), || ids(&cluster, &k2, "copied").len() == 600);
    std::thread::sleep(Duration::from_millis(600)); // a duplicate would show by now
    let seen = ids(&cluster, &k2, "copied");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids written more than once: {twice:?}");
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (0..600).collect::<Vec<_>>(), "ids lost");
    // Node 2 runs the batches as jobs of its driver, on the cluster's
    // workers: they are listed with the clients' jobs.
    let jobs = ok(&cluster, &["job", "status", "--server", &cluster.batch(2)]);
    assert!(jobs.lines().any(|l| l.contains("stream copy batch") && l.contains("succeeded")), "node 2 lists no batch of the query as a job:\n{jobs}");
    let log = std::fs::read_to_string(dir.join("cluster/node-2/server.log")).unwrap_or_default();
    assert!(log.contains("taking over a stream query"), "node 2's log does not show the takeover");
}
