//! The end-to-end harness: real RabbitMQ and Redis (found by `isotest-testkit`: `AMQP_URL` /
//! `REDIS_URL`, or testcontainers where Docker runs), a fresh namespace per test, and the
//! `isotest` binary started as separate OS processes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use isotest_protocol::report::Report;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `isotest` binary under test.
pub const ISOTEST: &str = env!("CARGO_BIN_EXE_isotest");

pub use isotest_testkit::{Servers, servers};

/// A fresh namespace: no queue or key of another test shares it.
pub fn namespace() -> String {
    isotest_testkit::namespace().to_string()
}

/// One test's isotest deployment: its namespace, its service processes, its files.
pub struct TestEnv {
    pub servers: Servers,
    pub ns: String,
    pub dir: PathBuf,
    pub producer_url: Option<String>,
    /// Extra variables for the service processes (not for `isotest run`).
    pub service_env: Vec<(String, String)>,
    /// Whether [`TestEnv::start`] opens the producer to requests without a token
    /// (`--open`); true but in the tests of tokens.
    pub open: bool,
    /// Further arguments of the producer [`TestEnv::start`] starts.
    pub producer_args: Vec<String>,
    /// Variables for the service processes whose name starts with the first string
    /// (`"worker"`: every worker), set after [`TestEnv::service_env`].
    pub role_env: Vec<(String, String, String)>,
    children: Vec<(String, Child)>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        let servers = servers().await;
        let ns = namespace();
        let dir = std::env::temp_dir().join(format!("isotest-e2e-{ns}"));
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        TestEnv {
            servers,
            ns,
            dir,
            producer_url: None,
            service_env: Vec::new(),
            open: true,
            producer_args: Vec::new(),
            role_env: Vec::new(),
            children: Vec::new(),
        }
    }

    /// An `isotest` command with this test's servers and namespace in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ISOTEST);
        cmd.args(args)
            .env("AMQP_URL", &self.servers.amqp_url)
            .env("REDIS_URL", &self.servers.redis_url)
            .env("ISOTEST_NAMESPACE", &self.ns)
            // Each test keeps its own prepared builds, so that one test's builds are its own.
            .env("ISOTEST_CACHE_DIR", self.dir.join("cache"))
            // Embedded runs keep their history in this test's folder, never the user's.
            .env("XDG_DATA_HOME", &self.dir)
            // Nor the user's config file (server and token): only what a test writes.
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env_remove("ISOTEST_CONFIG")
            .env_remove("ISOTEST_SERVER")
            .env_remove("ISOTEST_TOKEN")
            .env("ISOTEST_LOG_FORMAT", "text")
            // Many services run on this one host: each takes a free port for /metrics.
            .env("ISOTEST_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Starts a long-running service process; its log goes to `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> u32 {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("create log");
        let child = self
            .command(args)
            .envs(self.service_env.iter().map(|(k, v)| (k, v)))
            .envs(
                self.role_env
                    .iter()
                    .filter(|(role, _, _)| name.starts_with(role.as_str()))
                    .map(|(_, k, v)| (k, v)),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start isotest {args:?}: {e}"));
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        pid
    }

    /// Starts a producer, an aggregator and `workers` worker processes, and waits until
    /// the producer answers and every worker consumes.
    pub async fn start(&mut self, workers: usize, concurrency: u16) -> Result<()> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut producer = vec!["producer", "--listen", &listen];
        if self.open {
            producer.push("--open");
        }
        let extra = self.producer_args.clone();
        producer.extend(extra.iter().map(String::as_str));
        self.spawn("producer", &producer);
        self.spawn("aggregator", &["aggregator"]);
        let concurrency = concurrency.to_string();
        for i in 0..workers {
            self.spawn(
                &format!("worker-{i}"),
                &["worker", "--concurrency", &concurrency],
            );
        }
        let url = format!("http://{listen}");
        let health = format!("{url}/readyz");
        let ready = poll(
            Duration::from_secs(30),
            "the producer to be ready",
            || async {
                Ok(reqwest::get(&health)
                    .await
                    .is_ok_and(|r| r.status().is_success()))
            },
        )
        .await;
        if let Err(e) = ready {
            bail!("{e:#}\nproducer log:\n{}", self.log("producer").join("\n"));
        }
        self.producer_url = Some(url);
        let consuming = poll(
            Duration::from_secs(30),
            "every worker to consume",
            || async { Ok(self.consumers().await? >= u32::try_from(workers).unwrap_or(u32::MAX)) },
        )
        .await;
        if let Err(e) = consuming {
            bail!("{e:#}\nworker-0 log:\n{}", self.log("worker-0").join("\n"));
        }
        Ok(())
    }

    /// How many consumers the tests queue has.
    pub async fn consumers(&self) -> Result<u32> {
        Ok(self.queue_state().await?.1)
    }

    /// (messages ready, consumers) of the tests queue.
    pub async fn queue_state(&self) -> Result<(u32, u32)> {
        use lapin::options::QueueDeclareOptions;
        let conn = lapin::Connection::connect(
            &self.servers.amqp_url,
            lapin::ConnectionProperties::default(),
        )
        .await?;
        let channel = conn.create_channel().await?;
        let queue = channel
            .queue_declare(
                format!("{}.tests", self.ns).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        let _ = conn.close(200, "".into()).await;
        match queue {
            Ok(q) => Ok((q.message_count(), q.consumer_count())),
            Err(_) => Ok((0, 0)),
        }
    }

    /// Writes a file into the test's directory and gives its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// Runs `isotest run MANIFEST [--server URL] --json <dir>/<label>.json` to the end.
    pub fn run_suite(
        &self,
        manifest: &Path,
        label: &str,
        server: bool,
        extra: &[&str],
    ) -> RunResult {
        let json = self.dir.join(format!("{label}.json"));
        let junit = self.dir.join(format!("{label}.xml"));
        let mut args: Vec<String> = vec![
            "run".into(),
            manifest.display().to_string(),
            "--json".into(),
            json.display().to_string(),
        ];
        args.extend([
            "--junit".into(),
            junit.display().to_string(),
            "--quiet".into(),
        ]);
        if server {
            args.push("--server".into());
            args.push(self.producer_url.clone().expect("services started"));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self.command(&refs).output().expect("run isotest");
        let report = std::fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
        let junit = std::fs::read_to_string(&junit).ok();
        RunResult {
            output,
            report,
            junit,
        }
    }

    /// SIGTERMs every service, waits for each with a deadline, SIGKILLs what is left.
    pub fn stop(&mut self) {
        for (_, child) in &self.children {
            let _ = kill(
                Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{name} did not stop on SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
    }

    /// The pid of a running service process started by [`TestEnv::spawn`], by name.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }

    /// Lines of a service's log, for assertions and for diagnosing a failure.
    pub fn log(&self, name: &str) -> Vec<String> {
        std::fs::File::open(self.dir.join(format!("{name}.log")))
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Deletes the namespace's queues, exchange and keys.
    pub async fn cleanup(&self) -> Result<()> {
        let conn = lapin::Connection::connect(
            &self.servers.amqp_url,
            lapin::ConnectionProperties::default(),
        )
        .await?;
        let channel = conn.create_channel().await?;
        for queue in [
            format!("{}.tests", self.ns),
            format!("{}.tests.dead", self.ns),
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                format!("{}.dead", self.ns).as_str().into(),
                Default::default(),
            )
            .await;
        let _ = conn.close(200, "".into()).await;
        let client = redis::Client::open(self.servers.redis_url.as_str())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.ns))
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await?;
        }
        Ok(())
    }

    /// Every suite and blob key of this namespace (the aggregator's results stream,
    /// created when it starts, is no trace of a submission).
    pub async fn suite_keys(&self) -> Result<Vec<String>> {
        let client = redis::Client::open(self.servers.redis_url.as_str())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.ns))
            .query_async(&mut redis)
            .await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.contains(":suite") || k.contains(":blob:"))
            .collect())
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one `isotest run` did.
pub struct RunResult {
    pub output: Output,
    pub report: Option<Report>,
    pub junit: Option<String>,
}

impl RunResult {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// The report, or a failure that shows what the run printed.
    pub fn report(&self) -> &Report {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "isotest run wrote no report (exit {:?})\nstdout:\n{}\nstderr:\n{}",
                self.code(),
                self.stdout(),
                self.stderr()
            )
        })
    }
}

/// Polls `check` until it is true or `within` has passed (no sleeping in hope).
pub async fn poll<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    isotest_testkit::poll(within, what, || {
        let checked = check();
        async move { checked.await.map(|done| done.then_some(())) }
    })
    .await
    .map_err(anyhow::Error::msg)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
