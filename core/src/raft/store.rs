//! The durable home of one Raft node: its hard state, its snapshot and its
//! log, over the [`Storage`] trait, so a controller node survives restarts.
//! The caller executes `RaftNode`'s `PersistState`, `Append`, `Truncate`
//! and `SaveSnapshot` effects here (syncing before any `Send`), and reopens
//! the store at start.
//!
//! Three files under `dir`:
//! - `state`: the [`HardState`] behind a CRC, replaced atomically. Damage
//!   there refuses the open rather than defaulting: a node that forgot its
//!   vote could vote twice in one term and help elect two leaders.
//! - `snapshot`: bincode of (index, term, data) behind a CRC, replaced
//!   atomically. It stands for every entry up to its index, which the log
//!   no longer holds; damage refuses the open too (those entries are gone).
//! - `log`: one frame per entry after the snapshot, `[u32 BE payload
//!   length][u32 BE CRC-32C of payload][bincode of Entry]`. Recovery keeps
//!   the longest valid prefix and cuts the rest. For a torn tail that is
//!   exactly right: the caller syncs before any `Send`, so bytes a crash
//!   tore were never promised.
//!
//! Saving a snapshot writes the snapshot file first, then rewrites the log
//! without the entries it covers. A crash between the two leaves those
//! entries at the head of the log: the next open skips them and finishes
//! the rewrite.

use serde::de::DeserializeOwned;

use super::{Entry, HardState, Index, RaftLog, Snapshot, Term};
use crate::storage::{CheckedError, Storage, StorageError, read_checked, write_checked};

const HEADER_LEN: usize = 8;
/// A damaged length field must not make recovery allocate gigabytes; no
/// controller entry comes anywhere near this.
const MAX_FRAME: usize = 64 << 20;
/// Reads can be wrong once while the data at rest is fine (a flaky
/// controller or cable): a frame that fails its checks is re-read before
/// the log is cut there, since cutting throws away acknowledged entries.
const READ_ATTEMPTS: usize = 4;

/// What recovery found while opening the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRecovery {
    /// Entries kept (after the snapshot).
    pub entries: usize,
    /// Entries the snapshot already covered, dropped from the log (a crash
    /// came between writing the snapshot and rewriting the log).
    pub skipped_entries: usize,
    /// Bytes cut from the end of the log (a torn or damaged frame and
    /// everything after it).
    pub truncated_bytes: u64,
    /// Why the log was cut, if it was.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftStoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{file}: damaged: {reason}")]
    DamagedState { file: String, reason: String },
}

/// Where each entry's frame starts in the log file, and its term.
type Frames = Vec<(u64, Term)>;

/// What [`RaftStore::open`] recovered.
pub type Opened = (RaftStore, HardState, RaftLog, Option<Snapshot>, StoreRecovery);

#[derive(Debug)]
pub struct RaftStore {
    log_file: String,
    state_file: String,
    snapshot_file: String,
    /// The stored snapshot's last (index, term); (0, 0) without one. The
    /// log file holds the entries after it.
    base: (Index, Term),
    /// Where each entry's frame starts, and its term: entry `base + i` is
    /// at `frames[i - 1]`, so a truncation finds its cut without a scan.
    frames: Frames,
    /// End of the last whole frame: where the next append must land.
    end: u64,
    unsynced: bool,
}

impl RaftStore {
    /// Opens (or creates) the store under `dir` (e.g. "meta/raft"),
    /// returning the hard state, the log after the snapshot, the snapshot
    /// and what recovery did.
    pub fn open<S: Storage + ?Sized>(storage: &mut S, dir: &str) -> Result<Opened, RaftStoreError> {
        let state_file = format!("{dir}/state");
        let hard = read_decoded::<_, HardState>(storage, &state_file)?.unwrap_or_default();
        let snapshot_file = format!("{dir}/snapshot");
        let snapshot = read_decoded::<_, (Index, Term, Vec<u8>)>(storage, &snapshot_file)?
            .map(|(index, term, data)| Snapshot { index, term, data });
        let base = snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        let log_file = format!("{dir}/log");
        let file_len = match storage.len(&log_file) {
            Ok(n) => n,
            Err(StorageError::NotFound { .. }) => {
                // Created now so that sync and truncate always have a file.
                storage.append(&log_file, &[])?;
                0
            }
            Err(e) => return Err(e.into()),
        };
        let mut store = RaftStore { log_file, state_file, snapshot_file, base, frames: Vec::new(), end: 0, unsynced: false };
        let (entries, recovery) = store.scan(storage, file_len)?;
        // What recovery read may be only in the page cache (the process
        // died, the machine did not): make it durable before a vote or an
        // acknowledgement is built on it.
        storage.sync(&store.log_file)?;
        // Cannot fail (the scan checked the same rules), but an error beats
        // a panic if the two ever drift apart.
        let log = RaftLog::with_snapshot(base.0, base.1, entries)
            .map_err(|reason| RaftStoreError::DamagedState { file: store.log_file.clone(), reason })?;
        Ok((store, hard, log, snapshot, recovery))
    }

