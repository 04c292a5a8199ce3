//! `GET /v1/suites/{id}` and the report endpoints, before and after the report exists
//! (the report is written by hand, as the aggregator would).

use redis::AsyncTypedCommands;
use serde_json::Value;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::{QueueState, Submitted, SuiteStatus};
use isotest_protocol::report::{Report, SuiteState, Summary, TestReport};
use isotest_protocol::result::Status;

use crate::helpers::{TestEnv, error_of, manifest};

fn report(id: &str, names: &[&str]) -> Report {
    let total = names.len() as u32;
    Report {
        schema_version: SCHEMA_VERSION,
        suite_id: id.to_owned(),
        suite: "demo".into(),
        state: SuiteState::Complete,
        created_at_ms: 1,
        finished_at_ms: 2,
        summary: Summary {
            total,
            passed: total,
            success_rate: 100.0,
            duration_ms: 10,
            wall_ms: 20,
            ..Summary::default()
        },
        tests: names
            .iter()
            .map(|name| TestReport {
                name: (*name).to_owned(),
                status: Status::Passed,
                flaky: false,
                reason: None,
                stage: None,
                duration_ms: 5,
                attempts: 1,
                worker: "w1".into(),
                exit_code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
                cases: vec![],
                usage: Default::default(),
                attempt_history: vec![],
                start: None,
                quarantined: false,
                cached_from: None,
            })
            .collect(),
        builds: vec![],
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let env = TestEnv::start().await;
    let id = uuid::Uuid::now_v7().to_string();
    for path in ["", "/report", "/report.xml", "/report.ctrf.json"] {
        let (status, error) = error_of(env.get(&format!("/v1/suites/{id}{path}")).await).await;
        assert_eq!(
            (status, error),
            (404, format!("suite {id} not found")),
            "{path}"
        );
        let (status, error) = error_of(env.get(&format!("/v1/suites/nope{path}")).await).await;
        assert_eq!(
            (status, error.as_str()),
            (400, "`nope` is not a suite id (a UUID)"),
            "{path}"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn a_running_suite_then_its_report() {
    let env = TestEnv::start().await;
    let names = ["a", "b"];
    let response = env.post_suite(manifest(&names).to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Submitted>().await.expect("Submitted").id;
    // Once dispatched, no test of the suite waits.
    env.take_tests(2).await;

    let mut redis = env.redis.clone();
    redis.sadd(env.ns.done_key(&id), "a").await.expect("SADD");
    let status: SuiteStatus = env
        .get(&format!("/v1/suites/{id}"))
        .await
        .json()
        .await
        .expect("SuiteStatus");
    assert_eq!(
        status,
        SuiteStatus {
            id: id.clone(),
            name: "demo".into(),
            state: SuiteState::Running,
            total: 2,
            done: 1,
            waiting: Some(0),
            summary: None,
            // No worker runs in this test: both messages wait, and nothing consumes.
            queue: Some(QueueState {
                waiting: 2,
                consumers: 0
            }),
        }
    );
    for path in ["/report", "/report.xml", "/report.ctrf.json"] {
        let (status, error) = error_of(env.get(&format!("/v1/suites/{id}{path}")).await).await;
        assert_eq!(
            (status, error),
            (
                409,
                format!("suite {id} is still running (1 of 2 tests done)")
            ),
            "{path}"
        );
    }

    let report = report(&id, &names);
    redis.sadd(env.ns.done_key(&id), "b").await.expect("SADD");
    redis
        .set(
            env.ns.report_key(&id),
            serde_json::to_string(&report).expect("report JSON"),
        )
        .await
        .expect("SET");

    let status: SuiteStatus = env
        .get(&format!("/v1/suites/{id}"))
        .await
        .json()
        .await
        .expect("SuiteStatus");
    assert_eq!(status.state, SuiteState::Complete);
    assert_eq!((status.total, status.done), (2, 2));
    assert_eq!(status.summary, Some(report.summary.clone()));

    let response = env.get(&format!("/v1/suites/{id}/report")).await;
    assert_eq!(response.status().as_u16(), 200);
    let got: Report = response.json().await.expect("Report");
    assert_eq!(got, report);

    let response = env.get(&format!("/v1/suites/{id}/report.xml")).await;
    assert_eq!(response.status().as_u16(), 200);
    let xml = response.text().await.expect("XML");
    assert!(
        xml.contains("<testsuite") && xml.contains("name=\"a\""),
        "{xml}"
    );

    let response = env.get(&format!("/v1/suites/{id}/report.ctrf.json")).await;
    assert_eq!(response.status().as_u16(), 200);
    let ctrf: Value = response.json().await.expect("CTRF JSON");
    assert!(ctrf.get("results").is_some(), "{ctrf}");
    env.finish().await;
}
