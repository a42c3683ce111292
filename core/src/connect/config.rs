//! What a built-in connector is configured with: plain serde data, stored
//! in the connector's definition and sent by `millrace connect start`.

use serde::{Deserialize, Serialize};

/// The built-in connector types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConnectorKind {
    FileSource,
    FileSink,
    Generator,
}

impl ConnectorKind {
    pub fn parse(s: &str) -> Result<ConnectorKind, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "file-source" => Ok(ConnectorKind::FileSource),
            "file-sink" => Ok(ConnectorKind::FileSink),
            "generator" => Ok(ConnectorKind::Generator),
            _ => Err(format!("unknown connector type {s:?}: file-source, file-sink or generator")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConnectorKind::FileSource => "file-source",
            ConnectorKind::FileSink => "file-sink",
            ConnectorKind::Generator => "generator",
        }
    }

    pub fn is_source(self) -> bool {
        self != ConnectorKind::FileSink
    }
}

/// How a file source turns lines into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineFormat {
    /// Each line is a record's value, as it is.
    Lines,
    /// Each line must be one JSON value; a malformed line is skipped,
    /// counted and logged with its file and byte offset.
    Json,
}

impl LineFormat {
    pub fn parse(s: &str) -> Result<LineFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lines" | "line" | "text" => Ok(LineFormat::Lines),
            "json" => Ok(LineFormat::Json),
            _ => Err(format!("bad source format {s:?}: lines or json")),
        }
    }
}

/// How a file sink writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkFormat {
    /// One JSON object per record: topic, partition, offset, timestamp,
    /// key, value (files `*.jsonl`).
    Json,
    /// The record's value as a line (files `*.txt`).
    Lines,
}

impl SinkFormat {
    pub fn parse(s: &str) -> Result<SinkFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" | "jsonl" => Ok(SinkFormat::Json),
            "lines" | "line" | "text" => Ok(SinkFormat::Lines),
            _ => Err(format!("bad sink format {s:?}: json or lines")),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            SinkFormat::Json => "jsonl",
            SinkFormat::Lines => "txt",
        }
    }
}

/// What a generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GeneratorKind {
    /// `{"seq":7,"user":"user-42","page":"/products/3","ts":...}`.
    PageViews,
    /// `0`, `1`, `2`, ...
    Sequence,
}

impl GeneratorKind {
    pub fn parse(s: &str) -> Result<GeneratorKind, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "page-views" | "pageviews" => Ok(GeneratorKind::PageViews),
            "sequence" | "seq" => Ok(GeneratorKind::Sequence),
            _ => Err(format!("bad generator kind {s:?}: page-views or sequence")),
        }
    }
}

/// A built-in connector's own settings (the topic and the name are the
/// definition's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectorConfig {
    FileSource {
        /// A file, or a folder whose files (not hidden, in name order) are
        /// all tailed.
        path: String,
        format: LineFormat,
    },
    FileSink {
        /// The folder the files are written to.
        path: String,
        format: SinkFormat,
        /// A file holds at most this many records...
        roll_records: u64,
        /// ...or about this many bytes (it ends with the record that
        /// crosses it)...
        roll_bytes: u64,
        /// ...and is written when no record came for this long.
        roll_ms: i64,
        /// A new sink starts at the partitions' log start (true) or end.
        from_earliest: bool,
    },
    Generator {
        seed: u64,
        kind: GeneratorKind,
        /// Stop after this many records (none: run until stopped).
        count: Option<u64>,
    },
}

impl ConnectorConfig {
    pub fn kind(&self) -> ConnectorKind {
        match self {
            ConnectorConfig::FileSource { .. } => ConnectorKind::FileSource,
            ConnectorConfig::FileSink { .. } => ConnectorKind::FileSink,
            ConnectorConfig::Generator { .. } => ConnectorKind::Generator,
        }
    }

    /// One line for `millrace connect list`.
    pub fn summary(&self) -> String {
        match self {
            ConnectorConfig::FileSource { path, format } => format!("{path} ({})", if *format == LineFormat::Json { "json" } else { "lines" }),
            ConnectorConfig::FileSink { path, format, roll_records, roll_bytes, .. } => {
                format!("{path} (*.{}, roll at {roll_records} records or {roll_bytes} bytes)", format.extension())
            }
            ConnectorConfig::Generator { seed, kind, count } => {
                let kind = if *kind == GeneratorKind::PageViews { "page-views" } else { "sequence" };
                match count {
                    Some(n) => format!("{kind}, seed {seed}, {n} records"),
                    None => format!("{kind}, seed {seed}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(ConnectorKind::parse("File-Source"), Ok(ConnectorKind::FileSource));
        assert!(ConnectorKind::parse("jdbc").unwrap_err().contains("file-source, file-sink or generator"));
        assert_eq!(LineFormat::parse("json"), Ok(LineFormat::Json));
        assert!(LineFormat::parse("xml").is_err());
        assert_eq!(SinkFormat::parse("lines").map(SinkFormat::extension), Ok("txt"));
        assert_eq!(GeneratorKind::parse("sequence"), Ok(GeneratorKind::Sequence));
    }
}
