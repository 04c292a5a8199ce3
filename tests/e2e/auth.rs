//! API tokens and quotas: the producer refuses `/v1` requests without a valid token
//! (401, nothing written), takes them with one, refuses a suite over its token's quota
//! (429, nothing written), and forgets a revoked token. Tokens are managed with
//! `isotest token`, and `isotest run --server` sends `ISOTEST_TOKEN`.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use isotest_protocol::api::Submitted;

use crate::support::TestEnv;

/// `isotest token add NAME [--quota N]`: the printed token.
pub(crate) fn add_token(env: &TestEnv, name: &str, quota: Option<u32>) -> Result<String> {
    let quota = quota.map(|q| q.to_string());
    let mut args = vec!["token", "add", name];
    if let Some(q) = &quota {
        args.extend(["--quota", q.as_str()]);
    }
    let output = env.command(&args).output()?;
    ensure!(
        output.status.success(),
        "token add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?.trim().to_owned();
    ensure!(token.starts_with("itk_"), "not a token: {token}");
    Ok(token)
}

/// A JSON manifest of `n` passing command tests.
pub(crate) fn manifest(name: &str, n: usize) -> Value {
    let tests: Vec<Value> = (0..n)
        .map(|i| json!({ "name": format!("t{i}"), "command": ["true"] }))
        .collect();
    json!({ "name": name, "tests": tests })
}

pub(crate) fn url(env: &TestEnv, path: &str) -> Result<String> {
    Ok(format!(
        "{}{path}",
        env.producer_url.as_deref().context("producer started")?
    ))
}

/// POSTs a manifest, with an `Authorization` header when given.
pub(crate) async fn submit(
    env: &TestEnv,
    authorization: Option<&str>,
    manifest: &Value,
) -> Result<reqwest::Response> {
    let mut request = reqwest::Client::new()
        .post(url(env, "/v1/suites")?)
        .json(manifest);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    Ok(request.send().await?)
}

/// The status and the one-line `error` of an error answer.
pub(crate) async fn refusal(response: reqwest::Response) -> Result<(u16, String)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    ensure!(!text.contains('\n'), "one line: {text}");
    let body: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    let error = body["error"].as_str().context("an `error` field")?;
    Ok((status, error.to_owned()))
}

/// Suite records (`{ns}:suite:<id>`) in Redis: what an accepted submission writes first.
async fn suite_records(env: &TestEnv) -> Result<usize> {
    let prefix = format!("{}:suite:", env.ns);
    Ok(env
        .suite_keys()
        .await?
        .iter()
        .filter(|k| k.strip_prefix(&prefix).is_some_and(|id| !id.contains(':')))
        .count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_token_is_refused_and_changes_nothing() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    // No workers: whatever a request queued would stay on the queue to be counted.
    env.start(0, 1).await?;
    let token = add_token(&env, "ci-gitlab", None)?;
    let suite = manifest("guarded", 3);

    let refused = [
        (None, "this isotest server requires an API token"),
        (
            Some("Bearer itk_wrong".to_owned()),
            "the API token is not valid",
        ),
        (
            Some(format!("Basic {token}")),
            "the Authorization header is not `Bearer <token>`",
        ),
    ];
    for (authorization, expected) in &refused {
        let response = submit(&env, authorization.as_deref(), &suite).await?;
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let (status, error) = refusal(response).await?;
        assert_eq!(status, 401, "{authorization:?}: {error}");
        assert!(error.starts_with(expected), "{authorization:?}: {error}");
    }
    // Every /v1 route is guarded, reads and blob uploads included.
    let client = reqwest::Client::new();
    let id = uuid::Uuid::now_v7();
    let blob = format!("/v1/blobs/sha256:{}", "a".repeat(64));
    for request in [
        client.get(url(&env, &format!("/v1/suites/{id}"))?),
        client.get(url(&env, &format!("/v1/suites/{id}/report.xml"))?),
        client.delete(url(&env, &format!("/v1/suites/{id}"))?),
        client.put(url(&env, &blob)?).body("x"),
        client.head(url(&env, &blob)?),
    ] {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 401, "{}", response.url());
    }
    assert_eq!(
        env.suite_keys().await?,
        Vec::<String>::new(),
        "keys written"
    );
    assert_eq!(env.queue_state().await?.0, 0, "messages queued");

    // The health checks and the API description stay open.
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        let response = reqwest::get(url(&env, path)?).await?;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    // The same request with the token goes through: the checks above could see writes.
    let response = submit(&env, Some(&format!("Bearer {token}")), &suite).await?;
    assert_eq!(response.status().as_u16(), 202);
    let submitted: Submitted = response.json().await?;
    assert_eq!(suite_records(&env).await?, 1);
    assert_eq!(env.queue_state().await?.0, 3, "one message per test");
    let status = client
        .get(url(&env, &submitted.status_url)?)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(status.status().as_u16(), 200);
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suite_over_its_tokens_quota_is_refused_until_tests_finish() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.start(0, 1).await?;
    let token = add_token(&env, "ci-quota", Some(5))?;
    let bearer = format!("Bearer {token}");

    let first = submit(&env, Some(&bearer), &manifest("first", 3)).await?;
    assert_eq!(first.status().as_u16(), 202);
    let first: Submitted = first.json().await?;

    let (status, error) =
        refusal(submit(&env, Some(&bearer), &manifest("second", 3)).await?).await?;
    assert_eq!(
        (status, error.as_str()),
        (
            429,
            "token ci-quota has 3 tests in flight; this suite's 3 would exceed its quota of 5"
        )
    );
    assert_eq!(
        suite_records(&env).await?,
        1,
        "the refused suite is not recorded"
    );
    assert_eq!(env.queue_state().await?.0, 3, "nor queued");

    // Exactly at the quota is allowed.
    let second = submit(&env, Some(&bearer), &manifest("second", 2)).await?;
    assert_eq!(second.status().as_u16(), 202);

    // A suite that ends (here: cancelled) frees its tests' share of the quota.
    let cancelled = reqwest::Client::new()
        .delete(url(&env, &first.status_url)?)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(cancelled.status().as_u16(), 200);
    let third = submit(&env, Some(&bearer), &manifest("third", 3)).await?;
    assert_eq!(third.status().as_u16(), 202, "{}", third.text().await?);

    let listed = env.command(&["token", "list"]).output()?;
    let listed = String::from_utf8(listed.stdout)?;
    let row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with("ci-quota"))
        .context("ci-quota listed")?
        .split_whitespace()
        .collect();
    assert_eq!(row, ["ci-quota", "5", "5"], "{listed}");
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_submissions_cannot_overrun_a_quota() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.start(0, 1).await?;
    let token = add_token(&env, "ci-race", Some(4))?;
    let bearer = format!("Bearer {token}");
    let suite = manifest("racer", 3);
    let answers =
        futures_util::future::join_all((0..8).map(|_| submit(&env, Some(&bearer), &suite))).await;
    let mut codes = Vec::new();
    for answer in answers {
        codes.push(answer?.status().as_u16());
    }
    codes.sort_unstable();
    assert_eq!(codes, [202, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(suite_records(&env).await?, 1);
    assert_eq!(env.queue_state().await?.0, 3);
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_and_names_are_unique() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.start(0, 1).await?;
    let token = add_token(&env, "ci-jenkins", None)?;
    let other = add_token(&env, "ci-github", Some(100))?;
    let duplicate = env.command(&["token", "add", "ci-jenkins"]).output()?;
    assert_eq!(duplicate.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&duplicate.stderr).contains("a token named ci-jenkins exists"),
        "{}",
        String::from_utf8_lossy(&duplicate.stderr)
    );

    let suite = manifest("revocable", 1);
    let ok = submit(&env, Some(&format!("Bearer {token}")), &suite).await?;
    assert_eq!(ok.status().as_u16(), 202);

    let revoke = env.command(&["token", "revoke", "ci-jenkins"]).output()?;
    assert!(revoke.status.success(), "{revoke:?}");
    let (status, error) =
        refusal(submit(&env, Some(&format!("Bearer {token}")), &suite).await?).await?;
    assert_eq!(status, 401, "{error}");
    assert_eq!(error, "the API token is not valid (unknown or revoked)");
    // The other CI system's token is untouched, and the list no longer has the revoked one.
    let ok = submit(&env, Some(&format!("Bearer {other}")), &suite).await?;
    assert_eq!(ok.status().as_u16(), 202);
    let listed = String::from_utf8(env.command(&["token", "list"]).output()?.stdout)?;
    assert!(!listed.contains("ci-jenkins"), "{listed}");
    assert!(listed.contains("ci-github"), "{listed}");
    assert!(
        !listed.contains("itk_"),
        "secrets are never listed: {listed}"
    );

    let again = env.command(&["token", "revoke", "ci-jenkins"]).output()?;
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    env.stop();
    env.cleanup().await
}

