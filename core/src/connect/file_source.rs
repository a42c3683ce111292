//! The file source: a file, or a folder of files, tailed into a topic.
//!
//! The position is a byte offset per file, files known by name and by
//! identity (the inode on Unix), so that:
//!
//! - a file that grew is read on from its offset;
//! - a file shorter than its offset was truncated (copy-truncate
//!   rotation): it is read again from the start, with a warning;
//! - a file whose name now holds another identity was replaced (rotated
//!   by rename): the new one is read from the start;
//! - a known identity under a new name (`app.log` renamed `app.log.1`)
//!   keeps its offset, so its unread tail is still read once.
//!
//! Each read takes complete lines of one file only: the first file, in
//! name order, that has any. The chunk's file and start are kept in the
//! position (`last`), so a re-read after a crash reads that same byte
//! range again whatever the other files did meanwhile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::api::{ConnectError, Skipped, Source, SourceRead, SourceRecord};
use super::config::LineFormat;
use super::lines::cut_lines;
use crate::Millis;

/// Bytes read from a file at a time; a line longer than this is an error.
pub const WINDOW: usize = 1 << 20;

/// A file as the folder lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the source's folder.
    pub name: String,
    /// Stable while the file exists, also across renames (the inode).
    pub id: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub id: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilePosition {
    pub files: BTreeMap<String, FileState>,
    /// The file and start offset of the last chunk read.
    pub last: Option<(String, u64)>,
}

/// What the file source needs from the outside: the adapter lists the
/// folder and reads bytes; tests give it files in memory.
pub trait FileSystem: Send {
    /// The files, with their current lengths; a missing path is an error.
    fn list(&mut self) -> Result<Vec<FileEntry>, ConnectError>;
    /// Up to `len` bytes of `name` from `offset` (fewer at its end).
    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ConnectError>;
    /// How a file is named in messages (its full path).
    fn display(&self, name: &str) -> String;
}

/// What one read of a file gives: its records, the lines skipped, and the
/// offset after them.
type Cut = (Vec<SourceRecord>, Vec<Skipped>, u64);

/// The file source over a [`FileSystem`].
pub struct FileTail<F> {
    pub files: F,
    pub format: LineFormat,
}

impl<F: FileSystem> FileTail<F> {
    pub fn new(files: F, format: LineFormat) -> FileTail<F> {
        FileTail { files, format }
    }

    /// `from` brought up to date with the listing: truncated, replaced and
    /// renamed files handled as the module comment says; files gone are
    /// forgotten. Also answers what an operator should be told.
    pub fn reconcile(&self, from: &FilePosition, listing: &[FileEntry]) -> (FilePosition, Vec<String>) {
        let by_id: BTreeMap<u64, (&String, &FileState)> = from.files.iter().map(|(n, s)| (s.id, (n, s))).collect();
        let mut warnings = Vec::new();
        let mut files = BTreeMap::new();
        for e in listing {
            let offset = match from.files.get(&e.name) {
                Some(s) if s.id == e.id => s.offset,
                known => match by_id.get(&e.id) {
                    Some((old, s)) if !listing.iter().any(|l| &l.name == *old && l.id == e.id) => s.offset,
                    _ => {
                        if known.is_some() {
                            warnings.push(format!("{} was replaced by a new file (rotated): reading it from the start", self.files.display(&e.name)));
                        }
                        0
                    }
                },
            };
            let offset = if e.len < offset {
                warnings.push(format!(
                    "{} is shorter ({} bytes) than the position read ({offset}): it was truncated; reading it again from the start",
                    self.files.display(&e.name),
                    e.len
                ));
                0
            } else {
                offset
            };
            files.insert(e.name.clone(), FileState { id: e.id, offset });
        }
        (FilePosition { files, last: from.last.clone() }, warnings)
    }

