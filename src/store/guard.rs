//! The database is the user's own: checked and created before SQLite sees the path.
//!
//! A database another user can write, replace or plant makes `keyfleet resume` send
//! that user's pairs with our credentials, and lets them read our plans. So, like
//! ssh's `StrictModes`, [`prepare`] refuses:
//!
//! - a database file, `-wal` or `-shm` that is a symbolic link, not a regular file,
//!   owned by another user, or writable by group or others;
//! - a directory holding it (or any directory above) that is owned by someone other
//!   than the user or root, or writable by group or others without the sticky bit;
//! - a database without its owner's write bit (mode 0400): keyfleet never makes a
//!   file writable; it refuses and says so.
//!
//! The `<db>-migrate.lock` file that serializes opening gets the same checks
//! ([`open_lock_file`]).
//!
//! Missing files are created here, `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, so there is
//! no moment when one exists with a wider mode; SQLite gives a `-wal` or `-shm` it
//! creates later the database file's mode. An existing file readable by group or
//! others is tightened to owner-only through its descriptor (permissions are only
//! ever tightened). Once the directories pass, nobody else can create, rename or
//! remove entries in them, so the checks cannot be raced between here and SQLite's open.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The files SQLite keeps beside a database in WAL mode: created here when missing.
pub(super) const COMPANION_SUFFIXES: [&str; 2] = ["-wal", "-shm"];
/// SQLite's rollback journal, used briefly while a new database is switched to WAL.
/// Checked when present (a planted "hot" journal would be rolled into the database)
/// but not created: SQLite deletes it after each transaction in that mode.
const JOURNAL_SUFFIX: &str = "-journal";
/// The mode of every file keyfleet creates for a database: owner read and write.
pub(super) const DB_FILE_MODE: u32 = 0o600;

/// Checks the database at `path`, its companions and its directories, creating the
/// missing files owner-only. Returns the absolute path to give SQLite: absolute, so
/// that `:memory:` or `file:...` are plain file names, never SQLite's special names.
pub(super) fn prepare(path: &Path) -> Result<PathBuf, StoreError> {
    let refuse = |reason: String, fix: String| StoreError::Unsafe {
        path: path.to_path_buf(),
        reason,
        fix,
    };
    let io_error = |what: String, err: io::Error| StoreError::Prepare {
        path: path.to_path_buf(),
        detail: format!("{what}: {err}"),
    };
    let Some(name) = path.file_name() else {
        return Err(refuse(
            "the path does not end in a file name".into(),
            "name a file, for example --db keyfleet.db".into(),
        ));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir)
        .map_err(|err| io_error(format!("its directory {}", dir.display()), err))?;
    let uid = effective_uid();
    for ancestor in dir.ancestors() {
        check_directory(ancestor, uid).map_err(|(reason, fix)| refuse(reason, fix))?;
    }
    let absolute = dir.join(name);
    for suffix in std::iter::once("")
        .chain(COMPANION_SUFFIXES)
        .chain([JOURNAL_SUFFIX])
    {
        let mut file_name = OsString::from(absolute.as_os_str());
        file_name.push(suffix);
        let file = PathBuf::from(file_name);
        prepare_one(&file, suffix == JOURNAL_SUFFIX, uid, path).map_err(|err| match err {
            Check::Refused(reason, fix) => refuse(reason, fix),
            Check::Io(err) => io_error(file.display().to_string(), err),
        })?;
    }
    Ok(absolute)
}

