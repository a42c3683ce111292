//! The durable home of one Raft node: its hard state and its log, over the
//! [`Storage`] trait, so a controller node survives restarts. The caller
//! executes `RaftNode`'s `PersistState`, `Append` and `Truncate` effects
//! here (syncing before any `Send`), and reopens the store at start.
//!
//! Two files under `dir`:
//! - `state`: the [`HardState`] behind a CRC, replaced atomically. Damage
//!   there refuses the open rather than defaulting: a node that forgot its
//!   vote could vote twice in one term and help elect two leaders.
//! - `log`: one frame per entry, `[u32 BE payload length][u32 BE CRC-32C of
//!   payload][bincode of Entry]`. Recovery keeps the longest valid prefix
//!   and cuts the rest. For a torn tail that is exactly right: the caller
//!   syncs before any `Send`, so bytes a crash tore were never promised.

use super::{Entry, HardState, Index, RaftLog, Term};
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
    pub entries: usize,
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

#[derive(Debug)]
pub struct RaftStore {
    log_file: String,
    state_file: String,
    /// Where each entry's frame starts, and its term: entry `i` is at
    /// `frames[i - 1]`, so a truncation finds its cut without a scan.
    frames: Vec<(u64, Term)>,
    /// End of the last whole frame: where the next append must land.
    end: u64,
    unsynced: bool,
}

impl RaftStore {
    /// Opens (or creates) the store under `dir` (e.g. "meta/raft"),
    /// returning the hard state and the log found.
    pub fn open<S: Storage + ?Sized>(
        storage: &mut S,
        dir: &str,
    ) -> Result<(RaftStore, HardState, RaftLog, StoreRecovery), RaftStoreError> {
        let state_file = format!("{dir}/state");
        let hard = read_state(storage, &state_file)?;
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
        let mut store = RaftStore { log_file, state_file, frames: Vec::new(), end: 0, unsynced: false };
        let mut entries: Vec<Entry> = Vec::new();
        let mut recovery = StoreRecovery::default();
        while store.end < file_len {
            let (index, min_term) = (store.last_index() + 1, store.last_term());
            let mut frame = read_frame(storage, &store.log_file, store.end, file_len, index, min_term)?;
            for _ in 1..READ_ATTEMPTS {
                if frame.is_ok() {
                    break;
                }
                frame = read_frame(storage, &store.log_file, store.end, file_len, index, min_term)?;
            }
            match frame {
                Ok((entry, len)) => {
                    store.frames.push((store.end, entry.term));
                    store.end += len;
                    entries.push(entry);
                }
                Err(reason) => {
                    recovery.reason = Some(format!("{} at byte {}: {reason}", store.log_file, store.end));
                    recovery.truncated_bytes = file_len - store.end;
                    storage.truncate(&store.log_file, store.end)?;
                    break;
                }
            }
        }
        // What recovery read may be only in the page cache (the process
        // died, the machine did not): make it durable before a vote or an
        // acknowledgement is built on it.
        storage.sync(&store.log_file)?;
        recovery.entries = entries.len();
        // Cannot fail (the scan checked the same rules), but an error beats
        // a panic if the two ever drift apart.
        let log = RaftLog::from_entries(entries)
            .map_err(|reason| RaftStoreError::DamagedState { file: store.log_file.clone(), reason })?;
        Ok((store, hard, log, recovery))
    }

    /// Durable at return.
    pub fn persist_state<S: Storage + ?Sized>(&mut self, storage: &mut S, hs: HardState) -> Result<(), StorageError> {
        let bytes = bincode::serde::encode_to_vec(hs, bincode::config::standard())
            .map_err(|e| StorageError::io(&self.state_file, "encode", e))?;
        write_checked(storage, &self.state_file, &bytes)
    }

    /// Appends entries at the end; their indexes must follow the last
    /// stored one. Not durable until [`RaftStore::sync`].
    pub fn append<S: Storage + ?Sized>(&mut self, storage: &mut S, entries: &[Entry]) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        let mut frames = Vec::with_capacity(entries.len());
        let (mut index, mut term) = (self.last_index(), self.last_term());
        for e in entries {
            // Recovery stops at anything it would not accept, so storing
            // it would lose it (and all after it) at the next restart —
            // after it was acknowledged. Refuse it now instead.
            if e.index != index + 1 || e.term < term {
                let why = format!("entry {} (term {}) does not follow entry {index} (term {term})", e.index, e.term);
                return Err(StorageError::io(&self.log_file, "append", why));
            }
            let payload = bincode::serde::encode_to_vec(e, bincode::config::standard())
                .map_err(|err| StorageError::io(&self.log_file, "encode", err))?;
            if payload.len() > MAX_FRAME {
                let why = format!("entry {} encodes to {} bytes, over the {MAX_FRAME} limit", e.index, payload.len());
                return Err(StorageError::io(&self.log_file, "append", why));
            }
            frames.push((self.end + buf.len() as u64, e.term));
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
            buf.extend_from_slice(&payload);
            (index, term) = (e.index, e.term);
        }
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

