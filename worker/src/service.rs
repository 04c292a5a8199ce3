//! The distributed worker: consumes test messages with a prefetch of N, runs each in
//! its own sandbox, writes the result to Redis and only then acks. When RabbitMQ goes
//! away its consumer ([`isotest_infra::amqp::consume`]) reconnects with backoff,
//! declares the topology again and carries on; the messages it held are redelivered by
//! the broker, and the idempotent write makes a second run of the same attempt harmless.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use isotest_infra::Endpoints;
use isotest_infra::amqp::consume::{Consumer, ConsumerConfig, delivery_count};
use isotest_infra::amqp::publish::{self, PublishError};
use isotest_infra::amqp::{self, AmqpError, DELIVERY_LIMIT};
use isotest_infra::metrics::{self, GaugeGuard, StatusLabels, TestLabels};
use isotest_infra::schedule::Start;
use isotest_infra::store::{self, StoreError};
use isotest_protocol::duration;
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::now_ms;
use isotest_protocol::result::TestResult;
use isotest_sandbox::SandboxError;

use crate::prepare::Prepared;
use crate::record::{RecordError, Recorded, Recorder};
use crate::run::{Runner, infrastructure_error};
use isotest_infra::error_chain;

/// RabbitMQ's default `consumer_timeout` (30 minutes) closes the channel of a consumer
/// that holds a message unacked for longer; a test must finish well before that.
pub const DEFAULT_MAX_TEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// How often a running test checks whether its suite was cancelled (or otherwise closed).
const CLOSED_POLL: Duration = Duration::from_secs(1);

/// This service's name in `/readyz`: ready while consuming.
const READY_PART: &str = "worker";

/// The pause before returning a message after an infrastructure failure, so that a short
/// Redis outage does not use up the message's deliveries in a few milliseconds.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub endpoints: Endpoints,
    /// Tests run at once (the consumer's prefetch).
    pub concurrency: u16,
    /// On shutdown, how long running tests may take to finish before they are
    /// killed and their messages returned to the queue.
    pub drain_timeout: Duration,
    /// The longest test timeout this worker accepts: a longer test gets an `error`
    /// verdict instead of running past RabbitMQ's `consumer_timeout`, which would close
    /// the channel and redeliver the message forever.
    pub max_test_timeout: Duration,
    /// The most output bytes (as stored in JSON) all results of one suite may hold in
    /// Redis; a result past it is cut, with a marker.
    pub suite_output_bytes: u64,
    /// The identity of each environment this worker offers
    /// ([`crate::cache::identities`]): advertised in Redis for the producer's result
    /// cache keys, and checked before a result goes into the cache.
    pub environments: std::collections::BTreeMap<String, String>,
}

