//! Topic values parsed by a declared schema: `topic('t', 'json', 'user
//! STRING, ts TIMESTAMP')`. A value that does not parse, or a field that
//! does not fit its type, gives NULLs, never an error (as Spark's
//! `from_json` in its default permissive mode): one bad record must not
//! stop a stream query.

use std::fmt;

use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::plan_err;
use crate::source::topic_schema;
use crate::time::parse_rfc3339;
use crate::types::{DataType, Field, Schema, Value};
use crate::value::values_to_array;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueFormat {
    /// One JSON object per value; fields by name.
    Json,
    /// One CSV line per value (RFC 4180 quotes); fields by position.
    Csv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicFormat {
    pub format: ValueFormat,
    /// The declared columns, added after the topic's own.
    pub columns: Schema,
}

impl fmt::Display for TopicFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols: Vec<String> = self
            .columns
            .fields
            .iter()
            .map(|c| format!("{} {}", c.name, c.data_type))
            .collect();
        let kind = match self.format {
            ValueFormat::Json => "json",
            ValueFormat::Csv => "csv",
        };
        write!(f, "{kind} '{}'", cols.join(", "))
    }
}

impl TopicFormat {
    /// `format` is `'json'` or `'csv'`; `schema` is `'name TYPE, ...'` with
    /// STRING, BIGINT/INT, DOUBLE, BOOLEAN or TIMESTAMP.
    pub fn parse(format: &str, schema: &str) -> Result<TopicFormat> {
        let format = match format.to_ascii_lowercase().as_str() {
            "json" => ValueFormat::Json,
            "csv" => ValueFormat::Csv,
            other => {
                return Err(plan_err!(
                    "topic(): unknown value format '{other}' (json or csv)"
                ));
            }
        };
        let own = topic_schema();
        let mut fields: Vec<Field> = Vec::new();
        for part in schema.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let [name, t] = words.as_slice() else {
                return Err(plan_err!(
                    "topic(): bad column declaration '{}': write 'name TYPE, ...', e.g. 'user STRING, ts TIMESTAMP'",
                    part.trim()
                ));
            };
            let t = match t.to_ascii_uppercase().as_str() {
                "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
                "BIGINT" | "INT" | "INTEGER" | "LONG" => DataType::Int64,
                "DOUBLE" | "FLOAT" => DataType::Float64,
                "BOOLEAN" | "BOOL" => DataType::Boolean,
                "TIMESTAMP" => DataType::Timestamp,
                other => {
                    return Err(plan_err!(
                        "topic(): column '{name}' has unknown type {other} (STRING, BIGINT, INT, DOUBLE, BOOLEAN or TIMESTAMP)"
                    ));
                }
            };
            if own.index_of(name).is_ok() {
                return Err(plan_err!(
                    "topic(): declared column '{name}' clashes with the topic's own column of that name (key, value, partition, offset, timestamp)"
                ));
            }
            if fields.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
                return Err(plan_err!("topic(): column '{name}' is declared twice"));
            }
            fields.push(Field::new(*name, t));
        }
        Ok(TopicFormat {
            format,
            columns: Schema::new(fields),
        })
    }

    /// The declared columns parsed from each value.
    pub fn parse_values(&self, values: &[Option<&str>]) -> Result<Vec<ArrayRef>> {
        let rows: Vec<Vec<Value>> = values
            .iter()
            .map(|v| match (v, self.format) {
                (None, _) => vec![Value::Null; self.columns.len()],
                (Some(v), ValueFormat::Json) => self.json_row(v),
                (Some(v), ValueFormat::Csv) => self.csv_row(v),
            })
            .collect();
        self.columns
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| values_to_array(f.data_type, rows.iter().map(|r| &r[i])))
            .collect()
    }

    fn json_row(&self, text: &str) -> Vec<Value> {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text)
        else {
            return vec![Value::Null; self.columns.len()];
        };
        self.columns
            .fields
            .iter()
            .map(|f| {
                let v = obj.get(&f.name).or_else(|| {
                    obj.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&f.name))
                        .map(|(_, v)| v)
                });
                v.map(|v| json_value(v, f.data_type)).unwrap_or(Value::Null)
            })
            .collect()
    }

    fn csv_row(&self, text: &str) -> Vec<Value> {
        let fields = split_csv(text);
        self.columns
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| match fields.get(i) {
                Some(Some(s)) => text_value(s, f.data_type),
                _ => Value::Null,
            })
            .collect()
    }
}

