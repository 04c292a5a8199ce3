//! The sandbox's first process between clone and exec: everything it needs is prepared
//! beforehand in a [`ChildPlan`], and [`child_main`] only makes raw, async-signal-safe system
//! calls. It is cloned with `CLONE_VM`: until it execs it shares the worker's memory (no copy
//! of the worker's page tables, no copy-on-write faults on either side), runs on a stack of
//! its own, writes nothing but that stack, and may never take a lock another thread could hold.
//! It then execs either the init script's `/bin/sh` or the freestanding `isotest-init`
//! (`init/isotest-init.c`), so no process of a sandbox ever holds an image of the worker.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::sys;

/// One filesystem step of building the fresh root, run in order in the child.
#[derive(Debug)]
pub(crate) enum Op {
    /// `mount(2)`.
    Mount {
        src: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mkdir(2)`.
    Mkdir { path: CString, mode: libc::mode_t },
    /// `mkdir(2)`, content with a directory that is already there.
    MkdirAll { path: CString, mode: libc::mode_t },
    /// `symlink(2)`.
    Symlink { target: CString, path: CString },
    /// Creates an empty file to bind a device node over.
    Touch { path: CString },
    /// `mount_setattr(2)` setting attributes, optionally on the whole subtree.
    SetAttr {
        path: CString,
        set: u64,
        recursive: bool,
    },
    /// Attaches a detached mount (the workspace) at `target`.
    MoveMount { fd: RawFd, target: CString },
    /// `chdir(2)`.
    Chdir { path: CString },
    /// `pivot_root(".", ".")` then detaching the old root stacked beneath.
    PivotRoot,
}

impl Op {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mount { target, .. } => format!("mount on {}", s(target)),
            Op::Mkdir { path, .. } | Op::MkdirAll { path, .. } => format!("mkdir {}", s(path)),
            Op::Symlink { path, .. } => format!("symlink {}", s(path)),
            Op::Touch { path } => format!("create {}", s(path)),
            Op::SetAttr { path, .. } => format!("mount_setattr {}", s(path)),
            Op::MoveMount { target, .. } => format!("move_mount to {}", s(target)),
            Op::Chdir { path } => format!("chdir {}", s(path)),
            Op::PivotRoot => "pivot_root".to_owned(),
        }
    }
}

/// Fixed steps of the child, reported as `STEP_BASE + index` so the host can name them.
pub(crate) const STEP_BASE: u32 = 1 << 20;
pub(crate) const FIXED_STEPS: &[&str] = &[
    "wait for go",
    "setresgid",
    "setgroups",
    "setresuid",
    "set parent-death signal",
    "parent gone",
    "setsid",
    "sethostname",
    "bring loopback up",
    "setrlimit",
    "chdir to workspace",
    "arrange fds",
    "set no_new_privs",
    "drop capability bounding set",
    "drop capabilities",
    "install seccomp filter",
    "exec",
    "make mounts private",
    "unshare cgroup namespace",
];

const S_WAIT: u32 = 0;
const S_SETRESGID: u32 = 1;
const S_SETGROUPS: u32 = 2;
const S_SETRESUID: u32 = 3;
const S_PDEATHSIG: u32 = 4;
const S_PARENT_GONE: u32 = 5;
const S_SETSID: u32 = 6;
const S_HOSTNAME: u32 = 7;
const S_LOOPBACK: u32 = 8;
const S_RLIMIT: u32 = 9;
const S_WORKDIR: u32 = 10;
const S_FDS: u32 = 11;
const S_NNP: u32 = 12;
const S_BOUNDING: u32 = 13;
const S_CAPS: u32 = 14;
const S_SECCOMP: u32 = 15;
const S_EXEC: u32 = 16;
/// The code the child reports when its exec failed.
pub(crate) const EXEC_STEP: u32 = STEP_BASE + S_EXEC;
const S_PRIVATE: u32 = 17;
const S_CGROUPNS: u32 = 18;

/// Names a step code reported by the child.
pub(crate) fn step_name(plan: &ChildPlan, step: u32) -> String {
    if step >= STEP_BASE {
        FIXED_STEPS
            .get((step - STEP_BASE) as usize)
            .map_or_else(|| format!("step {step}"), |s| (*s).to_owned())
    } else {
        plan.ops
            .get(step as usize)
            .map_or_else(|| format!("op {step}"), Op::describe)
    }
}

/// The fds the child arranges as 0..=3 (plus the error pipe kept close-on-exec).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Becomes fd 3 of the init, where it writes stage reports.
    pub report: RawFd,
    /// Write end of the error pipe: closed by a successful exec, or carries `(step, errno)`.
    pub error: RawFd,
    /// Read end of the go pipe: the host writes one byte once the id maps and cgroup are set.
    pub go: RawFd,
    /// The host's write end of the go pipe, closed first thing so that only the host holds it.
    pub go_write: RawFd,
}

/// Everything the child needs, built on the host before cloning.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    pub ops: Vec<Op>,
    pub fds: ChildFds,
    /// Make every inherited mount private first (not needed when cloned from the launcher's
    /// already-private mount namespace).
    pub make_private: bool,
    /// Whether `setgroups(0, NULL)` is allowed (not when the host wrote "deny").
    pub set_groups: bool,
    /// Bring `lo` up (the sandbox has its own network namespace).
    pub loopback_up: bool,
    /// Each resource with its soft and hard limit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub cap_last: u32,
    pub workdir: CString,
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// The sealed memfd of `isotest-init`: when set, the child execs it (by fd) with `argv`
    /// instead of `program`.
    pub init: Option<RawFd>,
    /// Capabilities (a bit each) kept through exec, in the sandbox's own user namespace:
    /// none for a test, a fork server's few for a zygote.
    pub keep_caps: u64,
    /// A socket placed at [`CONTROL_FD`] for the command (with `init` only).
    pub control: Option<RawFd>,
    /// The seccomp programs to install instead of the launcher's own (a zygote's).
    pub filters: Option<Arc<Vec<crate::seccomp::BpfProgram>>>,
}

/// Raw pointers into a [`ChildPlan`] and the seccomp programs, built by the launcher thread
/// just before clone so the child never allocates.
#[derive(Debug)]
pub(crate) struct ExecPtrs {
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    pub filters: Vec<libc::sock_fprog>,
}

impl ExecPtrs {
    pub fn new(plan: &ChildPlan, filters: &[crate::seccomp::BpfProgram]) -> ExecPtrs {
        let nul_terminated = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecPtrs {
            argv: nul_terminated(&plan.argv),
            envp: nul_terminated(&plan.envp),
            filters: filters
                .iter()
                .map(|p| libc::sock_fprog {
                    len: p.len() as u16,
                    filter: p.as_ptr() as *mut libc::sock_filter,
                })
                .collect(),
        }
    }
}

/// Reports a failed step on the error pipe and exits.
fn fail(fds: &ChildFds, step: u32) -> ! {
    // SAFETY: errno location is thread-local and always valid.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; msg is valid for 8 bytes.
    unsafe {
        libc::write(fds.error, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Runs one filesystem op; returns false (with errno set) on failure.
///
/// # Safety
/// Only async-signal-safe system calls; the CStrings are valid.
pub(crate) unsafe fn run_op(op: &Op) -> bool {
    // SAFETY: each call gets valid C strings or null where the syscall allows it.
    unsafe {
        match op {
            Op::Mount {
                src,
                target,
                fstype,
                flags,
                data,
            } => {
                libc::mount(
                    opt_ptr(src),
                    target.as_ptr(),
                    opt_ptr(fstype),
                    *flags,
                    opt_ptr(data).cast(),
                ) == 0
            }
            Op::Mkdir { path, mode } => libc::mkdir(path.as_ptr(), *mode) == 0,
            Op::MkdirAll { path, mode } => {
                libc::mkdir(path.as_ptr(), *mode) == 0 || *libc::__errno_location() == libc::EEXIST
            }
            Op::Symlink { target, path } => libc::symlink(target.as_ptr(), path.as_ptr()) == 0,
            Op::Touch { path } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                fd >= 0 && libc::close(fd) == 0
            }
            Op::SetAttr {
                path,
                set,
                recursive,
            } => {
                let attr = sys::MountAttr {
                    attr_set: *set,
                    ..sys::MountAttr::default()
                };
                let flags = if *recursive { sys::AT_RECURSIVE } else { 0 };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    flags,
                    &attr as *const sys::MountAttr,
                    std::mem::size_of::<sys::MountAttr>(),
                ) == 0
            }
            Op::MoveMount { fd, target } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    *fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    sys::MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0
            }
            Op::Chdir { path } => libc::chdir(path.as_ptr()) == 0,
            Op::PivotRoot => {
                // pivot_root(".", ".") stacks the old root under the new one; detaching "."
                // afterwards removes it without needing a directory for it.
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0
                    && libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0
                    && libc::chdir(c"/".as_ptr()) == 0
            }
        }
    }
}

/// Where the child keeps the init program's memfd (close-on-exec) until it execs it.
const INIT_FD: RawFd = 5;
/// Where a command finds its control socket (`ChildPlan::control`): `isotest-init` closes only
/// fds 3 and 4 before it starts the command.
pub(crate) const CONTROL_FD: RawFd = 6;

/// Moves the needed fds to 0..=4 (and the init program to [`INIT_FD`]) and closes everything
/// else.
///
/// # Safety
/// Only async-signal-safe system calls.
unsafe fn arrange_fds(fds: &ChildFds, init: Option<RawFd>, control: Option<RawFd>) -> bool {
    let sources = [
        fds.stdin,
        fds.stdout,
        fds.stderr,
        fds.report,
        fds.error,
        init.unwrap_or(-1),
        control.unwrap_or(-1),
    ];
    // A control socket goes after the init program, which it needs.
    let count = match (init, control) {
        (Some(_), Some(_)) => 7,
        (Some(_), None) => 6,
        (None, _) => 5,
    };
    let mut copies = [0 as RawFd; 7];
    // SAFETY: fcntl/dup3/close_range on fds we own; copies land at >= 7 so no target is
    // clobbered before its source was copied.
    unsafe {
        for (copy, &src) in copies.iter_mut().zip(&sources).take(count) {
            *copy = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 7);
            if *copy < 0 {
                return false;
            }
        }
        for (target, &copy) in copies.iter().enumerate().take(count) {
            // The error pipe (fd 4) stays close-on-exec so a successful exec closes it, and
            // so does the init program; the control socket passes on to the command.
            let flags = if (4..CONTROL_FD as usize).contains(&target) {
                libc::O_CLOEXEC
            } else {
                0
            };
            if libc::dup3(copy, target as RawFd, flags) < 0 {
                return false;
            }
        }
        libc::syscall(libc::SYS_close_range, count as u32, u32::MAX, 0u32) == 0
    }
}

/// The child after clone: waits for the host, becomes root of its user namespace, builds the
/// fresh root, drops every privilege and execs the init. `network_ready`: it was cloned into a
/// pooled network namespace whose loopback is already up (and which it may not configure).
///
/// # Safety
/// Must run only in the freshly cloned child, on its own stack, with every signal blocked;
/// `plan` and `ptrs` must stay alive and unchanged until it has exec'd or exited. It uses only
/// async-signal-safe system calls, writes only its own stack, and never returns. (`errno`
/// lives in the launcher thread's TLS, which it shares: a failure's errno could in theory be
/// overwritten by that thread before it is read, which would only garble the message.)
pub(crate) unsafe fn child_main(plan: &ChildPlan, ptrs: &ExecPtrs, network_ready: bool) -> ! {
    let fds = &plan.fds;
    let step = |s: u32| STEP_BASE + s;
    // SAFETY: the block only makes async-signal-safe system calls with valid arguments.
    unsafe {
        libc::close(fds.go_write);
        let mut byte = 0u8;
        if libc::read(fds.go, (&mut byte as *mut u8).cast(), 1) != 1 {
            fail(fds, step(S_WAIT));
        }
        // Only now, once the host has put this process into the sandbox's cgroup (on v2 it is
        // cloned in the worker's own and moved), does a new cgroup namespace have that cgroup
        // as its root.
        if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP) != 0 {
            fail(fds, step(S_CGROUPNS));
        }
        // Raw syscalls, not glibc's wrappers: those broadcast the change to every thread glibc
        // believes exists (this copy has none of them) under a lock that another thread of
        // the worker may have held at clone time, which would hang the child forever.
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0 {
            fail(fds, step(S_SETRESGID));
        }
        if plan.set_groups
            && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
        {
            fail(fds, step(S_SETGROUPS));
        }
        if libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0 {
            fail(fds, step(S_SETRESUID));
        }
        // After the uid change: changing credentials clears the parent-death signal.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(fds, step(S_PDEATHSIG));
        }
        // If the host died before the line above, the go pipe's write end is closed.
        let mut pfd = libc::pollfd {
            fd: fds.go,
            events: 0,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 0) != 0 && pfd.revents & libc::POLLHUP != 0 {
            fail(fds, step(S_PARENT_GONE));
        }
        // A new session has no controlling terminal, so /dev/tty cannot reach the host's.
        if libc::setsid() < 0 {
            fail(fds, step(S_SETSID));
        }
        if libc::sethostname(c"sandbox".as_ptr(), 7) != 0 {
            fail(fds, step(S_HOSTNAME));
        }
        if plan.loopback_up && !network_ready && !loopback_up() {
            fail(fds, step(S_LOOPBACK));
        }
        // Nothing done in here may propagate back to the host's mounts.
        if plan.make_private
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
        {
            fail(fds, step(S_PRIVATE));
        }
        for (index, op) in plan.ops.iter().enumerate() {
            if !run_op(op) {
                fail(fds, index as u32);
            }
        }
        for &(resource, soft, hard) in &plan.rlimits {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                fail(fds, step(S_RLIMIT));
            }
        }
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            fail(fds, step(S_WORKDIR));
        }
        if !arrange_fds(fds, plan.init, plan.control) {
            fail(fds, step(S_FDS));
        }
        // From here the error pipe is fd 4.
        let fds = &ChildFds { error: 4, ..*fds };
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(fds, step(S_NNP));
        }
        for cap in 0..=plan.cap_last {
            if plan.keep_caps & (1 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                fail(fds, step(S_BOUNDING));
            }
        }
        let header = sys::CapHeader {
            version: sys::LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // What is kept stays permitted: with no_new_privs, exec grants root no capability
        // it did not already have.
        let mut data = [sys::CapData::default(); 2];
        for (half, word) in data.iter_mut().enumerate() {
            let bits = (plan.keep_caps >> (32 * half)) as u32;
            word.effective = bits;
            word.permitted = bits;
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
            || libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0
        {
            fail(fds, step(S_CAPS));
        }
        // Start every program with default signal handling and nothing blocked: the worker's
        // handlers mean nothing here, and Rust programs ignore SIGPIPE, which exec keeps.
        // The raw call: glibc refuses to touch the signals it reserves for itself (32, 33),
        // which the worker may have set to be ignored.
        let default = sys::KernelSigaction::default();
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    &default as *const sys::KernelSigaction,
                    std::ptr::null_mut::<sys::KernelSigaction>(),
                    8usize,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for filter in &ptrs.filters {
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                filter as *const libc::sock_fprog,
                0,
                0,
            ) != 0
            {
                fail(fds, step(S_SECCOMP));
            }
        }
        if plan.init.is_some() {
            libc::syscall(
                libc::SYS_execveat,
                INIT_FD,
                c"".as_ptr(),
                ptrs.argv.as_ptr(),
                ptrs.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        } else {
            libc::execve(
                plan.program.as_ptr(),
                ptrs.argv.as_ptr(),
                ptrs.envp.as_ptr(),
            );
        }
        fail(fds, step(S_EXEC))
    }
}

/// Sets `lo` up in the sandbox's fresh network namespace.
///
/// # Safety
/// Only async-signal-safe system calls.
pub(crate) unsafe fn loopback_up() -> bool {
    // SAFETY: socket/ioctl/close with a valid, stack-allocated ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let ok = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0;
        libc::close(sock);
        ok
    }
}
