//! The suite report: a summary and one entry per test, the same field for field in
//! embedded and in distributed mode.

use serde::{Deserialize, Serialize};

use crate::result::{CaseResult, Stage, Status, Usage};

/// How a suite ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuiteState {
    /// Accepted, with tests still running.
    Running,
    /// Every test has a final result.
    Complete,
    /// The suite's deadline passed; tests without a result are `lost`.
    DeadlineExceeded,
    Cancelled,
}

impl SuiteState {
    /// Every state.
    pub const ALL: [SuiteState; 4] = [
        SuiteState::Running,
        SuiteState::Complete,
        SuiteState::DeadlineExceeded,
        SuiteState::Cancelled,
    ];

    /// The state as JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SuiteState::Running => "running",
            SuiteState::Complete => "complete",
            SuiteState::DeadlineExceeded => "deadline_exceeded",
            SuiteState::Cancelled => "cancelled",
        }
    }
}

/// Counts over a suite's tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub timed_out: u32,
    pub oom: u32,
    pub skipped: u32,
    pub lost: u32,
    pub cancelled: u32,
    /// Passed on a retry after failing first (counted also as passed, or as failed under
    /// `flaky_result = "fail"`).
    pub flaky: u32,
    /// Passed from the result cache without running (counted also as passed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached: u32,
    /// Percentage of tests that passed or were skipped.
    pub success_rate: f64,
    /// Sum of every test's duration.
    pub duration_ms: u64,
    /// From submission to the last result.
    pub wall_ms: u64,
}

/// One attempt of a test, kept in the report so retries hide nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub attempt: u32,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: u64,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The infrastructure, not the test, decided this attempt (it never makes a test flaky).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infrastructure: bool,
    /// The names of the cases that failed or errored in this attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_cases: Vec<String>,
    /// The last lines of the attempt's stdout (at most [`EXCERPT_LINES`] lines, [`EXCERPT_BYTES`] bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_excerpt: String,
    /// The last lines of the attempt's stderr, as `stdout_excerpt`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_excerpt: String,
}

/// How many lines of output an attempt's excerpt keeps.
pub const EXCERPT_LINES: usize = 20;
/// How many bytes of output an attempt's excerpt keeps.
pub const EXCERPT_BYTES: usize = 4096;

/// The last [`EXCERPT_LINES`] lines of `text`, cut to its last [`EXCERPT_BYTES`] bytes.
pub fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(EXCERPT_LINES)..].join("\n");
    if tail.len() <= EXCERPT_BYTES {
        return tail;
    }
    let mut start = tail.len() - EXCERPT_BYTES;
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

/// One test's entry in the report: its final attempt, and every attempt it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub name: String,
    pub status: Status,
    /// Failed (or errored, timed out, ran out of memory) and then passed on a retry. Its
    /// status is `passed`, or `failed` when the suite's `flaky_result` is `fail`.
    #[serde(default)]
    pub flaky: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    pub duration_ms: u64,
    pub attempts: u32,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub cases: Vec<CaseResult>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub attempt_history: Vec<AttemptReport>,
    /// How the final attempt's process started (warm or cold, and why), where the
    /// framework can start warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::result::Start>,
    /// The test was quarantined when its suite was submitted: it ran and is reported as
    /// it ended, but a failure of it does not fail the suite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
    /// The test did not run: its result cache key matched this earlier passed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<crate::cache::CachedFrom>,
}

/// The whole suite's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub suite_id: String,
    pub suite: String,
    pub state: SuiteState,
    pub created_at_ms: u64,
    pub finished_at_ms: u64,
    pub summary: Summary,
    pub tests: Vec<TestReport>,
    /// The suite's prepare stage: each build its tests ran from, once (a failed build's
    /// output is here, not repeated in every test it failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuildReport>,
}

/// How one build of the prepare stage went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildReport {
    /// The framework whose build it is (`cargo`, `go`), or `command`/`junit` for a suite's
    /// own `build`.
    pub framework: crate::manifest::Framework,
    /// The sha256 of its inputs.
    pub key: String,
    pub status: BuildStatus,
    /// How long it took (0 when it was found already built).
    pub duration_ms: u64,
    /// How many tests run from it.
    pub tests: u32,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it printed, where it failed (capped as a test's output is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// The outcome of a build of the prepare stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Built for this run.
    Built,
    /// Found built by an earlier run with the same inputs.
    Cached,
    /// It failed: every test of the suite is an `error`.
    Failed,
}

impl Report {
    /// Whether the suite passed: complete, and every test passed, was skipped or is
    /// quarantined.
    pub fn passed(&self) -> bool {
        self.state == SuiteState::Complete
            && self
                .tests
                .iter()
                .all(|t| t.status.is_success() || t.quarantined)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
