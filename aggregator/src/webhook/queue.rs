//! The webhook sender of one aggregator: deliveries queued in Redis with the report that
//! asks for them, claimed under a lease, delivered on the sender's task tracker and settled
//! (taken off the queue, or given back on shutdown); the sweep takes over the queued ones
//! whose lease ran out.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use isotest_protocol::api::{SuiteFinished, SuiteRecord};
use isotest_protocol::names::Namespace;
use isotest_protocol::report::Report;

use super::deliver::{Guarded, deliver, duration_ms};
use super::{Delivery, WebhookConfig, event};

/// The webhook sender of one aggregator: its HTTP client, its deliveries' task
/// tracker and its Redis connection.
pub(crate) struct Webhooks {
    config: WebhookConfig,
    ns: Namespace,
    client: reqwest::Client,
    redis: ConnectionManager,
    tracker: TaskTracker,
    /// Cancelled when shutdown's grace has passed: deliveries still running give up.
    abandon: CancellationToken,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Claims a queued delivery that is due: moves its next try `lease` ms into the
/// future, so no other aggregator takes it meanwhile. 1 if claimed, 0 if not due (or
/// gone).
const CLAIM: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
";

impl Webhooks {
    /// A sender for the namespace `ns`.
    ///
    /// # Errors
    ///
    /// Returns the [`reqwest::Error`] when the HTTP client cannot be made.
    pub(crate) fn new(
        config: WebhookConfig,
        ns: Namespace,
        redis: ConnectionManager,
    ) -> Result<Webhooks, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A signed POST is not re-sent to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            // Names resolve through the egress check, and the client connects only to
            // the addresses it passed: a name rebound to an internal address after the
            // check gains nothing. No proxy, which would resolve the name itself.
            .dns_resolver(Guarded(config.egress.clone()))
            .no_proxy()
            .user_agent(concat!("isotest/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhooks {
            config,
            ns,
            client,
            redis,
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
        })
    }

    /// Logs, once at start, whether bodies are signed.
    pub(crate) fn log_start(&self) {
        if self.config.secret.is_none() {
            tracing::warn!(
                "No --webhook-secret (ISOTEST_WEBHOOK_SECRET): webhooks are delivered unsigned."
            );
        }
    }

    /// When a delivery claimed now is next up for grabs: the score under which the
    /// aggregator storing a report queues its webhook, claimed by itself.
    pub(crate) fn claimed_until_ms(&self) -> u64 {
        isotest_protocol::now_ms().saturating_add(duration_ms(self.config.lease))
    }

    /// Delivers the webhook of a report this aggregator just stored (and claimed), on
    /// the task tracker: the caller does not wait.
    pub(crate) fn spawn(&self, report: &Report, callback_url: &str, public_url: Option<&str>) {
        let event = event(report, public_url);
        let url = callback_url.to_owned();
        let span = tracing::info_span!("webhook", suite_id = %report.suite_id);
        let this = self.task_handle();
        self.tracker
            .spawn(async move { this.deliver_and_settle(url, event).await }.instrument(span));
    }

    /// Claims and delivers queued webhooks that are due (their aggregator died or gave
    /// them back, or the producer stored a cancelled report).
    ///
    /// # Errors
    ///
    /// Returns the [`redis::RedisError`] when Redis fails; what is queued stays queued.
    pub(crate) async fn sweep(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        const PAGE: isize = 100;
        let now = isotest_protocol::now_ms();
        let due: Vec<String> = conn
            .zrangebyscore_limit(self.ns.webhooks_key(), "-inf", now, 0, PAGE)
            .await?;
        for suite_id in due {
            let claimed: i64 = Script::new(CLAIM)
                .key(self.ns.webhooks_key())
                .arg(&suite_id)
                .arg(now)
                .arg(self.claimed_until_ms())
                .invoke_async(conn)
                .await?;
            if claimed != 1 {
                continue;
            }
            let span = tracing::info_span!("webhook", suite_id = %suite_id);
            let found = self.load(conn, &suite_id).instrument(span.clone()).await?;
            match found {
                Some((report, url, public_url)) => {
                    span.in_scope(|| tracing::info!("Delivering a queued webhook."));
                    self.spawn(&report, &url, public_url.as_deref());
                }
                None => {
                    span.in_scope(|| {
                        tracing::warn!(
                            "Queued webhook has no report or no callback URL; dropping it."
                        );
                    });
                    let _: usize = conn.zrem(self.ns.webhooks_key(), &suite_id).await?;
                }
            }
        }
        Ok(())
    }

    /// The stored report, callback URL and producer URL of a queued delivery.
    async fn load(
        &self,
        conn: &mut ConnectionManager,
        suite_id: &str,
    ) -> redis::RedisResult<Option<(Report, String, Option<String>)>> {
        let (report, record): (Option<String>, Option<String>) = redis::pipe()
            .get(self.ns.report_key(suite_id))
            .get(self.ns.suite_key(suite_id))
            .query_async(conn)
            .await?;
        let report = report.and_then(|json| serde_json::from_str::<Report>(&json).ok());
        let record = record.and_then(|json| serde_json::from_str::<SuiteRecord>(&json).ok());
        Ok(match (report, record) {
            (Some(report), Some(record)) => record
                .callback_url
                .map(|url| (report, url, record.public_url)),
            _ => None,
        })
    }

    /// Waits up to the grace period for deliveries in flight, then abandons the rest:
    /// they stay queued in Redis, due at once, for another aggregator or the next start.
    pub(crate) async fn shutdown(&self) {
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tracker.len(),
                "Abandoning webhook deliveries in flight; they stay queued."
            );
            self.abandon.cancel();
            // Giving a delivery back is one Redis write; do not hang on a dead Redis.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        }
    }

    fn task_handle(&self) -> Task {
        Task {
            config: self.config.clone(),
            ns: self.ns.clone(),
            client: self.client.clone(),
            redis: self.redis.clone(),
            abandon: self.abandon.clone(),
        }
    }
}

/// What one delivery task owns.
struct Task {
    config: WebhookConfig,
    ns: Namespace,
    client: reqwest::Client,
    redis: ConnectionManager,
    abandon: CancellationToken,
}

impl Task {
    /// Delivers, then takes the delivery off the queue, or, if abandoned on shutdown,
    /// makes it due at once for whoever sweeps next.
    async fn deliver_and_settle(mut self, url: String, event: SuiteFinished) {
        let suite_id = event.suite_id.clone();
        let outcome = tokio::select! {
            outcome = deliver(&self.client, &self.config, &url, &event) => Some(outcome),
            () = self.abandon.cancelled() => None,
        };
        let key = self.ns.webhooks_key();
        let settled: redis::RedisResult<()> = match outcome {
            Some(Delivery::Delivered { status, attempt }) => {
                tracing::info!(status, attempt, "Delivered the suite.finished webhook.");
                self.redis.zrem(&key, &suite_id).await
            }
            Some(Delivery::Failed { reason, attempts }) => {
                tracing::error!(%reason, attempts, "Gave up delivering the suite.finished webhook.");
                self.redis.zrem(&key, &suite_id).await
            }
            None => {
                self.redis
                    .zadd(&key, &suite_id, isotest_protocol::now_ms())
                    .await
            }
        };
        // The lease runs out on its own: another aggregator then delivers again.
        if let Err(error) = settled {
            tracing::warn!(%error, "Could not settle the webhook delivery in Redis.");
        }
    }
}
