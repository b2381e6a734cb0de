//! Atomic outputs: everything is written into a hidden temporary directory
//! ([`AtomicDir`]) or file ([`AtomicFile`]) beside the destination and renamed into place
//! only when complete, so a failure never leaves a partial output and never touches
//! existing files.
//!
//! Interrupted runs: the temporary paths of this process are registered, and
//! [`install_signal_cleanup`] removes them on SIGINT / SIGTERM / SIGHUP before exiting.
//! A run killed outright (SIGKILL, power loss) leaves its temporary path behind; the next
//! run writing beside it removes those of processes that no longer exist.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary paths of this process not yet committed or dropped.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(tmp: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(tmp.to_path_buf());
}

fn unregister(tmp: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != tmp);
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove this process's temporary outputs, say so, and
/// exit with 128 + the signal's conventional code (130 as for Ctrl-C). Call once, from
/// `main`.
pub fn install_signal_cleanup() {
    let installed = ctrlc::set_handler(|| {
        let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
        for p in &live {
            remove_path(p);
        }
        eprintln!("interrupted: removed {} unfinished output(s); nothing was written", live.len());
        std::process::exit(130);
    });
    if let Err(e) = installed {
        eprintln!(
            "warning: cannot install the interrupt handler ({e}); an interrupted run may leave a hidden .*.tmp-* path"
        );
    }
}

/// Refuse, before any work, a file that `option` would write after it (`--json`, `--plot`)
/// when it already exists: outputs are never overwritten.
pub fn refuse_existing(option: &str, path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::option(
            option,
            format!("{} already exists (choose another name or remove it)", path.display()),
        ));
    }
    Ok(())
}

/// Check before any work that `dest` can be written: it does not exist (not even as a
/// dangling symlink), its parent can be created, and a directory can be made there.
pub fn probe_output(dest: &Path) -> Result<()> {
    let (tmp, _) = temp_beside(dest)?;
    std::fs::create_dir(&tmp).map_err(|e| {
        let parent = tmp.parent().unwrap_or(Path::new("."));
        Error::option("output", format!("{} cannot be written: {}: {e}", dest.display(), parent.display()))
    })?;
    let _ = std::fs::remove_dir(&tmp);
    Ok(())
}

/// Whether process `pid` is alive (Linux `/proc`; elsewhere, `kill(pid, 0)`).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Remove every `.NAME.tmp-PID-N` in `parent` left by a process that no longer runs
/// (whatever output it was writing: a killed run's temporary is garbage either way).
fn remove_stale_temps(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().filter(|f| f.starts_with('.')) else { continue };
        let Some((_, tail)) = name.rsplit_once(".tmp-") else { continue };
        let Some(pid) = tail.split_once('-').and_then(|(p, n)| n.parse::<u64>().ok().and(p.parse::<u32>().ok())) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let p = e.path();
            remove_path(&p);
            eprintln!("removed {} (left by an interrupted run, process {pid})", p.display());
        }
    }
}

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
        register(&tmp);
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
    // symlink_metadata: a dangling symlink is "there" too (rename would replace it).
    if dest.symlink_metadata().is_ok() {
        return Err(Error::OutputExists { path: dest });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Some(file) = parent.ancestors().find(|a| a.symlink_metadata().is_ok_and(|m| !m.is_dir()) && !a.is_dir()) {
        return Err(Error::option(
            "output",
            format!("{} cannot be created: {} is not a directory", dest.display(), file.display()),
        ));
    }
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name =
        dest.file_name().ok_or_else(|| Error::option("output", format!("{} has no file name", dest.display())))?;
    // Unique per process and per call: two writers (threads or processes) never share it.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    remove_stale_temps(&parent);
    let tmp = parent.join(format!(".{}.tmp-{}-{call}", name.to_string_lossy(), std::process::id()));
    Ok((tmp, dest))
}

fn rename_into_place(tmp: &Path, dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
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
        register(&tmp);
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
        unregister(&self.tmp);
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
        unregister(&self.tmp);
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

    /// Issue 15.7/15.8: temporaries of dead processes are removed by the next writer
    /// (those of live ones are kept); a dangling symlink at the destination is refused;
    /// an unwritable parent is found by the probe.
    #[test]
    fn stale_temporaries_dangling_links_and_unwritable_parents() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(".out.tmp-999999999-0");
        let live = root.path().join(format!(".out.tmp-{}-77", std::process::id()));
        let other = root.path().join(".other.tmp-999999999-3");
        let unrelated = root.path().join(".cache.tmp-notapid-0");
        for p in [&dead, &live, &other, &unrelated] {
            std::fs::create_dir(p).unwrap();
            std::fs::write(p.join("model.safetensors"), b"partial").unwrap();
        }
        let d = AtomicDir::create(root.path().join("out")).unwrap();
        assert!(!dead.exists() && !other.exists(), "a dead process's temporaries are removed");
        assert!(live.exists() && unrelated.exists(), "a live process's, or a name not ours, is kept");
        drop(d);

        let link = root.path().join("link");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &link).unwrap();
        assert!(matches!(probe_output(&link), Err(Error::OutputExists { .. })));
        assert!(matches!(AtomicDir::create(&link), Err(Error::OutputExists { .. })));

        // A parent that cannot hold a directory (root ignores permission bits, so a
        // regular file stands in for a read-only parent here).
        let file = root.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let e = probe_output(&file.join("out")).unwrap_err().to_string();
        assert!(e.contains("plain-file is not a directory"), "{e}");
        assert!(probe_output(&root.path().join("fresh/out")).is_ok());
        assert!(!root.path().join("fresh/out").exists());
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