/// A worker that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why one message could not be handled. The variant decides what happens to it.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("create the sandbox")]
    Sandbox(#[source] SandboxError),
    #[error("publish the next attempt")]
    Publish(#[from] PublishError),
    /// The test itself cannot run as given (a bundle that escapes its directory, an
    /// unknown environment, a timeout too long): its verdict, not a retry.
    #[error("{0}")]
    Input(String),
}

impl HandleError {
    /// Input errors of the sandbox are the test's; the rest are the host's.
    fn from_sandbox(e: SandboxError) -> HandleError {
        match crate::run::input_problem(&e) {
            Some(reason) => HandleError::Input(reason),
            None => HandleError::Sandbox(e),
        }
    }

    /// Retry (requeue, another worker may succeed) or give the test an infrastructure error now.
    fn is_transient(&self) -> bool {
        match self {
            HandleError::Record(e) => e.is_transient(),
            HandleError::Publish(e) => e.is_transient(),
            HandleError::Sandbox(_) => true,
            HandleError::Input(_) => false,
        }
    }
}

/// A connected worker, ready to [`Worker::run`].
#[derive(Debug)]
pub struct Worker {
    consumer: Consumer,
    shared: Arc<Shared>,
    drain_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    ns: Namespace,
    recorder: Recorder,
    runner: Runner,
    /// Tests running at once, across sessions: after a reconnection, the new
    /// consumer's deliveries wait while the old session's tests finish.
    permits: Semaphore,
    /// The slots the dispatcher counts for this worker (its concurrency).
    slots: u16,
    max_test_timeout: Duration,
    environments: std::collections::BTreeMap<String, String>,
}

impl Worker {
    /// Connects to RabbitMQ and Redis and declares the topology.
    ///
    /// # Errors
    ///
    /// Returns [`WorkerError`] when either server cannot be reached: a worker that
    /// never started should say so, while one that ran reconnects.
    pub async fn build(config: WorkerConfig, runner: Runner) -> Result<Worker, WorkerError> {
        let ns = config.endpoints.namespace.clone();
        let concurrency = config.concurrency.max(1);
        let redis = store::connect(&config.endpoints.redis_url).await?;
        let consumer = Consumer::connect(ConsumerConfig {
            url: config.endpoints.amqp_url.clone(),
            queue: ns.tests_queue(),
            connection_name: amqp::connection_name(runner.worker_id(), &ns),
            tag: runner.worker_id().to_owned(),
            prefetch: concurrency,
            namespace: ns.clone(),
            ready_part: Some(READY_PART),
        })
        .await?;
        Ok(Worker {
            consumer,
            shared: Arc::new(Shared {
                recorder: Recorder::new(redis, ns.clone(), config.suite_output_bytes),
                ns,
                runner,
                permits: Semaphore::new(usize::from(concurrency)),
                slots: concurrency,
                max_test_timeout: config.max_test_timeout,
                environments: config.environments,
            }),
            drain_timeout: config.drain_timeout,
        })
    }

    /// Consumes until `shutdown` completes, then stops taking work, lets running tests
    /// finish for up to the drain timeout, and returns what is left to the queue. A lost
    /// connection is not an error: the worker reconnects with backoff until shutdown.
    ///
    /// # Errors
    ///
    /// None at present; the `Result` leaves room for failures retrying cannot mend.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::clone(&self.shared);
        let registering = tokio::spawn(Arc::clone(&self.shared).register(token.clone()));
        // Each delivery runs on the tracker; the prefetch and the permits bound how many.
        let sessions = self.consumer.run(&token, |delivery, session| {
            let shared = Arc::clone(&shared);
            let publish = session.publisher().clone();
            tracker.spawn(async move { shared.handle(delivery, &publish).await });
            std::future::ready(())
        });
        let session = {
            tokio::pin!(sessions);
            tokio::select! {
                session = &mut sessions => session,
                () = shutdown => {
                    token.cancel();
                    sessions.await
                }
            }
        };
        let tag = self.shared.runner.worker_id();
        token.cancel();
        let _ = registering.await;
        // Stop taking work first, so nothing new arrives while the running tests finish.
        if let Some(session) = &session {
            session.stop_consuming(tag).await;
        }
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(timeout = ?self.drain_timeout, "Running tests did not finish in time; returning their messages to the queue.");
        }
        // Closing the connection returns every unacked message to the queue; tests still
        // running are killed when their tasks are dropped with the runtime.
        if let Some(session) = session {
            session.close("worker shutting down").await;
        }
        info!(worker = %tag, "Worker stopped.");
        Ok(())
    }
}

impl Shared {
    /// Keeps this worker's slots registered for the dispatcher until `stop`, then
    /// removes them, so the queue is kept as long as the live workers need.
    async fn register(self: Arc<Self>, stop: CancellationToken) {
        let worker = self.runner.worker_id();
        let every = isotest_infra::schedule::SLOTS_TTL / 3;
        loop {
            if let Err(e) = self.recorder.register_slots(worker, Some(self.slots)).await {
                debug!(error = %error_chain(&e), "Could not register the worker's slots.");
            }
            if let Err(e) = self.recorder.advertise(&self.environments).await {
                debug!(error = %error_chain(&e), "Could not advertise the worker's environments.");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => break,
            }
        }
        let _ = self.recorder.register_slots(worker, None).await;
    }

