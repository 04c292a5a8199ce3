//! Thin wrappers over Linux system calls that `libc`/`nix` do not wrap (new mount API, openat2,
//! clone3, pidfds), with the kernel ABI constants and structs they need.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub const FSOPEN_CLOEXEC: libc::c_uint = 1;
pub const FSCONFIG_SET_STRING: libc::c_uint = 1;
pub const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
pub const FSMOUNT_CLOEXEC: libc::c_uint = 1;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const AT_RECURSIVE: libc::c_uint = 0x8000;
pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const P_PIDFD: libc::idtype_t = 3;
pub const CLONE_PIDFD: u64 = 0x1000;
pub const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct mount_attr` for `mount_setattr(2)`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// `struct open_how` for `openat2(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct clone_args` for `clone3(2)`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// The kernel's `struct sigaction` for `rt_sigaction(2)` (handler, flags, restorer, mask on
/// x86-64 and arm64); the default value is `SIG_DFL` with no flags and an empty mask.
#[repr(C)]
#[derive(Debug, Default)]
pub struct KernelSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
#[derive(Debug)]
pub struct CapHeader {
    pub version: u32,
    pub pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a detached tmpfs (not attached anywhere in the host's mount tree) and returns its
/// mount fd; the options are `key=value` strings such as `size=1048576`.
///
/// # Errors
/// Fails without CAP_SYS_ADMIN or on a bad option.
pub fn detached_tmpfs(options: &[(&CStr, &CStr)], attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: the fs type is a valid C string; the returned fd is checked and owned.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fs is a fresh fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    for (key, value) in options {
        // SAFETY: key and value are valid C strings living across the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: plain syscall on an fd we own.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: plain syscall on an fd we own; the result is checked and owned.
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: mnt is a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// A detached, read-only, `nosuid`, `nodev` copy of the mount tree at `path` (with
/// `open_tree(OPEN_TREE_CLONE)`), which a sandbox moves into place as a bind mount.
///
/// # Errors
/// Fails without CAP_SYS_ADMIN, or when `path` does not exist.
pub fn clone_tree_readonly(path: &CStr) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: valid C string; the result is checked and owned.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    })?;
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the attr struct outlives the call and its size is passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(fd)
}

/// `openat2` with the given resolve flags.
///
/// # Errors
/// The kernel's error, e.g. ELOOP for a symlink under RESOLVE_NO_SYMLINKS.
pub fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: path and how are valid for the call; the result is checked and owned.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: fd is fresh.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends a signal through a pidfd (no pid-reuse race).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall with a null siginfo.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// Waits for the child behind `pidfd` to exit and reaps it.
///
/// # Errors
/// The kernel's error (e.g. ECHILD when it was already reaped or is not our child).
pub fn reap(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zeroed siginfo is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: blocking waitid on a pidfd with a valid siginfo.
    let ret = unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::__WALL,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs the child behind `pidfd` and reaps it, so nothing of it is left.
pub fn kill_and_reap(pidfd: BorrowedFd<'_>) {
    let _ = pidfd_send_signal(pidfd, libc::SIGKILL);
    let _ = reap(pidfd);
}

/// How a reaped process ended, with its resource usage (including its reaped descendants').
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    pub usage: libc::rusage,
}

/// Reaps the process behind `pidfd` without blocking; `None` if it has not exited yet.
///
/// # Errors
/// The kernel's error (e.g. ECHILD when it was already reaped).
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<Reaped>> {
    // SAFETY: zeroed siginfo and rusage are valid initial values for these plain C structs.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // The raw syscall takes a fifth rusage argument that the libc wrapper hides.
    // SAFETY: info and usage are valid for writes during the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_waitid,
            P_PIDFD,
            pidfd.as_raw_fd(),
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOHANG | libc::__WALL,
            &mut usage as *mut libc::rusage,
        )
    })?;
    // SAFETY: si_pid is valid to read for SIGCHLD siginfo; zero means nothing was reaped.
    if unsafe { info.si_pid() } == 0 {
        return Ok(None);
    }
    Ok(Some(Reaped { usage }))
}
