//! A small cgroup v1/v2 layer: one cgroup per sandbox holding its memory and pids limits, its
//! CPU and peak-memory accounting, its OOM-kill count, and a way to signal every process in it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::isolation::CgroupVersion;

mod probe;

use probe::{is_cgroup2, probe_v1, probe_v2};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be used.
    #[error("{what} {path:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { what, path, source }
}

/// The parent cgroups (one per v1 controller, or one v2 directory) under which each sandbox
/// gets its own child; created at start and removed when dropped.
#[derive(Debug)]
pub(crate) struct CgroupParent {
    version: CgroupVersion,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// v1: the `tasks` files of this process's own cgroups, which the launcher thread writes
    /// "0" to after cloning to move itself back.
    home: Vec<File>,
}

/// What probing found: the parent, if any, and every missing controller in words.
#[derive(Debug)]
pub(crate) struct CgroupProbe {
    pub parent: Option<CgroupParent>,
    pub missing: Vec<String>,
}

impl CgroupParent {
    /// v1 only: the `tasks` files of this process's own cgroups, to move the launcher thread
    /// back after a clone.
    pub fn home_tasks(&self) -> &[File] {
        &self.home
    }

    /// Finds the hierarchy, creates `<own cgroup>/<name>` in each usable controller and enables
    /// what is needed; never fails, only reports what is missing.
    pub fn probe(name: &str) -> CgroupProbe {
        let mut missing = Vec::new();
        let self_cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let parent = if is_cgroup2(Path::new(CGROUP_ROOT)) {
            probe_v2(&self_cgroups, name, &mut missing)
        } else {
            probe_v1(&self_cgroups, name, &mut missing)
        };
        CgroupProbe { parent, missing }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    pub fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    pub fn has_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// Creates the cgroup of one sandbox with its limits.
    ///
    /// # Errors
    /// Fails when a directory cannot be created or a limit cannot be written.
    pub fn create(
        &self,
        name: &str,
        memory_bytes: u64,
        pids: u64,
    ) -> Result<SandboxCgroup, CgroupError> {
        let mut cg = SandboxCgroup {
            version: self.version,
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
            pids: None,
            cpu: None,
            tasks: Vec::new(),
            oom_base: 0,
            cpu_base: Duration::ZERO,
            limits: (memory_bytes, pids),
        };
        // Each distinct directory once: on v2 all controllers share one.
        let mut seen: Vec<PathBuf> = Vec::new();
        for parent in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let dir = parent.join(name);
            if seen.contains(&dir) {
                continue;
            }
            match fs::DirBuilder::new().mode(0o755).create(&dir) {
                Ok(()) => {}
                // A leftover of a crashed earlier run with the same name: reuse it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create cgroup", &dir)(e)),
            }
            seen.push(dir.clone());
            cg.dirs.push(dir.clone());
        }
        if let Some(parent) = &self.memory {
            let dir = parent.join(name);
            match self.version {
                CgroupVersion::V1 => {
                    write_file(&dir.join("memory.limit_in_bytes"), memory_bytes)?;
                    // Swap accounting may be off; without it there is no swap to limit.
                    let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), memory_bytes);
                    write_file(&dir.join("memory.max_usage_in_bytes"), 0)?;
                }
                CgroupVersion::V2 => {
                    write_file(&dir.join("memory.max"), memory_bytes)?;
                    let _ = write_file(&dir.join("memory.swap.max"), 0);
                }
            }
            cg.memory = Some(dir);
        }
        if let Some(parent) = &self.pids {
            let dir = parent.join(name);
            write_file(&dir.join("pids.max"), pids)?;
            cg.pids = Some(dir);
        }
        if let Some(parent) = &self.cpu {
            let dir = parent.join(name);
            if self.version == CgroupVersion::V1 {
                // A leftover with this name may have counted CPU time already.
                let _ = write_file(&dir.join("cpuacct.usage"), 0);
            }
            cg.cpu = Some(dir);
        }
        cg.oom_base = cg.oom_count();
        for dir in &cg.dirs {
            let path = dir.join("cgroup.procs");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            cg.procs.push(file);
            if self.version == CgroupVersion::V1 {
                let path = dir.join("tasks");
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                cg.tasks.push(file);
            }
        }
        Ok(cg)
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let mut dirs = vec![&self.memory, &self.pids, &self.cpu];
        dirs.dedup();
        for dir in dirs.into_iter().flatten() {
            // The per-slot cgroups kept for reuse first (all empty once every run ended).
            if let Ok(children) = fs::read_dir(dir) {
                for child in children.flatten() {
                    if child.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(child.path());
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The cgroup of one sandbox; removed by [`SandboxCgroup::destroy`] once it is empty.
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    /// Pre-opened `cgroup.procs` of each directory, so adding the child is one write each.
    procs: Vec<File>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// v1: pre-opened `tasks` files; see [`CgroupParent::home_tasks`].
    tasks: Vec<File>,
    /// OOM kills counted before this run (a reused cgroup keeps its count).
    oom_base: u64,
    /// CPU time counted before the test started (v2: the workspace's unpacking).
    cpu_base: Duration,
    /// The limits last written, so a reused cgroup is written only what changed.
    limits: (u64, u64),
}

impl SandboxCgroup {
    /// v1 only: the `tasks` files the launcher thread writes "0" to, moving itself (and so the
    /// child it clones next) into this cgroup. Moving the calling thread alone skips the global
    /// threadgroup lock whose RCU grace period makes `cgroup.procs` writes take milliseconds.
    pub fn thread_entry(&self) -> &[File] {
        &self.tasks
    }

    /// The pre-opened `cgroup.procs` of every directory: writing a pid to each moves that
    /// process into this cgroup (the launcher does it right after cloning, where the thread
    /// cannot move itself: v2, or v1 without a way back).
    pub fn procs_files(&self) -> &[File] {
        &self.procs
    }

    /// The file a single-threaded process writes "0" to, to be charged for memory here: v1
    /// the memory hierarchy's `tasks` (moving one thread takes no threadgroup lock, and the
    /// other hierarchies, CPU time among them, are left alone), v2 `cgroup.procs`.
    pub fn memory_entry(&self) -> Option<&File> {
        let memory = self.memory.as_ref()?;
        let index = self.dirs.iter().position(|d| d == memory)?;
        match self.version {
            CgroupVersion::V1 => self.tasks.get(index),
            CgroupVersion::V2 => self.procs.get(index),
        }
    }

    /// Counts CPU time from now on only (after the workspace was unpacked here).
    pub fn rebase_cpu(&mut self) {
        self.cpu_base = self.cpu_total().unwrap_or_default();
    }

    /// CPU time used by the cgroup since it was reset or rebased.
    pub fn cpu_usage(&self) -> Option<Duration> {
        Some(self.cpu_total()?.saturating_sub(self.cpu_base))
    }

    fn cpu_total(&self) -> Option<Duration> {
        let dir = self.cpu.as_ref()?;
        match self.version {
            CgroupVersion::V1 => read_u64(&dir.join("cpuacct.usage")).map(Duration::from_nanos),
            CgroupVersion::V2 => {
                let stat = fs::read_to_string(dir.join("cpu.stat")).ok()?;
                keyed_value(&stat, "usage_usec").map(Duration::from_micros)
            }
        }
    }

    /// Peak memory charged to the cgroup.
    pub fn peak_memory(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        match self.version {
            CgroupVersion::V1 => read_u64(&dir.join("memory.max_usage_in_bytes")),
            CgroupVersion::V2 => read_u64(&dir.join("memory.peak")),
        }
    }

    /// How many processes the kernel OOM-killed in this cgroup during this run.
    pub fn oom_kills(&self) -> u64 {
        self.oom_count().saturating_sub(self.oom_base)
    }

    fn oom_count(&self) -> u64 {
        let Some(dir) = self.memory.as_ref() else {
            return 0;
        };
        let (file, key) = match self.version {
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| keyed_value(&text, key))
            .unwrap_or(0)
    }

    /// Whether this cgroup can serve another run: v1 only, where the peak-memory and CPU
    /// counters can be reset (v2's `memory.peak` cannot be reset for good before 6.12, so v2
    /// cgroups are created per run).
    pub fn reusable(&self) -> bool {
        self.version == CgroupVersion::V1
    }

    /// Makes a kept cgroup ready for the next run: waits until it is empty, resets its peak memory and CPU counters, rebases its OOM count and writes the
    /// limits that changed.
    ///
    /// # Errors
    /// Fails when it stays busy or a counter or limit cannot be written; the caller then
    /// destroys it and creates a fresh one.
    pub fn reset(&mut self, memory_bytes: u64, pids: u64) -> Result<(), CgroupError> {
        self.wait_empty()?;
        if let Some(dir) = &self.memory {
            if self.limits.0 != memory_bytes {
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), memory_bytes);
                write_file(&dir.join("memory.limit_in_bytes"), memory_bytes)?;
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), memory_bytes);
            }
            write_file(&dir.join("memory.max_usage_in_bytes"), 0)?;
        }
        if let Some(dir) = &self.pids
            && self.limits.1 != pids
        {
            write_file(&dir.join("pids.max"), pids)?;
        }
        if let Some(dir) = &self.cpu {
            write_file(&dir.join("cpuacct.usage"), 0)?;
        }
        self.limits = (memory_bytes, pids);
        self.oom_base = self.oom_count();
        self.cpu_base = Duration::ZERO;
        Ok(())
    }

    /// Waits (5 s at most) until the cgroup is empty, killing what is left where that is safe
    /// (see [`kill_all`]); exiting tasks may still be listed for a moment after the pid
    /// namespace's init was reaped.
    fn wait_empty(&self) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            loop {
                let pids = read_procs(dir);
                if pids.is_empty() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(io_err("empty cgroup", dir)(io::Error::from_raw_os_error(
                        libc::EBUSY,
                    )));
                }
                kill_all(self.version, dir);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Kills whatever is left and removes the cgroup directories.
    ///
    /// # Errors
    /// Fails when a directory stays busy after processes were killed.
    pub fn destroy(self) -> Result<(), CgroupError> {
        drop(self.procs);
        for dir in &self.dirs {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Exiting tasks may still be listed for a moment after the pid namespace's
                    // init was reaped; kill stragglers and retry until the deadline.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        if std::time::Instant::now() > deadline {
                            return Err(io_err("remove cgroup", dir)(e));
                        }
                        kill_all(self.version, dir);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(io_err("remove cgroup", dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// SIGKILLs every process in `dir` on v2, through `cgroup.kill` (Linux 5.14), which also catches
/// processes forked meanwhile. On v1 nothing is killed: pids read from `cgroup.procs` may be
/// reused by host processes before a kill lands, and the worker itself is listed while its
/// launcher thread sits in the cgroup to clone. Nothing needs it either: every process of a
/// sandbox is in its pid namespace, which dies with its init (reaped before a cgroup is reset
/// or removed), and what is still listed then is only exiting.
fn kill_all(version: CgroupVersion, dir: &Path) {
    if version == CgroupVersion::V2 {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
}

fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn write_file(path: &Path, value: u64) -> Result<(), CgroupError> {
    fs::write(path, value.to_string()).map_err(io_err("write", path))
}

fn read_u64(path: &Path) -> Option<u64> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::probe::{own_below_mount, own_path};
    use super::*;

    #[test]
    fn finds_own_path_per_controller() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/unified\n";
        assert_eq!(own_path(text, "memory"), Some("/a/b"));
        assert_eq!(own_path(text, "cpuacct"), Some("/c"));
        assert_eq!(own_path(text, ""), Some("/unified"));
        assert_eq!(own_path(text, "pids"), None);
    }

    #[test]
    fn takes_a_containers_mount_root_off_its_own_path() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
             31 25 0:27 /libpod_parent/libpod-1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cases = [
            // A container: the runtime mounted the container's own subtree.
            ("/libpod_parent/libpod-1", "/sys/fs/cgroup/memory", ""),
            ("/libpod_parent/libpod-1/x", "/sys/fs/cgroup/memory", "/x"),
            // A sibling that merely shares a prefix is not below the root.
            (
                "/libpod_parent/libpod-10",
                "/sys/fs/cgroup/memory",
                "/libpod_parent/libpod-10",
            ),
            // The host: the hierarchy's root is mounted.
            ("/user.slice/a", "/sys/fs/cgroup/pids", "/user.slice/a"),
            ("/a", "/sys/fs/cgroup/cpuacct", "/a"),
        ];
        for (own, mount, expected) in cases {
            assert_eq!(
                own_below_mount(own, mountinfo, Path::new(mount)),
                expected,
                "{own} in {mount}"
            );
        }
    }

    #[test]
    fn parses_keyed_files() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "missing"), None);
    }
}
