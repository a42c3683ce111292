//! A simulated disk implementing [`Storage`], shared by a node across its
//! restarts like a real disk.
//!
//! Model: each file has its current bytes and the length known to be
//! durable. Appends are volatile until `sync`; truncate, replace and remove
//! are durable at once (the file storage makes them so with fsync). A
//! crash applies a [`CrashMode`] to each file's unsynced tail: lost, kept,
//! or torn at 512-byte sectors (some sectors written, others zeros or
//! garbage — the size was journaled, the data blocks were not). A file
//! created and never synced may vanish. Faults that act while running:
//! transient read corruption (a flipped bit in what a read returns; the
//! data at rest is fine), a failing fsync, a full disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use millrace_core::storage::{Storage, StorageError, StorageResult};
use millrace_fault::{CrashMode, Rng};

const SECTOR: usize = 512;

#[derive(Debug, Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    synced_len: usize,
    /// The file's name is durable (it was synced or replaced at least once).
    durable: bool,
}

#[derive(Debug)]
struct DiskState {
    files: BTreeMap<String, SimFile>,
    rng: Rng,
    read_corruption_per_million: u32,
    fail_next_fsync: bool,
    full: bool,
    stats: DiskStats,
}

/// What the disk did, for the history and the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub corrupted_reads: u64,
    pub failed_fsyncs: u64,
    pub refused_appends: u64,
    pub torn_files: u64,
    pub lost_unsynced_bytes: u64,
}

/// A handle to one node's disk; clones share it.
#[derive(Debug, Clone)]
pub struct SimDisk(Arc<Mutex<DiskState>>);

