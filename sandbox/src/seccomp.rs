//! The seccomp filter every sandboxed process runs under: an allow list, compiled here once
//! into one classic BPF program and installed by the sandbox's first process just before exec.
//!
//! What a process may call is a [`Profile`]: a [`Rule`] per system call, and for every other
//! number EPERM (a call this profile knows of and refuses) or ENOSYS (a number above every
//! call it knows of, [`KNOWN_UP_TO`]: a call added by a newer kernel is refused until it is
//! decided here, and ENOSYS makes libc fall back to an older call, as on an older kernel).
//! Today there is one profile, [`Profile::strict`], the one tests run under; a process that
//! forks tests into fresh namespaces needs a few more calls, which [`Profile::with`] adds.
//!
//! Every installed filter costs start-up time: the kernel converts it to eBPF, JITs it and,
//! for its per-syscall allow cache, runs it once for every syscall number. Hence one program,
//! not one per action, and a binary search over ranges of syscall numbers with the same action
//! rather than a list of compares: calls with neighbouring numbers mostly share their fate, so
//! 76 ranges cover the x86-64 table, and a number takes at most 11 instructions (15 where an
//! argument is checked). The compares jump straight to one shared copy of each action, which
//! keeps the program at about 100 instructions: installing it takes about 2 µs more than the
//! old deny list of 85 did (p10 of `install_cost`: 38.6 µs against 36.7 µs on a 2-core VM).
//! The program, top to bottom (every jump goes forward):
//! 1. a foreign syscall ABI (`arch` is not the native one, e.g. i386 via `int 0x80` on x86-64)
//!    kills the process: its syscall numbers mean other calls;
//! 2. the search, which ends in the action of the number's range: allow, an errno, or a check
//!    of one argument (clone's flags, ioctl's request, socket's family, personality's value).
//!
//! On x86-64 an x32 syscall number (bit 30 set) falls above [`KNOWN_UP_TO`] and gets ENOSYS:
//! x32 calls report the native `AUDIT_ARCH_X86_64`, so they must never match a native rule.

use std::collections::BTreeMap;
use std::mem::offset_of;
use std::sync::OnceLock;

use libc::sock_filter;

/// A classic BPF program, as `PR_SET_SECCOMP` takes it (through a `sock_fprog`).
pub type BpfProgram = Vec<sock_filter>;

/// Why the filter could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SeccompError {
    /// No syscall ABI is known for this CPU architecture.
    #[error("target architecture {0}")]
    Arch(&'static str),
}

/// System call numbers the `libc` crate does not name (yet) on every architecture. From 424 on,
/// every architecture numbers new calls alike.
mod nr {
    pub const CACHESTAT: i64 = 451;
    pub const FCHMODAT2: i64 = 452;
    pub const MAP_SHADOW_STACK: i64 = 453;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
    pub const FUTEX_REQUEUE: i64 = 456;
    pub const STATMOUNT: i64 = 457;
    pub const LISTMOUNT: i64 = 458;
    pub const LSM_GET_SELF_ATTR: i64 = 459;
    pub const LSM_SET_SELF_ATTR: i64 = 460;
    pub const LSM_LIST_MODULES: i64 = 461;
    pub const MSEAL: i64 = 462;
    pub const SETXATTRAT: i64 = 463;
    pub const GETXATTRAT: i64 = 464;
    pub const LISTXATTRAT: i64 = 465;
    pub const REMOVEXATTRAT: i64 = 466;
    pub const OPEN_TREE_ATTR: i64 = 467;
    pub const FILE_GETATTR: i64 = 468;
    pub const FILE_SETATTR: i64 = 469;
    // Calls the crate names on x86-64 but not on every other architecture.
    #[cfg(target_arch = "x86_64")]
    pub use libc::{
        SYS_getrlimit as GETRLIMIT, SYS_kexec_file_load as KEXEC_FILE_LOAD,
        SYS_setrlimit as SETRLIMIT, SYS_sync_file_range as SYNC_FILE_RANGE,
    };
    #[cfg(target_arch = "x86_64")]
    pub const IO_PGETEVENTS: i64 = 333;
    #[cfg(not(target_arch = "x86_64"))]
    pub const SYNC_FILE_RANGE: i64 = 84;
    #[cfg(not(target_arch = "x86_64"))]
    pub const GETRLIMIT: i64 = 163;
    #[cfg(not(target_arch = "x86_64"))]
    pub const SETRLIMIT: i64 = 164;
    #[cfg(not(target_arch = "x86_64"))]
    pub const IO_PGETEVENTS: i64 = 292;
    #[cfg(not(target_arch = "x86_64"))]
    pub const KEXEC_FILE_LOAD: i64 = 294;
    /// x86-64 only: called by the kernel's return-probe trampoline (Linux 6.11).
    #[cfg(target_arch = "x86_64")]
    pub const URETPROBE: i64 = 335;
    /// x86-64 only: called by the kernel's probe trampoline (Linux 6.16).
    #[cfg(target_arch = "x86_64")]
    pub const UPROBE: i64 = 336;
}

/// The highest system call number decided here (`file_setattr`, Linux 6.17). Numbers above it
/// get ENOSYS until someone looks at what the new calls do and lists them.
pub(crate) const KNOWN_UP_TO: u32 = 469;

