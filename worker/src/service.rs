//! The distributed worker: consumes test messages with a prefetch of N, runs each in
//! its own sandbox, writes the result to Redis and only then acks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use isotest_infra::Endpoints;
use isotest_infra::amqp::{self, AmqpError, DELIVERY_LIMIT, publish};
use isotest_infra::store::{self, StoreError};
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::now_ms;
use isotest_protocol::result::TestResult;

use crate::record::{RecordError, Recorder};
use crate::run::{Runner, infrastructure_error};

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub endpoints: Endpoints,
    /// Tests run at once (the consumer's prefetch).
    pub concurrency: u16,
    /// On shutdown, how long running tests may take to finish before they are
    /// killed and their messages returned to the queue.
    pub drain_timeout: Duration,
}

/// A worker that failed to start or lost its broker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("set up consuming from RabbitMQ")]
    Consume(#[source] lapin::Error),
}

/// Why one message could not be handled.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("create the sandbox")]
    Sandbox(#[from] isotest_sandbox::SandboxError),
    #[error("publish the next attempt")]
    Publish(#[from] publish::PublishError),
}

impl HandleError {
    /// Retry (requeue, another worker may succeed) or give the test an infrastructure error now.
    fn is_transient(&self) -> bool {
        match self {
            HandleError::Record(e) => e.is_transient(),
            HandleError::Sandbox(_) | HandleError::Publish(_) => true,
        }
    }
}

/// A connected worker, ready to [`Worker::run`].
#[derive(Debug)]
pub struct Worker {
    conn: Connection,
    consume: Channel,
    shared: Arc<Shared>,
    concurrency: u16,
    drain_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    ns: Namespace,
    publish: Channel,
    recorder: Recorder,
    runner: Runner,
}

impl Worker {
    /// Connects to RabbitMQ and Redis and declares the topology.
    ///
    /// # Errors
    ///
    /// Returns [`WorkerError`] when either server cannot be reached.
    pub async fn build(config: WorkerConfig, runner: Runner) -> Result<Worker, WorkerError> {
        let ns = config.endpoints.namespace.clone();
        let redis = store::connect(&config.endpoints.redis_url).await?;
        let conn = amqp::connect(&config.endpoints.amqp_url, runner.worker_id()).await?;
        let consume = amqp::channel_with_topology(&conn, &ns).await?;
        consume
            .basic_qos(config.concurrency.max(1), BasicQosOptions::default())
            .await
            .map_err(WorkerError::Consume)?;
        let publish = conn.create_channel().await.map_err(AmqpError::Channel)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(WorkerError::Consume)?;
        Ok(Worker {
            conn,
            consume,
            shared: Arc::new(Shared {
                recorder: Recorder::new(redis, ns.clone()),
                ns,
                publish,
                runner,
            }),
            concurrency: config.concurrency.max(1),
            drain_timeout: config.drain_timeout,
        })
    }

    /// Consumes until `shutdown` completes, then stops taking work, lets running tests
    /// finish for up to the drain timeout, and returns what is left to the queue.
    ///
    /// # Errors
    ///
    /// Returns [`WorkerError::Consume`] when consuming cannot start or the broker goes away.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let tag = self.shared.runner.worker_id().to_owned();
        let mut consumer = self
            .consume
            .basic_consume(
                self.shared.ns.tests_queue().as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::Consume)?;
        info!(worker = %tag, concurrency = self.concurrency, queue = %self.shared.ns.tests_queue(), "Worker is consuming.");
        let tracker = TaskTracker::new();
        tokio::pin!(shutdown);
        let outcome = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let shared = self.shared.clone();
                        tracker.spawn(async move { shared.handle(delivery).await });
                    }
                    Some(Err(e)) => break Err(WorkerError::Consume(e)),
                    None => break Ok(()),
                },
            }
        };
        // Stop taking work first, so nothing new arrives while the running tests finish.
        let _ = self
            .consume
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(timeout = ?self.drain_timeout, "Running tests did not finish in time; returning their messages to the queue.");
        }
        // Closing the connection returns every unacked message to the queue; tests still
        // running are killed when their tasks are dropped with the runtime.
        let _ = self.conn.close(200, "worker shutting down".into()).await;
        info!(worker = %tag, "Worker stopped.");
        outcome
    }
}

impl Shared {
    async fn handle(&self, delivery: Delivery) {
        let taken_at_ms = now_ms();
        let msg = match TestMessage::from_bytes(&delivery.data) {
            Ok(msg) => msg,
            Err(e) => {
                // Not something any worker can run: straight to the dead-letter queue.
                error!(error = %e, bytes = delivery.data.len(), "Rejecting a message that is not a test message.");
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
        };
        let span = info_span!("test", suite_id = %msg.suite_id, test = %msg.test.name, attempt = msg.attempt);
        async {
            match self.process(&msg, taken_at_ms).await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) if e.is_transient() && deliveries(&delivery) + 1 < DELIVERY_LIMIT as u64 => {
                    warn!(error = %error_chain(&e), "Returning the test to the queue after an infrastructure failure.");
                    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
                Err(e) => {
                    // Permanent, or the last delivery RabbitMQ would make: give the test a
                    // verdict that names the infrastructure instead of losing it.
                    let why = error_chain(&e);
                    error!(error = %why, "Recording an infrastructure error for the test.");
                    let result = infrastructure_error(&msg, self.runner.worker_id(), &why);
                    match self.recorder.record(&result).await {
                        Ok(_) => {
                            let _ = delivery.ack(BasicAckOptions::default()).await;
                        }
                        Err(e) => {
                            warn!(error = %error_chain(&e), "Could not record the error either; returning the message.");
                            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn process(&self, msg: &TestMessage, taken_at_ms: u64) -> Result<(), HandleError> {
        if self.recorder.is_closed(&msg.suite_id).await? {
            debug!("Suite already closed; dropping the message.");
            return Ok(());
        }
        if self
            .recorder
            .is_recorded(&msg.suite_id, &msg.test.name, msg.attempt)
            .await?
        {
            // A redelivery of an attempt whose result is already in Redis (its worker died
            // before acking). The result stands; make sure its retry, if any, exists.
            info!("Attempt already recorded; not running it again.");
            return Ok(());
        }
        let workspace = match &msg.workspace {
            Some(reference) => Some(self.recorder.workspace(reference).await?),
            None => None,
        };
        let result: TestResult = self.runner.run(msg, workspace, taken_at_ms).await?;
        info!(
            status = result.status.as_str(),
            duration_ms = result.duration_ms,
            "Test finished."
        );
        self.recorder.record(&result).await?;
        if !result.is_final
            && let Some(next) = msg.next_attempt(now_ms())
        {
            publish::publish_confirmed(&self.publish, &self.ns, &next).await?;
        }
        Ok(())
    }
}

/// How many times RabbitMQ delivered this message before (quorum queues count).
fn deliveries(delivery: &Delivery) -> u64 {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match count {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
