//! The connectors of one `millrace serve` node. A connector runs on the
//! node that started it (its owner, in the definition); when the node
//! starts, it resumes every connector of `__millrace_connectors` that it
//! owns (on a single node: every one).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use millrace_core::connect::{ConnectorConfig, FileTail, Generator, SegmenterConfig};

use super::def::{ConnectorDef, check_name};
use super::file_sink::FileSink;
use super::files::RealFiles;
use super::handle::{Handle, lock};
use super::logs::{CONNECTORS_TOPIC, logs, read_definitions};
use super::{sink_runner, source_runner};
use crate::batch::proto::{ConnectSpec, ConnectorInfo};
use crate::client::ClientError;
use crate::stream::logs::{Logs, timed};
use crate::stream::wall_ms;

const STOP_WAIT: Duration = Duration::from_secs(10);
const UNKNOWN_TOPIC: i16 = 3;

struct Running {
    def: ConnectorDef,
    handle: Handle,
}

struct Inner {
    node: u32,
    single: bool,
    kafka: String,
    running: Mutex<BTreeMap<String, Running>>,
    /// Starts and stops one at a time (a name is checked, then taken).
    changing: tokio::sync::Mutex<()>,
    resume: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone)]
pub struct ConnectService {
    inner: Arc<Inner>,
}

/// Starts the runner of a definition; an error says why it cannot run
/// (a path that is not there any more, a folder that cannot be made).
fn launch(def: &ConnectorDef, kafka: &str) -> Result<Handle, String> {
    let topic = def.spec.topic.clone();
    match def.spec.config.clone() {
        ConnectorConfig::FileSource { path, format } => {
            let files = RealFiles::open(&path)?;
            Ok(source_runner::spawn(def.clone(), Box::new(FileTail::new(files, format)), kafka))
        }
        ConnectorConfig::Generator { seed, kind, count } => Ok(source_runner::spawn(def.clone(), Box::new(Generator { seed, kind, count }), kafka)),
        ConnectorConfig::FileSink { path, format, roll_records, roll_bytes, roll_ms, from_earliest } => {
            let config = SegmenterConfig { topic, format, roll_records, roll_bytes, roll_ms };
            FileSink::create(&path, config.clone())?;
            let make: sink_runner::MakeSink = Box::new(move || FileSink::create(&path, config.clone()).map(|s| Box::new(s) as _));
            Ok(sink_runner::spawn(def.clone(), make, from_earliest, kafka))
        }
    }
}

impl ConnectService {
    /// Starts the service of node `node`, whose brokers are at `kafka`, and
    /// resumes its connectors in the background.
    pub fn start(node: u32, single: bool, kafka: &str) -> ConnectService {
        let inner = Arc::new(Inner {
            node,
            single,
            kafka: kafka.to_string(),
            running: Mutex::default(),
            changing: tokio::sync::Mutex::new(()),
            resume: Mutex::new(None),
        });
        let s = ConnectService { inner };
        let bg = s.clone();
        let task = tokio::spawn(async move { bg.resume().await });
        *lock(&s.inner.resume) = Some(task);
        s
    }

    /// Ends every connector task (the node is shutting down; definitions
    /// stay, so they resume when it starts again).
    pub fn shutdown(&self) {
        if let Some(t) = lock(&self.inner.resume).take() {
            t.abort();
        }
        for r in self.running().values() {
            r.handle.task.abort();
        }
    }

    fn running(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        lock(&self.inner.running)
    }