    /// Removes every entry with index >= `from`, durably.
    pub fn truncate<S: Storage + ?Sized>(&mut self, storage: &mut S, from: Index) -> Result<(), StorageError> {
        let keep = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
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
        self.frames.len() as Index
    }

    fn last_term(&self) -> Term {
        self.frames.last().map_or(0, |&(_, term)| term)
    }
}

fn read_state<S: Storage + ?Sized>(storage: &mut S, file: &str) -> Result<HardState, RaftStoreError> {
    let damaged = |reason: String| RaftStoreError::DamagedState { file: file.to_string(), reason };
    let bytes = match read_checked(storage, file) {
        Ok(None) => return Ok(HardState::default()),
        Ok(Some(bytes)) => bytes,
        Err(CheckedError::Storage(e)) => return Err(e.into()),
        Err(CheckedError::Corrupt { .. }) => return Err(damaged("checksum mismatch on every read".into())),
    };
    let (hard, used): (HardState, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).map_err(|e| damaged(e.to_string()))?;
    if used != bytes.len() {
        return Err(damaged(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(hard)
}

/// The entry framed at `pos` and its frame length, if the frame is whole,
/// intact, and continues the log (index `index`, term at least
/// `min_term`); otherwise why not.
fn read_frame<S: Storage + ?Sized>(
    storage: &mut S,
    file: &str,
    pos: u64,
    file_len: u64,
    index: Index,
    min_term: Term,
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
    if entry.index != index {
        return Ok(Err(format!("entry {} where {index} was expected", entry.index)));
    }
    if entry.term < min_term {
        return Ok(Err(format!("entry {index} has term {} after term {min_term}", entry.term)));
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

    fn open(s: &mut MemStorage) -> (RaftStore, HardState, RaftLog, StoreRecovery) {
        RaftStore::open(s, DIR).unwrap()
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
        assert_eq!(rec, StoreRecovery { entries: 3, truncated_bytes: 0, reason: None });
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
        let (_, _, log, rec) = RaftStore::open(&mut s, DIR).unwrap();
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..4usize, 0..3u64, prop::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(count, term_step, data)| Op::Append { count, term_step, data }),
            1 => (0..12u64).prop_map(Op::Truncate),
            1 => (0..9u64, prop::option::of(1..4u64)).prop_map(|(term, voted_for)| Op::State(HardState { term, voted_for })),
            1 => Just(Op::Reopen),
            1 => (1..40u64).prop_map(Op::Tear),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_vec_model(ops in prop::collection::vec(op(), 1..40)) {
            let mut s = MemStorage::new();
            let (mut store, ..) = open(&mut s);
            let mut model: Vec<Entry> = Vec::new();
            let mut model_hs = HardState::default();
            for op in ops {
                match op {
                    Op::Append { count, term_step, data } => {
                        let term = model.last().map_or(1, |e| e.term) + term_step;
                        let new: Vec<Entry> =
                            (1..=count as Index).map(|i| entry(model.len() as Index + i, term, &data)).collect();
                        store.append(&mut s, &new).unwrap();
                        model.extend(new);
                    }
                    Op::Truncate(from) => {
                        store.truncate(&mut s, from).unwrap();
                        model.truncate(from.saturating_sub(1) as usize);
                    }
                    Op::State(hs) => {
                        store.persist_state(&mut s, hs).unwrap();
                        model_hs = hs;
                    }
                    Op::Reopen | Op::Tear(_) => {
                        if let Op::Tear(k) = op {
                            let file = s.file_mut(LOG).unwrap();
                            let len = file.len() as u64 - k.min(file.len() as u64);
                            file.truncate(len as usize);
                            // The model keeps the entries whose frames fit whole.
                            let mut end = 0;
                            model.retain(|e| { end += frame_len(e); end <= len });
                        }
                        let (reopened, hs, log, rec) = open(&mut s);
                        store = reopened;
                        prop_assert_eq!(hs, model_hs);
                        prop_assert_eq!(log.all(), &model[..]);
                        prop_assert_eq!(rec.entries, model.len());
                    }
                }
                prop_assert_eq!(store.last_index(), model.len() as Index);
            }
            let (_, hs, log, _) = open(&mut s);
            prop_assert_eq!(hs, model_hs);
            prop_assert_eq!(log.all(), &model[..]);
        }
    }
}
