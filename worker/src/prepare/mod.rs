//! The prepare stage: work done once for many tests, whose product the tests run from. For
//! compiled frameworks that is a build ([`build`]): `cargo test --no-run`, `go test -c` per
//! package, or a suite's own `build` command, run once per (workspace, environment,
//! toolchain, command) in a sandbox with the same isolation as a test; its products leave
//! the sandbox as a directory with an [`ArtifactIndex`] at its root, and each test binds
//! them read-only into its own fresh sandbox and execs one test binary for exactly one test.
//! The [`ArtifactStore`] holds prepared builds on a host by their content address; warm
//! interpreters are the other kind of prepared artifact, kept by the worker that made them.

mod build;
mod cache;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use isotest_protocol::artifact::ArtifactIndex;
use isotest_protocol::manifest::{BuildSpec, Framework};
use isotest_sandbox::{Bind, Limits, Sandboxer};

use crate::frameworks::{Toolchain, adapter};

pub use build::{BuildError, Built, build};
pub use cache::{BuildCache, CacheError, CachedBuild};
pub use store::{ArtifactStore, Prepared, StoreError, read_index};

/// How to build what a group of tests runs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub framework: Framework,
    /// The environment (root file system) the build, and its tests, run in.
    pub environment: Option<String>,
    /// The build's argv, run in the workspace.
    pub command: Vec<String>,
    /// Its variables (the framework's tool variables included).
    pub env: BTreeMap<String, String>,
    /// The workspace paths it leaves for its tests (the rest of its workspace is dropped).
    pub export: Vec<String>,
    /// Names of scratch files and directories under them, left out (`name`, `*suffix`,
    /// `prefix*`).
    pub exclude: Vec<String>,
}

impl BuildPlan {
    /// The sha256 of everything that decides the build's products: the plan itself, the
    /// workspace it builds, and the identity of the toolchain that builds it.
    pub fn key(&self, workspace: Option<&str>, toolchain: &str) -> String {
        #[derive(serde::Serialize)]
        struct Inputs<'a> {
            framework: Framework,
            environment: &'a Option<String>,
            command: &'a [String],
            env: &'a BTreeMap<String, String>,
            export: &'a [String],
            exclude: &'a [String],
            workspace: Option<&'a str>,
            toolchain: &'a str,
        }
        let inputs = Inputs {
            framework: self.framework,
            environment: &self.environment,
            command: &self.command,
            env: &self.env,
            export: &self.export,
            exclude: &self.exclude,
            workspace,
            toolchain,
        };
        let canonical = serde_json::to_vec(&inputs).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }
}

/// Whether an artifact index can be trusted to describe a build of `framework` (it comes
/// from a blob any client may upload, so it only ever affects that client's own tests).
pub(crate) fn check_index(index: &ArtifactIndex) -> Result<(), String> {
    let relative = |p: &str| {
        !p.is_empty()
            && std::path::Path::new(p)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if let Some(bad) = index.mounts.iter().find(|m| !relative(m)) {
        return Err(format!(
            "mount `{bad}` is not a relative path inside the workspace"
        ));
    }
    if let Some(bad) = index
        .binaries
        .iter()
        .find(|b| !relative(&b.exe) || !(b.cwd.is_empty() || relative(&b.cwd)))
    {
        return Err(format!(
            "binary `{}` names a path outside the workspace",
            bad.id
        ));
    }
    Ok(())
}

/// The identity of the toolchain a framework builds with: what its programs say of their
/// versions (a rustup or Go upgrade changes it, and so every build's key).
pub fn toolchain_identity(framework: Framework, tools: &Toolchain) -> String {
    let mut identity = String::new();
    for program in adapter(framework).build_tools(tools) {
        let arg = if program.file_name().is_some_and(|n| n == "go") {
            "version"
        } else {
            "--version"
        };
        let said = std::process::Command::new(&program)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("cannot run: {e}"));
        identity.push_str(&format!("{}: {said}\n", program.display()));
    }
    identity
}

/// The read-only binds that put a prepared build where its tests expect it.
pub fn binds(dir: &std::path::Path, index: &ArtifactIndex) -> Vec<Bind> {
    index
        .mounts
        .iter()
        .map(|mount| Bind {
            host: dir.join(mount),
            target: mount.clone(),
        })
        .collect()
}

/// What a prepare for one set of inputs came to, shared by everyone who asked for it.
type Outcome = Result<CachedBuild, Arc<BuildError>>;

/// Runs each build once on this machine, through the [`BuildCache`]: the prepare stage of
/// `isotest run`, in embedded and in server mode alike.
#[derive(Debug)]
pub struct Preparer {
    sandboxer: Arc<Sandboxer>,
    cache: BuildCache,
    tools: Toolchain,
    limits: Limits,
    /// Builds of this run by key, so that two entries needing one build share it.
    runs: Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>,
    /// How many builds ran (not found in the cache), for the run's figures and its tests.
    built: std::sync::atomic::AtomicUsize,
    /// Every build of the run, in the order they were first asked for.
    records: Mutex<Vec<BuildRecord>>,
}

