//! A plain in-memory [`Storage`]: every write is durable at once. For unit
//! and property tests of the core; the fault-injecting disk lives in sim/.

use std::collections::BTreeMap;

use super::{Storage, StorageError, StorageResult};

#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    files: BTreeMap<String, Vec<u8>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Direct access for tests that damage files between opens.
    pub fn file_mut(&mut self, file: &str) -> Option<&mut Vec<u8>> {
        self.files.get_mut(file)
    }

    pub fn files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.files.iter()
    }

    fn get(&self, file: &str) -> StorageResult<&Vec<u8>> {
        self.files.get(file).ok_or_else(|| StorageError::NotFound { file: file.to_string() })
    }
}

impl Storage for MemStorage {
    fn append(&mut self, file: &str, data: &[u8]) -> StorageResult<u64> {
        let f = self.files.entry(file.to_string()).or_default();
        let pos = f.len() as u64;
        f.extend_from_slice(data);
        Ok(pos)
    }

    fn read(&mut self, file: &str, pos: u64, len: usize) -> StorageResult<Vec<u8>> {
        let f = self.get(file)?;
        let start = (pos as usize).min(f.len());
        let end = start.saturating_add(len).min(f.len());
        Ok(f[start..end].to_vec())
    }

    fn len(&mut self, file: &str) -> StorageResult<u64> {
        Ok(self.get(file)?.len() as u64)
    }

    fn sync(&mut self, file: &str) -> StorageResult<()> {
        self.get(file).map(|_| ())
    }

    fn truncate(&mut self, file: &str, len: u64) -> StorageResult<()> {
        let f = self.files.get_mut(file).ok_or_else(|| StorageError::NotFound { file: file.to_string() })?;
        f.truncate(len as usize);
        Ok(())
    }

    fn list(&mut self, prefix: &str) -> StorageResult<Vec<String>> {
        Ok(self.files.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn remove(&mut self, file: &str) -> StorageResult<()> {
        self.files.remove(file);
        Ok(())
    }

    fn replace(&mut self, file: &str, data: &[u8]) -> StorageResult<()> {
        self.files.insert(file.to_string(), data.to_vec());
        Ok(())
    }

    fn replace_with_file(&mut self, file: &str, source: &str) -> StorageResult<()> {
        let data = self.files.remove(source).ok_or_else(|| StorageError::NotFound { file: source.to_string() })?;
        self.files.insert(file.to_string(), data);
        Ok(())
    }
}
