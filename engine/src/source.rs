//! Sources: where a scan's rows come from, and how a source splits into
//! partitions (one task each). Files split by byte range at line starts,
//! the way Hadoop input splits do, so a 500 MB file becomes parallel tasks
//! without an index; Parquet splits by row group.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::cast;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::topic_format::TopicFormat;
use crate::types::{DataType, Field, Schema, Value};
use crate::{exec_err, plan_err};

/// Bytes of file per partition when a query does not say.
pub const DEFAULT_SPLIT_BYTES: u64 = 32 << 20;
/// Rows read to infer a CSV or JSON schema.
const INFER_ROWS: usize = 1000;
/// Rows per record batch when reading.
pub const BATCH_ROWS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Source {
    /// CSV with a header line; types inferred from the first rows.
    Csv {
        path: String,
        delimiter: u8,
        partitions: u32,
    },
    /// One JSON object per line.
    Json {
        path: String,
        partitions: u32,
    },
    Parquet {
        path: String,
        partitions: u32,
    },
    /// One row per line, in a column named `value`.
    Text {
        path: String,
        partitions: u32,
    },
    /// Rows carried in the plan itself, dealt round-robin to partitions.
    Memory {
        schema: Schema,
        rows: Vec<Vec<Value>>,
        partitions: u32,
    },
    /// A topic's records between offsets, one partition per range (no
    /// ranges: no rows). With a format, the declared columns parsed from
    /// each value follow the topic's own.
    ///
    /// With `table`, the topic read as a table (`topic_table()`, a
    /// compacted topic's view): one partition holding, for each key, the
    /// latest record of all the ranges, in key order; a record with no
    /// value (a tombstone) deletes its key, and records with no key are
    /// not rows. See [`fold_table`].
    Topic {
        topic: String,
        ranges: Vec<TopicRange>,
        #[serde(default)]
        format: Option<TopicFormat>,
        /// Always written (plans travel as bincode, which has no optional
        /// fields); defaults to false in JSON written before it existed.
        #[serde(default)]
        table: bool,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Csv { path, .. } => write!(f, "csv {path}"),
            Source::Json { path, .. } => write!(f, "json {path}"),
            Source::Parquet { path, .. } => write!(f, "parquet {path}"),
            Source::Text { path, .. } => write!(f, "text {path}"),
            Source::Memory { rows, .. } => write!(f, "memory ({} rows)", rows.len()),
            Source::Topic {
                topic,
                ranges,
                format,
                table,
            } => {
                let what = if *table { "table of topic" } else { "topic" };
                write!(f, "{what} {topic} ({} partitions)", ranges.len())?;
                match format {
                    Some(fmt) => write!(f, " as {fmt}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The columns a topic scan produces.
pub fn topic_schema() -> Schema {
    Schema::new(vec![
        Field::new("key", DataType::Utf8),
        Field::new("value", DataType::Utf8),
        Field::new("partition", DataType::Int64),
        Field::new("offset", DataType::Int64),
        Field::new("timestamp", DataType::Timestamp),
    ])
}

/// One record of a topic, as a scan sees it (key and value as UTF-8, lossily).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// Reads a topic's records for a scan; the node running the task provides it.
pub trait TopicReader {
    fn read(&self, topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<TopicRecord>>;
}

fn io_err(path: &str) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_string(),
        source,
    }
}

fn file_len(path: &str) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(io_err(path))?.len())
}

/// How many partitions a file of this size gets by default.
pub fn default_partitions(path: &str) -> Result<u32> {
    let len = file_len(path)?;
    Ok(len.div_ceil(DEFAULT_SPLIT_BYTES).clamp(1, 1024) as u32)
}

impl Source {
    pub fn partitions(&self) -> u32 {
        match self {
            Source::Csv { partitions, .. }
            | Source::Json { partitions, .. }
            | Source::Parquet { partitions, .. }
            | Source::Text { partitions, .. }
            | Source::Memory { partitions, .. } => (*partitions).max(1),
            Source::Topic { table: true, .. } => 1,
            Source::Topic { ranges, .. } => ranges.len().max(1) as u32,
        }
    }

    /// The source's columns, inferred from the file where it has no schema.
    pub fn schema(&self) -> Result<Schema> {
        match self {
            Source::Csv {
                path, delimiter, ..
            } => {
                let file = File::open(path).map_err(io_err(path))?;
                let format = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .with_delimiter(*delimiter);
                let (schema, _) = format.infer_schema(BufReader::new(file), Some(INFER_ROWS))?;
                Schema::from_arrow(&schema).map_err(|e| EngineError::Source(format!("{path}: {e}")))
            }
            Source::Json { path, .. } => {
                let file = File::open(path).map_err(io_err(path))?;
                let (schema, _) =
                    arrow::json::reader::infer_json_schema(BufReader::new(file), Some(INFER_ROWS))?;
                Schema::from_arrow(&schema).map_err(|e| EngineError::Source(format!("{path}: {e}")))
            }
            Source::Parquet { path, .. } => {
                let file = File::open(path).map_err(io_err(path))?;
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?;
                Schema::from_arrow(builder.schema())
                    .map_err(|e| EngineError::Source(format!("{path}: {e}")))
            }
            Source::Text { path, .. } => {
                file_len(path)?;
                Ok(Schema::new(vec![Field::new("value", DataType::Utf8)]))
            }
            Source::Memory { schema, rows, .. } => {
                for (i, r) in rows.iter().enumerate() {
                    if r.len() != schema.len() {
                        return Err(plan_err!(
                            "in-memory row {i} has {} values, the schema {} columns",
                            r.len(),
                            schema.len()
                        ));
                    }
                }
                Ok(schema.clone())
            }
            Source::Topic { format, .. } => {
                let mut s = topic_schema();
                if let Some(f) = format {
                    s.fields.extend(f.columns.fields.iter().cloned());
                }
                Ok(s)
            }
        }
    }

    /// Reads partition `p` of the source as batches of `schema` (the schema
    /// the plan was made with, so every task agrees on the types).
    pub fn read(
        &self,
        p: u32,
        schema: &Schema,
        topics: Option<&dyn TopicReader>,
    ) -> Result<Vec<RecordBatch>> {
        let n = self.partitions();
        if p >= n {
            return Err(exec_err!("partition {p} of a source with {n} partitions"));
        }
        match self {
            Source::Csv {
                path, delimiter, ..
            } => {
                let (bytes, first) = read_split(path, p, n)?;
                let mut reader = arrow::csv::ReaderBuilder::new(schema.to_arrow())
                    .with_header(first)
                    .with_delimiter(*delimiter)
                    .with_batch_size(BATCH_ROWS)
                    .build(Cursor::new(bytes))?;
                collect(&mut reader, path)
            }
            Source::Json { path, .. } => {
                let (bytes, _) = read_split(path, p, n)?;
                let mut reader = arrow::json::ReaderBuilder::new(schema.to_arrow())
                    .with_batch_size(BATCH_ROWS)
                    .build(Cursor::new(bytes))?;
                collect(&mut reader, path)
            }
            Source::Text { path, .. } => {
                let (bytes, skip, _) = read_split_at(path, p, n)?;
                text_batches(&bytes[skip..], path)
            }
            Source::Parquet { path, .. } => {
                let file = File::open(path).map_err(io_err(path))?;
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?;
                let groups: Vec<usize> = (0..builder.metadata().num_row_groups())
                    .filter(|g| *g as u32 % n == p)
                    .collect();
                let reader = builder
                    .with_row_groups(groups)
                    .with_batch_size(BATCH_ROWS)
                    .build()?;
                let mut out = Vec::new();
                for b in reader {
                    out.push(normalize(&b?, schema)?);
                }
                Ok(out)
            }
            Source::Memory { rows, .. } => {
                let mine: Vec<&Vec<Value>> =
                    rows.iter().skip(p as usize).step_by(n as usize).collect();
                Ok(vec![rows_to_batch(schema, &mine)?])
            }
            Source::Topic {
                topic,
                ranges,
                format,
                table: true,
            } => {
                let mut parts = Vec::with_capacity(ranges.len());
                for r in ranges {
                    let reader = topics.ok_or_else(|| {
                        exec_err!("no topic reader on this node for topic '{topic}'")
                    })?;
                    parts.push((r.partition, reader.read(topic, r.partition, r.start, r.end)?));
                }
                let rows = fold_table(parts);
                let (partitions, records): (Vec<i32>, Vec<TopicRecord>) = rows.into_iter().unzip();
                topic_batch(&records, &partitions, format.as_ref(), schema)
            }
            Source::Topic {
                topic,
                ranges,
                format,
                table: false,
            } => {
                let Some(r) = ranges.get(p as usize) else {
                    // A topic scan with no ranges (a stream's empty batch).
                    return Ok(vec![RecordBatch::new_empty(schema.to_arrow())]);
                };
                let reader = topics
                    .ok_or_else(|| exec_err!("no topic reader on this node for topic '{topic}'"))?;
                let records = reader.read(topic, r.partition, r.start, r.end)?;
                let partitions = vec![r.partition; records.len()];
                topic_batch(&records, &partitions, format.as_ref(), schema)
            }
        }
    }
}

fn collect(
    reader: &mut dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
    path: &str,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in reader {
        out.push(b.map_err(|e| EngineError::Source(format!("{path}: {e}")))?);
    }
    Ok(out)
}

/// The bytes of split `p` of `n` of a file: the lines that start inside
/// the split's byte range. Whether the split holds the file's first line
/// is returned too (that is where a header is).
fn read_split(path: &str, p: u32, n: u32) -> Result<(Vec<u8>, bool)> {
    let (mut buf, skip, first) = read_split_at(path, p, n)?;
    buf.drain(..skip);
    Ok((buf, first))
}

/// [`read_split`] without moving the bytes: the split's lines are
/// `buf[skip..]` (a 32 MB `drain` is a copy of its own).
fn read_split_at(path: &str, p: u32, n: u32) -> Result<(Vec<u8>, usize, bool)> {
    let len = file_len(path)?;
    let start = len * p as u64 / n as u64;
    let end = len * (p as u64 + 1) / n as u64;
    let mut file = File::open(path).map_err(io_err(path))?;
    // Read from one byte before the start: if that byte is a newline, a
    // line starts exactly at `start` and belongs to this split.
    let from = start.saturating_sub(1);
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut buf = Vec::with_capacity((end - from) as usize + 4096);
    (&mut file)
        .take(end - from)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    // The rest of the line that crosses `end` belongs to this split too.
    if end < len && buf.last() != Some(&b'\n') {
        let mut chunk = [0u8; 8192];
        loop {
            let k = file.read(&mut chunk).map_err(io_err(path))?;
            if k == 0 {
                break;
            }
            if let Some(i) = chunk[..k].iter().position(|&b| b == b'\n') {
                buf.extend_from_slice(&chunk[..=i]);
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }
    let skip = if start == 0 {
        0
    } else {
        // Skip the partial line that began in the previous split.
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => buf.len(),
        }
    };
    // A split that starts inside the last line of the previous one and
    // ends before the next line start gets nothing.
    if start > 0 && skip > (end - from) as usize {
        return Ok((Vec::new(), 0, false));
    }
    Ok((buf, skip, start == 0))
}

fn text_batches(bytes: &[u8], path: &str) -> Result<Vec<RecordBatch>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| EngineError::Source(format!("{path}: not UTF-8 text: {e}")))?;
    let schema = Schema::new(vec![Field::new("value", DataType::Utf8)]).to_arrow();
    let mut out = Vec::new();
    let mut lines: Vec<&str> = Vec::with_capacity(BATCH_ROWS);
    // Each batch's values are copied once into a buffer of the exact size
    // (`from_iter_values` grows its buffer by doubling, copying as it goes).
    let batch = |lines: &[&str]| -> Result<RecordBatch> {
        let bytes: usize = lines.iter().map(|l| l.len()).sum();
        let mut values = Vec::with_capacity(bytes);
        let mut offsets = Vec::with_capacity(lines.len() + 1);
        offsets.push(0i32);
        for l in lines {
            values.extend_from_slice(l.as_bytes());
            offsets.push(i32::try_from(values.len()).map_err(|_| EngineError::Source(format!("{path}: over 2 GB of text in one batch")))?);
        }
        let array = StringArray::try_new(
            arrow::buffer::OffsetBuffer::new(arrow::buffer::ScalarBuffer::from(offsets)),
            arrow::buffer::Buffer::from_vec(values),
            None,
        )?;
        Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(array)])?)
    };
    for line in text.split_terminator('\n') {
        lines.push(line.strip_suffix('\r').unwrap_or(line));
        if lines.len() == BATCH_ROWS {
            out.push(batch(&lines)?);
            lines.clear();
        }
    }
    if !lines.is_empty() || out.is_empty() {
        out.push(batch(&lines)?);
    }
    Ok(out)
}

