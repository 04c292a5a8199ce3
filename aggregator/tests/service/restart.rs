//! Aggregators that stop or die mid-suite: whoever runs next finishes the job.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};

use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;
use isotest_report::assemble;

use crate::helpers::{TestEnv, poll, result};

#[tokio::test]
async fn a_new_aggregator_finishes_a_suite_the_stopped_one_started() {
    let env = TestEnv::new().await;
    let record = env
        .submit("s", &["a", "b", "c"], Duration::from_secs(600))
        .await;
    let first = env.start(env.config("first")).await;
    env.record(&result("s", "a", 1, true, Status::Passed)).await;
    env.record(&result("s", "b", 1, false, Status::Failed))
        .await;
    poll("the first aggregator to read both entries", || async {
        (env.all_delivered().await && env.pending().await == 0).then_some(())
    })
    .await;
    first.stop().await;

    env.record(&result("s", "b", 2, true, Status::Passed)).await;
    env.record(&result("s", "c", 1, true, Status::Timeout))
        .await;
    assert!(env.report("s").await.is_none(), "nobody is running");

    let second = env.start(env.config("second")).await;
    let report = env.wait_report("s").await;
    assert_eq!(report.state, SuiteState::Complete);
    assert_eq!(
        report
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.status))
            .collect::<Vec<_>>(),
        [
            ("a", Status::Passed),
            ("b", Status::Passed),
            ("c", Status::Timeout)
        ]
    );
    assert!(report.tests[1].flaky);
    assert_eq!(
        report,
        assemble(&record, env.results("s").await, SuiteState::Complete)
    );
    second.stop().await;
    env.cleanup().await;
}

/// Reads every new entry as `consumer` without acking: a consumer that died mid-entry.
async fn read_and_die(env: &TestEnv, consumer: &str) -> usize {
    let options = StreamReadOptions::default()
        .group(env.ns.aggregator_group(), consumer)
        .count(100);
    let reply: Option<StreamReadReply> = env
        .redis
        .clone()
        .xread_options(&[env.ns.results_stream()], &[">"], &options)
        .await
        .expect("read as a doomed consumer");
    reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum())
}

#[tokio::test]
async fn entries_of_a_dead_consumer_are_claimed() {
    let env = TestEnv::new().await;
    env.submit("s", &["a", "b"], Duration::from_secs(600)).await;
    // Build (and so create the group) without running, then let a doomed consumer take
    // the entries.
    let mut config = env.config("survivor");
    config.claim_idle = Duration::from_millis(300);
    let survivor = isotest_aggregator::Aggregator::build(config.clone())
        .await
        .expect("builds");
    drop(survivor);
    env.record(&result("s", "a", 1, true, Status::Passed)).await;
    env.record(&result("s", "b", 1, true, Status::Passed)).await;
    assert_eq!(read_and_die(&env, "doomed").await, 2);

    let running = env.start(config).await;
    let report = env.wait_report("s").await;
    assert_eq!(report.summary.passed, 2);
    poll("the claimed entries acked", || async {
        (env.pending().await == 0).then_some(())
    })
    .await;
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_restart_under_the_same_name_handles_its_own_pending_entries() {
    let env = TestEnv::new().await;
    env.submit("s", &["a"], Duration::from_secs(600)).await;
    let config = env.config("same-name");
    drop(
        isotest_aggregator::Aggregator::build(config.clone())
            .await
            .expect("builds"),
    );
    env.record(&result("s", "a", 1, true, Status::Failed)).await;
    // The previous run read the entry and crashed before acking it; the claim would
    // only come after the default 30 s, so the pending read is what finds it.
    assert_eq!(read_and_die(&env, "same-name").await, 1);

    let running = env.start(config).await;
    let report = env.wait_report("s").await;
    assert_eq!(report.summary.failed, 1);
    poll("the pending entry acked", || async {
        (env.pending().await == 0).then_some(())
    })
    .await;
    running.stop().await;
    env.cleanup().await;
}
