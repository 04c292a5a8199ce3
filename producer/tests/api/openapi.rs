//! `docs/openapi.yaml` against the router: the producer serves the file as it is, every
//! route of the router is in it and every operation in it is routed, and every `/v1`
//! operation documents the 401 of its token check.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use isotest_producer::http::OPENAPI_YAML;

use crate::helpers::TestEnv;

/// Every (method, path) the router serves, as written in `http::router`. A route added
/// there and not here makes `the_document_lists_every_route` fail once it is documented,
/// and a route documented but not routed fails `every_documented_operation_is_routed`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.yaml"),
    ("post", "/v1/suites"),
    ("get", "/v1/suites"),
    ("get", "/v1/suites/{id}"),
    ("delete", "/v1/suites/{id}"),
    ("get", "/v1/suites/{id}/report"),
    ("get", "/v1/suites/{id}/report.xml"),
    ("get", "/v1/suites/{id}/report.ctrf.json"),
    ("put", "/v1/blobs/{reference}"),
    ("head", "/v1/blobs/{reference}"),
    ("get", "/v1/history/suites"),
    ("get", "/v1/tests/{name}/history"),
    ("get", "/v1/flaky"),
    ("get", "/v1/quarantine"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "head", "patch", "options"];

fn document() -> Value {
    serde_yaml_ng::from_str(OPENAPI_YAML).expect("docs/openapi.yaml is YAML")
}

/// (method, path, operation) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_mapping().expect("`paths` is a mapping");
    let mut found = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("paths are strings");
        let item = item.as_mapping().expect("a path item is a mapping");
        for (method, operation) in item {
            let method = method.as_str().expect("keys are strings");
            if METHODS.contains(&method) {
                found.push((method.to_owned(), path.to_owned(), operation.clone()));
            }
        }
    }
    found
}

#[test]
fn the_document_lists_every_route() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn every_v1_operation_documents_its_token_check_and_the_rest_are_open() {
    for (method, path, operation) in operations(&document()) {
        let responses = operation["responses"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{method} {path}: no responses"));
        let has_401 = responses.contains_key("401");
        let open = operation["security"]
            .as_sequence()
            .is_some_and(Vec::is_empty);
        if path.starts_with("/v1/") {
            assert!(
                has_401 && !open,
                "{method} {path} needs a token: document 401"
            );
        } else {
            assert!(
                open && !has_401,
                "{method} {path} is open: `security: []`, no 401"
            );
        }
    }
}

#[tokio::test]
async fn the_producer_serves_the_file_as_it_is() {
    let env = TestEnv::start().await;
    let response = env.get("/openapi.yaml").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/yaml"[..])
    );
    let served = response.text().await.expect("a text body");
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .expect("read docs/openapi.yaml");
    assert!(
        served == file,
        "the served document differs from docs/openapi.yaml"
    );
    env.finish().await;
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let env = TestEnv::start().await;
    let id = uuid::Uuid::now_v7().to_string();
    for (method, path, _) in operations(&document()) {
        // Parameters that reach the handler and are refused there (400/404), never
        // the router's fallbacks.
        let url = env.url(&path.replace("{id}", &id).replace("{reference}", "nope"));
        let method =
            reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("an HTTP method");
        let response = env
            .client
            .request(method.clone(), &url)
            .body("{}")
            .send()
            .await
            .expect("the producer answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("no route for"),
            "{method} {path} is not routed: {body}"
        );
        if method == reqwest::Method::HEAD {
            // A HEAD answer has no body to tell the fallback's 404 from the handler's.
            assert_eq!(status, 400, "{method} {path}");
        }
    }
    env.finish().await;
}
