//! Records and responses of the producer's HTTP API, and what it keeps in Redis.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::FlakyResult;
use crate::report::{SuiteState, Summary};
use crate::schedule::Priority;

/// What the producer records for a suite before publishing a single message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteRecord {
    pub schema_version: u32,
    pub id: String,
    pub name: String,
    /// Every test's name, in manifest order: the report's order and what "complete" means.
    pub tests: Vec<String>,
    pub created_at_ms: u64,
    /// After this instant, tests without a result are reported `lost`.
    pub deadline_at_ms: u64,
    /// The verdict of a test that failed and then passed on a retry.
    #[serde(default)]
    pub flaky_result: FlakyResult,
    /// Where the aggregator POSTs a [`SuiteFinished`] when the suite ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The name of the token that submitted the suite; none for a suite submitted
    /// without a token to an open producer. Only that token (or an admin token) reads
    /// or cancels the suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The suite's metadata (the manifest's `[meta]`: CI system, repository, branch,
    /// commit, job URL under the keys of [`meta`], and any others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Each test's input digest ([`crate::message::outcome_digest`]), in the order of
    /// `tests`; the history store compares verdicts by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    /// The tests quarantined when the suite was submitted: they run and are reported,
    /// marked, but their failures do not fail the suite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
    /// The producer's URL as its clients reach it (no trailing slash): the base of the
    /// webhook's absolute `report_url`. None in records of older producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// The keys of a suite's metadata that the history store keeps in columns of their own
/// (`isotest run --meta KEY=VALUE`, or detected from a CI system's environment).
pub mod meta {
    /// The CI system: `github-actions`, `gitlab-ci`, `jenkins`, `buildkite`, or any name.
    pub const SYSTEM: &str = "system";
    /// The repository, as the CI system names it (`owner/name`, a URL).
    pub const REPOSITORY: &str = "repository";
    pub const BRANCH: &str = "branch";
    pub const COMMIT: &str = "commit";
    /// The URL of the CI job that ran the suite.
    pub const JOB_URL: &str = "job_url";
}

/// An API token as stored under [`crate::names::Namespace::tokens_key`], keyed by the
/// sha256 of the secret (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub schema_version: u32,
    /// Who holds the token, such as `ci-gitlab`: unique in a namespace.
    pub name: String,
    /// The most tests of this token's suites that may be dispatched and unfinished
    /// (running, or next in RabbitMQ) at once; none means no limit. The rest wait.
    #[serde(default)]
    pub quota: Option<u32>,
    /// An admin token reads and cancels every suite; any other only its own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,
    /// Whether this token's suites may ask for the host's network (`network = true`):
    /// a permission the operator grants per token, since such a test shares the
    /// worker's network and reaches whatever it can.
    #[serde(default, skip_serializing_if = "is_false")]
    pub network: bool,
    /// The token's share of the test slots against other tokens of its priority.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// The highest priority its suites may ask for, and what they get by default.
    #[serde(default)]
    pub priority: Priority,
    /// Whether this token's runs write the shared result cache (the operator's choice,
    /// say the main branch's CI) and read only it; any other token's runs write a cache
    /// of their own and read the shared one, then their own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trusted: bool,
    /// Whether this token's suites use the result cache when they do not say (a suite's
    /// `cache` decides for itself).
    #[serde(default, skip_serializing_if = "is_false")]
    pub cache: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The answer to a submitted suite (202 Accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: String,
    pub tests: u32,
    pub status_url: String,
    pub report_url: String,
    pub junit_url: String,
}

/// A suite's progress, as `GET /v1/suites/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteStatus {
    pub id: String,
    pub name: String,
    pub state: SuiteState,
    pub total: u32,
    /// Tests whose final attempt has a result.
    pub done: u32,
    /// Tests still waiting for the scheduler to send them to a worker (fair share,
    /// or the token's quota); absent from producers that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u32>,
    /// Present once the suite is no longer running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// The namespace's tests queue while the suite runs, when RabbitMQ answered: how
    /// many messages wait and how many workers consume them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueState>,
}

/// The tests queue as RabbitMQ counts it (every suite of the namespace shares it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Test messages waiting for a worker.
    pub waiting: u32,
    /// Workers consuming the queue.
    pub consumers: u32,
}

/// The body of every error answer: one line that names the problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// The event of the `suite.finished` webhook, the JSON body POSTed to a suite's
/// `callback_url` once its report is stored (complete, past its deadline, or cancelled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteFinished {
    pub schema_version: u32,
    /// Always [`SuiteFinished::EVENT`], also sent as the `X-Isotest-Event` header.
    pub event: String,
    /// The same on every attempt to deliver this event (`X-Isotest-Delivery`), so a
    /// receiver can drop repeats.
    pub delivery_id: String,
    pub suite_id: String,
    pub name: String,
    pub state: SuiteState,
    pub summary: Summary,
    /// The report's path on the producer, `/v1/suites/{id}/report`.
    pub report_url: String,
    pub finished_at_ms: u64,
}

impl SuiteFinished {
    /// The event's name.
    pub const EVENT: &'static str = "suite.finished";

    /// The delivery id of a suite's one `suite.finished` event: derived from the suite
    /// id, so every aggregator that tries to deliver it (after a restart, say) sends
    /// the same id.
    pub fn delivery_id(suite_id: &str) -> String {
        format!("{suite_id}.finished")
    }
}

/// The answer to an uploaded blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    /// `sha256:<hex>`, the reference a manifest's `workspace` takes.
    pub reference: String,
    pub size: u64,
}

/// Turns `sha256:<64 hex>` into its hex part.
pub fn parse_blob_reference(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_references_are_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(
            parse_blob_reference(&format!("sha256:{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(parse_blob_reference(&hex), None);
        assert_eq!(
            parse_blob_reference(&format!("sha256:{}", "A".repeat(64))),
            None
        );
        assert_eq!(parse_blob_reference("sha256:abc"), None);
        assert_eq!(parse_blob_reference("/home/me/project"), None);
    }
}
