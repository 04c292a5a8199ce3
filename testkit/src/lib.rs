//! The test kit every integration test uses, and nothing else does (a dev-dependency only):
//! where the real servers are ([`servers`]: `AMQP_URL` and `REDIS_URL`, or RabbitMQ and Redis
//! started with testcontainers where a Docker engine runs, or a failure that says what to
//! set; never a mock), a fresh [`namespace`] per test so that tests run in parallel on one
//! broker and one Redis, and [`poll`] to wait for something with a deadline instead of
//! sleeping.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isotest_protocol::names::Namespace;
use tokio::sync::OnceCell;

/// Where the servers are, for the whole test run.
#[derive(Debug, Clone)]
pub struct Servers {
    pub amqp_url: String,
    pub redis_url: String,
}

static SERVERS: OnceCell<Servers> = OnceCell::const_new();
/// Containers started for this run, kept alive until the process ends.
static CONTAINERS: Mutex<Vec<Box<dyn std::any::Any + Send>>> = Mutex::new(Vec::new());

/// The RabbitMQ and Redis every test talks to.
///
/// # Panics
///
/// When neither the environment names the servers nor Docker can start them: a test
/// without its real servers must fail, never pass by skipping.
pub async fn servers() -> Servers {
    SERVERS
        .get_or_init(|| async {
            match (std::env::var("AMQP_URL"), std::env::var("REDIS_URL")) {
                (Ok(amqp_url), Ok(redis_url)) => Servers { amqp_url, redis_url },
                _ if docker_available() => start_containers()
                    .await
                    .unwrap_or_else(|e| panic!("start RabbitMQ and Redis with testcontainers: {e}")),
                _ => panic!(
                    "these tests need RabbitMQ and Redis: set AMQP_URL and REDIS_URL \
                     (for example amqp://guest:guest@127.0.0.1:5672/%2f and redis://127.0.0.1:6379/; \
                     scripts/setup starts both), or run a Docker engine so testcontainers can start them"
                ),
            }
        })
        .await
        .clone()
}

/// The PostgreSQL the history tests use: `DATABASE_URL`, or the local server with trust
/// auth and its database `test` (as `scripts/setup` leaves it).
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn docker_available() -> bool {
    Path::new("/var/run/docker.sock").exists()
        && Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

async fn start_containers() -> Result<Servers, Box<dyn std::error::Error>> {
    use testcontainers::GenericImage;
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    let rabbit = GenericImage::new("rabbitmq", "3.13-alpine")
        .with_exposed_port(5672.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
        .start()
        .await?;
    let redis = GenericImage::new("redis", "7-alpine")
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .start()
        .await?;
    let servers = Servers {
        amqp_url: format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            rabbit.get_host_port_ipv4(5672).await?
        ),
        redis_url: format!(
            "redis://127.0.0.1:{}/",
            redis.get_host_port_ipv4(6379).await?
        ),
    };
    let mut kept = CONTAINERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    kept.push(Box::new(rabbit));
    kept.push(Box::new(redis));
    Ok(servers)
}

/// A fresh namespace: no queue or key of another test shares it.
pub fn namespace() -> Namespace {
    Namespace::new(&format!(
        "t-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap_or_else(|e| panic!("a uuid namespace is valid: {e}"))
}

/// Calls `check` until it gives `Some`, or fails after `within`, saying what it waited for.
///
/// # Errors
///
/// The first error `check` returns, or a timeout naming `what`.
pub async fn poll<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => return Err(format!("while waiting for {what}: {e:#}")),
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
