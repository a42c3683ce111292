//! The engine's own small type system. Plans carry these serde types, not
//! Arrow's, so a plan is a few bytes of bincode that a driver ships to
//! workers, and every source is normalised to this set on read (narrow
//! integers widen to Int64, Float32 to Float64, string views to Utf8).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{
    DataType as ArrowType, Field as ArrowField, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::plan_err;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DataType {
    /// The type of a bare `NULL` literal; coerces to anything.
    Null,
    Boolean,
    Int64,
    Float64,
    Utf8,
    /// Milliseconds since the Unix epoch (Kafka's record timestamps).
    Timestamp,
}

impl DataType {
    pub fn to_arrow(self) -> ArrowType {
        match self {
            DataType::Null => ArrowType::Null,
            DataType::Boolean => ArrowType::Boolean,
            DataType::Int64 => ArrowType::Int64,
            DataType::Float64 => ArrowType::Float64,
            DataType::Utf8 => ArrowType::Utf8,
            DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Millisecond, None),
        }
    }

    /// The engine type an Arrow column is normalised to, or `None` when the
    /// engine cannot represent it (lists, structs): those columns are
    /// refused with the column's name.
    pub fn from_arrow(t: &ArrowType) -> Option<DataType> {
        Some(match t {
            ArrowType::Null => DataType::Null,
            ArrowType::Boolean => DataType::Boolean,
            ArrowType::Int8
            | ArrowType::Int16
            | ArrowType::Int32
            | ArrowType::Int64
            | ArrowType::UInt8
            | ArrowType::UInt16
            | ArrowType::UInt32
            | ArrowType::UInt64 => DataType::Int64,
            ArrowType::Float16
            | ArrowType::Float32
            | ArrowType::Float64
            | ArrowType::Decimal128(..) => DataType::Float64,
            ArrowType::Utf8
            | ArrowType::LargeUtf8
            | ArrowType::Utf8View
            | ArrowType::Date32
            | ArrowType::Date64 => DataType::Utf8,
            ArrowType::Timestamp(..) => DataType::Timestamp,
            ArrowType::Dictionary(_, v) => return DataType::from_arrow(v),
            _ => return None,
        })
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, DataType::Int64 | DataType::Float64 | DataType::Null)
    }

    /// The common type two operands are coerced to for arithmetic and
    /// comparison, or `None` if they do not mix (a string and a number).
    pub fn common(a: DataType, b: DataType) -> Option<DataType> {
        use DataType::*;
        Some(match (a, b) {
            (x, y) if x == y => x,
            (Null, x) | (x, Null) => x,
            (Int64, Float64) | (Float64, Int64) => Float64,
            (Timestamp, Int64) | (Int64, Timestamp) => Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DataType::Null => "NULL",
            DataType::Boolean => "BOOLEAN",
            DataType::Int64 => "BIGINT",
            DataType::Float64 => "DOUBLE",
            DataType::Utf8 => "STRING",
            DataType::Timestamp => "TIMESTAMP",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The table (or alias) the column came from, so `t.k` resolves after
    /// a join; projections drop it.
    pub qualifier: Option<String>,
    pub name: String,
    pub data_type: DataType,
}

impl Field {
    pub fn new(name: impl Into<String>, data_type: DataType) -> Field {
        Field {
            qualifier: None,
            name: name.into(),
            data_type,
        }
    }

    fn matches(&self, qualifier: Option<&str>, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            && match (qualifier, &self.qualifier) {
                (None, _) => true,
                (Some(q), Some(mine)) => q.eq_ignore_ascii_case(mine),
                (Some(_), None) => false,
            }
    }

    /// `t.name` if qualified, else `name`.
    pub fn qualified_name(&self) -> String {
        match &self.qualifier {
            Some(q) => format!("{q}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// An ordered list of named, typed columns. Names are matched without
/// regard to case, as SQL does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    pub fields: Vec<Field>,
}

impl Schema {
    pub fn new(fields: Vec<Field>) -> Schema {
        Schema { fields }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The index of a column (`name` or `table.name`), or an error naming
    /// it and the columns there are.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        let (qualifier, column) = match name.rsplit_once('.') {
            Some((q, c)) => (Some(q), c),
            None => (None, name),
        };
        let found: Vec<usize> = (0..self.fields.len())
            .filter(|&i| self.fields[i].matches(qualifier, column))
            .collect();
        match found.as_slice() {
            [i] => Ok(*i),
            [] => Err(plan_err!(
                "unknown column '{name}' (columns: {})",
                self.fields
                    .iter()
                    .map(|f| f.qualified_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Err(plan_err!(
                "column '{name}' is ambiguous: qualify it with its table"
            )),
        }
    }

    /// The same columns, all qualified by `qualifier` (a table alias).
    pub fn qualified(&self, qualifier: &str) -> Schema {
        Schema {
            fields: self
                .fields
                .iter()
                .map(|f| Field {
                    qualifier: Some(qualifier.to_string()),
                    ..f.clone()
                })
                .collect(),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.name.clone()).collect()
    }

    pub fn to_arrow(&self) -> SchemaRef {
        Arc::new(ArrowSchema::new(
            self.fields
                .iter()
                .map(|f| ArrowField::new(&f.name, f.data_type.to_arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// The engine schema of an Arrow schema; a column of a type the engine
    /// cannot represent is an error naming it.
    pub fn from_arrow(schema: &ArrowSchema) -> Result<Schema> {
        let mut fields = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let t = DataType::from_arrow(f.data_type()).ok_or_else(|| {
                plan_err!(
                    "column '{}' has type {} which the engine does not support",
                    f.name(),
                    f.data_type()
                )
            })?;
            fields.push(Field::new(f.name(), t));
        }
        Ok(Schema { fields })
    }
}

/// One value, for literals and for the row-at-a-time reference evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Timestamp(i64),
}

impl Value {
    pub fn data_type(&self) -> DataType {
        match self {
            Value::Null => DataType::Null,
            Value::Bool(_) => DataType::Boolean,
            Value::Int(_) => DataType::Int64,
            Value::Float(_) => DataType::Float64,
            Value::Str(_) => DataType::Utf8,
            Value::Timestamp(_) => DataType::Timestamp,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::Timestamp(t) => write!(f, "TIMESTAMP {t}"),
        }
    }
}
