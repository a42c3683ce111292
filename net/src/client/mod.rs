//! Millrace's own Kafka client: the CLI helpers use it today, and the
//! simulator's workload clients will use it too. It speaks only what the
//! broker serves, at fixed protocol versions.

mod connection;
pub mod consumer;
pub mod group;
pub mod group_consumer;
pub mod partitioner;
pub mod producer;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use millrace_core::ErrorCode;

pub use connection::Connection;

const METADATA_V: i16 = 12;
const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const LIST_OFFSETS_V: i16 = 7;
const CREATE_TOPICS_V: i16 = 7;
const DELETE_TOPICS_V: i16 = 5;
const INIT_PRODUCER_ID_V: i16 = 4;
const DESCRIBE_CONFIGS_V: i16 = 4;
const INCREMENTAL_ALTER_CONFIGS_V: i16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{context}: {name} ({code}){}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka { context: String, code: i16, name: String, message: Option<String> },
}

impl ClientError {
    fn kafka(context: impl Into<String>, code: i16, message: Option<String>) -> Self {
        ClientError::Kafka { context: context.into(), code, name: error_name(code), message: message.filter(|m| !m.is_empty()) }
    }

    /// Kafka error code, if the broker returned one.
    pub fn code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn error_name(code: i16) -> String {
    kafka_protocol::ResponseError::try_from_code(code).map(|e| format!("{e:?}")).unwrap_or_else(|| format!("error {code}"))
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// What Metadata says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<i32>,
    pub topic_id: String,
}

/// Where a partition lives, as Metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

pub struct Client {
    conn: Connection,
    /// Set by [`Client::connect_routed`]: partition requests go to leaders.
    pub(crate) routing: Option<Routing>,
}

/// Leader routing for a cluster: produce, fetch and list-offsets go to the
/// partition's leader, as Metadata names it; a `NOT_LEADER_OR_FOLLOWER` or
/// `LEADER_NOT_AVAILABLE` answer (or a broken leader connection) forgets
/// what was known and asks again, a few times.
#[derive(Default)]
pub(crate) struct Routing {
    /// The address of the bootstrap connection (`conn`).
    pub(crate) bootstrap: String,
    leaders: std::collections::BTreeMap<(String, i32), String>,
    conns: std::collections::BTreeMap<String, Connection>,
}

/// Attempts of a routed request (each after refreshing the leaders).
const ROUTED_ATTEMPTS: usize = 5;

impl Client {
    /// One connection to `bootstrap`; every request goes there.
    pub async fn connect(bootstrap: &str) -> Result<Self, ClientError> {
        Ok(Self { conn: Connection::connect(bootstrap).await?, routing: None })
    }

