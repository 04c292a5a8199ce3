//! One sandboxed run from start to end: prepare the workspace and cgroup, build the child plan,
//! clone and release the init, supervise (timeout, CPU, output caps), reap, collect, clean up.
//!
//! `root.rs` makes the filesystem a sandbox sees, `plan.rs` the rest of the child's plan,
//! `lease.rs` holds the run's slot and cgroup, `supervise.rs` watches the running init; this
//! module runs them in order.

mod lease;
mod plan;
mod root;
mod supervise;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::bundle::BundleError;
use crate::child::{ChildFds, EXEC_STEP, step_name};
use crate::error::SandboxError;
use crate::launcher::{CgroupMove, Release};
use crate::outcome::{RunOutcome, Termination, Usage};
use crate::spec::RunSpec;
use crate::sys;
use crate::workspace::{PopulateError, Workspace};
use crate::{Inner, UidMapping};

pub(crate) use lease::{Lease, take_cgroup};
use plan::{PlanInputs, build_plan};
pub(crate) use root::{DEVICES, EnvPlan, enter_skeleton_ops, skeleton_ops};
pub(crate) use supervise::{capture, supervise};
use supervise::{parse_report, reaped};

fn cstr(bytes: impl AsRef<[u8]>) -> Result<CString, SandboxError> {
    CString::new(bytes.as_ref())
        .map_err(|_| SandboxError::InvalidSpec("a string contains a NUL byte".to_owned()))
}

pub(crate) fn path_c(path: &Path) -> Result<CString, SandboxError> {
    cstr(path.as_os_str().as_bytes())
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::io("create pipe", e.into()))
}

/// Whether an exec that failed with `errno` failed because of the test: the argv and
/// environment are the test's, so E2BIG always is; a missing or unrunnable program only where
/// the program is the test's own, not `isotest-init` (`via_init`), which never is missing.
fn exec_failed_for_the_test(errno: i32, via_init: bool) -> bool {
    match errno {
        libc::E2BIG => true,
        libc::ENOENT
        | libc::ENOTDIR
        | libc::EACCES
        | libc::ENOEXEC
        | libc::ELOOP
        | libc::ENAMETOOLONG => !via_init,
        _ => false,
    }
}

/// Duplicates cgroup files for a launcher request, which must own what it uses.
pub(crate) fn duplicate(files: &[std::fs::File]) -> Result<Vec<OwnedFd>, SandboxError> {
    files
        .iter()
        .map(|f| f.try_clone().map(OwnedFd::from))
        .collect::<io::Result<_>>()
        .map_err(|e| SandboxError::io("duplicate cgroup fd", e))
}

/// Kills and reaps the init if the run is abandoned (error or cancelled future), so no sandbox
/// outlives its `run` call.
struct InitGuard {
    pidfd: Option<OwnedFd>,
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            sys::kill_and_reap(pidfd.as_fd());
        }
    }
}

