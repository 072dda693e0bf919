//! The store's error type.

/// What can go wrong with the store, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `DATABASE_URL` is not one this store understands.
    #[error(
        "unsupported DATABASE_URL `{scheme}`: use sqlite://relative/path, sqlite:///absolute/path or postgres://..."
    )]
    UnsupportedUrl {
        /// The scheme (or the start of the value) that was given; never credentials.
        scheme: String,
    },
    /// Another process already uses this SQLite file.
    #[error(
        "the SQLite database {path} is in use by another provisioner process (lock file {lock}); \
         stop it first, or point every instance at one PostgreSQL to run several"
    )]
    InUse {
        /// The database file.
        path: String,
        /// The lock file held by the other process.
        lock: String,
    },
    /// The database could not be reached or answered with an error; usually transient.
    #[error("database {op} failed: {source}")]
    Database {
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite writer (the service's one writing connection) failed; usually transient (a
    /// lock held by an operator command beyond the busy timeout, a full disk).
    #[error("database {op} failed: {source}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// This worker no longer holds the job's lease (it expired and another worker took it).
    #[error("lease on job for order {order_id} is no longer held by {owner}")]
    LeaseLost {
        /// The job's order id.
        order_id: String,
        /// The worker that lost it.
        owner: String,
    },
    /// No such job / dead letter.
    #[error("{what} {id} not found")]
    NotFound {
        /// `job` or `dead letter`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A stored row does not decode (written by a newer version, or edited by hand).
    #[error("stored {what} is invalid: {reason}")]
    Corrupt {
        /// Which kind of row.
        what: &'static str,
        /// What is wrong (never the row's content).
        reason: String,
    },
    /// The audit record of a write could not be sealed or stored, so the write it records did
    /// not commit either (they share one transaction); usually transient.
    #[error("audit record not stored, so the change it records was not made: {0}")]
    Audit(#[source] Box<audit::Error>),
    /// Field encryption or the keyring failed.
    #[error(transparent)]
    Crypto(#[from] field_crypto::Error),
    /// An I/O error outside the database (lock file, backup target).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { op, source }
    }

    /// Whether the database itself answered with an error (the statement, or the
    /// transaction, rolled back; not a lost connection, whose outcome is unknown).
    pub(crate) fn is_refused_by_database(&self) -> bool {
        matches!(
            self,
            Error::Database {
                source: sqlx::Error::Database(_),
                ..
            }
        )
    }

    /// Whether the database refused a duplicate key (a UNIQUE or PRIMARY KEY constraint).
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            Error::Database { source, .. } => {
                matches!(source, sqlx::Error::Database(d) if d.is_unique_violation())
            }
            Error::Sqlite { source, .. } => crate::sqlite_writer::is_unique_violation(source),
            _ => false,
        }
    }

    /// Whether trying again later may succeed (connection trouble, lock timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database { source, .. } => !matches!(
                source,
                sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
            ),
            Error::Sqlite { source, .. } => !matches!(
                source,
                rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::InvalidColumnType(..)
                    | rusqlite::Error::InvalidColumnName(_)
                    | rusqlite::Error::IntegralValueOutOfRange(..)
            ),
            Error::Io { .. } | Error::Audit(_) => true,
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