    /// Connects to the first reachable address of a comma-separated list,
    /// and routes partition requests to their leaders (for clusters; on a
    /// single node everything stays on the one connection).
    pub async fn connect_routed(bootstrap: &str) -> Result<Self, ClientError> {
        let mut last = ClientError::Io(format!("no address in {bootstrap:?}"));
        for addr in bootstrap.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Connection::connect(addr).await {
                Ok(conn) => {
                    let routing = Routing { bootstrap: addr.to_string(), ..Routing::default() };
                    return Ok(Self { conn, routing: Some(routing) });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The connection for `topic-partition`: its leader's when routing.
    async fn partition_conn(&mut self, topic: &str, partition: i32) -> Result<&mut Connection, ClientError> {
        let Some(routing) = self.routing.as_ref() else { return Ok(&mut self.conn) };
        let key = (topic.to_string(), partition);
        if !routing.leaders.contains_key(&key) {
            let leaders = self.leaders(topic).await?;
            let routing = self.routing.as_mut().expect("routing");
            for (p, addr) in leaders {
                routing.leaders.insert((topic.to_string(), p), addr);
            }
        }
        let routing = self.routing.as_mut().expect("routing");
        let addr = match routing.leaders.get(&key) {
            Some(a) if *a != routing.bootstrap => a.clone(),
            // No leader known (or the bootstrap broker leads): ask it; a
            // refusal says what to do.
            _ => return Ok(&mut self.conn),
        };
        if !routing.conns.contains_key(&addr) {
            let c = Connection::connect(&addr).await?;
            routing.conns.insert(addr.clone(), c);
        }
        Ok(routing.conns.get_mut(&addr).expect("inserted"))
    }

    /// Forgets the leaders of `topic` (and a leader connection that failed).
    fn leaders_moved(&mut self, topic: &str, broken: bool) {
        if let Some(r) = self.routing.as_mut() {
            let addrs: Vec<String> = r.leaders.iter().filter(|((t, _), _)| t == topic).map(|(_, a)| a.clone()).collect();
            r.leaders.retain(|(t, _), _| t != topic);
            if broken {
                for a in addrs {
                    r.conns.remove(&a);
                }
            }
        }
    }

    /// Whether a failed routed request is worth another attempt.
    fn should_reroute(&mut self, topic: &str, e: &ClientError, attempt: usize) -> bool {
        if self.routing.is_none() || attempt + 1 >= ROUTED_ATTEMPTS {
            return false;
        }
        let (moved, broken) = match e {
            ClientError::Kafka { code, .. } => (matches!(*code, 5 | 6), false),
            ClientError::Io(_) => (true, true),
            _ => (false, false),
        };
        if moved {
            self.leaders_moved(topic, broken);
        }
        moved
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Topics and their partitions; `None` lists every topic.
    pub async fn metadata(&mut self, topics: Option<&[&str]>, auto_create: bool) -> Result<Vec<TopicInfo>, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| ts.iter().map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t)))).collect()))
            .with_allow_auto_topic_creation(auto_create);
        let resp = self.conn.call(&req, METADATA_V).await?;
        let mut out = Vec::new();
        for t in resp.topics {
            let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
            if t.error_code != 0 {
                return Err(ClientError::kafka(format!("metadata for {name}"), t.error_code, None));
            }
            let mut partitions: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            partitions.sort_unstable();
            out.push(TopicInfo { name, partitions, topic_id: t.topic_id.to_string() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(String, String)]) -> Result<(), ClientError> {
        self.create_topic_with_rf(name, partitions, -1, configs).await
    }

    /// Creates a topic with an explicit replication factor (-1: the
    /// cluster's default).
    pub async fn create_topic_with_rf(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let req = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000);
        let resp = self.conn.call(&req, CREATE_TOPICS_V).await?;
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("creating topic {name}"),
                    t.error_code,
                    t.error_message.map(|m| m.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Each partition's leader as `host:port` (partitions without a leader
    /// are left out), from one Metadata request.
    /// The broker ids Metadata names: in a cluster, the registered brokers
    /// the controller has not fenced (a dead node drops out once its
    /// session expires).
    pub async fn live_brokers(&mut self) -> Result<Vec<i32>, ClientError> {
        let req = MetadataRequest::default().with_topics(Some(Vec::new())).with_allow_auto_topic_creation(false);
        let resp = self.conn.call(&req, METADATA_V).await?;
        let mut ids: Vec<i32> = resp.brokers.iter().map(|b| b.node_id.0).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub async fn leaders(&mut self, topic: &str) -> Result<std::collections::BTreeMap<i32, String>, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]))
            .with_allow_auto_topic_creation(false);
        let resp = self.conn.call(&req, METADATA_V).await?;
        let brokers: std::collections::BTreeMap<i32, String> =
            resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))).collect();
        let mut out = std::collections::BTreeMap::new();
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(ClientError::kafka(format!("metadata for {topic}"), t.error_code, None));
            }
            for p in t.partitions {
                if let Some(addr) = brokers.get(&p.leader_id.0) {
                    out.insert(p.partition_index, addr.clone());
                }
            }
        }
        Ok(out)
    }

    /// Each partition's (leader, replicas, in-sync replicas) by node id;
    /// leader -1 when it has none.
    pub async fn replicas(&mut self, topic: &str) -> Result<Vec<PartitionReplicas>, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]))
            .with_allow_auto_topic_creation(false);
        let resp = self.conn.call(&req, METADATA_V).await?;
        let mut out = Vec::new();
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(ClientError::kafka(format!("metadata for {topic}"), t.error_code, None));
            }
            for p in t.partitions {
                out.push(PartitionReplicas {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                });
            }
        }
        out.sort_by_key(|p| p.partition);
        Ok(out)
    }

    pub async fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        let req = DeleteTopicsRequest::default().with_topic_names(vec![topic_name(name)]).with_timeout_ms(30_000);
        let resp = self.conn.call(&req, DELETE_TOPICS_V).await?;
        for t in resp.responses {
            if t.error_code != 0 {
                return Err(ClientError::kafka(format!("deleting topic {name}"), t.error_code, t.error_message.map(|m| m.to_string())));
            }
        }
        Ok(())
    }

    /// Effective topic configs as (name, value, is-default).
    pub async fn describe_topic_configs(&mut self, name: &str) -> Result<Vec<(String, String, bool)>, ClientError> {
        let req = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configuration_keys(None)]);
        let resp = self.conn.call(&req, DESCRIBE_CONFIGS_V).await?;
        let mut out = Vec::new();
        for r in resp.results {
            if r.error_code != 0 {
                return Err(ClientError::kafka(format!("describing {name}"), r.error_code, r.error_message.map(|m| m.to_string())));
            }
            for c in r.configs {
                out.push((c.name.to_string(), c.value.map(|v| v.to_string()).unwrap_or_default(), c.config_source == 5));
            }
        }
        Ok(out)
    }

    /// Changes a topic's configs with IncrementalAlterConfigs: each
    /// `(key, Some(value))` is set, each `(key, None)` goes back to the default.
    pub async fn alter_topic_configs(&mut self, name: &str, changes: &[(String, Option<String>)]) -> Result<(), ClientError> {
        let configs = changes
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(if v.is_some() { 0 } else { 1 })
                    .with_value(v.clone().map(StrBytes::from_string))
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(configs)]);
        let resp = self.conn.call(&req, INCREMENTAL_ALTER_CONFIGS_V).await?;
        for r in resp.responses {
            if r.error_code != 0 {
                return Err(ClientError::kafka(format!("altering {name}"), r.error_code, r.error_message.map(|m| m.to_string())));
            }
        }
        Ok(())
    }

    /// A fresh idempotent producer identity: (producer id, epoch).
    pub async fn init_producer_id(&mut self) -> Result<(i64, i16), ClientError> {
        // The crate's default transactional id is "", not null; a broker
        // treats "" as a (refused) transactional producer.
        let req = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
        let resp = self.conn.call(&req, INIT_PRODUCER_ID_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka("InitProducerId", resp.error_code, None));
        }
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// Produces one encoded batch; returns its base offset (-1 for acks=0).
    pub async fn produce(&mut self, topic: &str, partition: i32, batch: Bytes, acks: i16) -> Result<i64, ClientError> {
        let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))]),
        ]);
        let mut attempt = 0;
        loop {
            match self.produce_once(&req, topic, partition, acks).await {
                Err(e) if self.should_reroute(topic, &e, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    async fn produce_once(&mut self, req: &ProduceRequest, topic: &str, partition: i32, acks: i16) -> Result<i64, ClientError> {
        let conn = self.partition_conn(topic, partition).await?;
        if acks == 0 {
            conn.send(req, PRODUCE_V).await?;
            return Ok(-1);
        }
        let resp = conn.call(req, PRODUCE_V).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| ClientError::Protocol("empty produce response".into()))?;
        if p.error_code != 0 {
            return Err(ClientError::kafka(
                format!("producing to {topic}-{partition}"),
                p.error_code,
                p.error_message.as_ref().map(|m| m.to_string()),
            ));
        }
        Ok(p.base_offset)
    }

    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> Result<FetchedPartition, ClientError> {
        let req = FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![
                FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(max_bytes),
            ])]);
        let mut attempt = 0;
        let resp = loop {
            let result = match self.partition_conn(topic, partition).await {
                Ok(conn) => conn.call(&req, FETCH_V).await,
                Err(e) => Err(e),
            };
            // A fetch error of the partition itself is in the body: look.
            let result = result.and_then(|resp| {
                let code = resp.responses.first().and_then(|t| t.partitions.first()).map_or(0, |p| p.error_code);
                if matches!(code, 5 | 6) { Err(ClientError::kafka(format!("fetching {topic}-{partition}"), code, None)) } else { Ok(resp) }
            });
            match result {
                Err(e) if self.should_reroute(topic, &e, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64)).await;
                }
                other => break other?,
            }
        };
        let p = resp
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or_else(|| ClientError::Protocol("empty fetch response".into()))?;
        if p.error_code != ErrorCode::None.code() {
            return Err(ClientError::kafka(format!("fetching {topic}-{partition} at {offset}"), p.error_code, None));
        }
        Ok(FetchedPartition {
            high_watermark: p.high_watermark,
            log_start_offset: p.log_start_offset,
            records: p.records.unwrap_or_default(),
        })
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, or a timestamp.
    pub async fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64, ClientError> {
        let req = ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp)])]);
        let mut attempt = 0;
        loop {
            let result = match self.partition_conn(topic, partition).await {
                Ok(conn) => conn.call(&req, LIST_OFFSETS_V).await,
                Err(e) => Err(e),
            };
            let result = result.and_then(|resp| {
                let p = resp
                    .topics
                    .first()
                    .and_then(|t| t.partitions.first())
                    .ok_or_else(|| ClientError::Protocol("empty list-offsets response".into()))?;
                if p.error_code != 0 {
                    return Err(ClientError::kafka(format!("listing offsets of {topic}-{partition}"), p.error_code, None));
                }
                Ok(p.offset)
            });
            match result {
                Err(e) if self.should_reroute(topic, &e, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }
}
