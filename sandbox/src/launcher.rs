//! The long-lived thread every sandbox is cloned from. A child's parent-death signal fires when
//! the *thread* that cloned it exits, so cloning from tokio's blocking pool (whose threads exit
//! when idle) would kill healthy sandboxes; this thread lives as long as the `Sandboxer`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, mpsc};

use seccompiler::BpfProgram;

use crate::child::{ChildPlan, ExecPtrs, Op, child_main, run_op};
use crate::sys;

/// A cloned sandbox init, not yet released to run.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// `tasks` files (v1) the launcher thread writes "0" to: `enter` before cloning, so the child
/// starts in the sandbox's cgroups, and `leave` right after, to return to its own.
#[derive(Debug, Default)]
pub(crate) struct CgroupMove {
    pub enter: Vec<RawFd>,
    pub leave: Vec<RawFd>,
}

fn write_zero(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: writing two bytes from a static buffer to an fd the caller keeps open.
        if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } < 0 {
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
    /// Starts the thread; `filters` are the seccomp programs every child installs.
    ///
    /// # Errors
    /// Fails when the thread cannot be spawned.
    ///
    /// With `skeleton` ops, the thread first moves into a mount namespace of its own and runs
    /// them there: every child's mount namespace is a copy of it, so read-only environment
    /// roots built once are there for each sandbox at no cost, invisible to the host.
    pub fn start(filters: Arc<Vec<BpfProgram>>, skeleton: Vec<Op>) -> io::Result<Launcher> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("isotest-sandbox-launcher".to_owned())
            .spawn(move || {
                let ready = prepare_mount_namespace(&skeleton);
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
                            reply,
                        } => {
                            let _ = reply.send(spawn(&plan, flags, &cgroup, &filters));
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

    /// Clones a child with `flags` that runs `plan` once released.
    ///
    /// # Errors
    /// Fails when clone fails or the thread is gone.
    ///
    /// The fds in `cgroup` must stay open until this returns.
    pub async fn spawn(
        &self,
        plan: Arc<ChildPlan>,
        flags: u64,
        cgroup: CgroupMove,
    ) -> io::Result<Spawned> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Spawn {
                plan,
                flags,
                cgroup,
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

fn spawn(
    plan: &ChildPlan,
    flags: u64,
    cgroup: &CgroupMove,
    filters: &[BpfProgram],
) -> io::Result<Spawned> {
    let mut ptrs = ExecPtrs::new(plan, filters);
    let mut pidfd: RawFd = -1;
    if let Err(e) = write_zero(&cgroup.enter) {
        let _ = write_zero(&cgroup.leave);
        return Err(e);
    }
    let cloned = clone3(flags, &mut pidfd);
    if let Ok(0) = cloned {
        // SAFETY: we are the fresh single-threaded child; child_main never returns.
        unsafe { child_main(plan, &mut ptrs) }
    }
    // Back home before anything else (in the parent only: the child stays in the sandbox's
    // cgroups), so the sandbox's cgroup can be removed later.
    if let Err(e) = write_zero(&cgroup.leave) {
        tracing::error!(error = %e, "Could not move the launcher thread back to its cgroup.");
    }
    let pid = cloned?;
    // SAFETY: CLONE_PIDFD stored a fresh fd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned { pid, pidfd })
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
    let mut info: libc::siginfo_t =
        // SAFETY: a zeroed siginfo is a valid out-parameter.
        unsafe { std::mem::zeroed() };
    // SAFETY: blocking waitid on our own child's pidfd with a valid siginfo.
    let ret = unsafe {
        libc::waitid(
            sys::P_PIDFD,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd) as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
