//! Checkers for a replicated cluster's history (DESIGN.md §5, 2 and 4),
//! over what each node's disk held after the run (`ReplicaLog`,
//! `MetadataLog`) and the final read through the partition leaders:
//!
//! - replicas-agree: below the high watermark, every replica holds the
//!   records the final read returned, at the same offsets, from batches of
//!   the same leader epoch; each replica's offsets are dense and its
//!   epochs never go down.
//! - metadata-logs-agree: two metadata logs with an entry of the same
//!   term at the same index are identical up to it (Raft's log matching,
//!   which makes every committed prefix the same everywhere). Entries a
//!   snapshot compacted away (term 0) are skipped: their content is gone.
//!   Replaying such a log for one-leader-per-epoch starts without the
//!   snapshot's image, so it checks less there (other nodes cover it).
//! - one-leader-per-epoch: replaying each node's metadata log, a
//!   partition's leader epoch always names the same leader.
//!
//! Acknowledged acks=all records surviving is `acked-not-lost` in
//! [`crate::checkers`], run on the final read.

use std::collections::BTreeMap;

use millrace_core::controller::{MetadataImage, MetadataRecord};
use millrace_sim::history::{Event, EventKind};

use crate::checkers::Report;

/// A replica's records: (offset, leader epoch, value).
type ReplicaRecords = [(i64, i32, String)];
/// A metadata log: (term, records) per entry.
type MetadataEntries = [(u64, Vec<MetadataRecord>)];
/// (topic, topic id, partition, leader epoch).
type EpochKey = (String, [u8; 16], usize, i32);

pub(crate) fn check(events: &[Event], r: &mut Report) {
    let mut finals: BTreeMap<i32, (i64, BTreeMap<i64, &str>)> = BTreeMap::new();
    let mut replicas: BTreeMap<i32, Vec<(usize, &ReplicaRecords)>> = BTreeMap::new();
    let mut metadata: Vec<(usize, &MetadataEntries)> = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Final { partition, high_watermark, records, .. } => {
                finals.insert(*partition, (*high_watermark, records.iter().map(|(o, v)| (*o, v.as_str())).collect()));
            }
            EventKind::ReplicaLog { node, partition, records } => replicas.entry(*partition).or_default().push((*node, records)),
            EventKind::MetadataLog { node, entries } => metadata.push((*node, entries)),
            _ => {}
        }
    }
    for (partition, logs) in &replicas {
        let final_log = finals.get(partition);
        // offset -> (node, epoch) of the first replica seen holding it
        let mut epochs: BTreeMap<i64, (usize, i32)> = BTreeMap::new();
        for (node, records) in logs {
            let mut prev: Option<(i64, i32)> = None;
            for (offset, epoch, value) in records.iter() {
                if let Some((po, pe)) = prev {
                    if *offset != po + 1 {
                        r.add("replicas-agree", format!("node {node} p{partition}: offset {offset} follows {po}"));
                    }
                    if *epoch < pe {
                        r.add("replicas-agree", format!("node {node} p{partition} offset {offset}: epoch {epoch} after epoch {pe}"));
                    }
                }
                prev = Some((*offset, *epoch));
                let Some((hw, fin)) = final_log else { continue };
                if *offset >= *hw {
                    continue;
                }
                match fin.get(offset) {
                    Some(v) if *v == value => {}
                    Some(v) => r.add(
                        "replicas-agree",
                        format!("node {node} p{partition} offset {offset} (below the high watermark {hw}): holds {value:?}, the leader served {v:?}"),
                    ),
                    None => {}
                }
                match epochs.get(offset) {
                    Some((other, e)) if e != epoch => r.add(
                        "replicas-agree",
                        format!("p{partition} offset {offset}: node {node} has it from epoch {epoch}, node {other} from epoch {e}"),
                    ),
                    Some(_) => {}
                    None => {
                        epochs.insert(*offset, (*node, *epoch));
                    }
                }
            }
        }
    }
    for (i, (a, la)) in metadata.iter().enumerate() {
        for (b, lb) in &metadata[i + 1..] {
            let shared = la.len().min(lb.len());
            let known = |k: usize| la[k].0 != 0 && lb[k].0 != 0;
            let Some(last_same_term) = (0..shared).rev().find(|k| known(*k) && la[*k].0 == lb[*k].0) else { continue };
            if let Some(k) = (0..=last_same_term).find(|k| known(*k) && la[*k] != lb[*k]) {
                r.add(
                    "metadata-logs-agree",
                    format!("nodes {a} and {b} agree on the term of entry {} but differ at entry {}: {:?} vs {:?}", last_same_term + 1, k + 1, la[k], lb[k]),
                );
            }
        }
    }
    // (topic, topic id, partition, leader epoch) -> (leader, node that says so)
    let mut leaders: BTreeMap<EpochKey, (Option<i32>, usize)> = BTreeMap::new();
    for (node, log) in &metadata {
        let mut image = MetadataImage::default();
        for (_, records) in log.iter() {
            for record in records {
                if image.apply(record).is_err() {
                    continue; // refused alike on every node
                }
                for (name, t) in &image.topics {
                    for (p, part) in t.partitions.iter().enumerate() {
                        let key = (name.clone(), t.topic_id, p, part.leader_epoch);
                        match leaders.get(&key) {
                            Some((leader, other)) if *leader != part.leader => r.add(
                                "one-leader-per-epoch",
                                format!("{name}-{p} epoch {}: node {other}'s metadata says leader {leader:?}, node {node}'s says {:?}", part.leader_epoch, part.leader),
                            ),
                            Some(_) => {}
                            None => {
                                leaders.insert(key, (part.leader, *node));
                            }
                        }
                    }
                }
            }
        }
    }
}
