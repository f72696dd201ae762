//! Files vxprobe writes as root on a node other people share (`--output`, `--pcap`,
//! `--ready-file`): never through a symbolic link or into a file with other hard links (a link
//! planted in a world-writable directory would make root clobber whatever it points at), new
//! files readable by their owner only (the evidence holds packet headers), a ready file that
//! appears whole, and no two of them the same file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Why a path cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0} is a symbolic link: vxprobe does not write through links")]
    Symlink(PathBuf),
    #[error("{0} has other hard links: vxprobe does not write into a file shared with them")]
    HardLinked(PathBuf),
    #[error("cannot write to {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Mode of the files vxprobe creates.
pub const MODE: u32 = 0o600;

/// Opens `path` for writing, creating it with mode 0600 or truncating it: never through a
/// symbolic link (checked by the kernel: `O_NOFOLLOW`), never into a regular file with other
/// hard links. FIFOs and devices are written as they are.
pub fn create(path: &Path) -> Result<File, FileError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FileError::Symlink(path.to_owned()),
            _ => FileError::Io(path.to_owned(), e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Io(path.to_owned(), e))?;
    if meta.is_file() {
        if meta.nlink() > 1 {
            return Err(FileError::HardLinked(path.to_owned()));
        }
        // Truncated only now: a refused file is left as it was.
        file.set_len(0)
            .map_err(|e| FileError::Io(path.to_owned(), e))?;
    }
    Ok(file)
}

/// Refuses a path whose last component is a symbolic link (without touching anything).
pub fn refuse_symlink(path: &Path) -> Result<(), FileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(FileError::Symlink(path.to_owned())),
        _ => Ok(()),
    }
}

/// Writes `contents` to `path` whole: into a new file beside it (mode 0600), then renamed
/// into place, so a reader never sees it half written and a link planted at `path` is
/// replaced, not followed.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    let io = |e| FileError::Io(path.to_owned(), e);
    let name = path
        .file_name()
        .ok_or_else(|| io(io::Error::other("no file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// A file's identity: device and inode.
pub type Identity = (u64, u64);

pub fn identity(file: &File) -> Option<Identity> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Where a path that may not exist yet leads: its directory resolved (links and `..`
/// included), its own name kept. Two paths with the same place name the same file.
pub fn place(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vxprobe-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn new_files_are_private_and_links_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("create");
        let out = dir.join("out.jsonl");
        create(&out).unwrap().write_all(b"x").unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // An existing file is truncated.
        create(&out).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().len(), 0);

        let target = dir.join("precious");
        fs::write(&target, b"keep me").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(create(&link), Err(FileError::Symlink(_))));
        assert!(matches!(refuse_symlink(&link), Err(FileError::Symlink(_))));
        let hard = dir.join("hard");
        fs::hard_link(&target, &hard).unwrap();
        assert!(matches!(create(&hard), Err(FileError::HardLinked(_))));
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_writes_replace_links_instead_of_following_them() {
        let dir = scratch("atomic");
        let target = dir.join("precious");
        fs::write(&target, b"keep me").unwrap();
        let ready = dir.join("ready");
        std::os::unix::fs::symlink(&target, &ready).unwrap();
        write_atomically(&ready, b"ready\n").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
        assert_eq!(fs::read(&ready).unwrap(), b"ready\n");
        assert!(
            !fs::symlink_metadata(&ready)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn places_resolve_the_directory() {
        let dir = scratch("place");
        assert_eq!(place(&dir.join("a")), place(&dir.join(".").join("a")));
        assert_ne!(place(&dir.join("a")), place(&dir.join("b")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
