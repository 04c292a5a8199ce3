//! Embedded mode: the whole pipeline in one process, with no broker and no Redis. The
//! producer's message builder, the worker's runner and the aggregator's report
//! assembly are the same code the services run, so the report is the same field for
//! field; only the queue (a semaphore over tasks) and the result store (this
//! function's own vector) differ.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use isotest_infra::error_chain;
use isotest_protocol::manifest::FlakyResult;
use isotest_protocol::message::TestMessage;
use isotest_protocol::now_ms;
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::{Status, TestResult};
use isotest_sandbox::{SandboxError, Sandboxer};
use isotest_worker::Runner;
use isotest_worker::run::infrastructure_error;

use crate::args::{RunArgs, default_concurrency};
use crate::input::LoadedSuite;
use crate::output::{Progress, Where};
use crate::run::{Ended, Local};

/// Runs every test of the suite on this machine and assembles the report: of every
/// test, when they all ended; of those that ended, with the rest `lost`, at the suite's
/// deadline; and with the rest `cancelled`, on Ctrl-C or SIGTERM ([`Ended::Interrupted`]).
pub async fn run(
    loaded: LoadedSuite,
    args: &RunArgs,
    sandboxer: Arc<Sandboxer>,
    local: &Local<'_>,
    history: Option<&isotest_history::History>,
) -> Ended {
    let runner = Runner::new(
        sandboxer,
        args.sandbox.runner_config(
            isotest_infra::process_id("embedded"),
            args.concurrency.unwrap_or_else(default_concurrency),
        ),
    );
    // The builds were made here: the tests run from them where they are.
    if let Some(preparer) = local.prepared() {
        for build in preparer.builds() {
            runner
                .artifacts()
                .insert(&build.digest, build.dir.clone(), build.index.clone());
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let mut record = isotest_producer::suite::record(
        &id,
        &loaded.suite,
        now,
        isotest_producer::config::DEFAULT_DEADLINE,
    );
    if let Some(history) = history {
        record.quarantined = crate::history::quarantined(history, &record).await;
    }
    let messages = isotest_producer::suite::messages(&id, &loaded.suite, now);
    let workspace = loaded.workspace.map(|b| b.bytes);
    let concurrency = usize::from(args.concurrency.unwrap_or_else(default_concurrency).max(1));
    let total = u32::try_from(messages.len()).unwrap_or(u32::MAX);
    crate::output::started(&id, total, Where::Here { concurrency }, args.quiet);
    let mut progress = Progress::new(total, args.quiet);

    let pool = Pool {
        runner,
        workspace,
        permits: Arc::new(Semaphore::new(concurrency)),
        tasks: JoinSet::new(),
    };
    let deadline = Duration::from_millis(record.deadline_at_ms.saturating_sub(now));
    // The results live outside the race, so that the tests which ended before the
    // deadline or the interrupt keep their verdicts.
    let mut results = Vec::new();
    let state = tokio::select! {
        () = pool.run_all(messages, total, &mut progress, record.flaky_result, &mut results) => SuiteState::Complete,
        () = tokio::time::sleep(deadline) => SuiteState::DeadlineExceeded,
        () = isotest_infra::shutdown::signal() => SuiteState::Cancelled,
    };
    progress.finish();
    let report = isotest_report::assemble(&record, results, state);
    if let Some(history) = history {
        crate::history::record(history, &record, &report).await;
    }
    if state == SuiteState::Cancelled {
        Ended::Interrupted(report)
    } else {
        Ended::Finished(report)
    }
}

/// The in-process queue: every attempt is a task waiting its turn on a semaphore
/// (fair, so tests start in manifest order); results come back on one channel to
/// the single owner of the run's state.
struct Pool {
    runner: Runner,
    workspace: Option<Arc<[u8]>>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
}

type Finished = (TestMessage, Result<TestResult, SandboxError>);

impl Pool {
    fn spawn(&mut self, msg: TestMessage, done: &mpsc::UnboundedSender<Finished>) {
        let runner = self.runner.clone();
        let workspace = self.workspace.clone();
        let permits = self.permits.clone();
        let done = done.clone();
        self.tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only fails if it were.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let prepared = msg
                .test
                .artifact
                .as_deref()
                .and_then(|digest| runner.artifacts().get_local(digest));
            let result = runner
                .run_from(&msg, workspace, prepared.as_deref(), now_ms())
                .await;
            let _ = done.send((msg, result));
        });
    }

    async fn run_all(
        mut self,
        messages: Vec<TestMessage>,
        total: u32,
        progress: &mut Progress,
        flaky_result: FlakyResult,
        results: &mut Vec<TestResult>,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for msg in messages {
            self.spawn(msg, &done_tx);
        }
        let mut finals = 0;
        let mut failed_before = std::collections::HashSet::new();
        while finals < total {
            let Some((msg, outcome)) = done_rx.recv().await else {
                break;
            };
            let result = outcome.unwrap_or_else(|e| {
                infrastructure_error(&msg, self.runner.worker_id(), &error_chain(&e))
            });
            if !result.is_final {
                // What makes a final pass flaky, as the report's assembly decides it.
                if result.status.is_retryable() && !result.is_infrastructure_failure() {
                    failed_before.insert(result.name.clone());
                }
            }
            if result.is_final {
                finals += 1;
                let flaky = result.status == Status::Passed && failed_before.contains(&result.name);
                // Under flaky_result = "fail" the verdict of a flaky pass is a failure, and
                // the progress line says the verdict, not the last attempt's status.
                let shown = if flaky && flaky_result == FlakyResult::Fail {
                    Status::Failed
                } else {
                    result.status
                };
                progress.finished(&result.name, shown, flaky, result.duration_ms);
            } else if let Some(next) = msg.next_attempt(now_ms()) {
                self.spawn(next, &done_tx);
            }
            results.push(result);
        }
    }
}
