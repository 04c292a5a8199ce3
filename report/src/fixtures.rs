//! Suites and results for the report's unit tests.

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::result::{Status, TestResult, Timings, Usage};

/// A suite `demo` (id `s1`) created at 1 000 ms with a one-minute deadline.
pub fn record(tests: &[&str]) -> SuiteRecord {
    SuiteRecord {
        schema_version: SCHEMA_VERSION,
        id: "s1".into(),
        name: "demo".into(),
        tests: tests.iter().map(|t| (*t).to_owned()).collect(),
        created_at_ms: 1_000,
        deadline_at_ms: 61_000,
        flaky_result: Default::default(),
        callback_url: None,
        owner: None,
        meta: Default::default(),
        digests: Vec::new(),
        quarantined: Vec::new(),
        public_url: None,
    }
}

/// An attempt of 100 ms; attempt `n` runs from `1 000 + 100 (n - 1)` ms.
pub fn result(name: &str, attempt: u32, is_final: bool, status: Status) -> TestResult {
    let started_at_ms = 1_000 + 100 * u64::from(attempt.saturating_sub(1));
    TestResult {
        schema_version: SCHEMA_VERSION,
        suite_id: "s1".into(),
        name: name.to_owned(),
        index: 0,
        attempt,
        is_final,
        status,
        reason: None,
        infrastructure: false,
        stage: None,
        exit_code: None,
        duration_ms: 100,
        started_at_ms,
        finished_at_ms: started_at_ms + 100,
        worker: "worker-1".into(),
        stdout: String::new(),
        stderr: String::new(),
        cases: Vec::new(),
        usage: Usage::default(),
        timings: Timings::default(),
        start: None,
        cached_from: None,
    }
}
