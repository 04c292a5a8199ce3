//! The signal that starts a graceful shutdown: Ctrl-C or SIGTERM.

/// Completes on the first Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Received Ctrl-C, shutting down."),
        () = terminate => tracing::info!("Received SIGTERM, shutting down."),
    }
}
