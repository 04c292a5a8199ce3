//! A suite past its deadline: the sweeper reports its missing tests as lost.

use std::time::Duration;

use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;
use isotest_report::LOST_REASON;

use crate::helpers::{TestEnv, result};

#[tokio::test]
async fn missing_tests_are_lost_after_the_deadline() {
    let env = TestEnv::new().await;
    let record = env
        .submit(
            "late",
            &["done", "retrying", "never"],
            Duration::from_millis(300),
        )
        .await;
    assert!(
        env.record(&result("late", "done", 1, true, Status::Passed))
            .await
    );
    // A first attempt that asked for a retry that never came back.
    assert!(
        env.record(&result("late", "retrying", 1, false, Status::Failed))
            .await
    );
    let running = env.start(env.config("sweeper")).await;

    let report = env.wait_report("late").await;
    assert_eq!(report.state, SuiteState::DeadlineExceeded);
    let tests: Vec<_> = report
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.status, t.attempts, t.reason.as_deref()))
        .collect();
    assert_eq!(
        tests,
        [
            ("done", Status::Passed, 1, None),
            ("retrying", Status::Lost, 1, Some(LOST_REASON)),
            ("never", Status::Lost, 0, Some(LOST_REASON)),
        ]
    );
    assert_eq!(report.summary.lost, 2);
    assert_eq!(report.finished_at_ms, record.deadline_at_ms);
    assert!(!env.is_open("late").await);

    // A result that comes after the report changes nothing.
    env.record(&result("late", "never", 1, true, Status::Passed))
        .await;
    crate::helpers::poll("the late entry handled", || async {
        (env.all_delivered().await && env.pending().await == 0).then_some(())
    })
    .await;
    assert_eq!(env.report("late").await, Some(report));

    running.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_suite_finished_before_its_deadline_is_complete_even_if_swept() {
    let env = TestEnv::new().await;
    env.submit("quick", &["a"], Duration::from_millis(200))
        .await;
    assert!(
        env.record(&result("quick", "a", 1, true, Status::Passed))
            .await
    );
    // Whichever of the reader and the sweeper gets there first, the suite is complete.
    let running = env.start(env.config("either")).await;
    let report = env.wait_report("quick").await;
    assert_eq!(report.state, SuiteState::Complete);
    running.stop().await;
    env.cleanup().await;
}
