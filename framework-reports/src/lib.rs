//! Readers of the reports test frameworks write into a test's workspace, turned into
//! per-case results: JUnit XML ([`junit`], pytest's `--junitxml` and any framework that
//! writes the same shape) and Jest's `--json` ([`jest`]). The reports are untrusted input;
//! these readers do no I/O and never panic on what they are given (`fuzz/` checks it).

pub mod jest;
pub mod junit;

pub use jest::parse as parse_jest;
pub use junit::{JunitError, parse as parse_junit};
