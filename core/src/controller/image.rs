//! The metadata image: the cluster's metadata as of some point of the
//! metadata log. Applying the same records in the same order gives the
//! same image on every node; a record that does not fit the image (it
//! names an unknown broker or topic, or an epoch goes back) is refused
//! with a typed error, never applied half-way.
//!
//! The image is also the controller's Raft snapshot: a format byte, then
//! the image in bincode ([`MetadataImage::to_snapshot`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::records::{BrokerId, MetadataRecord};

/// The snapshot format written by [`MetadataImage::to_snapshot`]. A node
/// refuses a format it does not know rather than guess.
const SNAPSHOT_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    pub epoch: u64,
    pub host: String,
    pub port: i32,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub leader: Option<BrokerId>,
    /// Goes up with every change of leader.
    pub leader_epoch: i32,
    /// Goes up with every change of the partition (leader or ISR).
    pub partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub topic_id: [u8; 16],
    pub partitions: Vec<PartitionImage>,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<BrokerId, BrokerImage>,
    pub topics: BTreeMap<String, TopicImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("unknown broker {0}")]
    UnknownBroker(BrokerId),
    #[error("broker {broker}: epoch {got} is not its current epoch {current}")]
    StaleBrokerEpoch { broker: BrokerId, got: u64, current: u64 },
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("{topic}-{partition} does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("{topic}-{partition}: {reason}")]
    BadPartitionChange { topic: String, partition: i32, reason: String },
    #[error("topic {topic}: {reason}")]
    BadAssignment { topic: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("empty metadata snapshot")]
    Empty,
    #[error("metadata snapshot format {0} is not known here (this node reads format {SNAPSHOT_FORMAT})")]
    UnknownFormat(u8),
    #[error("undecodable metadata snapshot: {0}")]
    Undecodable(String),
}