/// Calls allowed whatever their arguments, on every architecture: files and descriptors,
/// memory, processes and threads in the sandbox's own pid namespace, signals, clocks and
/// timers, sockets once made, System V and POSIX IPC (the sandbox has its own IPC namespace),
/// Linux AIO, Landlock and seccomp (which only restrict the caller). Mostly Docker's default
/// list, without what it grants only with capabilities a sandbox never has, and without
/// `name_to_handle_at`, `listmount`, `statmount`, `fanotify_mark` and `kcmp`, which read or
/// compare what lies beyond the sandbox.
const ALLOWED: &[i64] = &[
    // Files and descriptors.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_lseek,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_syncfs,
    nr::SYNC_FILE_RANGE,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fadvise64,
    libc::SYS_readahead,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_mkdirat,
    // Devices need CAP_MKNOD, which no sandbox has; FIFOs and sockets are fine.
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    nr::FCHMODAT2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_utimensat,
    libc::SYS_umask,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    nr::SETXATTRAT,
    nr::GETXATTRAT,
    nr::LISTXATTRAT,
    nr::REMOVEXATTRAT,
    // The FS_IOC_FS[GS]ETXATTR ioctls by path.
    nr::FILE_GETATTR,
    nr::FILE_SETATTR,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_vmsplice,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    // Memory: all of it charged to the sandbox's memory cgroup.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_memfd_secret,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_remap_file_pages,
    nr::MAP_SHADOW_STACK,
    nr::MSEAL,
    nr::CACHESTAT,
    // The caller's own NUMA policy (a JVM asks with UseNUMA); moving other processes' pages
    // (migrate_pages, move_pages) is not allowed.
    libc::SYS_get_mempolicy,
    libc::SYS_set_mempolicy,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy_home_node,
    // Processes and threads, within the sandbox's pid and user namespaces.
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_getpgid,
    libc::SYS_setpgid,
    libc::SYS_getsid,
    libc::SYS_setsid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    // Only root inside is mapped and no capability is left, so these can only drop ids.
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_prctl,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    nr::GETRLIMIT,
    nr::SETRLIMIT,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_times,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getrandom,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    nr::FUTEX_WAKE,
    nr::FUTEX_WAIT,
    nr::FUTEX_REQUEUE,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getattr,
    // Real-time policies need RLIMIT_RTPRIO, which the sandbox sets to 0.
    libc::SYS_sched_setattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_getcpu,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_process_mrelease,
    libc::SYS_seccomp,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    // Signals.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sigaltstack,
    // Clocks and timers; setting a clock needs CAP_SYS_TIME, reading adjtimex's state does not.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getitimer,
    libc::SYS_setitimer,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    // Sockets once made (socket and socketpair check the family).
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    // System V and POSIX IPC, in the sandbox's own IPC namespace.
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmdt,
    libc::SYS_shmctl,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    // Linux AIO (io_uring is refused).
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
    libc::SYS_io_getevents,
    nr::IO_PGETEVENTS,
];

/// The x86-64 calls that newer architectures replaced with the `*at` and `p*` ones above.
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[i64] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_access,
    libc::SYS_pipe,
    libc::SYS_select,
    libc::SYS_dup2,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_getdents,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_link,
    libc::SYS_unlink,
    libc::SYS_symlink,
    libc::SYS_readlink,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_lchown,
    libc::SYS_mknod,
    libc::SYS_time,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_futimesat,
    libc::SYS_inotify_init,
    libc::SYS_epoll_create,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd,
    libc::SYS_signalfd,
    libc::SYS_alarm,
    libc::SYS_pause,
    libc::SYS_getpgrp,
    libc::SYS_arch_prctl,
    libc::SYS_set_thread_area,
    libc::SYS_get_thread_area,
    // Only the kernel's probe trampolines make these; anyone else gets SIGILL.
    nr::URETPROBE,
    nr::UPROBE,
];

/// renameat, which RISC-V never had (renameat2 replaced it).
#[cfg(target_arch = "aarch64")]
const ALLOWED_ARCH: &[i64] = &[38];

/// RISC-V's own: flushing the caller's instruction cache (JITs) and probing CPU features.
#[cfg(target_arch = "riscv64")]
const ALLOWED_ARCH: &[i64] = &[259, 258];

/// Calls refused with EPERM on purpose. Every call not allowed is refused anyway; these are
/// listed to say that they were looked at, and tests check each: mounting and namespaces,
/// other processes' memory and descriptors, kernel interfaces with a history of exploits
/// (bpf, perf, userfaultfd, io_uring, keys), what reads or changes the host (modules, kexec,
/// swap, reboot, clocks, quotas, accounting, the kernel log, host names), and what identifies
/// files or mounts beyond the sandbox (file handles, `listmount`, `statmount`, `kcmp`).
pub(crate) const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    nr::OPEN_TREE_ATTR,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    nr::LISTMOUNT,
    nr::STATMOUNT,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_fanotify_mark,
    libc::SYS_kexec_load,
    nr::KEXEC_FILE_LOAD,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_syslog,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_vhangup,
    nr::LSM_GET_SELF_ATTR,
    nr::LSM_SET_SELF_ATTR,
    nr::LSM_LIST_MODULES,
];

