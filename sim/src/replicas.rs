//! Reading a stopped node's disk after a replicated run: every record of a
//! partition replica (with the leader epoch its batch carries) and the
//! metadata (Raft) log, so the checkers can compare replicas with each
//! other and with what clients read.
//!
//! Opening runs the same recovery a restart would (a torn tail is cut), so
//! what is compared is what the node would serve after a restart.

use millrace_core::broker::topic::{Partition, partition_dir};
use millrace_core::controller::MetadataRecord;
use millrace_core::log::LogConfig;
use millrace_core::raft::RaftStore;
use millrace_core::records;
use millrace_core::storage::Storage;

/// (offset, leader epoch, value) of every record the replica holds.
/// Empty if the replica cannot be opened (recorded as such: an empty
/// replica must still agree with the others).
pub fn replica_records<S: Storage>(storage: &mut S, topic: &str, partition: i32) -> Vec<(i64, i32, String)> {
    let dir = partition_dir(topic, partition);
    let Ok((p, _)) = Partition::open(storage, &dir, LogConfig::default(), &mut |_| {}) else { return Vec::new() };
    let mut out = Vec::new();
    let mut offset = p.log.log_start_offset();
    let end = p.log.log_end_offset();
    while offset < end {
        let Ok(bytes) = p.log.read(storage, offset, 1 << 20) else { break };
        if bytes.is_empty() {
            break;
        }
        for batch in records::split_batches(&bytes) {
            let Ok((h, b)) = batch else { return out };
            let Ok((_, recs)) = records::decode_records(b) else { return out };
            for r in recs.into_iter().filter(|r| r.offset >= offset) {
                out.push((r.offset, h.partition_leader_epoch, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()));
            }
            offset = h.last_offset() + 1;
        }
    }
    out
}

/// The node's metadata log: (term, records) per entry from index 1 (a
/// no-op entry has no records). Entries a snapshot compacted away live on
/// only inside its image: each shows as `(0, [])` — term 0 is never a real
/// entry's — which the checkers read as "not known here". Empty if the log
/// cannot be opened.
pub fn metadata_entries<S: Storage>(storage: &mut S) -> Vec<(u64, Vec<MetadataRecord>)> {
    let Ok((_, _, log, _, _)) = RaftStore::open(storage, "meta/raft") else { return Vec::new() };
    let compacted = (1..=log.snapshot_index()).map(|_| (0, Vec::new()));
    compacted
        .chain(log.all().iter().map(|e| {
            let records = if e.data.is_empty() {
                Vec::new()
            } else {
                bincode::serde::decode_from_slice::<Vec<MetadataRecord>, _>(&e.data, bincode::config::standard())
                    .map(|(r, _)| r)
                    .unwrap_or_default()
            };
            (e.term, records)
        }))
        .collect()
}
