//! `PUT` and `HEAD /v1/blobs/{reference}`, and suites that use a stored workspace.

use redis::AsyncTypedCommands;
use serde_json::json;
use sha2::{Digest, Sha256};

use isotest_protocol::api::{BlobStored, Submitted};
use isotest_protocol::message::TestMessage;

use crate::helpers::{TestEnv, error_of, manifest};

fn reference(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn put(env: &TestEnv, reference: &str, bytes: Vec<u8>) -> reqwest::Response {
    env.client
        .put(env.url(&format!("/v1/blobs/{reference}")))
        .body(bytes)
        .send()
        .await
        .expect("PUT /v1/blobs")
}

async fn head(env: &TestEnv, reference: &str) -> u16 {
    env.client
        .head(env.url(&format!("/v1/blobs/{reference}")))
        .send()
        .await
        .expect("HEAD /v1/blobs")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_blob_is_stored_once_and_a_suite_can_use_it() {
    let env = TestEnv::start().await;
    let bytes = b"not really a tar.zst, but bytes all the same".to_vec();
    let reference = reference(&bytes);
    assert_eq!(head(&env, &reference).await, 404);

    for _ in 0..2 {
        let response = put(&env, &reference, bytes.clone()).await;
        assert_eq!(response.status().as_u16(), 201);
        let stored: BlobStored = response.json().await.expect("BlobStored");
        assert_eq!(
            stored,
            BlobStored {
                reference: reference.clone(),
                size: bytes.len() as u64
            }
        );
    }
    assert_eq!(head(&env, &reference).await, 200);
    let mut redis = env.redis.clone();
    let hex = reference.trim_start_matches("sha256:");
    let stored = redis
        .get(env.ns.blob_key(hex))
        .await
        .expect("GET")
        .expect("the blob");
    assert_eq!(stored.as_bytes(), bytes.as_slice());

    let mut body = manifest(&["a"]);
    body["workspace"] = json!(reference);
    let response = env.post_suite(body.to_string()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Submitted>().await.expect("Submitted").id;
    let messages = env.take_tests(1).await;
    assert_eq!(messages.len(), 1);
    let message = TestMessage::from_bytes(&messages[0].delivery.data).expect("TestMessage");
    assert_eq!(message.suite_id, id);
    assert_eq!(message.workspace.as_deref(), Some(reference.as_str()));
    env.finish().await;
}

#[tokio::test]
async fn a_blob_whose_digest_does_not_match_is_refused() {
    let env = TestEnv::start().await;
    let claimed = reference(b"what the client meant");
    let actual = hex::encode(Sha256::digest(b"what it sent"));
    let (status, error) = error_of(put(&env, &claimed, b"what it sent".to_vec()).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error,
        format!("blob content has sha256:{actual}, not the {claimed} its reference names")
    );
    assert_eq!(head(&env, &claimed).await, 404);
    assert_eq!(head(&env, &format!("sha256:{actual}")).await, 404);
    env.finish().await;
}

#[tokio::test]
async fn a_blob_over_the_limit_is_413() {
    let env = TestEnv::start_with(|c| c.limits.max_blob_bytes = 1024).await;
    let bytes = vec![7u8; 4096];
    let reference = reference(&bytes);
    let (status, error) = error_of(put(&env, &reference, bytes).await).await;
    assert_eq!(status, 413);
    assert_eq!(error, "blob is 4096 bytes, more than the limit of 1024");
    assert_eq!(head(&env, &reference).await, 404);
    env.finish().await;
}

#[tokio::test]
async fn a_reference_must_be_sha256_hex() {
    let env = TestEnv::start().await;
    for bad in ["abc", "sha256:xyz", "md5:0123"] {
        let (status, error) = error_of(put(&env, bad, b"x".to_vec()).await).await;
        assert_eq!(status, 400);
        assert_eq!(
            error,
            format!("`{bad}` is not a blob reference; use sha256:<64 lowercase hex digits>")
        );
        assert_eq!(head(&env, bad).await, 400);
    }
    env.finish().await;
}
