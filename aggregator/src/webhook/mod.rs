//! The `suite.finished` webhook: when a suite whose manifest names a `callback_url`
//! ends, its summary is POSTed there as JSON, signed with the aggregator's secret.
//!
//! Deliveries are recorded in Redis ([`Namespace::webhooks_key`], a sorted set of suite
//! ids scored by when one may next be tried) in the same script that stores the report
//! (`isotest_infra::reports::store`), so a stored report always has its delivery queued. The aggregator that stored the
//! report claims it at once (a lease) and delivers it on its own task tracker, with
//! retries and exponential backoff; the sweeper of any aggregator delivers the queued
//! ones whose lease ran out (their aggregator died, or shut down mid-delivery) and
//! those of cancelled suites, whose report the producer stores. Delivery is therefore
//! at least once, with one delivery id, so a receiver can drop repeats. Each try is
//! signed with its timestamp ([`signing`]), so a receiver can refuse replays.

pub mod signing;

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use isotest_infra::egress::{EgressError, EgressPolicy};
use isotest_infra::error_chain;
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::{SuiteFinished, SuiteRecord};
use isotest_protocol::names::Namespace;
use isotest_protocol::report::Report;

pub use signing::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature, verify};
/// The header carrying the delivery id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "X-Isotest-Delivery";
/// The header carrying the event's name.
pub const EVENT_HEADER: &str = "X-Isotest-Event";

/// The key that signs webhook bodies. Its `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// A secret from its text; an empty text is no secret.
    pub fn new(text: impl Into<String>) -> Option<WebhookSecret> {
        let text = text.into();
        (!text.is_empty()).then_some(WebhookSecret(text))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// How webhooks are delivered; [`WebhookConfig::default`] gives the usual timings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Signs every body; without it bodies go unsigned (and a warning is logged at start).
    pub secret: Option<WebhookSecret>,
    /// Tries per delivery, the first included.
    pub attempts: u32,
    /// The wait after the first failed try, doubled after each further one.
    pub first_backoff: Duration,
    /// How long one try may take, connecting included.
    pub timeout: Duration,
    /// How long a claimed delivery is left to the aggregator that claimed it before
    /// another may take it over; longer than every try and wait of one delivery.
    pub lease: Duration,
    /// On shutdown, how long deliveries in flight may take before they are abandoned
    /// (and left queued for another aggregator).
    pub shutdown_grace: Duration,
    /// Which internal hosts a callback may reach (none by default): checked before
    /// every try, and by the client's resolver, so it connects only to checked addresses.
    pub egress: EgressPolicy,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            attempts: 5,
            first_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            egress: EgressPolicy::default(),
        }
    }
}

/// The event of a stored report; `public_url` is the producer's URL (the suite
/// record's), which makes `report_url` absolute.
pub fn event(report: &Report, public_url: Option<&str>) -> SuiteFinished {
    SuiteFinished {
        schema_version: SCHEMA_VERSION,
        event: SuiteFinished::EVENT.to_owned(),
        delivery_id: SuiteFinished::delivery_id(&report.suite_id),
        suite_id: report.suite_id.clone(),
        name: report.suite.clone(),
        state: report.state,
        summary: report.summary.clone(),
        report_url: format!(
            "{}/v1/suites/{}/report",
            public_url.unwrap_or_default(),
            report.suite_id
        ),
        finished_at_ms: report.finished_at_ms,
    }
}

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Try {
    /// A 2xx answer: done.
    Delivered(u16),
    /// A failure that may pass (connection refused or reset, a timeout, 429, 5xx).
    Retry(String),
    /// A failure that trying again will not mend (another 4xx, a redirect, a URL
    /// this client cannot send to).
    GiveUp(String),
}

/// The verdict of an HTTP answer's status.
fn judge_status(status: u16) -> Try {
    match status {
        200..=299 => Try::Delivered(status),
        429 | 500..=599 => Try::Retry(format!("the receiver answered {status}")),
        300..=399 => Try::GiveUp(format!(
            "the receiver answered {status}, a redirect, which is not followed"
        )),
        _ => Try::GiveUp(format!("the receiver answered {status}")),
    }
}

