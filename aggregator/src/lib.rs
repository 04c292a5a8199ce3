//! The aggregator of isotest: it turns the per-test results that workers write to
//! Redis into one suite report. [`report`] holds the pure functions that assemble a
//! [`Report`](isotest_protocol::report::Report) and render it (JUnit XML, CTRF JSON, a
//! terminal summary), shared with embedded mode; [`service`] is the long-running
//! process that reads the results stream, stores each report exactly once, sweeps
//! suites past their deadline, records dead-lettered tests as infrastructure errors,
//! and [`cancel`]s suites on request; [`webhook`] POSTs a signed `suite.finished`
//! event to a suite's `callback_url` once its report is stored.

pub mod report;
pub mod service;
pub mod webhook;

pub use report::{assemble, ctrf, junit, terminal_summary};
pub use service::{Aggregator, AggregatorConfig, AggregatorError, Cancelled, cancel};
pub use webhook::{WebhookConfig, WebhookSecret};