/// Auth fails closed: a producer with no token defined (a fresh deployment, the last
/// token revoked, a flushed Redis, a mistyped namespace) refuses anonymous requests and
/// says how to make a token; only `--open` lets them in.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_with_no_token_refuses_anonymous_requests_unless_open() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.start(0, 1).await?;
    let (status, error) = refusal(submit(&env, None, &manifest("closed", 1)).await?).await?;
    assert_eq!(status, 401, "{error}");
    assert!(error.contains("isotest token add NAME"), "{error}");
    assert_eq!(suite_records(&env).await?, 0);
    assert!(
        env.log("producer")
            .iter()
            .any(|l| l.contains("No API token exists") && l.contains("isotest token add")),
        "the producer says at start how to make a token"
    );
    // A token made and then revoked leaves the API closed, not open again.
    add_token(&env, "short-lived", None)?;
    let revoke = env.command(&["token", "revoke", "short-lived"]).output()?;
    assert!(revoke.status.success(), "{revoke:?}");
    let (status, _) = refusal(submit(&env, None, &manifest("closed", 1)).await?).await?;
    assert_eq!(status, 401);
    env.stop();
    env.cleanup().await?;

    // The operator's explicit opt-in.
    let mut open = TestEnv::new().await;
    open.open = true;
    open.start(0, 1).await?;
    let accepted = submit(&open, None, &manifest("open", 1)).await?;
    assert_eq!(accepted.status().as_u16(), 202);
    assert!(
        open.log("producer")
            .iter()
            .any(|l| l.contains("The API is open (--open)")),
        "an open producer says so at start"
    );
    open.stop();
    open.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn run_sends_the_token_from_the_environment() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.start(1, 2).await?;
    let token = add_token(&env, "ci-run", Some(10))?;
    let manifest = env.write(
        "suite.toml",
        "name = \"with-token\"\n\n[[tests]]\nname = \"ok\"\ncommand = [\"true\"]\n",
    );
    let server = env.producer_url.clone().context("producer")?;
    let path = manifest.display().to_string();
    let run = |token: Option<&str>| {
        let mut cmd = env.command(&["run", &path, "--server", &server, "--quiet"]);
        cmd.env_remove("ISOTEST_TOKEN");
        if let Some(token) = token {
            cmd.env("ISOTEST_TOKEN", token);
        }
        cmd.output()
    };
    let refused = run(None)?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("requires an API token"),
        "{stderr}"
    );

    let passed = run(Some(&token))?;
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    env.stop();
    env.cleanup().await
}
