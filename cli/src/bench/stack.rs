//! The whole distributed pipeline in this process, for the benchmarks: a fresh
//! namespace, `workers` workers, an aggregator and a producer (with its dispatcher) on
//! a free port; stopped and its queues and keys removed at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use isotest_infra::Endpoints;
use isotest_protocol::names::Namespace;
use isotest_sandbox::Sandboxer;
use isotest_worker::{Runner, Worker, WorkerConfig};

use crate::args::SandboxArgs;
use crate::exit::Failure;

/// The running services of one benchmark.
pub struct Stack {
    /// The endpoints, with the benchmark's own namespace.
    pub endpoints: Endpoints,
    /// The producer's base URL.
    pub base: String,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl Stack {
    /// Starts the services in a fresh namespace.
    ///
    /// # Errors
    ///
    /// Returns a [`Failure`] when a service cannot start.
    pub async fn start(
        endpoints: &Endpoints,
        workers: u16,
        concurrency: u16,
        sandbox: &SandboxArgs,
    ) -> Result<Stack, Failure> {
        let ns = Namespace::new(&format!(
            "bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ))
        .map_err(|e| Failure::Service(e.into()))?;
        let endpoints = Endpoints {
            namespace: ns.clone(),
            ..endpoints.clone()
        };
        let stop = CancellationToken::new();
        let sandboxer = Arc::new(Sandboxer::new(sandbox.sandbox_config())?);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..workers {
            let runner_config = sandbox.runner_config(format!("bench-worker-{i}"), concurrency);
            let environments =
                isotest_worker::cache::identities(&sandbox.sandbox_config(), &runner_config);
            let runner = Runner::new(sandboxer.clone(), runner_config);
            let config = WorkerConfig {
                endpoints: endpoints.clone(),
                concurrency,
                drain_timeout: Duration::from_secs(10),
                max_test_timeout: isotest_worker::service::DEFAULT_MAX_TEST_TIMEOUT,
                suite_output_bytes: isotest_infra::output_budget::DEFAULT_SUITE_OUTPUT_BYTES,
                environments,
            };
            let worker = Worker::build(config, runner)
                .await
                .context("start a worker")?;
            let stop = stop.clone();
            tasks.spawn(async move {
                worker
                    .run(stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        let aggregator = isotest_aggregator::service::Aggregator::build(
            isotest_aggregator::service::AggregatorConfig::new(
                endpoints.redis_url.clone(),
                ns.clone(),
                "bench-aggregator",
            ),
        )
        .await
        .context("start the aggregator")?;
        tasks.spawn({
            let stop = stop.clone();
            async move {
                aggregator
                    .run(stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
        let mut config = isotest_producer::Config::new(
            endpoints.clone(),
            "127.0.0.1:0"
                .parse()
                .map_err(|e: std::net::AddrParseError| Failure::Service(e.into()))?,
        );
        // The bench's own producer, on loopback, for the bench's own client.
        config.open = true;
        let producer = isotest_producer::Producer::build(config)
            .await
            .context("start the producer")?;
        let base = format!(
            "http://{}",
            producer.local_addr().context("producer address")?
        );
        tasks.spawn({
            let stop = stop.clone();
            async move {
                producer
                    .run(stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
        Ok(Stack {
            endpoints,
            base,
            stop,
            tasks,
        })
    }

    /// Stops every service and removes the namespace's queues and keys.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let _ = cleanup(&self.endpoints).await;
    }
}

async fn cleanup(endpoints: &Endpoints) -> anyhow::Result<()> {
    let conn = isotest_infra::amqp::connect(&endpoints.amqp_url, "isotest-bench-cleanup").await?;
    let channel = conn.create_channel().await?;
    let ns = &endpoints.namespace;
    for queue in [ns.tests_queue(), ns.dead_letter_queue()] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            ns.dead_letter_exchange().as_str().into(),
            Default::default(),
        )
        .await;
    let _ = conn.close(200, "".into()).await;
    let mut redis = isotest_infra::store::connect(&endpoints.redis_url).await?;
    let keys: Vec<String> = redis.keys(format!("{ns}:*")).await?;
    for chunk in keys.chunks(1000) {
        let _: () = redis.del(chunk).await?;
    }
    Ok(())
}
