//! The long-lived threads sandboxes are cloned from. A child's parent-death signal fires when
//! the *thread* that cloned it exits, so cloning from tokio's blocking pool (whose threads exit
//! when idle) would kill healthy sandboxes; a launcher lives as long as the `Sandboxer`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, mpsc};

use crate::seccomp::BpfProgram;

use crate::child::{ChildPlan, ExecPtrs, Op, child_main, run_op};
use crate::netns;
use crate::sys;

/// A cloned sandbox init, in its cgroup, its ids mapped, released to run.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// What the child reads until it execs; see [`ChildMemory`].
    pub memory: ChildMemory,
}

/// The memory a `CLONE_VM` child uses until it has exec'd (or exited): its plan, the pointers
/// into it, its start record and its stack. The owner must keep it until then (for a sandbox
/// init: until its error pipe reports EOF, or until it is killed and reaped) and only then
/// drop it; freeing it earlier would let the child run on memory the worker reuses.
#[derive(Debug)]
pub(crate) struct ChildMemory {
    _plan: Arc<ChildPlan>,
    _ptrs: Box<ExecPtrs>,
    _start: Box<Start>,
    _stack: Vec<u8>,
}

// SAFETY: the raw pointers inside (into the plan, itself owned here) are only dereferenced by
// the child; moving the owner between threads moves no pointee.
unsafe impl Send for ChildMemory {}

/// What the child's entry point receives.
#[derive(Debug)]
struct Start {
    plan: *const ChildPlan,
    ptrs: *const ExecPtrs,
    network_ready: bool,
}

