//! The file source's [`FileSystem`] on the real file system: a file, or
//! the files of a folder (regular, not hidden — so a file sink's temporary
//! files are never read), identified by inode.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use millrace_core::connect::{ConnectError, FileEntry, FileSystem};

pub struct RealFiles {
    path: PathBuf,
    /// The path is one file, not a folder.
    single: bool,
}

impl RealFiles {
    /// The source at `path`; an error names what is wrong with it.
    pub fn open(path: &str) -> Result<RealFiles, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok(RealFiles { path: PathBuf::from(path), single: meta.is_file() })
    }

    fn io(&self, path: &std::path::Path, e: std::io::Error) -> ConnectError {
        ConnectError::Io { path: path.display().to_string(), reason: e.to_string() }
    }

    fn file(&self, name: &str) -> PathBuf {
        if self.single { self.path.clone() } else { self.path.join(name) }
    }
}

impl FileSystem for RealFiles {
    fn list(&mut self) -> Result<Vec<FileEntry>, ConnectError> {
        if self.single {
            let meta = std::fs::metadata(&self.path).map_err(|e| self.io(&self.path, e))?;
            let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(vec![FileEntry { name, id: meta.ino(), len: meta.len() }]);
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(|e| self.io(&self.path, e))? {
            let entry = entry.map_err(|e| self.io(&self.path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // A file removed between the listing and here is just not listed.
            let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
            if meta.is_file() {
                out.push(FileEntry { name, id: meta.ino(), len: meta.len() });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, ConnectError> {
        let path = self.file(name);
        let mut f = std::fs::File::open(&path).map_err(|e| self.io(&path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.io(&path, e))?;
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        f.take(len as u64).read_to_end(&mut buf).map_err(|e| self.io(&path, e))?;
        Ok(buf)
    }

    fn display(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }
}