/// x86-64's own refusals: 16-bit segments and port I/O (Wine, DOSEMU), and calls long obsolete.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[i64] = &[
    libc::SYS_modify_ldt,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_lookup_dcookie,
];

#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[i64] = &[];

/// Namespace flags clone may not take. (CLONE_NEWTIME is missing on purpose: clone reads its
/// bit as part of the exit signal, so only clone3 and unshare, both refused, can ask for it.)
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// ioctl requests refused: faking terminal input (TIOCSTI) and the console's selection paste
/// (TIOCLINUX), both ways to type commands into a terminal outside the sandbox.
const DENIED_IOCTLS: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// Socket families a test may create: local sockets, IP and netlink (which `getaddrinfo` and
/// `ip` use, confined to the sandbox's network namespace). Not AF_ALG (the kernel's crypto API:
/// CVE-2026-31431 writes into the page cache of any readable file), not AF_VSOCK (not confined
/// by a network namespace: it reaches the hypervisor's agents), not AF_PACKET and the rest.
const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

/// `personality` values allowed, as in Docker's profile: PER_LINUX, PER_LINUX32, UNAME26 with
/// either, and 0xffffffff, which only reads the current value. Not ADDR_NO_RANDOMIZE, which
/// turns off address-space randomisation, nor READ_IMPLIES_EXEC.
const PERSONALITIES: [u32; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// What the filter does with one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Allowed, whatever its arguments.
    Allow,
    /// Refused with this errno.
    Errno(i32),
    /// Decided by the low 32 bits of argument `arg`: allowed where `test` holds, refused with
    /// `errno` where it does not. (Every argument checked is an int in the kernel, so its high
    /// bits, which the caller may fill with garbage, are never looked at.)
    Args {
        arg: usize,
        test: ArgTest,
        errno: i32,
    },
}

/// A test of one 32-bit argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArgTest {
    /// None of these bits is set.
    NoBits(u32),
    /// It is one of these values.
    In(&'static [u32]),
    /// It is none of these values.
    NotIn(&'static [u32]),
}

/// A filter's rules, by system call number.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    rules: BTreeMap<u32, Rule>,
}

impl Profile {
    /// What tests run under: [`ALLOWED`] and this architecture's own calls; clone without
    /// namespace flags; clone3 answered ENOSYS (its flags lie in memory a filter cannot read,
    /// so libc falls back to clone); ioctl but TIOCSTI and TIOCLINUX; socket and socketpair of
    /// [`SOCKET_FAMILIES`] (EAFNOSUPPORT otherwise, as from a kernel built without the family);
    /// personality of [`PERSONALITIES`].
    pub(crate) fn strict() -> Profile {
        let denied = DENIED
            .iter()
            .chain(DENIED_ARCH)
            .map(|&nr| (nr as u32, Rule::Errno(libc::EPERM)));
        let allowed = ALLOWED
            .iter()
            .chain(ALLOWED_ARCH)
            .map(|&nr| (nr as u32, Rule::Allow));
        let mut rules: BTreeMap<u32, Rule> = denied.chain(allowed).collect();
        let namespaces = NAMESPACE_FLAGS.iter().fold(0, |all, &f| all | f as u32);
        let family = Rule::Args {
            arg: 0,
            test: ArgTest::In(&SOCKET_FAMILIES),
            errno: libc::EAFNOSUPPORT,
        };
        for (nr, rule) in [
            (
                libc::SYS_clone,
                Rule::Args {
                    arg: 0,
                    test: ArgTest::NoBits(namespaces),
                    errno: libc::EPERM,
                },
            ),
            (libc::SYS_clone3, Rule::Errno(libc::ENOSYS)),
            (
                libc::SYS_ioctl,
                Rule::Args {
                    arg: 1,
                    test: ArgTest::NotIn(&DENIED_IOCTLS),
                    errno: libc::EPERM,
                },
            ),
            (libc::SYS_socket, family),
            (libc::SYS_socketpair, family),
            (
                libc::SYS_personality,
                Rule::Args {
                    arg: 0,
                    test: ArgTest::In(&PERSONALITIES),
                    errno: libc::EPERM,
                },
            ),
        ] {
            rules.insert(nr as u32, rule);
        }
        Profile { rules }
    }

    /// This profile with `nr`'s rule replaced, e.g. `setns` allowed for a process that forks
    /// tests into namespaces of their own.
    pub(crate) fn with(mut self, nr: i64, rule: Rule) -> Profile {
        self.rules.insert(nr as u32, rule);
        self
    }

    /// What the filter does with `nr`, before any argument is looked at.
    fn rule(&self, nr: u32) -> Rule {
        match self.rules.get(&nr) {
            Some(&rule) => rule,
            None if nr <= KNOWN_UP_TO => Rule::Errno(libc::EPERM),
            None => Rule::Errno(libc::ENOSYS),
        }
    }