    async fn handle(&self, delivery: Delivery, publish: &Channel) {
        // Held until the message is settled: unacked messages, as RabbitMQ counts them.
        let _in_flight = GaugeGuard::inc(&metrics::worker().tests_in_flight);
        if delivery.redelivered || delivery_count(&delivery) > 0 {
            metrics::worker().redeliveries.inc();
        }
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        let taken_at_ms = now_ms();
        let msg = match TestMessage::from_bytes(&delivery.data) {
            Ok(msg) => msg,
            Err(e) => {
                // Not something any worker can run: straight to the dead-letter queue,
                // where the aggregator logs it.
                error!(error = %error_chain(&e), bytes = delivery.data.len(), "Rejecting a message that is not a test message.");
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
        };
        let span = info_span!("test", suite_id = %msg.suite_id, test = %msg.test.name, attempt = msg.attempt);
        async {
            let verdict = match self.process(&msg, taken_at_ms, publish).await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    return;
                }
                Err(HandleError::Input(why)) => {
                    warn!(reason = %why, "The test cannot run as given; recording an error.");
                    input_error(&msg, self.runner.worker_id(), &why)
                }
                Err(e) if e.is_transient() && delivery_count(&delivery) + 1 < DELIVERY_LIMIT as u64 => {
                    warn!(error = %error_chain(&e), "Returning the test to the queue after an infrastructure failure.");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    return;
                }
                Err(e) => {
                    // Permanent, or the last delivery RabbitMQ would make: give the test a
                    // verdict that names the infrastructure instead of losing it.
                    let why = error_chain(&e);
                    error!(error = %why, "Recording an infrastructure error for the test.");
                    infrastructure_error(&msg, self.runner.worker_id(), &why)
                }
            };
            match self.recorder.record(&verdict, None).await {
                Ok(written) => {
                    count_written(&verdict, written);
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    // On its last delivery the message goes to the dead-letter queue,
                    // whose consumer records the error once Redis is back.
                    warn!(error = %error_chain(&e), "Could not record the error either; returning the message.");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn process(
        &self,
        msg: &TestMessage,
        taken_at_ms: u64,
        publish: &Channel,
    ) -> Result<(), HandleError> {
        // A dispatched copy passes the scheduler's fence, which also says whether the
        // suite is closed (one round trip): a copy from a dispatcher that died before
        // confirming it was dispatched again, and only the current copy may run.
        let closed = match &msg.dispatch {
            Some(token) => match self.recorder.start(&msg.suite_id, msg.index, token).await? {
                Start::Run => false,
                Start::Closed => true,
                Start::Stale => {
                    info!("This copy of the test was dispatched again; dropping it.");
                    return Ok(());
                }
            },
            None => self.recorder.is_closed(&msg.suite_id).await?,
        };
        if closed {
            debug!("Suite already closed; dropping the message.");
            return Ok(());
        }
        match self
            .recorder
            .recorded_attempt(&msg.suite_id, &msg.test.name, msg.attempt)
            .await?
        {
            // A redelivery of an attempt whose result is already in Redis (its worker
            // died, or lost RabbitMQ, before acking). The result stands; make sure its
            // retry exists (a duplicate retry is harmless: first writer wins).
            Some(Recorded::Final) => {
                info!("Attempt already recorded; not running it again.");
                return Ok(());
            }
            Some(Recorded::Retryable) => {
                info!("Attempt already recorded; publishing its retry again.");
                if let Some(next) = msg.next_attempt(now_ms()) {
                    publish::publish_confirmed(publish, &self.ns, &[next]).await?;
                }
                return Ok(());
            }
            None => {}
        }
        if msg.test.timeout() > self.max_test_timeout {
            return Err(HandleError::Input(format!(
                "timeout of {} is longer than this worker's maximum of {} (--max-test-timeout, kept below RabbitMQ's consumer_timeout)",
                duration::format(msg.test.timeout()),
                duration::format(self.max_test_timeout)
            )));
        }
        let workspace = match &msg.workspace {
            Some(reference) => Some(self.recorder.workspace(reference).await?),
            None => None,
        };
        let prepared = match &msg.test.artifact {
            Some(reference) => Some(self.prepared(reference).await?),
            None => None,
        };
        // Dropping the run kills its sandbox: a cancelled suite's test stops within
        // about a poll interval.
        let result: TestResult = tokio::select! {
            result = self.runner.run_from(msg, workspace, prepared.as_deref(), taken_at_ms) => result.map_err(HandleError::from_sandbox)?,
            () = self.closed(&msg.suite_id) => {
                info!("Suite closed while the test ran (cancelled or past its deadline); killed the test.");
                return Ok(());
            }
        };
        info!(
            status = result.status.as_str(),
            duration_ms = result.duration_ms,
            "Test finished."
        );
        observe_run(msg, &result);
        let keep = crate::cache::keep(&self.ns, msg, &result, &self.environments);
        let written = self.recorder.record(&result, keep.as_ref()).await?;
        count_written(&result, written);
        // Only the attempt's first writer publishes its retry; a concurrent duplicate
        // run (a redelivery while this one ran) must not fork the retries.
        if written
            && !result.is_final
            && let Some(next) = msg.next_attempt(now_ms())
        {
            publish::publish_confirmed(publish, &self.ns, &[next]).await?;
        }
        Ok(())
    }

    /// The prepared build a test runs from, unpacked once per worker from its blob.
    async fn prepared(&self, reference: &str) -> Result<Arc<Prepared>, HandleError> {
        // Redis going away is worth a retry; a missing or broken build is the suite's.
        let transient = std::sync::Mutex::new(None);
        let fetched = self
            .runner
            .artifacts()
            .get(reference, || async {
                self.recorder.blob(reference).await.map_err(|e| {
                    let why = isotest_infra::error_chain(&e);
                    if e.is_transient() {
                        *transient
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    }
                    why
                })
            })
            .await;
        match fetched {
            Ok(prepared) => Ok(prepared),
            Err(e) => match transient
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                Some(redis) => Err(HandleError::Record(redis)),
                None => Err(HandleError::Input(format!(
                    "its prepared build cannot be used: {}",
                    isotest_infra::error_chain(&e)
                ))),
            },
        }
    }

    /// Completes once the suite has a report; Redis failures only delay the check.
    async fn closed(&self, suite_id: &str) {
        loop {
            tokio::time::sleep(CLOSED_POLL).await;
            if let Ok(true) = self.recorder.is_closed(suite_id).await {
                return;
            }
        }
    }
}

/// The duration and sandbox start of an attempt that ran.
fn observe_run(msg: &TestMessage, result: &TestResult) {
    let worker = metrics::worker();
    let labels = TestLabels {
        framework: msg.test.framework.as_str(),
        status: result.status.as_str(),
    };
    worker
        .test_duration
        .get_or_create(&labels)
        .observe(result.duration_ms as f64 / 1e3);
    worker
        .sandbox_start
        .observe(result.timings.sandbox_start_us as f64 / 1e6);
}

/// Counts a result this worker wrote first (a duplicate write of an attempt is not one).
fn count_written(result: &TestResult, written: bool) {
    if written {
        metrics::results_written()
            .get_or_create(&StatusLabels {
                status: result.status.as_str(),
            })
            .inc();
    }
}

/// The `error` result of a test that cannot run as given: its reason is the test's
/// problem, not the infrastructure's.
fn input_error(msg: &TestMessage, worker_id: &str, why: &str) -> TestResult {
    crate::run::error_verdict(msg, worker_id, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use isotest_sandbox::bundle::BundleError;

    #[test]
    fn input_errors_of_the_sandbox_are_verdicts_not_retries() {
        let cases: Vec<(SandboxError, bool)> = vec![
            (
                SandboxError::Bundle(BundleError::BadPath("../etc/passwd".into())),
                false,
            ),
            (SandboxError::UnknownEnvironment("py99".into()), false),
            (SandboxError::InvalidSpec("empty command".into()), false),
            (SandboxError::LauncherGone, true),
        ];
        for (error, transient) in cases {
            let text = error.to_string();
            let handled = HandleError::from_sandbox(error);
            assert_eq!(handled.is_transient(), transient, "{text}");
            assert_eq!(
                matches!(handled, HandleError::Input(_)),
                !transient,
                "{text}"
            );
        }
        let bundle = HandleError::from_sandbox(SandboxError::Bundle(BundleError::BadPath(
            "../etc/passwd".into(),
        )));
        assert_eq!(
            bundle.to_string(),
            "workspace refused: unpack workspace bundle: accept entry path \"../etc/passwd\""
        );
    }
}
