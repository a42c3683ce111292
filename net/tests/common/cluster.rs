//! A three-node `millrace dev-cluster` for the tests that need a real
//! cluster: free loopback ports, the supervisor stopped on drop, a node
//! killed with SIGKILL, the nodes' last log lines for a failure message.

#![allow(dead_code)] // each test binary uses its part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_millrace");

/// One cluster at a time: the machine may have two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port P with P.., P+100.. and P+200.. free for three nodes.
fn free_base_port() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let seed = u64::from(std::process::id()) ^ nanos ^ 0x9e37_79b9;
    let mut x = seed | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20_000 + (x % 30_000) as u16;
        if [0u16, 100, 200].iter().all(|off| (0..3).all(|i| bindable(base + off + i))) {
            return base;
        }
    }
    panic!("no free port range for a dev-cluster");
}

pub struct Cluster {
    pub dir: PathBuf,
    supervisor: Child,
    pub base: u16,
}

impl Cluster {
    /// Three nodes that stay dead when killed; `toml` is every node's config.
    pub fn start(dir: &Path, toml: &str) -> Cluster {
        Self::start_restarting(dir, toml, 3_600_000)
    }

    /// Three nodes, each restarted `restart_ms` after it dies.
    pub fn start_restarting(dir: &Path, toml: &str, restart_ms: u64) -> Cluster {
        let config = dir.join("node.toml");
        std::fs::write(&config, toml).unwrap();
        let base = free_base_port();
        let supervisor = Command::new(BIN)
            .args(["dev-cluster", "--nodes", "3", "--base-port", &base.to_string(), "--restart-delay-ms", &restart_ms.to_string(), "--data-dir"])
            .arg(dir.join("cluster"))
            .arg("--")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let cluster = Cluster { dir: dir.to_path_buf(), supervisor, base };
        cluster.wait_for_workers();
        cluster
    }

    /// Until every driver counts every node as a live worker.
    pub fn wait_for_workers(&self) {
        let cluster = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in 1..=3 {
            loop {
                let out = cluster.millrace(&["job", "status", "--server", &cluster.batch(node)]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                if out.status.success() && text.contains("live workers 1 (2 slots), 2 (2 slots), 3 (2 slots)") {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("node {node} did not see three workers: {text} {}\n{}", String::from_utf8_lossy(&out.stderr), cluster.logs());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn pid(&self, node: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("cluster/node-{node}/pid"))).unwrap_or_default().trim().to_string()
    }

    /// Node `node`'s Kafka listener.
    pub fn kafka(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.base + node - 1)
    }

    pub fn batch(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.base + 200 + node - 1)
    }

    pub fn millrace(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("RUST_BACKTRACE", "0").env_remove("MILLRACE_BATCH_SERVER").output().unwrap()
    }

    pub fn kill(&self, node: u16) {
        let pid = self.pid(node);
        let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(status.success(), "kill -KILL {pid}");
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in 1..=3 {
            let log = std::fs::read_to_string(self.dir.join(format!("cluster/node-{node}/server.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            all += &format!("--- node {node} (last lines) ---\n{}\n", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: the supervisor stops every node cleanly.
        let _ = Command::new("kill").args(["-TERM", &self.supervisor.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.supervisor.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

