//! The producer with a history store (a real PostgreSQL schema of its own): a suite is
//! submitted with its quarantined tests, a suite Redis no longer has is read from the
//! history store, and the history routes answer; without a store they say so.

use std::collections::BTreeMap;

use redis::AsyncTypedCommands;
use serde_json::{Value, json};

use isotest_history::quarantine::Scope;
use isotest_history::testing::ScratchSchema;
use isotest_history::{History, SuiteEntry};
use isotest_protocol::api::{Submitted, SuiteRecord, SuiteStatus};
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;

use crate::helpers::{TestEnv, error_of};

#[tokio::test]
async fn suites_carry_their_quarantine_and_expired_suites_are_read_from_history() {
    let db = ScratchSchema::create().await.expect("postgres");
    let history = History::open(&db.url).await.expect("history opens");
    let url = db.url.clone();
    let env = TestEnv::start_with(|config| config.history_url = Some(url)).await;

    // Quarantined for the repository the suite names in its metadata.
    let repo = Scope::Repository("acme/shop".into());
    assert!(
        history
            .quarantine_add(&repo, "beta", "flaky", 1)
            .await
            .expect("add")
    );
    assert!(
        history
            .quarantine_add(&repo, "elsewhere", "", 1)
            .await
            .expect("add")
    );
    let body = json!({
        "name": "demo",
        "meta": { "repository": "acme/shop", "commit": "abc123" },
        "tests": [
            { "name": "alpha", "command": ["true"] },
            { "name": "beta", "command": ["false"] },
        ],
    });
    let response = env.post_suite(body.to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let submitted: Submitted = response.json().await.expect("submitted");
    let json = env
        .redis
        .clone()
        .get(env.ns.suite_key(&submitted.id))
        .await
        .expect("GET")
        .expect("the record");
    let record: SuiteRecord = serde_json::from_str(&json).expect("a record");
    assert_eq!(record.quarantined, ["beta"]);
    assert_eq!(
        record.meta.get("commit").map(String::as_str),
        Some("abc123")
    );
    assert_eq!(record.digests.len(), 2);
    assert_eq!(record.owner, None);

    // A suite only the history store has (its Redis keys expired).
    let id = uuid::Uuid::now_v7().to_string();
    let mut old = isotest_report::fixtures::record(&["alpha", "beta"]);
    old.id = id.clone();
    let results = [("alpha", Status::Passed), ("beta", Status::Failed)].map(|(name, status)| {
        let mut r = isotest_report::fixtures::result(name, 1, true, status);
        r.suite_id = id.clone();
        r
    });
    let report = isotest_report::assemble(&old, results, SuiteState::Complete);
    let none = BTreeMap::new();
    let _ = history
        .record(&SuiteEntry {
            report: &report,
            token: None,
            meta: &none,
            digests: &none,
        })
        .await
        .expect("recorded");

    let response = env.get(&format!("/v1/suites/{id}/report")).await;
    assert_eq!(response.status().as_u16(), 200);
    let served: Value = response.json().await.expect("json");
    assert_eq!(served, serde_json::to_value(&report).expect("json"));
    let xml = env.get(&format!("/v1/suites/{id}/report.xml")).await;
    assert_eq!(xml.status().as_u16(), 200);
    assert!(
        xml.text()
            .await
            .expect("text")
            .contains("<testcase name=\"beta\"")
    );
    let status: SuiteStatus = env
        .get(&format!("/v1/suites/{id}"))
        .await
        .json()
        .await
        .expect("a status");
    assert_eq!(
        (status.state, status.total, status.done),
        (SuiteState::Complete, 2, 2)
    );

    // The history routes.
    let suites: Value = env
        .get("/v1/history/suites?last=5")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(suites[0]["id"], id.as_str());
    let runs: Value = env
        .get("/v1/tests/beta/history")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["suite_id"], id.as_str());
    let flaky = env.get("/v1/flaky").await;
    assert_eq!(flaky.status().as_u16(), 200);
    assert_eq!(flaky.json::<Value>().await.expect("json"), json!([]));
    let unknown = uuid::Uuid::now_v7();
    let (code, _) = error_of(env.get(&format!("/v1/suites/{unknown}/report")).await).await;
    assert_eq!(code, 404);

    env.finish().await;
    history.close().await;
    db.drop().await.expect("schema dropped");
}

#[tokio::test]
async fn without_a_history_store_the_history_routes_say_so() {
    let env = TestEnv::start().await;
    for path in ["/v1/history/suites", "/v1/tests/a/history", "/v1/flaky"] {
        let (code, error) = error_of(env.get(path).await).await;
        assert_eq!(code, 501, "{path}");
        assert_eq!(
            error, "this producer keeps no history; start it with --history-url",
            "{path}"
        );
    }
    env.finish().await;
}
