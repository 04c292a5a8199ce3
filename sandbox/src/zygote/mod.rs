//! Zygotes: a long-lived process in a sandbox of its own that has done the slow part of
//! starting a test once (an interpreter that imported its framework and collected a file),
//! and forks each test into a fresh sandbox of its own. The process is a fork server
//! ([`FORK_SERVER`], Python) with a framework's runner added; it runs with
//! [`Privilege::ForkServer`](crate::Privilege::ForkServer) and talks to the worker over a
//! `SOCK_SEQPACKET` socket (its fd 6), one JSON message a packet, file descriptors riding
//! along (see the protocol at the top of `zygote/forkserver.py`).
//!
//! The fork server keeps [`ZygoteSpec::spares`] children made ahead: each is pid 2 of a new
//! pid namespace whose pid 1, `isotest-init "" r` (the memfd of `init.rs`, passed when
//! the server is configured, vfork'd and exec'd), only reaps and is non-dumpable; pid 2 has unshared mount, network, ipc and uts
//! namespaces and mounted a private `/tmp`, `/dev/shm`, devpts, proc and a copy-on-write
//! overlay of the workspace, and waits. For each test the worker takes a cgroup of the pool
//! (the test's limits), makes its stdout, stderr and result pipes, and sends them with the
//! cgroup's `cgroup.procs` files; the server hands them to a spare, whose pid 2 joins that
//! cgroup with its init, unshares a cgroup namespace, drops every capability and installs the
//! strict seccomp filter, then runs its one test. The worker watches it through a pidfd of
//! its pid 1 the server sends back (killing pid 1 ends the namespace), enforces the wall and
//! CPU limits itself, and learns its exit status from the server; a zygote that lies about its own tests only lies about its own
//! tenant's tests, which it could as well by running them.
//!
//! `start.rs` starts a zygote, `control.rs` speaks over its socket and routes its messages,
//! `fork.rs` runs one test forked from it.

mod control;
mod fork;
mod start;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::Inner;
use crate::error::SandboxError;
use crate::outcome::RunOutcome;
use crate::spec::RunSpec;
use control::{Control, Waiters};

/// The isolation half of every zygote, to which a runner adds `prepare` and `run_one`
/// and a last line `ForkServer().serve(prepare, run_one)`.
pub const FORK_SERVER: &str = include_str!("../../zygote/forkserver.py");

/// How long a zygote may live: it is killed long before, when it is evicted or idle.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A zygote that could not start, or a test it could not fork.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("make the zygote's sandbox")]
    Start(#[source] SandboxError),
    #[error("talk to the zygote")]
    Io(#[source] io::Error),
    /// Its runner could not prepare (an import or a collection that failed): its words.
    #[error("{0}")]
    Prepare(String),
    #[error("the zygote was not ready within {0:?}")]
    NotReady(Duration),
    /// It died or closed its socket.
    #[error("the zygote is gone{0}")]
    Gone(String),
    /// It could not fork the test (its own words).
    #[error("the zygote refused the fork: {0}")]
    Refused(String),
    /// The forked child could not make its sandbox (its own words, from its stderr).
    #[error("the forked test could not make its sandbox: {0}")]
    Isolation(String),
    #[error("make the forked test's sandbox")]
    Sandbox(#[source] SandboxError),
}

/// How a zygote is made.
#[derive(Debug, Clone)]
pub struct ZygoteSpec {
    /// The zygote's own run: its command (the fork server with a runner), its variables,
    /// workspace, environment and limits (its memory limit bounds the zygote itself; the
    /// timeout is ignored: a zygote lives until it is dropped).
    pub run: RunSpec,
    /// How long it may take to prepare.
    pub ready_timeout: Duration,
    /// How many children it keeps isolated ahead, waiting for a test (about as many as its
    /// tests that run at once; 0 makes each child when its test comes).
    pub spares: usize,
}

/// What one forked test did, and what its runner reported on its result pipe.
#[derive(Debug)]
pub struct ForkOutcome {
    /// As a run's: the command's exit (the child's), why it ended, its output and usage.
    pub outcome: RunOutcome,
    /// What the runner wrote after the child made its sandbox (a JUnit report, a line).
    pub report: Vec<u8>,
}

/// A running zygote; dropping it kills its sandbox (and so every test it forked).
#[derive(Debug)]
pub struct Zygote {
    inner: Arc<Inner>,
    control: Arc<Control>,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
    next: AtomicU64,
    facts: Value,
    run: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
        self.reader.abort();
        // Dropping the run's future kills and reaps the zygote's sandbox.
        self.run.abort();
    }
}

impl Zygote {
    /// What the fork server said when it was ready (its runner's facts).
    pub fn facts(&self) -> &Value {
        &self.facts
    }

    /// Whether it still serves forks.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// The memory the zygote said it holds (its resident set when it was ready).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.facts.get("rss_bytes").and_then(Value::as_u64)
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
