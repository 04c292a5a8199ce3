//! One sandboxed run from start to end: prepare the workspace and cgroup, build the child plan,
//! clone and release the init, supervise (timeout, CPU, output caps), reap, collect, clean up.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::bundle::BundleError;
use crate::child::{ChildFds, ChildPlan, EXEC_STEP, Op, step_name};
use crate::error::SandboxError;
use crate::launcher::{CgroupMove, Release};
use crate::outcome::{Captured, RunOutcome, StageExit, Termination, Usage};
use crate::spec::{Privilege, RunSpec};
use crate::sys;
use crate::workspace::{PopulateError, Workspace};
use crate::{Inner, UidMapping};

/// The top-level entries of an environment root, listed once at start.
#[derive(Debug, Clone)]
pub(crate) struct EnvPlan {
    pub root: PathBuf,
    pub entries: Vec<EnvEntry>,
    /// Whether its launchers' mount namespaces have its skeleton as their root (as root):
    /// a child then only adds its own mounts, with no pivot_root of its own.
    pub pivoted: bool,
    /// The launchers that clone its sandboxes (indexes into the sandboxer's), used in turn.
    pub launchers: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum EnvEntry {
    Dir(OsString),
    Symlink(OsString, PathBuf),
}

/// Top-level directories never exposed: kernel and runtime state, the host's temp and home
/// directories (the sandbox gets its own /proc, /dev and /tmp).
const HIDDEN: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "root",
    "home",
    "lost+found",
    "workspace",
];

impl EnvPlan {
    /// Lists `root`'s top level: directories to bind, symlinks to recreate; the rest skipped.
    ///
    /// # Errors
    /// Fails when `root` cannot be read.
    pub fn scan(root: &Path) -> io::Result<EnvPlan> {
        let mut entries = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(root)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            if HIDDEN.iter().any(|h| OsStr::new(h) == name) {
                continue;
            }
            let meta = std::fs::symlink_metadata(root.join(&name))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(root.join(&name))?;
                entries.push(EnvEntry::Symlink(name, target));
            } else if meta.is_dir() {
                entries.push(EnvEntry::Dir(name));
            }
        }
        Ok(EnvPlan {
            root: root.to_owned(),
            entries,
            pivoted: false,
            launchers: Vec::new(),
        })
    }
}

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

/// Devices bind-mounted from the host into the sandbox's /dev.
pub(crate) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What a fork server keeps: mounts and namespaces (`CAP_SYS_ADMIN`; overlayfs also wants
/// `CAP_DAC_OVERRIDE` of its mounter, which in the sandbox's user namespace reaches only files
/// of ids mapped there, the sandbox's own), a fresh network namespace's loopback
/// (`CAP_NET_ADMIN`), and dropping capabilities from a forked test's bounding set
/// (`CAP_SETPCAP`), all in its sandbox's own user namespace.
const FORK_SERVER_CAPS: u64 = {
    // linux/capability.h
    const CAP_DAC_OVERRIDE: u64 = 1;
    const CAP_SETPCAP: u64 = 8;
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    (1 << CAP_DAC_OVERRIDE) | (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN) | (1 << CAP_SETPCAP)
};

/// The per-run fds and workspace the plan refers to.
struct PlanInputs<'a> {
    env: &'a EnvPlan,
    workspace: &'a Workspace,
    /// One per `spec.binds`: the detached read-only tree to move into place (as root), or
    /// `None` where the child binds the host path itself (without root, before its pivot).
    binds: &'a [Option<OwnedFd>],
    fds: ChildFds,
    spec: &'a RunSpec,
}

fn tmpfs_op(target: CString, data: String, flags: libc::c_ulong) -> Result<Op, SandboxError> {
    Ok(Op::Mount {
        src: Some(c"tmpfs".to_owned()),
        target,
        fstype: Some(c"tmpfs".to_owned()),
        flags,
        data: Some(cstr(data)?),
    })
}

