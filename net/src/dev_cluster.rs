//! `millrace dev-cluster --nodes N`: a local cluster of N separate
//! `millrace serve` processes on loopback ports, for trying a cluster out
//! and for tests. Node i (1-based) serves Kafka clients on
//! `base_port + i - 1`, its peers on `base_port + 100 + i - 1` and its
//! batch service (`millrace sql --server`, `millrace job`) on
//! `base_port + 200 + i - 1` — the peer port + 100, as every node derives
//! the others' batch addresses — with its data under `DIR/node-i`; its
//! process id is in `DIR/node-i/pid`.
//!
//! The command supervises the nodes like an init system would: a node that
//! exits (a crash, or a test's `kill -9`) is restarted after a pause, from
//! its data directory. Ctrl-C or SIGTERM stops every node cleanly.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use std::process::{Child, Command};

#[derive(Args, Debug, Clone)]
pub struct DevClusterArgs {
    /// Number of nodes (each a broker and a controller voter).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Kafka port of node 1; node i uses base_port + i - 1,
    /// base_port + 100 + i - 1 for its peers and base_port + 200 + i - 1
    /// for its batch service.
    #[arg(long, default_value_t = 19092)]
    pub base_port: u16,
    /// Parent of the nodes' data directories.
    #[arg(long, default_value = "./millrace-cluster")]
    pub data_dir: PathBuf,
    /// Pause before a node that exited is started again.
    #[arg(long, default_value_t = 1000)]
    pub restart_delay_ms: u64,
    /// Extra flags for every `millrace serve` (e.g. --config FILE).
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

struct Node {
    id: u16,
    child: Option<Child>,
    restart_at: Option<tokio::time::Instant>,
}

pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        anyhow::bail!("--nodes must be between 1 and 9, got {}", args.nodes);
    }
    if u32::from(args.base_port) + 200 + u32::from(args.nodes) > 65_535 {
        anyhow::bail!("--base-port {} leaves no room for the peer and batch ports (base + 200 + nodes)", args.base_port);
    }
    let exe = std::env::current_exe()?;
    let voters: Vec<String> =
        (1..=args.nodes).map(|i| format!("{i}@127.0.0.1:{}", args.base_port + 100 + i - 1)).collect();
    let bootstrap: Vec<String> = (1..=args.nodes).map(|i| format!("127.0.0.1:{}", args.base_port + i - 1)).collect();
    std::fs::create_dir_all(&args.data_dir)?;
    let mut nodes: Vec<Node> = (1..=args.nodes).map(|id| Node { id, child: None, restart_at: None }).collect();
    for node in &mut nodes {
        node.child = Some(start(&exe, &args, &voters, node.id)?);
    }
    let batch: Vec<String> = (1..=args.nodes).map(|i| format!("127.0.0.1:{}", batch_port(&args, i))).collect();
    println!("dev-cluster: {} nodes up; bootstrap servers {}", args.nodes, bootstrap.join(","));
    println!("dev-cluster: batch servers {} (millrace sql --server {} \"SELECT ...\")", batch.join(","), batch[0]);
    println!("dev-cluster: data under {}; Ctrl-C stops every node", args.data_dir.display());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        for node in &mut nodes {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                println!("dev-cluster: node {} exited ({status}); restarting in {} ms", node.id, args.restart_delay_ms);
                node.child = None;
                node.restart_at = Some(tokio::time::Instant::now() + Duration::from_millis(args.restart_delay_ms));
            }
            if node.child.is_none() && node.restart_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                node.restart_at = None;
                match start(&exe, &args, &voters, node.id) {
                    Ok(child) => {
                        println!("dev-cluster: node {} restarted", node.id);
                        node.child = Some(child);
                    }
                    Err(e) => {
                        println!("dev-cluster: node {} did not start: {e}; trying again", node.id);
                        node.restart_at = Some(tokio::time::Instant::now() + Duration::from_millis(args.restart_delay_ms));
                    }
                }
            }
        }
    }
    println!("dev-cluster: stopping");
    for node in &mut nodes {
        if let Some(child) = node.child.as_mut() {
            // SIGTERM: each node syncs its log and stops cleanly.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for node in &mut nodes {
        if let Some(child) = node.child.as_mut() {
            while child.try_wait().ok().flatten().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    Ok(())
}

fn batch_port(args: &DevClusterArgs, id: u16) -> u16 {
    args.base_port + 200 + id - 1
}

fn start(exe: &std::path::Path, args: &DevClusterArgs, voters: &[String], id: u16) -> anyhow::Result<Child> {
    let dir = args.data_dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log"))?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", args.base_port + id - 1))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--voters")
        .arg(voters.join(","))
        .arg("--batch-listen")
        .arg(format!("127.0.0.1:{}", batch_port(args, id)))
        .args(&args.serve_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting node {id}: {e}"))?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    Ok(child)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
