//! Turning a submitted manifest into what the producer stores and publishes: the
//! validated suite, its [`SuiteRecord`] and one [`TestMessage`] per test. No I/O, so
//! every refusal is unit-tested here.

use std::time::Duration;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::{SuiteRecord, parse_blob_reference};
use isotest_protocol::manifest::{Format, Manifest, ManifestError, Suite};
use isotest_protocol::message::{TestMessage, outcome_digest};

/// How a submission's body is named in error messages.
pub const ORIGIN: &str = "request body";

/// A submission the producer refuses before touching Redis or RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("{ORIGIN} is not UTF-8 text: {0}")]
    NotUtf8(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "{ORIGIN}: workspace: `{0}` is not a blob reference; pack the directory, upload it with PUT /v1/blobs/sha256:<hex> first and give `sha256:<hex>` (the isotest CLI does this)"
    )]
    WorkspaceNotBlob(String),
}

/// Parses and validates a `POST /v1/suites` body (a manifest as JSON).
///
/// # Errors
///
/// Returns [`SubmitError`] naming the line or the field that is wrong.
pub fn parse(body: &[u8]) -> Result<Suite, SubmitError> {
    let text = std::str::from_utf8(body).map_err(|e| SubmitError::NotUtf8(e.to_string()))?;
    let manifest = Manifest::parse(text, Format::Json, Some(ORIGIN))?;
    let suite = manifest.validate().map_err(|mut e| {
        e.origin = Some(ORIGIN.to_owned());
        e
    })?;
    if let Some(ws) = &suite.workspace
        && parse_blob_reference(ws).is_none()
    {
        return Err(SubmitError::WorkspaceNotBlob(ws.clone()));
    }
    Ok(suite)
}

/// The record written before anything is published (without an owner: the caller
/// sets the submitting token's name).
pub fn record(id: &str, suite: &Suite, now_ms: u64, default_deadline: Duration) -> SuiteRecord {
    let default_ms = u64::try_from(default_deadline.as_millis()).unwrap_or(u64::MAX);
    let deadline_ms = suite.deadline_ms.unwrap_or(default_ms);
    SuiteRecord {
        schema_version: SCHEMA_VERSION,
        id: id.to_owned(),
        name: suite.name.clone(),
        tests: suite.tests.iter().map(|t| t.name.clone()).collect(),
        created_at_ms: now_ms,
        deadline_at_ms: now_ms.saturating_add(deadline_ms),
        flaky_result: suite.flaky_result,
        callback_url: suite.callback_url.clone(),
        owner: None,
        meta: suite.meta.clone(),
        digests: suite
            .tests
            .iter()
            .map(|t| outcome_digest(t, suite.workspace.as_deref(), suite.network))
            .collect(),
        quarantined: Vec::new(),
        public_url: None,
    }
}

/// The first attempt of every test, in manifest order.
pub fn messages(id: &str, suite: &Suite, now_ms: u64) -> Vec<TestMessage> {
    let workspace = suite.workspace.as_deref();
    suite
        .tests
        .iter()
        .enumerate()
        .map(|(index, test)| TestMessage {
            schema_version: SCHEMA_VERSION,
            suite_id: id.to_owned(),
            // Validation caps a suite at MAX_TESTS, far below u32::MAX.
            index: u32::try_from(index).unwrap_or(u32::MAX),
            attempt: 1,
            test: test.clone(),
            workspace: suite.workspace.clone(),
            network: suite.network,
            warm: suite.warm,
            digest: outcome_digest(test, workspace, suite.network),
            published_at_ms: now_ms,
            dispatch: None,
            cache: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str) -> String {
        parse(body.as_bytes()).expect_err(body).to_string()
    }

    #[test]
    fn refuses_each_bad_submission_with_one_precise_line() {
        let cases = [
            (
                "{\n  \"name\": \"s\",\n  \"tests\": [\n    {\"name\": \"a\" \"command\": [\"true\"]}\n  ]\n}",
                "request body:4: expected `,` or `}`",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a","command":["true"],"framework":"mocha"}]}"#,
                "request body: tests[0].framework: unknown framework `mocha`; expected one of pytest, unittest, command, junit, node, go, cargo, jest",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a","command":["true"],"code":"x"}]}"#,
                "request body: tests[0]: has both `code` and `command`; give exactly one",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a"}]}"#,
                "request body: tests[0]: has neither `code` nor `command`; give exactly one",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a","command":["true"]},{"name":"a","command":["true"]}]}"#,
                "request body: tests[1].name: duplicate test name `a`; test names must be unique in a suite",
            ),
            (
                r#"{"name":"s","tests":[]}"#,
                "request body: tests: the suite has no tests; add at least one [[tests]] entry",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a","command":["true"],"timeout":"0s"}]}"#,
                "request body: tests[0].timeout: must be greater than zero",
            ),
            (
                r#"{"name":"s","tests":[{"name":"a","command":["true"],"timeout":"soon"}]}"#,
                "request body: tests[0].timeout: `soon` is not a duration like \"30s\", \"2m\" or \"1h30m\"",
            ),
            (
                r#"{"name":"s","workspace":"./src","tests":[{"name":"a","command":["true"]}]}"#,
                "request body: workspace: `./src` is not a blob reference; pack the directory, upload it with PUT /v1/blobs/sha256:<hex> first and give `sha256:<hex>` (the isotest CLI does this)",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(error(body), expected, "{body}");
        }
    }

    #[test]
    fn refuses_bytes_that_are_not_text() {
        let err = parse(b"{\"name\": \"\xff\"}").expect_err("not utf-8");
        assert!(matches!(err, SubmitError::NotUtf8(_)), "{err}");
    }

    #[test]
    fn builds_the_record_and_first_attempts() {
        let blob = format!("sha256:{}", "b".repeat(64));
        let body = format!(
            r#"{{"name":"s","workspace":"{blob}","network":true,"tests":[{{"name":"a","command":["true"]}},{{"name":"b","code":"print(1)","framework":"pytest"}}]}}"#
        );
        let suite = parse(body.as_bytes()).expect("valid");
        let record = record("id", &suite, 1_000, Duration::from_secs(3600));
        assert_eq!(record.tests, ["a", "b"]);
        assert_eq!(record.deadline_at_ms, 1_000 + 3_600_000);
        let messages = messages("id", &suite, 1_000);
        assert_eq!(messages.len(), 2);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.index as usize, i);
            assert_eq!(m.attempt, 1);
            assert_eq!(m.workspace.as_deref(), Some(blob.as_str()));
            assert!(m.network);
            assert_eq!(m.digest, outcome_digest(&m.test, Some(&blob), true));
        }
    }

    #[test]
    fn a_manifest_deadline_wins_over_the_default() {
        let body = r#"{"name":"s","deadline":"5m","tests":[{"name":"a","command":["true"]}]}"#;
        let suite = parse(body.as_bytes()).expect("valid");
        let record = record("id", &suite, 0, Duration::from_secs(3600));
        assert_eq!(record.deadline_at_ms, 300_000);
    }
}
