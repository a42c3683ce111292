//! The connectors' internal topics (one partition each, created on first
//! use like the stream queries' logs, with no retention limit):
//!
//! | topic | key | value |
//! |---|---|---|
//! | `__millrace_connect_offsets` | connector name | JSON `OffsetRecord`: a source's chunk, a sink's durable position |
//! | `__millrace_connectors` | connector name | JSON `ConnectorDef`; a tombstone when stopped |

use std::collections::BTreeMap;

use millrace_core::connect::OffsetRecord;

use crate::client::ClientError;
use crate::stream::logs::Logs;

pub const OFFSETS_TOPIC: &str = "__millrace_connect_offsets";
pub const CONNECTORS_TOPIC: &str = "__millrace_connectors";
const TOPICS: [&str; 2] = [OFFSETS_TOPIC, CONNECTORS_TOPIC];

/// A connection for the connectors' internal topics.
pub fn logs(bootstrap: &str) -> Logs {
    Logs::for_topics(bootstrap, &TOPICS)
}

/// The entries of connector `name` appended since the last call on `logs`
/// (from the start on the first), in log order.
pub async fn read_offsets(logs: &mut Logs, name: &str) -> Result<Vec<OffsetRecord>, ClientError> {
    let mut out = Vec::new();
    for e in logs.read_new(OFFSETS_TOPIC).await? {
        if e.key != name {
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
    logs.append(OFFSETS_TOPIC, name, Some(&bytes)).await
}

/// Every connector's current definition (stopped ones left out), and the
/// last definition ever stored per name.
pub async fn read_definitions(logs: &mut Logs) -> Result<(BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>), ClientError> {
    let mut current = BTreeMap::new();
    let mut last = BTreeMap::new();
    for e in logs.read_new(CONNECTORS_TOPIC).await? {
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
