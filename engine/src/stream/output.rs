//! Result rows as records for the sink topic. A query that names columns
//! `value` (and `key`) chooses the record's text itself; any other row is
//! written as a JSON object, keyed by its group for an aggregation, so a
//! compacted output topic keeps each group's latest value.

use serde::{Deserialize, Serialize};

use crate::time::format_rfc3339;
use crate::types::{Schema, Value};

/// One record to write to the sink topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputRecord {
    pub key: Option<String>,
    pub value: String,
}

/// A value as JSON text; timestamps as RFC 3339 UTC with milliseconds,
/// non-finite floats as `null`.
pub fn json(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => serde_json::Number::from_f64(*x)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".to_string()),
        Value::Str(s) => quote(s),
        Value::Timestamp(t) => quote(&format_rfc3339(*t)),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A value as the text of a `key` or `value` column (strings as they are).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Str(s) => Some(s.clone()),
        Value::Timestamp(t) => Some(format_rfc3339(*t)),
        other => Some(json(other)),
    }
}

/// The record for `row` (columns `schema`); `group` is the row's group
/// key for an aggregation.
pub fn record(schema: &Schema, row: &[Value], group: Option<&[Value]>) -> OutputRecord {
    let find = |name: &str| {
        schema
            .fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
    };
    if let Some(v) = find("value") {
        return OutputRecord {
            key: find("key").and_then(|k| text(&row[k])),
            // A NULL value is written as JSON null, not as a tombstone.
            value: text(&row[v]).unwrap_or_else(|| "null".to_string()),
        };
    }
    let fields: Vec<String> = schema
        .fields
        .iter()
        .zip(row)
        .map(|(f, v)| format!("{}:{}", quote(&f.name), json(v)))
        .collect();
    OutputRecord {
        key: group.map(|g| format!("[{}]", g.iter().map(json).collect::<Vec<_>>().join(","))),
        value: format!("{{{}}}", fields.join(",")),
    }
}
