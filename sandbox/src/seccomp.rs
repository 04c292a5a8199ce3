//! The seccomp filter every sandboxed process runs under, compiled once with `seccompiler` and
//! installed by the sandbox's init just before exec.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This CPU architecture is not supported by seccompiler.
    #[error("target architecture {0}")]
    Arch(&'static str),
    /// seccompiler rejected the rules.
    #[error("compile seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
}

/// Syscalls denied outright with EPERM: mounting, namespaces, kernel-facing and tracing
/// interfaces a test never needs and that widen the kernel attack surface.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
];

const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Builds the filters in install order: the EPERM filter, then one answering clone3 with ENOSYS
/// (its flags live in memory a filter cannot read, so libc must fall back to clone, whose flags
/// the first filter checks).
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let masked = |arg: u8, len: SeccompCmpArgLen, mask: u64, value: u64| {
        SeccompCondition::new(arg, len, SeccompCmpOp::MaskedEq(mask), value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Compile)
    };
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| masked(0, SeccompCmpArgLen::Qword, flag, flag))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // The kernel reads the ioctl request as a 32-bit int, so compare only the low 32 bits; a
    // 64-bit compare would let high garbage bits slip TIOCSTI past the filter.
    let ioctl_rules = [libc::TIOCSTI, libc::TIOCLINUX]
        .iter()
        .map(|&req| masked(1, SeccompCmpArgLen::Dword, u64::from(u32::MAX), req))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);

    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(SeccompError::Compile)?;
    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(SeccompError::Compile)?;
    [eperm, enosys]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(SeccompError::Compile))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        let programs = super::build().expect("filter builds on this architecture");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }
}
