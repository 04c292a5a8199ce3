//! Connecting to Redis, where suites, results, reports and blobs live.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Failure to reach Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL `{url}`")]
    Url {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("could not connect to Redis at {url}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Opens a connection manager, which reconnects by itself after Redis goes away.
///
/// # Errors
///
/// Returns [`StoreError`] for a bad URL or when Redis does not answer.
pub async fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(|source| StoreError::Url {
        url: url.to_owned(),
        source,
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(6);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|source| StoreError::Connect {
            url: url.to_owned(),
            source,
        })
}
