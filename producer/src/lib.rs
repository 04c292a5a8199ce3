//! The isotest producer: an HTTP API that accepts a suite and records it in Redis with
//! its tests waiting, and the dispatcher that publishes them, one RabbitMQ message per
//! test, in fair order; then it answers for the suite's progress and report.
//!
//! Its parts: [`config`] (settings), [`suite`] (a submission checked and turned into
//! a record and messages, no I/O), [`store`] (Redis), [`publisher`] (RabbitMQ with
//! confirms and reconnection), [`dispatch`] (the scheduler: fair order, the lease,
//! the queue kept short), [`auth`] (API tokens), [`http`] (routes and the mapping
//! of failures to status codes), [`cache`] (the result cache, looked up at
//! submission), [`history`] (quarantine, expired suites' reports
//! and the history routes, with `--history-url`) and [`ui`] (the dashboard at `/ui`).
//! [`Producer`] ties them together as
//! `build → local_addr → run`.

pub mod auth;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod history;
pub mod http;
pub mod publisher;
pub mod store;
pub mod suite;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use isotest_infra::store::StoreError as ConnectError;

pub use config::{CacheConfig, Config, Limits};

/// Failure to start or to run the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to Redis")]
    Redis(#[source] ConnectError),
    #[error("could not set up publishing to RabbitMQ")]
    Amqp(#[source] publisher::PublishError),
    #[error("could not open the history store")]
    History(#[source] isotest_history::HistoryError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A producer that is connected and listening, ready to [`run`](Producer::run).
#[derive(Debug)]
pub struct Producer {
    listener: TcpListener,
    state: Arc<http::AppState>,
}

impl Producer {
    /// Connects to Redis and RabbitMQ (declaring the topology) and binds the listener.
    ///
    /// # Errors
    ///
    /// Returns [`ProducerError`] when a server is unreachable or the address is taken.
    pub async fn build(config: Config) -> Result<Producer, ProducerError> {
        let ns = config.endpoints.namespace.clone();
        let redis = isotest_infra::store::connect(&config.endpoints.redis_url)
            .await
            .map_err(ProducerError::Redis)?;
        let publisher = publisher::Publisher::connect(&config.endpoints.amqp_url, ns.clone())
            .await
            .map_err(ProducerError::Amqp)?;
        let history = match &config.history_url {
            Some(url) => Some(
                isotest_history::History::open(url)
                    .await
                    .map_err(ProducerError::History)?,
            ),
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProducerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let live = ui::live::Live::new(&config.endpoints.redis_url).map_err(|source| {
            ProducerError::Redis(ConnectError::Url {
                url: config.endpoints.redis_url.clone(),
                source,
            })
        })?;
        let state = Arc::new(http::AppState {
            store: store::Store::new(redis, ns),
            publisher: Arc::new(publisher),
            wake: Arc::new(tokio::sync::Notify::new()),
            dispatch: config.dispatch,
            limits: config.limits,
            default_deadline: config.default_deadline,
            open: config.open,
            egress: config.egress,
            uploads: tokio::sync::Semaphore::new(
                http::upload_units(config.limits.upload_buffer_bytes).max(1) as usize,
            ),
            history,
            live,
            cache: config.cache.clone(),
            public_url: config.public_url.clone(),
        });
        Ok(Producer { listener, state })
    }

    /// The address the API listens on (the real port when the config asked for 0).
    ///
    /// # Errors
    ///
    /// Returns the I/O error of a listener that has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Says at start when the API is open to anyone who can reach it (`--open`), or
    /// when it refuses everyone because no token exists yet.
    async fn warn_if_open(&self) {
        if self.state.open {
            tracing::warn!(
                "The API is open (--open): requests without a token are accepted, with no quota."
            );
            return;
        }
        match self.state.store.any_token().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "No API token exists, so every /v1 request is refused: make one with `isotest token add NAME`."
            ),
            Err(e) => {
                tracing::warn!(error = %isotest_infra::error_chain(&e), "Could not check for API tokens.")
            }
        }
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight and
    /// closes the RabbitMQ connection.
    ///
    /// # Errors
    ///
    /// Returns [`ProducerError::Serve`] when the server fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProducerError> {
        match self.listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "Producer listening."),
            Err(error) => tracing::info!(%error, "Producer listening (its address unknown)."),
        }
        self.warn_if_open().await;
        let app = http::router(Arc::clone(&self.state));
        let stop = tokio_util::sync::CancellationToken::new();
        let dispatcher = dispatch::Dispatcher::new(
            self.state.store.connection(),
            self.state.store.namespace().clone(),
            Arc::clone(&self.state.publisher),
            self.state.dispatch,
        );
        let dispatching = tokio::spawn(dispatcher.run(Arc::clone(&self.state.wake), stop.clone()));
        let live = self.state.live.clone();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Live views never end by themselves; the drain would wait for them.
                live.close();
            })
            .await
            .map_err(ProducerError::Serve);
        stop.cancel();
        let _ = dispatching.await;
        self.state.publisher.close().await;
        tracing::info!("Producer stopped.");
        served
    }
}
