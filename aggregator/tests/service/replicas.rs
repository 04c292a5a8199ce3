//! Two aggregators on one namespace: each suite still gets exactly one report, and it
//! is the one assembly of its data.

use std::time::Duration;

use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;
use isotest_report::assemble;

use crate::helpers::{TestEnv, poll, result};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_store_one_report_per_suite() {
    let env = TestEnv::new().await;
    let first = env.start(env.config("replica-1")).await;
    let second = env.start(env.config("replica-2")).await;

    let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let suites: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    let mut records = Vec::new();
    for suite in &suites {
        records.push(env.submit(suite, &names, Duration::from_secs(600)).await);
    }
    // Results of all suites interleaved, as many workers would write them.
    for (i, name) in names.iter().enumerate() {
        for suite in &suites {
            let status = if i % 7 == 0 {
                Status::Failed
            } else {
                Status::Passed
            };
            assert!(env.record(&result(suite, name, 1, true, status)).await);
        }
    }

    for record in &records {
        let report = env.wait_report(&record.id).await;
        assert_eq!(report.state, SuiteState::Complete);
        assert_eq!(report.tests.len(), 20);
        assert_eq!(report.summary.failed, 3);
        assert_eq!(
            report,
            assemble(record, env.results(&record.id).await, SuiteState::Complete),
            "{} is the deterministic assembly",
            record.id
        );
    }
    poll("every entry acked", || async {
        (env.all_delivered().await && env.pending().await == 0).then_some(())
    })
    .await;
    // Whichever replica stored each report, and however often both tried, each is
    // still the same bytes.
    for record in &records {
        let again = env.report(&record.id).await.expect("still there");
        assert_eq!(again, env.wait_report(&record.id).await);
    }

    first.stop().await;
    second.stop().await;
    env.cleanup().await;
}