/// A topic as a table: the latest record per key of `parts` (each a
/// partition's number and its records in offset order), with the partition
/// it came from, in key order. A record without a value deletes its key;
/// records without a key are skipped. The partitions are folded in number
/// order, so a key found in two partitions (a producer that did not
/// partition by key) takes its value from the higher-numbered one whatever
/// order `parts` comes in: the result depends only on the records.
pub fn fold_table(mut parts: Vec<(i32, Vec<TopicRecord>)>) -> Vec<(i32, TopicRecord)> {
    parts.sort_by_key(|(p, _)| *p);
    let mut latest: std::collections::BTreeMap<String, (i32, TopicRecord)> =
        std::collections::BTreeMap::new();
    for (p, records) in parts {
        for r in records {
            let Some(key) = r.key.clone() else { continue };
            if r.value.is_some() {
                latest.insert(key, (p, r));
            } else {
                latest.remove(&key);
            }
        }
    }
    latest.into_values().collect()
}

fn topic_batch(
    records: &[TopicRecord],
    partitions: &[i32],
    format: Option<&TopicFormat>,
    schema: &Schema,
) -> Result<Vec<RecordBatch>> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            records
                .iter()
                .map(|r| r.key.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            records
                .iter()
                .map(|r| r.value.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(partitions.iter().map(|p| *p as i64).collect::<Int64Array>()),
        Arc::new(records.iter().map(|r| r.offset).collect::<Int64Array>()),
        Arc::new(TimestampMillisecondArray::from(
            records.iter().map(|r| r.timestamp).collect::<Vec<i64>>(),
        )),
    ];
    if let Some(f) = format {
        let values: Vec<Option<&str>> = records.iter().map(|r| r.value.as_deref()).collect();
        columns.extend(f.parse_values(&values)?);
    }
    Ok(vec![RecordBatch::try_new(schema.to_arrow(), columns)?])
}

