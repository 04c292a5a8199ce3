//! Zygotes: a long-lived process in a sandbox of its own that has done the slow part of
//! starting a test once (an interpreter that imported its framework and collected a file),
//! and forks each test into a fresh sandbox of its own. The process is a fork server
//! ([`FORK_SERVER`], Python) with a framework's runner added; it runs with
//! [`Privilege::ForkServer`] and talks to the worker over a `SOCK_SEQPACKET` socket (its fd
//! 6), one JSON message a packet, file descriptors riding along (see the protocol at the top of
//! `zygote/forkserver.py`).
//!
//! The fork server keeps [`ZygoteSpec::spares`] children made ahead: each is pid 1 of a new
//! pid namespace that has unshared mount, network, ipc and uts namespaces and mounted a
//! private `/tmp`, `/dev/shm`, devpts, proc and a copy-on-write overlay of the workspace, with
//! the test-to-be waiting as its pid 2. For each test the worker takes a cgroup of the pool
//! (the test's limits), makes its stdout, stderr and result pipes, and sends them with the
//! cgroup's `cgroup.procs` files; the server hands them to a spare, whose pid 2 joins that
//! cgroup with its init, unshares a cgroup namespace, drops every capability and installs the
//! strict seccomp filter, then runs its one test. The worker watches it through a
//! pidfd the server sends back, enforces the wall and CPU limits itself, and learns its exit
//! status from the server; a zygote that lies about its own tests only lies about its own
//! tenant's tests, which it could as well by running them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::error::SandboxError;
use crate::outcome::{RunOutcome, StageExit, Termination, Usage};
use crate::run::{Lease, capture, duplicate, pipe, take_cgroup};
use crate::spec::{Limits, Privilege, RunSpec};
use crate::{Inner, Sandboxer, seccomp, sys};

/// The isolation half of every zygote, to which a runner adds `prepare` and `run_one`
/// and a last line `ForkServer().serve(prepare, run_one)`.
pub const FORK_SERVER: &str = include_str!("../zygote/forkserver.py");

/// The largest message a fork server sends.
const MAX_PACKET: usize = 1 << 20;
/// The most descriptors one message carries.
const MAX_FDS: usize = 8;
/// How long a zygote may live: it is killed long before, when it is evicted or idle.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a fork may take to be started, and to be reported once its child is gone.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The line a forked child writes on its result pipe once its sandbox is made.
const ISOLATED: &[u8] = b"isolated\n";

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

/// A message from the fork server about one fork.
#[derive(Debug)]
struct Event {
    event: String,
    status: Option<i32>,
    why: Option<String>,
    fds: Vec<OwnedFd>,
}

/// The worker's end of the socket.
#[derive(Debug)]
struct Control {
    fd: AsyncFd<OwnedFd>,
    /// One sender at a time: a packet and its descriptors go together.
    send: tokio::sync::Mutex<()>,
}