/// The verdict of a request that got no answer.
fn judge_error(error: &reqwest::Error) -> Try {
    let text = error_chain(error);
    if error.is_builder() || error.is_redirect() {
        Try::GiveUp(text)
    } else {
        // Connecting, a timeout, a connection reset mid-request: the receiver or the
        // network may be back in a moment.
        Try::Retry(text)
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx on this try.
    Delivered { status: u16, attempt: u32 },
    /// Every try failed, or one failed in a way that retrying cannot mend.
    Failed { reason: String, attempts: u32 },
}

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

/// The HTTP client's resolver: every name through [`EgressPolicy::resolve`].
struct Guarded(EgressPolicy);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = policy.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The verdict of a callback URL the egress check refused: an internal address will
/// stay one, a name that did not resolve may resolve later.
fn judge_egress(error: &EgressError) -> Try {
    let text = error_chain(error);
    match error {
        EgressError::Internal { .. } | EgressError::BadUrl(_) => Try::GiveUp(text),
        EgressError::Resolve { .. }
        | EgressError::ResolveTimeout { .. }
        | EgressError::NoAddress { .. } => Try::Retry(text),
    }
}

/// POSTs `event` to `url` until a try succeeds, fails for good, or the tries run out.
/// Before each try the URL passes [`WebhookConfig::egress`] (an address literal is
/// never given to the resolver, so it is judged here).
pub async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    url: &str,
    event: &SuiteFinished,
) -> Delivery {
    // An event of strings and numbers always serializes.
    let body = serde_json::to_vec(event).unwrap_or_default();
    let attempts = config.attempts.max(1);
    let mut backoff = config.first_backoff;
    let mut attempt = 1;
    loop {
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, SuiteFinished::EVENT)
            .header(DELIVERY_HEADER, &event.delivery_id)
            .body(body.clone());
        // Signed at each try with its own time: a try after a long wait (a sweep
        // after the lease ran out) is as fresh as the first.
        if let Some(secret) = &config.secret {
            let now = signing::now_s();
            request = request
                .header(TIMESTAMP_HEADER, now.to_string())
                .header(SIGNATURE_HEADER, signature(secret.0.as_bytes(), now, &body));
        }
        let verdict = match config.egress.check_url(url).await {
            Err(refused) => judge_egress(&refused),
            Ok(_) => match request.send().await {
                Ok(response) => judge_status(response.status().as_u16()),
                Err(error) => judge_error(&error),
            },
        };
        match verdict {
            Try::Delivered(status) => return Delivery::Delivered { status, attempt },
            Try::GiveUp(reason) => {
                return Delivery::Failed {
                    reason,
                    attempts: attempt,
                };
            }
            Try::Retry(reason) if attempt >= attempts => {
                return Delivery::Failed {
                    reason,
                    attempts: attempt,
                };
            }
            Try::Retry(reason) => {
                tracing::warn!(%reason, attempt, wait_ms = duration_ms(backoff), "Webhook delivery failed; trying again.");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_between_done_retry_and_give_up() {
        let cases: &[(u16, &str)] = &[
            (200, "delivered"),
            (202, "delivered"),
            (204, "delivered"),
            (301, "give up"),
            (307, "give up"),
            (400, "give up"),
            (401, "give up"),
            (404, "give up"),
            (410, "give up"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (100, "give up"),
        ];
        for (status, expected) in cases {
            let got = match judge_status(*status) {
                Try::Delivered(_) => "delivered",
                Try::Retry(_) => "retry",
                Try::GiveUp(_) => "give up",
            };
            assert_eq!(got, *expected, "{status}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = WebhookConfig {
            secret: WebhookSecret::new("hunter2"),
            ..WebhookConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(WebhookSecret::new("").is_none(), "empty means none");
    }

    #[test]
    fn the_event_carries_the_reports_summary_and_path() {
        let report = isotest_report::assemble(
            &isotest_report::fixtures::record(&["a"]),
            [isotest_report::fixtures::result(
                "a",
                1,
                true,
                isotest_protocol::result::Status::Passed,
            )],
            isotest_protocol::report::SuiteState::Complete,
        );
        assert_eq!(event(&report, None).report_url, "/v1/suites/s1/report");
        let event = event(&report, Some("https://isotest.example.com"));
        assert_eq!(event.event, "suite.finished");
        assert_eq!(event.suite_id, "s1");
        assert_eq!(event.delivery_id, "s1.finished");
        assert_eq!(
            event.report_url,
            "https://isotest.example.com/v1/suites/s1/report"
        );
        assert_eq!(event.summary, report.summary);
        assert_eq!(event.finished_at_ms, report.finished_at_ms);
    }

    /// A receiver on a local port answering each try with the next status of
    /// `statuses`; returns its URL and the requests' headers as they arrive.
    async fn receiver(
        statuses: Vec<u16>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Option<String>)>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                // Headers and a small body arrive in the first reads.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("\r\n\r\n{") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let header = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .map(str::to_owned)
                };
                let _ = tx.send((header("x-isotest-delivery"), header("x-isotest-signature")));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (url, rx)
    }

    fn fast(attempts: u32) -> WebhookConfig {
        WebhookConfig {
            secret: WebhookSecret::new("s3cret"),
            attempts,
            first_backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            // These receivers listen on loopback.
            egress: EgressPolicy::allowing(&["127.0.0.1"]).expect("valid"),
            ..WebhookConfig::default()
        }
    }

    fn sample_event() -> SuiteFinished {
        let report = isotest_report::assemble(
            &isotest_report::fixtures::record(&["a"]),
            [],
            isotest_protocol::report::SuiteState::Cancelled,
        );
        event(&report, None)
    }

    /// Each receiver's answers and what the delivery must come to.
    #[tokio::test]
    async fn retries_what_may_pass_and_stops_at_what_will_not() {
        let cases: &[(&[u16], u32, Result<u32, u32>)] = &[
            (&[200], 5, Ok(1)),
            (&[500, 429, 204], 5, Ok(3)),
            (&[404], 5, Err(1)),
            (&[503, 410], 5, Err(2)),
            (&[500, 500, 500], 3, Err(3)),
        ];
        let client = reqwest::Client::new();
        for (statuses, attempts, expected) in cases {
            let (url, mut seen) = receiver(statuses.to_vec()).await;
            let got = match deliver(&client, &fast(*attempts), &url, &sample_event()).await {
                Delivery::Delivered { attempt, .. } => Ok(attempt),
                Delivery::Failed { attempts, .. } => Err(attempts),
            };
            assert_eq!(got, *expected, "{statuses:?}");
            let tries = match got {
                Ok(n) | Err(n) => n,
            };
            for _ in 0..tries {
                let (delivery, signature) = seen.recv().await.expect("a request arrived");
                assert_eq!(delivery.as_deref(), Some("s1.finished"), "{statuses:?}");
                assert!(
                    signature.is_some_and(|s| s.starts_with("v1=")),
                    "{statuses:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_without_a_request() {
        let (url, mut seen) = receiver(vec![204]).await;
        let config = WebhookConfig {
            egress: EgressPolicy::default(),
            ..fast(3)
        };
        for target in [url.as_str(), "http://169.254.169.254/latest/meta-data/"] {
            let got = deliver(&reqwest::Client::new(), &config, target, &sample_event()).await;
            match got {
                Delivery::Failed { reason, attempts } => {
                    assert_eq!(attempts, 1, "{target}");
                    assert!(
                        reason.contains("callbacks may not reach internal addresses"),
                        "{reason}"
                    );
                }
                other @ Delivery::Delivered { .. } => panic!("{target}: {other:?}"),
            }
        }
        assert!(seen.try_recv().is_err(), "no request reached the receiver");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_then_given_up() {
        // Bind and drop: nothing listens on the port afterwards.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let got = deliver(&reqwest::Client::new(), &fast(3), &url, &sample_event()).await;
        assert!(
            matches!(got, Delivery::Failed { attempts: 3, .. }),
            "{got:?}"
        );
    }
}