/// Ops that build an environment's read-only root skeleton at `root`: the environment's
/// top-level directories bound read-only, its top-level symlinks, mount points for the
/// per-sandbox mounts, and a read-only /dev with the host's harmless devices.
pub(crate) fn skeleton_ops(
    env: &EnvPlan,
    root: &Path,
    state_dir: &Path,
    devices: &[&str],
    expose: &[PathBuf],
) -> Result<Vec<Op>, SandboxError> {
    let at = |rel: &str| path_c(&root.join(rel));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mut ops = vec![tmpfs_op(
        path_c(root)?,
        "mode=755,size=1m".into(),
        nosuid_nodev,
    )?];
    for entry in &env.entries {
        match entry {
            EnvEntry::Dir(name) => {
                let target = path_c(&root.join(name))?;
                ops.push(Op::Mkdir {
                    path: target.clone(),
                    mode: 0o755,
                });
                ops.push(Op::Mount {
                    src: Some(path_c(&env.root.join(name))?),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                });
                ops.push(Op::SetAttr {
                    path: target,
                    set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    recursive: true,
                });
            }
            EnvEntry::Symlink(name, target) => ops.push(Op::Symlink {
                target: path_c(target)?,
                path: path_c(&root.join(name))?,
            }),
        }
    }
    // Exposed toolchain directories, read-only at their own path, over whatever the
    // environment has there (their parents are made in the skeleton, empty).
    for dir in expose {
        let rel = dir.strip_prefix("/").map_err(|_| {
            SandboxError::InvalidSpec(format!("exposed directory {dir:?} is not absolute"))
        })?;
        let mut made = root.to_owned();
        for component in rel.components() {
            made.push(component);
            ops.push(Op::MkdirAll {
                path: path_c(&made)?,
                mode: 0o755,
            });
        }
        let target = path_c(&root.join(rel))?;
        ops.push(Op::Mount {
            src: Some(path_c(dir)?),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
        ops.push(Op::SetAttr {
            path: target,
            set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            recursive: true,
        });
    }
    // If the state directory lies inside a bound directory, cover it.
    if let Ok(rel) = state_dir.strip_prefix(&env.root) {
        let first = rel.components().next().map(|c| c.as_os_str().to_owned());
        let bound = env
            .entries
            .iter()
            .any(|e| matches!(e, EnvEntry::Dir(n) if Some(n) == first.as_ref()));
        if bound {
            ops.push(tmpfs_op(
                path_c(&root.join(rel))?,
                "size=4k,mode=0".into(),
                nosuid_nodev | libc::MS_RDONLY,
            )?);
        }
    }
    for (dir, mode) in [
        ("workspace", 0o755),
        ("tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
    ] {
        ops.push(Op::Mkdir {
            path: at(dir)?,
            mode,
        });
    }
    ops.push(tmpfs_op(
        at("dev")?,
        "mode=755,size=64k".into(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?);
    for device in devices {
        let target = at(&format!("dev/{device}"))?;
        ops.push(Op::Touch {
            path: target.clone(),
        });
        ops.push(Op::Mount {
            src: Some(cstr(format!("/dev/{device}"))?),
            target,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        });
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        ops.push(Op::Symlink {
            target: cstr(target)?,
            path: at(&format!("dev/{name}"))?,
        });
    }
    ops.push(Op::Mkdir {
        path: at("dev/shm")?,
        mode: 0o1777,
    });
    ops.push(Op::Mkdir {
        path: at("dev/pts")?,
        mode: 0o755,
    });
    for path in [at("dev")?, path_c(root)?] {
        ops.push(Op::SetAttr {
            path,
            set: sys::MOUNT_ATTR_RDONLY,
            recursive: false,
        });
    }
    Ok(ops)
}

/// Ops that turn a launcher thread's mount namespace into one whose root is the skeleton at
/// `skeleton`: a fresh proc mount for children to mount theirs over (a user namespace may
/// mount proc only where one is already fully visible), then pivot_root into it, detaching
/// the host's mounts. Children cloned from it start inside their environment's root.
///
/// That proc shows the host's pid namespace and stays under each sandbox's own; `hidepid`
/// makes it show a process only to whoever may ptrace it (the launcher, as root), never to a
/// sandbox, should it ever be uncovered.
pub(crate) fn enter_skeleton_ops(skeleton: &Path) -> Result<Vec<Op>, SandboxError> {
    Ok(vec![
        Op::Mount {
            src: Some(c"proc".to_owned()),
            target: path_c(&skeleton.join("proc"))?,
            fstype: Some(c"proc".to_owned()),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: Some(c"hidepid=invisible".to_owned()),
        },
        Op::Chdir {
            path: path_c(skeleton)?,
        },
        Op::PivotRoot,
    ])
}

/// Files and directories of a fresh proc that still describe the host, not the sandbox:
/// Docker's masked paths (`/sys`, the rest of that list, is not mounted at all). Docker's
/// read-only paths need nothing: they are the host root's, which a sandbox's root is not.
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "interrupts",
    "sysrq-trigger",
];
const MASKED_PROC_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// The masked proc paths this kernel has, each with whether it is a directory (covered by an
/// empty read-only tmpfs; a file gets `/dev/null` bound over it). Looked up once: a mount
/// each costs every sandbox's start-up, so only those that exist are masked.
fn masked_proc_paths() -> &'static [(&'static str, bool)] {
    static PATHS: std::sync::OnceLock<Vec<(&'static str, bool)>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let files = MASKED_PROC_FILES.iter().map(|&f| (f, false));
        let dirs = MASKED_PROC_DIRS.iter().map(|&d| (d, true));
        files
            .chain(dirs)
            .filter(|(name, _)| Path::new("/proc").join(name).exists())
            .collect()
    })
}

/// Ops each sandbox runs on top of a skeleton at `root`: its workspace, private /tmp,
/// /dev/shm, /dev/pts and /proc, then (with `pivot`) pivot_root into it.
fn sandbox_ops(
    root: &Path,
    workspace: &Workspace,
    binds: &[(&crate::spec::Bind, Option<&OwnedFd>)],
    limits: &crate::spec::Limits,
    pivot: bool,
) -> Result<Vec<Op>, SandboxError> {
    let size = limits.workspace_bytes.max(4096);
    let inodes = limits.workspace_inodes.max(1);
    let at = |rel: &str| path_c(&root.join(rel));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mut ops = Vec::new();
    match workspace {
        Workspace::Tmpfs { root: fd } => ops.push(Op::MoveMount {
            fd: fd.as_raw_fd(),
            target: at("workspace")?,
        }),
        Workspace::Dir { path, .. } => ops.push(Op::Mount {
            src: Some(path_c(path)?),
            target: at("workspace")?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        }),
    }
    // Prepared builds over the workspace, read-only: each a detached tree made by the host
    // (as root), or the host path bound before the pivot (without root).
    for (bind, fd) in binds {
        let target = path_c(&root.join("workspace").join(&bind.target))?;
        match fd {
            Some(fd) => ops.push(Op::MoveMount {
                fd: fd.as_raw_fd(),
                target,
            }),
            None => {
                ops.push(Op::Mount {
                    src: Some(path_c(&bind.host)?),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                });
                ops.push(Op::SetAttr {
                    path: target,
                    set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    recursive: true,
                });
            }
        }
    }
    ops.push(tmpfs_op(
        at("tmp")?,
        format!("mode=1777,size={size},nr_inodes={inodes}"),
        nosuid_nodev,
    )?);
    ops.push(tmpfs_op(
        at("dev/shm")?,
        format!("mode=1777,size={size},nr_inodes={inodes}"),
        nosuid_nodev,
    )?);
    ops.push(Op::Mount {
        src: Some(c"devpts".to_owned()),
        target: at("dev/pts")?,
        fstype: Some(c"devpts".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c"newinstance,ptmxmode=0666,mode=620".to_owned()),
    });
    ops.push(Op::Mount {
        src: Some(c"proc".to_owned()),
        target: at("proc")?,
        fstype: Some(c"proc".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    for &(name, dir) in masked_proc_paths() {
        let target = at(&format!("proc/{name}"))?;
        ops.push(if dir {
            tmpfs_op(
                target,
                "size=4k,nr_inodes=1,mode=555".into(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            )?
        } else {
            Op::Mount {
                src: Some(at("dev/null")?),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            }
        });
    }
    ops.push(Op::Chdir {
        path: path_c(root)?,
    });
    if pivot {
        ops.push(Op::PivotRoot);
    }
    Ok(ops)
}

fn build_plan(inner: &Inner, input: PlanInputs<'_>) -> Result<ChildPlan, SandboxError> {
    let spec = input.spec;
    let binds: Vec<_> = spec
        .binds
        .iter()
        .zip(input.binds.iter().map(Option::as_ref))
        .collect();
    let ops = if input.env.pivoted {
        // The child's mount namespace is a copy of its launcher's, whose root already is the
        // environment's skeleton: only the per-sandbox mounts are left to add.
        sandbox_ops(Path::new("/"), input.workspace, &binds, &spec.limits, false)?
    } else {
        let mut ops = skeleton_ops(
            input.env,
            &inner.new_root,
            &inner.config.state_dir,
            &inner.devices,
            &inner.config.expose,
        )?;
        ops.extend(sandbox_ops(
            &inner.new_root,
            input.workspace,
            &binds,
            &spec.limits,
            true,
        )?);
        ops
    };

    // Every run's pid 1 is `isotest-init`: with stages, an empty first argument, which names
    // no program, then which stages follow, then the stages' scripts (see the program's usage).
    let mut argv = vec![c"isotest-init".to_owned()];
    if spec.setup.is_some() || spec.teardown.is_some() {
        let stages = match (&spec.setup, &spec.teardown) {
            (Some(_), Some(_)) => c"st",
            (Some(_), None) => c"s",
            _ => c"t",
        };
        argv.extend([c"".to_owned(), stages.to_owned()]);
        for script in [&spec.setup, &spec.teardown].into_iter().flatten() {
            argv.push(cstr(script)?);
        }
    }
    for arg in &spec.command {
        argv.push(cstr(arg)?);
    }
    let home = "/workspace";
    let mut env: BTreeMap<&str, &str> = [
        ("PATH", inner.path.as_str()),
        ("HOME", home),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .collect();
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') {
            return Err(SandboxError::InvalidSpec(format!(
                "environment variable name {key:?}"
            )));
        }
        env.insert(key, value);
    }
    let envp = env
        .into_iter()
        .map(|(k, v)| cstr(format!("{k}={v}")))
        .collect::<Result<_, _>>()?;

    Ok(ChildPlan {
        ops,
        fds: input.fds,
        make_private: !input.env.pivoted,
        set_groups: matches!(inner.isolation.uid_mapping, UidMapping::PerSandbox { .. }),
        loopback_up: !spec.network,
        rlimits: rlimits(&spec.limits),
        cap_last: inner.cap_last,
        workdir: workdir(&spec.workdir)?,
        program: c"/bin/sh".to_owned(),
        argv,
        envp,
        init: Some(inner.init_program.as_raw_fd()),
        keep_caps: match spec.privilege {
            Privilege::Test => 0,
            Privilege::ForkServer => FORK_SERVER_CAPS,
        },
        control: spec.control.as_ref().map(|fd| fd.as_raw_fd()),
        filters: match spec.privilege {
            Privilege::Test => None,
            Privilege::ForkServer => Some(Arc::clone(&inner.fork_server_filters)),
        },
    })
}

/// Soft limit on open files: what `select` can handle. Go, the JVM and Node.js raise their own
/// soft limit to the hard one at start.
const NOFILE_SOFT: u64 = 1024;
/// Hard limit on open files per process (their kernel memory is charged to the memory cgroup;
/// this bounds one process's descriptor table).
const NOFILE_HARD: u64 = 65536;

/// The rlimits of a sandbox, as nsjail sets them where they make sense: no core dumps, a file
/// size cap, open files, processes and threads (a backstop to the pids cgroup: counted per
/// user, and each sandbox has its own), and no real-time or raised CPU priority (a real-time
/// busy loop would starve the host). Not the address space: Go, the JVM and V8 reserve
/// gigabytes they never use, and the memory cgroup counts what is used. Each is clamped to the
/// worker's own hard limit, which a sandbox cannot raise.
fn rlimits(limits: &crate::spec::Limits) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    [
        (libc::RLIMIT_CORE, 0, 0),
        (
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        ),
        (libc::RLIMIT_NOFILE, NOFILE_SOFT, NOFILE_HARD),
        (libc::RLIMIT_NPROC, limits.pids, limits.pids),
        (libc::RLIMIT_RTPRIO, 0, 0),
        (libc::RLIMIT_NICE, 0, 0),
    ]
    .into_iter()
    .map(|(resource, soft, hard)| {
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: getrlimit writes the struct it is given.
        unsafe { libc::getrlimit(resource, &mut own) };
        let hard = hard.min(own.rlim_max);
        (resource, soft.min(hard), hard)
    })
    .collect()
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

/// The absolute directory the stages run in: the workspace, or a relative path beneath it.
fn workdir(rel: &str) -> Result<CString, SandboxError> {
    let path = Path::new(rel);
    if !path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(SandboxError::InvalidSpec(format!(
            "working directory {rel:?} is not a relative path inside the workspace"
        )));
    }
    path_c(&Path::new("/workspace").join(path))
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

/// Reads a stream to its end keeping `cap` bytes and dropping the rest, so a flood never grows
/// memory; stops early once `dead` fires and the buffered bytes are drained.
pub(crate) async fn capture(
    mut rx: pipe::Receiver,
    cap: usize,
    mut dead: tokio::sync::watch::Receiver<bool>,
) -> Captured {
    let mut out = Captured::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut died = false;
    loop {
        if died {
            match rx.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.push(&buf[..n], cap),
                // Bytes still held only by processes outside the namespace are not ours.
                Err(_) => break,
            }
            continue;
        }
        tokio::select! {
            read = rx.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => out.push(&buf[..n], cap),
            },
            _ = dead.wait_for(|d| *d) => died = true,
        }
    }
    out
}

/// The stage exits parsed from the init's report lines; anything malformed is ignored since a
/// test can write to that pipe too.
fn parse_report(report: &[u8]) -> [Option<StageExit>; 3] {
    let mut stages = [None; 3];
    for line in report.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut parts = line.split(' ');
        let (Some(stage), Some(code), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(code) = code.parse::<i32>() else {
            continue;
        };
        if !(0..=255).contains(&code) {
            continue;
        }
        let index = match stage {
            "setup" => 0,
            "command" => 1,
            "teardown" => 2,
            _ => continue,
        };
        stages[index].get_or_insert(StageExit::from_shell_status(code));
    }
    stages
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
        let result = supervise(&pidfd, lease.cgroup.as_ref(), limits).await;
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

/// The cgroup of a run: v1 keeps one per slot between runs (mkdir and rmdir of v1 cgroups cost
/// more than resetting one), v2 creates one per run.
pub(crate) fn take_cgroup(
    inner: &Inner,
    parent: &crate::cgroup::CgroupParent,
    slot: u32,
    name: &str,
    limits: &crate::spec::Limits,
) -> Result<crate::cgroup::SandboxCgroup, SandboxError> {
    let kept = {
        let mut pool = inner.cgroup_pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.get_mut(slot as usize).and_then(Option::take)
    };
    if let Some(mut cg) = kept {
        match cg.reset(limits.memory_bytes, limits.pids) {
            Ok(()) => return Ok(cg),
            Err(e) => {
                tracing::warn!(error = %e, "Could not reuse a sandbox cgroup; creating a fresh one.");
                if let Err(e) = cg.destroy() {
                    tracing::warn!(error = %e, "Could not remove a sandbox cgroup.");
                }
            }
        }
    }
    let name = if parent.version() == crate::CgroupVersion::V1 {
        format!("slot-{slot}")
    } else {
        name.to_owned()
    };
    parent
        .create(&name, limits.memory_bytes, limits.pids)
        .map_err(|e| SandboxError::io("create cgroup", io::Error::other(e)))
}

/// A run's slot (and so its uid) and its cgroup. When the last holder lets go, however the run
/// ends, the cgroup goes back to the slot's pool (v1) or is removed, then the slot is freed.
/// On v1 the launcher thread holds it too while it sits in the cgroup to clone: a run cancelled
/// meanwhile must not hand the cgroup (nor the slot, whose next run would take the cgroup) to
/// the next run, whose reset would find the worker in it.
pub(crate) struct Lease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) slot: u32,
    pub(crate) cgroup: Option<crate::cgroup::SandboxCgroup>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if cg.reusable() {
                // The next run of this slot waits until it is empty and resets it.
                let mut pool = self
                    .inner
                    .cgroup_pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let slot = self.slot as usize;
                if pool.len() <= slot {
                    pool.resize_with(slot + 1, || None);
                }
                pool[slot] = Some(cg);
            } else if let Err(e) = cg.destroy() {
                tracing::warn!(error = %e, "Could not remove a sandbox cgroup.");
            }
        }
        self.inner.slots.release(self.slot);
    }
}

