//! What the dashboard (the producer's `/ui`) sends a browser: the suite list, a suite's
//! live events (server-sent events whose data are these records) and a test's attempts.

use serde::{Deserialize, Serialize};

use crate::SCHEMA_VERSION;
use crate::report::{SuiteState, Summary};
use crate::result::{Status, TestResult};

/// How much of the end of a failed attempt's stdout and stderr a live event carries;
/// the whole output is on the test's page.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;

/// Who is looking at the dashboard, and the suites they may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewer {
    pub schema_version: u32,
    /// The token's name; none on an open producer (no token exists).
    pub token: Option<String>,
}

/// One line of the suite list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRow {
    pub schema_version: u32,
    pub id: String,
    pub name: String,
    pub state: SuiteState,
    pub total: u32,
    /// Tests whose final attempt has a result.
    pub done: u32,
    pub created_at_ms: u64,
    pub deadline_at_ms: u64,
    /// Present once the suite is no longer running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// The suites a viewer may see, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteList {
    pub schema_version: u32,
    pub viewer: Viewer,
    pub suites: Vec<SuiteRow>,
}

/// A page of the suites a caller may see, newest first (`GET /v1/suites`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuitePage {
    pub schema_version: u32,
    pub suites: Vec<SuiteRow>,
    /// The `after` of the next page: the id of this page's last suite, when more
    /// suites follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An attempt's result as the live view shows it: its verdict and, unless it passed,
/// the end of its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveResult {
    pub schema_version: u32,
    pub test: String,
    pub attempt: u32,
    /// No further attempt follows this one.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub status: Status,
    pub duration_ms: u64,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and stderr (empty for a passed attempt).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

impl LiveResult {
    /// The live form of a full result: output only for an attempt that did not pass.
    pub fn of(result: &TestResult) -> LiveResult {
        let show_output = result.status != Status::Passed;
        let tail = |text: &str| {
            if show_output {
                tail(text, OUTPUT_TAIL_BYTES).to_owned()
            } else {
                String::new()
            }
        };
        LiveResult {
            schema_version: SCHEMA_VERSION,
            test: result.name.clone(),
            attempt: result.attempt,
            is_final: result.is_final,
            status: result.status,
            duration_ms: result.duration_ms,
            worker: result.worker.clone(),
            reason: result.reason.clone(),
            exit_code: result.exit_code,
            stdout_tail: tail(&result.stdout),
            stderr_tail: tail(&result.stderr),
        }
    }
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The suite as the live view opens it (event `suite`): what the counts are out of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSuite {
    pub schema_version: u32,
    pub id: String,
    pub name: String,
    pub total: u32,
    pub created_at_ms: u64,
    pub deadline_at_ms: u64,
}

/// Every result so far (event `snapshot`), sent instead of a replay when the events a
/// browser missed are no longer all in the bounded stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    pub schema_version: u32,
    pub results: Vec<LiveResult>,
}

/// The suite ended (event `end`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEnd {
    pub schema_version: u32,
    pub state: SuiteState,
}

/// A test's attempts in a suite, in order, with their whole output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestAttempts {
    pub schema_version: u32,
    pub suite_id: String,
    pub suite: String,
    pub test: String,
    pub attempts: Vec<TestResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_states_are_spelled_as_json_spells_them() {
        for state in SuiteState::ALL {
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("abc", 8), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        // "é" is two bytes: a cut inside it moves past it.
        assert_eq!(tail("aéb", 2), "b");
        assert_eq!(tail("", 0), "");
    }
}
