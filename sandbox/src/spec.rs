//! What one sandboxed run should do: the stages, the files, and the limits it runs under.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One test to run in a fresh sandbox.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// The environment (root filesystem) to run in; `None` means `"default"`.
    pub environment: Option<String>,
    /// A tar + zstd bundle (see [`crate::bundle`]) unpacked as the workspace's content.
    pub workspace_bundle: Option<Arc<[u8]>>,
    /// Relative path and content of extra files, written after the bundle (parents created).
    pub files: Vec<(String, Vec<u8>)>,
    /// Run with `/bin/sh -c` in the workspace before the command.
    pub setup: Option<String>,
    /// The test's argv, run in the workspace; `argv[0]` is looked up on the sandbox `PATH`.
    pub command: Vec<String>,
    /// The directory the stages run in, relative to the workspace (empty: its root).
    pub workdir: String,
    /// Run with `/bin/sh -c` after the command, whatever its exit, unless setup failed.
    pub teardown: Option<String>,
    /// The test's variables. The sandbox adds only `PATH`, `HOME`, `LANG` and `TMPDIR`; a value
    /// given here for one of those wins.
    pub env: BTreeMap<String, String>,
    /// Resource limits for the whole sandbox.
    pub limits: Limits,
    /// Whether the test gets the host's network; `false` gives it a network namespace with only
    /// its own loopback interface.
    pub network: bool,
    /// Relative workspace paths read back after the run.
    pub collect: Vec<String>,
    /// Host directories bound read-only into the workspace (a prepared build the test runs
    /// from), after the bundle and files are in place.
    pub binds: Vec<Bind>,
    /// Workspace paths copied out to a host directory after the run (a build's products).
    pub export: Option<Export>,
    /// What the sandbox's process may do beyond a test's.
    pub privilege: Privilege,
    /// A socket the command gets as fd 6 (a fork server's line to the worker).
    pub control: Option<Arc<OwnedFd>>,
}

/// What a sandbox's process may do beyond what a test may.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Privilege {
    /// Nothing: a test.
    #[default]
    Test,
    /// Make the namespaces and mounts of the sandboxes it forks its tests into (a zygote's
    /// fork server): it keeps `CAP_SYS_ADMIN`, `CAP_NET_ADMIN` and `CAP_SETPCAP` in its own
    /// user namespace, and its seccomp filter also allows `unshare` (never of a user
    /// namespace), `setns` and `mount`. Each forked test drops all of it before it runs.
    ForkServer,
}

/// A host directory seen read-only at a path of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The directory on the host, readable by any user (the sandbox's uid is unprivileged).
    pub host: PathBuf,
    /// Where it appears, relative to the workspace; created (with its parents) if missing, and
    /// hiding whatever the workspace had there.
    pub target: String,
}

/// What to copy out of the workspace once every process of the sandbox is dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Workspace-relative files and directories (copied whole); a missing one is skipped.
    pub paths: Vec<String>,
    /// File and directory names left out wherever they are met: a name, `*suffix` or
    /// `prefix*` (a build's scratch: caches, fingerprints, intermediate objects).
    pub exclude: Vec<String>,
    /// The host directory they are copied into, at the same relative paths; it must exist.
    pub into: PathBuf,
    /// The most bytes copied in all; a larger export fails.
    pub max_bytes: u64,
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall clock for the whole sandbox.
    pub timeout: Duration,
    /// CPU time for the whole sandbox (cgroup accounting, polled).
    pub cpu_time: Option<Duration>,
    /// Memory (cgroup) limit.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
    /// Size of the workspace tmpfs (and of the private `/tmp` and `/dev/shm`).
    pub workspace_bytes: u64,
    /// Inodes (files, directories, links) of the workspace tmpfs, and of `/tmp` and
    /// `/dev/shm` each: a cap of its own, besides the memory cgroup that their inodes are
    /// charged to.
    pub workspace_inodes: u64,
    /// `RLIMIT_FSIZE`.
    pub file_size_bytes: u64,
    /// Bytes of stdout kept; the rest is drained and dropped.
    pub stdout_bytes: usize,
    /// Bytes of stderr kept; the rest is drained and dropped.
    pub stderr_bytes: usize,
    /// Time between SIGTERM and SIGKILL when the sandbox is stopped.
    pub kill_grace: Duration,
    /// Cap per collected file.
    pub collect_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(60),
            cpu_time: None,
            memory_bytes: 1 << 30,
            pids: 256,
            workspace_bytes: 1 << 30,
            workspace_inodes: 1 << 20,
            file_size_bytes: 512 << 20,
            stdout_bytes: 1 << 20,
            stderr_bytes: 1 << 20,
            kill_grace: Duration::from_secs(1),
            collect_bytes: 16 << 20,
        }
    }
}
