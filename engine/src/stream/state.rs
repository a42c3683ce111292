//! The state of a stateful stream query: per group, the merged partial
//! columns of its aggregates. Groups are kept in key order (a `BTreeMap`
//! under a total order on values), so iterating the state — to emit
//! complete output, to evict, to serialise a checkpoint — is the same on
//! every run.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::exec_err;
use crate::reference::compare;
use crate::types::Value;

/// A group key with a total order: NULL first, then by value (floats by
/// total order, strings by bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupKey(pub Vec<Value>);

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Timestamp(_) | Value::Float(_) => 2,
        Value::Str(_) => 3,
    }
}

pub fn cmp_values(a: &Value, b: &Value) -> Ordering {
    rank(a)
        .cmp(&rank(b))
        .then_with(|| compare(a, b).unwrap_or(Ordering::Equal))
}

impl Eq for GroupKey {}

impl Ord for GroupKey {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            let o = cmp_values(a, b);
            if o != Ordering::Equal {
                return o;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Group key → the partial columns of every aggregate, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Entries", into = "Entries")]
pub struct StreamState {
    pub(crate) groups: BTreeMap<GroupKey, Vec<Value>>,
}

/// The serialised form: entries in key order (a map keyed by a list does
/// not fit every serde format).
#[derive(Clone, Serialize, Deserialize)]
struct Entries(Vec<(Vec<Value>, Vec<Value>)>);

impl From<Entries> for StreamState {
    fn from(e: Entries) -> Self {
        StreamState {
            groups: e.0.into_iter().map(|(k, v)| (GroupKey(k), v)).collect(),
        }
    }
}

impl From<StreamState> for Entries {
    fn from(s: StreamState) -> Self {
        Entries(s.groups.into_iter().map(|(k, v)| (k.0, v)).collect())
    }
}

impl StreamState {
    /// How many groups the state holds.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Each group's key and partial columns, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[Value], &[Value])> {
        self.groups
            .iter()
            .map(|(k, v)| (k.0.as_slice(), v.as_slice()))
    }

    /// The checkpoint bytes (bincode), the same for the same state.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding plain serde data into a Vec cannot fail.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StreamState> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map(|(s, _)| s)
            .map_err(|e| exec_err!("a stream state checkpoint does not decode: {e}"))
    }
}
