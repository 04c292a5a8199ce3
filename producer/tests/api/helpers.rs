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