fn json_value(v: &serde_json::Value, t: DataType) -> Value {
    use serde_json::Value as J;
    match (v, t) {
        (J::Null, _) => Value::Null,
        (J::String(s), DataType::Utf8) => Value::Str(s.clone()),
        (other, DataType::Utf8) => Value::Str(other.to_string()),
        (J::Number(n), DataType::Int64) => n.as_i64().map(Value::Int).unwrap_or(Value::Null),
        (J::Number(n), DataType::Float64) => n.as_f64().map(Value::Float).unwrap_or(Value::Null),
        (J::Bool(b), DataType::Boolean) => Value::Bool(*b),
        (J::Number(n), DataType::Timestamp) => {
            n.as_i64().map(Value::Timestamp).unwrap_or(Value::Null)
        }
        (J::String(s), DataType::Timestamp) => parse_rfc3339(s)
            .map(Value::Timestamp)
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn text_value(s: &str, t: DataType) -> Value {
    let parsed = match t {
        DataType::Utf8 => Some(Value::Str(s.to_string())),
        DataType::Int64 => s.trim().parse().ok().map(Value::Int),
        DataType::Float64 => s.trim().parse().ok().map(Value::Float),
        DataType::Boolean => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        DataType::Timestamp => {
            let s = s.trim();
            s.parse()
                .ok()
                .or_else(|| parse_rfc3339(s))
                .map(Value::Timestamp)
        }
        DataType::Null => None,
    };
    parsed.unwrap_or(Value::Null)
}

/// The fields of one CSV line; an empty unquoted field is `None` (NULL).
/// `"a ""b"""` is `a "b"`; an unclosed quote runs to the end of the line.
fn split_csv(line: &str) -> Vec<Option<String>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        break;
                    }
                } else {
                    field.push(c);
                }
            }
        }
        // Unquoted text, or anything after a closing quote, up to the comma.
        let mut ended = true;
        for c in chars.by_ref() {
            if c == ',' {
                ended = false;
                break;
            }
            field.push(c);
        }
        out.push(if field.is_empty() && !quoted {
            None
        } else {
            Some(field)
        });
        if ended {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::array_value;

    fn rows(f: &TopicFormat, values: &[Option<&str>]) -> Vec<Vec<Value>> {
        let cols = f.parse_values(values).unwrap();
        (0..values.len())
            .map(|r| cols.iter().map(|c| array_value(c.as_ref(), r)).collect())
            .collect()
    }

    #[test]
    fn json_values_parse_and_bad_ones_are_null() {
        let f = TopicFormat::parse(
            "json",
            "user STRING, n BIGINT, x DOUBLE, ok BOOLEAN, ts TIMESTAMP",
        )
        .unwrap();
        let got = rows(
            &f,
            &[
                Some(r#"{"user":"ann","n":3,"x":1.5,"ok":true,"ts":1000}"#),
                Some(r#"{"USER":7,"n":"3","x":2,"ts":"1970-01-01T00:00:02.5Z","extra":[1]}"#),
                Some("not json"),
                Some("[1,2]"),
                None,
                Some(r#"{"n":1.5,"ts":"yesterday","ok":"true"}"#),
            ],
        );
        use Value::*;
        let nulls = vec![Null, Null, Null, Null, Null];
        assert_eq!(
            got,
            vec![
                vec![
                    Str("ann".into()),
                    Int(3),
                    Float(1.5),
                    Bool(true),
                    Timestamp(1000)
                ],
                vec![Str("7".into()), Null, Float(2.0), Null, Timestamp(2500)],
                nulls.clone(),
                nulls.clone(),
                nulls.clone(),
                nulls,
            ]
        );
    }

    #[test]
    fn csv_values_parse_by_position() {
        let f = TopicFormat::parse("CSV", "page STRING, n INT, ts TIMESTAMP").unwrap();
        let got = rows(
            &f,
            &[
                Some("home,3,2026-01-01T00:00:00Z"),
                Some("\"a, \"\"b\"\"\",x,5"),
                Some("only"),
                Some(",7,,extra"),
            ],
        );
        use Value::*;
        assert_eq!(
            got,
            vec![
                vec![Str("home".into()), Int(3), Timestamp(1_767_225_600_000)],
                vec![Str("a, \"b\"".into()), Null, Timestamp(5)],
                vec![Str("only".into()), Null, Null],
                vec![Null, Int(7), Null],
            ]
        );
    }

    #[test]
    fn declarations_are_checked() {
        let e = |f: &str, s: &str| TopicFormat::parse(f, s).unwrap_err().to_string();
        assert!(e("xml", "a STRING").contains("unknown value format 'xml'"));
        assert!(e("json", "a STRUCT").contains("unknown type STRUCT"));
        assert!(e("json", "a").contains("bad column declaration 'a'"));
        assert!(e("json", "value STRING").contains("clashes"));
        assert!(e("json", "a STRING, A BIGINT").contains("declared twice"));
    }
}