    /// Cuts up to `max` records from `file` at `offset` (up to `end`, if
    /// given); `None` when it has no complete line yet.
    fn cut(&mut self, file: &str, offset: u64, end: Option<u64>, max: usize) -> Result<Option<Cut>, ConnectError> {
        let len = end.map_or(WINDOW, |e| (e.saturating_sub(offset) as usize).min(WINDOW));
        let bytes = self.files.read_at(file, offset, len)?;
        let cut = cut_lines(&bytes, offset, self.format, max, WINDOW - 1);
        if let Some(at) = cut.too_long
            && cut.consumed == 0
        {
            return Err(ConnectError::LineTooLong { file: self.files.display(file), offset: at, limit: WINDOW - 1 });
        }
        if cut.consumed == 0 {
            return Ok(None);
        }
        let skipped = cut.skipped.into_iter().map(|(at, reason)| Skipped { location: format!("{} at byte {at}", self.files.display(file)), reason }).collect();
        let records = cut.records.into_iter().map(|(_, value)| SourceRecord { key: None, value }).collect();
        Ok(Some((records, skipped, offset + cut.consumed as u64)))
    }
}

impl<F: FileSystem> Source for FileTail<F> {
    type Position = FilePosition;

    fn read(&mut self, _at: Millis, from: &FilePosition, max: usize) -> Result<SourceRead<FilePosition>, ConnectError> {
        let listing = self.files.list()?;
        let (mut pos, warnings) = self.reconcile(from, &listing);
        let mut sorted = listing;
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for e in &sorted {
            let offset = pos.files[&e.name].offset;
            if offset >= e.len {
                continue;
            }
            if let Some((records, skipped, end)) = self.cut(&e.name, offset, Some(e.len), max)? {
                pos.files.insert(e.name.clone(), FileState { id: e.id, offset: end });
                pos.last = Some((e.name.clone(), offset));
                return Ok(SourceRead { records, to: pos, skipped, warnings, route: Some(e.name.clone().into_bytes()) });
            }
        }
        Ok(SourceRead { warnings, ..SourceRead::nothing(pos) })
    }