/// What a test or entry asks to be prepared.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub framework: Framework,
    /// The tests' own variables.
    pub env: &'a BTreeMap<String, String>,
    pub environment: Option<&'a str>,
    /// A `command` or `junit` suite's own build.
    pub build: Option<&'a BuildSpec>,
    /// The packed workspace and its digest.
    pub workspace: Option<(&'a str, &'a Arc<[u8]>)>,
}

impl Request<'_> {
    /// The build it asks for: its own, or its framework's; `None` when it needs none.
    pub fn plan(&self, tools: &Toolchain) -> Option<BuildPlan> {
        match self.build {
            Some(spec) => {
                let mut env = self.env.clone();
                crate::frameworks::tool_env(self.framework, tools, &mut env);
                Some(BuildPlan {
                    framework: self.framework,
                    environment: self.environment.map(str::to_owned),
                    command: spec.command.clone(),
                    env,
                    export: spec.outputs.clone(),
                    exclude: Vec::new(),
                })
            }
            None => adapter(self.framework).build(tools, self.env, self.environment),
        }
    }
}

/// What one build of a run came to, for the report.
#[derive(Debug, Clone)]
pub struct BuildRecord {
    pub framework: Framework,
    pub key: String,
    /// The build's packed digest where it succeeded, the error where it failed.
    pub outcome: Result<String, Arc<BuildError>>,
    /// Whether it was found built by an earlier run.
    pub cached: bool,
    pub duration: std::time::Duration,
}

impl Preparer {
    pub fn new(
        sandboxer: Arc<Sandboxer>,
        cache: BuildCache,
        tools: Toolchain,
        limits: Limits,
    ) -> Preparer {
        Preparer {
            sandboxer,
            cache,
            tools,
            limits,
            runs: Mutex::new(HashMap::new()),
            built: std::sync::atomic::AtomicUsize::new(0),
            records: Mutex::new(Vec::new()),
        }
    }

    /// The builds of the run that succeeded.
    pub fn builds(&self) -> Vec<CachedBuild> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|cell| cell.get().and_then(|o| o.as_ref().ok()).cloned())
            .collect()
    }

    /// Every build of the run so far.
    pub fn records(&self) -> Vec<BuildRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, record: BuildRecord) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record);
    }

    /// How many builds this preparer ran (a cached one does not count).
    pub fn builds_run(&self) -> usize {
        self.built.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sandboxer builds run in.
    pub fn sandboxer(&self) -> &Arc<Sandboxer> {
        &self.sandboxer
    }

    /// The prepared build a request runs from: `None` for a framework without a build, else
    /// the one made before with the same inputs, or one made now (once, however many ask).
    ///
    /// # Errors
    ///
    /// Returns the [`BuildError`] of a build that failed or could not run.
    pub async fn prepare(
        &self,
        request: Request<'_>,
    ) -> Result<Option<CachedBuild>, Arc<BuildError>> {
        let Some(plan) =
            adapter(request.framework).build(&self.tools, request.env, request.environment)
        else {
            return Ok(None);
        };
        let identity = toolchain_identity(request.framework, &self.tools);
        let key = plan.key(request.workspace.map(|(digest, _)| digest), &identity);
        let cell = {
            let mut runs = self
                .runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(runs.entry(key.clone()).or_default())
        };
        cell.get_or_init(|| async {
            let started = std::time::Instant::now();
            if let Some(cached) = self.cache.lookup(&key) {
                tracing::info!(framework = %request.framework, key = %key, "Prepared build found in the cache.");
                self.record(BuildRecord {
                    framework: request.framework,
                    key: key.clone(),
                    outcome: Ok(cached.digest.clone()),
                    cached: true,
                    duration: started.elapsed(),
                });
                return Ok(cached);
            }
            self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = self.build_and_keep(&plan, &key, request).await;
            self.record(BuildRecord {
                framework: request.framework,
                key: key.clone(),
                outcome: outcome.as_ref().map(|b| b.digest.clone()).map_err(Arc::clone),
                cached: false,
                duration: started.elapsed(),
            });
            outcome
        })
        .await
        .clone()
        .map(Some)
    }

    async fn build_and_keep(&self, plan: &BuildPlan, key: &str, request: Request<'_>) -> Outcome {
        let scratch = self.cache.scratch(key).map_err(|e| Arc::new(io_error(e)))?;
        let built = build(
            &self.sandboxer,
            plan,
            key,
            request.workspace.map(|(_, bytes)| Arc::clone(bytes)),
            self.limits.clone(),
            &scratch,
        )
        .await
        .map_err(Arc::new)?;
        tracing::info!(framework = %request.framework, key = %key, seconds = built.duration.as_secs_f64(), "Built once for the suite.");
        self.cache
            .keep(key, &scratch, built.index)
            .map_err(|e| Arc::new(io_error(e)))
    }
}

fn io_error(e: CacheError) -> BuildError {
    let path = match &e {
        CacheError::Pack { path, .. } | CacheError::Io { path, .. } => path.clone(),
    };
    BuildError::Io {
        path,
        source: std::io::Error::other(isotest_infra::error_chain(&e)),
    }
}
