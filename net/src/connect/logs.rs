//! The connectors' internal topics (one partition each, created on first
//! use like the stream queries' logs, with no retention limit):
//!
//! | topic | key | value |
//! |---|---|---|
//! | `__millrace_connect_offsets` | connector name (a sink: `name/partition`) | JSON `OffsetRecord`: a source's chunk, a sink's durable position |
//! | `__millrace_connectors` | connector name | JSON `ConnectorDef`; a tombstone when stopped |

use std::collections::BTreeMap;

use millrace_core::connect::OffsetRecord;

use crate::client::ClientError;
use crate::stream::logs::Logs;

pub const OFFSETS_TOPIC: &str = "__millrace_connect_offsets";
pub const CONNECTORS_TOPIC: &str = "__millrace_connectors";
const TOPICS: [&str; 2] = [OFFSETS_TOPIC, CONNECTORS_TOPIC];

/// A connection for the connectors' internal topics. The offsets topic
/// is compacted: a source resumes from its last chunk and a sink from its
/// last position per partition, which are the last record per key, so
/// the topic does not grow with every chunk (a source at 1,000 records a
/// second logs ten chunks a second, and a restart reads the whole topic).
pub fn logs(bootstrap: &str) -> Logs {
    Logs::for_topics(bootstrap, &TOPICS).compacting(&[OFFSETS_TOPIC])
}

/// The key of a connector's offset record: its name for a source's
/// chunks, `name/partition` for a sink's positions (one per partition
/// survives compaction). Names have no `/`.
fn offset_key(name: &str, record: &OffsetRecord) -> String {
    match record {
        OffsetRecord::Chunk(_) => name.to_string(),
        OffsetRecord::SinkPosition { partition, .. } => format!("{name}/{partition}"),
    }
}

fn is_offset_key_of(key: &str, name: &str) -> bool {
    key.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The entries of connector `name` appended since the last call on `logs`
/// (from the start on the first), in log order.
pub async fn read_offsets(logs: &mut Logs, name: &str) -> Result<Vec<OffsetRecord>, ClientError> {
    let mut out = Vec::new();
    for e in logs.read_new(OFFSETS_TOPIC).await? {
        if !is_offset_key_of(&e.key, name) {
            continue;
        }
        let Some(v) = e.value else { continue };
        let r =
            serde_json::from_slice(&v).map_err(|err| ClientError::Protocol(format!("{OFFSETS_TOPIC}: an entry of connector {name} does not decode: {err}")))?;
        out.push(r);
    }
    Ok(out)
}

pub async fn append_offset(logs: &mut Logs, name: &str, record: &OffsetRecord) -> Result<(), ClientError> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    logs.append(OFFSETS_TOPIC, &offset_key(name, record), Some(&bytes)).await
}

/// Every connector's current definition (stopped ones left out), and the
/// last definition ever stored per name.
pub async fn read_definitions(logs: &mut Logs) -> Result<(BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>), ClientError> {
    logs.read_keyed(CONNECTORS_TOPIC).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_keys_belong_to_one_connector() {
        let pos = OffsetRecord::SinkPosition { partition: 3, next_offset: 10 };
        assert_eq!(offset_key("dump", &pos), "dump/3");
        assert!(is_offset_key_of("dump", "dump"));
        assert!(is_offset_key_of("dump/3", "dump"));
        assert!(!is_offset_key_of("dump2/3", "dump"), "another connector whose name starts the same");
        assert!(!is_offset_key_of("dum", "dump"));
    }
}
