//! The seccomp filter every sandboxed process runs under: one classic BPF program, generated
//! here once and installed by the sandbox's init just before exec.
//!
//! Every installed filter costs startup time: the kernel converts it to eBPF, JITs it and, for
//! its per-syscall allow cache, emulates it for every syscall number. Hence one program, not
//! one per action as `seccompiler` built them, and a binary search over the syscall numbers
//! rather than a list of compares, so that emulation runs ~13 instructions a number, not ~47.
//! The program, top to bottom (every jump goes forward, the returns are shared at the end):
//! 1. a foreign syscall ABI (`arch` is not the native one, e.g. i386 via `int 0x80` on x86_64)
//!    kills the process: its syscall numbers mean other calls;
//! 2. on x86_64, an x32 syscall number (bit 30 set) gets ENOSYS: x32 calls report the native
//!    `AUDIT_ARCH_X86_64`, so without this `0x40000000 | SYS_mount` would pass every deny
//!    check below, which compares numbers;
//! 3. the search, finding one of:
//!    - clone3: ENOSYS, since its flags live in memory a filter cannot read, so libc falls back
//!      to clone;
//!    - clone: EPERM if arg0 holds a namespace flag;
//!    - ioctl: EPERM if the request is TIOCSTI or TIOCLINUX (terminal input injection);
//!    - a [`DENIED`] syscall: EPERM;
//! 4. every other syscall is allowed.

use std::mem::offset_of;

use libc::sock_filter;

/// A classic BPF program, as `PR_SET_SECCOMP` takes it (through a `sock_fprog`).
pub type BpfProgram = Vec<sock_filter>;

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// No syscall ABI is known for this CPU architecture.
    #[error("target architecture {0}")]
    Arch(&'static str),
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
const DENIED_IOCTLS: [libc::Ioctl; 2] = [libc::TIOCSTI, libc::TIOCLINUX];

/// The `nr` bit of x32 syscalls on x86_64 (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AUDIT_ARCH_*` of the native syscall ABI: `EM_*` machine | 64-bit | little-endian
/// (linux/audit.h), for the architectures seccompiler supported.
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
/// words; clone's flags and ioctl's request are 32-bit in the kernel).
const fn arg_low(n: usize) -> u32 {
    let low_word = if cfg!(target_endian = "little") { 0 } else { 4 };
    (offset_of!(libc::seccomp_data, args) + 8 * n + low_word) as u32
}

/// Where a jump lands: the next instruction, or a label placed further down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    /// The search's half for syscall numbers from this one up.
    From(u32),
    CloneArgs,
    IoctlArgs,
    Allow,
    Eperm,
    Enosys,
    Kill,
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
    /// goto.
    Goto(Label),
    /// Return this `SECCOMP_RET_*` action.
    Ret(u32),
    /// The next instruction is this label's.
    Here(Label),
}

