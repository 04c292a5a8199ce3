//! `TestEnv`: a producer on a free port with a fresh namespace, plus direct RabbitMQ
//! and Redis connections to check what it wrote.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use redis::AsyncTypedCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use isotest_infra::Endpoints;
use isotest_producer::{Config, Producer, ProducerError};
use isotest_protocol::names::Namespace;

/// A running producer and what a test needs to look behind it.
pub struct TestEnv {
    pub ns: Namespace,
    pub base: String,
    pub client: reqwest::Client,
    pub redis: MultiplexedConnection,
    pub channel: Channel,
    amqp: Connection,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ProducerError>>>,
}

impl TestEnv {
    /// A producer with the default configuration.
    pub async fn start() -> TestEnv {
        TestEnv::start_with(|_| {}).await
    }

    /// A producer whose configuration the test adjusts first (limits, say).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestEnv {
        let servers = isotest_testkit::servers().await;
        let (amqp_url, redis_url) = (servers.amqp_url, servers.redis_url);
        let amqp = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ is not reachable at {amqp_url} (set AMQP_URL): {e}")
            });
        let redis = redis::Client::open(redis_url.as_str())
            .expect("REDIS_URL is a valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!("Redis is not reachable at {redis_url} (set REDIS_URL): {e}")
            });
        let channel = amqp.create_channel().await.expect("open a test channel");

        let ns = isotest_testkit::namespace();
        let endpoints = Endpoints {
            amqp_url,
            redis_url,
            namespace: ns.clone(),
        };
        let mut config = Config::new(endpoints, "127.0.0.1:0".parse().expect("address"));
        // These tests are of the API, not of its tokens (tests/e2e/auth.rs).
        config.open = true;
        adjust(&mut config);
        let producer = Producer::build(config).await.expect("the producer starts");
        let addr = producer.local_addr().expect("a local address");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(producer.run(async {
            let _ = rx.await;
        }));
        TestEnv {
            ns,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            redis,
            channel,
            amqp,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a suite body as is (it need not be valid JSON).
    pub async fn post_suite(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/v1/suites"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /v1/suites")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Takes every message off the namespace's tests queue.
    pub async fn drain_tests_queue(&self) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(
                self.ns.tests_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get on the tests queue")
        {
            messages.push(m);
        }
        messages
    }

    /// Takes `n` messages off the tests queue as the dispatcher publishes them, failing
    /// after ten seconds without them.
    pub async fn take_tests(&self, n: usize) -> Vec<BasicGetMessage> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut messages = Vec::new();
        while messages.len() < n {
            messages.extend(self.drain_tests_queue().await);
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} test messages were dispatched",
                messages.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        messages
    }

    /// Suite keys in Redis under this namespace.
    pub async fn suite_keys(&self) -> Vec<String> {
        let mut redis = self.redis.clone();
        redis
            .keys(format!("{}:suite:*", self.ns))
            .await
            .expect("KEYS")
    }

    /// Checks that a refused request left no record, no open entry and no message.
    pub async fn assert_nothing_written(&self) {
        assert_eq!(self.suite_keys().await, Vec::<String>::new(), "suite keys");
        let mut redis = self.redis.clone();
        let open = redis.zcard(self.ns.open_suites_key()).await.expect("ZCARD");
        assert_eq!(open, 0, "open suites");
        assert_eq!(self.drain_tests_queue().await.len(), 0, "queued messages");
    }

    /// Stops the producer, then deletes this test's queues, exchange and keys.
    pub async fn finish(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the producer stops within 10s")
                .expect("the producer task does not panic")
                .expect("the producer stops cleanly");
        }
        for queue in [self.ns.tests_queue(), self.ns.dead_letter_queue()] {
            self.channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap_or_else(|e| panic!("delete queue {queue}: {e}"));
        }
        self.channel
            .exchange_delete(
                self.ns.dead_letter_exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .expect("delete the dead-letter exchange");
        let _ = self.amqp.close(200, "test done".into()).await;
        let keys = self
            .redis
            .keys(format!("{}:*", self.ns))
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            self.redis.del(keys).await.expect("DEL");
        }
    }
}

/// A manifest of command tests with these names.
pub fn manifest(names: &[&str]) -> Value {
    let tests: Vec<Value> = names
        .iter()
        .map(|n| json!({ "name": n, "command": ["true"] }))
        .collect();
    json!({ "name": "demo", "tests": tests })
}

/// The status and `error` line of an error answer.
pub async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an ApiError JSON body");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` in {body}"))
        .to_owned();
    (status, error)
}

/// A connection as the services open it (the result and report scripts take one).
pub async fn manager() -> redis::aio::ConnectionManager {
    isotest_infra::store::connect(&isotest_testkit::servers().await.redis_url)
        .await
        .expect("connect to Redis")
}

impl TestEnv {
    /// Adds an API token as `isotest token add` does; returns the secret.
    pub async fn add_token(&self, name: &str) -> String {
        self.add_token_with(name, false).await
    }

    /// Adds an API token, an admin one (`isotest token add --admin`) if `admin`.
    pub async fn add_token_with(&self, name: &str, admin: bool) -> String {
        let store = isotest_producer::store::Store::new(manager().await, self.ns.clone());
        let token = isotest_producer::auth::generate().expect("random");
        let record = isotest_protocol::api::TokenRecord {
            schema_version: isotest_protocol::SCHEMA_VERSION,
            name: name.to_owned(),
            quota: None,
            admin,
            network: false,
            weight: 1,
            priority: isotest_protocol::schedule::Priority::Normal,
            trusted: false,
            cache: false,
        };
        let added = store
            .add_token(&isotest_producer::auth::hash(&token), &record)
            .await
            .expect("add a token");
        assert!(added, "token {name} added");
        token
    }

    /// Submits a manifest with a Bearer token; returns the suite id.
    pub async fn submit_as(&self, token: Option<&str>, manifest: &Value) -> String {
        let mut request = self.client.post(self.url("/v1/suites")).json(manifest);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /v1/suites");
        assert_eq!(response.status().as_u16(), 202, "suite accepted");
        response
            .json::<isotest_protocol::api::Submitted>()
            .await
            .expect("Submitted")
            .id
    }

    /// Writes a result as a worker does (the one result script).
    pub async fn write_result(&self, result: &isotest_protocol::result::TestResult) {
        let written = isotest_infra::results::record(&mut manager().await, &self.ns, result)
            .await
            .expect("record a result");
        assert!(written, "{} written", result.field());
    }
}

/// A passed or failed result of attempt `attempt` of `name` in `suite_id`, as a
/// worker writes it; a failure has output.
pub fn result(
    suite_id: &str,
    name: &str,
    attempt: u32,
    is_final: bool,
    status: isotest_protocol::result::Status,
) -> isotest_protocol::result::TestResult {
    let mut result = isotest_report::fixtures::result(name, attempt, is_final, status);
    result.suite_id = suite_id.to_owned();
    // Just finished, and taking a while that depends on the test.
    let duration_ms = 40 + name.bytes().map(u64::from).sum::<u64>() * 37 % 900;
    result.finished_at_ms = isotest_protocol::now_ms();
    result.started_at_ms = result.finished_at_ms - duration_ms;
    result.duration_ms = duration_ms;
    if status != isotest_protocol::result::Status::Passed {
        result.exit_code = Some(1);
        result.stdout = format!("running {name}\n");
        result.stderr = format!("assertion failed in {name}: expected 2, got 3\n");
    }
    result
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// A server-sent event stream read from a response.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Sse {
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends; panics past the deadline.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within 20s")
                .expect("read the event stream")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
