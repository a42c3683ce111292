//! The file sink's IO: each [`Segment`] the core's [`Segmenter`] completes
//! is written whole to a hidden temporary file, synced, renamed to its
//! final name and the folder synced; only then is its end reported as
//! durable. A rename replaces a file of the same name, which is what makes
//! a re-delivery after a crash rewrite the same file instead of adding one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use millrace_core::Millis;
use millrace_core::connect::{ConnectError, Segment, Segmenter, SegmenterConfig, Sink, SinkRecord};

pub struct FileSink {
    dir: PathBuf,
    config: SegmenterConfig,
    partitions: BTreeMap<i32, Segmenter>,
}

impl FileSink {
    /// The sink writing into `dir`, created if missing.
    pub fn create(dir: &str, config: SegmenterConfig) -> Result<FileSink, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the folder {dir}: {e}"))?;
        if !std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(format!("{dir} is not a folder"));
        }
        Ok(FileSink { dir: PathBuf::from(dir), config, partitions: BTreeMap::new() })
    }

    fn io(&self, e: std::io::Error) -> ConnectError {
        ConnectError::Io { path: self.dir.display().to_string(), reason: e.to_string() }
    }

    fn write_segment(&self, s: &Segment) -> Result<(), ConnectError> {
        let tmp = self.dir.join(format!(".{}.tmp", s.name));
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&s.bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, self.dir.join(&s.name)).map_err(|e| self.io(e))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| self.io(e))?;
        Ok(())
    }

    fn write_all(&self, segments: &[Segment]) -> Result<Option<i64>, ConnectError> {
        for s in segments {
            self.write_segment(s)?;
        }
        Ok(segments.last().map(|s| s.end))
    }
}

impl Sink for FileSink {
    fn open(&mut self, partition: i32, next_offset: i64) -> Result<(), ConnectError> {
        // Temporary files a crash left behind for this partition.
        let prefix = format!(".{}-{partition}-", self.config.topic);
        for e in std::fs::read_dir(&self.dir).map_err(|e| self.io(e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.partitions.insert(partition, Segmenter::new(self.config.clone(), partition, next_offset));
        Ok(())
    }

    fn write(&mut self, now: Millis, partition: i32, records: &[SinkRecord]) -> Result<Option<i64>, ConnectError> {
        let Some(seg) = self.partitions.get_mut(&partition) else {
            return Err(ConnectError::Fatal(format!("partition {partition} was not opened")));
        };
        let done = seg.push(now, records);
        self.write_all(&done)
    }

    fn idle(&mut self, now: Millis, partition: i32) -> Result<Option<i64>, ConnectError> {
        let Some(seg) = self.partitions.get_mut(&partition) else { return Ok(None) };
        let done: Vec<Segment> = seg.idle(now).into_iter().collect();
        self.write_all(&done)
    }
}