    /// Reads the log file: the entries after the snapshot, with their
    /// frames recorded. Cuts the file at the first frame that is damaged or
    /// does not continue the log, and rewrites it without the entries the
    /// snapshot covers, if it still has any.
    fn scan<S: Storage + ?Sized>(&mut self, storage: &mut S, file_len: u64) -> Result<(Vec<Entry>, StoreRecovery), StorageError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut recovery = StoreRecovery::default();
        let (mut pos, mut prev) = (0u64, None);
        while pos < file_len {
            let fits = |e: &Entry| continues(prev, self.base, e);
            match read_entry(storage, &self.log_file, pos, file_len, &fits)? {
                Ok((entry, len)) => {
                    prev = Some((entry.index, entry.term));
                    if entry.index <= self.base.0 {
                        recovery.skipped_entries += 1;
                    } else {
                        self.frames.push((pos, entry.term));
                        entries.push(entry);
                    }
                    pos += len;
                }
                Err(reason) => {
                    recovery.reason = Some(format!("{} at byte {pos}: {reason}", self.log_file));
                    recovery.truncated_bytes = file_len - pos;
                    storage.truncate(&self.log_file, pos)?;
                    break;
                }
            }
        }
        self.end = pos;
        recovery.entries = entries.len();
        if recovery.skipped_entries > 0 {
            // Finish the compaction a crash interrupted. Re-encoded from
            // what was checked, not copied: a read that is wrong once must
            // not be written back.
            let (bytes, frames) = encode_frames(&self.log_file, &entries, 0)?;
            storage.replace(&self.log_file, &bytes)?;
            (self.frames, self.end) = (frames, bytes.len() as u64);
        }
        Ok((entries, recovery))
    }

    /// Durable at return.
    pub fn persist_state<S: Storage + ?Sized>(&mut self, storage: &mut S, hs: HardState) -> Result<(), StorageError> {
        let bytes = bincode::serde::encode_to_vec(hs, bincode::config::standard())
            .map_err(|e| StorageError::io(&self.state_file, "encode", e))?;
        write_checked(storage, &self.state_file, &bytes)
    }

    /// Stores the snapshot ending at (`index`, `term`) and drops the log
    /// entries up to `index`, durably. The entries after it stay if the
    /// log holds that very entry, and all go otherwise (another history,
    /// as [`RaftLog::restore`] decides). A snapshot older than the stored
    /// one is refused.
    pub fn save_snapshot<S: Storage + ?Sized>(&mut self, storage: &mut S, index: Index, term: Term, data: &[u8]) -> Result<(), StorageError> {
        if index < self.base.0 {
            let why = format!("snapshot at {index} is older than the stored one at {}", self.base.0);
            return Err(StorageError::io(&self.snapshot_file, "save snapshot", why));
        }
        let bytes = bincode::serde::encode_to_vec((index, term, data), bincode::config::standard())
            .map_err(|e| StorageError::io(&self.snapshot_file, "encode", e))?;
        // First the snapshot: from here on it stands for the entries up to
        // `index`, so a crash before the rewrite loses nothing.
        write_checked(storage, &self.snapshot_file, &bytes)?;
        let kept = if self.term_at(index) == Some(term) { self.read_after(storage, index)? } else { Vec::new() };
        let (log, frames) = encode_frames(&self.log_file, &kept, 0)?;
        storage.replace(&self.log_file, &log)?;
        self.base = (index, term);
        (self.frames, self.end) = (frames, log.len() as u64);
        // The replace made every kept byte durable.
        self.unsynced = false;
        Ok(())
    }

    /// The stored entries after `index`, read back and checked.
    fn read_after<S: Storage + ?Sized>(&self, storage: &mut S, index: Index) -> Result<Vec<Entry>, StorageError> {
        let first = usize::try_from(index.saturating_sub(self.base.0)).unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        for (i, &(pos, _)) in self.frames.iter().enumerate().skip(first) {
            let expected = self.base.0 + i as Index + 1;
            let fits = |e: &Entry| if e.index == expected { Ok(()) } else { Err(format!("entry {} where {expected} was expected", e.index)) };
            match read_entry(storage, &self.log_file, pos, self.end, &fits)? {
                Ok((entry, _)) => entries.push(entry),
                Err(reason) => return Err(StorageError::io(&self.log_file, "read", format!("entry {expected} at byte {pos}: {reason}"))),
            }
        }
        Ok(entries)
    }

    /// Appends entries at the end; their indexes must follow the last
    /// stored one. Not durable until [`RaftStore::sync`].
    pub fn append<S: Storage + ?Sized>(&mut self, storage: &mut S, entries: &[Entry]) -> Result<(), StorageError> {
        let (mut index, mut term) = (self.last_index(), self.last_term());
        for e in entries {
            // Recovery stops at anything it would not accept, so storing
            // it would lose it (and all after it) at the next restart —
            // after it was acknowledged. Refuse it now instead.
            if e.index != index + 1 || e.term < term {
                let why = format!("entry {} (term {}) does not follow entry {index} (term {term})", e.index, e.term);
                return Err(StorageError::io(&self.log_file, "append", why));
            }
            (index, term) = (e.index, e.term);
        }
        let (buf, frames) = encode_frames(&self.log_file, entries, self.end)?;
        if buf.is_empty() {
            return Ok(());
        }
        // Even a failed append may have written part of the buffer.
        self.unsynced = true;
        let pos = match storage.append(&self.log_file, &buf) {
            Ok(pos) => pos,
            Err(e) => {
                // Best effort: leftovers are also caught by the check below
                // at the next append.
                let _ = storage.truncate(&self.log_file, self.end);
                return Err(e);
            }
        };
        if pos != self.end {
            // The file holds bytes we do not account for (a failed append
            // whose cleanup failed too): never build frames on them.
            storage.truncate(&self.log_file, self.end)?;
            let why = format!("the log was {pos} bytes long where {} was expected", self.end);
            return Err(StorageError::io(&self.log_file, "append", why));
        }
        self.frames.extend(frames);
        self.end += buf.len() as u64;
        Ok(())
    }

    /// Removes every entry with index >= `from`, durably (never the
    /// snapshot).
    pub fn truncate<S: Storage + ?Sized>(&mut self, storage: &mut S, from: Index) -> Result<(), StorageError> {
        let keep = usize::try_from(from.saturating_sub(self.base.0 + 1)).unwrap_or(usize::MAX);
        let Some(&(pos, _)) = self.frames.get(keep) else { return Ok(()) };
        storage.truncate(&self.log_file, pos)?;
        self.frames.truncate(keep);
        self.end = pos;
        Ok(())
    }

    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    pub fn sync<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<(), StorageError> {
        if self.unsynced {
            storage.sync(&self.log_file)?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn last_index(&self) -> Index {
        self.base.0 + self.frames.len() as Index
    }

    /// The stored snapshot's last index (0 without one).
    pub fn snapshot_index(&self) -> Index {
        self.base.0
    }

    fn last_term(&self) -> Term {
        self.frames.last().map_or(self.base.1, |&(_, term)| term)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.base.0 {
            return Some(self.base.1);
        }
        let i = usize::try_from(index.checked_sub(self.base.0 + 1)?).ok()?;
        self.frames.get(i).map(|&(_, term)| term)
    }
}

/// A small file written with [`write_checked`], decoded; `None` if it does
/// not exist. Damage refuses the open rather than defaulting.
fn read_decoded<S: Storage + ?Sized, T: DeserializeOwned>(storage: &mut S, file: &str) -> Result<Option<T>, RaftStoreError> {
    let damaged = |reason: String| RaftStoreError::DamagedState { file: file.to_string(), reason };
    let bytes = match read_checked(storage, file) {
        Ok(None) => return Ok(None),
        Ok(Some(bytes)) => bytes,
        Err(CheckedError::Storage(e)) => return Err(e.into()),
        Err(CheckedError::Corrupt { .. }) => return Err(damaged("checksum mismatch on every read".into())),
    };
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).map_err(|e| damaged(e.to_string()))?;
    if used != bytes.len() {
        return Err(damaged(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(Some(value))
}

/// Whether `e` may follow `prev` (the last frame read, `None` at the head
/// of the file) in a log whose snapshot ends at `base`. The head may be an
/// entry the snapshot covers (left by a crash before the rewrite), but no
/// gap may open before the entry after the snapshot.
fn continues(prev: Option<(Index, Term)>, base: (Index, Term), e: &Entry) -> Result<(), String> {
    match prev {
        None if e.index == 0 || e.index > base.0 + 1 => {
            return Err(format!("entry {} where at most {} was expected", e.index, base.0 + 1));
        }
        Some((index, _)) if e.index != index + 1 => return Err(format!("entry {} where {} was expected", e.index, index + 1)),
        Some((_, term)) if e.term < term => return Err(format!("entry {} has term {} after term {term}", e.index, e.term)),
        _ => {}
    }
    if e.index > base.0 && e.term < base.1 {
        return Err(format!("entry {} has term {} after the snapshot's term {}", e.index, e.term, base.1));
    }
    Ok(())
}

/// The frames of `entries` and where each starts, counting from `start`.
fn encode_frames(file: &str, entries: &[Entry], start: u64) -> Result<(Vec<u8>, Frames), StorageError> {
    let mut buf = Vec::new();
    let mut frames = Vec::with_capacity(entries.len());
    for e in entries {
        let payload =
            bincode::serde::encode_to_vec(e, bincode::config::standard()).map_err(|err| StorageError::io(file, "encode", err))?;
        if payload.len() > MAX_FRAME {
            let why = format!("entry {} encodes to {} bytes, over the {MAX_FRAME} limit", e.index, payload.len());
            return Err(StorageError::io(file, "append", why));
        }
        frames.push((start + buf.len() as u64, e.term));
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        buf.extend_from_slice(&payload);
    }
    Ok((buf, frames))
}

/// The entry framed at `pos` and its frame length, if the frame is whole,
/// intact and `fits` accepts it — re-read a few times before giving up —
/// otherwise why not.
fn read_entry<S: Storage + ?Sized>(
    storage: &mut S,
    file: &str,
    pos: u64,
    file_len: u64,
    fits: &dyn Fn(&Entry) -> Result<(), String>,
) -> Result<Result<(Entry, u64), String>, StorageError> {
    let mut frame = Err(String::new());
    for _ in 0..READ_ATTEMPTS {
        frame = read_frame(storage, file, pos, file_len)?.and_then(|(entry, len)| fits(&entry).map(|()| (entry, len)));
        if frame.is_ok() {
            break;
        }
    }
    Ok(frame)
}

/// The entry framed at `pos` and its frame length, if the frame is whole
/// and intact; otherwise why not.
fn read_frame<S: Storage + ?Sized>(
    storage: &mut S,
    file: &str,
    pos: u64,
    file_len: u64,
) -> Result<Result<(Entry, u64), String>, StorageError> {
    let header = storage.read(file, pos, HEADER_LEN)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header[..] else { return Ok(Err("torn frame header".into())) };
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_be_bytes([c0, c1, c2, c3]);
    if len > MAX_FRAME {
        return Ok(Err(format!("frame length {len} over the {MAX_FRAME} limit")));
    }
    let frame_len = (HEADER_LEN + len) as u64;
    if pos + frame_len > file_len {
        return Ok(Err(format!("torn frame ({} of {frame_len} bytes)", file_len - pos)));
    }
    let payload = storage.read(file, pos + HEADER_LEN as u64, len)?;
    if payload.len() != len {
        return Ok(Err("torn frame".into()));
    }
    if crc32c::crc32c(&payload) != crc {
        return Ok(Err("checksum mismatch".into()));
    }
    let (entry, used): (Entry, usize) = match bincode::serde::decode_from_slice(&payload, bincode::config::standard()) {
        Ok(decoded) => decoded,
        Err(e) => return Ok(Err(format!("undecodable entry: {e}"))),
    };
    if used != len {
        return Ok(Err(format!("{} trailing bytes after the entry", len - used)));
    }
    Ok(Ok((entry, frame_len)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::MemStorage;

    const DIR: &str = "meta/raft";
    const LOG: &str = "meta/raft/log";

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry {
        Entry { term, index, data: data.to_vec() }
    }

    fn frame_len(e: &Entry) -> u64 {
        (HEADER_LEN + bincode::serde::encode_to_vec(e, bincode::config::standard()).unwrap().len()) as u64
    }

    /// Opens, leaving out the snapshot (see `open_snap`).
    fn open(s: &mut MemStorage) -> (RaftStore, HardState, RaftLog, StoreRecovery) {
        let (store, hard, log, _, rec) = RaftStore::open(s, DIR).unwrap();
        (store, hard, log, rec)
    }

    /// A store holding `entries`, synced.
    fn store_with(entries: &[Entry]) -> MemStorage {
        let mut s = MemStorage::new();
        let (mut store, ..) = open(&mut s);
        store.append(&mut s, entries).unwrap();
        store.sync(&mut s).unwrap();
        s
    }

    #[test]
    fn state_and_entries_survive_reopen() {
        let mut s = MemStorage::new();
        let (mut store, hard, log, rec) = open(&mut s);
        assert_eq!((hard, log.last_index(), rec), (HardState::default(), 0, StoreRecovery::default()));
        let hs = HardState { term: 3, voted_for: Some(2) };
        store.persist_state(&mut s, hs).unwrap();
        let entries = [entry(1, 1, b"a"), entry(2, 3, b""), entry(3, 3, &[7; 300])];
        store.append(&mut s, &entries[..1]).unwrap();
        store.append(&mut s, &entries[1..]).unwrap();
        assert!(store.needs_sync());
        store.sync(&mut s).unwrap();
        assert!(!store.needs_sync());

        let (store, hard, log, rec) = open(&mut s);
        assert_eq!(hard, hs);
        assert_eq!(log.all(), &entries[..]);
        assert_eq!(store.last_index(), 3);
        assert_eq!(rec, StoreRecovery { entries: 3, ..StoreRecovery::default() });
    }

    #[test]
    fn truncate_then_append_then_reopen() {
        let mut s = store_with(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")]);
        let (mut store, ..) = open(&mut s);
        store.truncate(&mut s, 2).unwrap();
        assert_eq!(store.last_index(), 1);
        // The cut is at a frame boundary, so the next frame lands right.
        store.append(&mut s, &[entry(2, 4, b"x")]).unwrap();
        store.sync(&mut s).unwrap();
        let (_, _, log, rec) = open(&mut s);
        assert_eq!(log.all(), &[entry(1, 1, b"a"), entry(2, 4, b"x")]);
        assert_eq!(rec.reason, None);
        // Truncating past the end does nothing; from 0 or 1 empties.
        let (mut store, ..) = open(&mut s);
        store.truncate(&mut s, 9).unwrap();
        assert_eq!(store.last_index(), 2);
        store.truncate(&mut s, 0).unwrap();
        assert_eq!(store.last_index(), 0);
        assert_eq!(s.file_mut(LOG).unwrap().len(), 0);
    }

    #[test]
    fn torn_last_frame_recovers_the_previous_entries() {
        let entries = [entry(1, 1, b"one"), entry(2, 1, b"two")];
        let mut s = store_with(&entries);
        let full = s.file_mut(LOG).unwrap().len();
        s.file_mut(LOG).unwrap().truncate(full - 3);
        let (mut store, _, log, rec) = open(&mut s);
        assert_eq!(log.all(), &entries[..1]);
        assert_eq!(rec.entries, 1);
        assert_eq!(rec.truncated_bytes, frame_len(&entries[1]) - 3);
        assert!(rec.reason.as_deref().unwrap().contains("torn frame"), "{rec:?}");
        // The cut is on disk, and appending after it works.
        assert_eq!(s.file_mut(LOG).unwrap().len() as u64, frame_len(&entries[0]));
        store.append(&mut s, &[entry(2, 2, b"new")]).unwrap();
        let (_, _, log, _) = open(&mut s);
        assert_eq!(log.last_index(), 2);
    }

    #[test]
    fn flipped_bit_in_a_middle_frame_drops_it_and_everything_after() {
        let entries = [entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"three")];
        let mut s = store_with(&entries);
        let full = s.file_mut(LOG).unwrap().len() as u64;
        let second = frame_len(&entries[0]);
        s.file_mut(LOG).unwrap()[second as usize + HEADER_LEN + 2] ^= 0x10;
        let (_, _, log, rec) = open(&mut s);
        assert_eq!(log.all(), &entries[..1]);
        assert_eq!(rec.truncated_bytes, full - second);
        assert!(rec.reason.as_deref().unwrap().contains("checksum mismatch"), "{rec:?}");
    }

    #[test]
    fn a_wild_length_field_is_a_cut_not_an_allocation() {
        let mut s = store_with(&[entry(1, 1, b"one")]);
        s.file_mut(LOG).unwrap()[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let (_, _, log, rec) = open(&mut s);
        assert_eq!(log.last_index(), 0);
        assert!(rec.reason.as_deref().unwrap().contains("limit"), "{rec:?}");
    }

    #[test]
    fn damaged_state_refuses_to_open() {
        let mut s = MemStorage::new();
        let (mut store, ..) = open(&mut s);
        store.persist_state(&mut s, HardState { term: 5, voted_for: Some(1) }).unwrap();
        *s.file_mut("meta/raft/state").unwrap().last_mut().unwrap() ^= 1;
        assert!(matches!(RaftStore::open(&mut s, DIR), Err(RaftStoreError::DamagedState { .. })));
    }

    #[test]
    fn append_that_does_not_follow_is_an_error() {
        let mut s = store_with(&[entry(1, 2, b"a")]);
        let (mut store, ..) = open(&mut s);
        let before = s.file_mut(LOG).unwrap().clone();
        for bad in [
            vec![entry(3, 2, b"gap")],
            vec![entry(1, 2, b"overlap")],
            vec![entry(2, 1, b"older term")],
            vec![entry(2, 2, b"ok"), entry(4, 2, b"gap inside")],
        ] {
            assert!(matches!(store.append(&mut s, &bad), Err(StorageError::Io { .. })), "{bad:?}");
            assert_eq!(store.last_index(), 1);
            // Nothing was written, not even the valid head of a batch.
            assert_eq!(s.file_mut(LOG).unwrap(), &before);
        }
    }

    /// Returns a flipped bit from the first `flips` reads.
    struct FlakyReads {
        inner: MemStorage,
        flips: usize,
    }

    impl Storage for FlakyReads {
        fn append(&mut self, f: &str, d: &[u8]) -> Result<u64, StorageError> {
            self.inner.append(f, d)
        }
        fn read(&mut self, f: &str, pos: u64, len: usize) -> Result<Vec<u8>, StorageError> {
            let mut bytes = self.inner.read(f, pos, len)?;
            if self.flips > 0 && !bytes.is_empty() {
                self.flips -= 1;
                *bytes.last_mut().unwrap() ^= 1;
            }
            Ok(bytes)
        }
        fn len(&mut self, f: &str) -> Result<u64, StorageError> {
            self.inner.len(f)
        }
        fn sync(&mut self, f: &str) -> Result<(), StorageError> {
            self.inner.sync(f)
        }
        fn truncate(&mut self, f: &str, len: u64) -> Result<(), StorageError> {
            self.inner.truncate(f, len)
        }
        fn list(&mut self, p: &str) -> Result<Vec<String>, StorageError> {
            self.inner.list(p)
        }
        fn remove(&mut self, f: &str) -> Result<(), StorageError> {
            self.inner.remove(f)
        }
        fn replace(&mut self, f: &str, d: &[u8]) -> Result<(), StorageError> {
            self.inner.replace(f, d)
        }
    }

    #[test]
    fn a_read_that_is_wrong_once_does_not_cut_the_log() {
        let entries = [entry(1, 1, b"one"), entry(2, 1, b"two")];
        let mut s = FlakyReads { inner: store_with(&entries), flips: 2 };
        let (_, _, log, _, rec) = RaftStore::open(&mut s, DIR).unwrap();
        assert_eq!(log.all(), &entries[..]);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// `count` entries, the first `term_step` terms after the last.
        Append { count: usize, term_step: u64, data: Vec<u8> },
        Truncate(Index),
        State(HardState),
        Reopen,
        /// A crash that tears this many bytes (at most the file) off the end.
        Tear(u64),
        /// A snapshot `at` entries past the current one (at most the log
        /// end); `crash`: the log rewrite is lost, then the store reopens.
        Snapshot { at: u64, crash: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..4usize, 0..3u64, prop::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(count, term_step, data)| Op::Append { count, term_step, data }),
            1 => (0..12u64).prop_map(Op::Truncate),
            1 => (0..9u64, prop::option::of(1..4u64)).prop_map(|(term, voted_for)| Op::State(HardState { term, voted_for })),
            1 => Just(Op::Reopen),
            1 => (1..40u64).prop_map(Op::Tear),
            1 => (0..6u64, any::<bool>()).prop_map(|(at, crash)| Op::Snapshot { at, crash }),
        ]
    }

    /// The store as a model: a snapshot base and the entries after it.
    #[derive(Default)]
    struct Model {
        base: (Index, Term),
        entries: Vec<Entry>,
    }

    impl Model {
        fn last_index(&self) -> Index {
            self.base.0 + self.entries.len() as Index
        }

        fn term_at(&self, index: Index) -> Term {
            if index == self.base.0 { self.base.1 } else { self.entries[(index - self.base.0 - 1) as usize].term }
        }
    }

    proptest! {
        #[test]
        fn matches_a_model(ops in prop::collection::vec(op(), 1..40)) {
            let mut s = MemStorage::new();
            let (mut store, ..) = open(&mut s);
            let mut model = Model::default();
            let mut model_hs = HardState::default();
            for op in ops {
                match op {
                    Op::Append { count, term_step, data } => {
                        let term = model.entries.last().map_or(model.base.1.max(1), |e| e.term) + term_step;
                        let new: Vec<Entry> =
                            (1..=count as Index).map(|i| entry(model.last_index() + i, term, &data)).collect();
                        store.append(&mut s, &new).unwrap();
                        model.entries.extend(new);
                    }
                    Op::Truncate(from) => {
                        store.truncate(&mut s, from).unwrap();
                        model.entries.truncate(from.saturating_sub(model.base.0 + 1) as usize);
                    }
                    Op::State(hs) => {
                        store.persist_state(&mut s, hs).unwrap();
                        model_hs = hs;
                    }
                    Op::Snapshot { at, crash } => {
                        let index = model.base.0 + at.min(model.entries.len() as Index);
                        let term = model.term_at(index);
                        let old_log = s.file_mut(LOG).unwrap().clone();
                        store.save_snapshot(&mut s, index, term, &index.to_be_bytes()).unwrap();
                        model.entries.drain(..(index - model.base.0) as usize);
                        model.base = (index, term);
                        if crash {
                            *s.file_mut(LOG).unwrap() = old_log;
                            let (reopened, _, log, _) = open(&mut s);
                            store = reopened;
                            prop_assert_eq!(log.all(), &model.entries[..]);
                        }
                    }
                    Op::Reopen | Op::Tear(_) => {
                        if let Op::Tear(k) = op {
                            let file = s.file_mut(LOG).unwrap();
                            let len = file.len() as u64 - k.min(file.len() as u64);
                            file.truncate(len as usize);
                            // The model keeps the entries whose frames fit whole.
                            let mut end = 0;
                            model.entries.retain(|e| { end += frame_len(e); end <= len });
                        }
                        let (reopened, hs, log, snapshot, rec) = RaftStore::open(&mut s, DIR).unwrap();
                        store = reopened;
                        prop_assert_eq!(hs, model_hs);
                        prop_assert_eq!(log.all(), &model.entries[..]);
                        prop_assert_eq!((log.snapshot_index(), log.snapshot_term()), model.base);
                        prop_assert_eq!(snapshot.map(|s| (s.index, s.term)).unwrap_or_default(), model.base);
                        prop_assert_eq!(rec.entries, model.entries.len());
                    }
                }
                prop_assert_eq!(store.last_index(), model.last_index());
            }
            let (_, hs, log, _) = open(&mut s);
            prop_assert_eq!(hs, model_hs);
            prop_assert_eq!(log.all(), &model.entries[..]);
            prop_assert_eq!(log.last_index(), model.last_index());
        }
    }

    fn open_snap(s: &mut MemStorage) -> (RaftStore, RaftLog, Option<Snapshot>, StoreRecovery) {
        let (store, _, log, snapshot, rec) = RaftStore::open(s, DIR).unwrap();
        (store, log, snapshot, rec)
    }

    const SNAP: &str = "meta/raft/snapshot";

    #[test]
    fn snapshot_survives_reopen_and_the_log_continues_after_it() {
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1 + i / 3, b"x")).collect();
        let mut s = store_with(&entries);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 3, 2, b"state@3").unwrap();
        assert_eq!((store.snapshot_index(), store.last_index()), (3, 5));
        // The log file holds only what follows the snapshot.
        assert_eq!(s.file_mut(LOG).unwrap().len() as u64, frame_len(&entries[3]) + frame_len(&entries[4]));
        let (mut store, log, snapshot, rec) = open_snap(&mut s);
        assert_eq!(snapshot, Some(Snapshot { index: 3, term: 2, data: b"state@3".to_vec() }));
        assert_eq!((log.snapshot_index(), log.snapshot_term(), log.all()), (3, 2, &entries[3..]));
        assert_eq!(rec, StoreRecovery { entries: 2, ..StoreRecovery::default() });
        // Appends and truncations count from the snapshot on.
        store.truncate(&mut s, 5).unwrap();
        store.append(&mut s, &[entry(5, 4, b"y"), entry(6, 4, b"z")]).unwrap();
        assert!(store.append(&mut s, &[entry(3, 4, b"behind")]).is_err());
        store.sync(&mut s).unwrap();
        let (_, log, _, _) = open_snap(&mut s);
        assert_eq!(log.all().iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(4, 2), (5, 4), (6, 4)]);
    }

    #[test]
    fn a_crash_between_the_snapshot_and_the_log_rewrite_recovers() {
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, &[i as u8])).collect();
        let mut s = store_with(&entries);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 2, 1, b"state@2").unwrap();
        // The second snapshot's file is written, the log rewrite is lost:
        // the log still starts at entry 3.
        let old_log = s.file_mut(LOG).unwrap().clone();
        store.save_snapshot(&mut s, 4, 1, b"state@4").unwrap();
        *s.file_mut(LOG).unwrap() = old_log;
        let (mut store, log, snapshot, rec) = open_snap(&mut s);
        assert_eq!(snapshot.map(|s| s.data), Some(b"state@4".to_vec()));
        assert_eq!(log.all(), &entries[4..]);
        assert_eq!((rec.skipped_entries, rec.entries, rec.reason), (2, 2, None));
        // The open finished the rewrite, and the store appends in place.
        assert_eq!(s.file_mut(LOG).unwrap().len() as u64, frame_len(&entries[4]) + frame_len(&entries[5]));
        store.append(&mut s, &[entry(7, 2, b"7")]).unwrap();
        let (_, log, _, rec) = open_snap(&mut s);
        assert_eq!((log.first_index(), log.last_index(), rec.skipped_entries), (5, 7, 0));
    }

    #[test]
    fn a_snapshot_past_the_log_or_of_another_history_empties_it() {
        // A follower installing a leader's snapshot beyond its log.
        let mut s = store_with(&[entry(1, 1, b"a"), entry(2, 1, b"b")]);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 9, 3, b"leader's").unwrap();
        assert_eq!(store.last_index(), 9);
        store.append(&mut s, &[entry(10, 3, b"next")]).unwrap();
        let (_, log, ..) = open_snap(&mut s);
        assert_eq!((log.snapshot_index(), log.first_index(), log.last_index(), log.last_term()), (9, 10, 10, 3));
        // The entry at the snapshot's index has another term: what follows
        // it is another history and goes too.
        let mut s = store_with(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")]);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 2, 3, b"other").unwrap();
        assert_eq!(store.last_index(), 2);
        let (_, log, ..) = open_snap(&mut s);
        assert_eq!((log.last_index(), log.last_term(), log.all().len()), (2, 3, 0));
    }

    #[test]
    fn an_older_snapshot_is_refused() {
        let mut s = store_with(&[entry(1, 1, b"a"), entry(2, 1, b"b")]);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 2, 1, b"two").unwrap();
        assert!(matches!(store.save_snapshot(&mut s, 1, 1, b"one"), Err(StorageError::Io { .. })));
        let (_, _, snapshot, _) = open_snap(&mut s);
        assert_eq!(snapshot.map(|s| s.index), Some(2));
    }

    #[test]
    fn a_damaged_snapshot_refuses_to_open() {
        let mut s = store_with(&[entry(1, 1, b"a")]);
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 1, 1, b"state").unwrap();
        *s.file_mut(SNAP).unwrap().last_mut().unwrap() ^= 1;
        assert!(matches!(RaftStore::open(&mut s, DIR), Err(RaftStoreError::DamagedState { .. })));
    }

    #[test]
    fn a_gap_after_the_snapshot_cuts_the_log() {
        // Entries 4 and 5 behind a snapshot at 2: entry 3 is missing.
        let mut s = store_with(&(1..=5).map(|i| entry(i, 1, b"e")).collect::<Vec<_>>());
        let (mut store, ..) = open(&mut s);
        store.save_snapshot(&mut s, 3, 1, b"at 3").unwrap();
        write_checked(&mut s, SNAP, &bincode::serde::encode_to_vec((2u64, 1u64, b"at 2".to_vec()), bincode::config::standard()).unwrap())
            .unwrap();
        let (_, log, _, rec) = open_snap(&mut s);
        assert_eq!((log.snapshot_index(), log.last_index()), (2, 2));
        assert!(rec.reason.as_deref().unwrap().contains("at most 3"), "{rec:?}");
    }
}
