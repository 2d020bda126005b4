//! Online backups through SQLite's backup API (the engine's own SQLite: no second
//! library in the process), into a file this call creates: exclusively, never through a
//! link, with the source file's permission bits, synced, and removed again on failure.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::sqlite::database::Engine;

/// Permission bits of a backup of an in-memory database.
const PRIVATE: u32 = 0o600;

/// How many fresh names `backup_beside` tries before giving up.
const NAME_ATTEMPTS: u32 = 100;

impl Engine {
    /// Copies the database, as of one moment, into the new file `dest`. An existing
    /// `dest` (a file, or a link even to nowhere) is refused, never followed or replaced.
    /// The copy gets the database file's permission bits and is synced before this
    /// returns; on any failure nothing is left at `dest`. A full disk is
    /// [`Error::DiskFull`].
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref();
        let file = create_exclusive(dest, self.file_mode()?).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::invalid(
                "dest",
                format!("{} already exists: a backup never replaces a file or follows a link", dest.display()),
            ),
            _ => io_error(&format!("cannot create backup file {}", dest.display()), e),
        })?;
        self.backup_into(file, dest)
    }

    /// Backs up beside the database file under a name no other file has,
    /// `<stem>.backup-<UTC YYYYmmddTHHMMSS.ffffffZ>-<pid>[-<n>]<.suffix>`, and returns it.
    pub fn backup_beside(&self) -> Result<PathBuf> {
        if self.in_memory {
            return Err(Error::invalid("dest", "an in-memory database has no file to back up beside: name a dest"));
        }
        let source = self.database_file()?;
        let mode = self.file_mode()?;
        for attempt in 0..NAME_ATTEMPTS {
            let extra = if attempt == 0 { String::new() } else { format!("-{attempt}") };
            let mut name = source.file_stem().unwrap_or_default().to_os_string();
            name.push(format!(".backup-{}-{}{extra}", utc_stamp(), std::process::id()));
            if let Some(suffix) = source.extension() {
                name.push(".");
                name.push(suffix);
            }
            let dest = source.with_file_name(name);
            match create_exclusive(&dest, mode) {
                Ok(file) => return self.backup_into(file, &dest).map(|()| dest),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&format!("cannot create backup file {}", dest.display()), e)),
            }
        }
        Err(Error::Sqlite(format!("no free backup name beside {} after {NAME_ATTEMPTS} attempts", source.display())))
    }

    /// The database file's permission bits (what a backup of it gets).
    fn file_mode(&self) -> Result<u32> {
        if self.in_memory {
            return Ok(PRIVATE);
        }
        let file = self.database_file()?;
        let meta = fs::metadata(&file).map_err(|e| io_error(&format!("cannot stat {}", file.display()), e))?;
        Ok(meta.mode() & 0o777)
    }

    /// The database file by its bytes, as opened (never the lossy name shown in
    /// messages); for a URI, the file SQLite opened.
    fn database_file(&self) -> Result<PathBuf> {
        if let Some(file) = self.file() {
            return Ok(file.to_path_buf());
        }
        let conn = self.conn()?;
        match conn.path() {
            Some(file) if !file.is_empty() => Ok(PathBuf::from(file)),
            _ => Err(Error::Sqlite(format!("the file of {:?} is unknown", self.path))),
        }
    }

    /// Runs the online backup into `file`, just created at `dest`; removes it on failure.
    fn backup_into(&self, file: File, dest: &Path) -> Result<()> {
        let result = self.copy_to(&file, dest);
        if result.is_err() {
            // Only the file this call created: never whatever may have replaced it.
            let ours = |m: fs::Metadata| file.metadata().is_ok_and(|f| (f.dev(), f.ino()) == (m.dev(), m.ino()));
            if fs::symlink_metadata(dest).is_ok_and(ours) {
                let _ = fs::remove_file(dest);
            }
        }
        result.map_err(|e| e.context(&format!("backup to {}", dest.display())))
    }

    fn copy_to(&self, file: &File, dest: &Path) -> Result<()> {
        let source = self.conn()?;
        let flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut out = Connection::open_with_flags(dest, flags)?;
        // The copy is new and private until this returns: no journal (nothing to leave
        // behind on failure), and one fsync at the end instead of SQLite's.
        out.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")?;
        {
            let backup = Backup::new(&source, &mut out)?;
            let patience = Duration::from_millis(
                self.options.pragmas.get("busy_timeout").and_then(|ms| ms.parse().ok()).unwrap_or(5000),
            );
            let started = Instant::now();
            // All pages in one step: one read transaction, one consistent moment.
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    StepResult::Busy | StepResult::Locked if started.elapsed() < patience => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => return Err(Error::Busy(format!("the source {:?} stayed locked for {patience:?}", self.path))),
                }
            }
        }
        out.close().map_err(|(_, e)| Error::from(e))?;
        file.sync_all().map_err(|e| io_error("cannot sync the backup", e))?;
        if let Some(dir) = dest.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }) {
            // Makes the new name durable; not every filesystem syncs directories.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// Creates `path` with `mode`: fails if anything exists there (O_EXCL), a link included
/// (O_NOFOLLOW); the mode is set again past the umask.
fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

fn io_error(what: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => Error::DiskFull(format!("{what}: {e}")),
        _ => Error::Sqlite(format!("{what}: {e}")),
    }
}

/// The current UTC time as `YYYYmmddTHHMMSS.ffffffZ`.
fn utc_stamp() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let civil = crate::model::format_utc_ms(secs * 1000).replace(['-', ':'], "").replace(' ', "T");
    format!("{civil}.{:06}Z", now.subsec_micros())
}
