//! `POST /v1/suites`: what a valid suite leaves in Redis and RabbitMQ, and that each
//! refusal leaves nothing.

use lapin::types::AMQPValue;
use redis::AsyncTypedCommands;
use serde_json::json;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::{Submitted, SuiteRecord};
use isotest_protocol::message::TestMessage;

use crate::helpers::{TestEnv, error_of, manifest};

#[tokio::test]
async fn a_valid_suite_is_recorded_then_published_once_per_test() {
    let env = TestEnv::start().await;
    let names = ["alpha", "beta", "gamma"];
    let response = env.post_suite(manifest(&names).to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let submitted: Submitted = response.json().await.expect("a Submitted body");
    let id = submitted.id.clone();
    assert_eq!(submitted.tests, 3);
    assert_eq!(submitted.status_url, format!("/v1/suites/{id}"));
    assert_eq!(submitted.report_url, format!("/v1/suites/{id}/report"));
    assert_eq!(submitted.junit_url, format!("/v1/suites/{id}/report.xml"));
    assert_eq!(
        uuid::Uuid::parse_str(&id)
            .expect("a uuid")
            .get_version_num(),
        7
    );

    let mut redis = env.redis.clone();
    let json = redis
        .get(env.ns.suite_key(&id))
        .await
        .expect("GET")
        .expect("the suite record");
    let record: SuiteRecord = serde_json::from_str(&json).expect("a SuiteRecord");
    assert_eq!(record.schema_version, SCHEMA_VERSION);
    assert_eq!(record.tests, names);
    assert_eq!(record.name, "demo");
    assert_eq!(
        record.deadline_at_ms - record.created_at_ms,
        3_600_000,
        "the default deadline is one hour"
    );
    let score = redis
        .zscore(env.ns.open_suites_key(), &id)
        .await
        .expect("ZSCORE");
    assert_eq!(score, Some(record.deadline_at_ms as f64));

    let messages = env.take_tests(3).await;
    assert_eq!(messages.len(), 3, "exactly one message per test");
    for (i, got) in messages.iter().enumerate() {
        let message = TestMessage::from_bytes(&got.delivery.data).expect("a TestMessage");
        assert_eq!(message.schema_version, SCHEMA_VERSION);
        assert_eq!(message.suite_id, id);
        assert_eq!(message.attempt, 1);
        assert_eq!(message.index as usize, i);
        assert_eq!(message.test.name, names[i]);
        assert!(!message.digest.is_empty());
        let props = &got.delivery.properties;
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            props.message_id().as_ref().map(|s| s.to_string()),
            Some(format!("{id}/{}/1", names[i]))
        );
        let headers = props.headers().as_ref().expect("headers").inner();
        assert_eq!(
            headers.get("suite_id"),
            Some(&AMQPValue::LongString(id.as_str().into()))
        );
        assert_eq!(
            headers.get("test"),
            Some(&AMQPValue::LongString(names[i].into()))
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn a_manifest_deadline_sets_the_open_score() {
    let env = TestEnv::start().await;
    let mut body = manifest(&["a"]);
    body["deadline"] = json!("5m");
    let response = env.post_suite(body.to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Submitted>().await.expect("Submitted").id;
    let mut redis = env.redis.clone();
    let json = redis
        .get(env.ns.suite_key(&id))
        .await
        .expect("GET")
        .expect("record");
    let record: SuiteRecord = serde_json::from_str(&json).expect("record");
    assert_eq!(record.deadline_at_ms - record.created_at_ms, 300_000);
    env.finish().await;
}

#[tokio::test]
async fn each_bad_suite_is_refused_with_its_line_and_nothing_written() {
    let env = TestEnv::start().await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, &str)> = vec![
        (
            "{\n  \"name\": \"s\",\n  \"tests\": [\n    {\"name\": \"a\" \"command\": [\"true\"]}\n  ]\n}".to_owned(),
            "request body:4: expected `,` or `}`",
        ),
        (
            json!({"name": "s", "tests": [{"name": "a", "command": ["true"], "framework": "mocha"}]}).to_string(),
            "request body: tests[0].framework: unknown framework `mocha`; expected one of pytest, unittest, command, junit, node, go, cargo, jest",
        ),
        (
            json!({"name": "s", "tests": [{"name": "a", "command": ["true"], "code": "x"}]}).to_string(),
            "request body: tests[0]: has both `code` and `command`; give exactly one",
        ),
        (
            json!({"name": "s", "tests": [{"name": "a"}]}).to_string(),
            "request body: tests[0]: has neither `code` nor `command`; give exactly one",
        ),
        (
            manifest(&["a", "b", "a"]).to_string(),
            "request body: tests[2].name: duplicate test name `a`; test names must be unique in a suite",
        ),
        (
            manifest(&[]).to_string(),
            "request body: tests: the suite has no tests; add at least one [[tests]] entry",
        ),
        (
            json!({"name": "s", "tests": [{"name": "a", "command": ["true"], "timeout": "0s"}]}).to_string(),
            "request body: tests[0].timeout: must be greater than zero",
        ),
        (
            json!({"name": "s", "tests": [{"name": "a", "command": ["true"], "timeout": "soon"}]}).to_string(),
            "request body: tests[0].timeout: `soon` is not a duration like \"30s\", \"2m\" or \"1h30m\"",
        ),
        (
            json!({"name": "s", "workspace": "/home/me/project", "tests": [{"name": "a", "command": ["true"]}]}).to_string(),
            "request body: workspace: `/home/me/project` is not a blob reference; pack the directory, upload it with PUT /v1/blobs/sha256:<hex> first and give `sha256:<hex>` (the isotest CLI does this)",
        ),
    ];
    for (body, expected) in &cases {
        let (status, error) = error_of(env.post_suite(body.clone()).await).await;
        assert_eq!((status, error.as_str()), (400, *expected), "{body}");
    }
    let mut body = manifest(&["a"]);
    body["workspace"] = json!(missing);
    let (status, error) = error_of(env.post_suite(body.to_string()).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error,
        format!(
            "request body: workspace: blob {missing} is not stored; upload it with PUT /v1/blobs/{missing} first"
        )
    );
    env.assert_nothing_written().await;
    env.finish().await;
}

#[tokio::test]
async fn a_suite_over_the_size_limit_is_413() {
    let env = TestEnv::start_with(|c| c.limits.max_manifest_bytes = 100).await;
    let body = manifest(&["a", "b", "c", "d", "e"]).to_string();
    let size = body.len();
    assert!(size > 100);
    let (status, error) = error_of(env.post_suite(body).await).await;
    assert_eq!(status, 413);
    assert_eq!(
        error,
        format!("request body is {size} bytes, more than the limit of 100")
    );
    env.assert_nothing_written().await;
    env.finish().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let env = TestEnv::start().await;
    let (status, error) = error_of(env.get("/v2/nothing").await).await;
    assert_eq!(
        (status, error.as_str()),
        (404, "no route for GET /v2/nothing")
    );
    let response = env
        .client
        .put(env.url("/v1/suites"))
        .send()
        .await
        .expect("PUT /v1/suites");
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error.as_str()),
        (405, "method PUT is not allowed on /v1/suites")
    );
    assert_eq!(env.get("/healthz").await.status().as_u16(), 200);
    assert_eq!(env.get("/readyz").await.status().as_u16(), 200);
    env.finish().await;
}

#[tokio::test]
async fn a_deleted_queue_is_declared_again_and_the_tests_still_go() {
    use lapin::options::QueueDeleteOptions;

    let env = TestEnv::start().await;
    env.channel
        .queue_delete(
            env.ns.tests_queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the tests queue behind the producer's back");

    // The suite waits in Redis; the dispatcher finds the queue gone, reopens its
    // channel (declaring the topology again) and publishes.
    let response = env.post_suite(manifest(&["a", "b"]).to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Submitted>().await.expect("Submitted").id;
    // Asking the queue before it exists again would close this test's channel.
    let mut redis = env.redis.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: usize = redis.llen(env.ns.pending_key(&id)).await.expect("LLEN");
        let claimed: usize = redis.hlen(env.ns.claims_key()).await.expect("HLEN");
        if waiting == 0 && claimed == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tests were not dispatched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(env.take_tests(2).await.len(), 2);
    env.finish().await;
}