impl SimDisk {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(DiskState {
            files: BTreeMap::new(),
            rng: Rng::new(seed),
            read_corruption_per_million: 0,
            fail_next_fsync: false,
            full: false,
            stats: DiskStats::default(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock is a simulator bug; keep going
        // with the data as it is so the report can still be printed.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_read_corruption(&self, per_million: u32) {
        self.state().read_corruption_per_million = per_million;
    }

    pub fn fail_next_fsync(&self) {
        self.state().fail_next_fsync = true;
    }

    pub fn set_full(&self, full: bool) {
        self.state().full = full;
    }

    pub fn healthy(&self) {
        let mut s = self.state();
        s.read_corruption_per_million = 0;
        s.full = false;
    }

    pub fn stats(&self) -> DiskStats {
        self.state().stats
    }

    /// What survives a power loss or a process kill, per `mode`.
    pub fn crash(&self, mode: CrashMode) {
        let mut guard = self.state();
        let s = &mut *guard;
        let mut vanished = Vec::new();
        for (name, f) in s.files.iter_mut() {
            if !f.durable && mode != CrashMode::KeepUnsynced {
                vanished.push(name.clone());
                continue;
            }
            let unsynced = f.data.len() - f.synced_len;
            if unsynced == 0 {
                continue;
            }
            match mode {
                CrashMode::KeepUnsynced => {}
                CrashMode::LoseUnsynced => {
                    f.data.truncate(f.synced_len);
                    s.stats.lost_unsynced_bytes += unsynced as u64;
                }
                CrashMode::TearUnsynced => {
                    // Sectors of the tail: each written, zeroed or garbage.
                    let first_sector = f.synced_len / SECTOR;
                    let last_sector = (f.data.len() - 1) / SECTOR;
                    for sector in first_sector..=last_sector {
                        let start = (sector * SECTOR).max(f.synced_len);
                        let end = ((sector + 1) * SECTOR).min(f.data.len());
                        match s.rng.below(3) {
                            0 => {}
                            1 => f.data[start..end].fill(0),
                            _ => {
                                for b in &mut f.data[start..end] {
                                    *b = s.rng.next_u64() as u8;
                                }
                            }
                        }
                    }
                    // And maybe the size update did not make it either.
                    if s.rng.chance(500) {
                        let keep = f.synced_len + s.rng.below(unsynced as u64 + 1) as usize;
                        f.data.truncate(keep);
                    }
                    s.stats.torn_files += 1;
                }
            }
            f.synced_len = f.data.len();
        }
        for name in vanished {
            if let Some(f) = s.files.remove(&name) {
                s.stats.lost_unsynced_bytes += f.data.len() as u64;
            }
        }
        s.fail_next_fsync = false;
    }

    /// Total bytes stored (for reports).
    pub fn used_bytes(&self) -> u64 {
        self.state().files.values().map(|f| f.data.len() as u64).sum()
    }
}

fn not_found(file: &str) -> StorageError {
    StorageError::NotFound { file: file.to_string() }
}

impl Storage for SimDisk {
    /// The sync happens when the job runs (the adapter may run it after a
    /// simulated delay): until then the data is as unsynced as ever, and a
    /// crash meanwhile treats it so. A file removed meanwhile is skipped.
    fn detach_sync(&mut self, files: &[String]) -> StorageResult<millrace_core::storage::DetachedSync> {
        let mut disk = self.clone();
        let files = files.to_vec();
        Ok(Box::new(move || {
            for file in &files {
                match disk.sync(file) {
                    Err(StorageError::NotFound { .. }) => {}
                    r => r?,
                }
            }
            Ok(())
        }))
    }

    fn append(&mut self, file: &str, data: &[u8]) -> StorageResult<u64> {
        let mut s = self.state();
        if s.full && !data.is_empty() {
            s.stats.refused_appends += 1;
            return Err(StorageError::NoSpace { file: file.to_string() });
        }
        let f = s.files.entry(file.to_string()).or_default();
        let pos = f.data.len() as u64;
        f.data.extend_from_slice(data);
        Ok(pos)
    }

    fn read(&mut self, file: &str, pos: u64, len: usize) -> StorageResult<Vec<u8>> {
        let mut guard = self.state();
        let s = &mut *guard;
        let f = s.files.get(file).ok_or_else(|| not_found(file))?;
        let start = (pos as usize).min(f.data.len());
        let end = start.saturating_add(len).min(f.data.len());
        let mut out = f.data[start..end].to_vec();
        if !out.is_empty()
            && s.read_corruption_per_million > 0
            && s.rng.below(1_000_000) < u64::from(s.read_corruption_per_million)
        {
            let i = s.rng.below(out.len() as u64) as usize;
            out[i] ^= 1 << s.rng.below(8);
            s.stats.corrupted_reads += 1;
        }
        Ok(out)
    }

    fn len(&mut self, file: &str) -> StorageResult<u64> {
        self.state().files.get(file).map(|f| f.data.len() as u64).ok_or_else(|| not_found(file))
    }

    fn sync(&mut self, file: &str) -> StorageResult<()> {
        let mut s = self.state();
        if s.fail_next_fsync {
            s.fail_next_fsync = false;
            s.stats.failed_fsyncs += 1;
            return Err(StorageError::io(file, "fsync", "EIO (simulated)"));
        }
        let f = s.files.get_mut(file).ok_or_else(|| not_found(file))?;
        f.synced_len = f.data.len();
        f.durable = true;
        Ok(())
    }

    fn truncate(&mut self, file: &str, len: u64) -> StorageResult<()> {
        let mut s = self.state();
        let f = s.files.get_mut(file).ok_or_else(|| not_found(file))?;
        f.data.truncate(len as usize);
        f.synced_len = f.data.len();
        f.durable = true;
        Ok(())
    }

    fn list(&mut self, prefix: &str) -> StorageResult<Vec<String>> {
        Ok(self.state().files.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn remove(&mut self, file: &str) -> StorageResult<()> {
        self.state().files.remove(file);
        Ok(())
    }

    fn replace(&mut self, file: &str, data: &[u8]) -> StorageResult<()> {
        let mut s = self.state();
        if s.full {
            s.stats.refused_appends += 1;
            return Err(StorageError::NoSpace { file: file.to_string() });
        }
        s.files.insert(file.to_string(), SimFile { data: data.to_vec(), synced_len: data.len(), durable: true });
        Ok(())
    }

    /// A rename, as the file storage does it: the source is synced first
    /// (which can fail), then its name moves over the target durably.
    fn replace_with_file(&mut self, file: &str, source: &str) -> StorageResult<()> {
        self.sync(source)?;
        let mut s = self.state();
        let f = s.files.remove(source).ok_or_else(|| not_found(source))?;
        s.files.insert(file.to_string(), f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_modes_treat_only_unsynced_bytes() {
        for mode in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced, CrashMode::TearUnsynced] {
            let mut d = SimDisk::new(1);
            d.append("a", &[1; 1000]).unwrap();
            d.sync("a").unwrap();
            d.append("a", &[2; 1500]).unwrap();
            d.append("new", &[3; 10]).unwrap();
            d.crash(mode);
            let a = d.read_all("a").unwrap().unwrap();
            assert_eq!(&a[..1000], &[1; 1000][..], "{mode:?}: synced bytes survive");
            match mode {
                CrashMode::LoseUnsynced => {
                    assert_eq!(a.len(), 1000);
                    assert!(d.read_all("new").unwrap().is_none());
                }
                CrashMode::KeepUnsynced => {
                    assert_eq!(a.len(), 2500);
                    assert_eq!(d.read_all("new").unwrap().unwrap(), vec![3; 10]);
                }
                CrashMode::TearUnsynced => assert!(a.len() <= 2500),
            }
        }
    }

    #[test]
    fn faults_fail_fsync_refuse_appends_and_flip_read_bits() {
        let mut d = SimDisk::new(2);
        d.append("a", b"hello").unwrap();
        d.fail_next_fsync();
        assert!(d.sync("a").is_err());
        assert!(d.sync("a").is_ok());
        d.set_full(true);
        assert!(matches!(d.append("a", b"x"), Err(StorageError::NoSpace { .. })));
        d.healthy();
        d.append("a", &[0; 4096]).unwrap();
        d.set_read_corruption(1_000_000);
        let read = d.read("a", 5, 4096).unwrap();
        assert_eq!(read.iter().map(|b| b.count_ones()).sum::<u32>(), 1, "exactly one bit flipped");
        d.healthy();
        assert_eq!(d.read("a", 5, 4096).unwrap(), vec![0; 4096], "the data at rest is intact");
        assert_eq!(d.stats().corrupted_reads, 1);
    }
}