/// Opens the lock file `lock` beside the database `db` (whose directories
/// [`prepare`] has checked) for reading and writing: created owner-only when missing,
/// else checked like the database (a regular file, no symbolic link, the user's own,
/// not writable by group or others). Another user's lock file in a shared sticky
/// directory could otherwise hold every open of the database forever, or feed it
/// a holder's name.
pub(super) fn open_lock_file(lock: &Path, db: &Path) -> Result<File, StoreError> {
    let refuse = |reason: String, fix: String| StoreError::Unsafe {
        path: db.to_path_buf(),
        reason,
        fix,
    };
    let io_error = |err: io::Error| StoreError::Prepare {
        path: db.to_path_buf(),
        detail: format!("{}: {err}", lock.display()),
    };
    let uid = effective_uid();
    prepare_one(lock, false, uid, db).map_err(|err| match err {
        Check::Refused(reason, fix) => refuse(reason, fix),
        Check::Io(err) => io_error(err),
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(lock)
        .map_err(io_error)?;
    // The file checked is the file opened: nobody else can rename entries in a
    // directory that passed, but the descriptor says so without that argument.
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(refuse(
            format!("{} changed while it was opened", lock.display()),
            "try again; if it persists, remove the lock file".into(),
        ));
    }
    Ok(file)
}

/// Times a file that vanished between "it exists" and opening it is tried again.
const VANISHED_RETRIES: usize = 3;

/// Creates `file` owner-only, or checks the one that exists. `check_only`: never create.
fn prepare_one(file: &Path, check_only: bool, uid: u32, db: &Path) -> Result<(), Check> {
    for _ in 0..VANISHED_RETRIES {
        let created = if check_only {
            match std::fs::symlink_metadata(file) {
                Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(err) => Err(err),
            }
        } else {
            create_private(file)
        };
        match created {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                match check_existing(file, uid, db) {
                    // Another process's SQLite removed its -wal/-shm on close meanwhile.
                    Err(Check::Io(err)) if err.kind() == io::ErrorKind::NotFound => continue,
                    checked => return checked,
                }
            }
            Err(err) => return Err(Check::Io(err)),
        }
    }
    Err(Check::Io(io::Error::other(
        "it keeps appearing and vanishing; is another program using this database?",
    )))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `file` exclusively, never through a symlink, mode 0600 whatever the umask.
fn create_private(file: &Path) -> io::Result<()> {
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(DB_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file)?;
    // The umask may have taken the owner's write bit; the mode is exactly 0600.
    created.set_permissions(std::fs::Permissions::from_mode(DB_FILE_MODE))
}

enum Check {
    Refused(String, String),
    Io(io::Error),
}

/// An existing database file or companion: ours, regular, not writable by others.
fn check_existing(file: &Path, uid: u32, db: &Path) -> Result<(), Check> {
    let shown = file.display();
    let opened: io::Result<File> = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(file);
    let opened = match opened {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Check::Refused(
                format!("{shown} is a symbolic link, and keyfleet follows none for a database"),
                format!(
                    "remove the link, or give --db the real file's path if it is yours ({})",
                    db.display()
                ),
            ));
        }
        Err(err) => return Err(Check::Io(err)),
    };
    let meta = opened.metadata().map_err(Check::Io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Check::Refused(
            format!("{shown} is {what}, not a database file"),
            "give --db the path of a database file (it is created when missing)".into(),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid {
        return Err(Check::Refused(
            format!(
                "{shown} is owned by uid {}, not by you (uid {uid}): another user could have planted or changed its plan",
                meta.uid()
            ),
            "use a database of your own (--db in a directory only you can write)".into(),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(Check::Refused(
            format!("{shown} is writable by group or others (mode {mode:04o})"),
            format!("if you trust its content, chmod 600 {shown}; otherwise use a new database"),
        ));
    }
    if mode & 0o200 == 0 {
        return Err(Check::Refused(
            format!(
                "{shown} is read-only (mode {mode:04o}) and keyfleet writes to every database it opens"
            ),
            format!(
                "keyfleet never makes a file writable itself: chmod u+w {shown}, or work on a copy"
            ),
        ));
    }
    if mode & 0o077 != 0 {
        // Readable by others (an older keyfleet created 0644 for a moment): tighten
        // through the descriptor, which is this very file, never a link's target.
        opened
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))
            .map_err(Check::Io)?;
    }
    Ok(())
}

/// A directory on the way to the database: a directory, owned by the user or root,
/// and writable only by its owner unless it is sticky (like /tmp).
fn check_directory(dir: &Path, uid: u32) -> Result<(), (String, String)> {
    let shown = dir.display();
    let meta = std::fs::metadata(dir).map_err(|err| {
        (
            format!("cannot inspect its directory {shown}: {err}"),
            "give --db a path in a directory you own".to_string(),
        )
    })?;
    if !meta.is_dir() {
        return Err((
            format!("{shown} is not a directory"),
            "give --db a path in a directory".into(),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid && meta.uid() != 0 {
        return Err((
            format!(
                "the directory {shown} is owned by uid {}, neither you (uid {uid}) nor root: its owner can replace the database",
                meta.uid()
            ),
            "keep the database in a directory of your own (--db ~/keyfleet/keyfleet.db)".into(),
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err((
            format!(
                "the directory {shown} is writable by group or others (mode {mode:04o}): they can replace the database"
            ),
            format!("chmod go-w {shown}, or keep the database in a directory of your own"),
        ));
    }
    Ok(())
}
