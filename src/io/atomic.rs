//! Atomic outputs: everything is written into a hidden temporary directory
//! ([`AtomicDir`]) or file ([`AtomicFile`]) beside the destination and renamed into place
//! only when complete, so a failure never leaves a partial output and never touches
//! existing files.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A directory being written. Dropped without [`AtomicDir::commit`], it is removed.
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Refuses (before any work) when `dest` exists.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let (tmp, dest) = temp_beside(dest.as_ref())?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self { tmp, dest, committed: false })
    }

    /// Path of a file inside the temporary directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Write a whole file inside the temporary directory.
    pub fn write(&self, file: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(file);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    }

    /// Rename into place. Fails (keeping nothing) if the destination appeared meanwhile.
    pub fn commit(mut self) -> Result<PathBuf> {
        rename_into_place(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

/// Refuses (before any work) an existing `dest`; creates its parent directory. Returns
/// the hidden temporary path beside it and `dest`.
fn temp_beside(dest: &Path) -> Result<(PathBuf, PathBuf)> {
    let dest = dest.to_path_buf();
    if dest.exists() {
        return Err(Error::OutputExists { path: dest });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name =
        dest.file_name().ok_or_else(|| Error::option("output", format!("{} has no file name", dest.display())))?;
    // Unique per process and per call: two writers (threads or processes) never share it.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{}.tmp-{}-{call}", name.to_string_lossy(), std::process::id()));
    Ok((tmp, dest))
}

fn rename_into_place(tmp: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Err(Error::OutputExists { path: dest.to_path_buf() });
    }
    std::fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))
}

/// A single file being written at [`AtomicFile::path`]. Dropped without
/// [`AtomicFile::commit`], the temporary file is removed.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Refuses (before any work) when `dest` exists.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let (tmp, dest) = temp_beside(dest.as_ref())?;
        Ok(Self { tmp, dest, committed: false })
    }

    /// The temporary file to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Rename into place. Fails (keeping nothing) if the destination appeared meanwhile.
    pub fn commit(mut self) -> Result<PathBuf> {
        rename_into_place(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_and_cleans_up_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        assert!(matches!(AtomicDir::create(&dest), Err(Error::OutputExists { .. })));

        let dest2 = root.path().join("out2");
        {
            let d = AtomicDir::create(&dest2).unwrap();
            d.write("a.txt", b"x").unwrap();
        }
        assert!(!dest2.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "temporary directory left behind");

        let d = AtomicDir::create(&dest2).unwrap();
        d.write("a.txt", b"x").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read(dest2.join("a.txt")).unwrap(), b"x");
    }

    #[test]
    fn atomic_file_refuses_existing_and_cleans_up_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("stats.safetensors");
        std::fs::write(&dest, b"mine").unwrap();
        assert!(matches!(AtomicFile::create(&dest), Err(Error::OutputExists { .. })));
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");

        let dest2 = root.path().join("sub/out.bin");
        {
            let f = AtomicFile::create(&dest2).unwrap();
            std::fs::write(f.path(), b"partial").unwrap();
            assert!(!dest2.exists(), "nothing at the destination before commit");
        }
        assert!(!dest2.exists());
        assert_eq!(std::fs::read_dir(root.path().join("sub")).unwrap().count(), 0, "temporary file left behind");

        let f = AtomicFile::create(&dest2).unwrap();
        std::fs::write(f.path(), b"done").unwrap();
        assert_eq!(f.commit().unwrap(), dest2);
        assert_eq!(std::fs::read(&dest2).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(root.path().join("sub")).unwrap().count(), 1);
    }
}