/// Stack of the child between clone and exec: a few frames of raw system calls.
const CHILD_STACK: usize = 64 * 1024;

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Start` in the `ChildMemory` its parent keeps until this process
    // exec'd or exited, and so are the plan and pointers it names.
    unsafe {
        let start = &*(arg as *const Start);
        child_main(&*start.plan, &*start.ptrs, start.network_ready)
    }
}

/// `tasks` files (v1) the launcher thread writes "0" to: `enter` before cloning, so the child
/// starts in the sandbox's cgroups, and `leave` right after, to return to its own.
#[derive(Debug, Default)]
pub(crate) struct CgroupMove {
    /// Duplicates owned by the request, so they stay valid even if the caller goes away.
    pub enter: Vec<OwnedFd>,
    /// The launcher's own cgroups, held open by the `Sandboxer` for its whole life.
    pub leave: Vec<RawFd>,
    /// What keeps the sandbox's cgroup from being reused; let go of once the thread has left.
    pub _lease: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// What the launcher does right after cloning, so the child can go on without waiting for the
/// async side to be scheduled: add it to its cgroup (where it was not born there), map root
/// inside to `uid`/`gid` outside, and release it by writing one byte to its go pipe.
#[derive(Debug)]
pub(crate) struct Release {
    pub uid: u32,
    pub gid: u32,
    /// Write "deny" to `setgroups` first (required to map a gid without privilege).
    pub deny_setgroups: bool,
    /// Duplicates of the `cgroup.procs` files to write the child's pid to.
    pub cgroup_procs: Vec<OwnedFd>,
    /// A duplicate of the host's end of the child's go pipe.
    pub go: OwnedFd,
}

fn write_id_maps(pid: i32, release: &Release) -> io::Result<()> {
    let write = |file: &str, text: &str| {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| io::Error::new(e.kind(), format!("write {file} of the sandbox: {e}")))
    };
    if release.deny_setgroups {
        write("setgroups", "deny")?;
    }
    write("uid_map", &format!("0 {} 1\n", release.uid))?;
    write("gid_map", &format!("0 {} 1\n", release.gid))
}

/// Adds the child to its cgroup, maps its ids and releases it; on failure kills and reaps it.
fn release(spawned: Spawned, release: &Release) -> io::Result<Spawned> {
    let released = write_each(&release.cgroup_procs, spawned.pid.to_string().as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("add the sandbox to its cgroup: {e}")))
        .and_then(|()| write_id_maps(spawned.pid, release))
        .and_then(|()| write_each(std::slice::from_ref(&release.go), b"g"));
    match released {
        Ok(()) => Ok(spawned),
        Err(e) => {
            sys::kill_and_reap(spawned.pidfd.as_fd());
            Err(e)
        }
    }
}

/// Writes `bytes` to each of `fds` (cgroup files, the go pipe: a write is all or nothing).
fn write_each<F: AsRawFd>(fds: &[F], bytes: &[u8]) -> io::Result<()> {
    for fd in fds {
        // SAFETY: writing from a live buffer to an fd the caller keeps open.
        if unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

enum Request {
    Spawn {
        plan: Arc<ChildPlan>,
        flags: u64,
        cgroup: CgroupMove,
        release: Release,
        /// The fds the child inherits (its ends of the pipes), owned here so that they stay
        /// open until the clone even if the caller is cancelled, and closed right after it.
        inherit: Vec<OwnedFd>,
        reply: tokio::sync::oneshot::Sender<io::Result<Spawned>>,
    },
    Probe {
        flags: u64,
        reply: std::sync::mpsc::Sender<io::Result<()>>,
    },
}

/// Handle to the launcher thread; dropping it ends the thread.
#[derive(Debug)]
pub(crate) struct Launcher {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl Launcher {
    /// Starts the thread; `filters` are the seccomp programs every child installs, and a
    /// child that needs a network namespace of its own joins one from `netns` when one is
    /// ready (it creates its own otherwise).
    ///
    /// # Errors
    /// Fails when the thread cannot be spawned.
    ///
    /// With `skeleton` ops, the thread first moves into a mount namespace of its own and runs
    /// them there: every child's mount namespace is a copy of it, so read-only environment
    /// roots built once are there for each sandbox at no cost, invisible to the host.
    pub fn start(
        filters: Arc<Vec<BpfProgram>>,
        skeleton: Arc<Vec<Op>>,
        netns: Option<Arc<netns::Pool>>,
    ) -> io::Result<Launcher> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("isotest-sandbox-launcher".to_owned())
            .spawn(move || {
                block_all_signals();
                let ready = prepare_mount_namespace(&skeleton);
                // Where the thread returns after joining a pooled namespace to clone.
                let networks = match (ready.is_ok(), netns) {
                    (true, Some(pool)) => {
                        std::fs::File::open("/proc/thread-self/ns/net").map(|home| {
                            Some(Networks {
                                pool,
                                home: home.into(),
                                away: std::cell::Cell::new(false),
                            })
                        })
                    }
                    _ => Ok(None),
                };
                let ready = ready.and(networks.as_ref().map(|_| ()).map_err(|e| {
                    io::Error::new(e.kind(), format!("open own network namespace: {e}"))
                }));
                let networks = networks.ok().flatten();
                let failed = ready.is_err();
                let _ = ready_tx.send(ready);
                if failed {
                    return;
                }
                for request in rx {
                    match request {
                        Request::Spawn {
                            plan,
                            flags,
                            cgroup,
                            release: how,
                            inherit,
                            reply,
                        } => {
                            if reply.is_closed() {
                                // The run was cancelled while this request waited.
                                continue;
                            }
                            let spawned = spawn(plan, flags, &cgroup, &filters, networks.as_ref());
                            drop(inherit);
                            let spawned = spawned.and_then(|s| release(s, &how));
                            if let Err(Ok(orphan)) = reply.send(spawned) {
                                // Cancelled meanwhile: nobody would supervise it.
                                sys::kill_and_reap(orphan.pidfd.as_fd());
                            }
                            // This thread left the sandbox's cgroup in `spawn`, and a child of a
                            // cancelled run is dead: its slot and cgroup may serve another run.
                            drop(cgroup);
                        }
                        Request::Probe { flags, reply } => {
                            let _ = reply.send(probe(flags));
                        }
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("launcher thread died while starting"))??;
        Ok(Launcher { tx })
    }

    /// Clones a child with `flags` that runs `plan`, maps its ids and releases it as `release`
    /// says.
    ///
    /// # Errors
    /// Fails when clone or the release fails (the child is then already reaped) or the thread
    /// is gone.
    ///
    /// `inherit` owns the fds the plan names for the child; they are closed once it is cloned.
    pub async fn spawn(
        &self,
        plan: Arc<ChildPlan>,
        flags: u64,
        cgroup: CgroupMove,
        release: Release,
        inherit: Vec<OwnedFd>,
    ) -> io::Result<Spawned> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Spawn {
                plan,
                flags,
                cgroup,
                release,
                inherit,
                reply,
            })
            .map_err(|_| io::Error::other("launcher thread gone"))?;
        rx.await
            .map_err(|_| io::Error::other("launcher thread gone"))?
    }

    /// Checks that a child can be cloned with `flags` (it exits at once).
    ///
    /// # Errors
    /// The clone error, e.g. EPERM or ENOSPC without user namespaces.
    pub fn probe(&self, flags: u64) -> io::Result<()> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Request::Probe { flags, reply })
            .map_err(|_| io::Error::other("launcher thread gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("launcher thread gone"))?
    }
}

/// Blocks every signal in this thread for good (children inherit the mask; see `spawn`).
fn block_all_signals() {
    // SAFETY: sigfillset and pthread_sigmask on a local, valid sigset.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

fn prepare_mount_namespace(ops: &[Op]) -> io::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    // SAFETY: unshare affects only this thread (CLONE_NEWNS implies unsharing its fs struct).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for op in ops {
        // SAFETY: the op's C strings are valid; run_op makes plain system calls.
        if !unsafe { run_op(op) } {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{}: {e}", op.describe())));
        }
    }
    Ok(())
}

fn clone3(flags: u64, pidfd: &mut RawFd) -> io::Result<i32> {
    let args = sys::CloneArgs {
        flags: flags | sys::CLONE_PIDFD,
        pidfd: pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..sys::CloneArgs::default()
    };
    // SAFETY: without CLONE_VM this is fork-like: the child gets a private copy of this
    // thread's stack and returns 0 here; callers make it run only async-signal-safe code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const sys::CloneArgs,
            std::mem::size_of::<sys::CloneArgs>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

/// The network namespace pool and the launcher thread's own namespace to return to.
struct Networks {
    pool: Arc<netns::Pool>,
    home: OwnedFd,
    /// Set while the thread could not get back home after a clone.
    away: std::cell::Cell<bool>,
}

impl Networks {
    /// Returns the thread to its own network namespace.
    fn go_home(&self) -> io::Result<()> {
        // SAFETY: setns on this thread's own earlier network namespace.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            self.away.set(true);
            return Err(io::Error::last_os_error());
        }
        self.away.set(false);
        Ok(())
    }
}

/// Joins a pooled network namespace for one clone; returns whether it did.
fn join_pooled(networks: Option<&Networks>) -> bool {
    let Some(netns) = networks.and_then(|n| n.pool.take()) else {
        return false;
    };
    // SAFETY: setns on a network namespace fd affects only this thread.
    unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == 0 }
}

fn spawn(
    plan: Arc<ChildPlan>,
    mut flags: u64,
    cgroup: &CgroupMove,
    filters: &[BpfProgram],
    networks: Option<&Networks>,
) -> io::Result<Spawned> {
    // A clone must never inherit the namespace of an earlier sandbox.
    if let Some(networks) = networks.filter(|n| n.away.get()) {
        networks.go_home().map_err(|e| {
            io::Error::new(e.kind(), format!("return to own network namespace: {e}"))
        })?;
    }
    // A zygote's process installs its own, wider filter.
    let filters = plan.filters.as_deref().map_or(filters, Vec::as_slice);
    let ptrs = Box::new(ExecPtrs::new(&plan, filters));
    let mut stack = vec![0u8; CHILD_STACK];
    let mut pidfd: RawFd = -1;
    if let Err(e) = write_each(&cgroup.enter, b"0") {
        let _ = write_each(&cgroup.leave, b"0");
        return Err(e);
    }
    #[cfg(test)]
    hooks::in_cgroup();
    let wants_network = flags & libc::CLONE_NEWNET as u64 != 0;
    let pooled = wants_network && join_pooled(networks);
    if pooled {
        flags &= !(libc::CLONE_NEWNET as u64);
    }
    let start = Box::new(Start {
        plan: Arc::as_ptr(&plan),
        ptrs: &*ptrs,
        network_ready: pooled,
    });
    // CLONE_VM: no copy of the worker's page tables and no copy-on-write faults afterwards;
    // the child runs on its own stack until it execs. This thread keeps every signal
    // blocked, so the child starts with them blocked too, before its handlers are reset.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `child_entry` on `stack`, which (like `start`, `ptrs` and `plan`)
    // is moved into the returned `ChildMemory` and so outlives its pre-exec life; the flags
    // fit in an int (the namespace flags are all below bit 31).
    let ret = unsafe {
        libc::clone(
            child_entry,
            top as *mut libc::c_void,
            flags as libc::c_int | libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            &*start as *const Start as *mut libc::c_void,
            &mut pidfd as *mut RawFd,
        )
    };
    let cloned = if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    };
    if let Some(networks) = networks.filter(|_| pooled)
        && let Err(e) = networks.go_home()
    {
        // The next spawn tries again and fails rather than share this sandbox's namespace.
        tracing::error!(error = %e, "The sandbox launcher could not return to its network namespace.");
    }
    // Back home before anything else (in the parent only: the child stays in the sandbox's
    // cgroups), so the sandbox's cgroup can be removed later.
    if let Err(e) = write_each(&cgroup.leave, b"0") {
        tracing::error!(error = %e, "Could not move the launcher thread back to its cgroup.");
    }
    let pid = cloned?;
    // SAFETY: CLONE_PIDFD stored a fresh fd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid,
        pidfd,
        memory: ChildMemory {
            _plan: plan,
            _ptrs: ptrs,
            _start: start,
            _stack: stack,
        },
    })
}

fn probe(flags: u64) -> io::Result<()> {
    let mut pidfd: RawFd = -1;
    let pid = clone3(flags, &mut pidfd)?;
    if pid == 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: CLONE_PIDFD stored a fresh fd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    sys::reap(pidfd.as_fd())
}

/// Places where tests stop the launcher thread.
#[cfg(test)]
pub(crate) mod hooks {
    use std::sync::{Condvar, Mutex};

    /// The state of the pause.
    #[derive(Debug, Default)]
    pub struct Pause {
        /// The next spawn stops once in its sandbox's cgroup.
        pub armed: bool,
        /// A spawn is stopped there.
        pub paused: bool,
        /// Set to let it go on.
        pub released: bool,
    }

    pub static PAUSE: Mutex<Pause> = Mutex::new(Pause {
        armed: false,
        paused: false,
        released: false,
    });
    pub static CHANGED: Condvar = Condvar::new();

    /// Called by the launcher thread right after it entered a sandbox's cgroup (v1), just
    /// before cloning.
    pub fn in_cgroup() {
        let mut pause = PAUSE.lock().unwrap_or_else(|p| p.into_inner());
        if !pause.armed {
            return;
        }
        pause.armed = false;
        pause.paused = true;
        CHANGED.notify_all();
        while !pause.released {
            pause = CHANGED.wait(pause).unwrap_or_else(|p| p.into_inner());
        }
        pause.paused = false;
    }
}
