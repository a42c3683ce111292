//! Spilling: when the rows a wide operator must hold (an aggregate's input,
//! a join's two sides) pass the task's memory limit, they are split by the
//! hash of their keys into runs written to scratch space, and the operator
//! then works one run at a time (Grace hash partitioning). Rows with equal
//! keys land in the same run, so an aggregate or join of each run, put
//! together, is the whole answer. A run still over the limit is split
//! again with another salt, up to [`MAX_LEVEL`] times.
//!
//! The engine does no IO of its own here: the node running the task lends
//! it a [`SpillSpace`] (scratch files on a real node, memory under the
//! simulator and in tests), so the same code runs everywhere.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::error::{EngineError, Result};
use crate::exec_err;
use crate::ops::keys;

/// Runs one partitioning step writes (Spark and DataFusion use similar
/// fan-outs: enough that a run is a small share, few enough open files).
pub const FANOUT: usize = 16;

/// How many times a run may be split again before it is processed in
/// memory whatever its size (all rows of one key cannot be split).
pub const MAX_LEVEL: u32 = 3;

/// Scratch storage a run is written to and read back from.
pub trait RunFile: Read + Write + Seek + Send {}
impl<T: Read + Write + Seek + Send> RunFile for T {}

/// Where a task's spilled runs go: the node decides (files in its data
/// directory, or memory).
pub trait SpillSpace: Send + Sync {
    /// A new empty run. Whatever backs it is released when it is dropped.
    fn create(&self) -> std::io::Result<Box<dyn RunFile>>;
    /// Told the size of each run once written, for the node's statistics.
    fn wrote(&self, _bytes: u64) {}
}

/// A task's memory limit and where it spills past it.
#[derive(Clone, Copy)]
pub struct Spill<'a> {
    /// Bytes of Arrow data (as `get_array_memory_size` counts them) an
    /// operator may hold before it spills.
    pub limit_bytes: usize,
    pub space: &'a dyn SpillSpace,
}

/// Runs kept in memory: for the simulator and tests, which must not touch
/// the disk, and to force the spilling path with a tiny limit.
#[derive(Default)]
pub struct MemorySpace {
    written: std::sync::atomic::AtomicU64,
}

impl MemorySpace {
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl SpillSpace for MemorySpace {
    fn create(&self) -> std::io::Result<Box<dyn RunFile>> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }
    fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

fn io(e: std::io::Error) -> EngineError {
    exec_err!("spilling to disk failed: {e}")
}

/// One written run: its rows as an Arrow IPC stream in scratch space.
pub struct Run {
    /// Which of the [`FANOUT`] runs of its split this is.
    pub index: usize,
    file: Box<dyn RunFile>,
    /// The rows' in-memory size when they were written.
    pub bytes: usize,
    pub rows: usize,
}

impl Run {
    /// Reads the run back (and releases its scratch space).
    pub fn read(self) -> Result<Vec<RecordBatch>> {
        let mut file = self.file;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let reader = StreamReader::try_new(BufReader::new(file), None)
            .map_err(|e| exec_err!("a spilled run does not read back: {e}"))?;
        reader
            .map(|b| b.map_err(|e| exec_err!("a spilled run does not read back: {e}")))
            .collect()
    }
}

/// Splits rows by key hash into [`FANOUT`] runs at one `level` (the level
/// salts the hash, so a run split again spreads over all new runs, and the
/// split is independent of the shuffle's own `hash % partitions`).
pub struct Partitioner<'a> {
    space: &'a dyn SpillSpace,
    schema: SchemaRef,
    level: u32,
    runs: Vec<Option<(StreamWriter<BufWriter<Box<dyn RunFile>>>, usize, usize)>>,
}

impl<'a> Partitioner<'a> {
    pub fn new(space: &'a dyn SpillSpace, schema: SchemaRef, level: u32) -> Self {
        Partitioner {
            space,
            schema,
            level,
            runs: (0..FANOUT).map(|_| None).collect(),
        }
    }