/// Casts a batch's columns to the engine types of `schema`.
pub fn normalize(batch: &RecordBatch, schema: &Schema) -> Result<RecordBatch> {
    let target = schema.to_arrow();
    if batch.num_columns() != target.fields().len() {
        return Err(exec_err!(
            "batch has {} columns, expected {}",
            batch.num_columns(),
            target.fields().len()
        ));
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (c, f) in batch.columns().iter().zip(target.fields()) {
        columns.push(if c.data_type() == f.data_type() {
            c.clone()
        } else {
            cast(c, f.data_type())?
        });
    }
    Ok(RecordBatch::try_new(target, columns)?)
}

/// Builds one batch from rows of values (in-memory sources, tests).
pub fn rows_to_batch(schema: &Schema, rows: &[&Vec<Value>]) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.len());
    for (i, f) in schema.fields.iter().enumerate() {
        columns.push(crate::value::values_to_array(
            f.data_type,
            rows.iter().map(|r| &r[i]),
        )?);
    }
    if columns.is_empty() {
        return Err(plan_err!("a table needs at least one column"));
    }
    Ok(RecordBatch::try_new(schema.to_arrow(), columns)?)
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    /// However a text file is split, the splits' lines together are the
    /// file's lines, in order: CRLF and empty lines, multi-byte characters,
    /// lines across split edges, more lines than one batch holds.
    #[test]
    fn text_splits_hold_every_line_once() {
        let mut want: Vec<String> = Vec::new();
        let mut text = String::new();
        for i in 0..(BATCH_ROWS + 300) {
            let line = match i % 5 {
                0 => String::new(),
                1 => format!("héllo wörld {i}"),
                2 => "x".repeat(i % 97),
                _ => format!("line {i}"),
            };
            text.push_str(&line);
            text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            want.push(line);
        }
        let path = std::env::temp_dir().join(format!("millrace-text-splits-{}.txt", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let path_s = path.display().to_string();
        let schema = Schema::new(vec![crate::types::Field::new("value", crate::types::DataType::Utf8)]);
        for n in [1u32, 2, 3, 7, 64] {
            let source = Source::Text { path: path_s.clone(), partitions: n };
            let mut got: Vec<String> = Vec::new();
            for p in 0..n {
                for b in source.read(p, &schema, None).unwrap() {
                    got.extend(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap_or("NULL").to_string()));
                }
            }
            assert_eq!(got.len(), want.len(), "{n} splits");
            assert!(got == want, "{n} splits: the lines differ");
        }
        let _ = std::fs::remove_file(&path);
    }
}
