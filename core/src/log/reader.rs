//! Sequential access to the batches of one segment file through [`Storage`],
//! reading in large chunks so a scan costs few storage calls.

use crate::storage::{Storage, StorageResult};

const CHUNK: usize = 1 << 20;

pub struct ChunkReader<'a, S: Storage + ?Sized> {
    storage: &'a mut S,
    file: &'a str,
    /// Bytes of the file that may be read (a segment's valid size, or the
    /// file length during recovery).
    limit: u64,
    buf_pos: u64,
    buf: Vec<u8>,
}

impl<'a, S: Storage + ?Sized> ChunkReader<'a, S> {
    pub fn new(storage: &'a mut S, file: &'a str, limit: u64) -> Self {
        Self { storage, file, limit, buf_pos: 0, buf: Vec::new() }
    }

    /// The `n` bytes at `pos`, or `None` if they run past the limit (or the
    /// file turned out shorter than it claimed).
    pub fn bytes_at(&mut self, pos: u64, n: usize) -> StorageResult<Option<&[u8]>> {
        if pos.checked_add(n as u64).is_none_or(|end| end > self.limit) {
            return Ok(None);
        }
        let have = pos >= self.buf_pos && pos + n as u64 <= self.buf_pos + self.buf.len() as u64;
        if !have {
            let want = n.max(CHUNK).min((self.limit - pos) as usize);
            self.buf = self.storage.read(self.file, pos, want)?;
            self.buf_pos = pos;
            if self.buf.len() < n {
                return Ok(None);
            }
        }
        let at = (pos - self.buf_pos) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }
}
