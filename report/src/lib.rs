//! The suite report without I/O: [`assemble`] builds it from a suite's record and its
//! results, and [`junit`], [`ctrf`] and [`terminal_summary`] render it. Embedded mode,
//! the aggregator, the producer's report routes and cancellation all call these, so a
//! report is the same field for field wherever it is made or shown.

mod assemble;
mod ctrf;
mod junit;
mod summary;

pub use assemble::{CANCELLED_REASON, LOST_REASON, assemble};
pub use ctrf::ctrf;
pub use junit::{QUARANTINED_PROPERTY, junit};
pub use summary::terminal_summary;

/// The last `max` lines of `text`, for failure texts that must stay readable.
pub(crate) fn tail_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max);
    lines[start..].join("\n")
}

/// Milliseconds as seconds, the unit JUnit and the terminal summary use.
pub(crate) fn ms_to_duration(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

#[cfg(test)]
mod schema {
    use isotest_protocol::manifest::FlakyResult;
    use isotest_protocol::report::SuiteState;
    use isotest_protocol::result::{CaseResult, CaseStatus, Stage, Status};

    use super::assemble;
    use super::fixtures::{record, result};

    /// The schema the docs publish, checked against a report with every optional field.
    #[test]
    fn reports_follow_the_published_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/report.schema.json"))
                .expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
        let mut failed = result("flaky", 1, false, Status::Failed);
        failed.exit_code = Some(1);
        failed.reason = Some("1 of 1 cases failed".into());
        failed.stage = Some(Stage::Test);
        failed.stderr = "boom\n".into();
        failed.cases = vec![CaseResult {
            name: "test_x".into(),
            classname: "m".into(),
            file: Some("m.py".into()),
            status: CaseStatus::Failed,
            duration_ms: 3,
            message: Some("assert 1 == 2".into()),
            detail: Some("Traceback".into()),
        }];
        let mut rec = record(&["flaky", "gone"]);
        rec.flaky_result = FlakyResult::Fail;
        let report = assemble(
            &rec,
            [failed, result("flaky", 2, true, Status::Passed)],
            SuiteState::DeadlineExceeded,
        );
        let json = serde_json::to_value(&report).expect("serializes");
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{}: {e}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{json:#}");
        // The same report, as the JSON file a CI job gets, kept as a snapshot.
        insta::assert_snapshot!(serde_json::to_string_pretty(&report).expect("serializes"));
        // And the schema is strict enough to catch a field it does not list.
        let mut extra = json.clone();
        extra["tests"][0]["surprise"] = true.into();
        assert!(!validator.is_valid(&extra));
    }
}

#[cfg(test)]
mod quarantine {
    use isotest_protocol::report::SuiteState;
    use isotest_protocol::result::Status;

    use super::fixtures::{record, result};
    use super::{assemble, ctrf, junit};

    /// A quarantined test that fails is in every rendering, marked, and the suite passes;
    /// the same failure unquarantined fails it.
    #[test]
    fn a_quarantined_failure_is_marked_and_does_not_fail_the_suite() {
        let mut rec = record(&["ok", "shaky"]);
        let results = || {
            [
                result("ok", 1, true, Status::Passed),
                result("shaky", 1, true, Status::Failed),
            ]
        };
        assert!(!assemble(&rec, results(), SuiteState::Complete).passed());

        rec.quarantined = vec!["shaky".into()];
        let report = assemble(&rec, results(), SuiteState::Complete);
        assert!(report.passed());
        assert!(report.tests[1].quarantined && !report.tests[0].quarantined);
        assert_eq!(report.tests[1].status, Status::Failed);

        let xml = junit(&report);
        let doc = roxmltree::Document::parse(&xml).expect("JUnit is XML");
        let marked: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .filter(|case| {
                case.descendants().any(|p| {
                    p.has_tag_name("property")
                        && p.attribute("name") == Some(super::QUARANTINED_PROPERTY)
                        && p.attribute("value") == Some("true")
                })
            })
            .filter_map(|case| case.attribute("name"))
            .collect();
        assert_eq!(marked, ["shaky"]);
        assert!(
            xml.contains("<failure"),
            "the failure is still shown: {xml}"
        );

        let ctrf = ctrf(&report);
        let tests = &ctrf["results"]["tests"];
        assert_eq!(tests[1]["tags"], serde_json::json!(["quarantined"]));
        assert_eq!(tests[1]["extra"]["quarantined"], true);
        assert_eq!(tests[1]["status"], "failed");
        assert!(tests[0].get("tags").is_none());
    }
}