    async fn resume(&self) {
        let mut attempt = 0u32;
        let defs = loop {
            // Reading does not create the topics: at start the other
            // brokers may not be registered, and a topic created then
            // would have one replica.
            let mut l = logs(&self.inner.kafka).without_creating();
            match read_definitions(&mut l).await {
                // Nothing defined, or a restarted cluster node whose
                // metadata has not caught up yet: look again for a while.
                Ok((current, _)) if current.is_empty() && attempt < crate::stream::logs::EMPTY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok((current, _)) => break current,
                Err(e) => {
                    attempt += 1;
                    if attempt.is_multiple_of(20) {
                        tracing::warn!(%e, "cannot read the connector definitions yet; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let _guard = self.inner.changing.lock().await;
        for (name, bytes) in defs {
            let def = match ConnectorDef::from_json(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(connector = %name, %e, "not resuming a connector");
                    continue;
                }
            };
            if !(self.inner.single || def.owner == self.inner.node) || self.running().contains_key(&name) {
                continue;
            }
            match launch(&def, &self.inner.kafka) {
                Ok(handle) => {
                    tracing::info!(connector = %name, "resuming connector");
                    self.running().insert(name, Running { def, handle });
                }
                Err(e) => tracing::error!(connector = %name, %e, "not resuming a connector"),
            }
        }
    }

    /// Defines and starts a connector; the answer to print, or why not.
    pub async fn start_connector(&self, spec: ConnectSpec) -> Result<String, String> {
        check_name(&spec.name)?;
        let _guard = self.inner.changing.lock().await;
        let name = spec.name.clone();
        if let Some(r) = self.running().get(&name)
            && !r.handle.task.is_finished()
        {
            return Err(format!("a connector named {name} is already running on node {} (stop it first, or choose another name)", self.inner.node));
        }
        let mut l = logs(&self.inner.kafka);
        let unreachable = |e: ClientError| format!("cannot reach the brokers at {}: {e}", self.inner.kafka);
        let (current, last) = read_definitions(&mut l).await.map_err(unreachable)?;
        if let Some(bytes) = current.get(&name) {
            let owner = ConnectorDef::from_json(bytes).map(|d| d.owner.to_string()).unwrap_or_else(|_| "?".into());
            return Err(format!("a connector named {name} already exists (owned by node {owner}); stop it first, or choose another name"));
        }
        let topic = &spec.topic;
        let partitions = partitions(&mut l, topic).await.map_err(unreachable)?;
        if partitions == 0 {
            return Err(format!("unknown topic '{topic}': create it first (millrace topic create {topic})"));
        }
        let mut def = ConnectorDef { spec: spec.clone(), owner: self.inner.node, partitions, created_at: wall_ms() };
        let resumed = match last.get(&name).map(|b| ConnectorDef::from_json(b)) {
            Some(Ok(prev)) if prev.same_connector(&spec) => {
                // Its stored positions and chunks were routed with the
                // partition count of then.
                def.partitions = prev.partitions;
                true
            }
            Some(_) => {
                return Err(format!(
                    "the name {name} was used before for a different connector, whose positions remain in __millrace_connect_offsets; choose another name"
                ));
            }
            None => false,
        };
        let handle = launch(&def, &self.inner.kafka)?;
        if let Err(e) = l.append(CONNECTORS_TOPIC, &name, Some(&def.to_json())).await {
            handle.stop();
            handle.task.abort();
            return Err(format!("storing the connector's definition in {CONNECTORS_TOPIC}: {e}"));
        }
        let summary = def.spec.config.summary();
        let kind = def.spec.config.kind();
        self.running().insert(name.clone(), Running { def, handle });
        let arrow = if kind.is_source() { format!("{summary} -> {topic}") } else { format!("{topic} -> {summary}") };
        Ok(format!(
            "connector {name} ({}) {} on node {}: {arrow}",
            kind.name(),
            if resumed { "resumed from its stored positions" } else { "started" },
            self.inner.node
        ))
    }

    /// Stops a connector of this node and removes its definition.
    pub async fn stop_connector(&self, name: &str) -> Result<String, String> {
        let _guard = self.inner.changing.lock().await;
        let task = {
            let mut running = self.running();
            let Some(r) = running.get_mut(name) else {
                return Err(format!("no connector named {name} on node {}", self.inner.node));
            };
            r.handle.stop();
            std::mem::replace(&mut r.handle.task, tokio::spawn(async {}))
        };
        let ended = tokio::time::timeout(STOP_WAIT, task).await.is_ok();
        let mut l = logs(&self.inner.kafka);
        l.append(CONNECTORS_TOPIC, name, None).await.map_err(|e| format!("removing the definition of {name} from {CONNECTORS_TOPIC}: {e}"))?;
        if let Some(r) = self.running().get(name) {
            lock(&r.handle.shared).state = "stopped".into();
        }
        Ok(if ended {
            format!("connector {name} stopped")
        } else {
            format!("connector {name} stopped (its last step was still running after {} s)", STOP_WAIT.as_secs())
        })
    }

    pub fn list(&self) -> Vec<ConnectorInfo> {
        self.running().values().map(|r| info(r, self.inner.node)).collect()
    }

    pub fn describe(&self, name: &str) -> Result<ConnectorInfo, String> {
        self.running().get(name).map(|r| info(r, self.inner.node)).ok_or_else(|| format!("no connector named {name} on node {}", self.inner.node))
    }
}

/// The topic's partition count; 0 when it does not exist.
async fn partitions(logs: &mut Logs, topic: &str) -> Result<u32, ClientError> {
    let client = logs.client().await?;
    match timed(client.metadata(Some(&[topic]), false)).await {
        Ok(m) => Ok(m.iter().filter(|t| t.name == topic).map(|t| t.partitions.len() as u32).sum()),
        Err(e) if e.code() == Some(UNKNOWN_TOPIC) => Ok(0),
        Err(e) => Err(e),
    }
}

fn info(r: &Running, node: u32) -> ConnectorInfo {
    let s = r.handle.snapshot();
    let secs = (wall_ms() - s.started_at) as f64 / 1000.0;
    ConnectorInfo {
        name: r.def.spec.name.clone(),
        kind: r.def.spec.config.kind().name().to_string(),
        topic: r.def.spec.topic.clone(),
        summary: r.def.spec.config.summary(),
        owner: node,
        state: s.state,
        error: s.error,
        retrying: s.retrying,
        records: s.records,
        records_per_sec: (secs > 0.0).then(|| s.records.saturating_sub(s.records_at_start) as f64 / secs),
        position: s.position,
        skipped: s.skipped,
        last_warning: s.last_warning,
    }
}
