//! The long-running services, each run until Ctrl-C or SIGTERM: `producer`,
//! `worker`, `aggregator`, and `up` (all three in one process).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use isotest_infra::Endpoints;
use isotest_infra::metrics::MetricsServer;
use isotest_sandbox::Sandboxer;
use isotest_worker::{Runner, Worker, WorkerConfig};

use crate::args::{AGGREGATOR_METRICS, UP_METRICS_PORT, WORKER_METRICS};
use crate::args::{
    AggregatorArgs, ProducerArgs, RetentionArgs, UpArgs, WebhookArgs, WorkerArgs, WorkerSettings,
};
use crate::exit::Failure;

/// Serves the producer's HTTP API.
///
/// # Errors
///
/// Returns [`Failure::Unreachable`] when RabbitMQ or Redis cannot be reached at start.
pub async fn producer(args: ProducerArgs) -> Result<(), Failure> {
    let producer = isotest_producer::Producer::build(args.into())
        .await
        .map_err(unreachable)?;
    producer
        .run(isotest_infra::shutdown::signal())
        .await
        .context("serve the producer API")?;
    Ok(())
}

/// Runs a worker.
///
/// # Errors
///
/// Returns [`Failure::Isolation`] when this host cannot make sandboxes, and
/// [`Failure::Unreachable`] when RabbitMQ or Redis cannot be reached at start.
pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    let _metrics = serve_metrics(args.metrics.listen_or(WORKER_METRICS), None).await?;
    let worker = build_worker(&args.endpoints.endpoints(), &args.worker).await?;
    worker
        .run(isotest_infra::shutdown::signal())
        .await
        .context("consume test messages")?;
    Ok(())
}

/// Runs an aggregator.
///
/// # Errors
///
/// Returns [`Failure::Unreachable`] when Redis cannot be reached at start.
pub async fn aggregator(args: AggregatorArgs) -> Result<(), Failure> {
    let endpoints = args.endpoints.endpoints();
    let queues = (&endpoints, args.queues.queue_poll_interval);
    let listen = args.metrics.listen_or(AGGREGATOR_METRICS);
    let _metrics = serve_metrics(listen, Some(queues)).await?;
    let history = history_sink(args.history_url.as_deref(), &args.retention).await?;
    run_aggregator(
        endpoints,
        args.webhooks,
        args.egress.policy(),
        history,
        isotest_infra::shutdown::signal(),
    )
    .await
}

/// The aggregator's history store, opened (and migrated) now, when a URL is given.
async fn history_sink(
    url: Option<&str>,
    retention: &RetentionArgs,
) -> Result<Option<isotest_aggregator::HistorySink>, Failure> {
    let Some(url) = url else {
        return Ok(None);
    };
    let history = isotest_history::History::open(url)
        .await
        .map_err(crate::history::store_failure)?;
    Ok(Some(isotest_aggregator::HistorySink {
        history,
        retention: retention.retention,
        auto_quarantine: retention.auto_quarantine_above,
    }))
}

/// Runs the producer, an aggregator and a worker in one process until a signal.
///
/// # Errors
///
/// As [`producer`], [`worker`] and [`aggregator`]; the first service to fail stops the others.
pub async fn up(args: UpArgs) -> Result<(), Failure> {
    let endpoints = args.producer.endpoints.endpoints();
    let queues = (&endpoints, args.queues.queue_poll_interval);
    let _metrics = serve_metrics(up_metrics_addr(&args), Some(queues)).await?;
    // One set of `--allow-callback-host` for both ends: submission and delivery.
    let egress = args.producer.egress.policy();
    let history = history_sink(args.producer.history_url.as_deref(), &args.retention).await?;
    let worker = build_worker(&endpoints, &args.worker).await?;
    let producer = isotest_producer::Producer::build(up_producer(args.producer))
        .await
        .map_err(unreachable)?;
    let stop = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        async move {
            isotest_infra::shutdown::signal().await;
            stop.cancel();
        }
    };
    let stopped = |token: &CancellationToken| token.clone().cancelled_owned();
    let mut services = tokio::task::JoinSet::new();
    services.spawn({
        let done = stopped(&stop);
        async move {
            producer
                .run(done)
                .await
                .context("serve the producer API")
                .map_err(Failure::from)
        }
    });
    services.spawn({
        let done = stopped(&stop);
        async move {
            worker
                .run(done)
                .await
                .context("consume test messages")
                .map_err(Failure::from)
        }
    });
    services.spawn(run_aggregator(
        endpoints,
        args.webhooks,
        egress,
        history,
        stopped(&stop),
    ));
    tokio::spawn(signal);
    // Whichever service ends first (a signal, or a failure) takes the others down with it.
    let mut first: Result<(), Failure> = Ok(());
    while let Some(ended) = services.join_next().await {
        stop.cancel();
        let ended =
            ended.map_err(|e| Failure::Service(anyhow::Error::new(e).context("a service task")));
        if first.is_ok() {
            first = ended.and_then(|r| r);
        }
    }
    first
}