impl Control {
    async fn send(&self, message: &Value, fds: &[RawFd]) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        let _one = self.send.lock().await;
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                let iov = [IoSlice::new(&bytes)];
                let cmsg = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    async fn receive(&self) -> io::Result<Option<(Value, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let mut ready = self.fd.readable().await?;
            let got = ready.try_io(|fd| receive_packet(fd.get_ref().as_fd(), &mut buf));
            match got {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn receive_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(Value, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    if len == 0 {
        return Ok(None);
    }
    let value = serde_json::from_slice(&iov[0][..len]).map_err(io::Error::other)?;
    Ok(Some((value, fds)))
}

/// Forks waiting for word of their child, by id.
type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>>;

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

impl Sandboxer {
    /// Starts a zygote and waits until its fork server says it is ready.
    ///
    /// # Errors
    ///
    /// [`ZygoteError::Prepare`] with the runner's words when it could not prepare (its tests
    /// then run cold); [`ZygoteError::NotReady`], `Gone`, `Start` or `Io` otherwise.
    pub async fn start_zygote(&self, spec: ZygoteSpec) -> Result<Zygote, ZygoteError> {
        let inner = Arc::clone(&self.inner);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| ZygoteError::Io(e.into()))?;
        // SAFETY: the AsyncFd owns the socket until it is dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                ours,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )
        }
        .map_err(|e| ZygoteError::Io(e.into()))?;
        let control = Arc::new(Control {
            fd,
            send: tokio::sync::Mutex::new(()),
        });
        let mut run = spec.run;
        run.control = Some(Arc::new(theirs));
        run.privilege = Privilege::ForkServer;
        run.limits.timeout = LIFETIME;
        let tmp_bytes = run.limits.workspace_bytes;
        let sandboxer = self.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let (ended_tx, mut ended) = tokio::sync::watch::channel(None::<String>);
        let run = tokio::spawn({
            let alive = Arc::clone(&alive);
            async move {
                let why = match sandboxer.run(run).await {
                    Ok(outcome) => {
                        let stderr = outcome.stderr.render("stderr");
                        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
                        let last: Vec<&str> = last.into_iter().rev().collect();
                        format!(": {}", last.join(" | "))
                    }
                    Err(e) => format!(": {}", chain(&e)),
                };
                alive.store(false, Ordering::Relaxed);
                let _ = ended_tx.send(Some(why));
            }
        });
        let seccomp =
            seccomp::strict_program_bytes().map_err(|e| ZygoteError::Io(io::Error::other(e)))?;
        control
            .send(
                &json!({
                    "op": "configure",
                    "seccomp": hex::encode(seccomp),
                    "tmp_bytes": tmp_bytes,
                    "spares": spec.spares,
                }),
                &[],
            )
            .await
            .map_err(ZygoteError::Io)?;
        // Biased: a fork server that says why it failed and then exits has its message read
        // first, not lost to the race with its exit.
        let hello = tokio::select! {
            biased;
            hello = tokio::time::timeout(spec.ready_timeout, control.receive()) => match hello {
                Err(_) => return Err(ZygoteError::NotReady(spec.ready_timeout)),
                Ok(Err(e)) => return Err(ZygoteError::Io(e)),
                Ok(Ok(None)) => return Err(ZygoteError::Gone(String::new())),
                Ok(Ok(Some((hello, _)))) => hello,
            },
            why = ended.wait_for(Option::is_some) => {
                let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
                return Err(ZygoteError::Gone(why));
            }
        };
        match hello.get("event").and_then(Value::as_str) {
            Some("ready") => {}
            Some("failed") => {
                let why = hello.get("why").and_then(Value::as_str).unwrap_or_default();
                return Err(ZygoteError::Prepare(why.to_owned()));
            }
            _ => return Err(ZygoteError::Gone(format!(": it said {hello}"))),
        }
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(read_events(
            Arc::clone(&control),
            Arc::clone(&waiters),
            Arc::clone(&alive),
        ));
        Ok(Zygote {
            inner,
            control,
            waiters,
            alive,
            next: AtomicU64::new(0),
            facts: hello,
            run,
            reader,
        })
    }
}

/// Routes the fork server's messages to the forks waiting for them, until it is gone.
async fn read_events(control: Arc<Control>, waiters: Waiters, alive: Arc<AtomicBool>) {
    loop {
        let received = control.receive().await;
        let Ok(Some((message, fds))) = received else {
            break;
        };
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let event = Event {
            event: message
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            status: message
                .get("status")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok()),
            why: message
                .get("why")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fds,
        };
        let waiter = waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(waiter) = waiter {
            let _ = waiter.send(event);
        }
    }
    alive.store(false, Ordering::Relaxed);
    // Every fork still waiting hears that the zygote is gone.
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

/// Forgets a fork's waiter however the fork ends.
struct Registered<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

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
        let supervise = async {
            let reason = supervise(&watched, cgroup, limits).await;
            let _ = dead_tx.send(true);
            reason
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
        // Its init exits with the test's status as a shell gives it (128 + a signal); it
        // dies of a signal only when the worker killed it.
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

/// Waits for a forked test to end, enforcing its wall-clock and CPU limits: it is pid 1 of
/// its pid namespace, so killing it ends every process it started.
async fn supervise(
    pidfd: &AsyncFd<OwnedFd>,
    cgroup: Option<&crate::cgroup::SandboxCgroup>,
    limits: &Limits,
) -> Result<Option<Termination>, SandboxError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut reason = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut cpu_tick = tokio::time::interval(Duration::from_millis(50));
    let cpu_limit = limits
        .cpu_time
        .filter(|_| cgroup.is_some_and(|c| c.cpu_usage().is_some()));
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        tokio::select! {
            // A pidfd turns readable when its process has exited.
            ready = pidfd.readable() => {
                ready.map_err(|e| SandboxError::io("wait for the forked test", e))?.retain_ready();
                return Ok(reason);
            }
            () = tokio::time::sleep_until(deadline), if reason.is_none() => {
                reason = Some(Termination::TimedOut);
                kill_at = Some(begin_stop(pidfd.get_ref().as_fd(), limits));
            }
            _ = cpu_tick.tick(), if reason.is_none() && cpu_limit.is_some() => {
                let used = cgroup.and_then(|c| c.cpu_usage()).unwrap_or_default();
                if cpu_limit.is_some_and(|limit| used > limit) {
                    reason = Some(Termination::CpuTimeExceeded);
                    kill_at = Some(begin_stop(pidfd.get_ref().as_fd(), limits));
                }
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                kill_at = None;
                let _ = sys::pidfd_send_signal(pidfd.get_ref().as_fd(), libc::SIGKILL);
            }
        }
    }
}

/// SIGTERM, then SIGKILL after the grace period. (The child is pid 1 of its namespace: a
/// signal from outside it reaches it only where it has a handler, SIGKILL always.)
fn begin_stop(pidfd: BorrowedFd<'_>, limits: &Limits) -> tokio::time::Instant {
    if limits.kill_grace.is_zero() || sys::pidfd_send_signal(pidfd, libc::SIGTERM).is_err() {
        return tokio::time::Instant::now();
    }
    tokio::time::Instant::now() + limits.kill_grace
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