/// Builds the filter: a single program, returned in a one-element list of programs to install
/// in order.
///
/// # Errors
/// Fails on an unsupported architecture.
pub(crate) fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    use Insn::{Eq, Here, Load, Ret, Set};
    use Label::{Allow, CloneArgs, Enosys, Eperm, IoctlArgs, Kill, Next};
    let errno = |e: libc::c_int| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let nr = |sys: i64| sys as u32;

    let mut insns = vec![
        // 1. Foreign ABI: kill.
        Load(offset_of!(libc::seccomp_data, arch) as u32),
        Eq(native_arch()?, Next, Kill),
        Load(offset_of!(libc::seccomp_data, nr) as u32),
    ];
    // 2. x32 syscall numbers: ENOSYS, as on a kernel built without x32.
    if cfg!(target_arch = "x86_64") {
        insns.push(Set(X32_SYSCALL_BIT, Enosys, Next));
    }
    // 3. The search over the syscalls handled specially; the rest is allowed.
    let mut cases: Vec<(u32, Label)> = DENIED.iter().map(|&sys| (nr(sys), Eperm)).collect();
    cases.extend([
        (nr(libc::SYS_clone3), Enosys),
        (nr(libc::SYS_clone), CloneArgs),
        (nr(libc::SYS_ioctl), IoctlArgs),
    ]);
    cases.sort_unstable_by_key(|&(nr, _)| nr);
    assert!(
        cases.windows(2).all(|w| w[0].0 < w[1].0),
        "a syscall listed twice"
    );
    search(&cases, &mut insns);

    // The search's clone case: EPERM if any namespace flag is set.
    let namespaces = NAMESPACE_FLAGS
        .iter()
        .fold(0, |all, &flag| all | flag as u32);
    insns.extend([
        Here(CloneArgs),
        Load(arg_low(0)),
        Set(namespaces, Eperm, Allow),
    ]);
    // The search's ioctl case: EPERM for the refused requests (the kernel reads the request
    // as a 32-bit int, so high garbage bits must not make it look different).
    insns.extend([Here(IoctlArgs), Load(arg_low(1))]);
    for (i, &req) in DENIED_IOCTLS.iter().enumerate() {
        let otherwise = if i + 1 == DENIED_IOCTLS.len() {
            Allow
        } else {
            Next
        };
        insns.push(Eq(req as u32, Eperm, otherwise));
    }

    // The shared returns.
    insns.extend([
        Here(Allow),
        Ret(libc::SECCOMP_RET_ALLOW),
        Here(Eperm),
        Ret(errno(libc::EPERM)),
        Here(Enosys),
        Ret(errno(libc::ENOSYS)),
        Here(Kill),
        Ret(libc::SECCOMP_RET_KILL_PROCESS),
    ]);
    Ok(vec![assemble(&insns)])
}

/// Emits a binary search of the accumulator over `cases`, sorted by syscall number: JGE halves
/// the cases until a few are left, compared one by one; a number matching none is allowed.
fn search(cases: &[(u32, Label)], insns: &mut Vec<Insn>) {
    if cases.len() <= 3 {
        insns.extend(cases.iter().map(|&(nr, to)| Insn::Eq(nr, to, Label::Next)));
        insns.push(Insn::Goto(Label::Allow));
        return;
    }
    let (low, high) = cases.split_at(cases.len() / 2);
    let pivot = high[0].0;
    insns.push(Insn::Ge(pivot, Label::From(pivot), Label::Next));
    search(low, insns);
    insns.push(Insn::Here(Label::From(pivot)));
    search(high, insns);
}

/// Resolves labels to classic BPF jump offsets.
///
/// # Panics
/// On a backward jump, a jump over more than 255 instructions, an unplaced label or a program
/// too long for the kernel: all mistakes in [`build`], caught by its tests.
fn assemble(insns: &[Insn]) -> BpfProgram {
    let mut places: Vec<(Label, usize)> = Vec::new();
    let mut pc = 0;
    for insn in insns {
        match *insn {
            Insn::Here(label) => places.push((label, pc)),
            _ => pc += 1,
        }
    }
    assert!(
        pc <= libc::BPF_MAXINSNS as usize,
        "seccomp program too long"
    );
    // Offset of `to` from the instruction after `from`.
    let offset = |from: usize, to: Label| -> u32 {
        if to == Label::Next {
            return 0;
        }
        let (_, at) = places
            .iter()
            .find(|(label, _)| *label == to)
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
    use super::{BpfProgram, DENIED, NAMESPACE_FLAGS};

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
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
        for &nr in DENIED {
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

    #[test]
    fn everything_else_is_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
        ] {
            assert_eq!(action(nr, [0; 6]), ALLOW, "syscall {nr}");
        }
        let special = [libc::SYS_clone, libc::SYS_clone3, libc::SYS_ioctl];
        for nr in (0..512).filter(|nr| !DENIED.contains(nr) && !special.contains(nr)) {
            assert_eq!(action(nr, [u64::MAX; 6]), ALLOW, "syscall {nr}");
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
        // 13 today; a list of compares would take 47.
        assert!(longest <= 16, "{longest} instructions on the longest path");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_are_refused() {
        for nr in [2, libc::SYS_mount, libc::SYS_read] {
            let x32 = i64::from(super::X32_SYSCALL_BIT) | nr;
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
            _ => "child died",
        };
        panic!("{what} (wait status {status:#x})");
    }
}
