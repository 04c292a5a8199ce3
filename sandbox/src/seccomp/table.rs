//! The syscall table of the strict profile: which calls are allowed whatever their
//! arguments, which are refused on purpose, the highest number decided, and the values the
//! argument checks (clone's flags, ioctl's request, socket's family, personality) accept
//! or refuse. [`super::Profile::strict`] turns it into rules.

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
pub(super) const ALLOWED: &[i64] = &[
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
pub(super) const ALLOWED_ARCH: &[i64] = &[
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
pub(super) const ALLOWED_ARCH: &[i64] = &[38];

/// RISC-V's own: flushing the caller's instruction cache (JITs) and probing CPU features.
#[cfg(target_arch = "riscv64")]
pub(super) const ALLOWED_ARCH: &[i64] = &[259, 258];

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
pub(super) const DENIED_ARCH: &[i64] = &[
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
pub(super) const DENIED_ARCH: &[i64] = &[];

/// Namespace flags clone may not take. (CLONE_NEWTIME is missing on purpose: clone reads its
/// bit as part of the exit signal, so only clone3 and unshare, both refused, can ask for it.)
pub(super) const NAMESPACE_FLAGS: [libc::c_int; 7] = [
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
pub(super) const DENIED_IOCTLS: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// Socket families a test may create: local sockets, IP and netlink (which `getaddrinfo` and
/// `ip` use, confined to the sandbox's network namespace). Not AF_ALG (the kernel's crypto API:
/// CVE-2026-31431 writes into the page cache of any readable file), not AF_VSOCK (not confined
/// by a network namespace: it reaches the hypervisor's agents), not AF_PACKET and the rest.
pub(super) const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

/// `personality` values allowed, as in Docker's profile: PER_LINUX, PER_LINUX32, UNAME26 with
/// either, and 0xffffffff, which only reads the current value. Not ADDR_NO_RANDOMIZE, which
/// turns off address-space randomisation, nor READ_IMPLIES_EXEC.
pub(super) const PERSONALITIES: [u32; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];
