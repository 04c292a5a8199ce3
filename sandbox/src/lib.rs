//! Runs one CI test per fresh Linux sandbox: user, mount, pid, network, ipc, uts and cgroup
//! namespaces, a fresh read-only root with the environment bound in, a size-limited workspace,
//! cgroup limits, rlimits, no capabilities and a seccomp filter.
//!
//! Parts: [`Sandboxer`] probes the host once and runs a [`RunSpec`] to a [`RunOutcome`];
//! [`bundle`] packs and safely unpacks tar + zstd workspaces. Inside: `launcher` (the
//! long-lived thread every sandbox is cloned from), `child` (the async-signal-safe steps
//! between clone and exec), `run` (prepare, supervise, reap, collect), `workspace` (host-side
//! files, never following links), `cgroup` (v1/v2 limits and accounting), `seccomp`, `sys`.
//!
//! It is a library on `nix`/`libc` (clone, mounts, pivot_root, rlimits) with its own small
//! seccomp assembler (one BPF program; see `seccomp` for why not `seccompiler`) and cgroup
//! module, not a wrapper around `bwrap`: the worker
//! needs typed outcomes (per-stage exits, OOM and timeout causes, cgroup usage), every step
//! callable from code (a later issue forks pre-initialised interpreters into fresh namespaces),
//! and no helper process per test on the startup path. Four choices keep startup cheap:
//! - each environment's read-only root skeleton is built once per launcher thread, in the
//!   thread's private mount namespace, and the thread pivots into it: every child's mount
//!   namespace is a copy holding only the skeleton, so a child adds its workspace, /tmp,
//!   /dev/shm, /dev/pts and /proc and needs no pivot_root of its own (pivot_root walks every
//!   task on the host) nor an unmount of the host's mounts;
//! - network namespaces are made ahead by a pool thread and each handed out once (`netns`);
//! - on cgroup v1 the launcher thread moves itself into the sandbox's cgroups before cloning,
//!   which avoids the global lock (and its RCU grace period) that moving another process
//!   takes;
//! - the launcher maps the child's ids and releases it right after cloning, with no wait for
//!   the async side to be scheduled.
//!
//! The sandbox's first process is cloned with `CLONE_VM` (like `posix_spawn`): it shares the
//! worker's memory only until it execs, so no page tables are copied and no process of a
//! sandbox ever holds an image of the worker. A run with only a command (no setup, no
//! teardown) execs `isotest-init` (`init/isotest-init.c`, freestanding, embedded and exec'd
//! from a sealed memfd) rather than a shell: pid 1, non-dumpable, it starts the command as
//! pid 2, reaps orphans and reports the command's status, which keeps the shell init's
//! semantics (the command is not pid 1, so its signals and `$$` behave as usual) at a tenth of
//! a shell's start-up cost.
//!
//! Requirements: root on the host for full isolation (per-sandbox uids from
//! [`SandboxConfig::uid_base`], a workspace tmpfs, cgroups); user namespaces enabled; the
//! environment roots world-readable. Without root, `allow_weaker_isolation` runs sandboxes
//! mapped to the caller's uid with a plain workspace directory and no cgroup limits.

mod cgroup;
mod child;
mod config;
mod error;
mod export;
mod ids;
mod init;
mod isolation;
mod launcher;
mod netns;
mod outcome;
mod run;
mod seccomp;
mod spec;
mod sys;
mod workspace;
mod zygote;

pub mod bundle;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use config::SandboxConfig;
pub use error::SandboxError;
pub use isolation::{CgroupVersion, Isolation, UidMapping};
pub use outcome::{Captured, CollectError, RunOutcome, StageExit, Termination, Usage};
pub use spec::{Bind, Export, Limits, Privilege, RunSpec};
pub use zygote::{FORK_SERVER, ForkOutcome, Zygote, ZygoteError, ZygoteSpec};

use cgroup::CgroupParent;
use launcher::Launcher;
use run::EnvPlan;

