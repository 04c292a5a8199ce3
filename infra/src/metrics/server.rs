//! The HTTP server of `/metrics`, `/healthz` and `/readyz`, and the readiness of this
//! process's parts that `/readyz` reports.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{CONTENT_TYPE, encode};

/// `GET /metrics`: the registry in OpenMetrics text.
pub async fn render() -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode()).into_response()
}

/// Which parts of this process are ready, for `/readyz`. A service marks itself
/// unready when it starts and ready once connected; `isotest up` has several parts,
/// and is ready only when all are.
#[derive(Debug, Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<&'static str, bool>>,
}

impl Readiness {
    pub fn set(&self, part: &'static str, ready: bool) {
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(part, ready);
    }

    /// The parts not ready; `Err` with nothing named when no part has registered yet.
    ///
    /// # Errors
    ///
    /// Returns the names of the parts that are not ready.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let unready: Vec<&'static str> = parts
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(part, _)| *part)
            .collect();
        if parts.is_empty() || !unready.is_empty() {
            Err(unready)
        } else {
            Ok(())
        }
    }
}

/// This process's readiness.
pub fn readiness() -> &'static Readiness {
    static READINESS: LazyLock<Readiness> = LazyLock::new(Readiness::default);
    &READINESS
}

async fn readyz() -> Response {
    match readiness().check() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(parts) if parts.is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting").into_response()
        }
        Err(parts) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", parts.join(", ")),
        )
            .into_response(),
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

/// A metrics server that failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "could not listen for metrics on {addr} (give another with --metrics-listen or ISOTEST_METRICS_LISTEN)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server failed")]
    Serve(#[source] std::io::Error),
}

/// The HTTP server of `/metrics`, `/healthz` and `/readyz`, bound and ready to run.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds the listener (port 0 picks a free port; see [`MetricsServer::local_addr`]).
    ///
    /// # Errors
    ///
    /// Returns [`MetricsError::Bind`] when the address is taken or not ours.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of a listener without a local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// Returns [`MetricsError::Serve`] when the server fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsError> {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
        }
        axum::serve(self.listener, router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(MetricsError::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_part() {
        let readiness = Readiness::default();
        assert_eq!(readiness.check(), Err(vec![]), "nothing registered yet");
        readiness.set("worker", false);
        readiness.set("aggregator", true);
        assert_eq!(readiness.check(), Err(vec!["worker"]));
        readiness.set("worker", true);
        assert_eq!(readiness.check(), Ok(()));
    }
}
