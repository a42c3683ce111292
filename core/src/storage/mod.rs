//! The one door through which durable bytes pass (DESIGN.md §2).
//!
//! The log and the broker never touch a file system. They call this trait,
//! which `millrace-net` implements over real files and `millrace-sim` over a
//! simulated disk that can lose unsynced writes, tear a write, flip bits on
//! read, fail an fsync or run out of space. Paths are `/`-separated names
//! relative to the data directory.

mod checked;
mod memory;

pub use checked::{CheckedError, read_checked, write_checked};
pub use memory::MemStorage;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("{file}: not found")]
    NotFound { file: String },
    #[error("{file}: no space left on device")]
    NoSpace { file: String },
    #[error("{file}: {op} failed: {message}")]
    Io { file: String, op: &'static str, message: String },
}

impl StorageError {
    pub fn io(file: &str, op: &'static str, message: impl ToString) -> Self {
        StorageError::Io { file: file.to_string(), op, message: message.to_string() }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// See [`Storage::detach_sync`].
pub type DetachedSync = Box<dyn FnOnce() -> StorageResult<()> + Send>;

pub trait Storage {
    /// Appends to the end of `file`, creating it if missing. Returns the
    /// position the data starts at. Not durable until [`Storage::sync`].
    fn append(&mut self, file: &str, data: &[u8]) -> StorageResult<u64>;

    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    fn read(&mut self, file: &str, pos: u64, len: usize) -> StorageResult<Vec<u8>>;

    /// Current length of `file`, written but maybe unsynced bytes included.
    fn len(&mut self, file: &str) -> StorageResult<u64>;

    /// Makes every write to `file` (and its creation) durable.
    fn sync(&mut self, file: &str) -> StorageResult<()>;

    /// [`Storage::sync`] of every file in `files`; when it returns `Ok`,
    /// all of them are durable. On an error some may be durable and others
    /// not (the caller treats any failed sync as fatal). This default syncs
    /// them one after the other, in order; a file-backed storage may sync
    /// them concurrently (on many disks, fsyncs of different files overlap).
    fn sync_many(&mut self, files: &[&str]) -> StorageResult<()> {
        for file in files {
            self.sync(file)?;
        }
        Ok(())
    }

    /// A sync of `files` to run later, elsewhere (an adapter runs it off the
    /// machine's turn, see `Input::SyncStart`): when the returned job
    /// returns `Ok`, every write to those files made before it ran is
    /// durable. A file removed meanwhile needs no sync. This default syncs
    /// at once and returns a job with nothing left to do.
    fn detach_sync(&mut self, files: &[String]) -> StorageResult<DetachedSync> {
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        self.sync_many(&files)?;
        Ok(Box::new(|| Ok(())))
    }

    /// Cuts `file` to `len` bytes, durably.
    fn truncate(&mut self, file: &str, len: u64) -> StorageResult<()>;

    /// Names of files starting with `prefix`, sorted.
    fn list(&mut self, prefix: &str) -> StorageResult<Vec<String>>;

    /// Removes `file`, durably; removing a missing file is not an error.
    fn remove(&mut self, file: &str) -> StorageResult<()>;

    /// Replaces the whole content of `file` atomically and durably: after a
    /// crash a reader sees either the old content or the new one.
    fn replace(&mut self, file: &str, data: &[u8]) -> StorageResult<()>;

    /// Replaces the whole content of `file` with that of `source`, which is
    /// gone afterwards: atomically and durably, like [`Storage::replace`],
    /// but without holding the content in memory where the storage can
    /// rename (a compacted segment can be as large as a segment). `source`
    /// need not be synced first.
    fn replace_with_file(&mut self, file: &str, source: &str) -> StorageResult<()> {
        let data = self.read_all(source)?.ok_or_else(|| StorageError::NotFound { file: source.to_string() })?;
        self.replace(file, &data)?;
        self.remove(source)
    }

    /// Reads a whole small file, or `None` if it does not exist.
    fn read_all(&mut self, file: &str) -> StorageResult<Option<Vec<u8>>> {
        match self.len(file) {
            Ok(n) => self.read(file, 0, n as usize).map(Some),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
