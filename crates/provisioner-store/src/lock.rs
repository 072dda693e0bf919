//! One process per SQLite file: an exclusive OS lock on `<file>.lock`, held while the store lives.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{Error, Result};

/// Holds the lock until dropped (the OS releases it when the process dies, too).
#[derive(Debug)]
pub(crate) struct ProcessLock {
    _file: File,
}

impl ProcessLock {
    pub(crate) fn acquire(db_path: &Path) -> Result<Self> {
        let lock_path = {
            let mut p = db_path.as_os_str().to_owned();
            p.push(".lock");
            std::path::PathBuf::from(p)
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::Io {
                op: format!("opening lock file {}", lock_path.display()),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(ProcessLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
                path: db_path.display().to_string(),
                lock: lock_path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Io {
                op: format!("locking {}", lock_path.display()),
                source,
            }),
        }
    }
}
