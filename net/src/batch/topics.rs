//! `topic('name')` for batch queries: the planner resolves a topic to one
//! offset range per partition (log start to high watermark, read once at
//! planning, so a job reads a fixed snapshot however much is produced while
//! it runs), and each scan task reads its range with Fetch through the
//! Kafka client, from the partition's leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_core::records;
use millrace_engine::EngineError;
use millrace_engine::source::{TopicReader, TopicRange, TopicRecord};

use crate::client::{Client, ClientError};

/// Bytes asked for per Fetch.
const FETCH_BYTES: i32 = 4 << 20;
/// How long one planning look-up or one Fetch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC: i16 = 3;

/// Reads topics from the brokers reachable at `bootstrap` (a comma-separated
/// list; requests go to each partition's leader).
#[derive(Clone)]
pub struct KafkaTopics {
    bootstrap: String,
    /// Each resolved topic's partition leaders (node ids), for locality.
    leaders: Arc<Mutex<BTreeMap<String, BTreeMap<i32, i32>>>>,
}

impl KafkaTopics {
    pub fn new(bootstrap: &str) -> KafkaTopics {
        KafkaTopics { bootstrap: bootstrap.to_string(), leaders: Arc::default() }
    }

    /// Topics whose leaders are known without asking a broker (tests).
    #[cfg(test)]
    pub(crate) fn with_leaders(bootstrap: &str, topic: &str, leaders: BTreeMap<i32, i32>) -> KafkaTopics {
        let t = KafkaTopics::new(bootstrap);
        if let Ok(mut l) = t.leaders.lock() {
            l.insert(topic.to_string(), leaders);
        }
        t
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The leader (node id) of each partition of the topics resolved so far.
    pub fn leaders(&self, topic: &str) -> BTreeMap<i32, i32> {
        self.leaders.lock().map(|l| l.get(topic).cloned().unwrap_or_default()).unwrap_or_default()
    }

    async fn connect(&self) -> Result<Client, EngineError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect_routed(&self.bootstrap)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(EngineError::Source(format!("cannot reach the Kafka broker at {}: {e}", self.bootstrap))),
            Err(_) => Err(EngineError::Source(format!("cannot reach the Kafka broker at {}: timed out", self.bootstrap))),
        }
    }

    /// One range per partition: its log start offset to its high watermark now.
    pub fn resolve(&self, topic: &str) -> Result<Vec<TopicRange>, EngineError> {
        let ranges = block_on(async {
            let mut client = self.connect().await?;
            let parts = timed(client.replicas(topic), &self.bootstrap).await.map_err(|e| match e.code() {
                Some(UNKNOWN_TOPIC) => EngineError::Plan(format!("topic('{topic}'): no topic named '{topic}' on the cluster at {}", self.bootstrap)),
                _ => EngineError::Source(format!("topic('{topic}'): {e}")),
            })?;
            if parts.is_empty() {
                return Err(EngineError::Plan(format!("topic('{topic}'): no topic named '{topic}' on the cluster at {}", self.bootstrap)));
            }
            let mut ranges = Vec::new();
            let mut leaders = BTreeMap::new();
            for p in &parts {
                let err = |e: ClientError| EngineError::Source(format!("topic('{topic}'): {e}"));
                let start = timed(client.list_offset(topic, p.partition, -2), &self.bootstrap).await.map_err(err)?;
                let end = timed(client.list_offset(topic, p.partition, -1), &self.bootstrap).await.map_err(err)?;
                ranges.push(TopicRange { partition: p.partition, start, end: end.max(start) });
                leaders.insert(p.partition, p.leader);
            }
            if let Ok(mut l) = self.leaders.lock() {
                l.insert(topic.to_string(), leaders);
            }
            Ok(ranges)
        })??;
        Ok(ranges)
    }

    async fn read_range(&self, topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<TopicRecord>, EngineError> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let mut client = self.connect().await?;
        let mut offset = start;
        while offset < end {
            let fetched = timed(client.fetch(topic, partition, offset, 100, FETCH_BYTES), &self.bootstrap)
                .await
                .map_err(|e| EngineError::Source(format!("reading topic '{topic}' partition {partition} at offset {offset}: {e}")))?;
            let mut next = offset;
            for batch in records::split_batches(&fetched.records) {
                let (h, bytes) = batch.map_err(|e| EngineError::Source(format!("topic '{topic}' partition {partition}: a bad batch from the broker: {e}")))?;
                next = next.max(h.last_offset() + 1);
                if h.is_control() {
                    continue; // transaction markers are not records
                }
                let (_, recs) = records::decode_records(bytes)
                    .map_err(|e| EngineError::Source(format!("topic '{topic}' partition {partition}: undecodable records: {e}")))?;
                for r in recs.into_iter().filter(|r| r.offset >= offset && r.offset < end) {
                    out.push(TopicRecord {
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                        value: r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    });
                }
            }
            if next == offset {
                // Nothing at or after `offset`: the log ends before the
                // planned range did (truncated since planning).
                if fetched.high_watermark <= offset {
                    return Err(EngineError::Source(format!(
                        "topic '{topic}' partition {partition} ends at offset {} now, before the planned end {end} (the log was truncated since the query was planned)",
                        fetched.high_watermark
                    )));
                }
                return Err(EngineError::Source(format!("topic '{topic}' partition {partition}: the broker returned no records at offset {offset}")));
            }
            offset = next;
        }
        Ok(out)
    }
}

impl TopicReader for KafkaTopics {
    fn read(&self, topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<TopicRecord>, EngineError> {
        block_on(self.read_range(topic, partition, start, end))?
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, ClientError>>, bootstrap: &str) -> Result<T, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(ClientError::Io(format!("no answer from the Kafka broker at {bootstrap} within {} s", REQUEST_TIMEOUT.as_secs()))))
}

/// Runs `f` to completion on a runtime of its own: on this thread, or on a
/// helper thread when this one is already inside a runtime (the CLI plans
/// inside its runtime; the service plans on a blocking thread).
fn block_on<T: Send>(f: impl Future<Output = T> + Send) -> Result<T, EngineError> {
    let run = move || -> Result<T, EngineError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Execution(format!("starting a runtime for the Kafka client: {e}")))?;
        Ok(rt.block_on(f))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| s.spawn(run).join().unwrap_or_else(|_| Err(EngineError::Execution("the Kafka client thread panicked".into()))))
}

/// The catalog's topic resolver over `topics`.
pub fn resolver(topics: KafkaTopics) -> millrace_engine::sql::TopicResolver {
    Box::new(move |topic: &str| topics.resolve(topic))
}
