//! Warm starts: the other kind of prepared artifact, kept by the worker that made it. A
//! zygote is a sandboxed interpreter that has imported a test framework and collected one
//! test file once; each test of that file is a fork of it into a fresh sandbox of its own
//! (`isotest_sandbox::Zygote`). Zygotes are keyed by everything that decides what they
//! collected (tenant, environment, workspace, framework, interpreter, file, variables), so
//! two tenants never share one; they are bounded in number and memory, the least recently
//! used going first, and go away when idle. A test that cannot start warm (a file that does
//! not collect, an id it did not collect) runs cold, and its result says why.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use isotest_protocol::message::TestMessage;
use isotest_sandbox::{ForkOutcome, Limits, RunSpec, Sandboxer, Zygote, ZygoteError, ZygoteSpec};

/// How a worker keeps its zygotes.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// The most zygotes kept at once.
    pub max_zygotes: usize,
    /// The most memory they may hold together; beyond it the least recently used go.
    pub max_bytes: u64,
    /// A zygote unused this long goes away.
    pub idle: Duration,
    /// How long a zygote may take to import and collect before its tests run cold.
    pub ready_timeout: Duration,
    /// Children each zygote keeps isolated ahead of its tests (the worker's concurrency).
    pub spares: usize,
}

impl Default for WarmConfig {
    fn default() -> Self {
        WarmConfig {
            max_zygotes: 8,
            max_bytes: 2 << 30,
            idle: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(120),
            spares: 1,
        }
    }
}

/// How to start a test warm: the zygote that serves its file, and the one request for it.
#[derive(Debug, Clone)]
pub struct WarmPlan {
    /// What the zygote collects (a test file, a module).
    pub group: String,
    /// The zygote's own argv (the fork server with its runner, and the runner's arguments).
    pub command: Vec<String>,
    /// What the fork server's runner is asked to run in the child.
    pub request: serde_json::Value,
}

/// A zygote's Python program: the sandbox's fork server, a framework's runner, and the
/// line that starts serving.
pub fn program(runner: &str) -> String {
    format!(
        "{}\n{runner}\nForkServer().serve(prepare, run_one)\n",
        isotest_sandbox::FORK_SERVER
    )
}

/// What became of a warm start.
#[derive(Debug)]
pub enum Warm {
    /// The test ran, forked from its zygote.
    Ran(Box<ForkOutcome>),
    /// It could not start warm, for this reason: it runs cold.
    Cold(String),
}

/// One zygote slot: made once by the first test that needs it, shared by the others.
#[derive(Debug, Default)]
struct Entry {
    zygote: OnceCell<Result<Arc<Zygote>, String>>,
    used: Mutex<Option<Instant>>,
}

impl Entry {
    fn touch(&self) {
        *self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    fn last_used(&self) -> Option<Instant> {
        *self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A worker's zygotes.
#[derive(Debug)]
pub struct Zygotes {
    sandboxer: Arc<Sandboxer>,
    config: WarmConfig,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// How many zygotes were started, in all (for tests and figures).
    started: std::sync::atomic::AtomicUsize,
}

impl Zygotes {
    /// A worker's zygotes, with a task that sends idle ones away (it stops when the last
    /// handle is dropped).
    pub fn start(sandboxer: Arc<Sandboxer>, config: WarmConfig) -> Arc<Zygotes> {
        let every = (config.idle / 2).max(Duration::from_millis(100));
        let zygotes = Arc::new(Zygotes {
            sandboxer,
            config,
            entries: Mutex::new(HashMap::new()),
            started: std::sync::atomic::AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&zygotes);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(zygotes) = weak.upgrade() else {
                        break;
                    };
                    zygotes.evict("");
                }
            });
        }
        zygotes
    }

