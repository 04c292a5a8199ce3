//! Validation: every field of a parsed [`Manifest`] checked, `[defaults]` applied, and
//! each test resolved into a [`TestSpec`] of a [`Suite`]. Size limits come first
//! (see `limits.rs`), so no test is expanded before the whole suite is known to fit.

use std::collections::BTreeSet;
use std::time::Duration;

use super::limits::{self, Limits};
use super::raw::{Manifest, TestFields};
use super::wire::{Framework, Suite, TestBody, TestSpec};
use super::{ManifestError, duration};

/// The longest timeout a test may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The timeout of a test that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most retries a test may ask for.
pub const MAX_RETRIES: u32 = 10;
/// The most `[meta]` entries a suite may carry.
pub const MAX_META_ENTRIES: usize = 32;
/// The longest `[meta]` key, in bytes.
pub const MAX_META_KEY_BYTES: usize = 64;
/// The longest `[meta]` value, in bytes.
pub const MAX_META_VALUE_BYTES: usize = 1024;

/// Checks a suite's `[meta]`: at most [`MAX_META_ENTRIES`] entries, keys of 1 to
/// [`MAX_META_KEY_BYTES`] of `a-z`, `0-9`, `_`, `.` and `-`, values of at most
/// [`MAX_META_VALUE_BYTES`] bytes without control characters.
///
/// # Errors
///
/// Returns a [`ManifestError`] naming the first bad entry.
pub fn check_meta(meta: &std::collections::BTreeMap<String, String>) -> Result<(), ManifestError> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(ManifestError::field(
            "meta",
            format!(
                "has {} entries; at most {MAX_META_ENTRIES} are allowed",
                meta.len()
            ),
        ));
    }
    for (key, value) in meta {
        let good_key = !key.is_empty()
            && key.len() <= MAX_META_KEY_BYTES
            && key.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !good_key {
            return Err(ManifestError::field(
                "meta",
                format!(
                    "key `{key}` is invalid: use 1 to {MAX_META_KEY_BYTES} of a-z, 0-9, `_`, `.` and `-`"
                ),
            ));
        }
        if value.len() > MAX_META_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(ManifestError::field(
                format!("meta.{key}"),
                format!("must be at most {MAX_META_VALUE_BYTES} bytes without control characters"),
            ));
        }
    }
    Ok(())
}

/// The longest `callback_url`, in bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;
/// Where tests see their workspace (the sandbox's working directory).
const WORKSPACE_DIR: &str = "/workspace";
/// The longest `test_id`, or path of a file in the workspace, in bytes.
const MAX_PATH_BYTES: usize = 4096;

impl Manifest {
    /// Checks every field and resolves defaults into a [`Suite`], under the default
    /// [`Limits`].
    ///
    /// # Errors
    ///
    /// Returns the first problem as a [`ManifestError`] naming the field.
    pub fn validate(&self) -> Result<Suite, ManifestError> {
        self.validate_with(&Limits::DEFAULT)
    }

