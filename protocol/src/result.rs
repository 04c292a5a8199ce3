//! The result of one test attempt, as a worker writes it to Redis.

use serde::{Deserialize, Serialize};

/// A test's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    /// The test could not be judged: its setup failed, it crashed its runner, or the
    /// infrastructure failed it (see the result's `reason`).
    Error,
    Timeout,
    /// Killed for exceeding its memory limit.
    Oom,
    Skipped,
    /// No result came back before the suite's deadline.
    Lost,
    Cancelled,
}

impl Status {
    /// Every status, in the order reports list them.
    pub const ALL: [Status; 8] = [
        Status::Passed,
        Status::Failed,
        Status::Error,
        Status::Timeout,
        Status::Oom,
        Status::Skipped,
        Status::Lost,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Oom => "oom",
            Status::Skipped => "skipped",
            Status::Lost => "lost",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether this verdict lets the suite pass.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Passed | Status::Skipped)
    }

    /// Whether another attempt may change the verdict (a retry is worth running).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Error | Status::Timeout | Status::Oom
        )
    }
}

/// The verdict of one case inside a test (a pytest function, a unittest method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Passed,
    Failed,
    Error,
    Skipped,
    /// Expected to fail, and did.
    Xfail,
    /// Expected to fail, and passed.
    Xpass,
}

/// One case's result, named as the framework names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub name: String,
    #[serde(default)]
    pub classname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub status: CaseStatus,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failure's or error's text (a traceback), where the framework gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The stage of a test that decided an `error` verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Prepare,
    Setup,
    Test,
    Teardown,
}

/// What the sandbox measured of a test's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub max_rss_bytes: u64,
    pub cpu_ms: u64,
    pub wall_ms: u64,
}

/// How long each step of one attempt took, for throughput and latency figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From publish to the worker taking the message.
    pub queue_wait_ms: u64,
    /// From the worker taking the message to the test's first instruction (µs).
    pub sandbox_start_us: u64,
    /// The test's run, from exec to exit (µs).
    pub run_us: u64,
}

/// The result of one attempt of one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub schema_version: u32,
    pub suite_id: String,
    pub name: String,
    pub index: u32,
    pub attempt: u32,
    /// True when no further attempt follows this one (it passed, or retries ran out).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub status: Status,
    /// Why the verdict is what it is, where the status alone does not say. Text for
    /// people: code decides nothing by its wording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The infrastructure, not the test, decided this attempt (a worker that kept
    /// failing it, a dead-lettered message): it says nothing about the test, so it never
    /// makes the test flaky. Results written before this field existed read as `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infrastructure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// The worker process that ran the attempt.
    pub worker: String,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub cases: Vec<CaseResult>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub timings: Timings,
    /// How the test's process started, where its framework can start warm (Python): forked
    /// from a warm interpreter, or cold and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
    /// Set when the result was not run but served from the result cache: the suite and
    /// test whose passed run it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<crate::cache::CachedFrom>,
}

/// How a test's process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    pub mode: StartMode,
    /// Why a test that could have started warm started cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Warm: forked, in a fresh sandbox of its own, from an interpreter that had already
/// imported the framework and collected the test's file. Cold: started from nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    Warm,
    Cold,
}

impl Start {
    /// A warm start.
    pub fn warm() -> Start {
        Start {
            mode: StartMode::Warm,
            reason: None,
        }
    }

    /// A cold start of a test that could have started warm, and why it did not.
    pub fn cold(reason: impl Into<String>) -> Start {
        Start {
            mode: StartMode::Cold,
            reason: Some(reason.into()),
        }
    }
}

/// How the reason of an attempt the infrastructure failed (not the test) begins, so a
/// person reading the report sees it; code reads [`TestResult::infrastructure`].
const INFRASTRUCTURE_REASON_PREFIX: &str = "infrastructure: ";

