//! A query's durable logs, in internal topics of the cluster (one
//! partition each, created on first use with the cluster's default
//! replication, so they survive the loss of a node as any topic does):
//!
//! | topic | key | value |
//! |---|---|---|
//! | `__millrace_stream_offsets` | `name/batch/writer`, unique per append | JSON [`OffsetEntry`]; compacted, batches more than `retain_batches` behind the last commit tombstoned |
//! | `__millrace_stream_commits` | `name/batch/writer`, unique per append | JSON [`CommitEntry`]; compacted and purged alike |
//! | `__millrace_stream_state` | `name/version`, or `name/version/i/n` for part `i` of `n` of a state over 512 KB | the engine's `StreamState` bytes; compacted, versions two behind the last commit tombstoned |
//! | `__millrace_streams` | query name | JSON `QueryDef`; a tombstone when stopped |
//!
//! Appends use acks=all. Reads fetch the partition from its log start to
//! its high watermark, incrementally (a cursor per topic), and keep this
//! query's entries in log order; the first entry per batch wins, as
//! `core::stream::recover` decides, so two runners of a query agree. Why
//! purging keeps that true: `core/src/stream/log_view.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_core::stream::{Appended, BatchId, CommitEntry, LogView, OffsetEntry, entry_key, is_query_key, purge_point};

use crate::client::{Client, ClientError};

pub const OFFSETS_TOPIC: &str = "__millrace_stream_offsets";
pub const COMMITS_TOPIC: &str = "__millrace_stream_commits";
pub const STATE_TOPIC: &str = "__millrace_stream_state";
pub const STREAMS_TOPIC: &str = "__millrace_streams";
const ALL: [&str; 4] = [OFFSETS_TOPIC, COMMITS_TOPIC, STATE_TOPIC, STREAMS_TOPIC];

const FETCH_BYTES: i32 = 8 << 20;
/// One request to the brokers may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Compacted internal topics roll their segment hourly.
const COMPACTED_SEGMENT_MS: i64 = 3_600_000;
/// A purge waits until it has this many batches to tombstone, so that it
/// costs two appends per this many batches, not per batch.
const PURGE_EVERY: usize = 10;
const UNKNOWN_TOPIC: i16 = 3;

/// One record of an internal topic.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// A connection to the cluster for the internal topics, reconnected after
/// any failure (a broken connection must not poison later requests).
pub struct Logs {
    bootstrap: String,
    client: Option<Client>,
    ensured: bool,
    /// The internal topics it creates on first use.
    topics: &'static [&'static str],
    /// Those of them created compacted: only the last record per key
    /// matters, so the log stays as small as the set of keys.
    compacted: &'static [&'static str],
    /// Whether reading creates the topics first. A node resuming its
    /// queries at start must not: the cluster's other brokers may not be
    /// registered yet, and a topic created then gets the replication
    /// factor of the brokers live at that moment (one), so it would die
    /// with its node.
    create: bool,
    /// Per topic: the next offset to read.
    cursors: BTreeMap<&'static str, i64>,
}

/// Reads, 250 ms apart, that a node resuming at start makes while it finds
/// no definitions (its metadata may not know the topic for a moment).
pub(crate) const EMPTY_RETRIES: u32 = 40;

pub(crate) async fn timed<T>(f: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(ClientError::Io(format!("no answer from the brokers within {} s", REQUEST_TIMEOUT.as_secs()))))
}

impl Logs {
    pub fn new(bootstrap: &str) -> Logs {
        // Keys of the state, offset and commit logs are never reused, so
        // compaction removes only what their tombstones delete. The
        // definitions are read as a history (a stopped query's last
        // definition names its producer) and must keep every record.
        Logs::for_topics(bootstrap, &ALL).compacting(&[STATE_TOPIC, OFFSETS_TOPIC, COMMITS_TOPIC])
    }

