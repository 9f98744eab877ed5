//! Why the store could not do something. Each variant is a sentence an operator can act
//! on; the kind of failure decides whether oetd waits for the store to recover.

use std::path::PathBuf;

/// A failure of the durable store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("the store {} cannot be written: its file system is full ({detail}); free space there, and oetd writes what waited", path.display())]
    DiskFull { path: PathBuf, detail: String },
    #[error("the store {} cannot be written: its file system is read-only ({detail}); make it writable, and oetd writes what waited", path.display())]
    ReadOnly { path: PathBuf, detail: String },
    #[error("the store {} is corrupt ({detail}); stop oetd, move the file aside (keep it for inspection) and start oetd again, which begins a new store", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("the store {} cannot be opened ({detail}); check that the directory exists and belongs to oetd's user, then restart oetd", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("the store {} was written by a newer oetd (schema version {found}; this oetd knows up to {known}); run that oetd, or a newer one", path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the store {} is busy: another process holds its lock ({detail})", path.display())]
    Busy { path: PathBuf, detail: String },
    #[error("the store {} failed: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("the store {} could not take or give back a record: {detail}", path.display())]
    Data { path: PathBuf, detail: String },
}

impl StoreError {
    /// Classifies an SQLite error met while using the store at `path`.
    pub(super) fn from_sqlite(path: &std::path::Path, err: &rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode as Code;
        let path = path.to_owned();
        let detail = err.to_string();
        match err.sqlite_error_code() {
            Some(Code::DiskFull) => StoreError::DiskFull { path, detail },
            Some(Code::ReadOnly) => StoreError::ReadOnly { path, detail },
            Some(Code::DatabaseCorrupt | Code::NotADatabase) => {
                StoreError::Corrupt { path, detail }
            }
            Some(Code::CannotOpen | Code::PermissionDenied) => StoreError::Open { path, detail },
            Some(Code::DatabaseBusy | Code::DatabaseLocked) => StoreError::Busy { path, detail },
            Some(
                Code::SystemIoFailure
                | Code::FileLockingProtocolFailed
                | Code::OutOfMemory
                | Code::SchemaChanged
                | Code::InternalMalfunction,
            ) => StoreError::Io { path, detail },
            // A constraint, a type, a value out of range: the record, not the storage.
            Some(_) | None => StoreError::Data { path, detail },
        }
    }

    /// Names a plain I/O failure more exactly when the store's file system explains it:
    /// one remounted read-only after errors, or one without a free block, makes SQLite
    /// report a bare I/O error.
    pub(super) fn refined(self) -> StoreError {
        let StoreError::Io { path, detail } = self else {
            return self;
        };
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        match nix::sys::statvfs::statvfs(dir) {
            Ok(fs) if fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) => {
                StoreError::ReadOnly { path, detail }
            }
            Ok(fs) if fs.blocks_available() == 0 => StoreError::DiskFull { path, detail },
            _ => StoreError::Io { path, detail },
        }
    }

    /// Whether this failure is of the storage itself (so the write may succeed later),
    /// rather than of one record's content.
    pub(super) fn is_storage(&self) -> bool {
        !matches!(self, StoreError::Data { .. })
    }

    /// A short name for the `STATUS=` line and the log.
    pub fn short(&self) -> &'static str {
        match self {
            StoreError::DiskFull { .. } => "file system full",
            StoreError::ReadOnly { .. } => "read-only file system",
            StoreError::Corrupt { .. } => "corrupt file",
            StoreError::Open { .. } => "cannot be opened",
            StoreError::NewerSchema { .. } => "written by a newer oetd",
            StoreError::Busy { .. } => "locked by another process",
            StoreError::Io { .. } => "I/O error",
            StoreError::Data { .. } => "a record refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_io_error_is_refined_and_only_when_the_file_system_explains_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.sqlite");
        let io = StoreError::Io {
            path: path.clone(),
            detail: "disk I/O error".into(),
        };
        assert_eq!(io.clone().refined(), io, "a writable file system with room");
        let full = StoreError::DiskFull {
            path,
            detail: "database or disk is full".into(),
        };
        assert_eq!(full.clone().refined(), full);
    }
}