    /// Checks every field and resolves defaults into a [`Suite`], under `limits`. Sizes
    /// are checked first, on the manifest as written: `[defaults]` is applied to no test
    /// before the whole suite is known to fit.
    ///
    /// # Errors
    ///
    /// Returns the first problem as a [`ManifestError`] naming the field.
    pub fn validate_with(&self, limits: &Limits) -> Result<Suite, ManifestError> {
        // Every field by name, with no `..`: a field added to `Manifest` does not compile
        // until it is checked and carried into the `Suite` here.
        let Manifest {
            name,
            workspace,
            // What `isotest run` leaves out of the workspace it packs: not the suite's.
            workspace_exclude: _,
            workspace_include: _,
            network,
            deadline,
            flaky_result,
            defaults,
            tests: entries,
            discover,
            callback_url,
            warm,
            meta,
            priority,
            cache,
        } = self;
        check_name("name", name, limits)?;
        if let Some(ws) = workspace
            && ws.trim().is_empty()
        {
            return Err(ManifestError::field("workspace", "must not be empty"));
        }
        let deadline_ms = match deadline {
            None => None,
            Some(text) => Some(
                parse_duration("deadline", text)?
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
        };
        if let Some(url) = callback_url {
            check_callback_url("callback_url", url)?;
        }
        check_meta(meta)?;
        if !discover.is_empty() {
            return Err(ManifestError::field(
                "discover[0]",
                "[[discover]] entries are expanded by `isotest run` in a local sandbox before a suite is run or submitted; submit the expanded manifest",
            ));
        }
        if entries.is_empty() {
            return Err(ManifestError::field(
                "tests",
                "the suite has no tests; add at least one [[tests]] entry",
            ));
        }
        limits::check(self, limits)?;
        let mut seen = BTreeSet::new();
        let mut tests = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("tests[{i}]");
            check_name(&format!("{at}.name"), &entry.name, limits)?;
            if !seen.insert(entry.name.as_str()) {
                return Err(ManifestError::field(
                    format!("{at}.name"),
                    format!(
                        "duplicate test name `{}`; test names must be unique in a suite",
                        entry.name
                    ),
                ));
            }
            tests.push(resolve(&at, &entry.name, entry.merged(defaults), limits)?);
        }
        Ok(Suite {
            name: name.clone(),
            workspace: workspace.clone(),
            network: *network,
            deadline_ms,
            tests,
            flaky_result: *flaky_result,
            callback_url: callback_url.clone(),
            warm: warm.unwrap_or(true),
            meta: meta.clone(),
            priority: *priority,
            cache: *cache,
        })
    }
}

