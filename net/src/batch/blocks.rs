//! A node's map outputs (shuffle blocks), keyed by (job, shuffle, map
//! partition), one block per reduce partition. They stay in memory up to
//! `batch.shuffle_memory_mb`; a map output that would pass it is written to
//! one anonymous file in `<data dir>/spill` instead and read back block by
//! block (`pread`) when a reducer fetches it. The file has no name, so it
//! is freed when the output is dropped (job cleaned, driver replaced) or
//! the node dies.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use millrace_core::batch::{JobId, StageId};

pub type Key = (JobId, StageId, u32);

enum Held {
    Memory(Arc<Vec<Vec<u8>>>),
    /// The blocks one after another in `file`; `ends[r]` is where block
    /// `r` ends.
    Disk { file: Arc<std::fs::File>, ends: Vec<u64> },
}

/// A block found in the store, not yet read.
pub enum Located {
    Memory(Arc<Vec<Vec<u8>>>, usize),
    Disk(Arc<std::fs::File>, u64, u64),
}

impl Located {
    pub fn read(self) -> Option<Vec<u8>> {
        match self {
            Located::Memory(blocks, r) => blocks.get(r).cloned(),
            Located::Disk(file, start, end) => {
                let mut buf = vec![0u8; (end - start) as usize];
                file.read_exact_at(&mut buf, start).ok()?;
                Some(buf)
            }
        }
    }
}

pub struct BlockStore {
    held: BTreeMap<Key, Held>,
    /// Bytes of blocks in memory.
    in_memory: u64,
    limit: u64,
    dir: PathBuf,
    /// Map outputs and bytes written to disk so far (for the log).
    pub spilled_outputs: u64,
    pub spilled_bytes: u64,
}

fn size(blocks: &[Vec<u8>]) -> u64 {
    blocks.iter().map(|b| b.len() as u64).sum()
}

impl BlockStore {
    /// `limit_mb`: megabytes held in memory before map outputs go to disk
    /// (0: every output to disk).
    pub fn new(limit_mb: u64, dir: PathBuf) -> BlockStore {
        BlockStore { held: BTreeMap::new(), in_memory: 0, limit: limit_mb.saturating_mul(1 << 20), dir, spilled_outputs: 0, spilled_bytes: 0 }
    }

    /// Keeps a map output, on disk if memory is full. A disk error keeps
    /// it in memory (over the limit, but not lost): the error is returned
    /// to be logged.
    pub fn insert(&mut self, key: Key, blocks: Vec<Vec<u8>>) -> Result<(), String> {
        self.remove(&key);
        let n = size(&blocks);
        let mut failed = Ok(());
        if self.in_memory + n > self.limit {
            match self.write(&blocks) {
                Ok(held) => {
                    self.spilled_outputs += 1;
                    self.spilled_bytes += n;
                    self.held.insert(key, held);
                    return Ok(());
                }
                Err(e) => failed = Err(format!("cannot write a map output to {}: {e}; kept in memory", self.dir.display())),
            }
        }
        self.in_memory += n;
        self.held.insert(key, Held::Memory(Arc::new(blocks)));
        failed
    }

