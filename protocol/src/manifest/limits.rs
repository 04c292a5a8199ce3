//! How large a manifest may be, before and after `[defaults]` is applied to its tests,
//! and what `execve` takes. These are checked first, on the manifest as parsed and
//! without applying `[defaults]` to any test, so a small manifest cannot make the
//! producer build a large suite (a 1 MiB default copied into 20,000 tests) only to
//! refuse it, and a test `execve` would refuse never reaches a worker.

use super::ManifestError;
use super::raw::{Manifest, TestEntry, merged_env};

/// The largest manifest accepted, in bytes (the producer's default request limit too).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// The most a suite may weigh once `[defaults]` is applied to every test: the sum over
/// its tests of [`TEST_BYTES`], the bytes of the name and of every field the test ends
/// up with, and [`ITEM_BYTES`] for each string, variable and file. It bounds what the
/// producer holds and publishes for one suite, whatever the manifest's size.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024 * 1024;
/// The most tests one suite may hold.
pub const MAX_TESTS: usize = 20_000;
/// The longest test or suite name, in bytes: long enough for any framework's own id.
pub const MAX_NAME_BYTES: usize = 4096;
/// The largest inline `code` or file `content`, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// The longest single string `execve` takes, its closing NUL included: Linux's
/// `MAX_ARG_STRLEN` (32 pages of 4 KiB). Each `command` argument, each `env` entry
/// (`KEY=value`), `setup`, `teardown` and `test_id` is one such string.
pub const MAX_ARG_BYTES: usize = 128 * 1024;
/// The most a test's arguments and environment may take of `execve`'s space, each
/// string counted with its NUL and its 8-byte pointer as the kernel counts them. Linux
/// allows a quarter of the stack limit (2 MiB under the usual 8 MiB); the other half is
/// left for what the worker adds (its own arguments, `PATH`, `HOME`, ...).
pub const MAX_EXEC_BYTES: usize = 1024 * 1024;
/// What one string, variable or file counts for in [`MAX_EXPANDED_BYTES`] beside its
/// bytes: about what holding it costs (its header and the allocator's share), so that
/// many empty strings cannot weigh nothing.
pub const ITEM_BYTES: usize = 64;
/// What one test counts for in [`MAX_EXPANDED_BYTES`] beside its fields: its resolved
/// form and the message that carries it.
pub const TEST_BYTES: usize = 512;

/// Every size limit of a manifest, defaults from the constants of this module. A
/// caller that takes other limits (from its flags, say) passes its own to
/// [`Manifest::parse_with`] and [`Manifest::validate_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest manifest, in bytes ([`MAX_MANIFEST_BYTES`]).
    pub manifest_bytes: usize,
    /// The most a suite may weigh with `[defaults]` applied ([`MAX_EXPANDED_BYTES`]).
    pub expanded_bytes: usize,
    /// The most tests a suite may hold ([`MAX_TESTS`]).
    pub tests: usize,
    /// The longest test or suite name ([`MAX_NAME_BYTES`]).
    pub name_bytes: usize,
    /// The largest `code` or file `content` ([`MAX_TEXT_BYTES`]).
    pub text_bytes: usize,
    /// The longest string given to `execve`, NUL included ([`MAX_ARG_BYTES`]).
    pub arg_bytes: usize,
    /// The most a test's arguments and environment take of `execve` ([`MAX_EXEC_BYTES`]).
    pub exec_bytes: usize,
}

