//! Files and directories only their owner can read: the state dir (checkpoints hold
//! account ids, key ARNs and external ids), prepared data keys, random bytes from KMS,
//! decrypted files.
//!
//! - Directories are created 0700 and files 0600 (on Unix; the umask can only narrow
//!   that). Existing directories are left as they are: a `--state-dir` may be a
//!   directory the user chose, and its mode is theirs.
//! - A file that is replaced is written beside its final name under a fresh random
//!   name opened with `create_new` (`O_EXCL`: nothing that exists there, a symlink
//!   included, is ever opened), synced, and renamed over the final name, which replaces
//!   a symlink there rather than writing through it; the directory is synced after.
//! - A file that is opened in place (a journal, a lock file) is opened with
//!   `O_NOFOLLOW`: a symlink at its name is refused, never followed.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mode of every file made here: the owner reads and writes, nobody else anything.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory made here.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and any missing parents, each new one 0700.
///
/// # Errors
/// As [`fs::DirBuilder::create`].
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)
}

/// Opens `path` for writing, created 0600 if missing, truncated if `truncate`; a
/// symlink at `path` is refused (`O_NOFOLLOW`), not followed.
///
/// # Errors
/// As [`OpenOptions::open`]; a symlink gives the error of `O_NOFOLLOW` (`ELOOP`).
pub fn open_in_place(path: &Path, truncate: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(truncate);
    owner_only(&mut options);
    options.open(path)
}

/// Writes `bytes` to `path` as a new owner-only file, atomically: a reader (or a crash)
/// sees the old file or the whole new one.
///
/// # Errors
/// Any I/O error; nothing is left beside `path` then.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    io::Write::write_all(file.file(), bytes)?;
    file.commit()
}

/// A new owner-only file under a temporary name beside `target`, renamed over
/// `target` by [`commit`](Self::commit) and removed if dropped before.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Creates `.NAME.<16 hex digits>.tmp` in `target`'s directory, 0600, `create_new`.
    ///
    /// # Errors
    /// `InvalidInput` when `target` names no file; else as [`OpenOptions::open`].
    pub fn create(target: &Path) -> io::Result<Self> {
        let name =
            target.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
        // A random suffix: two writers of one target never share a temporary file.
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix).map_err(|_| io::Error::other("no random bytes for a temporary name"))?;
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        let temp = parent_dir(target).join(temp_name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        owner_only(&mut options);
        let file = options.open(&temp)?;
        Ok(AtomicFile { file: Some(file), temp, target: target.to_path_buf() })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until persisted")
    }

    /// Where the file is until it is persisted.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes the data to disk: after this, [`persist`](Self::persist) only renames.
    ///
    /// # Errors
    /// As [`File::sync_all`].
    pub fn sync(&mut self) -> io::Result<()> {
        self.file().sync_all()
    }

    /// Renames the file over its target. Call [`sync`](Self::sync) first, and
    /// [`sync_dir`] after, for the rename itself to survive a crash.
    ///
    /// # Errors
    /// As [`fs::rename`]; the temporary file is removed then.
    pub fn persist(mut self) -> io::Result<()> {
        // Closed before the rename, for file systems that refuse to rename open files.
        self.file.take();
        fs::rename(&self.temp, &self.target)?;
        // From here the temporary name no longer exists: nothing to remove.
        self.temp = PathBuf::new();
        Ok(())
    }

    /// [`sync`](Self::sync), [`persist`](Self::persist), then [`sync_dir`].
    ///
    /// # Errors
    /// As those; an error syncing the directory comes after the rename: the target is
    /// in place.
    pub fn commit(mut self) -> io::Result<()> {
        self.sync()?;
        let dir = parent_dir(&self.target).to_path_buf();
        self.persist()?;
        sync_dir(&dir)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.file.take();
            // Best effort: the error being reported matters more than a leftover file.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Syncs a directory, so the names created or renamed in it survive a crash.
///
/// # Errors
/// As [`File::sync_all`]; nothing on systems where a directory cannot be opened.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directory a path's file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn owner_only(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = options;
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_directories_and_files_are_the_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!((mode(&root.path().join("a")), mode(&dir)), (0o700, 0o700));
        write_atomic(&dir.join("f"), b"x").unwrap();
        open_in_place(&dir.join("g"), true).unwrap();
        assert_eq!((mode(&dir.join("f")), mode(&dir.join("g"))), (0o600, 0o600));
        let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["f", "g"], "no temporary file left");
    }

    #[test]
    fn symlinks_are_replaced_or_refused_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_in_place(&link, true).is_err(), "opened through a symlink");
        write_atomic(&link, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!((fs::read(&link).unwrap(), mode(&link)), (b"new".to_vec(), 0o600));
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("t");
        let mut f = AtomicFile::create(&target).unwrap();
        io::Write::write_all(f.file(), b"partial").unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(f);
        assert!(!temp.exists() && !target.exists());
    }
}
