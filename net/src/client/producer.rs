//! A simple idempotent producer: records are batched per partition and sent
//! one batch at a time, retried on connection errors with the same
//! sequence numbers so the broker can drop duplicates.

use std::collections::BTreeMap;

use bytes::Bytes;
use millrace_core::records::{BatchBuilder, Compression, Record};

use super::partitioner::partition_for_key;
use super::{Client, ClientError};

pub struct ProducerConfig {
    pub acks: i16,
    pub compression: Compression,
    pub idempotent: bool,
    /// Records per batch before it is sent.
    pub batch_records: usize,
    pub retries: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self { acks: -1, compression: Compression::None, idempotent: true, batch_records: 500, retries: 5 }
    }
}

pub struct Producer {
    client: Client,
    bootstrap: String,
    topic: String,
    partitions: usize,
    config: ProducerConfig,
    identity: Option<(i64, i16)>,
    next_sequence: BTreeMap<i32, i32>,
    pending: BTreeMap<i32, BatchBuilder>,
    round_robin: usize,
    /// Records acknowledged so far.
    pub acked: u64,
}

impl Producer {
    pub async fn new(bootstrap: &str, topic: &str, config: ProducerConfig) -> Result<Self, ClientError> {
        let mut client = Client::connect_routed(bootstrap).await?;
        let meta = client.metadata(Some(&[topic]), true).await?;
        let partitions = meta.first().map_or(0, |t| t.partitions.len());
        if partitions == 0 {
            return Err(ClientError::Protocol(format!("topic {topic} has no partitions")));
        }
        let identity = if config.idempotent { Some(client.init_producer_id().await?) } else { None };
        Ok(Self {
            client,
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            partitions,
            config,
            identity,
            next_sequence: BTreeMap::new(),
            pending: BTreeMap::new(),
            round_robin: 0,
            acked: 0,
        })
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Queues a record: keyed records go to the key's partition, others
    /// round-robin, unless `partition` is given.
    pub async fn send(&mut self, partition: Option<i32>, record: Record) -> Result<(), ClientError> {
        let p = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, self.partitions),
            (None, None) => {
                self.round_robin = (self.round_robin + 1) % self.partitions;
                self.round_robin as i32
            }
        };
        let compression = self.config.compression;
        let batch = self.pending.entry(p).or_insert_with(|| BatchBuilder::new(compression));
        batch.push(record);
        if batch.len() >= self.config.batch_records {
            self.send_partition(p).await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let parts: Vec<i32> = self.pending.keys().copied().collect();
        for p in parts {
            self.send_partition(p).await?;
        }
        Ok(())
    }

    async fn send_partition(&mut self, partition: i32) -> Result<(), ClientError> {
        let Some(mut batch) = self.pending.remove(&partition) else { return Ok(()) };
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len();
        if let Some((pid, epoch)) = self.identity {
            let seq = *self.next_sequence.get(&partition).unwrap_or(&0);
            batch = batch.idempotent(pid, epoch, seq);
        }
        let bytes = Bytes::from(batch.build());
        let mut attempt = 0;
        loop {
            match self.client.produce(&self.topic, partition, bytes.clone(), self.config.acks).await {
                Ok(_) => break,
                Err(ClientError::Io(e)) if attempt < self.config.retries => {
                    attempt += 1;
                    tracing::warn!(%e, attempt, "produce failed; reconnecting and retrying the same batch");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
                    if let Ok(c) = Client::connect_routed(&self.bootstrap).await {
                        self.client = c;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if self.identity.is_some() {
            let seq = self.next_sequence.entry(partition).or_insert(0);
            *seq = seq.wrapping_add(count as i32) & i32::MAX;
        }
        self.acked += count as u64;
        Ok(())
    }
}