    /// The syscall numbers as ranges of one rule each: (first number, rule), in order, the
    /// first from 0 and the last up to `u32::MAX`.
    fn ranges(&self) -> Vec<(u32, Rule)> {
        let mut ranges: Vec<(u32, Rule)> = Vec::new();
        let mut push = |nr: u32, rule: Rule| {
            // A rule looking at arguments is never merged: each call has its own.
            let same = |last: &(u32, Rule)| last.1 == rule && !matches!(rule, Rule::Args { .. });
            if !ranges.last().is_some_and(same) {
                ranges.push((nr, rule));
            }
        };
        for nr in 0..=KNOWN_UP_TO.max(self.rules.keys().last().copied().unwrap_or(0)) {
            push(nr, self.rule(nr));
        }
        let above = self
            .rules
            .keys()
            .last()
            .map_or(KNOWN_UP_TO, |&n| n.max(KNOWN_UP_TO))
            + 1;
        push(above, Rule::Errno(libc::ENOSYS));
        ranges
    }

    /// Compiles the profile for this architecture.
    ///
    /// # Errors
    /// Fails on an unsupported architecture.
    pub(crate) fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let mut asm = Asm::default();
        let native = asm.label();
        asm.insns.extend([
            Insn::Load(offset_of!(libc::seccomp_data, arch) as u32),
            Insn::Eq(native_arch()?, native, Label::Next),
            Insn::Ret(libc::SECCOMP_RET_KILL_PROCESS),
            Insn::Here(native),
            Insn::Load(offset_of!(libc::seccomp_data, nr) as u32),
        ]);
        let tree = asm.search(&self.ranges());
        asm.insns.extend(tree);
        Ok(assemble(&asm.insns))
    }
}

/// The strict profile's program, compiled once; a process the launcher did not clone (one
/// forked by a pre-warmed interpreter) installs it with [`strict_program_bytes`].
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn strict_program() -> Result<&'static [sock_filter], SeccompError> {
    static PROGRAM: OnceLock<Result<BpfProgram, SeccompError>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| Profile::strict().compile())
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

/// The strict program as the bytes of its `sock_filter` array (8 bytes an instruction, in
/// this machine's byte order), to hand to a process that installs it with
/// `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog { len: bytes.len() / 8, .. })`.
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn strict_program_bytes() -> Result<Vec<u8>, SeccompError> {
    Ok(strict_program()?
        .iter()
        .flat_map(|insn| {
            let mut bytes = [0u8; 8];
            bytes[..2].copy_from_slice(&insn.code.to_ne_bytes());
            bytes[2] = insn.jt;
            bytes[3] = insn.jf;
            bytes[4..].copy_from_slice(&insn.k.to_ne_bytes());
            bytes
        })
        .collect())
}

/// Builds the filter every sandbox installs: a one-element list of programs to install in
/// order (one program is cheaper to install than several).
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    Ok(vec![strict_program()?.to_vec()])
}

/// The filter of a zygote's fork server: the strict profile, and what it needs to make each
/// forked test a sandbox of its own: `unshare` of every namespace but a user namespace (the
/// test stays in the zygote's), `setns` (back to its own pid namespace between forks) and
/// `mount`. Each forked test installs the strict program on top before it runs.
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn build_fork_server() -> Result<Vec<BpfProgram>, SeccompError> {
    let no_user_ns = Rule::Args {
        arg: 0,
        test: ArgTest::NoBits(libc::CLONE_NEWUSER as u32),
        errno: libc::EPERM,
    };
    Ok(vec![
        Profile::strict()
            .with(libc::SYS_unshare, no_user_ns)
            .with(libc::SYS_setns, Rule::Allow)
            .with(libc::SYS_mount, Rule::Allow)
            .compile()?,
    ])
}

/// `AUDIT_ARCH_*` of the native syscall ABI: `EM_*` machine | 64-bit | little-endian
/// (linux/audit.h).
fn native_arch() -> Result<u32, SeccompError> {
    const AUDIT_ARCH_64BIT_LE: u32 = 0x8000_0000 | 0x4000_0000;
    let machine = match std::env::consts::ARCH {
        "x86_64" => 62,   // EM_X86_64
        "aarch64" => 183, // EM_AARCH64
        "riscv64" => 243, // EM_RISCV
        other => return Err(SeccompError::Arch(other)),
    };
    Ok(machine | AUDIT_ARCH_64BIT_LE)
}

/// Offset in `seccomp_data` of the low 32 bits of syscall argument `n` (a filter loads 32-bit
/// words).
const fn arg_low(n: usize) -> u32 {
    let low_word = if cfg!(target_endian = "little") { 0 } else { 4 };
    (offset_of!(libc::seccomp_data, args) + 8 * n + low_word) as u32
}

/// Where a jump lands: the next instruction, or a label placed further down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    At(usize),
}

/// An instruction with symbolic jump targets, or the place of a label.
#[derive(Debug, Clone, Copy)]
enum Insn {
    /// A = the 32-bit word at this offset of `seccomp_data`.
    Load(u32),
    /// if A == k goto t else goto f.
    Eq(u32, Label, Label),
    /// if A >= k goto t else goto f.
    Ge(u32, Label, Label),
    /// if A & k != 0 goto t else goto f.
    Set(u32, Label, Label),
    /// goto, as far as needed.
    Goto(Label),
    /// Return this `SECCOMP_RET_*` action.
    Ret(u32),
    /// The next instruction is this label's.
    Here(Label),
}

/// Instructions being emitted, with fresh labels.
#[derive(Debug, Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: usize,
}

/// How far a conditional jump reaches (its offsets are one byte).
const SHORT_JUMP: usize = u8::MAX as usize;

fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label::At(self.labels)
    }

    /// A binary search of the accumulator (the syscall number) over `ranges`: each step halves
    /// them with a JGE on the first number of the upper half. Where a part of the search fits
    /// in a conditional jump's reach, it is one [`Asm::chunk`]; above that, the halves are
    /// joined with a goto where needed. Returned rather than emitted, so that a caller can
    /// tell how far to jump over it.
    fn search(&mut self, ranges: &[(u32, Rule)]) -> Vec<Insn> {
        let chunk = self.chunk(ranges);
        if ranges.len() == 1 || emitted(&chunk) <= SHORT_JUMP {
            return chunk;
        }
        let (low, high) = ranges.split_at(ranges.len() / 2);
        let pivot = high[0].0;
        let high_label = self.label();
        let low_code = self.search(low);
        let high_code = self.search(high);
        let mut out = Vec::with_capacity(low_code.len() + high_code.len() + 4);
        if emitted(&low_code) < SHORT_JUMP {
            out.push(Insn::Ge(pivot, high_label, Label::Next));
        } else {
            // Too far for a conditional jump: through a goto, which reaches anywhere.
            let low_label = self.label();
            out.extend([
                Insn::Ge(pivot, Label::Next, low_label),
                Insn::Goto(high_label),
                Insn::Here(low_label),
            ]);
        }
        out.extend(low_code);
        out.push(Insn::Here(high_label));
        out.extend(high_code);
        out
    }

    /// The search over `ranges` as compares whose branches lead straight to the code of the
    /// range they single out, placed once per distinct rule after the compares: a range costs
    /// one compare, not a compare and a return of its own.
    fn chunk(&mut self, ranges: &[(u32, Rule)]) -> Vec<Insn> {
        let mut targets: Vec<(Rule, Label)> = Vec::new();
        for &(_, rule) in ranges {
            if !targets.iter().any(|&(r, _)| r == rule) {
                let label = self.label();
                targets.push((rule, label));
            }
        }
        let mut out = Vec::new();
        let target = |rule: Rule| {
            targets
                .iter()
                .find(|&&(r, _)| r == rule)
                .map_or(Label::Next, |&(_, label)| label)
        };
        if let [(_, rule)] = ranges {
            out.push(Insn::Goto(target(*rule)));
        } else {
            self.compares(ranges, &target, &mut out);
        }
        for (rule, label) in targets {
            out.push(Insn::Here(label));
            out.extend(self.leaf(rule));
        }
        out
    }

    /// The compares of a [`Asm::chunk`] over at least two ranges.
    fn compares(
        &mut self,
        ranges: &[(u32, Rule)],
        target: &impl Fn(Rule) -> Label,
        out: &mut Vec<Insn>,
    ) {
        let (low, high) = ranges.split_at(ranges.len() / 2);
        let high_label = match high {
            [(_, rule)] => target(*rule),
            _ => self.label(),
        };
        let low_label = match low {
            [(_, rule)] => target(*rule),
            _ => Label::Next,
        };
        out.push(Insn::Ge(high[0].0, high_label, low_label));
        if low.len() > 1 {
            self.compares(low, target, out);
        }
        if high.len() > 1 {
            out.push(Insn::Here(high_label));
            self.compares(high, target, out);
        }
    }

    /// The code of one range's rule; the accumulator holds the syscall number on entry.
    fn leaf(&mut self, rule: Rule) -> Vec<Insn> {
        let allow = Insn::Ret(libc::SECCOMP_RET_ALLOW);
        match rule {
            Rule::Allow => vec![allow],
            Rule::Errno(errno) => vec![Insn::Ret(ret_errno(errno))],
            Rule::Args { arg, test, errno } => {
                let refuse = Insn::Ret(ret_errno(errno));
                let mut out = vec![Insn::Load(arg_low(arg))];
                match test {
                    ArgTest::NoBits(bits) => {
                        let clear = self.label();
                        out.extend([Insn::Set(bits, Label::Next, clear), refuse]);
                        out.extend([Insn::Here(clear), allow]);
                    }
                    ArgTest::In(values) | ArgTest::NotIn(values) => {
                        let listed = self.label();
                        out.extend(values.iter().map(|&v| Insn::Eq(v, listed, Label::Next)));
                        let (unlisted, on_list) = if matches!(test, ArgTest::In(_)) {
                            (refuse, allow)
                        } else {
                            (allow, refuse)
                        };
                        out.extend([unlisted, Insn::Here(listed), on_list]);
                    }
                }
                out
            }
        }
    }
}

/// How many instructions `insns` assemble to (labels take none).
fn emitted(insns: &[Insn]) -> usize {
    insns.iter().filter(|i| !matches!(i, Insn::Here(_))).count()
}