    fn write(&self, blocks: &[Vec<u8>]) -> std::io::Result<Held> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = std::io::BufWriter::new(tempfile::tempfile_in(&self.dir)?);
        let mut ends = Vec::with_capacity(blocks.len());
        let mut at = 0u64;
        for b in blocks {
            file.write_all(b)?;
            at += b.len() as u64;
            ends.push(at);
        }
        let file = file.into_inner().map_err(|e| e.into_error())?;
        Ok(Held::Disk { file: Arc::new(file), ends })
    }

    /// Block `reduce` of map output `key` (`None`: not held, or its file
    /// cannot be read, which a reducer treats as a missing block).
    pub fn get(&self, key: &Key, reduce: u32) -> Option<Vec<u8>> {
        self.locate(key, reduce)?.read()
    }

    /// Where block `reduce` of `key` is, to read it after the store's lock
    /// is released (a disk read must not hold up the other tasks).
    pub fn locate(&self, key: &Key, reduce: u32) -> Option<Located> {
        Some(match self.held.get(key)? {
            Held::Memory(blocks) => Located::Memory(Arc::clone(blocks), reduce as usize),
            Held::Disk { file, ends } => {
                let r = reduce as usize;
                let end = *ends.get(r)?;
                let start = if r == 0 { 0 } else { ends[r - 1] };
                Located::Disk(Arc::clone(file), start, end)
            }
        })
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.held.contains_key(key)
    }

    fn remove(&mut self, key: &Key) {
        if let Some(Held::Memory(b)) = self.held.remove(key) {
            self.in_memory -= size(&b);
        }
    }

    /// Keeps only the outputs `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key) -> bool) {
        let gone: Vec<Key> = self.held.keys().filter(|k| !keep(k)).copied().collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Bytes of blocks held in memory.
    pub fn in_memory(&self) -> u64 {
        self.in_memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("millrace-blocks-{name}-{}", std::process::id()))
    }

    fn output(seed: u8, reduces: usize, len: usize) -> Vec<Vec<u8>> {
        (0..reduces).map(|r| (0..len + r).map(|i| seed.wrapping_add(i as u8).wrapping_mul(r as u8 + 1)).collect()).collect()
    }

    #[test]
    fn outputs_past_the_limit_go_to_disk_and_read_back_the_same() {
        let d = dir("limit");
        let mut s = BlockStore::new(1, d.clone());
        let small = output(1, 4, 100_000); // 0.4 MB: memory
        let big = output(2, 5, 300_000); // 1.5 MB: over 1 MB, disk
        s.insert((1, 0, 0), small.clone()).unwrap();
        s.insert((1, 0, 1), big.clone()).unwrap();
        assert_eq!(s.in_memory(), size(&small));
        assert_eq!((s.spilled_outputs, s.spilled_bytes), (1, size(&big)));
        for r in 0..5 {
            assert_eq!(s.get(&(1, 0, 1), r).as_ref(), big.get(r as usize));
        }
        assert_eq!(s.get(&(1, 0, 0), 3).as_ref(), small.get(3));
        assert_eq!(s.get(&(1, 0, 1), 5), None, "no sixth reduce partition");
        assert_eq!(s.get(&(2, 0, 0), 0), None);
        // Anonymous files: nothing named in the directory.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        s.retain(|k| k.1 != 0);
        assert_eq!((s.in_memory(), s.contains(&(1, 0, 1))), (0, false));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_zero_limit_puts_everything_on_disk_and_replacing_an_output_frees_its_memory() {
        let d = dir("zero");
        let mut s = BlockStore::new(0, d.clone());
        s.insert((1, 1, 0), output(3, 2, 10)).unwrap();
        assert_eq!((s.in_memory(), s.spilled_outputs), (0, 1));
        assert_eq!(s.get(&(1, 1, 0), 1), Some(output(3, 2, 10)[1].clone()));
        let mut m = BlockStore::new(1, d.clone());
        m.insert((1, 1, 0), output(4, 2, 10)).unwrap();
        m.insert((1, 1, 0), output(5, 2, 20)).unwrap();
        assert_eq!(m.in_memory(), size(&output(5, 2, 20)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_directory_keeps_the_output_in_memory_and_says_why() {
        let file = std::env::temp_dir().join(format!("millrace-blocks-file-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let mut s = BlockStore::new(0, file.join("spill"));
        let e = s.insert((1, 0, 0), output(6, 2, 10)).unwrap_err();
        assert!(e.contains("cannot write a map output") && e.contains("kept in memory"), "{e}");
        assert_eq!(s.get(&(1, 0, 0), 0), Some(output(6, 2, 10)[0].clone()));
        let _ = std::fs::remove_file(&file);
    }
}