/// The default first outside uid/gid of per-sandbox users when running as root
/// ([`SandboxConfig::uid_base`]).
pub const SANDBOX_UID_BASE: u32 = 200_000;
/// How many sandboxes may run at once by default (each needs its own outside uid;
/// [`SandboxConfig::uid_count`]).
pub const MAX_CONCURRENT: u32 = 65_536;
/// Launcher threads per environment (as root), so that sandboxes of one environment can be
/// cloned on two cores at once.
const LAUNCHERS_PER_ENVIRONMENT: usize = 2;

/// Creates sandboxes on this host; cheap to clone or share in an `Arc`, and safe to use from
/// many tasks at once.
#[derive(Debug, Clone)]
pub struct Sandboxer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SandboxConfig,
    isolation: Isolation,
    /// The threads sandboxes are cloned from: as root, [`LAUNCHERS_PER_ENVIRONMENT`] per
    /// environment, each inside that environment's skeleton; otherwise one.
    launchers: Vec<Launcher>,
    /// v1: each slot's cgroup, kept between its runs (dropped before the parent).
    cgroup_pool: Mutex<Vec<Option<cgroup::SandboxCgroup>>>,
    cgroups: Option<CgroupParent>,
    environments: BTreeMap<String, EnvPlan>,
    slots: Slots,
    /// Opened once and handed to every sandbox as its stdin.
    dev_null: OwnedFd,
    cap_last: u32,
    /// Where each sandbox mounts its fresh root inside its own mount namespace.
    new_root: PathBuf,
    /// Host devices present, bind-mounted into each sandbox's /dev.
    devices: Vec<&'static str>,
    /// `isotest-init`, exec'd by fd as pid 1 of single-command sandboxes.
    init_program: OwnedFd,
    /// The seccomp programs of a zygote's fork server (see [`Privilege::ForkServer`]).
    fork_server_filters: Arc<Vec<seccomp::BpfProgram>>,
    /// The sandbox's `PATH`: the usual directories, then the exposed toolchains' `bin`.
    path: String,
    counter: AtomicU64,
}

impl Inner {
    /// The next of `env`'s launchers, in turn.
    fn launcher_for(&self, env: &EnvPlan) -> &Launcher {
        let turn = self.counter.load(Ordering::Relaxed) as usize;
        let index = env
            .launchers
            .get(turn % env.launchers.len().max(1))
            .copied()
            .unwrap_or(0);
        &self.launchers[index]
    }

    fn next_id(&self) -> String {
        format!(
            "{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Allocates per-sandbox slots (and so outside uids) so no two live sandboxes share a uid.
#[derive(Debug)]
struct Slots {
    used: Mutex<Vec<bool>>,
    /// How many slots there are (the uids from the base).
    count: u32,
}

impl Slots {
    fn new(count: u32) -> Slots {
        Slots {
            used: Mutex::new(Vec::new()),
            count,
        }
    }

    /// A free slot, taken until [`Slots::release`].
    fn acquire(&self) -> Result<u32, SandboxError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let index = match used.iter().position(|u| !u) {
            Some(i) => i,
            None if used.len() < self.count as usize => {
                used.push(false);
                used.len() - 1
            }
            None => {
                return Err(SandboxError::io(
                    "allocate a sandbox slot",
                    std::io::Error::other("too many concurrent sandboxes"),
                ));
            }
        };
        used[index] = true;
        Ok(index as u32)
    }

    fn release(&self, index: u32) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = used.get_mut(index as usize) {
            *u = false;
        }
    }
}

impl Sandboxer {
    /// Probes the host and prepares to run sandboxes: creates the state directory, compiles the
    /// seccomp filter, starts the launcher thread, sets up the parent cgroups and lists each
    /// environment's top level.
    ///
    /// # Errors
    /// `Unsupported` naming every missing piece unless `allow_weaker_isolation` (user
    /// namespaces are required either way); `IdRange` when, as root, the configured uids or
    /// gids are not all mapped in this user namespace or hold the caller's own; `Io` when the
    /// state directory, an environment or the launcher cannot be set up.
    pub fn new(config: SandboxConfig) -> Result<Sandboxer, SandboxError> {
        let root = nix::unistd::geteuid().is_root();
        if root {
            for kind in [ids::IdKind::Uid, ids::IdKind::Gid] {
                ids::check(kind, config.uid_base, config.uid_count).map_err(|why| {
                    let start = u64::from(config.uid_base);
                    SandboxError::IdRange {
                        kind: kind.name(),
                        start,
                        end: start + u64::from(config.uid_count),
                        why,
                    }
                })?;
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| SandboxError::io("create state directory", e))?;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| SandboxError::io("restrict state directory", e))?;
        let new_root = if root {
            config.state_dir.clone()
        } else {
            // Without root, workspaces are directories in the state dir, so the fresh root must
            // not be mounted over it.
            let dir = config.state_dir.join("root");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| SandboxError::io("create root mount point", e))?;
            dir
        };

