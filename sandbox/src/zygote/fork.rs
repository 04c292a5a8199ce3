//! Forking one test from a zygote: the test's cgroup and pipes sent to the fork server, the
//! child it starts watched under the test's limits through its pidfd, and the outcome built
//! from what the child wrote and the exit status the server reports.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::control::Registered;
use super::{ForkOutcome, Zygote, ZygoteError};
use crate::error::SandboxError;
use crate::outcome::{RunOutcome, StageExit, Termination, Usage};
use crate::run::{Lease, capture, duplicate, pipe, supervise, take_cgroup};
use crate::spec::Limits;
use crate::sys;

/// How long a fork may take to be started, and to be reported once its child is gone.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The line a forked child writes on its result pipe once its sandbox is made.
const ISOLATED: &[u8] = b"isolated\n";

/// Kills a forked child that is abandoned (its future dropped, an error) before it ended.
struct KillGuard(Option<OwnedFd>);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(pidfd) = self.0.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
    }
}

impl Zygote {
    /// Runs one test in a fresh sandbox forked from the zygote: `request` for its runner,
    /// `env` set in the child, `limits` (its own cgroup, wall clock, CPU time, output caps).
    ///
    /// # Errors
    ///
    /// [`ZygoteError`] when the fork could not happen or the child could not make its
    /// sandbox; whatever the test itself does is an `Ok` outcome.
    pub async fn fork(
        &self,
        request: Value,
        env: BTreeMap<String, String>,
        limits: &Limits,
    ) -> Result<ForkOutcome, ZygoteError> {
        if !self.is_alive() {
            return Err(ZygoteError::Gone(String::new()));
        }
        let started = Instant::now();
        let inner = &self.inner;
        let slot = inner.slots.acquire().map_err(ZygoteError::Sandbox)?;
        let mut lease = Lease {
            inner: Arc::clone(inner),
            slot,
            cgroup: None,
        };
        if let Some(parent) = &inner.cgroups {
            let name = format!("sb-{}", inner.next_id());
            lease.cgroup = Some(
                take_cgroup(inner, parent, slot, &name, limits).map_err(ZygoteError::Sandbox)?,
            );
        }
        if let Some(cg) = lease.cgroup.as_mut() {
            cg.rebase_cpu();
        }
        let cgroup_procs = match &lease.cgroup {
            Some(cg) => duplicate(cg.procs_files()).map_err(ZygoteError::Sandbox)?,
            None => Vec::new(),
        };
        let (stdout_r, stdout_w) = pipe().map_err(ZygoteError::Sandbox)?;
        let (stderr_r, stderr_w) = pipe().map_err(ZygoteError::Sandbox)?;
        let (result_r, result_w) = pipe().map_err(ZygoteError::Sandbox)?;

        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut events) = mpsc::unbounded_channel();
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let _registered = Registered {
            waiters: &self.waiters,
            id,
        };
        let mut request = request;
        if let Value::Object(map) = &mut request {
            map.insert("env".into(), json!(env));
        }
        let mut fds = vec![
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            result_w.as_raw_fd(),
        ];
        fds.extend(cgroup_procs.iter().map(AsRawFd::as_raw_fd));
        self.control
            .send(&json!({"op": "fork", "id": id, "request": request}), &fds)
            .await
            .map_err(ZygoteError::Io)?;
        // The child has its copies now; ours would keep its pipes open past its death.
        drop((stdout_w, stderr_w, result_w, cgroup_procs));
        let event = tokio::time::timeout(ANSWER_TIMEOUT, events.recv())
            .await
            .map_err(|_| ZygoteError::Refused("no answer".into()))?
            .ok_or_else(|| ZygoteError::Gone(String::new()))?;
        let pidfd = match event.event.as_str() {
            "started" => event
                .fds
                .into_iter()
                .next()
                .ok_or_else(|| ZygoteError::Refused("started without a pidfd".into()))?,
            _ => {
                return Err(ZygoteError::Refused(
                    event.why.unwrap_or_else(|| event.event.clone()),
                ));
            }
        };
        let startup = started.elapsed();
        let exec_at = Instant::now();
        let guard = KillGuard(Some(pidfd.try_clone().map_err(|e| {
            ZygoteError::Sandbox(SandboxError::io("keep the test's pidfd", e))
        })?));
        // SAFETY: the AsyncFd owns this pidfd until it is dropped.
        let watched =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| {
                    ZygoteError::Sandbox(SandboxError::io("watch the forked test", e.into()))
                })?;
        let receiver = |fd: OwnedFd, what: &'static str| {
            pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| ZygoteError::Sandbox(SandboxError::io(what, e)))
        };
        let stdout_rx = receiver(stdout_r, "watch stdout")?;
        let stderr_rx = receiver(stderr_r, "watch stderr")?;
        let result_rx = receiver(result_r, "watch the test's result")?;
        let (dead_tx, dead) = tokio::sync::watch::channel(false);
        let cgroup = lease.cgroup.as_ref();
        // A pidfd turns readable when its process has exited; its parent, the fork server,
        // reaps it.
        let exited = async {
            watched
                .readable()
                .await
                .map_err(|e| SandboxError::io("wait for the forked test", e))?
                .retain_ready();
            Ok(())
        };
        let supervise = async {
            let reason = supervise(watched.get_ref().as_fd(), cgroup, limits, exited).await;
            let _ = dead_tx.send(true);
            reason.map(|(reason, ())| reason)
        };
        let result_cap = limits.collect_bytes.saturating_add(ISOLATED.len());
        let (reason, stdout, stderr, result) = tokio::join!(
            supervise,
            capture(stdout_rx, limits.stdout_bytes, dead.clone()),
            capture(stderr_rx, limits.stderr_bytes, dead.clone()),
            capture(result_rx, result_cap, dead),
        );
        let reason = reason.map_err(ZygoteError::Sandbox)?;
        let wall = exec_at.elapsed();
        drop(guard);
        // Its parent, the fork server, reaps it and says how it ended.
        let status = loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, events.recv()).await {
                Ok(Some(event)) if event.event == "exited" => break event.status,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break None,
            }
        };
        tracing::debug!(
            startup_us = startup.as_micros(),
            wall_us = wall.as_micros(),
            total_us = started.elapsed().as_micros(),
            "A forked test ended."
        );
        let Some(report) = result.data.strip_prefix(ISOLATED) else {
            let words = stderr.render("stderr");
            let last = words
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(ZygoteError::Isolation(last.to_owned()));
        };
        let oom = cgroup.is_some_and(|c| c.oom_kills() > 0);
        let termination = reason.unwrap_or(if oom {
            Termination::OutOfMemory
        } else {
            Termination::Exited
        });
        let usage = Usage {
            max_rss_bytes: cgroup.and_then(|c| c.peak_memory()).unwrap_or(0),
            cpu: cgroup.and_then(|c| c.cpu_usage()).unwrap_or_default(),
            wall,
        };
        // The test's own wait status (pid 2's, which the server reaps).
        let command = status.map(|status| {
            if libc::WIFSIGNALED(status) {
                StageExit::Signal(libc::WTERMSIG(status))
            } else {
                StageExit::from_shell_status(libc::WEXITSTATUS(status))
            }
        });
        Ok(ForkOutcome {
            outcome: RunOutcome {
                setup: None,
                command,
                teardown: None,
                termination,
                stdout,
                stderr,
                collected: BTreeMap::new(),
                exported: None,
                usage,
                startup,
            },
            report: report.to_vec(),
        })
    }
}