    /// Logs in other internal topics (the connectors').
    pub fn for_topics(bootstrap: &str, topics: &'static [&'static str]) -> Logs {
        Logs { bootstrap: bootstrap.to_string(), client: None, ensured: false, topics, compacted: &[], create: true, cursors: BTreeMap::new() }
    }

    /// Reads without creating: a topic that does not exist reads as empty.
    pub fn without_creating(mut self) -> Logs {
        self.create = false;
        self
    }

    /// Creates `topics` (some of those it handles) with
    /// `cleanup.policy=compact`.
    pub fn compacting(mut self, topics: &'static [&'static str]) -> Logs {
        self.compacted = topics;
        self
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The client, connecting first if the last one failed.
    pub async fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            self.client = Some(timed(Client::connect_routed(&self.bootstrap)).await?);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Drops the connection: the next request connects again.
    pub fn reconnect(&mut self) {
        self.client = None;
    }

    /// Runs `f` on the client; any error drops the connection.
    async fn with<T>(&mut self, f: impl AsyncFnOnce(&mut Client) -> Result<T, ClientError>) -> Result<T, ClientError> {
        let client = self.client().await?;
        let r = timed(f(client)).await;
        if r.is_err() {
            self.client = None;
        }
        r
    }

    /// Creates the internal topics that do not exist yet: one partition,
    /// the cluster's default replication factor (min(3, live brokers) unless
    /// configured), no retention limit (a query's logs must outlive it).
    pub async fn ensure_topics(&mut self) -> Result<(), ClientError> {
        if self.ensured {
            return Ok(());
        }
        for &topic in self.topics {
            let exists = self.with(async |c| c.metadata(Some(&[topic]), false).await.map(|t| t.iter().any(|t| !t.partitions.is_empty()))).await;
            let exists = match exists {
                Ok(e) => e,
                Err(e) if e.code() == Some(UNKNOWN_TOPIC) => false,
                Err(e) => return Err(e),
            };
            if !exists {
                let mut configs = vec![("retention.ms".to_string(), "-1".to_string()), ("retention.bytes".to_string(), "-1".to_string())];
                if self.compacted.contains(&topic) {
                    configs.push(("cleanup.policy".to_string(), "compact".to_string()));
                    // Only closed segments are compacted; the default
                    // roll (7 days or 1 GB) would keep tombstoned
                    // records for a week.
                    configs.push(("segment.ms".to_string(), COMPACTED_SEGMENT_MS.to_string()));
                }
                match self.with(async |c| c.create_topic_with_rf(topic, 1, -1, &configs).await).await {
                    Err(e) if e.code() != Some(TOPIC_ALREADY_EXISTS) => return Err(e),
                    _ => {}
                }
            }
            // In a cluster the controller creates the topic; this node's
            // metadata, and the partition's leader, learn of it a moment
            // later. Ready = the leader answers for the partition.
            let mut attempt = 0;
            loop {
                let ready = self.with(async |c| c.list_offset(topic, 0, -1).await).await;
                match ready {
                    Ok(_) => break,
                    Err(e) if attempt >= 100 || !matches!(e.code(), Some(UNKNOWN_TOPIC | 5 | 6)) => return Err(e),
                    Err(_) => {}
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.ensured = true;
        Ok(())
    }

    /// Appends one record with acks=all.
    pub async fn append(&mut self, topic: &'static str, key: &str, value: Option<&[u8]>) -> Result<(), ClientError> {
        self.append_all(topic, &[(key.to_string(), value.map(<[u8]>::to_vec))]).await
    }

    /// Appends records (key, value or tombstone) in one batch, with
    /// acks=all.
    pub async fn append_all(&mut self, topic: &'static str, records: &[(String, Option<Vec<u8>>)]) -> Result<(), ClientError> {
        self.ensure_topics().await?;
        let mut b = BatchBuilder::new(Compression::None);
        let now = super::wall_ms();
        for (i, (key, value)) in records.iter().enumerate() {
            b.push(Record { offset: i as i64, timestamp: now, key: Some(key.as_bytes().to_vec()), value: value.clone(), headers: Vec::new() });
        }
        let bytes = Bytes::from(b.build());
        // Waiting for the partition to be created and get a leader.
        let mut attempt = 0;
        loop {
            match self.with(async |c| c.produce(topic, 0, bytes.clone(), -1).await).await {
                Err(e) if attempt < 10 && matches!(e.code(), Some(UNKNOWN_TOPIC | 5 | 6)) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// The records appended to `topic` since the last call (from its log
    /// start on the first), in log order.
    /// A keyed topic read as a table from the start: per key, the current
    /// value (tombstoned keys left out), and the last value ever stored
    /// (tombstoned or not).
    pub async fn read_keyed(&mut self, topic: &'static str) -> Result<(BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>), ClientError> {
        let mut current = BTreeMap::new();
        let mut last = BTreeMap::new();
        for e in self.read_new(topic).await? {
            match e.value {
                Some(v) => {
                    last.insert(e.key.clone(), v.clone());
                    current.insert(e.key, v);
                }
                None => {
                    current.remove(&e.key);
                }
            }
        }
        Ok((current, last))
    }

    pub async fn read_new(&mut self, topic: &'static str) -> Result<Vec<Entry>, ClientError> {
        if self.create {
            self.ensure_topics().await?;
        } else {
            let exists = self.with(async |c| c.metadata(Some(&[topic]), false).await.map(|t| t.iter().any(|t| !t.partitions.is_empty()))).await;
            match exists {
                Ok(true) => {}
                Ok(false) => return Ok(Vec::new()),
                Err(e) if e.code() == Some(UNKNOWN_TOPIC) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let start = self.with(async |c| c.list_offset(topic, 0, -2).await).await?;
        let end = self.with(async |c| c.list_offset(topic, 0, -1).await).await?;
        let mut offset = self.cursors.get(topic).copied().unwrap_or(start).max(start);
        let mut out = Vec::new();
        while offset < end {
            let fetched = self.with(async |c| c.fetch(topic, 0, offset, 0, FETCH_BYTES).await).await?;
            let mut next = offset;
            for batch in records::split_batches(&fetched.records) {
                let (h, bytes) = batch.map_err(|e| ClientError::Protocol(format!("{topic}: a bad batch: {e}")))?;
                next = next.max(h.last_offset() + 1);
                if h.is_control() {
                    continue;
                }
                let (_, recs) = records::decode_records(bytes).map_err(|e| ClientError::Protocol(format!("{topic}: undecodable records: {e}")))?;
                for r in recs.into_iter().filter(|r| r.offset >= offset && r.offset < end) {
                    let Some(key) = r.key else { continue };
                    out.push(Entry { key: String::from_utf8_lossy(&key).into_owned(), value: r.value });
                }
            }
            if next == offset {
                return Err(ClientError::Protocol(format!("{topic}: no records at offset {offset} below the high watermark {end}")));
            }
            offset = next;
        }
        self.cursors.insert(topic, offset);
        Ok(out)
    }
}

/// The logs of one query: its entries, read incrementally and kept in
/// log order (duplicates included; readers take the first per batch).
pub struct QueryLogs {
    name: String,
    pub logs: Logs,
    offsets: LogView<OffsetEntry>,
    commits: LogView<CommitEntry>,
    /// Names this runner in the keys of its appends (`node.start_ms`).
    writer: String,
    /// Appends made so far; with `writer`, makes every key unique.
    appends: u64,
    /// Batches kept in the offset and commit logs behind the last commit.
    retain: u64,
    /// Stored state versions of this query (the first stored wins).
    states: BTreeMap<BatchId, Vec<u8>>,
    /// Versions stored in parts: how many, and those read so far.
    parts: BTreeMap<BatchId, (u32, BTreeMap<u32, Vec<u8>>)>,
}

/// A state version larger than this is stored as several records (keys
/// `name/version/i/n`), so that no record passes the broker's largest
/// message (`message.max.bytes`, 1 MB by default).
pub const STATE_PART_BYTES: usize = 512 << 10;

/// What a state topic key of query `prefix` (`name/`) names: a whole
/// version, or part `i` of `n` of one.
fn state_key(key: &str, prefix: &str) -> Option<(BatchId, Option<(u32, u32)>)> {
    let rest = key.strip_prefix(prefix)?;
    let mut it = rest.split('/');
    let v = it.next()?.parse().ok()?;
    match (it.next(), it.next(), it.next()) {
        (None, _, _) => Some((v, None)),
        (Some(i), Some(n), None) => {
            let (i, n) = (i.parse().ok()?, n.parse().ok()?);
            (i < n).then_some((v, Some((i, n))))
        }
        _ => None,
    }
}

fn decode<T: serde::de::DeserializeOwned>(topic: &str, name: &str, value: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(value).map_err(|e| ClientError::Protocol(format!("{topic}: an entry of query {name} does not decode: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Plain serde data with string keys: encoding cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl QueryLogs {
    /// `writer` names this runner (unique in the cluster, no '/'); `retain`
    /// is how many batches the offset and commit logs keep.
    pub fn new(name: &str, bootstrap: &str, writer: &str, retain: u64) -> QueryLogs {
        QueryLogs {
            name: name.to_string(),
            logs: Logs::new(bootstrap),
            offsets: LogView::new(name),
            commits: LogView::new(name),
            writer: writer.to_string(),
            appends: 0,
            retain,
            states: BTreeMap::new(),
            parts: BTreeMap::new(),
        }
    }

    async fn refresh_offsets(&mut self) -> Result<(), ClientError> {
        for e in self.logs.read_new(OFFSETS_TOPIC).await? {
            if is_query_key(&e.key, &self.name) {
                let entry = e.value.as_deref().map(|v| decode(OFFSETS_TOPIC, &self.name, v)).transpose()?;
                self.offsets.push(&e.key, entry);
            }
        }
        Ok(())
    }

    async fn refresh_commits(&mut self) -> Result<(), ClientError> {
        for e in self.logs.read_new(COMMITS_TOPIC).await? {
            if is_query_key(&e.key, &self.name) {
                let entry = e.value.as_deref().map(|v| decode(COMMITS_TOPIC, &self.name, v)).transpose()?;
                self.commits.push(&e.key, entry);
            }
        }
        Ok(())
    }

    /// A key no other append uses.
    fn next_key(&mut self, batch: BatchId) -> String {
        self.appends += 1;
        entry_key(&self.name, batch, &format!("{}.{}", self.writer, self.appends))
    }

    /// Both logs, the entries not purged, in log order (for
    /// `QueryInput::Recovered`).
    pub async fn read(&mut self) -> Result<(Vec<OffsetEntry>, Vec<CommitEntry>), ClientError> {
        self.refresh_offsets().await?;
        self.refresh_commits().await?;
        Ok((self.offsets.live(), self.commits.live()))
    }

    /// Appends `entry`, reads the log back and answers the first entry for
    /// its batch (another runner's, if that one got there first), or that
    /// the batch was purged by runners that went on.
    pub async fn log_offsets(&mut self, entry: &OffsetEntry) -> Result<Appended, ClientError> {
        let key = self.next_key(entry.batch);
        self.logs.append(OFFSETS_TOPIC, &key, Some(&encode(entry))).await?;
        self.refresh_offsets().await?;
        self.offsets
            .appended(entry.batch)
            .ok_or_else(|| ClientError::Protocol(format!("batch {} appended to {OFFSETS_TOPIC} but not read back", entry.batch)))
    }

    pub async fn log_commit(&mut self, entry: &CommitEntry) -> Result<(), ClientError> {
        let key = self.next_key(entry.batch);
        self.logs.append(COMMITS_TOPIC, &key, Some(&encode(entry))).await
    }

    /// After batch `committed` is committed: tombstones the entries of
    /// batches more than `retain` behind it, commits first, once there are
    /// at least [`PURGE_EVERY`] batches to purge. Answers how many entries
    /// it tombstoned.
    pub async fn purge(&mut self, committed: BatchId) -> Result<usize, ClientError> {
        let point = purge_point(committed, self.retain);
        // The offset view was read back at this batch's append, so nine
        // commits in ten learn there is nothing to purge without a request.
        if self.offsets.purgeable_batches(point) < PURGE_EVERY {
            return Ok(0);
        }
        self.refresh_offsets().await?;
        self.refresh_commits().await?;
        let tombstones = |keys: Vec<String>| keys.into_iter().map(|k| (k, None)).collect::<Vec<_>>();
        let commits = tombstones(self.commits.purgeable(point));
        let offsets = tombstones(self.offsets.purgeable(point));
        let n = commits.len() + offsets.len();
        if !commits.is_empty() {
            self.logs.append_all(COMMITS_TOPIC, &commits).await?;
        }
        self.logs.append_all(OFFSETS_TOPIC, &offsets).await?;
        self.refresh_offsets().await?;
        self.refresh_commits().await?;
        if let Some(floor) = self.offsets.floor() {
            self.offsets.forget_below(floor);
            self.commits.forget_below(floor);
        }
        Ok(n)
    }

    /// Entries of both logs held in memory (bounded by purging).
    pub fn entries_held(&self) -> usize {
        self.offsets.len() + self.commits.len()
    }

    /// Deletes state version `version` (a tombstone; the cleaner removes
    /// it). A query needs only the version its last commit names (a re-run
    /// of the batch after it starts from that one), so once batch N is
    /// committed, version N - 2 is never read again.
    pub async fn drop_state(&mut self, version: BatchId) -> Result<(), ClientError> {
        if let Some((n, _)) = self.parts.remove(&version) {
            for i in 0..n {
                self.logs.append(STATE_TOPIC, &format!("{}/{version}/{i}/{n}", self.name), None).await?;
            }
        } else {
            self.logs.append(STATE_TOPIC, &format!("{}/{version}", self.name), None).await?;
        }
        self.states.remove(&version);
        Ok(())
    }

    /// Stores state version `version`: one record, or parts of
    /// [`STATE_PART_BYTES`] (a reader takes the version only once it has
    /// every part, so a crash between parts leaves no half state; the
    /// batch's re-run stores the same bytes again).
    pub async fn store_state(&mut self, version: BatchId, bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.len() <= STATE_PART_BYTES {
            self.logs.append(STATE_TOPIC, &format!("{}/{version}", self.name), Some(bytes)).await?;
        } else {
            let n = bytes.len().div_ceil(STATE_PART_BYTES) as u32;
            for (i, part) in bytes.chunks(STATE_PART_BYTES).enumerate() {
                self.logs.append(STATE_TOPIC, &format!("{}/{version}/{i}/{n}", self.name), Some(part)).await?;
            }
            self.parts.insert(version, (n, BTreeMap::new()));
        }
        self.states.entry(version).or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    /// State version `version`, if stored. Older versions are forgotten
    /// (a query only ever asks for the one its last commit names, which
    /// never goes back).
    pub async fn load_state(&mut self, version: BatchId) -> Result<Option<Vec<u8>>, ClientError> {
        let prefix = format!("{}/", self.name);
        for e in self.logs.read_new(STATE_TOPIC).await? {
            let Some((v, part)) = state_key(&e.key, &prefix) else { continue };
            let Some(bytes) = e.value else { continue };
            match part {
                None => {
                    self.states.entry(v).or_insert(bytes);
                }
                Some((i, n)) => {
                    let (count, got) = self.parts.entry(v).or_insert_with(|| (n, BTreeMap::new()));
                    if *count != n {
                        continue; // a different split of the same version: the first wins
                    }
                    got.entry(i).or_insert(bytes);
                    if got.len() == n as usize && !self.states.contains_key(&v) {
                        let whole: Vec<u8> = got.values().flatten().copied().collect();
                        self.states.insert(v, whole);
                    }
                }
            }
        }
        self.states.retain(|v, _| *v >= version);
        // Parts of versions already assembled are not needed in memory;
        // their count is kept for `drop_state`.
        for (v, (_, got)) in self.parts.iter_mut() {
            if self.states.contains_key(v) || *v < version {
                got.clear();
            }
        }
        Ok(self.states.get(&version).cloned())
    }
}

/// Every query's current definition, by name (tombstoned names left out),
/// and the last definition ever stored per name (tombstoned or not).
pub async fn read_definitions(logs: &mut Logs) -> Result<(BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>), ClientError> {
    logs.read_keyed(STREAMS_TOPIC).await
}

#[cfg(test)]
mod tests {
    use super::state_key;

    #[test]
    fn state_keys_name_a_version_or_a_part_of_one() {
        assert_eq!(state_key("q/7", "q/"), Some((7, None)));
        assert_eq!(state_key("q/7/2/5", "q/"), Some((7, Some((2, 5)))));
        assert_eq!(state_key("q/7/5/5", "q/"), None, "part index past the count");
        assert_eq!(state_key("qq/7", "q/"), None);
        assert_eq!(state_key("q/x", "q/"), None);
        assert_eq!(state_key("q/7/1", "q/"), None);
        assert_eq!(state_key("q/7/1/2/3", "q/"), None);
    }
}
