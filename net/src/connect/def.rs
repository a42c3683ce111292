//! A connector's definition, stored as JSON in `__millrace_connectors`:
//! what a node needs to resume it after a restart without the client that
//! started it.

use serde::{Deserialize, Serialize};

use crate::batch::proto::ConnectSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorDef {
    pub spec: ConnectSpec,
    /// The node that runs it.
    pub owner: u32,
    /// The topic's partition count when the connector was defined: a
    /// source's chunks are routed modulo this, fixed, so a re-sent chunk
    /// goes where it went before.
    pub partitions: u32,
    pub created_at: i64,
}

/// The characters a connector name may have (it is a record key).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("bad connector name {name:?}: use 1 to 200 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

impl ConnectorDef {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<ConnectorDef, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("a connector definition does not decode: {e}"))
    }

    /// Whether `spec` moves the same data (so it may resume the stored
    /// positions); its rate may differ.
    pub fn same_connector(&self, spec: &ConnectSpec) -> bool {
        self.spec.topic == spec.topic && self.spec.config == spec.config
    }
}