impl TestResult {
    /// The final `error` result of an attempt judged before it ran (stage `prepare`):
    /// a test that cannot run as given, or one the infrastructure failed.
    pub fn prepare_error(
        msg: &crate::message::TestMessage,
        worker: &str,
        reason: String,
        now_ms: u64,
    ) -> TestResult {
        TestResult {
            schema_version: crate::SCHEMA_VERSION,
            suite_id: msg.suite_id.clone(),
            name: msg.test.name.clone(),
            index: msg.index,
            attempt: msg.attempt,
            is_final: true,
            status: Status::Error,
            reason: Some(reason),
            infrastructure: false,
            stage: Some(Stage::Prepare),
            exit_code: None,
            duration_ms: 0,
            started_at_ms: now_ms,
            finished_at_ms: now_ms,
            worker: worker.to_owned(),
            stdout: String::new(),
            stderr: String::new(),
            cases: Vec::new(),
            usage: Usage::default(),
            timings: Timings::default(),
            start: None,
            cached_from: None,
        }
    }

    /// The final `error` result of an attempt the infrastructure failed, not the test
    /// (stage `prepare`): marked [`infrastructure`](TestResult::infrastructure), with a
    /// reason that says so and then `why`.
    pub fn infrastructure_error(
        msg: &crate::message::TestMessage,
        worker: &str,
        why: &str,
        now_ms: u64,
    ) -> TestResult {
        TestResult {
            infrastructure: true,
            ..TestResult::prepare_error(
                msg,
                worker,
                format!("{INFRASTRUCTURE_REASON_PREFIX}{why}"),
                now_ms,
            )
        }
    }

    /// Whether the infrastructure decided this attempt's verdict, not the test: such an
    /// attempt says nothing of the test, so it never makes the test flaky.
    pub fn is_infrastructure_failure(&self) -> bool {
        self.infrastructure
    }

    /// The field of this attempt in the suite's results hash.
    pub fn field(&self) -> String {
        result_field(&self.name, self.attempt)
    }
}

/// `name#attempt`: test names may not contain `#`-free guarantees, so the attempt
/// is taken from the last `#`.
pub fn result_field(name: &str, attempt: u32) -> String {
    format!("{name}#{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_the_report_names_them() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).expect("serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    fn message() -> crate::message::TestMessage {
        crate::message::TestMessage {
            schema_version: crate::SCHEMA_VERSION,
            suite_id: "s1".into(),
            index: 3,
            attempt: 2,
            test: crate::message::tests::spec("a"),
            workspace: None,
            network: false,
            warm: true,
            digest: String::new(),
            published_at_ms: 0,
            dispatch: None,
            cache: None,
        }
    }

    #[test]
    fn an_infrastructure_error_is_marked_by_its_field_not_its_wording() {
        let infra = TestResult::infrastructure_error(&message(), "w", "redis went away", 5);
        assert!(infra.infrastructure && infra.is_infrastructure_failure());
        assert_eq!(
            (infra.status, infra.is_final, infra.stage, infra.attempt),
            (Status::Error, true, Some(Stage::Prepare), 2)
        );
        assert_eq!(
            infra.reason.as_deref(),
            Some("infrastructure: redis went away")
        );
        let json = serde_json::to_value(&infra).expect("serializes");
        assert_eq!(json["infrastructure"], true);
        let back: TestResult = serde_json::from_value(json).expect("reads back");
        assert!(back.is_infrastructure_failure());

        // The same words in the reason of an ordinary error decide nothing.
        let worded =
            TestResult::prepare_error(&message(), "w", "infrastructure: redis went away".into(), 5);
        assert!(!worded.is_infrastructure_failure());
        let json = serde_json::to_value(&worded).expect("serializes");
        assert!(
            json.get("infrastructure").is_none(),
            "false is left out: {json}"
        );
    }

    #[test]
    fn results_written_before_the_infrastructure_field_still_read() {
        let old = serde_json::json!({
            "schema_version": 1, "suite_id": "s1", "name": "a", "index": 0, "attempt": 1,
            "final": true, "status": "error", "reason": "setup failed",
            "duration_ms": 0, "started_at_ms": 0, "finished_at_ms": 0,
            "worker": "w", "stdout": "", "stderr": "",
        });
        let result: TestResult = serde_json::from_value(old).expect("an old result reads");
        assert!(!result.infrastructure);
        assert_eq!(result.status, Status::Error);
    }

    #[test]
    fn only_passed_and_skipped_succeed() {
        assert!(Status::Passed.is_success());
        assert!(Status::Skipped.is_success());
        assert!(!Status::Failed.is_success());
        assert!(!Status::Lost.is_success());
        assert!(Status::Timeout.is_retryable());
        assert!(!Status::Passed.is_retryable());
    }
}