/// Waits for the init to exit, enforcing the wall-clock and CPU limits; returns why it was
/// stopped (if it was) and its reaped status.
async fn supervise(
    pidfd: &AsyncFd<OwnedFd>,
    cgroup: Option<&crate::cgroup::SandboxCgroup>,
    limits: &crate::spec::Limits,
) -> Result<(Option<Termination>, sys::Reaped), SandboxError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut reason = None;
    let mut cpu_tick = tokio::time::interval(Duration::from_millis(50));
    let cpu_limit = limits
        .cpu_time
        .filter(|_| cgroup.is_some_and(|c| c.cpu_usage().is_some()));
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        tokio::select! {
            ready = pidfd.readable() => {
                let mut ready = ready.map_err(|e| SandboxError::io("wait for sandbox init", e))?;
                match sys::waitid_pidfd(pidfd.get_ref().as_fd()) {
                    Ok(Some(reaped)) => return Ok((reason, reaped)),
                    Ok(None) => ready.clear_ready(),
                    Err(e) => return Err(SandboxError::io("reap sandbox init", e)),
                }
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
                // Killing the pid namespace's init makes the kernel kill every process in it.
                let _ = sys::pidfd_send_signal(pidfd.get_ref().as_fd(), libc::SIGKILL);
            }
        }
    }
}

