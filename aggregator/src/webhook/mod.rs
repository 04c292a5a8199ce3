//! The `suite.finished` webhook: when a suite whose manifest names a `callback_url`
//! ends, its summary is POSTed there as JSON, signed with the aggregator's secret.
//!
//! Deliveries are recorded in Redis ([`Namespace::webhooks_key`](isotest_protocol::names::Namespace::webhooks_key), a sorted set of suite
//! ids scored by when one may next be tried) in the same script that stores the report
//! (`isotest_infra::reports::store`), so a stored report always has its delivery queued. The aggregator that stored the
//! report claims it at once (a lease) and delivers it on its own task tracker, with
//! retries and exponential backoff; the sweeper of any aggregator delivers the queued
//! ones whose lease ran out (their aggregator died, or shut down mid-delivery) and
//! those of cancelled suites, whose report the producer stores. Delivery is therefore
//! at least once, with one delivery id, so a receiver can drop repeats. Each try is
//! signed with its timestamp ([`signing`]), so a receiver can refuse replays.
//!
//! `deliver.rs` makes one delivery over HTTP (the tries, their verdicts and backoff, the
//! egress check); `queue.rs` is the aggregator's sender, which queues, claims and settles
//! deliveries in Redis.

mod deliver;
mod queue;
pub mod signing;

use std::fmt;
use std::time::Duration;

use isotest_infra::egress::EgressPolicy;
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteFinished;
use isotest_protocol::report::Report;

pub use deliver::deliver;
pub(crate) use queue::Webhooks;
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

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx on this try.
    Delivered { status: u16, attempt: u32 },
    /// Every try failed, or one failed in a way that retrying cannot mend.
    Failed { reason: String, attempts: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