impl Limits {
    /// The limits of this module's constants.
    pub const DEFAULT: Limits = Limits {
        manifest_bytes: MAX_MANIFEST_BYTES,
        expanded_bytes: MAX_EXPANDED_BYTES,
        tests: MAX_TESTS,
        name_bytes: MAX_NAME_BYTES,
        text_bytes: MAX_TEXT_BYTES,
        arg_bytes: MAX_ARG_BYTES,
        exec_bytes: MAX_EXEC_BYTES,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

impl Manifest {
    /// What the suite weighs with `[defaults]` applied to every test (see
    /// [`MAX_EXPANDED_BYTES`]), computed without applying it: about the bytes of its test
    /// messages on the wire. It takes time in proportion to the manifest, `[defaults]`
    /// being weighed once.
    pub fn expanded_bytes(&self) -> usize {
        let bytes = self.defaults.bytes();
        self.tests
            .iter()
            .map(|t| t.expanded_bytes(&self.defaults, &bytes))
            .fold(0, usize::saturating_add)
    }
}

/// What `execve` counts for one string: its bytes, its NUL and its pointer.
const fn exec_cost(len: usize) -> usize {
    len.saturating_add(1 + size_of::<usize>())
}

/// Checks the suite's size limits on the manifest as parsed, before any test is
/// expanded: the number of tests, then for each test in turn its share of the expanded
/// size and its `execve` strings. `[defaults]` is weighed once; what each test inherits
/// is looked at only while the suite is under the expanded-size limit, so the work is
/// bounded by the manifest's size and that limit.
///
/// # Errors
///
/// Returns a [`ManifestError`] naming the field and the limit.
pub(crate) fn check(manifest: &Manifest, limits: &Limits) -> Result<(), ManifestError> {
    let tests = &manifest.tests;
    if tests.len() > limits.tests {
        return Err(ManifestError::field(
            "tests",
            format!(
                "the suite has {} tests, more than the limit of {}",
                tests.len(),
                limits.tests
            ),
        ));
    }
    let defaults_bytes = manifest.defaults.bytes();
    let mut expanded: usize = 0;
    for (i, entry) in tests.iter().enumerate() {
        let at = format!("tests[{i}]");
        expanded =
            expanded.saturating_add(entry.expanded_bytes(&manifest.defaults, &defaults_bytes));
        if expanded > limits.expanded_bytes {
            return Err(ManifestError::field(
                "tests",
                format!(
                    "with [defaults] applied, tests[0] to {at} (of {}) already weigh {expanded} bytes, more than the limit of {} for a suite; give every test less through [defaults], or put what the tests share in the workspace",
                    tests.len(),
                    limits.expanded_bytes
                ),
            ));
        }
        check_exec(&at, entry, manifest, limits)?;
    }
    Ok(())
}

/// Refuses what `execve` would refuse for this test: a string over [`Limits::arg_bytes`]
/// or arguments and environment over [`Limits::exec_bytes`] in all.
fn check_exec(
    at: &str,
    entry: &TestEntry,
    manifest: &Manifest,
    limits: &Limits,
) -> Result<(), ManifestError> {
    let d = &manifest.defaults;
    let longest = limits.arg_bytes.saturating_sub(1);
    let too_long = |field: String, len: usize, limit: usize, held: &str| {
        ManifestError::field(
            field,
            format!(
                "is {len} bytes, more than the limit of {limit} (execve takes a string of at most {} bytes, {held}the closing NUL included)",
                limits.arg_bytes
            ),
        )
    };
    // (field, bytes it takes of execve), to name the largest part when the sum is over.
    let mut parts: Vec<(&str, usize)> = Vec::new();

    let mut env_cost: usize = 0;
    for (key, value) in merged_env(entry.env.as_ref(), d.env.as_ref()) {
        check_env_key(at, key)?;
        // `KEY=value`
        let len = key.len().saturating_add(1).saturating_add(value.len());
        if len > longest {
            return Err(too_long(
                format!("{at}.env.{key}"),
                value.len(),
                longest.saturating_sub(key.len() + 1),
                &format!("`{key}=` and "),
            ));
        }
        env_cost = env_cost.saturating_add(exec_cost(len));
    }
    parts.push(("env", env_cost));

    if let Some(argv) = entry.command.as_ref().or(d.command.as_ref()) {
        let mut cost: usize = 0;
        for (j, arg) in argv.iter().enumerate() {
            if arg.len() > longest {
                return Err(too_long(
                    format!("{at}.command[{j}]"),
                    arg.len(),
                    longest,
                    "",
                ));
            }
            cost = cost.saturating_add(exec_cost(arg.len()));
        }
        parts.push(("command", cost));
    }
    for (field, own, default) in [
        ("setup", &entry.setup, &d.setup),
        ("teardown", &entry.teardown, &d.teardown),
        ("test_id", &entry.test_id, &d.test_id),
    ] {
        if let Some(text) = own.as_ref().or(default.as_ref()) {
            if text.len() > longest {
                return Err(too_long(format!("{at}.{field}"), text.len(), longest, ""));
            }
            parts.push((field, exec_cost(text.len())));
        }
    }

    let total = parts.iter().map(|(_, n)| *n).fold(0, usize::saturating_add);
    if total > limits.exec_bytes {
        let (largest, _) = parts
            .iter()
            .max_by_key(|(_, n)| *n)
            .copied()
            .unwrap_or(("env", 0));
        let shares: Vec<String> = parts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(field, n)| format!("{field} {n}"))
            .collect();
        return Err(ManifestError::field(
            format!("{at}.{largest}"),
            format!(
                "the test's arguments and environment take {total} bytes of execve ({}), more than the limit of {}",
                shares.join(", "),
                limits.exec_bytes
            ),
        ));
    }
    Ok(())
}

/// A variable name `execve` and a shell take: letters, digits and `_`, not starting
/// with a digit. Checked here, before a name is put in a field path.
fn check_env_key(at: &str, key: &str) -> Result<(), ManifestError> {
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ManifestError::field(
            format!("{at}.env"),
            format!(
                "`{}` is not a valid variable name (letters, digits and `_`, not starting with a digit)",
                key.escape_default()
            ),
        ))
    }
}
