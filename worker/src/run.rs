//! Runs one test attempt in a fresh sandbox and turns what happened into a
//! [`TestResult`]. Embedded mode and the distributed worker both come through here,
//! which is why their reports agree field for field.

use std::sync::Arc;
use std::time::Instant;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::duration;
use isotest_protocol::message::TestMessage;
use isotest_protocol::now_ms;
use isotest_protocol::result::{Stage, Start, Status, TestResult, Timings, Usage};
use isotest_sandbox::{
    Limits, RunOutcome, RunSpec, SandboxError, Sandboxer, StageExit, Termination,
};

use crate::frameworks::{self, Exit, Observed, Toolchain};
use crate::prepare::{ArtifactStore, Prepared};
use crate::warm::{Warm, WarmConfig, Zygotes};

/// Settings of every sandbox a runner creates.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// An id naming this process in every result it produces.
    pub worker_id: String,
    pub tools: Toolchain,
    /// The limits of every test; its own timeout replaces `limits.timeout`.
    pub limits: Limits,
    /// Whether tests of suites with `network = true` may share the host's network. Off
    /// by default: such a test could reach services on the worker's loopback (its Redis,
    /// say) and forge other suites' results.
    pub allow_network: bool,
    /// Where prepared builds fetched for tests are unpacked (root-only, like the state dir).
    pub artifact_dir: std::path::PathBuf,
    /// How this runner keeps warm interpreters; `None` starts every test cold.
    pub warm: Option<WarmConfig>,
}

/// Runs test attempts in sandboxes.
#[derive(Debug, Clone)]
pub struct Runner {
    sandboxer: Arc<Sandboxer>,
    config: Arc<RunnerConfig>,
    artifacts: Arc<ArtifactStore>,
    zygotes: Option<Arc<Zygotes>>,
}

/// What became of an attempt to start a test warm.
enum Attempt {
    /// It ran warm: its result.
    Ran(Box<TestResult>),
    /// It could have, and starts cold instead, for this reason.
    Cold(String),
    /// Its framework never starts warm.
    Never,
}

impl Runner {
    pub fn new(sandboxer: Arc<Sandboxer>, config: RunnerConfig) -> Runner {
        let artifacts = Arc::new(ArtifactStore::new(config.artifact_dir.clone()));
        let zygotes = config
            .warm
            .clone()
            .map(|warm| Zygotes::start(Arc::clone(&sandboxer), warm));
        Runner {
            sandboxer,
            config: Arc::new(config),
            artifacts,
            zygotes,
        }
    }

    /// This runner's warm interpreters, where it keeps any.
    pub fn zygotes(&self) -> Option<&Arc<Zygotes>> {
        self.zygotes.as_ref()
    }

