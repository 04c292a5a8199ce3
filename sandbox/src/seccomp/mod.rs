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
//!
//! `table.rs` lists the calls; `bpf.rs` assembles a profile's ranges into the program.

mod bpf;
mod table;

use std::collections::BTreeMap;
use std::mem::offset_of;
use std::sync::OnceLock;

use libc::sock_filter;

use bpf::{Asm, Insn, Label, assemble};
use table::{
    ALLOWED, ALLOWED_ARCH, DENIED_ARCH, DENIED_IOCTLS, NAMESPACE_FLAGS, PERSONALITIES,
    SOCKET_FAMILIES,
};
pub(crate) use table::{DENIED, KNOWN_UP_TO};

/// A classic BPF program, as `PR_SET_SECCOMP` takes it (through a `sock_fprog`).
pub type BpfProgram = Vec<sock_filter>;

/// Why the filter could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SeccompError {
    /// No syscall ABI is known for this CPU architecture.
    #[error("target architecture {0}")]
    Arch(&'static str),
}

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

#[cfg(test)]
mod tests;