    fn reread(&mut self, _at: Millis, _from: &FilePosition, to: &FilePosition, count: usize) -> Result<SourceRead<FilePosition>, ConnectError> {
        let Some((name, start)) = &to.last else {
            return Ok(SourceRead::nothing(to.clone()));
        };
        let Some(state) = to.files.get(name) else {
            return Ok(SourceRead::nothing(to.clone()));
        };
        // The file may have been renamed since: find it by identity.
        let listing = self.files.list()?;
        let file = listing.iter().find(|e| e.id == state.id).map_or(name.clone(), |e| e.name.clone());
        let (records, skipped) = match self.cut(&file, *start, Some(state.offset), count)? {
            Some((records, skipped, _)) => (records, skipped),
            None => (Vec::new(), Vec::new()),
        };
        Ok(SourceRead { records, to: to.clone(), skipped, warnings: Vec::new(), route: Some(name.clone().into_bytes()) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Files in memory: name -> (id, bytes).
    #[derive(Default, Clone)]
    pub struct MemFiles {
        pub files: BTreeMap<String, (u64, Vec<u8>)>,
        pub missing: bool,
    }

    impl FileSystem for MemFiles {
        fn list(&mut self) -> Result<Vec<FileEntry>, ConnectError> {
            if self.missing {
                return Err(ConnectError::Io { path: "/in".into(), reason: "no such file or directory".into() });
            }
            Ok(self.files.iter().map(|(n, (id, b))| FileEntry { name: n.clone(), id: *id, len: b.len() as u64 }).collect())
        }
        fn read_at(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ConnectError> {
            let b = &self.files.get(name).ok_or_else(|| ConnectError::Io { path: name.into(), reason: "gone".into() })?.1;
            let start = (offset as usize).min(b.len());
            Ok(b[start..(start + len).min(b.len())].to_vec())
        }
        fn display(&self, name: &str) -> String {
            format!("/in/{name}")
        }
    }

    fn values(r: &SourceRead<FilePosition>) -> Vec<String> {
        r.records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect()
    }

    fn tail(files: &[(&str, u64, &str)]) -> FileTail<MemFiles> {
        let mut m = MemFiles::default();
        for (n, id, b) in files {
            m.files.insert(n.to_string(), (*id, b.as_bytes().to_vec()));
        }
        FileTail::new(m, LineFormat::Lines)
    }

    #[test]
    fn reads_files_in_name_order_one_file_per_read_and_waits_for_newlines() {
        let mut t = tail(&[("b.log", 2, "b1\n"), ("a.log", 1, "a1\na2\npart")]);
        let r = t.read(0, &FilePosition::default(), 10).unwrap();
        assert_eq!(values(&r), vec!["a1", "a2"]);
        assert_eq!(r.route.as_deref(), Some(&b"a.log"[..]));
        let r2 = t.read(0, &r.to, 10).unwrap();
        assert_eq!(values(&r2), vec!["b1"], "a.log's unended line does not hold up b.log");
        t.files.files.get_mut("a.log").unwrap().1.extend_from_slice(b"ial\n");
        let r3 = t.read(0, &r2.to, 10).unwrap();
        assert_eq!(values(&r3), vec!["partial"]);
        assert!(t.read(0, &r3.to, 10).unwrap().records.is_empty());
    }

    #[test]
    fn truncated_files_are_read_again_with_a_warning_and_renamed_ones_keep_their_offset() {
        let mut t = tail(&[("app.log", 7, "one\ntwo\n")]);
        let r = t.read(0, &FilePosition::default(), 1).unwrap();
        assert_eq!(values(&r), vec!["one"]);
        // Renamed (rotated by rename), and a new app.log begun.
        let old = t.files.files.remove("app.log").unwrap();
        t.files.files.insert("app.log.1".into(), old);
        t.files.files.insert("app.log".into(), (8, b"three\n".to_vec()));
        let r = t.read(0, &r.to, 10).unwrap();
        assert_eq!(values(&r), vec!["three"]);
        let r = t.read(0, &r.to, 10).unwrap();
        assert_eq!(values(&r), vec!["two"], "the renamed file's unread tail is read once");
        // Truncated (copy-truncate) and rewritten shorter.
        t.files.files.insert("app.log".into(), (8, b"4\n".to_vec()));
        let r = t.read(0, &r.to, 10).unwrap();
        assert_eq!(values(&r), vec!["4"]);
        assert!(r.warnings.iter().any(|w| w.contains("/in/app.log is shorter") && w.contains("truncated")), "{:?}", r.warnings);
    }

    #[test]
    fn a_reread_reads_the_logged_chunk_whatever_else_changed() {
        let mut t = tail(&[("b.log", 2, "b1\nb2\n"), ("a.log", 1, "a1")]);
        let from = FilePosition::default();
        let first = t.read(5, &from, 10).unwrap();
        assert_eq!(values(&first), vec!["b1", "b2"]);
        // Meanwhile a.log got its newline and would be read first now.
        t.files.files.get_mut("a.log").unwrap().1.extend_from_slice(b"\n");
        let again = t.reread(5, &from, &first.to, 2).unwrap();
        assert_eq!(again.records, first.records);
        assert_eq!(again.to, first.to);
    }

    #[test]
    fn json_lines_are_validated_and_malformed_ones_named() {
        let mut t = tail(&[("e.json", 1, "{\"a\":1}\nnope\n{\"a\":2}\n")]);
        t.format = LineFormat::Json;
        let r = t.read(0, &FilePosition::default(), 10).unwrap();
        assert_eq!(values(&r), vec!["{\"a\":1}", "{\"a\":2}"]);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].location, "/in/e.json at byte 8");
    }

    #[test]
    fn a_missing_folder_is_retriable_and_an_endless_line_is_not() {
        let mut t = tail(&[]);
        t.files.missing = true;
        assert!(t.read(0, &FilePosition::default(), 10).unwrap_err().is_retriable());
        let mut t = tail(&[]);
        t.files.files.insert("big".into(), (1, vec![b'x'; WINDOW + 10]));
        let e = t.read(0, &FilePosition::default(), 10).unwrap_err();
        assert!(matches!(e, ConnectError::LineTooLong { offset: 0, .. }), "{e:?}");
        assert!(!e.is_retriable());
    }
}