    /// How many zygotes this worker has started.
    pub fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many zygotes it keeps now.
    pub fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e.zygote.get(), Some(Ok(_))))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of the zygote a test's plan needs: everything that decides what it imported
    /// and collected, and whose it is.
    pub fn key(
        msg: &TestMessage,
        tenant: &str,
        plan: &WarmPlan,
        env: &BTreeMap<String, String>,
    ) -> String {
        #[derive(serde::Serialize)]
        struct Inputs<'a> {
            tenant: &'a str,
            environment: &'a Option<String>,
            workspace: &'a Option<String>,
            artifact: &'a Option<String>,
            framework: isotest_protocol::manifest::Framework,
            group: &'a str,
            command: &'a [String],
            env: &'a BTreeMap<String, String>,
        }
        let inputs = Inputs {
            tenant,
            environment: &msg.test.environment,
            workspace: &msg.workspace,
            artifact: &msg.test.artifact,
            framework: msg.test.framework,
            group: &plan.group,
            command: &plan.command,
            env,
        };
        hex::encode(Sha256::digest(
            serde_json::to_vec(&inputs).unwrap_or_default(),
        ))
    }

    /// Runs one test warm: from its zygote (made now if this worker has none), forked into
    /// a fresh sandbox with `limits`; or says why it cannot.
    pub async fn run(
        &self,
        key: String,
        zygote: RunSpec,
        request: serde_json::Value,
        env: BTreeMap<String, String>,
        limits: &Limits,
    ) -> Warm {
        let entry = {
            let mut entries = self.lock();
            Arc::clone(entries.entry(key.clone()).or_default())
        };
        entry.touch();
        let made = entry
            .zygote
            .get_or_init(|| async {
                let count = self
                    .started
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                tracing::info!(zygote = %key, count, "Starting a zygote.");
                let spec = ZygoteSpec {
                    run: zygote,
                    ready_timeout: self.config.ready_timeout,
                    spares: self.config.spares,
                };
                let made = self.sandboxer.start_zygote(spec).await;
                self.evict(&key);
                made.map(Arc::new).map_err(|e| cold_reason(&e))
            })
            .await;
        let zygote = match made {
            Ok(zygote) => Arc::clone(zygote),
            Err(reason) => return Warm::Cold(reason.clone()),
        };
        self.evict(&key);
        match zygote.fork(request, env, limits).await {
            Ok(outcome) => Warm::Ran(Box::new(outcome)),
            Err(e) => {
                if !zygote.is_alive() {
                    // It died (its memory limit, a crash): the next test makes another.
                    self.lock().remove(&key);
                }
                Warm::Cold(cold_reason(&e))
            }
        }
    }

    /// Forgets zygotes beyond the count or memory bound (least recently used first, never
    /// `keep`), and those idle too long; a forgotten zygote is killed once no test uses it.
    pub fn evict(&self, keep: &str) {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|key, entry| {
            key == keep
                || entry
                    .last_used()
                    .is_some_and(|used| now.duration_since(used) < self.config.idle)
        });
        loop {
            let live: Vec<(&String, &Arc<Entry>)> = entries
                .iter()
                .filter(|(_, e)| matches!(e.zygote.get(), Some(Ok(_))))
                .collect();
            let bytes: u64 = live
                .iter()
                .filter_map(|(_, e)| match e.zygote.get() {
                    Some(Ok(z)) => z.memory_bytes(),
                    _ => None,
                })
                .sum();
            if live.len() <= self.config.max_zygotes && bytes <= self.config.max_bytes {
                break;
            }
            let Some(victim) = live
                .iter()
                .filter(|(key, _)| key.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used())
                .map(|(key, _)| (*key).clone())
            else {
                break;
            };
            tracing::info!(zygote = %victim, live = live.len(), bytes, "Evicting the least recently used zygote.");
            entries.remove(&victim);
        }
    }
}

/// Why a test starts cold, in a user's words.
fn cold_reason(e: &ZygoteError) -> String {
    match e {
        ZygoteError::Prepare(why) => format!("its file did not import and collect warm ({why})"),
        other => format!(
            "no warm interpreter ({})",
            isotest_infra::error_chain(other)
        ),
    }
}
