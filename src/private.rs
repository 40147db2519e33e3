//! Files and directories private to the mounting user: what hoardfs creates in a cache dir is
//! created with these modes, whatever the umask.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Mode of every directory hoardfs creates in a cache dir: the mounting user's alone, whatever
/// the umask. Cached objects, stored listings (every key name) and the log are as private as the
/// mount itself, which admits only its owner unless `--allow-other`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file hoardfs creates in a cache dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents with [`DIR_MODE`].
pub fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Creates (or truncates) `path` for writing with [`FILE_MODE`].
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(path)
}

/// Creates (or truncates) `path` for reading and writing with [`FILE_MODE`]. Missing parents
/// are made (with [`DIR_MODE`]) only when the open finds one missing: a cache creates a file
/// per object, and a `mkdir` plus `stat` of its parent before each would cost more than the
/// open itself.
pub fn create_private_rw(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(FILE_MODE).open(path);
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir_all(path.parent().unwrap_or(path))?;
            open()
        }
        other => other,
    }
}

/// Writes `bytes` to a new private file at `path` (replacing it).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_private(path)?.write_all(bytes)
}
