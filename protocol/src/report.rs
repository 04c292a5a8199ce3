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
    /// Passed on a retry after failing first.
    pub flaky: u32,
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
}

/// One test's entry in the report: its final attempt, and every attempt it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub name: String,
    pub status: Status,
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
}

impl Report {
    /// Whether the suite passed: complete, and every test passed or was skipped.
    pub fn passed(&self) -> bool {
        self.state == SuiteState::Complete && self.tests.iter().all(|t| t.status.is_success())
    }
}
