//! The records the coordinator keeps in its internal compacted topic
//! (`__consumer_offsets`): one key per committed partition and one per
//! group. Replaying the topic in order rebuilds every group; compaction
//! keeps only the latest value of each key, which is all replay needs.
//!
//! The format is Millrace's own (bincode of serde types behind a version
//! byte), not Kafka's: no client reads this topic directly.

use serde::{Deserialize, Serialize};

/// First byte of every key and value; a format change bumps it.
const FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKey {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// The member's subscription for the chosen protocol.
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// A group as of its last completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable offsets-topic record: {0}")]
pub struct StoreError(String);

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Encoding plain structs into a Vec cannot fail.
    out.extend(bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("bincode encodes plain data"));
    out
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            let (value, used) = bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map_err(|e| StoreError(e.to_string()))?;
            if used != rest.len() {
                return Err(StoreError(format!("{} trailing bytes", rest.len() - used)));
            }
            Ok(value)
        }
        Some((v, _)) => Err(StoreError(format!("unknown format version {v}"))),
        None => Err(StoreError("empty".into())),
    }
}

impl StoredKey {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        decode(bytes)
    }
}

impl StoredOffset {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        decode(bytes)
    }
}

impl StoredGroup {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip_and_reject_damage() {
        let key = StoredKey::Offset { group: "g".into(), topic: "t".into(), partition: 3 };
        let bytes = key.encode();
        assert_eq!(StoredKey::decode(&bytes).unwrap(), key);
        // Equal keys encode equally: compaction relies on it.
        assert_eq!(bytes, key.clone().encode());
        let value = StoredOffset { offset: 42, leader_epoch: -1, metadata: Some("m".into()), commit_timestamp: 7 };
        assert_eq!(StoredOffset::decode(&value.encode()).unwrap(), value);
        let mut bad = value.encode();
        bad[0] = 9;
        assert!(StoredOffset::decode(&bad).is_err());
        assert!(StoredOffset::decode(&[]).is_err());
        let mut long = value.encode();
        long.push(0);
        assert!(StoredOffset::decode(&long).is_err());
    }
}