/// Asks every process of the sandbox to stop and returns when to SIGKILL: SIGTERM to the init
/// through its pidfd, which `isotest-init` passes on to every other process of its pid
/// namespace. (Signalling pids read from `cgroup.procs` would race with their reuse: a process
/// may exit and its pid go to a host process between the read and the kill.)
fn begin_stop(pidfd: BorrowedFd<'_>, limits: &crate::spec::Limits) -> tokio::time::Instant {
    if limits.kill_grace.is_zero() || sys::pidfd_send_signal(pidfd, libc::SIGTERM).is_err() {
        return tokio::time::Instant::now();
    }
    tokio::time::Instant::now() + limits.kill_grace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::hooks;

    /// A run cancelled while the launcher thread sits in its sandbox's cgroup (v1 moves the
    /// thread there to clone) must not hand that cgroup, nor its slot, to the next run before
    /// the thread has left: that run's reset would find this process in it and kill it. (Were
    /// this process killed, the whole test binary would die.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_cancelled_mid_spawn_leaves_its_cgroup_alone() {
        let sandboxer = crate::Sandboxer::new(crate::SandboxConfig {
            state_dir: "/run/isotest-sandbox-unit".into(),
            ..crate::SandboxConfig::default()
        })
        .expect("this host supports full isolation");
        let spec = |script: &str| RunSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..RunSpec::default()
        };
        let wait_for = |paused: bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut pause = hooks::PAUSE.lock().expect("lock");
            while pause.paused != paused {
                assert!(Instant::now() < deadline, "the launcher never paused");
                pause = hooks::CHANGED
                    .wait_timeout(pause, Duration::from_millis(100))
                    .expect("lock")
                    .0;
            }
        };
        *hooks::PAUSE.lock().expect("lock") = hooks::Pause {
            armed: true,
            ..hooks::Pause::default()
        };
        let first = tokio::spawn({
            let sandboxer = sandboxer.clone();
            async move { sandboxer.run(spec("sleep 30")).await }
        });
        tokio::task::spawn_blocking(move || wait_for(true))
            .await
            .expect("join");
        first.abort();
        assert!(first.await.expect_err("cancelled").is_cancelled());
        // Neither its slot nor its cgroup is handed out while the launcher is in the cgroup.
        let inner = &sandboxer.inner;
        let slot_taken = |slot: usize| {
            let used = inner.slots.used.lock().expect("lock");
            used.get(slot).copied().unwrap_or(false)
        };
        let pooled = |slot: usize| {
            let pool = inner.cgroup_pool.lock().expect("lock");
            pool.get(slot).is_some_and(Option::is_some)
        };
        // Only on v1 does the launcher thread enter the cgroup (on v2 the child is moved).
        let launcher_enters = inner
            .cgroups
            .as_ref()
            .is_some_and(|c| !c.home_tasks().is_empty());
        if launcher_enters {
            assert!(slot_taken(0) && !pooled(0));
        }
        // The next run (which may queue behind the paused launcher) gets another slot and
        // cgroup, and resets no cgroup the launcher is in.
        let next = tokio::spawn({
            let sandboxer = sandboxer.clone();
            async move { sandboxer.run(spec("echo ok")).await }
        });
        {
            let mut pause = hooks::PAUSE.lock().expect("lock");
            pause.released = true;
            hooks::CHANGED.notify_all();
        }
        let o = next.await.expect("join").expect("runs");
        assert_eq!(o.stdout.data, b"ok\n");
        tokio::task::spawn_blocking(move || wait_for(false))
            .await
            .expect("join");
        // Once the launcher has left, slot 0 (and on v1 its cgroup) serves runs again.
        let reusable = inner
            .cgroups
            .as_ref()
            .is_some_and(|c| c.version() == crate::CgroupVersion::V1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while slot_taken(0) || (reusable && !pooled(0)) {
            assert!(Instant::now() < deadline, "slot 0 never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            let o = sandboxer.run(spec("echo ok")).await.expect("runs");
            assert_eq!(o.stdout.data, b"ok\n");
        }
    }

    #[test]
    fn report_parsing_is_defensive() {
        let [s, c, t] = parse_report(b"setup 0\ncommand 137\ngarbage\ncommand 0\nteardown x\n");
        assert_eq!(s, Some(StageExit::Code(0)));
        assert_eq!(c, Some(StageExit::Signal(9)));
        assert_eq!(t, None);
        assert_eq!(parse_report(b"command 99999\nsetup -1 2\n"), [None; 3]);
    }
}
