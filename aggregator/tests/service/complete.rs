//! A suite whose every test reports: one report, every test once, in order.

use std::time::Duration;

use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;
use isotest_report::assemble;

use crate::helpers::{TestEnv, poll, result};

#[tokio::test]
async fn complete_suite_gets_one_report_with_every_test_once() {
    let env = TestEnv::new().await;
    let running = env.start(env.config("solo")).await;
    let record = env
        .submit("s1", &["alpha", "beta", "gamma"], Duration::from_secs(600))
        .await;

    assert!(
        env.record(&result("s1", "gamma", 1, false, Status::Failed))
            .await
    );
    assert!(
        env.record(&result("s1", "beta", 1, true, Status::Failed))
            .await
    );
    // A redelivered message's second write is refused, as the worker sees it.
    assert!(
        !env.record(&result("s1", "beta", 1, true, Status::Passed))
            .await
    );
    assert!(
        env.record(&result("s1", "alpha", 1, true, Status::Passed))
            .await
    );
    assert!(
        env.report("s1").await.is_none(),
        "gamma has no final result yet"
    );
    assert!(
        env.record(&result("s1", "gamma", 2, true, Status::Passed))
            .await
    );

    let report = env.wait_report("s1").await;
    assert_eq!(report.state, SuiteState::Complete);
    let tests: Vec<_> = report
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.status, t.attempts, t.flaky))
        .collect();
    assert_eq!(
        tests,
        [
            ("alpha", Status::Passed, 1, false),
            ("beta", Status::Failed, 1, false),
            ("gamma", Status::Passed, 2, true),
        ]
    );
    assert_eq!(
        report,
        assemble(&record, env.results("s1").await, SuiteState::Complete)
    );
    assert!(
        !env.is_open("s1").await,
        "a reported suite leaves the open set"
    );
    // The entries are acked once the report is stored.
    poll("every entry acked", || async {
        (env.pending().await == 0).then_some(())
    })
    .await;
    // Handled entries are trimmed; the last delivered one marks where the group is.
    poll("the stream trimmed", || async {
        (env.stream_len().await <= 1).then_some(())
    })
    .await;

    running.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn unknown_suite_is_acked_and_does_not_stop_the_service() {
    let env = TestEnv::new().await;
    let running = env.start(env.config("solo")).await;
    // A result of a suite that was never recorded.
    assert!(
        env.record(&result("ghost", "t", 1, true, Status::Passed))
            .await
    );
    poll("the ghost entry delivered and acked", || async {
        (env.all_delivered().await && env.pending().await == 0).then_some(())
    })
    .await;
    assert!(env.report("ghost").await.is_none());

    env.submit("real", &["t"], Duration::from_secs(600)).await;
    env.record(&result("real", "t", 1, true, Status::Passed))
        .await;
    let report = env.wait_report("real").await;
    assert_eq!(report.summary.passed, 1);

    running.stop().await;
    env.cleanup().await;
}
