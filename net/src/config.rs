//! `millrace serve` settings: embedded defaults, then a TOML file, then
//! command-line flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use millrace_core::broker::BrokerConfig;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_DATA_DIR: &str = "./millrace-data";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Host:port given to clients; defaults to the listen address.
    pub advertised: Option<String>,
    pub broker: BrokerConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            advertised: None,
            broker: BrokerConfig::default(),
        }
    }
}

impl ServeConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_core::broker::FlushPolicy;

    #[test]
    fn toml_overrides_defaults_and_rejects_typos() {
        let c = ServeConfig::from_toml(
            r#"
            listen = "127.0.0.1:19092"
            [broker]
            num_partitions = 3
            flush = { messages = 1000 }
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 19092);
        assert_eq!(c.broker.num_partitions, 3);
        assert_eq!(c.broker.flush, FlushPolicy::Messages(1000));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let err = ServeConfig::from_toml("[broker]\nnum_partitionz = 3").unwrap_err().to_string();
        assert!(err.contains("num_partitionz"), "{err}");
        let every = ServeConfig::from_toml("[broker]\nflush = \"every-batch\"").unwrap();
        assert_eq!(every.broker.flush, FlushPolicy::EveryBatch);
    }
}
