//! A small assembler for classic BPF: instructions with symbolic jump targets, the binary
//! search over ranges of syscall numbers that one rule each decides, and the final pass
//! that resolves labels into one-byte jump offsets (with long jumps where they do not reach).

use std::collections::BTreeMap;
use std::mem::offset_of;

use libc::sock_filter;

use super::{ArgTest, BpfProgram, Rule};

/// Offset in `seccomp_data` of the low 32 bits of syscall argument `n` (a filter loads 32-bit
/// words).
pub(super) const fn arg_low(n: usize) -> u32 {
    let low_word = if cfg!(target_endian = "little") { 0 } else { 4 };
    (offset_of!(libc::seccomp_data, args) + 8 * n + low_word) as u32
}

/// Where a jump lands: the next instruction, or a label placed further down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Label {
    Next,
    At(usize),
}

/// An instruction with symbolic jump targets, or the place of a label.
#[derive(Debug, Clone, Copy)]
pub(super) enum Insn {
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
pub(super) struct Asm {
    pub(super) insns: Vec<Insn>,
    labels: usize,
}

/// How far a conditional jump reaches (its offsets are one byte).
const SHORT_JUMP: usize = u8::MAX as usize;

fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

impl Asm {
    pub(super) fn label(&mut self) -> Label {
        self.labels += 1;
        Label::At(self.labels)
    }

    /// A binary search of the accumulator (the syscall number) over `ranges`: each step halves
    /// them with a JGE on the first number of the upper half. Where a part of the search fits
    /// in a conditional jump's reach, it is one [`Asm::chunk`]; above that, the halves are
    /// joined with a goto where needed. Returned rather than emitted, so that a caller can
    /// tell how far to jump over it.
    pub(super) fn search(&mut self, ranges: &[(u32, Rule)]) -> Vec<Insn> {
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
pub(super) fn assemble(insns: &[Insn]) -> BpfProgram {
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