impl MetadataImage {
    /// The image as snapshot data: the format byte, then bincode.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut data = vec![SNAPSHOT_FORMAT];
        // Plain maps, strings and numbers: encoding into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("the image encodes");
        data.extend_from_slice(&body);
        data
    }

    pub fn from_snapshot(data: &[u8]) -> Result<Self, SnapshotError> {
        let (&format, body) = data.split_first().ok_or(SnapshotError::Empty)?;
        if format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnknownFormat(format));
        }
        let (image, used): (Self, usize) = bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| SnapshotError::Undecodable(e.to_string()))?;
        if used != body.len() {
            return Err(SnapshotError::Undecodable(format!("{} trailing bytes", body.len() - used)));
        }
        Ok(image)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        self.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?)
    }

    /// Brokers that are registered and not fenced, in id order.
    pub fn live_brokers(&self) -> Vec<BrokerId> {
        self.brokers.iter().filter(|(_, b)| !b.fenced).map(|(id, _)| *id).collect()
    }

    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), ImageError> {
        match record {
            MetadataRecord::RegisterBroker { broker, epoch, host, port } => {
                if let Some(b) = self.brokers.get(broker)
                    && *epoch <= b.epoch
                {
                    return Err(ImageError::StaleBrokerEpoch { broker: *broker, got: *epoch, current: b.epoch });
                }
                // A new incarnation starts fenced: it must catch up first.
                self.brokers.insert(*broker, BrokerImage { epoch: *epoch, host: host.clone(), port: *port, fenced: true });
            }
            MetadataRecord::FenceBroker { broker, epoch } | MetadataRecord::UnfenceBroker { broker, epoch } => {
                let b = self.brokers.get_mut(broker).ok_or(ImageError::UnknownBroker(*broker))?;
                if b.epoch != *epoch {
                    return Err(ImageError::StaleBrokerEpoch { broker: *broker, got: *epoch, current: b.epoch });
                }
                b.fenced = matches!(record, MetadataRecord::FenceBroker { .. });
            }
            MetadataRecord::CreateTopic { name, topic_id, replicas, configs } => {
                if self.topics.contains_key(name) {
                    return Err(ImageError::TopicExists(name.clone()));
                }
                let bad = |reason: String| ImageError::BadAssignment { topic: name.clone(), reason };
                if replicas.is_empty() {
                    return Err(bad("no partitions".into()));
                }
                let mut partitions = Vec::with_capacity(replicas.len());
                for (p, rs) in replicas.iter().enumerate() {
                    let mut sorted = rs.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    if rs.is_empty() || sorted.len() != rs.len() {
                        return Err(bad(format!("partition {p} has replicas {rs:?}")));
                    }
                    if let Some(unknown) = rs.iter().find(|b| !self.brokers.contains_key(b)) {
                        return Err(bad(format!("partition {p} names unknown broker {unknown}")));
                    }
                    // The first live replica leads; everyone starts in sync.
                    let leader = rs.iter().copied().find(|b| self.brokers.get(b).is_some_and(|x| !x.fenced));
                    partitions.push(PartitionImage { replicas: rs.clone(), isr: rs.clone(), leader, leader_epoch: 0, partition_epoch: 0 });
                }
                self.topics.insert(name.clone(), TopicImage { topic_id: *topic_id, partitions, configs: configs.clone() });
            }
            MetadataRecord::DeleteTopic { name, topic_id } => {
                match self.topics.get(name) {
                    Some(t) if t.topic_id == *topic_id => {
                        self.topics.remove(name);
                    }
                    _ => return Err(ImageError::UnknownTopic(name.clone())),
                }
            }
            MetadataRecord::PartitionChange { topic, partition, leader, leader_epoch, isr } => {
                let unknown = || ImageError::UnknownPartition { topic: topic.clone(), partition: *partition };
                let p = self
                    .topics
                    .get_mut(topic)
                    .ok_or_else(|| ImageError::UnknownTopic(topic.clone()))?
                    .partitions
                    .get_mut(usize::try_from(*partition).map_err(|_| unknown())?)
                    .ok_or_else(unknown)?;
                let bad = |reason: String| ImageError::BadPartitionChange { topic: topic.clone(), partition: *partition, reason };
                if let Some(outsider) = isr.iter().find(|b| !p.replicas.contains(b)) {
                    return Err(bad(format!("ISR member {outsider} is not a replica")));
                }
                if leader.is_some_and(|l| !isr.contains(&l)) {
                    return Err(bad(format!("leader {leader:?} is not in the ISR {isr:?}")));
                }
                let expected = if *leader != p.leader { p.leader_epoch + 1 } else { p.leader_epoch };
                if *leader_epoch != expected {
                    return Err(bad(format!("leader epoch {leader_epoch}, expected {expected}")));
                }
                p.leader = *leader;
                p.leader_epoch = *leader_epoch;
                p.isr = isr.clone();
                p.partition_epoch += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_roundtrip_and_bad_data_is_an_error() {
        let mut image = MetadataImage::default();
        image.apply(&MetadataRecord::RegisterBroker { broker: 1, epoch: 7, host: "h".into(), port: 9 }).unwrap();
        image.apply(&MetadataRecord::UnfenceBroker { broker: 1, epoch: 7 }).unwrap();
        let create = MetadataRecord::CreateTopic { name: "t".into(), topic_id: [3; 16], replicas: vec![vec![1]], configs: vec![("a".into(), "b".into())] };
        image.apply(&create).unwrap();
        let data = image.to_snapshot();
        assert_eq!(MetadataImage::from_snapshot(&data), Ok(image));
        assert_eq!(MetadataImage::from_snapshot(&[]), Err(SnapshotError::Empty));
        let mut future = data.clone();
        future[0] = 9;
        assert_eq!(MetadataImage::from_snapshot(&future), Err(SnapshotError::UnknownFormat(9)));
        assert!(matches!(MetadataImage::from_snapshot(&data[..data.len() - 1]), Err(SnapshotError::Undecodable(_))));
        let mut longer = data;
        longer.push(0);
        assert!(matches!(MetadataImage::from_snapshot(&longer), Err(SnapshotError::Undecodable(_))));
    }
}