/// Resolves labels to classic BPF jump offsets.
///
/// # Panics
/// On a backward jump, a conditional jump over more than 255 instructions, an unplaced label
/// or a program too long for the kernel: all mistakes in [`Profile::compile`], caught by its
/// tests.
fn assemble(insns: &[Insn]) -> BpfProgram {
    let mut places: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pc = 0;
    for insn in insns {
        match *insn {
            Insn::Here(Label::At(label)) => {
                assert!(places.insert(label, pc).is_none(), "label placed twice");
            }
            Insn::Here(Label::Next) => {}
            _ => pc += 1,
        }
    }
    assert!(
        pc <= libc::BPF_MAXINSNS as usize,
        "seccomp program too long"
    );
    // Offset of `to` from the instruction after `from`.
    let offset = |from: usize, to: Label| -> u32 {
        let Label::At(label) = to else {
            return 0;
        };
        let at = places
            .get(&label)
            .unwrap_or_else(|| panic!("label {to:?} not placed"));
        let skip = at
            .checked_sub(from + 1)
            .unwrap_or_else(|| panic!("backward jump to {to:?}"));
        skip as u32
    };
    let short = |from: usize, to: Label| -> u8 {
        u8::try_from(offset(from, to)).unwrap_or_else(|_| panic!("jump to {to:?} too far"))
    };
    let op = |code: u32| code as u16;
    let stmt = |code: u32, k: u32| sock_filter {
        code: op(code),
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |pc: usize, code: u32, k: u32, t: Label, f: Label| sock_filter {
        code: op(libc::BPF_JMP | code | libc::BPF_K),
        jt: short(pc, t),
        jf: short(pc, f),
        k,
    };
    let mut program = Vec::with_capacity(pc);
    for insn in insns {
        let pc = program.len();
        program.push(match *insn {
            Insn::Load(at) => stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, at),
            Insn::Eq(k, t, f) => jump(pc, libc::BPF_JEQ, k, t, f),
            Insn::Ge(k, t, f) => jump(pc, libc::BPF_JGE, k, t, f),
            Insn::Set(k, t, f) => jump(pc, libc::BPF_JSET, k, t, f),
            Insn::Goto(to) => stmt(libc::BPF_JMP | libc::BPF_JA, offset(pc, to)),
            Insn::Ret(action) => stmt(libc::BPF_RET | libc::BPF_K, action),
            Insn::Here(_) => continue,
        });
    }
    program
}

#[cfg(test)]
mod tests {
    use super::{
        ALLOWED, ALLOWED_ARCH, ArgTest, BpfProgram, DENIED, DENIED_ARCH, KNOWN_UP_TO,
        NAMESPACE_FLAGS, PERSONALITIES, Profile, Rule, SOCKET_FAMILIES,
    };

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const EAFNOSUPPORT: u32 = libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    /// The `nr` bit of x32 syscalls on x86-64 (`__X32_SYSCALL_BIT`).
    #[cfg(target_arch = "x86_64")]
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;
    /// AUDIT_ARCH_I386: EM_386 | little-endian.
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

    fn program() -> BpfProgram {
        let mut programs = super::build().expect("filter builds on this architecture");
        assert_eq!(programs.len(), 1, "one program to install");
        programs.pop().expect("one program")
    }

    /// A `seccomp_data` as the kernel lays it out: nr, arch, instruction pointer, six args.
    fn data(arch: u32, nr: u32, args: [u64; 6]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend(nr.to_ne_bytes());
        bytes.extend(arch.to_ne_bytes());
        bytes.extend(0u64.to_ne_bytes());
        for arg in args {
            bytes.extend(arg.to_ne_bytes());
        }
        assert_eq!(bytes.len(), size_of::<libc::seccomp_data>());
        bytes
    }

    /// Runs a classic BPF program over `data`, knowing only the instructions `build` emits.
    fn run(program: &[libc::sock_filter], data: &[u8]) -> u32 {
        execute(program, data).0
    }

