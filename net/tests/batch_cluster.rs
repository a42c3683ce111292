//! Batch jobs on a real cluster: `millrace dev-cluster --nodes 3` (three
//! `millrace serve` processes on free loopback ports) and `millrace sql
//! --server`, checked against `millrace sql --local` on the same files.
//!
//! - `cluster_results_equal_local_results`: a group-by, a word count and a
//!   join over generated files, written with `--output` in both modes.
//! - `a_killed_worker_s_shuffle_outputs_are_recomputed`: node 3 is
//!   SIGKILLed (and left dead) while the reduce stage of a job driven by
//!   node 1 runs; the job still returns the right rows, and the map stage
//!   ran a second attempt (the lost outputs were recomputed from lineage).
//! - `job_status_cancel_and_errors`: `job status` sees a running job,
//!   `job cancel` through another node stops it, and a planning error, an
//!   unknown job and an unreachable server give clear messages.
//!
//! Tasks sleep `task_delay_ms` first (a testing setting), so a job lasts
//! long enough to be watched and hit.

#![cfg(not(madsim))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::cluster::{BIN, Cluster, SERIAL};

/// A small xorshift, so the files are the same at every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// sales.csv (region, product, qty, amount: integers only, so sums do not
/// depend on the order partial sums are added in), products.csv (product,
/// category) and book.txt (lines of words).
fn write_data(dir: &Path, rows: usize) -> (String, String, String) {
    let mut g = Gen(0x1234_5678_9abc_def1);
    let regions = ["north", "south", "east", "west"];
    let mut sales = String::from("region,product,qty,amount\n");
    for _ in 0..rows {
        let region = regions[g.next(4) as usize];
        sales += &format!("{region},p{},{},{}\n", g.next(60), g.next(10), g.next(100_000));
    }
    let mut products = String::from("product,category\n");
    for p in 0..50 {
        products += &format!("p{p},c{}\n", p % 7);
    }
    let words = ["mill", "race", "water", "wheel", "stone", "grain", "river", "flow", "dam", "sluice", "gate", "flour"];
    let mut book = String::new();
    for _ in 0..rows / 4 {
        let n = 1 + g.next(12);
        let line: Vec<&str> = (0..n).map(|_| words[g.next(words.len() as u64) as usize]).collect();
        book += &line.join(" ");
        book += "\n";
    }
    let paths = ["sales.csv", "products.csv", "book.txt"].map(|f| dir.join(f));
    for (p, text) in paths.iter().zip([&sales, &products, &book]) {
        std::fs::write(p, text).unwrap();
    }
    let [a, b, c] = paths.map(|p| p.display().to_string());
    (a, b, c)
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("millrace-batch-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `sql` (with `mode`: --local or --server ADDR) writing CSV; the file's text.
fn run_to_csv(cluster: &Cluster, mode: &[&str], sql: &str, out: &Path) -> String {
    let mut args = vec!["sql"];
    args.extend_from_slice(mode);
    let out_s = out.display().to_string();
    args.extend_from_slice(&["--output", &out_s, sql]);
    let o = cluster.millrace(&args);
    assert!(o.status.success(), "millrace {args:?} failed: {}\n{}", String::from_utf8_lossy(&o.stderr), cluster.logs());
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn cluster_results_equal_local_results() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("equal");
    let (sales, products, book) = write_data(&dir, 20_000);
    let cluster = Cluster::start(&dir, "[batch]\nslots = 2\n");
    let queries = [
        format!("SELECT region, count(*) AS n, sum(qty) AS q, min(amount) AS lo, max(amount) AS hi FROM read_csv('{sales}', 6) GROUP BY region ORDER BY region"),
        format!("SELECT word, count(*) AS n FROM (SELECT explode(split(value, ' ')) AS word FROM read_text('{book}', 5)) GROUP BY word ORDER BY n DESC, word"),
        format!(
            "SELECT p.category, count(*) AS n, sum(s.qty) AS q FROM read_csv('{sales}', 6) s JOIN read_csv('{products}') p ON s.product = p.product GROUP BY p.category ORDER BY p.category"
        ),
        format!("SELECT product, region, sum(amount) AS total FROM read_csv('{sales}', 4) WHERE qty > 2 GROUP BY product, region ORDER BY total DESC, product, region LIMIT 25"),
    ];
    for (i, sql) in queries.iter().enumerate() {
        let local = run_to_csv(&cluster, &["--local"], sql, &dir.join(format!("local-{i}.csv")));
        // Through each node in turn: each is the driver once.
        let node = 1 + (i % 3) as u16;
        let remote = run_to_csv(&cluster, &["--server", &cluster.batch(node), "--shuffle-partitions", "5"], sql, &dir.join(format!("cluster-{i}.csv")));
        assert!(local.lines().count() > 1, "query {i} returned nothing:\n{local}");
        assert_eq!(remote, local, "query {i} through node {node}: {sql}");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stage progress of `job` as `job status` prints it: (id, done,
/// total, attempt) per stage.
fn stages(cluster: &Cluster, node: u16, job: &str) -> Vec<(u32, u32, u32, u32)> {
    // Empty until the job is planned and submitted.
    let o = cluster.millrace(&["job", "status", job, "--server", &cluster.batch(node)]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "  stage 0: 12/24 tasks done, 3 running, attempt 0"
            let rest = l.trim().strip_prefix("stage ")?;
            let (id, rest) = rest.split_once(": ")?;
            let (done, rest) = rest.split_once('/')?;
            let (total, rest) = rest.split_once(' ')?;
            let attempt = rest.rsplit_once("attempt ")?.1;
            Some((id.parse().ok()?, done.parse().ok()?, total.parse().ok()?, attempt.parse().ok()?))
        })
        .collect()
}

fn spawn_sql(server: &str, sql: &str, out: &Path) -> Child {
    Command::new(BIN)
        .args(["sql", "--server", server, "--shuffle-partitions", "18", "--output"])
        .arg(out)
        .arg(sql)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, cluster: &Cluster, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_worker_s_shuffle_outputs_are_recomputed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("kill");
    let (sales, _, _) = write_data(&dir, 20_000);
    // 18 map tasks and 18 reduce tasks of >= 150 ms on 6 slots: ~1 s a stage.
    let cluster = Cluster::start(&dir, "[batch]\nslots = 2\ntask_delay_ms = 150\n");
    let sql = format!("SELECT product, count(*) AS n, sum(qty) AS q, max(amount) AS hi FROM read_csv('{sales}', 18) GROUP BY product ORDER BY product");
    let expected = run_to_csv(&cluster, &["--local"], &sql, &dir.join("local.csv"));
    let started = Instant::now();
    let out = dir.join("cluster.csv");
    let client = spawn_sql(&cluster.batch(1), &sql, &out);
    // Node 1 drives job 1-1; kill node 3 once the map stage is complete and
    // the reducers are fetching (some of the blocks they need are on node 3).
    wait_until("the reduce stage runs", &cluster, Duration::from_secs(20), || {
        let s = stages(&cluster, 1, "1-1");
        s.len() == 3 && s[0].1 == s[0].2 && s[1].1 < s[1].2 && s[1].1 > 0
    });
    cluster.kill(3);
    let killed_at = started.elapsed();
    let o = client.wait_with_output().unwrap();
    assert!(o.status.success(), "the job failed: {}\n{}", String::from_utf8_lossy(&o.stderr), cluster.logs());
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(got, expected, "rows after losing node 3");
    let s = stages(&cluster, 1, "1-1");
    assert!(s[0].3 >= 1, "the map stage ran again for node 3's outputs: {s:?}");
    eprintln!("node 3 killed at {killed_at:?}; the job ended at {:?}; stages (id, done, total, attempt) {s:?}", started.elapsed());
    // The cluster keeps working with two nodes.
    let again = run_to_csv(&cluster, &["--server", &cluster.batch(2)], &sql, &dir.join("again.csv"));
    assert_eq!(again, expected);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn job_status_cancel_and_errors() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("cancel");
    let (sales, _, _) = write_data(&dir, 2_000);
    let cluster = Cluster::start(&dir, "[batch]\nslots = 2\ntask_delay_ms = 500\n");
    let sql = format!("SELECT region, count(*) AS n FROM read_csv('{sales}', 30) GROUP BY region");
    let client = spawn_sql(&cluster.batch(2), &sql, &dir.join("never.csv"));
    wait_until("job 2-1 runs", &cluster, Duration::from_secs(20), || {
        let o = cluster.millrace(&["job", "status", "--server", &cluster.batch(2)]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        text.lines().any(|l| l.starts_with("2-1 ") && l.contains("running") && l.contains("read_csv"))
    });
    // Asked of node 3, the cancellation reaches node 2, the job's driver.
    let o = cluster.millrace(&["job", "cancel", "2-1", "--server", &cluster.batch(3)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sent to node 2"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = client.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("job 2-1 was cancelled through node 3"), "{err}");
    let o = cluster.millrace(&["job", "status", "2-1", "--server", &cluster.batch(2)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("cancelled"), "{text}");
    // Cancelling it again says it is over.
    let o = cluster.millrace(&["job", "cancel", "2-1", "--server", &cluster.batch(2)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already ended"), "{o:?}");

    // A planning error comes back as the planner wrote it.
    let bad = format!("SELECT regoin FROM read_csv('{sales}')");
    let o = cluster.millrace(&["sql", "--server", &cluster.batch(1), &bad]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown column 'regoin' (columns: region, product, qty, amount)"), "{err}");
    // An unknown job, an unreachable server.
    let o = cluster.millrace(&["job", "status", "1-99", "--server", &cluster.batch(1)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no job 1-99 on node 1"), "{o:?}");
    let dead = format!("127.0.0.1:{}", cluster.base + 250);
    let o = cluster.millrace(&["sql", "--server", &dead, "SELECT 1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot reach the batch service at") && !err.contains("panicked"), "{err}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restarted_nodes_rejoin_as_drivers_and_workers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("restart");
    let (sales, products, _) = write_data(&dir, 5_000);
    let cluster = Cluster::start_restarting(&dir, "[batch]\nslots = 2\n", 200);
    let sql = format!(
        "SELECT p.category, s.region, count(*) AS n, sum(s.qty) AS q FROM read_csv('{sales}', 6) s JOIN read_csv('{products}') p ON s.product = p.product GROUP BY p.category, s.region ORDER BY p.category, s.region"
    );
    let expected = run_to_csv(&cluster, &["--local"], &sql, &dir.join("local.csv"));
    assert_eq!(run_to_csv(&cluster, &["--server", &cluster.batch(1)], &sql, &dir.join("before.csv")), expected);
    // Node 1 (a driver that has served a job) and node 3 (a worker) die and
    // come back as new incarnations: the others serve the new driver with
    // fresh worker machines, and every driver registers the new workers.
    let before = (cluster.pid(1), cluster.pid(3));
    cluster.kill(1);
    cluster.kill(3);
    wait_until("nodes 1 and 3 restart", &cluster, Duration::from_secs(20), || {
        let now = (cluster.pid(1), cluster.pid(3));
        now.0 != before.0 && now.1 != before.1
    });
    cluster.wait_for_workers();
    for node in 1..=3 {
        let out = dir.join(format!("after-{node}.csv"));
        assert_eq!(run_to_csv(&cluster, &["--server", &cluster.batch(node)], &sql, &out), expected, "through node {node}");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tasks_over_their_memory_limit_spill_and_give_the_same_rows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("spill");
    let (sales, products, _) = write_data(&dir, 200_000);
    // A 1 MB limit per task: the join's sides and the COUNT DISTINCT's
    // input (a few MB per task) must go to disk; and every map output is
    // written to disk (no memory for shuffle blocks).
    let cluster = Cluster::start(&dir, "[batch]\nslots = 2\ntask_memory_mb = 1\nshuffle_memory_mb = 0\n");
    let sql = format!(
        "SELECT p.category, s.region, count(*) AS n, sum(s.qty) AS q, count(DISTINCT s.amount) AS amounts FROM read_csv('{sales}', 4) s JOIN read_csv('{products}') p ON s.product = p.product GROUP BY p.category, s.region ORDER BY p.category, s.region"
    );
    let plain = run_to_csv(&cluster, &["--local", "--task-memory-mb", "0"], &sql, &dir.join("plain.csv"));
    assert_eq!(plain.lines().count(), 1 + 7 * 4, "{plain}");
    let out = dir.join("spilled.csv");
    let o = cluster.millrace(&["sql", "--local", "--task-memory-mb", "1", "--output", &out.display().to_string(), &sql]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains("MB to disk in"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), plain);
    // On the cluster the nodes' own limit applies, and they say they spilled.
    assert_eq!(run_to_csv(&cluster, &["--server", &cluster.batch(2), "--shuffle-partitions", "3"], &sql, &dir.join("cluster.csv")), plain);
    let logs: String = (1..=3).map(|n| std::fs::read_to_string(dir.join(format!("cluster/node-{n}/server.log"))).unwrap_or_default()).collect();
    assert!(logs.contains("spilled") && logs.contains("over batch.task_memory_mb = 1"), "no node logged a spill:\n{}", cluster.logs());
    assert!(logs.contains("written to disk (over batch.shuffle_memory_mb = 0"), "no map output went to disk:\n{}", cluster.logs());
    // Spill files are anonymous: nothing is left in a node's spill directory.
    let mut used = 0;
    for n in 1..=3 {
        let spill = dir.join(format!("cluster/node-{n}/data/spill"));
        if let Ok(d) = std::fs::read_dir(&spill) {
            used += 1;
            let left = d.count();
            assert_eq!(left, 0, "{} holds {left} files", spill.display());
        }
    }
    assert!(used > 0, "no node created its spill directory");
    let o = cluster.millrace(&["sql", "--server", &cluster.batch(1), "--task-memory-mb", "1", &sql]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("batch.task_memory_mb"));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