/// One test's fields, layered over `[defaults]`, checked and resolved. The fields are
/// taken by value so that they move into the [`TestSpec`].
fn resolve(
    at: &str,
    name: &str,
    f: TestFields,
    limits: &Limits,
) -> Result<TestSpec, ManifestError> {
    // Every field by name, with no `..`: a field added to the list in `raw.rs` does not
    // compile until it is resolved here, so none is parsed and then silently dropped.
    let TestFields {
        code,
        command,
        framework,
        test_id,
        junit_path,
        timeout,
        env,
        files,
        setup,
        teardown,
        retries,
        environment,
        build,
        artifact,
    } = f;
    let framework = match framework.as_deref() {
        None => Framework::Command,
        Some(text) => Framework::ALL
            .into_iter()
            .find(|fw| fw.as_str() == text)
            .ok_or_else(|| {
                let choices: Vec<_> = Framework::ALL.iter().map(|f| f.as_str()).collect();
                ManifestError::field(
                    format!("{at}.framework"),
                    format!(
                        "unknown framework `{text}`; expected one of {}",
                        choices.join(", ")
                    ),
                )
            })?,
    };
    let body = match (code, command, test_id) {
        (Some(_), Some(_), _) => {
            return Err(ManifestError::field(
                at,
                "has both `code` and `command`; give exactly one",
            ));
        }
        (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
            return Err(ManifestError::field(
                at,
                "has `test_id` and also `code` or `command`; give exactly one",
            ));
        }
        (None, None, None) => {
            return Err(ManifestError::field(
                at,
                "has neither `code` nor `command`; give exactly one",
            ));
        }
        (None, None, Some(id)) => {
            if !framework.names_tests() {
                return Err(ManifestError::field(
                    format!("{at}.test_id"),
                    format!("framework `{framework}` runs `code` or `command`, not a `test_id`"),
                ));
            }
            check_test_id(&format!("{at}.test_id"), &id)?;
            TestBody::TestId(id)
        }
        (Some(code), None, None) => {
            check_text(&format!("{at}.code"), &code, limits)?;
            TestBody::Code(code)
        }
        (None, Some(argv), None) => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ManifestError::field(
                    format!("{at}.command"),
                    "must name a program to run",
                ));
            }
            if let Some(arg) = argv.iter().find(|a| a.contains('\0')) {
                return Err(ManifestError::field(
                    format!("{at}.command"),
                    format!("argument {arg:?} contains a NUL byte"),
                ));
            }
            TestBody::Command(argv)
        }
    };
    let timeout_text = timeout;
    let timeout = match &timeout_text {
        None => DEFAULT_TIMEOUT,
        Some(text) => parse_duration(&format!("{at}.timeout"), text)?,
    };
    if timeout > MAX_TIMEOUT {
        return Err(ManifestError::field(
            format!("{at}.timeout"),
            format!(
                "`{}` is longer than the limit of {}",
                timeout_text.as_deref().unwrap_or_default(),
                duration::format(MAX_TIMEOUT)
            ),
        ));
    }
    // Variable names and sizes were checked with the suite's sizes (`limits.rs`).
    let env = env.unwrap_or_default();
    if let Some((key, _)) = env.iter().find(|(_, value)| value.contains('\0')) {
        return Err(ManifestError::field(
            format!("{at}.env.{key}"),
            "contains a NUL byte",
        ));
    }
    let files = files.unwrap_or_default();
    for (j, file) in files.iter().enumerate() {
        check_relative_path(&format!("{at}.files[{j}].path"), &file.path)?;
        check_text(&format!("{at}.files[{j}].content"), &file.content, limits)?;
    }
    // Their length is execve's to limit, checked with the suite's sizes.
    for (field, text) in [("setup", &setup), ("teardown", &teardown)] {
        if text.as_ref().is_some_and(|t| t.contains('\0')) {
            return Err(ManifestError::field(
                format!("{at}.{field}"),
                "contains a NUL byte",
            ));
        }
    }
    let retries = retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return Err(ManifestError::field(
            format!("{at}.retries"),
            format!("{retries} is more than the limit of {MAX_RETRIES}"),
        ));
    }
    if let Some(env_name) = &environment {
        let valid = !env_name.is_empty()
            && env_name.len() <= 64
            && env_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(ManifestError::field(
                format!("{at}.environment"),
                format!("`{env_name}` is not an environment name (letters, digits, `.`, `_`, `-`)"),
            ));
        }
    }
    match (&junit_path, framework) {
        (Some(path), Framework::Junit) => check_relative_path(&format!("{at}.junit_path"), path)?,
        (None, Framework::Junit) => {
            return Err(ManifestError::field(
                at,
                "is a `junit` test without `junit_path`; name the file its command writes JUnit XML to",
            ));
        }
        (Some(_), _) => {
            return Err(ManifestError::field(
                format!("{at}.junit_path"),
                format!("is for `junit` tests; framework `{framework}` says where its report goes"),
            ));
        }
        (None, _) => {}
    }
    if let Some(build) = &build {
        if !matches!(framework, Framework::Command | Framework::Junit) {
            return Err(ManifestError::field(
                format!("{at}.build"),
                format!(
                    "is for `command` and `junit` tests; framework `{framework}` builds its tests itself"
                ),
            ));
        }
        if build.command.first().is_none_or(String::is_empty) {
            return Err(ManifestError::field(
                format!("{at}.build.command"),
                "must name a program to run",
            ));
        }
        if build.outputs.is_empty() {
            return Err(ManifestError::field(
                format!("{at}.build.outputs"),
                "must name the directories the build leaves for the tests (e.g. [\"target\"])",
            ));
        }
        for (j, output) in build.outputs.iter().enumerate() {
            check_relative_path(&format!("{at}.build.outputs[{j}]"), output)?;
        }
    }
    if let Some(artifact) = &artifact
        && crate::api::parse_blob_reference(artifact).is_none()
    {
        return Err(ManifestError::field(
            format!("{at}.artifact"),
            format!(
                "`{}` is not a blob reference `sha256:<64 hex digits>`",
                artifact.escape_default()
            ),
        ));
    }
    Ok(TestSpec {
        name: name.to_owned(),
        body,
        framework,
        timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        env,
        files,
        setup,
        teardown,
        retries,
        environment,
        junit_path,
        build,
        artifact,
    })
}