    /// [`run`], also counting the instructions executed.
    fn execute(program: &[libc::sock_filter], data: &[u8]) -> (u32, usize) {
        let mut a: u32 = 0;
        let mut pc = 0;
        for steps in 1.. {
            let insn = program[pc];
            pc += 1;
            let code = u32::from(insn.code);
            let k = insn.k;
            let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = k as usize;
                    let word = data[at..at + 4].try_into().expect("4 bytes");
                    a = u32::from_ne_bytes(word);
                }
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += branch(a == k),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += branch(a >= k),
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                    pc += branch(a & k != 0);
                }
                c if c == libc::BPF_RET | libc::BPF_K => return (k, steps),
                other => panic!("opcode {other:#x} not emitted by build"),
            }
        }
        unreachable!("the program returns")
    }

    fn native() -> u32 {
        super::native_arch().expect("supported architecture")
    }

    /// The action for syscall `nr` with arguments `args` from the native ABI.
    fn action(nr: i64, args: [u64; 6]) -> u32 {
        run(&program(), &data(native(), nr as u32, args))
    }

    #[test]
    fn denied_syscalls_get_eperm() {
        for &nr in DENIED.iter().chain(DENIED_ARCH) {
            assert_eq!(action(nr, [0; 6]), EPERM, "syscall {nr}");
        }
    }

    #[test]
    fn clone_with_a_namespace_flag_gets_eperm() {
        let plain = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
        assert_eq!(action(libc::SYS_clone, [plain, 0, 0, 0, 0, 0]), ALLOW);
        for flag in NAMESPACE_FLAGS {
            let flags = plain | flag as u64;
            assert_eq!(
                action(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                EPERM,
                "{flag:#x}"
            );
        }
    }

    #[test]
    fn clone3_gets_enosys() {
        assert_eq!(action(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn terminal_injection_ioctls_get_eperm() {
        for req in [libc::TIOCSTI, libc::TIOCLINUX] {
            let req = u64::from(req as u32);
            assert_eq!(
                action(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]),
                EPERM,
                "{req:#x}"
            );
            let garbage = 0xdead_beef_0000_0000 | req;
            assert_eq!(action(libc::SYS_ioctl, [0, garbage, 0, 0, 0, 0]), EPERM);
        }
        let tcgets = u64::from(libc::TCGETS as u32);
        assert_eq!(action(libc::SYS_ioctl, [0, tcgets, 0, 0, 0, 0]), ALLOW);
    }

    /// The allow list and only it: every number below [`KNOWN_UP_TO`] that is neither allowed
    /// nor checked by argument gets EPERM, every number above it ENOSYS (a call from a newer
    /// kernel is refused until decided).
    #[test]
    fn only_the_allow_list_is_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
        ] {
            assert_eq!(action(nr, [0; 6]), ALLOW, "syscall {nr}");
        }
        let allowed: Vec<i64> = ALLOWED.iter().chain(ALLOWED_ARCH).copied().collect();
        let checked = [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ioctl,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_personality,
        ];
        for nr in 0..=i64::from(KNOWN_UP_TO) + 64 {
            let want = if allowed.contains(&nr) {
                ALLOW
            } else if checked.contains(&nr) {
                continue;
            } else if nr <= i64::from(KNOWN_UP_TO) {
                EPERM
            } else {
                ENOSYS
            };
            assert_eq!(action(nr, [u64::MAX; 6]), want, "syscall {nr}");
        }
        for nr in [470, 1000, 0x3fff_ffff, u32::MAX.into()] {
            assert_eq!(action(nr, [0; 6]), ENOSYS, "syscall {nr}");
        }
    }

    #[test]
    fn no_call_is_both_allowed_and_denied() {
        for nr in ALLOWED.iter().chain(ALLOWED_ARCH) {
            assert!(
                !DENIED.contains(nr) && !DENIED_ARCH.contains(nr),
                "syscall {nr}"
            );
        }
        let mut all: Vec<i64> = ALLOWED.iter().chain(ALLOWED_ARCH).copied().collect();
        all.sort_unstable();
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "a syscall listed twice"
        );
    }

    /// The calls the security review found passing the old deny list.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn calls_that_reach_beyond_the_sandbox_get_eperm() {
        // name_to_handle_at, kcmp, syslog, statmount, listmount, open_tree_attr, by number.
        for nr in [303, 312, 103, 457, 458, 467] {
            assert_eq!(action(nr, [0; 6]), EPERM, "syscall {nr}");
        }
    }

    #[test]
    fn sockets_only_of_local_ip_and_netlink_families() {
        for call in [libc::SYS_socket, libc::SYS_socketpair] {
            for family in SOCKET_FAMILIES {
                let args = [u64::from(family), 1, 0, 0, 0, 0];
                assert_eq!(action(call, args), ALLOW, "{call} family {family}");
                // The kernel reads an int: garbage above it changes nothing.
                let args = [0xdead_beef_0000_0000 | u64::from(family), 1, 0, 0, 0, 0];
                assert_eq!(action(call, args), ALLOW, "{call} family {family}");
            }
            for family in [
                libc::AF_ALG,
                libc::AF_VSOCK,
                libc::AF_PACKET,
                libc::AF_KEY,
                0,
                255,
            ] {
                let args = [family as u64, 1, 0, 0, 0, 0];
                assert_eq!(action(call, args), EAFNOSUPPORT, "{call} family {family}");
            }
        }
    }

    #[test]
    fn personality_only_of_harmless_values() {
        for value in PERSONALITIES {
            assert_eq!(
                action(libc::SYS_personality, [value.into(), 0, 0, 0, 0, 0]),
                ALLOW
            );
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, and with PER_LINUX32.
        for value in [0x0040000, 0x0400000, 0x0040008] {
            assert_eq!(
                action(libc::SYS_personality, [value, 0, 0, 0, 0, 0]),
                EPERM,
                "{value:#x}"
            );
        }
    }

    /// A profile for a process that forks tests into namespaces of its own is a few rules on
    /// top of the strict one.
    #[test]
    fn a_profile_can_grant_more() {
        let no_user_ns = Rule::Args {
            arg: 0,
            test: ArgTest::NoBits(libc::CLONE_NEWUSER as u32),
            errno: libc::EPERM,
        };
        let zygote = Profile::strict()
            .with(libc::SYS_setns, Rule::Allow)
            .with(libc::SYS_unshare, no_user_ns)
            .compile()
            .expect("compiles");
        let act =
            |nr: i64, arg0: u64| run(&zygote, &data(native(), nr as u32, [arg0, 0, 0, 0, 0, 0]));
        assert_eq!(act(libc::SYS_setns, 0), ALLOW);
        assert_eq!(act(libc::SYS_unshare, libc::CLONE_NEWNS as u64), ALLOW);
        assert_eq!(act(libc::SYS_unshare, libc::CLONE_NEWUSER as u64), EPERM);
        assert_eq!(act(libc::SYS_mount, 0), EPERM);
        assert_eq!(act(libc::SYS_read, 0), ALLOW);
    }

    #[test]
    fn the_program_bytes_are_its_instructions() {
        let program = program();
        let bytes = super::strict_program_bytes().expect("builds");
        assert_eq!(bytes.len(), program.len() * 8);
        for (insn, raw) in program.iter().zip(bytes.chunks(8)) {
            assert_eq!(u16::from_ne_bytes([raw[0], raw[1]]), insn.code);
            assert_eq!((raw[2], raw[3]), (insn.jt, insn.jf));
            assert_eq!(u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]), insn.k);
        }
    }

    /// The kernel emulates the filter for every syscall number to fill its allow cache, at
    /// install time: the search keeps each path short.
    #[test]
    fn every_path_is_short() {
        let program = program();
        let longest = (0..512)
            .map(|nr| execute(&program, &data(native(), nr, [0; 6])).1)
            .max()
            .expect("some numbers");
        // 15 today, through the search and personality's check of five values; the deny list took
        // 13, a list of compares would take 47.
        assert!(longest <= 16, "{longest} instructions on the longest path");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_are_refused() {
        for nr in [2, libc::SYS_mount, libc::SYS_read] {
            let x32 = X32_SYSCALL_BIT | nr;
            assert_eq!(action(x32, [0; 6]), ENOSYS, "x32 syscall {nr}");
        }
    }

    #[test]
    fn foreign_abi_is_killed() {
        let program = program();
        for nr in [0, 2, libc::SYS_mount as u32] {
            assert_eq!(run(&program, &data(AUDIT_ARCH_I386, nr, [0; 6])), KILL);
        }
    }

    /// How long the kernel takes to install the program (convert, JIT, and fill its
    /// per-syscall cache by emulating it for every syscall number): the cost each sandbox
    /// pays once. Not a check; run it by hand, in a release build:
    /// `cargo test --release -p isotest-sandbox --lib install_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn install_cost() {
        let program = program();
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).expect("short program"),
            filter: program.as_ptr().cast_mut(),
        };
        let mut fds = [0; 2];
        // SAFETY: pipe with a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut samples = Vec::new();
        for _ in 0..2000 {
            // SAFETY: the child runs only async-signal-safe calls and exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: plain syscalls on valid pointers; the child exits without unwinding.
                unsafe {
                    let mut start: libc::timespec = std::mem::zeroed();
                    let mut end: libc::timespec = std::mem::zeroed();
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
                    let ok = libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &fprog as *const libc::sock_fprog,
                        0,
                        0,
                    ) == 0;
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut end);
                    let ns: u64 = if ok {
                        ((end.tv_sec - start.tv_sec) * 1_000_000_000 + end.tv_nsec - start.tv_nsec)
                            as u64
                    } else {
                        u64::MAX
                    };
                    libc::write(fds[1], (&ns as *const u64).cast(), 8);
                    libc::_exit(0);
                }
            }
            let mut ns = 0u64;
            // SAFETY: reading 8 bytes into a u64, then reaping our own child.
            unsafe {
                assert_eq!(libc::read(fds[0], (&mut ns as *mut u64).cast(), 8), 8);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            assert_ne!(ns, u64::MAX, "the kernel rejected the program");
            samples.push(ns);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        println!(
            "seccomp install: {} instructions, median {:.1} µs, p10 {:.1} µs, p90 {:.1} µs",
            program.len(),
            at(0.5),
            at(0.1),
            at(0.9)
        );
    }

    /// The kernel accepts the program, and it does what the interpreter says: a forked child
    /// installs it, then reports by its exit code.
    #[test]
    fn kernel_enforces_the_filter() {
        let program = program();
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).expect("short program"),
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: the child runs only async-signal-safe calls (prctl, raw syscalls, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain syscalls on valid pointers; the child exits without unwinding.
            unsafe {
                let errno = || *libc::__errno_location();
                let me = libc::getpid();
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(10);
                }
                let installed = libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &fprog as *const libc::sock_fprog,
                    0,
                    0,
                );
                if installed != 0 {
                    libc::_exit(11);
                }
                if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                    libc::_exit(12);
                }
                let clone3 = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0);
                if clone3 != -1 || errno() != libc::ENOSYS {
                    libc::_exit(13);
                }
                if libc::getpid() != me {
                    libc::_exit(14);
                }
                let alg = libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0);
                if alg != -1 || errno() != libc::EAFNOSUPPORT {
                    libc::_exit(15);
                }
                let local = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if local < 0 {
                    libc::_exit(16);
                }
                if libc::syscall(1000) != -1 || errno() != libc::ENOSYS {
                    libc::_exit(17);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let what = match code {
            Some(0) => return,
            Some(10) => "set no_new_privs",
            Some(11) => "kernel rejected the program",
            Some(12) => "unshare(CLONE_NEWUSER) not refused with EPERM",
            Some(13) => "clone3 not refused with ENOSYS",
            Some(14) => "getpid broken",
            Some(15) => "socket(AF_ALG) not refused with EAFNOSUPPORT",
            Some(16) => "socket(AF_UNIX) refused",
            Some(17) => "an unknown syscall not refused with ENOSYS",
            _ => "child died",
        };
        panic!("{what} (wait status {status:#x})");
    }
}