    /// Which run a row whose key hashes to `h` goes to.
    pub fn run_of(level: u32, h: u64) -> usize {
        let salted = keys::hash_i64((h ^ (u64::from(level) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as i64);
        (salted % FANOUT as u64) as usize
    }

    /// Writes `batch` out, row `i` to the run of `key_cols`' row `i`.
    pub fn push(&mut self, batch: &RecordBatch, key_cols: &[ArrayRef]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut idx: Vec<Vec<u32>> = vec![Vec::new(); FANOUT];
        if key_cols.is_empty() {
            idx[0] = (0..batch.num_rows() as u32).collect();
        } else {
            let conv = keys::converter(key_cols)?;
            let rows = keys::encode(&conv, key_cols)?;
            for i in 0..batch.num_rows() {
                idx[Self::run_of(self.level, keys::hash_bytes(rows.row(i).as_ref()))].push(i as u32);
            }
        }
        for (k, ix) in idx.into_iter().enumerate() {
            if ix.is_empty() {
                continue;
            }
            let part = take_record_batch(batch, &UInt32Array::from(ix))?;
            if self.runs[k].is_none() {
                let file = self.space.create().map_err(io)?;
                self.runs[k] = Some((StreamWriter::try_new(BufWriter::new(file), &self.schema)?, 0, 0));
            }
            if let Some((w, bytes, rows)) = &mut self.runs[k] {
                *bytes += part.get_array_memory_size();
                *rows += part.num_rows();
                w.write(&part)?;
            }
        }
        Ok(())
    }

    /// The runs written, in run order (empty ones left out).
    pub fn finish(self) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        for (index, (w, bytes, rows)) in self.runs.into_iter().enumerate().filter_map(|(i, r)| Some((i, r?))) {
            let mut file = w
                .into_inner()?
                .into_inner()
                .map_err(|e| io(e.into_error()))?;
            file.flush().map_err(io)?;
            let len = file.stream_position().map_err(io)?;
            self.space.wrote(len);
            out.push(Run { index, file, bytes, rows });
        }
        Ok(out)
    }
}

/// An operator input, buffered: all in memory, or split into runs because
/// it passed the limit.
pub enum Buffered {
    Memory(Vec<RecordBatch>),
    Runs(Vec<Run>),
}

/// Consumes `input`, holding it in memory until it passes `spill`'s limit
/// and from then on writing it into runs by `keys_of` at `level`.
/// `force` starts a partitioner even below the limit (the other side of a
/// join spilled, so this side must be split the same way).
pub fn buffer<E>(
    input: impl Iterator<Item = Result<RecordBatch, E>>,
    schema: SchemaRef,
    keys_of: &dyn Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
    spill: Option<Spill<'_>>,
    level: u32,
    force: bool,
) -> Result<Buffered, E>
where
    E: From<EngineError>,
{
    let mut held = Vec::new();
    let mut bytes = 0usize;
    let mut part: Option<Partitioner> = None;
    for b in input {
        let b = b?;
        if let Some(p) = &mut part {
            p.push(&b, &keys_of(&b)?)?;
            continue;
        }
        bytes += b.get_array_memory_size();
        held.push(b);
        if let Some(s) = spill
            && level < MAX_LEVEL
            && bytes > s.limit_bytes
        {
            let mut p = Partitioner::new(s.space, schema.clone(), level);
            for b in held.drain(..) {
                p.push(&b, &keys_of(&b)?)?;
            }
            part = Some(p);
        }
    }
    if part.is_none()
        && force
        && let Some(s) = spill
    {
        let mut p = Partitioner::new(s.space, schema.clone(), level);
        for b in held.drain(..) {
            p.push(&b, &keys_of(&b)?)?;
        }
        part = Some(p);
    }
    Ok(match part {
        Some(p) => Buffered::Runs(p.finish()?),
        None => Buffered::Memory(held),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(lo: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("s", DataType::Utf8, false)]));
        let k: Int64Array = (lo..lo + n).map(|i| i % 37).collect();
        let s: StringArray = (lo..lo + n).map(|i| Some(format!("row-{i}"))).collect();
        RecordBatch::try_new(schema, vec![Arc::new(k), Arc::new(s)]).unwrap()
    }

    fn key(b: &RecordBatch) -> Result<Vec<ArrayRef>> {
        Ok(vec![b.column(0).clone()])
    }

    #[test]
    fn rows_over_the_limit_are_split_by_key_and_read_back_whole() {
        let space = MemorySpace::default();
        let input: Vec<Result<RecordBatch>> = (0..10).map(|i| Ok(batch(i * 100, 100))).collect();
        let schema = batch(0, 1).schema();
        let spill = Spill { limit_bytes: 4_000, space: &space };
        let Buffered::Runs(runs) = buffer(input.into_iter(), schema, &key, Some(spill), 0, false).unwrap() else {
            panic!("1,000 rows passed a 4 kB limit but were kept in memory");
        };
        assert!(runs.len() > 1 && space.written() > 0);
        let mut seen = Vec::new();
        let mut keys_per_run = Vec::new();
        for r in runs {
            let rows = r.rows;
            let batches = r.read().unwrap();
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
            let mut ks = std::collections::BTreeSet::new();
            for b in &batches {
                let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    ks.insert(k.value(i));
                    seen.push(s.value(i).to_string());
                }
            }
            keys_per_run.push(ks);
        }
        // Every row once, and no key in two runs.
        seen.sort();
        let mut want: Vec<String> = (0..1000).map(|i| format!("row-{i}")).collect();
        want.sort();
        assert_eq!(seen, want);
        for (i, a) in keys_per_run.iter().enumerate() {
            for b in &keys_per_run[i + 1..] {
                assert!(a.is_disjoint(b), "a key is in two runs: {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn rows_under_the_limit_stay_in_memory_unless_forced() {
        let space = MemorySpace::default();
        let schema = batch(0, 1).schema();
        let spill = Spill { limit_bytes: 1 << 30, space: &space };
        let input = || (0..3).map(|i| Ok::<_, EngineError>(batch(i * 10, 10)));
        assert!(matches!(buffer(input(), schema.clone(), &key, Some(spill), 0, false).unwrap(), Buffered::Memory(b) if b.len() == 3));
        assert!(matches!(buffer(input(), schema.clone(), &key, None, 0, true).unwrap(), Buffered::Memory(_)));
        assert!(matches!(buffer(input(), schema, &key, Some(spill), 0, true).unwrap(), Buffered::Runs(r) if r.iter().map(|r| r.rows).sum::<usize>() == 30));
    }

    #[test]
    fn another_level_spreads_one_run_over_many() {
        // Keys that share a run at level 0 spread at level 1.
        let hashes: Vec<u64> = (0..4000u64).map(|i| keys::hash_i64(i as i64)).filter(|h| Partitioner::run_of(0, *h) == 3).collect();
        let spread: std::collections::BTreeSet<usize> = hashes.iter().map(|h| Partitioner::run_of(1, *h)).collect();
        assert!(spread.len() > FANOUT / 2, "{spread:?}");
    }
}
