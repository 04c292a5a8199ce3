//! For other crates' tests (feature `testing`): a scratch PostgreSQL schema of their
//! own on the test database, so tests that use the history store run in parallel.

use sqlx::Connection;

/// The PostgreSQL tests use: `DATABASE_URL`, else the local one with
/// trust authentication (`postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// An empty schema of the test database, and a URL whose connections use it.
#[derive(Debug)]
pub struct ScratchSchema {
    pub url: String,
    pub schema: String,
}

impl ScratchSchema {
    /// Creates a schema with a random name.
    ///
    /// # Errors
    ///
    /// Returns the [`sqlx::Error`] when PostgreSQL cannot be reached.
    pub async fn create() -> Result<ScratchSchema, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let schema = format!("isotest_{:016x}{:016x}", rand_u64(), rand_u64());
        let mut conn = sqlx::AnyConnection::connect(&postgres_url()).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = format!("{}?options=-c%20search_path%3D{schema}", postgres_url());
        Ok(ScratchSchema { url, schema })
    }

    /// Drops the schema and everything in it.
    ///
    /// # Errors
    ///
    /// Returns the [`sqlx::Error`] when PostgreSQL fails.
    pub async fn drop(self) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::AnyConnection::connect(&postgres_url()).await?;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
}

/// A random number from the standard library's randomly keyed hasher (no dependency
/// for a name).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}