    /// The prepared builds this runner's tests run from.
    pub fn artifacts(&self) -> &Arc<ArtifactStore> {
        &self.artifacts
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Runs one attempt. `taken_at_ms` is when the message was taken off the queue.
    ///
    /// # Errors
    ///
    /// Returns [`SandboxError`] only when the sandbox itself could not be made: a
    /// failure of the infrastructure, not a verdict on the test. A test that cannot run
    /// as given (a workspace that escapes its directory, an unknown environment, network
    /// access this worker does not give) gets an `error` verdict instead.
    pub async fn run(
        &self,
        msg: &TestMessage,
        workspace: Option<Arc<[u8]>>,
        taken_at_ms: u64,
    ) -> Result<TestResult, SandboxError> {
        self.run_from(msg, workspace, None, taken_at_ms).await
    }

    /// Runs one attempt as [`Self::run`] does, from a prepared build where the test names one.
    ///
    /// # Errors
    ///
    /// As [`Self::run`].
    pub async fn run_from(
        &self,
        msg: &TestMessage,
        workspace: Option<Arc<[u8]>>,
        prepared: Option<&Prepared>,
        taken_at_ms: u64,
    ) -> Result<TestResult, SandboxError> {
        let test = &msg.test;
        if msg.network && !self.config.allow_network {
            return Ok(error_verdict(
                msg,
                &self.config.worker_id,
                "the suite asks for network access (network = true), which this worker does not \
                 give; pass --allow-network (ISOTEST_ALLOW_NETWORK) to `isotest worker`, or to \
                 `isotest run` in embedded mode, to let tests share its network"
                    .to_owned(),
            ));
        }
        let start = match &self.zygotes {
            Some(zygotes) => match self.warm(zygotes, msg, &workspace, taken_at_ms).await {
                Attempt::Ran(result) => return Ok(*result),
                Attempt::Cold(reason) => Some(Start::cold(reason)),
                Attempt::Never => None,
            },
            None => None,
        };
        let mut plan = frameworks::plan_from(test, &self.config.tools, prepared);
        // Which attempt this is, so a test (or its setup) can tell a retry from a first run.
        plan.env
            .insert(frameworks::ATTEMPT_VAR.into(), msg.attempt.to_string());
        let limits = Limits {
            timeout: test.timeout(),
            ..self.config.limits.clone()
        };
        let spec = RunSpec {
            environment: test.environment.clone(),
            workspace_bundle: workspace,
            files: plan.files,
            setup: test.setup.clone(),
            command: plan.command,
            teardown: test.teardown.clone(),
            env: plan.env,
            limits: limits.clone(),
            network: msg.network,
            collect: plan.collect,
            workdir: plan.workdir,
            binds: plan.binds,
            ..RunSpec::default()
        };
        let started_at_ms = now_ms();
        let clock = Instant::now();
        let outcome = match self.sandboxer.run(spec).await {
            Ok(outcome) => outcome,
            Err(e) => match input_problem(&e) {
                Some(reason) => return Ok(error_verdict(msg, &self.config.worker_id, reason)),
                None => return Err(e),
            },
        };
        let finished_at_ms = now_ms();
        let wall = clock.elapsed();
        let mut result = self.judge(msg, &outcome, &limits);
        result.started_at_ms = started_at_ms;
        result.finished_at_ms = finished_at_ms;
        result.duration_ms = u64::try_from(outcome.usage.wall.as_millis()).unwrap_or(u64::MAX);
        result.timings = Timings {
            queue_wait_ms: taken_at_ms.saturating_sub(msg.published_at_ms),
            sandbox_start_us: micros(outcome.startup),
            run_us: micros(wall.saturating_sub(outcome.startup)),
        };
        result.start = start;
        Ok(result)
    }

    /// Starts a test warm where its framework can: forked from the zygote of its file.
    async fn warm(
        &self,
        zygotes: &Zygotes,
        msg: &TestMessage,
        workspace: &Option<Arc<[u8]>>,
        taken_at_ms: u64,
    ) -> Attempt {
        let test = &msg.test;
        let adapter = frameworks::adapter(test.framework);
        let plan = match adapter.warm(test, &self.config.tools) {
            Ok(Some(plan)) => plan,
            Ok(None) => return Attempt::Never,
            Err(reason) => return Attempt::Cold(reason),
        };
        if !msg.warm {
            return Attempt::Cold("the suite asks for cold starts (warm = false)".into());
        }
        if msg.network {
            return Attempt::Cold("a test with network access starts cold".into());
        }
        if test.setup.is_some() || test.teardown.is_some() || !test.files.is_empty() {
            return Attempt::Cold("a test with setup, teardown or files starts cold".into());
        }
        // What the zygote imports and collects under: the tests' variables, the framework's.
        let mut env = test.env.clone();
        frameworks::tool_env(test.framework, &self.config.tools, &mut env);
        // Never shared between suites: a suite is one tenant's.
        let key = Zygotes::key(msg, &msg.suite_id, &plan, &env);
        let zygote = RunSpec {
            environment: test.environment.clone(),
            workspace_bundle: workspace.clone(),
            command: plan.command,
            env,
            limits: self.config.limits.clone(),
            ..RunSpec::default()
        };
        let child_env = [(frameworks::ATTEMPT_VAR.to_owned(), msg.attempt.to_string())].into();
        let limits = Limits {
            timeout: test.timeout(),
            ..self.config.limits.clone()
        };
        let started_at_ms = now_ms();
        let fork = match zygotes
            .run(key, zygote, plan.request, child_env, &limits)
            .await
        {
            Warm::Ran(fork) => fork,
            Warm::Cold(reason) => return Attempt::Cold(reason),
        };
        let report = match adapter.warm_report(&fork.report) {
            Ok(report) => report.map(<[u8]>::to_vec),
            Err(reason) => return Attempt::Cold(reason),
        };
        let mut outcome = fork.outcome;
        if let (Some(path), Some(report)) = (frameworks::report_path(test), report) {
            outcome.collected.insert(path.to_owned(), Ok(report));
        }
        let mut result = self.judge(msg, &outcome, &limits);
        result.started_at_ms = started_at_ms;
        result.finished_at_ms = now_ms();
        result.duration_ms =
            u64::try_from((outcome.startup + outcome.usage.wall).as_millis()).unwrap_or(u64::MAX);
        result.timings = Timings {
            queue_wait_ms: taken_at_ms.saturating_sub(msg.published_at_ms),
            sandbox_start_us: micros(outcome.startup),
            run_us: micros(outcome.usage.wall),
        };
        result.start = Some(Start::warm());
        Attempt::Ran(Box::new(result))
    }

    fn judge(&self, msg: &TestMessage, outcome: &RunOutcome, limits: &Limits) -> TestResult {
        let stdout = outcome.stdout.render("stdout");
        let stderr = outcome.stderr.render("stderr");
        let collected = frameworks::report_path(&msg.test)
            .and_then(|path| outcome.collected.get(path))
            .map(|r| match r {
                Ok(bytes) => Ok(bytes.as_slice()),
                Err(e) => Err(e.to_string()),
            });
        let seen = Observed {
            setup: outcome.setup.map(exit),
            command: outcome.command.map(exit),
            teardown: outcome.teardown.map(exit),
            stdout: &stdout,
            stderr: &stderr,
            report: collected,
        };
        let limit_stage =
            if outcome.setup.is_some() && outcome.command.is_none() && msg.test.setup.is_some() {
                Stage::Test
            } else if outcome.setup.is_none() && msg.test.setup.is_some() {
                Stage::Setup
            } else if outcome.command.is_some() {
                Stage::Teardown
            } else {
                Stage::Test
            };
        let mut verdict = frameworks::judge(msg.test.framework, &seen);
        match outcome.termination {
            Termination::Exited => {}
            Termination::TimedOut => {
                verdict.status = Status::Timeout;
                verdict.reason = Some(format!(
                    "timed out after {}",
                    duration::format(limits.timeout)
                ));
                verdict.stage = Some(limit_stage);
            }
            Termination::CpuTimeExceeded => {
                verdict.status = Status::Timeout;
                let cpu = limits.cpu_time.map(duration::format).unwrap_or_default();
                verdict.reason = Some(format!("used more than its CPU time limit of {cpu}"));
                verdict.stage = Some(limit_stage);
            }
            Termination::OutOfMemory => {
                verdict.status = Status::Oom;
                verdict.reason = Some(format!(
                    "killed for exceeding its memory limit of {} MiB",
                    limits.memory_bytes >> 20
                ));
                verdict.stage = Some(limit_stage);
            }
        }
        let exit_code = match outcome.command {
            Some(StageExit::Code(code)) => Some(code),
            Some(StageExit::Signal(sig)) => Some(128 + sig),
            None => None,
        };
        TestResult {
            schema_version: SCHEMA_VERSION,
            suite_id: msg.suite_id.clone(),
            name: msg.test.name.clone(),
            index: msg.index,
            attempt: msg.attempt,
            is_final: !verdict.status.is_retryable() || msg.is_last_attempt(),
            status: verdict.status,
            reason: verdict.reason,
            // The test ran: whatever happened is its own.
            infrastructure: false,
            stage: verdict.stage,
            exit_code,
            duration_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            worker: self.config.worker_id.clone(),
            stdout,
            stderr,
            cases: verdict.cases,
            usage: Usage {
                max_rss_bytes: outcome.usage.max_rss_bytes,
                cpu_ms: u64::try_from(outcome.usage.cpu.as_millis()).unwrap_or(u64::MAX),
                wall_ms: u64::try_from(outcome.usage.wall.as_millis()).unwrap_or(u64::MAX),
            },
            timings: Timings::default(),
            start: None,
            cached_from: None,
        }
    }
}

/// Why a sandbox refused a test as given, or `None` when the failure is the host's.
pub fn input_problem(e: &SandboxError) -> Option<String> {
    match e {
        SandboxError::Bundle(_) => Some(format!(
            "workspace refused: {}",
            isotest_infra::error_chain(e)
        )),
        SandboxError::UnknownEnvironment(_)
        | SandboxError::InvalidSpec(_)
        | SandboxError::ExecRefused { .. } => Some(isotest_infra::error_chain(e)),
        _ => None,
    }
}

/// The result recorded when the worker itself fails a test over and over (a poison
/// message): an `error` marked as the infrastructure's, not the test's.
pub fn infrastructure_error(msg: &TestMessage, worker_id: &str, why: &str) -> TestResult {
    TestResult::infrastructure_error(msg, worker_id, why, now_ms())
}

/// A final `error` verdict given before the test ran (stage `prepare`).
pub fn error_verdict(msg: &TestMessage, worker_id: &str, reason: String) -> TestResult {
    TestResult::prepare_error(msg, worker_id, reason, now_ms())
}

fn exit(e: StageExit) -> Exit {
    match e {
        StageExit::Code(c) => Exit::Code(c),
        StageExit::Signal(s) => Exit::Signal(s),
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
