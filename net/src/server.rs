//! `millrace serve`: binds the listener, opens the broker over the data
//! directory, and runs the broker loop and one task per connection until
//! shutdown is asked for.

use std::future::Future;
use std::net::SocketAddr;

use millrace_core::broker::Broker;
use millrace_core::storage::Storage;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::broker_loop::{self, Command, Peers};
use crate::peer::PeerTransport;
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::connection;
use crate::file_storage::FileStorage;

/// Bounded queue between connections and the broker loop (back-pressure).
const COMMAND_QUEUE: usize = 8192;

/// A bound, opened server, ready to run.
pub struct Server {
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    broker_task: tokio::task::JoinHandle<Result<(), String>>,
    local_addr: SocketAddr,
    /// The batch service (`millrace serve` only; stopped with the server).
    #[cfg(all(feature = "batch", not(madsim)))]
    batch: Option<crate::batch::service::BatchService>,
}

impl Server {
    /// Binds with file storage under `config.data_dir` (production).
    pub async fn bind(config: ServeConfig) -> anyhow::Result<Self> {
        let storage = FileStorage::open(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot use data directory {}: {e}", config.data_dir.display()))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        #[cfg(all(feature = "batch", not(madsim)))]
        let batch_config = config.clone();
        #[allow(unused_mut)]
        let mut server = Self::bind_with(config, storage, seed).await?;
        #[cfg(all(feature = "batch", not(madsim)))]
        {
            server.batch = crate::batch::service::BatchService::start_for(&batch_config, server.local_addr.port()).await?;
        }
        Ok(server)
    }

    /// Where the batch service listens (none in the simulator, or when its
    /// default port was busy).
    pub fn batch_addr(&self) -> Option<SocketAddr> {
        #[cfg(all(feature = "batch", not(madsim)))]
        return self.batch.as_ref().map(|b| b.local_addr());
        #[cfg(not(all(feature = "batch", not(madsim))))]
        None
    }

    /// Binds over any storage with an explicit seed (the simulator's way in).
    /// The seed must differ at every start: it also names this incarnation
    /// to the other nodes of a cluster.
    pub async fn bind_with<S: Storage + Send + 'static>(mut config: ServeConfig, storage: S, seed: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let local_addr = listener.local_addr()?;
        match &config.advertised {
            Some(adv) => {
                let (host, port) = adv
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<i32>().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("advertised address {adv:?} is not host:port"))?;
                config.broker.advertised_host = host;
                config.broker.advertised_port = port;
            }
            None => {
                config.broker.advertised_host = local_addr.ip().to_string();
                config.broker.advertised_port = i32::from(local_addr.port());
            }
        }
        let cluster = config.cluster_peers()?;
        let (broker, report) = Broker::open(config.broker.clone(), storage, seed)
            .map_err(|e| anyhow::anyhow!("cannot open the log in {}: {e}", config.data_dir.display()))?;
        if let Some(cut) = &report.metadata_log_cut {
            tracing::warn!(%cut, "metadata log recovery cut entries; if they were synced the disk lost acknowledged data");
        }
        let peers = match cluster {
            Some((peer_listen, peers)) => {
                let me = config.broker.node_id;
                let others = peers.into_iter().filter(|(id, _)| *id != me).map(|(id, a)| (id as u64, a)).collect();
                // The seed is drawn anew at every start: it names this
                // incarnation to the peers.
                let (transport, inbox) = PeerTransport::bind(me as u64, seed, peer_listen, others).await?;
                tracing::info!(node = me, peer_listen = %transport.local_addr(), voters = ?config.voters, "cluster mode");
                Some(Peers { transport, inbox })
            }
            None => None,
        };
        for (dir, r) in &report.recoveries {
            if let Some(reason) = &r.reason {
                tracing::warn!(%dir, %reason, truncated_bytes = r.truncated_bytes, removed_segments = r.removed_segments, "log recovery cut a damaged tail");
            }
        }
        for file in &report.orphan_files {
            tracing::warn!(%file, "file belongs to no topic (left in place)");
        }
        tracing::info!(
            topics = report.topics,
            partitions = report.recoveries.len(),
            data_dir = %config.data_dir.display(),
            listen = %local_addr,
            flush = ?config.broker.flush,
            "millrace serving"
        );
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let broker_task = tokio::spawn(broker_loop::run(broker, rx, Clock::new(), peers));
        Ok(Self {
            listener,
            commands,
            broker_task,
            local_addr,
            #[cfg(all(feature = "batch", not(madsim)))]
            batch: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then makes everything durable.
    /// Returns an error if the broker stopped on a fatal storage failure.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        #[cfg(all(feature = "batch", not(madsim)))]
        let Server { listener, commands, mut broker_task, batch, .. } = self;
        #[cfg(not(all(feature = "batch", not(madsim))))]
        let Server { listener, commands, mut broker_task, .. } = self;
        tokio::pin!(shutdown);
        let mut next_conn = 0u64;
        // Connection tasks, closed when the server stops: an accepted socket
        // must not outlive its server (it would hold the port, and keep a
        // client talking to nothing).
        let mut connections: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let result = loop {
            tokio::select! {
                // Polled in order: tokio's random branch order would draw from a
                // process-global seed and break replay in the simulator.
                biased;
                _ = &mut shutdown => break None,
                ended = &mut broker_task => {
                    let reason = match ended {
                        Ok(Err(reason)) => reason,
                        Ok(Ok(())) => "broker loop ended".to_string(),
                        Err(e) => format!("broker task failed: {e}"),
                    };
                    break Some(reason);
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        next_conn += 1;
                        tracing::debug!(conn = next_conn, %peer, "accepted connection");
                        connections.retain(|c| !c.is_finished());
                        connections.push(tokio::spawn(connection::serve(stream, next_conn, commands.clone())));
                    }
                    Err(e) => {
                        tracing::warn!(%e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        };
        for c in &connections {
            c.abort();
        }
        #[cfg(all(feature = "batch", not(madsim)))]
        drop(batch);
        if let Some(reason) = result {
            anyhow::bail!("stopped: {reason}");
        }
        tracing::info!("shutting down: syncing the log");
        let (done, wait) = oneshot::channel();
        if commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = wait.await;
        }
        match broker_task.await {
            Ok(Err(reason)) => anyhow::bail!("stopped: {reason}"),
            _ => {
                tracing::info!("stopped cleanly");
                Ok(())
            }
        }
    }
}