pub(crate) async fn run(inner: &Arc<Inner>, mut spec: RunSpec) -> Result<RunOutcome, SandboxError> {
    let started = Instant::now();
    match spec.command.first() {
        None => return Err(SandboxError::InvalidSpec("empty command".to_owned())),
        Some(program) if program.is_empty() => {
            return Err(SandboxError::InvalidSpec("empty program name".to_owned()));
        }
        Some(_) => {}
    }
    let env_name = spec.environment.as_deref().unwrap_or("default");
    let env = inner
        .environments
        .get(env_name)
        .ok_or_else(|| SandboxError::UnknownEnvironment(env_name.to_owned()))?;
    let slot = inner.slots.acquire()?;
    // Frees the slot however the run ends, and from below its cgroup too.
    let mut lease = Lease {
        inner: Arc::clone(inner),
        slot,
        cgroup: None,
    };
    let (uid, gid) = match inner.isolation.uid_mapping {
        UidMapping::PerSandbox { base } => (base + slot, base + slot),
        UidMapping::Caller { uid } => (uid, nix::unistd::getegid().as_raw()),
    };
    let name = format!("sb-{}", inner.next_id());

    let workspace = if inner.isolation.workspace_tmpfs {
        Workspace::tmpfs(&spec.limits, uid, gid)
            .map_err(|e| SandboxError::io("create workspace tmpfs", e))?
    } else {
        Workspace::dir(inner.config.state_dir.join(&name))
            .map_err(|e| SandboxError::io("create workspace directory", e))?
    };
    let owner = inner.isolation.workspace_tmpfs.then_some((uid, gid));
    if let Some(parent) = &inner.cgroups {
        lease.cgroup = Some(take_cgroup(inner, parent, slot, &name, &spec.limits)?);
    }
    let workspace =
        if spec.workspace_bundle.is_some() || !spec.files.is_empty() || !spec.binds.is_empty() {
            populate(workspace, &spec, owner, lease.cgroup.as_ref()).await?
        } else {
            workspace
        };
    if let Some(cg) = lease.cgroup.as_mut() {
        cg.rebase_cpu();
    }
    let lease = Arc::new(lease);

    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (error_r, error_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let fds = ChildFds {
        stdin: inner.dev_null.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        error: error_w.as_raw_fd(),
        go: go_r.as_raw_fd(),
        go_write: go_w.as_raw_fd(),
    };
    let bind_fds = spec
        .binds
        .iter()
        .map(|bind| {
            if !inner.isolation.workspace_tmpfs {
                return Ok(None);
            }
            sys::clone_tree_readonly(&path_c(&bind.host)?)
                .map(Some)
                .map_err(|e| SandboxError::io(format!("bind {:?} read-only", bind.host), e))
        })
        .collect::<Result<Vec<_>, SandboxError>>()?;
    let plan = Arc::new(build_plan(
        inner,
        PlanInputs {
            env,
            workspace: &workspace,
            binds: &bind_fds,
            fds,
            spec: &spec,
        },
    )?);
    let mut flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS) as u64;
    if !spec.network {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let thread_entry = lease
        .cgroup
        .as_ref()
        .map(|c| c.thread_entry())
        .unwrap_or(&[]);
    let home = inner
        .cgroups
        .as_ref()
        .map(|c| c.home_tasks())
        .unwrap_or(&[]);
    // Enter by moving the launcher thread only when it can also move back to every cgroup.
    let by_thread = !thread_entry.is_empty() && thread_entry.len() == home.len();
    let cgroup_move = if by_thread {
        CgroupMove {
            enter: duplicate(thread_entry)?,
            leave: home.iter().map(AsRawFd::as_raw_fd).collect(),
            _lease: Some(Arc::clone(&lease) as _),
        }
    } else {
        CgroupMove::default()
    };
    // The launcher adds the child to its cgroup (unless it is born there), maps its ids and
    // releases it, with no wait for this task to be scheduled again.
    let cgroup_procs = match lease.cgroup.as_ref().filter(|_| !by_thread) {
        Some(cg) => duplicate(cg.procs_files())?,
        None => Vec::new(),
    };
    let release = Release {
        uid,
        gid,
        deny_setgroups: !matches!(inner.isolation.uid_mapping, UidMapping::PerSandbox { .. }),
        cgroup_procs,
        go: go_w
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate go pipe", e))?,
    };
    // The launcher owns the child's ends from here and closes them once it has cloned.
    let inherit = vec![stdout_w, stderr_w, report_w, error_w, go_r];
    let spawned = inner
        .launcher_for(env)
        .spawn(Arc::clone(&plan), flags, cgroup_move, release, inherit)
        .await
        .map_err(|e| SandboxError::io("start sandbox init", e))?;
    // Declared before the guard so that it is dropped after it: the child runs on this memory
    // until it execs, and the guard kills and reaps it first if the run ends early.
    let child_memory = spawned.memory;
    let mut guard = InitGuard {
        pidfd: Some(spawned.pidfd),
    };

    // The error pipe closes on exec (close-on-exec) or carries the failed step.
    let mut error_rx = pipe::Receiver::from_owned_fd(error_r)
        .map_err(|e| SandboxError::io("watch sandbox setup", e))?;
    let mut failure = Vec::new();
    // Setup between clone and exec takes milliseconds; bound it so a wedged child can never
    // hang the run (the guard kills it).
    let setup_deadline = spec
        .limits
        .timeout
        .clamp(Duration::from_secs(5), Duration::from_secs(30));
    tokio::time::timeout(setup_deadline, error_rx.read_to_end(&mut failure))
        .await
        .map_err(|_| SandboxError::io("start sandbox", io::ErrorKind::TimedOut.into()))?
        .map_err(|e| SandboxError::io("watch sandbox setup", e))?;
    let exec_at = Instant::now();
    drop(go_w);
    if failure.len() >= 8 {
        let step = u32::from_ne_bytes([failure[0], failure[1], failure[2], failure[3]]);
        let errno = i32::from_ne_bytes([failure[4], failure[5], failure[6], failure[7]]);
        if step == EXEC_STEP && exec_failed_for_the_test(errno, plan.init.is_some()) {
            return Err(SandboxError::ExecRefused { errno });
        }
        return Err(SandboxError::ChildSetup {
            step: step_name(&plan, step),
            errno,
        });
    }
    let startup = exec_at.duration_since(started);
    // Exec'd or gone: the child no longer uses the memory it shared with this process.
    drop(child_memory);
    drop(plan);
    drop(bind_fds);
    // The command has its own copy of a control socket now: with this one closed, the
    // other end sees the command's death as the socket's end.
    drop(spec.control.take());

    let stdout_rx =
        pipe::Receiver::from_owned_fd(stdout_r).map_err(|e| SandboxError::io("watch stdout", e))?;
    let stderr_rx =
        pipe::Receiver::from_owned_fd(stderr_r).map_err(|e| SandboxError::io("watch stderr", e))?;
    let report_rx = pipe::Receiver::from_owned_fd(report_r)
        .map_err(|e| SandboxError::io("watch stage reports", e))?;
    // A duplicate to watch: the guard keeps the original, so a run abandoned from here on
    // (its future dropped, as when a suite is cancelled) still kills and reaps the init.
    let pidfd = guard
        .pidfd
        .as_ref()
        .ok_or(SandboxError::LauncherGone)?
        .try_clone()
        .map_err(|e| SandboxError::io("watch sandbox init", e))?;
    // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged until it is dropped or
    // taken back with into_inner.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| SandboxError::io("watch sandbox init", e.into()))?;

    let (dead_tx, dead) = tokio::sync::watch::channel(false);
    let limits = &spec.limits;
    let supervise = async {
        let watched = pidfd.get_ref().as_fd();
        let result = supervise(watched, lease.cgroup.as_ref(), limits, reaped(&pidfd)).await;
        let _ = dead_tx.send(true);
        result
    };
    let (supervised, stdout, stderr, report) = tokio::join!(
        supervise,
        capture(stdout_rx, limits.stdout_bytes, dead.clone()),
        capture(stderr_rx, limits.stderr_bytes, dead.clone()),
        capture(report_rx, 4096, dead),
    );
    // On an error the guard, still armed, keeps its promise: never leave the init alive.
    let (reason, reaped) = supervised?;
    // Reaped: nothing is left for the guard to kill.
    guard.pidfd = None;
    let wall = exec_at.elapsed();
    let [setup, command, teardown] = parse_report(&report.data);

    let cg = lease.cgroup.as_ref();
    let oom = cg.is_some_and(|c| c.oom_kills() > 0);
    let termination = reason.unwrap_or(if oom {
        Termination::OutOfMemory
    } else {
        Termination::Exited
    });
    let rusage_cpu = Duration::from_secs(reaped.usage.ru_utime.tv_sec as u64)
        + Duration::from_micros(reaped.usage.ru_utime.tv_usec as u64)
        + Duration::from_secs(reaped.usage.ru_stime.tv_sec as u64)
        + Duration::from_micros(reaped.usage.ru_stime.tv_usec as u64);
    let usage = Usage {
        max_rss_bytes: cg
            .and_then(|c| c.peak_memory())
            .unwrap_or(reaped.usage.ru_maxrss as u64 * 1024),
        cpu: cg.and_then(|c| c.cpu_usage()).unwrap_or(rusage_cpu),
        wall,
    };

    let (collected, exported) = if spec.collect.is_empty() && spec.export.is_none() {
        drop(workspace);
        (BTreeMap::new(), None)
    } else {
        let paths = spec.collect.clone();
        let export = spec.export.clone();
        let cap = limits.collect_bytes;
        let (workspace, collected, exported) = tokio::task::spawn_blocking(move || {
            let collected = paths
                .into_iter()
                .map(|p| {
                    let got = workspace.collect(&p, cap);
                    (p, got)
                })
                .collect();
            let exported = export.map(|e| workspace.export(&e));
            (workspace, collected, exported)
        })
        .await
        .map_err(|e| SandboxError::io("collect files", io::Error::other(e)))?;
        drop(workspace);
        (collected, exported)
    };
    // After the workspace, whose pages are charged to the cgroup the lease may remove.
    drop(lease);

    Ok(RunOutcome {
        setup,
        command,
        teardown,
        termination,
        stdout,
        stderr,
        collected,
        exported,
        usage,
        startup,
    })
}

/// Fills the workspace with the spec's bundle and files, and makes the mount points of its
/// binds. With a bundle and a memory cgroup,
/// from a process in that cgroup, so that the workspace counts against the test's memory
/// (see [`Workspace::populate_charged`]); the manifest's files alone, small and bounded by the
/// manifest's own limits, are written from here, sparing that process's fork.
async fn populate(
    workspace: Workspace,
    spec: &RunSpec,
    owner: Option<(u32, u32)>,
    cgroup: Option<&crate::cgroup::SandboxCgroup>,
) -> Result<Workspace, SandboxError> {
    let bundle = spec.workspace_bundle.clone();
    let files = spec.files.clone();
    let mount_points: Vec<String> = spec.binds.iter().map(|b| b.target.clone()).collect();
    let max = spec.limits.workspace_bytes;
    let entry = match cgroup
        .filter(|_| bundle.is_some())
        .and_then(|c| c.memory_entry())
    {
        Some(file) => Some(
            file.try_clone()
                .map_err(|e| SandboxError::io("duplicate cgroup fd", e))?,
        ),
        None => None,
    };
    // Bounded by the bundle's caps; this only guards against a wedged process.
    let deadline = spec.limits.timeout.max(Duration::from_secs(60));
    let (workspace, populated) = tokio::task::spawn_blocking(move || {
        let populated = match &entry {
            Some(entry) => workspace.populate_charged(
                entry.as_fd(),
                bundle.as_deref(),
                &files,
                max,
                owner,
                deadline,
            ),
            None => workspace
                .populate(bundle.as_deref(), &files, max, owner)
                .map_err(PopulateError::Bundle),
        };
        let populated = populated.and_then(|()| {
            workspace
                .make_dirs(&mount_points, owner)
                .map_err(PopulateError::Bundle)
        });
        (workspace, populated)
    })
    .await
    .map_err(|e| SandboxError::io("populate workspace", io::Error::other(e)))?;
    match populated {
        Ok(()) => Ok(workspace),
        Err(PopulateError::Bundle(e)) => Err(SandboxError::Bundle(e)),
        Err(PopulateError::Killed(_)) if cgroup.is_some_and(|c| c.oom_kills() > 0) => {
            Err(SandboxError::Bundle(BundleError::OutOfMemory {
                limit: spec.limits.memory_bytes,
            }))
        }
        Err(e) => Err(SandboxError::io(
            "populate workspace",
            io::Error::other(e.to_string()),
        )),
    }
}
