//! The history store: every finished suite and each of its test runs, kept in SQL so
//! that earlier runs can be read back (`isotest history`, `isotest suites`), flaky tests
//! told from broken ones ([`flaky`]) and failing tests quarantined ([`quarantine`]).
//!
//! One schema serves PostgreSQL (the services) and SQLite (embedded mode, by default at
//! [`default_sqlite_path`]) through sqlx's `Any` driver; its migrations (`migrations/`)
//! run whenever a store is opened. [`write`] records a suite once however often it is
//! offered, and [`read`] answers the queries.

pub mod flaky;
pub mod quarantine;
pub mod read;
#[cfg(feature = "testing")]
pub mod testing;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::Once;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

pub use flaky::{FlakyPolicy, FlakyTest};
pub use quarantine::{Quarantined, Scope};
pub use read::{Owner, SuiteRow, TestRun};
pub use write::{Recorded, SuiteEntry};

/// The schema's migrations, embedded in the binary; 0001 is the base every later one
/// upgrades.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A failure of the history store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("open the history store at `{url}`")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("`{0}` is not a history store URL: use postgres://…, sqlite://… or a file path")]
    BadUrl(String),
    #[error("create the history store's folder `{}`", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migrate the history store's schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("query the history store")]
    Query(#[from] sqlx::Error),
    #[error("a stored report of suite `{suite_id}` is not valid JSON of a report")]
    CorruptReport {
        suite_id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Which database a store is in. The SQL is the same; a few statements differ in how
/// they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// An open history store, its schema migrated to this build's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    pool: AnyPool,
    backend: Backend,
}

/// Where embedded mode keeps its history when given no `--history-url`:
/// `$XDG_DATA_HOME/isotest/history.sqlite`, else `~/.local/share/isotest/history.sqlite`.
/// `None` when neither variable is set.
pub fn default_sqlite_path() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| Path::new(&home).join(".local/share"))
        })?;
    Some(data.join("isotest").join("history.sqlite"))
}

impl History {
    /// Opens the store at `url` (`postgres://…`, `sqlite://PATH`, or a plain file path
    /// for SQLite, created with its folder when missing) and runs the migrations it
    /// lacks.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError`] when the URL is not one of those, the database cannot be
    /// reached, or its schema cannot be migrated (one newer than this build's, say).
    pub async fn open(url: &str) -> Result<History, HistoryError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let (url, backend) = normalize(url)?;
        // SQLite takes one writer at a time: one connection avoids busy errors between
        // this process's own tasks.
        let max = match backend {
            Backend::Postgres => 8,
            Backend::Sqlite => 1,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|source| HistoryError::Connect {
                url: redact(&url),
                source,
            })?;
        MIGRATOR.run(&pool).await.map_err(HistoryError::Migrate)?;
        Ok(History { pool, backend })
    }

    /// The store's database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for tests and tools that run their own SQL.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection (a SQLite file is then safe to move).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The URL sqlx opens and its backend: a plain path is a SQLite file, created (with its
/// folder) when missing.
fn normalize(url: &str) -> Result<(String, Backend), HistoryError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((url.to_owned(), Backend::Postgres));
    }
    let path = match url.strip_prefix("sqlite://") {
        Some(rest) => rest.split('?').next().unwrap_or_default(),
        None if url.contains("://") || url.is_empty() => {
            return Err(HistoryError::BadUrl(url.to_owned()));
        }
        None => url,
    };
    if path.is_empty() {
        return Err(HistoryError::BadUrl(url.to_owned()));
    }
    if path != ":memory:"
        && let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let full = if url.starts_with("sqlite://") && url.contains('?') {
        url.to_owned()
    } else {
        format!("sqlite://{path}?mode=rwc")
    };
    Ok((full, Backend::Sqlite))
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Milliseconds as the store keeps them (BIGINT).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A count or time read back from the store; a negative one (never written) reads as 0.
fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_name_their_backend() {
        let dir = std::env::temp_dir().join(format!("isotest-history-{}", std::process::id()));
        let file = dir.join("h.sqlite");
        let file = file.to_str().expect("utf-8 temp dir");
        assert_eq!(
            normalize("postgres://u@h/db").expect("pg"),
            ("postgres://u@h/db".to_owned(), Backend::Postgres)
        );
        assert_eq!(
            normalize(file).expect("path"),
            (format!("sqlite://{file}?mode=rwc"), Backend::Sqlite)
        );
        assert_eq!(
            normalize(&format!("sqlite://{file}")).expect("sqlite url"),
            (format!("sqlite://{file}?mode=rwc"), Backend::Sqlite)
        );
        for bad in ["mysql://h/db", "", "sqlite://"] {
            assert!(
                matches!(normalize(bad), Err(HistoryError::BadUrl(_))),
                "{bad}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
    }
}
