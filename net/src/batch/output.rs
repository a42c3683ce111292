//! Writing a query's result: a table on the terminal, or a file whose
//! extension picks the format (.csv, .json lines, .parquet).

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;

pub fn write_file(path: &Path, batches: &[RecordBatch]) -> anyhow::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let Some(first) = batches.first() else {
        bail!("the query returned no batches; nothing written to {}", path.display());
    };
    match ext.as_str() {
        "csv" => {
            let mut w = arrow::csv::Writer::new(file);
            for b in batches {
                w.write(b)?;
            }
        }
        "json" | "jsonl" | "ndjson" => {
            let mut w = arrow::json::LineDelimitedWriter::new(file);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        "parquet" => {
            let mut w = parquet::arrow::ArrowWriter::try_new(file, first.schema(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
        other => bail!("unknown output format '.{other}' for {}: use .csv, .json or .parquet", path.display()),
    }
    Ok(())
}

/// Rows as a text table.
pub fn table(batches: &[RecordBatch]) -> anyhow::Result<String> {
    Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