/// A webhook target: `http` or `https`, with a host, printable, at most
/// [`MAX_CALLBACK_URL_BYTES`]. The aggregator POSTs to it, so anything it could not
/// send a request to is refused here, before the suite runs.
///
/// # Errors
///
/// Returns a [`ManifestError`] for `field` saying what is wrong.
pub fn check_callback_url(field: &str, url: &str) -> Result<(), ManifestError> {
    let bad = |why: &str| ManifestError::field(field, format!("`{}` {why}", url.escape_default()));
    check_bytes(field, url, MAX_CALLBACK_URL_BYTES)?;
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("contains whitespace or a control character"));
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        _ => return Err(bad("is not an http:// or https:// URL")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "carries credentials; the aggregator signs its requests instead",
        ));
    }
    // A bracketed IPv6 literal, or a name or IPv4 address with an optional port.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(bad("has an unclosed `[` in its host")),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:%".contains(c) || !c.is_ascii());
    if !host_ok {
        return Err(bad("has no valid host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad("has a port that is not a number from 1 to 65535"));
    }
    Ok(())
}

/// A test id goes on a command line: printable, and never mistaken for an option.
fn check_test_id(field: &str, id: &str) -> Result<(), ManifestError> {
    if id.trim().is_empty() {
        return Err(ManifestError::field(field, "must not be empty"));
    }
    if id.len() > MAX_PATH_BYTES {
        return Err(ManifestError::field(
            field,
            format!("is longer than {MAX_PATH_BYTES} bytes"),
        ));
    }
    if id.starts_with('-') {
        return Err(ManifestError::field(
            field,
            format!(
                "`{}` starts with `-` and would read as an option",
                id.escape_default()
            ),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(ManifestError::field(
            field,
            format!("`{}` contains a control character", id.escape_default()),
        ));
    }
    Ok(())
}

fn parse_duration(field: &str, text: &str) -> Result<Duration, ManifestError> {
    duration::parse(text).map_err(|e| ManifestError::field(field, e.to_string()))
}

/// Names become report entries, JUnit attributes and Redis hash fields, and a test's
/// name is often its framework's own id (`tests/test_a.py::test_b[https://x y-é]`): any
/// text but blank, over [`Limits::name_bytes`], or holding a control character, which
/// would break a report's line or a terminal.
fn check_name(field: &str, name: &str, limits: &Limits) -> Result<(), ManifestError> {
    if name.trim().is_empty() {
        return Err(ManifestError::field(field, "must not be empty"));
    }
    check_bytes(field, name, limits.name_bytes)?;
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(ManifestError::field(
            field,
            format!(
                "`{}` contains {c:?}; names may not contain control characters",
                name.escape_default()
            ),
        ));
    }
    Ok(())
}

/// Text written into a file of the workspace (`code`, a file's `content`).
fn check_text(field: &str, text: &str, limits: &Limits) -> Result<(), ManifestError> {
    check_bytes(field, text, limits.text_bytes)?;
    if text.contains('\0') {
        return Err(ManifestError::field(field, "contains a NUL byte"));
    }
    Ok(())
}

/// A path inside the workspace: relative, no `..`, no empty or `.`-only name.
pub fn check_relative_path(field: &str, path: &str) -> Result<(), ManifestError> {
    let bad = |why: &str| ManifestError::field(field, format!("`{}` {why}", path.escape_default()));
    if path.is_empty() {
        return Err(ManifestError::field(field, "must not be empty"));
    }
    if let Some(inside) = path
        .strip_prefix(WORKSPACE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        // The cookbook's spelling: the sandbox's own path of the workspace.
        return Err(bad(&format!(
            "is absolute; give a path relative to the workspace, which tests see as {WORKSPACE_DIR} (`{}`)",
            inside.escape_default()
        )));
    }
    if path.starts_with('/') {
        return Err(bad("is absolute; give a path relative to the workspace"));
    }
    if path.contains('\0') || path.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(&format!("is longer than {MAX_PATH_BYTES} bytes")));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(bad("names the workspace itself, not a file in it"));
    }
    if parts.contains(&"..") {
        return Err(bad("leaves the workspace through `..`"));
    }
    Ok(())
}

/// Refuses `text` over `limit` bytes, saying both.
fn check_bytes(field: &str, text: &str, limit: usize) -> Result<(), ManifestError> {
    if text.len() > limit {
        return Err(ManifestError::field(
            field,
            format!("is {} bytes, more than the limit of {limit}", text.len()),
        ));
    }
    Ok(())
}
