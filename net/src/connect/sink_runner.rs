//! The task that runs one sink: it reads each partition of the topic from
//! the sink's stored durable offset, hands the records to the [`Sink`],
//! and appends every durable offset the sink reports to
//! `__millrace_connect_offsets`. Any failure ends the session: after a
//! backoff a new one starts from the stored offsets with a fresh sink, and
//! the records after them are delivered again (the sink's contract says
//! it rewrites them idempotently).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_core::connect::{OffsetRecord, Sink, SinkRecord, recover_sink};
use tokio::sync::Notify;

use super::def::ConnectorDef;
use super::handle::{Handle, Shared, lock};
use super::logs::{append_offset, logs, read_offsets};
use crate::client::consumer::{PartitionReader, StartAt};
use crate::stream::logs::{Logs, timed};
use crate::stream::wall_ms;

/// Records handed to the sink at once, per partition.
const MAX_BATCH: usize = 5_000;
/// A pause when no partition had anything new.
const IDLE_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 5_000;

/// Makes the sink of a session (a fresh one after each failure).
pub type MakeSink = Box<dyn Fn() -> Result<Box<dyn Sink>, String> + Send + Sync>;

struct Runner {
    def: ConnectorDef,
    make: MakeSink,
    from_earliest: bool,
    logs: Logs,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

pub fn spawn(def: ConnectorDef, make: MakeSink, from_earliest: bool, bootstrap: &str) -> Handle {
    let shared = Arc::new(Mutex::new(Shared { state: "recovering".into(), started_at: wall_ms(), ..Shared::default() }));
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let runner = Runner { def, make, from_earliest, logs: logs(bootstrap), shared: Arc::clone(&shared), stop: Arc::clone(&stop), wake: Arc::clone(&wake) };
    let task = tokio::spawn(runner.run());
    Handle { shared, stop, wake, task }
}

/// Runs a sink call on a blocking thread (file writes and syncs).
async fn blocking<T: Send + 'static>(sink: &mut Option<Box<dyn Sink>>, f: impl FnOnce(&mut dyn Sink) -> T + Send + 'static) -> Result<T, String> {
    let mut s = sink.take().ok_or("the sink is gone (a call panicked)")?;
    let (s, r) = tokio::task::spawn_blocking(move || {
        let r = f(s.as_mut());
        (s, r)
    })
    .await
    .map_err(|e| format!("the sink's call failed: {e}"))?;
    *sink = Some(s);
    Ok(r)
}

impl Runner {
    fn name(&self) -> String {
        self.def.spec.name.clone()
    }

    fn set(&self, f: impl FnOnce(&mut Shared)) {
        f(&mut lock(&self.shared));
    }

    async fn run(mut self) {
        let name = self.name();
        tracing::info!(connector = %name, topic = %self.def.spec.topic, "sink connector starting");
        let mut backoff = 100u64;
        while !self.stop.load(Ordering::Relaxed) {
            match self.session().await {
                Ok(()) => break,
                Err(Fatal(e)) => {
                    tracing::error!(connector = %name, error = %e, "sink connector failed");
                    self.set(|s| {
                        s.state = "failed".into();
                        s.error = Some(e);
                    });
                    return;
                }
                Err(Retry(e)) => {
                    tracing::warn!(connector = %name, reason = %e, "sink connector retrying from its stored offsets");
                    self.logs.reconnect();
                    self.set(|s| s.retrying = Some(e));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                        _ = self.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF_MS);
                }
            }
        }
        self.set(|s| s.state = "stopped".into());
        tracing::info!(connector = %name, "sink connector ended");
    }

    /// One session, from the stored offsets; `Ok` when stopped.
    async fn session(&mut self) -> Result<(), SessionError> {
        let name = self.name();
        let topic = self.def.spec.topic.clone();
        // A fresh cursor: read every stored offset again.
        self.logs = logs(self.logs.bootstrap());
        let stored = read_offsets(&mut self.logs, &name).await.map_err(|e| Retry(format!("reading __millrace_connect_offsets: {e}")))?;
        let mut stored = recover_sink(stored.into_iter().filter_map(|r| match r {
            OffsetRecord::SinkPosition { partition, next_offset } => Some((partition, next_offset)),
            OffsetRecord::Chunk(_) => None,
        }));
        let mut sink = Some((self.make)().map_err(Fatal)?);
        let mut readers = BTreeMap::new();
        for p in 0..self.def.partitions as i32 {
            let start = match stored.get(&p) {
                Some(&o) => o,
                None => {
                    let which = if self.from_earliest { -2 } else { -1 };
                    let client = self.logs.client().await.map_err(|e| Retry(e.to_string()))?;
                    let o = timed(client.list_offset(&topic, p, which)).await.map_err(|e| Retry(format!("listing {topic}[{p}]: {e}")))?;
                    stored.insert(p, o);
                    o
                }
            };
            blocking(&mut sink, move |s| s.open(p, start)).await.map_err(Fatal)?.map_err(sink_error)?;
            let client = self.logs.client().await.map_err(|e| Retry(e.to_string()))?;
            let reader = PartitionReader::open(client, &topic, p, StartAt::Offset(start)).await.map_err(|e| Retry(e.to_string()))?;
            readers.insert(p, reader);
        }
        self.set(|s| {
            s.state = "writing".into();
            s.retrying = None;
        });
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut any = false;
            for (&p, reader) in readers.iter_mut() {
                let mut batch = Vec::new();
                let client = self.logs.client().await.map_err(|e| Retry(e.to_string()))?;
                while batch.len() < MAX_BATCH {
                    match timed(reader.next(client, 0)).await {
                        Ok(Some(r)) => batch.push(SinkRecord { partition: p, offset: r.offset, timestamp: r.timestamp, key: r.key, value: r.value }),
                        Ok(None) => break,
                        Err(e) => return Err(Retry(format!("reading {topic}[{p}]: {e}"))),
                    }
                }
                let n = batch.len() as u64;
                let durable = if batch.is_empty() {
                    blocking(&mut sink, move |s| s.idle(wall_ms(), p)).await.map_err(Fatal)?.map_err(sink_error)?
                } else {
                    any = true;
                    blocking(&mut sink, move |s| s.write(wall_ms(), p, &batch)).await.map_err(Fatal)?.map_err(sink_error)?
                };
                if let Some(d) = durable.filter(|d| stored.get(&p).is_none_or(|s| d > s)) {
                    append_offset(&mut self.logs, &name, &OffsetRecord::SinkPosition { partition: p, next_offset: d })
                        .await
                        .map_err(|e| Retry(format!("appending to __millrace_connect_offsets: {e}")))?;
                    stored.insert(p, d);
                }
                let position = stored.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ");
                self.set(|s| {
                    s.records += n;
                    s.position = position;
                });
            }
            if !any {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_MS)) => {}
                    _ = self.wake.notified() => {}
                }
            }
        }
    }
}

enum SessionError {
    /// Try again from the stored offsets after a backoff.
    Retry(String),
    /// The connector stops.
    Fatal(String),
}
use SessionError::{Fatal, Retry};

fn sink_error(e: millrace_core::connect::ConnectError) -> SessionError {
    if e.is_retriable() { Retry(e.to_string()) } else { Fatal(e.to_string()) }
}
