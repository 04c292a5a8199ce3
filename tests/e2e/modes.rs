//! Embedded mode and distributed mode give the same report for the same suite.

use std::collections::BTreeMap;

use isotest_protocol::report::TestReport;

use crate::pipeline::mixed_suite;
use crate::support::TestEnv;

/// What must agree between the modes: everything but who ran it and when.
fn verdicts(tests: &[TestReport]) -> BTreeMap<String, String> {
    tests
        .iter()
        .map(|t| {
            let cases: Vec<String> = t
                .cases
                .iter()
                .map(|c| format!("{}:{:?}", c.name, c.status))
                .collect();
            let value = format!(
                "{:?} {:?} {:?} {:?} attempts={} cases={cases:?}",
                t.status, t.stage, t.exit_code, t.reason, t.attempts
            );
            (t.name.clone(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_and_distributed_agree() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    let (toml, expected) = mixed_suite("modes");
    let manifest = env.write("modes.toml", &toml);

    let distributed = env.run_suite(&manifest, "distributed", true, &[]);
    let embedded = env.run_suite(&manifest, "embedded", false, &["--concurrency", "4"]);
    assert_eq!(distributed.code(), embedded.code());
    let (d, e) = (distributed.report(), embedded.report());
    assert_eq!(d.tests.len(), expected.len());
    assert_eq!(verdicts(&d.tests), verdicts(&e.tests));
    let mut d_summary = d.summary.clone();
    let mut e_summary = e.summary.clone();
    // Durations are measured, not promised equal.
    d_summary.duration_ms = 0;
    d_summary.wall_ms = 0;
    e_summary.duration_ms = 0;
    e_summary.wall_ms = 0;
    assert_eq!(d_summary, e_summary);
    // Same schema, field for field: the JSON objects have the same keys.
    let keys = |r: &isotest_protocol::report::Report| -> Vec<String> {
        let v = serde_json::to_value(r).unwrap_or_default();
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let t = &v["tests"][0];
        k.extend(
            t.as_object()
                .map(|o| o.keys().map(|k| format!("tests.{k}")).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        k
    };
    assert_eq!(keys(d), keys(e));
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn network_access_is_the_workers_decision() -> anyhow::Result<()> {
    use isotest_protocol::result::{Stage, Status};

    let env = TestEnv::new().await;
    // With the host's network, the host's own Redis on loopback answers.
    let manifest = env.write(
        "network.toml",
        "name = \"net\"\nnetwork = true\n[[tests]]\nname = \"reach-redis\"\n\
         command = [\"/usr/bin/python3\", \"-c\", \"import socket; socket.create_connection(('127.0.0.1', 6379), 2)\"]\n",
    );
    let refused = env.run_suite(&manifest, "refused", false, &[]);
    let test = &refused.report().tests[0];
    assert_eq!(
        (test.status, test.stage),
        (Status::Error, Some(Stage::Prepare)),
        "{test:?}"
    );
    assert!(
        test.reason
            .as_deref()
            .is_some_and(|r| r.contains("--allow-network")),
        "{test:?}"
    );
    assert_eq!(refused.code(), Some(1));

    let allowed = env.run_suite(&manifest, "allowed", false, &["--allow-network"]);
    assert_eq!(
        allowed.report().tests[0].status,
        Status::Passed,
        "{:?}",
        allowed.report().tests[0]
    );
    assert_eq!(allowed.code(), Some(0));
    Ok(())
}
