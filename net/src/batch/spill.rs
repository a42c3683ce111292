//! Where a node's tasks spill: anonymous scratch files in one directory
//! (`<data dir>/spill` for `millrace serve`, the system's temp directory
//! for `millrace sql --local`). The files have no name (`tempfile`), so the
//! kernel frees them when the task drops them, or when the process dies:
//! a crashed node leaves no spill behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use millrace_engine::spill::{RunFile, Spill, SpillSpace};

/// One task's spill space: a directory and what was written to it.
pub struct DiskSpace {
    dir: PathBuf,
    written: AtomicU64,
    runs: AtomicU64,
}

impl DiskSpace {
    pub fn new(dir: PathBuf) -> DiskSpace {
        DiskSpace { dir, written: AtomicU64::new(0), runs: AtomicU64::new(0) }
    }

    /// Bytes written to runs so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The engine's view: this space past `limit_mb` MB, or none when the
    /// limit is 0 (never spill).
    pub fn limit(&self, limit_mb: u64) -> Option<Spill<'_>> {
        (limit_mb > 0).then(|| Spill { limit_bytes: usize::try_from(limit_mb << 20).unwrap_or(usize::MAX), space: self })
    }
}

impl SpillSpace for DiskSpace {
    fn create(&self) -> std::io::Result<Box<dyn RunFile>> {
        std::fs::create_dir_all(&self.dir)
            .and_then(|_| tempfile::tempfile_in(&self.dir))
            .map(|f| Box::new(f) as Box<dyn RunFile>)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create a spill file in {}: {e}", self.dir.display())))
    }

    fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn a_run_file_reads_back_and_leaves_nothing_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("millrace-spill-unit-{}", std::process::id()));
        let space = DiskSpace::new(dir.clone());
        let mut f = space.create().unwrap();
        f.write_all(b"spilled rows").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "spilled rows");
        // Anonymous: nothing named in the directory, even while open.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named_in_the_error() {
        let file = std::env::temp_dir().join(format!("millrace-spill-file-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let space = DiskSpace::new(file.join("spill"));
        let e = space.create().err().unwrap();
        assert!(e.to_string().contains("cannot create a spill file in"), "{e}");
        std::fs::remove_file(&file).unwrap();
    }
}
