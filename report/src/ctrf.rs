//! The report in the Common Test Report Format (CTRF), the JSON that CTRF's GitHub
//! action and dashboards read.

use serde_json::{Value, json};

use isotest_protocol::report::{Report, TestReport};
use isotest_protocol::result::Status;

use super::junit::attempt_message;
use super::tail_lines;

/// How many lines of output a failing test's `trace` carries.
const TRACE_LINES: usize = 50;

/// The CTRF name of a status. CTRF has no error, timeout or out-of-memory verdicts:
/// they are failures there, and `rawStatus` keeps the isotest name. A lost or cancelled
/// test never ran to a verdict, which CTRF calls `other`.
fn ctrf_status(status: Status) -> &'static str {
    match status {
        Status::Passed => "passed",
        Status::Failed | Status::Error | Status::Timeout | Status::Oom => "failed",
        Status::Skipped => "skipped",
        Status::Lost | Status::Cancelled => "other",
    }
}

/// Renders the report as a CTRF document.
pub fn ctrf(report: &Report) -> Value {
    let mut counts = [0u32; 5];
    for test in &report.tests {
        let slot = match ctrf_status(test.status) {
            "passed" => 0,
            "failed" => 1,
            "skipped" => 3,
            _ => 4,
        };
        counts[slot] += 1;
    }
    let [passed, failed, pending, skipped, other] = counts;
    json!({
        "reportFormat": "CTRF",
        "specVersion": "0.0.0",
        "results": {
            "tool": { "name": "isotest" },
            "summary": {
                "tests": report.tests.len(),
                "passed": passed,
                "failed": failed,
                "pending": pending,
                "skipped": skipped,
                "other": other,
                "start": report.created_at_ms,
                "stop": report.finished_at_ms,
            },
            "tests": report.tests.iter().map(test).collect::<Vec<_>>(),
            "environment": {
                "reportName": report.suite,
            },
            "extra": {
                "suiteId": report.suite_id,
                "state": report.state,
                "flaky": report.summary.flaky,
                "successRate": report.summary.success_rate,
            },
        },
    })
}

fn test(test: &TestReport) -> Value {
    let mut value = json!({
        "name": test.name,
        "status": ctrf_status(test.status),
        "rawStatus": test.status.as_str(),
        "duration": test.duration_ms,
        "flaky": test.flaky,
        "retries": test.attempts.saturating_sub(1),
    });
    // CTRF has no quarantine or cache of its own: tags for dashboards that filter by
    // tag, and `extra` for readers of the JSON.
    let mut tags = Vec::new();
    let mut extra = serde_json::Map::new();
    if test.quarantined {
        tags.push("quarantined");
        extra.insert("quarantined".into(), true.into());
    }
    if let Some(from) = &test.cached_from {
        // Not run: passed from the result cache, as this earlier run did.
        tags.push("cached");
        extra.insert(
            "cachedFrom".into(),
            json!({ "suiteId": from.suite_id, "test": from.test }),
        );
    }
    if !tags.is_empty() {
        value["tags"] = json!(tags);
        value["extra"] = Value::Object(extra);
    }
    if !test.status.is_success() {
        value["message"] =
            attempt_message(test.status, test.reason.as_deref(), test.exit_code).into();
        let output = if test.stderr.trim().is_empty() {
            &test.stdout
        } else {
            &test.stderr
        };
        let trace = tail_lines(output, TRACE_LINES);
        if !trace.is_empty() {
            value["trace"] = trace.into();
        }
    } else if let Some(reason) = &test.reason {
        value["message"] = reason.as_str().into();
    }
    // Every attempt before the final one is a retry attempt in CTRF's sense.
    if test.attempt_history.len() > 1 {
        let earlier = &test.attempt_history[..test.attempt_history.len() - 1];
        value["retryAttempts"] = earlier
            .iter()
            .map(|a| {
                json!({
                    "attempt": a.attempt,
                    "status": ctrf_status(a.status),
                    "rawStatus": a.status.as_str(),
                    "duration": a.duration_ms,
                    "message": attempt_message(a.status, a.reason.as_deref(), a.exit_code),
                })
            })
            .collect::<Vec<_>>()
            .into();
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble;
    use crate::fixtures::{record, result};
    use isotest_protocol::report::SuiteState;

    #[test]
    fn statuses_map_to_ctrf() {
        let table = [
            (Status::Passed, "passed"),
            (Status::Failed, "failed"),
            (Status::Error, "failed"),
            (Status::Timeout, "failed"),
            (Status::Oom, "failed"),
            (Status::Skipped, "skipped"),
            (Status::Lost, "other"),
            (Status::Cancelled, "other"),
        ];
        for (status, want) in table {
            assert_eq!(ctrf_status(status), want, "{status:?}");
        }
    }

    #[test]
    fn document_snapshot() {
        let mut bad = result("bad", 1, true, Status::Failed);
        bad.exit_code = Some(2);
        bad.stderr = "line 1\nline 2\n".into();
        let results = vec![
            result("ok", 1, true, Status::Passed),
            result("flaky", 1, false, Status::Timeout),
            result("flaky", 2, true, Status::Passed),
            bad,
            result("skip", 1, true, Status::Skipped),
        ];
        let report = assemble(
            &record(&["ok", "flaky", "bad", "skip", "gone"]),
            results,
            SuiteState::DeadlineExceeded,
        );
        let doc = ctrf(&report);
        assert_eq!(doc["results"]["summary"]["tests"], 5);
        assert_eq!(doc["results"]["summary"]["other"], 1);
        insta::assert_snapshot!(serde_json::to_string_pretty(&doc).expect("serializes"));
        // And it has the shape the CTRF specification requires.
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/ctrf.schema.json"))
                .expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let mut wrong = doc.clone();
        wrong["results"]["tests"][0]["status"] = "timeout".into();
        assert!(
            !validator.is_valid(&wrong),
            "the schema must refuse a status CTRF lacks"
        );
    }
}
