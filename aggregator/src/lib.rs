//! The aggregator of isotest: it turns the per-test results that workers write to
//! Redis into one suite report. [`service`] is the long-running process that reads the
//! results stream, stores each report exactly once, sweeps suites past their deadline
//! and records dead-lettered tests as infrastructure errors; [`webhook`] POSTs a
//! signed `suite.finished` event to a suite's `callback_url` once its report is stored.
//! The report itself is assembled and rendered by the pure `isotest-report` crate, and
//! stored through `isotest_infra::reports`, the one place a report is written.

pub mod service;
pub mod webhook;

pub use service::{Aggregator, AggregatorConfig, AggregatorError, HistorySink};
pub use webhook::{WebhookConfig, WebhookSecret};