        let filters = seccomp::build()
            .map_err(|e| SandboxError::io("build seccomp filter", std::io::Error::other(e)))?;

        let mut roots: BTreeMap<String, PathBuf> =
            [("default".to_owned(), PathBuf::from("/"))].into();
        roots.extend(config.environments.clone());
        let mut environments: BTreeMap<String, EnvPlan> = roots
            .into_iter()
            .map(|(name, root)| {
                EnvPlan::scan(&root)
                    .map(|plan| (name, plan))
                    .map_err(|e| SandboxError::io(format!("list environment root {root:?}"), e))
            })
            .collect::<Result<_, _>>()?;
        let devices: Vec<&'static str> = run::DEVICES
            .iter()
            .copied()
            .filter(|d| Path::new("/dev").join(d).exists())
            .collect();
        // As root, each environment's skeleton is built once per launcher thread, in the
        // thread's own mount namespace (over the state dir, so the host never sees it), and
        // the thread pivots into it: every child's mount namespace is a copy holding nothing
        // of the host but the skeleton, and the child needs no pivot_root (which walks every
        // task on the host) nor an unmount of the host's mounts.
        let mut skeletons = Vec::new();
        if root {
            let state = run::path_c(&config.state_dir)?;
            for env in environments.values() {
                let dir = config.state_dir.join("env");
                let mut ops = vec![
                    child::Op::Mount {
                        src: None,
                        target: c"/".to_owned(),
                        fstype: None,
                        flags: libc::MS_REC | libc::MS_PRIVATE,
                        data: None,
                    },
                    child::Op::Mount {
                        src: Some(c"tmpfs".to_owned()),
                        target: state.clone(),
                        fstype: Some(c"tmpfs".to_owned()),
                        flags: libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(c"mode=755,size=1m".to_owned()),
                    },
                    child::Op::Mkdir {
                        path: run::path_c(&dir)?,
                        mode: 0o755,
                    },
                ];
                ops.extend(run::skeleton_ops(
                    env,
                    &dir,
                    &config.state_dir,
                    &devices,
                    &config.expose,
                )?);
                ops.extend(run::enter_skeleton_ops(&dir)?);
                skeletons.push(Arc::new(ops));
            }
        }
        // As root, network namespaces are made ahead by a pool thread (see `netns`).
        let netns_pool = if root {
            netns::Pool::start(netns::DEFAULT_DEPTH)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "Cannot make network namespaces ahead; each sandbox creates its own.");
                })
                .ok()
        } else {
            None
        };
        let filters = Arc::new(filters);
        let netns_pool = netns_pool.map(Arc::new);
        let mut launchers = Vec::new();
        if skeletons.is_empty() {
            launchers.push(
                Launcher::start(Arc::clone(&filters), Arc::new(Vec::new()), netns_pool)
                    .map_err(|e| SandboxError::io("start launcher thread", e))?,
            );
            for env in environments.values_mut() {
                env.launchers = vec![0];
            }
        } else {
            for (env, ops) in environments.values_mut().zip(skeletons) {
                for _ in 0..LAUNCHERS_PER_ENVIRONMENT {
                    env.launchers.push(launchers.len());
                    launchers.push(
                        Launcher::start(Arc::clone(&filters), Arc::clone(&ops), netns_pool.clone())
                            .map_err(|e| {
                                SandboxError::io(
                                    format!("start launcher thread for {:?}", env.root),
                                    e,
                                )
                            })?,
                    );
                }
                env.pivoted = true;
            }
        }
        let launcher = &launchers[0];

        let mut missing = Vec::new();
        let ns_flags = (libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as u64;
        let namespaces = launcher.probe(ns_flags).is_ok();
        if !namespaces {
            missing.push("user namespaces".to_owned());
        }
        let probe = CgroupParent::probe(&format!("isotest-sandbox-{}", std::process::id()));
        missing.extend(probe.missing);
        let cgroups = probe.parent;
        if !root {
            missing
                .push("root privileges (per-sandbox uid, size-limited workspace tmpfs)".to_owned());
        }
        let isolation = Isolation {
            namespaces,
            uid_mapping: if root {
                UidMapping::PerSandbox {
                    base: config.uid_base,
                }
            } else {
                UidMapping::Caller {
                    uid: nix::unistd::geteuid().as_raw(),
                }
            },
            cgroup: cgroups.as_ref().map(|c| c.version()),
            memory_limit: cgroups.as_ref().is_some_and(|c| c.has_memory()),
            pids_limit: cgroups.as_ref().is_some_and(|c| c.has_pids()),
            cpu_accounting: cgroups.as_ref().is_some_and(|c| c.has_cpu()),
            workspace_tmpfs: root,
            missing,
        };
        if !isolation.missing.is_empty() && (!config.allow_weaker_isolation || !namespaces) {
            return Err(SandboxError::Unsupported {
                missing: isolation.missing,
            });
        }

        let init_program = init::program().map_err(|e| SandboxError::io("load isotest-init", e))?;
        let dev_null = std::fs::File::open("/dev/null")
            .map_err(|e| SandboxError::io("open /dev/null", e))?
            .into();
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let slots = Slots::new(if root {
            config.uid_count
        } else {
            MAX_CONCURRENT
        });
        let mut path = "/usr/local/bin:/usr/bin:/bin".to_owned();
        for dir in &config.expose {
            let bin = dir.join("bin");
            if bin.is_dir() {
                path.push(':');
                path.push_str(&bin.to_string_lossy());
            }
        }
        Ok(Sandboxer {
            inner: Arc::new(Inner {
                config,
                isolation,
                launchers,
                cgroup_pool: Mutex::new(Vec::new()),
                cgroups,
                environments,
                slots,
                dev_null,
                cap_last,
                new_root,
                devices,
                init_program,
                fork_server_filters: Arc::new(seccomp::build_fork_server().map_err(|e| {
                    SandboxError::io(
                        "build the fork server's seccomp filter",
                        std::io::Error::other(e),
                    )
                })?),
                path,
                counter: AtomicU64::new(0),
            }),
        })
    }

    /// What this sandboxer enforces and what is missing, for logging at start.
    pub fn isolation(&self) -> &Isolation {
        &self.inner.isolation
    }

    /// Runs one test in a fresh sandbox and destroys it; dropping the future kills the sandbox.
    ///
    /// # Errors
    /// Only when the sandbox could not be created (or the spec cannot be expressed: empty
    /// command, NUL bytes, unknown environment, bad bundle; or the kernel would not exec the
    /// command for a reason of the test's own, `ExecRefused`); whatever the test does is an
    /// `Ok` outcome.
    pub async fn run(&self, spec: RunSpec) -> Result<RunOutcome, SandboxError> {
        run::run(&self.inner, spec).await
    }
}
