//! A consumer in a group, as librdkafka's or Java's classic consumer works:
//! join, let the leader assign partitions with the range assignor, resume
//! each partition at its committed offset, heartbeat while reading, and
//! rejoin (after committing) when the group rebalances. Eager protocol:
//! every member gives up all its partitions at each rebalance.

use millrace_core::records::Record;
use tokio::time::{Duration, Instant};

use super::consumer::{PartitionReader, StartAt};
use super::group::{FENCED_INSTANCE_ID, ILLEGAL_GENERATION, Membership, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID, range_assign};
use super::{Client, ClientError};

const OFFSET_OUT_OF_RANGE: i16 = 1;

#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Static membership (`group.instance.id`).
    pub instance_id: Option<String>,
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms`: how long a rebalance waits for this member.
    pub rebalance_timeout_ms: i32,
    pub heartbeat_interval_ms: u64,
    /// Where to start a partition without a committed offset
    /// (`auto.offset.reset`): earliest or latest.
    pub reset: StartAt,
}

impl GroupConsumerConfig {
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            heartbeat_interval_ms: 1_000,
            reset: StartAt::Earliest,
        }
    }
}

/// What changed in the consumer's membership (for callers that keep a history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub generation: i32,
    pub member_id: String,
    pub partitions: Vec<(String, i32)>,
    /// The committed offset (or reset position) each partition resumes at.
    pub positions: Vec<(String, i32, i64)>,
}

pub struct GroupConsumer {
    client: Client,
    config: GroupConsumerConfig,
    membership: Option<Membership>,
    /// The member id to rejoin with (kept across rebalances).
    member_id: String,
    readers: Vec<PartitionReader>,
    next_reader: usize,
    next_heartbeat: Instant,
}

impl GroupConsumer {
    pub async fn connect(bootstrap: &str, config: GroupConsumerConfig) -> Result<Self, ClientError> {
        let mut client = Client::connect(bootstrap).await?;
        client.find_coordinator(&config.group).await?;
        Ok(Self::with_client(client, config))
    }

    /// For a cluster: connects to whichever node coordinates the group
    /// (found through any address of `bootstrap`), reading partitions from
    /// their leaders.
    pub async fn connect_routed(bootstrap: &str, config: GroupConsumerConfig) -> Result<Self, ClientError> {
        let client = Client::connect_to_coordinator(bootstrap, &config.group).await?;
        Ok(Self::with_client(client, config))
    }

    fn with_client(client: Client, config: GroupConsumerConfig) -> Self {
        Self {
            client,
            config,
            membership: None,
            member_id: String::new(),
            readers: Vec::new(),
            next_reader: 0,
            next_heartbeat: Instant::now(),
        }
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Partitions owned in the current generation with their positions.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.readers.iter().map(|r| (r.topic.clone(), r.partition, r.next_offset)).collect()
    }

    /// Joins the group if this consumer is not a member of the current
    /// generation. Returns the new assignment when it (re)joined.
    pub async fn ensure_joined(&mut self) -> Result<Option<Assigned>, ClientError> {
        if self.membership.is_some() {
            return Ok(None);
        }
        self.readers.clear();
        let c = &self.config;
        let joined = match self
            .client
            .join_group(&c.group, &self.member_id, c.instance_id.as_deref(), &c.topics, c.session_timeout_ms, c.rebalance_timeout_ms)
            .await
        {
            Err(e) if e.code() == Some(UNKNOWN_MEMBER_ID) => {
                // Our id expired: the next join starts afresh.
                self.member_id.clear();
                return Err(e);
            }
            other => other?,
        };
        self.member_id = joined.membership.member_id.clone();
        let m = joined.membership;
        let assignments = if m.leader == m.member_id {
            let mut topics: Vec<&str> = joined.members.iter().flat_map(|(_, ts)| ts.iter().map(String::as_str)).collect();
            topics.sort_unstable();
            topics.dedup();
            let meta = self.client.metadata(Some(&topics), false).await?;
            range_assign(&joined.members, &|t| meta.iter().find(|i| i.name == t).map(|i| i.partitions.clone()).unwrap_or_default())
        } else {
            Vec::new()
        };
        let partitions = self.client.sync_group(&m, &assignments).await?;
        let committed = self.client.fetch_offsets(&m.group, Some(&partitions)).await?;
        let mut positions = Vec::new();
        for (topic, partition) in &partitions {
            let at = committed.iter().find(|(t, p, _)| t == topic && p == partition).map_or(-1, |c| c.2);
            let start = if at >= 0 { StartAt::Offset(at) } else { self.config.reset };
            let reader = PartitionReader::open(&mut self.client, topic, *partition, start).await?;
            positions.push((topic.clone(), *partition, reader.next_offset));
            self.readers.push(reader);
        }
        let assigned = Assigned { generation: m.generation, member_id: m.member_id.clone(), partitions, positions };
        self.membership = Some(m);
        self.next_heartbeat = Instant::now() + Duration::from_millis(self.config.heartbeat_interval_ms);
        Ok(Some(assigned))
    }

    /// Heartbeats if one is due. A rebalance makes the consumer commit what
    /// it read and drop its membership (the next `ensure_joined` rejoins).
    pub async fn heartbeat_if_due(&mut self) -> Result<(), ClientError> {
        let Some(m) = &self.membership else { return Ok(()) };
        if Instant::now() < self.next_heartbeat {
            return Ok(());
        }
        let m = m.clone();
        match self.client.heartbeat(&m).await {
            Ok(()) => {
                self.next_heartbeat = Instant::now() + Duration::from_millis(self.config.heartbeat_interval_ms);
                Ok(())
            }
            Err(e) if e.code() == Some(REBALANCE_IN_PROGRESS) => {
                // Eager protocol: commit, then give everything up.
                let committed = self.commit().await;
                self.membership = None;
                committed.map(|_| ())
            }
            Err(e) if matches!(e.code(), Some(ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID)) => {
                if e.code() != Some(ILLEGAL_GENERATION) {
                    self.member_id.clear();
                }
                self.membership = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The next record of an assigned partition, waiting up to `max_wait_ms`.
    /// Joins first if needed and heartbeats on the way.
    pub async fn poll(&mut self, max_wait_ms: i32) -> Result<Option<(String, i32, Record)>, ClientError> {
        self.ensure_joined().await?;
        self.heartbeat_if_due().await?;
        if self.membership.is_none() || self.readers.is_empty() {
            return Ok(None);
        }
        for _ in 0..self.readers.len() {
            let i = self.next_reader % self.readers.len();
            let wait = if self.readers.len() > 1 { 0 } else { max_wait_ms };
            let r = &mut self.readers[i];
            let got = match r.next(&mut self.client, wait).await {
                Err(e) if e.code() == Some(OFFSET_OUT_OF_RANGE) => {
                    // Retention deleted what we were to read: reset.
                    let (topic, partition) = (r.topic.clone(), r.partition);
                    *r = PartitionReader::open(&mut self.client, &topic, partition, self.config.reset).await?;
                    None
                }
                other => other?,
            };
            match got {
                Some(rec) => return Ok(Some((r.topic.clone(), r.partition, rec))),
                None => self.next_reader += 1,
            }
        }
        Ok(None)
    }

    /// Commits the position of every owned partition. Returns what it committed.
    pub async fn commit(&mut self) -> Result<Vec<(String, i32, i64)>, ClientError> {
        let Some(m) = &self.membership else { return Ok(Vec::new()) };
        let offsets = self.positions();
        if offsets.is_empty() {
            return Ok(offsets);
        }
        let (group, generation, member, instance) = (m.group.clone(), m.generation, m.member_id.clone(), m.instance_id.clone());
        match self.client.commit_offsets(&group, generation, &member, instance.as_deref(), &offsets).await {
            Ok(()) => Ok(offsets),
            Err(e) if matches!(e.code(), Some(REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID)) => {
                // No longer the owner: what we read will be read again by
                // the next owner (at-least-once), never committed by us.
                self.membership = None;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Commits and leaves the group, so the others rebalance at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let committed = self.commit().await;
        if let Some(m) = self.membership.take()
            && m.instance_id.is_none()
        {
            // Static members do not leave: a restart within the session
            // timeout keeps their partitions (KIP-345).
            self.client.leave_group(&m).await?;
        }
        committed.map(|_| ())
    }
}