/// The producer of `isotest up`: open by default when it listens on a loopback address
/// (one machine, one user: the quick start), closed like any producer otherwise or with
/// `--require-token`.
fn up_producer(args: ProducerArgs) -> isotest_producer::Config {
    let open_by_default = !args.require_token && args.listen.ip().is_loopback();
    let mut config = isotest_producer::Config::from(args);
    config.open |= open_by_default;
    config
}

/// Where `isotest up` serves its metrics: as asked, or its own port on the address its
/// API listens on (so `up --listen 127.0.0.1:8080` exposes nothing on other interfaces).
pub fn up_metrics_addr(args: &UpArgs) -> SocketAddr {
    args.metrics
        .listen_or(SocketAddr::new(args.producer.listen.ip(), UP_METRICS_PORT))
}

async fn build_worker(endpoints: &Endpoints, settings: &WorkerSettings) -> Result<Worker, Failure> {
    let sandbox = &settings.sandbox;
    let sandboxer = Sandboxer::new(sandbox.sandbox_config())?;
    if sandboxer.isolation().missing.is_empty() {
        tracing::info!(isolation = %sandboxer.isolation(), "Sandbox ready.");
    } else {
        tracing::warn!(isolation = %sandboxer.isolation(), "Running with weaker isolation (--allow-weaker-isolation).");
    }
    let runner_config =
        sandbox.runner_config(isotest_infra::process_id("worker"), settings.concurrency);
    let sandbox_config = sandbox.sandbox_config();
    let environments = tokio::task::spawn_blocking({
        let runner_config = runner_config.clone();
        move || isotest_worker::cache::identities(&sandbox_config, &runner_config)
    })
    .await
    .unwrap_or_default();
    let runner = Runner::new(Arc::new(sandboxer), runner_config);
    let config = WorkerConfig {
        endpoints: endpoints.clone(),
        concurrency: settings.concurrency,
        drain_timeout: settings.drain_timeout,
        max_test_timeout: settings.max_test_timeout,
        suite_output_bytes: settings.suite_output_bytes,
        environments,
    };
    Worker::build(config, runner).await.map_err(unreachable)
}

async fn run_aggregator(
    endpoints: Endpoints,
    webhooks: WebhookArgs,
    egress: isotest_infra::egress::EgressPolicy,
    history: Option<isotest_aggregator::HistorySink>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    let mut config = isotest_aggregator::service::AggregatorConfig::new(
        endpoints.redis_url.clone(),
        endpoints.namespace.clone(),
        isotest_infra::process_id("aggregator"),
    );
    config.amqp_url = Some(endpoints.amqp_url.clone());
    config.history = history;
    config.webhooks.secret = webhooks
        .webhook_secret
        .and_then(isotest_aggregator::WebhookSecret::new);
    config.webhooks.egress = egress;
    let aggregator = isotest_aggregator::service::Aggregator::build(config)
        .await
        .map_err(unreachable)?;
    aggregator
        .run(shutdown)
        .await
        .context("aggregate results")?;
    Ok(())
}

/// The metrics server (and queue watcher) of a service, stopped when dropped.
struct MetricsTask {
    stop: CancellationToken,
}

impl Drop for MetricsTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds the metrics server before the service starts (a taken address fails the start,
/// as a taken API port does) and serves `/metrics`, `/healthz` and `/readyz` until the
/// returned task is dropped. With `queues`, this process also reads the depth of the
/// namespace's queues every interval, for every replica's /metrics to show.
async fn serve_metrics(
    listen: SocketAddr,
    queues: Option<(&Endpoints, Duration)>,
) -> Result<MetricsTask, Failure> {
    let server = MetricsServer::bind(listen).await.map_err(unreachable)?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stopped = stop.clone().cancelled_owned();
        async move {
            if let Err(error) = server.run(stopped).await {
                tracing::warn!(error = %isotest_infra::error_chain(&error), "The metrics server failed.");
            }
        }
    });
    if let Some((endpoints, interval)) = queues {
        tokio::spawn(isotest_infra::metrics::watch_queues(
            endpoints.amqp_url.clone(),
            isotest_infra::process_id("queue-watcher"),
            endpoints.namespace.clone(),
            interval,
            stop.clone(),
        ));
    }
    Ok(MetricsTask { stop })
}

/// A service that could not reach its servers at start: one line, exit code 2.
fn unreachable(e: impl std::error::Error) -> Failure {
    Failure::Unreachable(isotest_infra::error_chain(&e))
}
