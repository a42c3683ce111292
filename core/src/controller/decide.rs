//! What the active controller decides, as pure functions of the image: the
//! records to propose when a topic is created or a broker is fenced or
//! comes back. Leaders are only ever chosen from the ISR (no unclean
//! election), so a fenced last in-sync replica leaves its partition offline
//! until it returns, rather than losing acknowledged records.

use super::image::MetadataImage;
use super::records::{BrokerId, MetadataRecord};

/// Rack-unaware round-robin: partition p gets `rf` consecutive live
/// brokers starting at `start + p`, so leaders spread over the brokers.
pub fn assign_replicas(live: &[BrokerId], partitions: i32, rf: usize, start: usize) -> Result<Vec<Vec<BrokerId>>, String> {
    if partitions < 1 {
        return Err(format!("number of partitions must be at least 1, got {partitions}"));
    }
    if rf == 0 || rf > live.len() {
        return Err(format!("replication factor {rf} needs {rf} live brokers, {} are live", live.len()));
    }
    Ok((0..partitions as usize).map(|p| (0..rf).map(|k| live[(start + p + k) % live.len()]).collect()).collect())
}

/// Fences `broker`: it leaves every ISR (unless it is the last member) and
/// every partition it led gets the next in-sync replica as leader.
pub fn fence(image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
    let Some(b) = image.brokers.get(&broker) else { return Vec::new() };
    if b.fenced {
        return Vec::new();
    }
    let mut out = vec![MetadataRecord::FenceBroker { broker, epoch: b.epoch }];
    let live = |id: &BrokerId| *id != broker && image.brokers.get(id).is_some_and(|x| !x.fenced);
    for (topic, t) in &image.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            if !p.isr.contains(&broker) {
                continue;
            }
            let rest: Vec<BrokerId> = p.isr.iter().copied().filter(|r| *r != broker).collect();
            // The last in-sync replica stays in the ISR: it holds data no
            // other replica is known to have.
            let isr = if rest.is_empty() { p.isr.clone() } else { rest };
            let leader = if p.leader == Some(broker) || p.leader.is_none() { isr.iter().copied().find(live) } else { p.leader };
            let leader_epoch = if leader != p.leader { p.leader_epoch + 1 } else { p.leader_epoch };
            if isr != p.isr || leader != p.leader {
                out.push(MetadataRecord::PartitionChange { topic: topic.clone(), partition: i as i32, leader, leader_epoch, isr });
            }
        }
    }
    out
}

/// Unfences `broker` and gives it the lead of offline partitions whose ISR
/// it is in.
pub fn unfence(image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
    let Some(b) = image.brokers.get(&broker) else { return Vec::new() };
    if !b.fenced {
        return Vec::new();
    }
    let mut out = vec![MetadataRecord::UnfenceBroker { broker, epoch: b.epoch }];
    for (topic, t) in &image.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            if p.leader.is_none() && p.isr.contains(&broker) {
                out.push(MetadataRecord::PartitionChange {
                    topic: topic.clone(),
                    partition: i as i32,
                    leader: Some(broker),
                    leader_epoch: p.leader_epoch + 1,
                    isr: p.isr.clone(),
                });
            }
        }
    }
    out
}

/// Validates a leader's ISR change against the image (Kafka's
/// AlterPartition checks) and returns the record to propose, or why not.
#[allow(clippy::too_many_arguments)]
pub fn alter_partition(
    image: &MetadataImage,
    broker: BrokerId,
    broker_epoch: u64,
    topic: &str,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: &[BrokerId],
) -> Result<MetadataRecord, String> {
    match image.brokers.get(&broker) {
        Some(b) if b.epoch == broker_epoch && !b.fenced => {}
        Some(b) if b.fenced => return Err(format!("broker {broker} is fenced")),
        _ => return Err(format!("broker {broker} epoch {broker_epoch} is not current")),
    }
    let p = image.partition(topic, partition).ok_or_else(|| format!("{topic}-{partition} does not exist"))?;
    if p.leader != Some(broker) || p.leader_epoch != leader_epoch {
        return Err(format!("{topic}-{partition}: broker {broker} epoch {leader_epoch} is not the leader (leader {:?} epoch {})", p.leader, p.leader_epoch));
    }
    if p.partition_epoch != partition_epoch {
        return Err(format!("{topic}-{partition}: partition epoch {partition_epoch} is stale (current {})", p.partition_epoch));
    }
    if !isr.contains(&broker) {
        return Err(format!("{topic}-{partition}: the leader must stay in the ISR {isr:?}"));
    }
    let mut sorted = isr.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != isr.len() || isr.iter().any(|r| !p.replicas.contains(r)) {
        return Err(format!("{topic}-{partition}: ISR {isr:?} is not a set of replicas {:?}", p.replicas));
    }
    // Only live brokers may join: a fenced one would be counted for acks=all
    // while nobody hears from it.
    if let Some(dead) = isr.iter().find(|r| !p.isr.contains(r) && image.brokers.get(r).is_none_or(|b| b.fenced)) {
        return Err(format!("{topic}-{partition}: broker {dead} is fenced and cannot join the ISR"));
    }
    Ok(MetadataRecord::PartitionChange { topic: topic.to_string(), partition, leader: p.leader, leader_epoch, isr: sorted })
}

/// Unclean leader election (Kafka's `unclean.leader.election.enable`), off
/// unless the topic or the cluster enables it: an offline partition whose
/// every in-sync replica is fenced gets a live out-of-sync replica as
/// leader, alone in the ISR. Records the old ISR held and the new leader
/// lacks are lost — availability bought with acknowledged data, so only on
/// request.
pub fn unclean_elections(image: &MetadataImage, cluster_default: bool) -> Vec<MetadataRecord> {
    let live = |id: &BrokerId| image.brokers.get(id).is_some_and(|b| !b.fenced);
    let mut out = Vec::new();
    for (topic, t) in &image.topics {
        let enabled = t
            .configs
            .iter()
            .find(|(k, _)| k == "unclean.leader.election.enable")
            .map_or(cluster_default, |(_, v)| v == "true");
        if !enabled {
            continue;
        }
        for (i, p) in t.partitions.iter().enumerate() {
            if p.leader.is_some() || p.isr.iter().any(live) {
                continue;
            }
            if let Some(r) = p.replicas.iter().copied().find(live) {
                out.push(MetadataRecord::PartitionChange {
                    topic: topic.clone(),
                    partition: i as i32,
                    leader: Some(r),
                    leader_epoch: p.leader_epoch + 1,
                    isr: vec![r],
                });
            }
        }
    }
    out
}
