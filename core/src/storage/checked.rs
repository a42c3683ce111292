//! Small metadata files with a checksum: a CRC-32C in front of the content.
//!
//! A flipped bit in a topic description could change a partition count
//! silently, and one in the producer-id reservation could hand out an id
//! twice. So these files are written with a checksum, and a read that does
//! not match is retried (reads can be wrong once while the data at rest is
//! fine). Content that stays wrong is an error for the caller to surface,
//! never a silent default.

use super::{Storage, StorageError};

const ATTEMPTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckedError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{file}: checksum mismatch on every read; the file is damaged")]
    Corrupt { file: String },
}

/// Replaces `file` atomically and durably with `data` behind its CRC-32C.
pub fn write_checked<S: Storage + ?Sized>(storage: &mut S, file: &str, data: &[u8]) -> Result<(), StorageError> {
    let mut framed = Vec::with_capacity(4 + data.len());
    framed.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    framed.extend_from_slice(data);
    storage.replace(file, &framed)
}

/// The content of a file written by [`write_checked`], or `None` if the
/// file does not exist.
pub fn read_checked<S: Storage + ?Sized>(storage: &mut S, file: &str) -> Result<Option<Vec<u8>>, CheckedError> {
    for _ in 0..ATTEMPTS {
        let Some(framed) = storage.read_all(file)? else { return Ok(None) };
        if framed.len() >= 4 {
            let (crc, data) = framed.split_at(4);
            if u32::from_be_bytes(crc.try_into().expect("4 bytes")) == crc32c::crc32c(data) {
                return Ok(Some(data.to_vec()));
            }
        }
    }
    Err(CheckedError::Corrupt { file: file.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn roundtrip_and_damage_is_an_error() {
        let mut s = MemStorage::new();
        assert_eq!(read_checked(&mut s, "m").unwrap(), None);
        write_checked(&mut s, "m", b"hello").unwrap();
        assert_eq!(read_checked(&mut s, "m").unwrap().unwrap(), b"hello");
        s.file_mut("m").unwrap()[5] ^= 1;
        assert!(matches!(read_checked(&mut s, "m"), Err(CheckedError::Corrupt { .. })));
    }
}
