//! Shuffle blocks: a map task splits its output by the hash of the shuffle
//! keys (or round-robin when there are none) into one block per reduce
//! partition, each an Arrow IPC stream, which is what a worker stores and a
//! reducer fetches.

use std::io::Cursor;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::error::Result;
use crate::eval::evaluate;
use crate::exec_err;
use crate::expr::Expr;
use crate::ops::keys;
use crate::types::Schema;

/// Splits `batches` into `partitions` lists of batches. `salt` (the map
/// partition) staggers round-robin so map tasks do not all start at 0.
pub fn partition(
    batches: &[RecordBatch],
    schema: &Schema,
    keys_exprs: &[Expr],
    partitions: u32,
    salt: u32,
) -> Result<Vec<Vec<RecordBatch>>> {
    let p = partitions.max(1) as usize;
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); p];
    let mut rr = salt as usize;
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        if p == 1 {
            out[0].push(b.clone());
            continue;
        }
        let mut idx: Vec<Vec<u32>> = vec![Vec::new(); p];
        if keys_exprs.is_empty() {
            for i in 0..b.num_rows() {
                idx[rr % p].push(i as u32);
                rr += 1;
            }
        } else {
            let cols: Vec<ArrayRef> = keys_exprs
                .iter()
                .map(|e| evaluate(e, b, schema))
                .collect::<Result<_>>()?;
            let conv = keys::converter(&cols)?;
            let rows = keys::encode(&conv, &cols)?;
            for i in 0..b.num_rows() {
                idx[(keys::hash_bytes(rows.row(i).as_ref()) % p as u64) as usize].push(i as u32);
            }
        }
        for (k, ix) in idx.into_iter().enumerate() {
            if !ix.is_empty() {
                out[k].push(take_record_batch(b, &UInt32Array::from(ix))?);
            }
        }
    }
    Ok(out)
}

/// One block: the batches as an Arrow IPC stream (schema first, so an
/// empty block still says what it would have held).
pub fn encode(batches: &[RecordBatch], schema: &Schema) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &schema.to_arrow())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(buf)
}

pub fn decode(block: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(Cursor::new(block), None)
        .map_err(|e| exec_err!("a shuffle block does not decode: {e}"))?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b.map_err(|e| exec_err!("a shuffle block does not decode: {e}"))?);
    }
    Ok(out)
}
