//! The suite manifest a user writes (TOML or JSON, one serde schema), and its
//! validation into a [`Suite`] of fully resolved [`TestSpec`]s.
//!
//! Validation is total: every field is checked, defaults are applied, and the
//! first problem is reported with the file, the field path and, where the source
//! is at hand, the line.
//!
//! Beyond `code` and `command`, a test of a framework that names its tests (pytest,
//! unittest, node, go, cargo, jest) may give a `test_id` (a pytest node id, a unittest
//! dotted name, a Node or Jest test file, a Go `[package.]TestName`, a libtest path)
//! and a `junit` test its `junit_path`. `[[discover]]` entries list a framework's ids
//! and become one test each; `isotest run` expands them in a local sandbox before it
//! runs or submits the suite (see `cli/src/discover.rs`), so validation refuses any
//! left. The suite-level `flaky_result` (`pass` by default, or `fail`) decides the
//! verdict of a test that failed and then passed on one of its `retries`; every test
//! sees its attempt number (1, 2, ...) in the variable `ISOTEST_ATTEMPT`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// The most tests one suite may hold.
pub const MAX_TESTS: usize = 20_000;
/// The longest test or suite name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// The largest inline `code`, file `content`, `setup` or `teardown`, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// The longest timeout a test may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The timeout of a test that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most retries a test may ask for.
pub const MAX_RETRIES: u32 = 10;
/// The longest `callback_url`, in bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// How a test is run and how its results are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// `python3 -m pytest`, per-case results from its JUnit XML.
    Pytest,
    /// `python3 -m unittest -v`, per-case results from its verbose output.
    Unittest,
    /// Any argv (or `code` run by `/bin/sh`); the exit code is the verdict.
    Command,
    /// Any argv (or `code` run by `/bin/sh`) that writes JUnit XML to `junit_path`;
    /// per-case results from that report.
    Junit,
    /// `node --test` (Node's built-in runner), per-case results from its JUnit reporter.
    Node,
    /// `go test -json`, per-case results from its event stream.
    Go,
    /// `cargo test`, per-case results from libtest's `test NAME ... ok` lines.
    Cargo,
    /// Jest (installed globally), one test file a test; per-case results from its
    /// `--json` report.
    Jest,
}

impl Framework {
    /// Every framework, for messages that list the choices.
    pub const ALL: [Framework; 8] = [
        Framework::Pytest,
        Framework::Unittest,
        Framework::Command,
        Framework::Junit,
        Framework::Node,
        Framework::Go,
        Framework::Cargo,
        Framework::Jest,
    ];

    /// The name a manifest uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Pytest => "pytest",
            Framework::Unittest => "unittest",
            Framework::Command => "command",
            Framework::Junit => "junit",
            Framework::Node => "node",
            Framework::Go => "go",
            Framework::Cargo => "cargo",
            Framework::Jest => "jest",
        }
    }

    /// Whether the framework names single tests (`test_id`) and can list them (`[[discover]]`).
    pub fn names_tests(self) -> bool {
        !matches!(self, Framework::Command | Framework::Junit)
    }
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file written into the test's workspace before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// A relative path inside the workspace, with no `..` component.
    pub path: String,
    /// The file's text.
    pub content: String,
}

/// The per-test fields, as written in `[defaults]` and in each `[[tests]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The named sandbox environment (root file system) the test runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// One test as its framework names it (a pytest node id, a unittest dotted name, a Go
    /// `[package.]TestName`, a libtest path, a Node test file), instead of `code` or `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
    /// Where a `junit` test's command writes its JUnit XML, relative to the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_path: Option<String>,
}

/// One `[[tests]]` entry: a name and the per-test fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_path: Option<String>,
}

impl TestEntry {
    /// The entry's fields, each falling back to `[defaults]` where unset.
    fn merged(&self, d: &TestFields) -> TestFields {
        TestFields {
            code: self.code.clone().or_else(|| d.code.clone()),
            command: self.command.clone().or_else(|| d.command.clone()),
            framework: self.framework.clone().or_else(|| d.framework.clone()),
            timeout: self.timeout.clone().or_else(|| d.timeout.clone()),
            env: merge_env(d.env.as_ref(), self.env.as_ref()),
            files: self.files.clone().or_else(|| d.files.clone()),
            setup: self.setup.clone().or_else(|| d.setup.clone()),
            teardown: self.teardown.clone().or_else(|| d.teardown.clone()),
            retries: self.retries.or(d.retries),
            environment: self.environment.clone().or_else(|| d.environment.clone()),
            test_id: self.test_id.clone().or_else(|| d.test_id.clone()),
            junit_path: self.junit_path.clone().or_else(|| d.junit_path.clone()),
        }
    }
}

/// `env` merges key by key: a test's own variables win over the defaults'.
fn merge_env(
    defaults: Option<&BTreeMap<String, String>>,
    own: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    match (defaults, own) {
        (None, None) => None,
        (d, o) => {
            let mut env = d.cloned().unwrap_or_default();
            env.extend(o.cloned().unwrap_or_default());
            Some(env)
        }
    }
}

/// A suite manifest exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Locally, a directory to pack; on the wire, a blob reference `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Lets every test of the suite reach the network (off by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// How long the whole suite may take before unfinished tests are reported lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// What a test that fails and then passes on a retry counts as (nextest's `--flaky-result`).
    #[serde(default, skip_serializing_if = "FlakyResult::is_default")]
    pub flaky_result: FlakyResult,
    #[serde(default)]
    pub defaults: TestFields,
    #[serde(default)]
    pub tests: Vec<TestEntry>,
    /// Entries that expand into one test per id their framework lists. `isotest run`
    /// expands them in a local sandbox before it runs or submits the suite, so a manifest
    /// that reaches validation (or the producer) has none left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discover: Vec<DiscoverEntry>,
    /// An `http` or `https` URL the aggregator POSTs the suite's summary to when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// The verdict of a flaky test: one whose final attempt passed after an earlier attempt
/// failed (infrastructure errors aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlakyResult {
    /// The test passes, marked flaky.
    #[default]
    Pass,
    /// The test fails, marked flaky, so the suite fails.
    Fail,
}

impl FlakyResult {
    fn is_default(&self) -> bool {
        *self == FlakyResult::Pass
    }
}

/// One `[[discover]]` entry: a framework lists its tests under `paths` (optionally
/// filtered), and each id becomes a test named `prefix` + the id (`/` turned into `.`),
/// carrying the entry's per-test fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverEntry {
    /// `pytest`, `unittest`, `node`, `go`, `cargo` or `jest`.
    pub framework: String,
    /// Where to look, relative to the workspace (pytest, node and jest: files or
    /// directories; unittest: one start directory; go: package patterns; cargo: unused).
    /// Empty: the framework's default (the workspace, `./...` for go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The framework's own selection: pytest `-k`, unittest `-k`, a go `-list` regexp,
    /// a libtest name filter, a substring of node or jest test file paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Put before every discovered test's name, to keep two entries' names apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl DiscoverEntry {
    /// The framework, checked.
    ///
    /// # Errors
    ///
    /// Returns a [`ManifestError`] for `discover[index].framework` when it names no
    /// framework that can list its tests.
    pub fn framework(&self, index: usize) -> Result<Framework, ManifestError> {
        Framework::ALL
            .into_iter()
            .find(|f| f.as_str() == self.framework && f.names_tests())
            .ok_or_else(|| {
                let choices: Vec<_> = Framework::ALL
                    .iter()
                    .filter(|f| f.names_tests())
                    .map(|f| f.as_str())
                    .collect();
                ManifestError::field(
                    format!("discover[{index}].framework"),
                    format!(
                        "`{}` cannot discover tests; expected one of {}",
                        self.framework,
                        choices.join(", ")
                    ),
                )
            })
    }

    /// The `[[tests]]` entry of one discovered id.
    pub fn test_entry(&self, id: &str) -> TestEntry {
        TestEntry {
            name: discovered_name(self.prefix.as_deref().unwrap_or_default(), id),
            framework: Some(self.framework.clone()),
            test_id: Some(id.to_owned()),
            timeout: self.timeout.clone(),
            env: self.env.clone(),
            files: self.files.clone(),
            setup: self.setup.clone(),
            teardown: self.teardown.clone(),
            retries: self.retries,
            environment: self.environment.clone(),
            ..TestEntry::default()
        }
    }
}

/// A test name for a discovered id: names may not hold path separators or control
/// characters, ids often hold `/` (`tests/test_a.py::test_b`).
pub fn discovered_name(prefix: &str, id: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + id.len());
    name.push_str(prefix);
    name.extend(
        id.chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '/' || c == '\\' { '.' } else { c }),
    );
    name
}

/// The syntax a manifest is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// The format a file name implies: `.json` is JSON, anything else TOML.
    pub fn from_path(path: &str) -> Format {
        if path.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// A manifest that could not be read or is not valid: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file (or `request body`) the manifest came from.
    pub origin: Option<String>,
    /// The 1-based line of the offending text, where known.
    pub line: Option<usize>,
    /// The field path, such as `tests[3].timeout`, where the problem is one field's.
    pub field: Option<String>,
    /// What is wrong, a lowercase fragment.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.origin, self.line) {
            (Some(o), Some(l)) => write!(f, "{o}:{l}: ")?,
            (Some(o), None) => write!(f, "{o}: ")?,
            (None, Some(l)) => write!(f, "line {l}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ManifestError {
    fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError {
            origin: None,
            line: None,
            field: Some(path.into()),
            message: message.into(),
        }
    }

    fn suite(message: impl Into<String>) -> Self {
        ManifestError {
            origin: None,
            line: None,
            field: None,
            message: message.into(),
        }
    }
}

/// What `code` or `command` a test runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestBody {
    /// Inline source, written to a file in the workspace and run by the framework.
    Code(String),
    /// An argv run in the workspace.
    Command(Vec<String>),
    /// One test as its framework names it, run by the framework's own command.
    #[serde(rename = "test_id")]
    TestId(String),
}

/// A test after validation: every field resolved, every default applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSpec {
    pub name: String,
    pub body: TestBody,
    pub framework: Framework,
    pub timeout_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<String>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Where a `junit` test writes its JUnit XML, relative to the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_path: Option<String>,
}

impl TestSpec {
    /// The test's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A validated suite, ready to be published one test at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suite {
    pub name: String,
    /// The workspace as the manifest gave it (a local directory, or a blob reference).
    pub workspace: Option<String>,
    pub network: bool,
    pub deadline_ms: Option<u64>,
    pub tests: Vec<TestSpec>,
    #[serde(default)]
    pub flaky_result: FlakyResult,
    /// Where the aggregator POSTs the `suite.finished` webhook, checked by [`check_callback_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl Manifest {
    /// Parses a manifest; `origin` names it in errors (a file path, say).
    ///
    /// # Errors
    ///
    /// Returns a [`ManifestError`] with the line where the syntax or a field's type is wrong.
    pub fn parse(
        text: &str,
        format: Format,
        origin: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let with_origin = |mut e: ManifestError| {
            e.origin = origin.map(str::to_owned);
            e
        };
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(with_origin(ManifestError::suite(format!(
                "manifest is {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                text.len()
            ))));
        }
        match format {
            Format::Toml => toml::from_str(text).map_err(|e| {
                let line = e.span().map(|s| line_of(text, s.start));
                with_origin(ManifestError {
                    origin: None,
                    line,
                    field: None,
                    message: e.message().trim().to_owned(),
                })
            }),
            Format::Json => serde_json::from_str(text).map_err(|e| {
                with_origin(ManifestError {
                    origin: None,
                    line: (e.line() > 0).then_some(e.line()),
                    field: None,
                    message: strip_json_position(&e.to_string()),
                })
            }),
        }
    }

    /// Parses and validates in one step, locating a field's error in `text`.
    ///
    /// # Errors
    ///
    /// Returns the first [`ManifestError`] found.
    pub fn load(text: &str, format: Format, origin: Option<&str>) -> Result<Suite, ManifestError> {
        Manifest::parse(text, format, origin)?.validate_in(text, format, origin)
    }

    /// Validates a manifest parsed from `text`, locating a field's error there (entries
    /// added since, such as discovered tests, come after the written ones).
    ///
    /// # Errors
    ///
    /// Returns the first [`ManifestError`] found.
    pub fn validate_in(
        &self,
        text: &str,
        format: Format,
        origin: Option<&str>,
    ) -> Result<Suite, ManifestError> {
        self.validate().map_err(|mut e| {
            e.origin = origin.map(str::to_owned);
            if format == Format::Toml {
                e.line = e.field.as_deref().and_then(|f| locate_toml_field(text, f));
            }
            e
        })
    }

    /// Checks every field and resolves defaults into a [`Suite`].
    ///
    /// # Errors
    ///
    /// Returns the first problem as a [`ManifestError`] naming the field.
    pub fn validate(&self) -> Result<Suite, ManifestError> {
        check_name("name", &self.name)?;
        if let Some(ws) = &self.workspace
            && ws.trim().is_empty()
        {
            return Err(ManifestError::field("workspace", "must not be empty"));
        }
        let deadline_ms = match &self.deadline {
            None => None,
            Some(text) => Some(
                parse_duration("deadline", text)?
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
        };
        if let Some(url) = &self.callback_url {
            check_callback_url("callback_url", url)?;
        }
        if !self.discover.is_empty() {
            return Err(ManifestError::field(
                "discover[0]",
                "[[discover]] entries are expanded by `isotest run` in a local sandbox before a suite is run or submitted; submit the expanded manifest",
            ));
        }
        if self.tests.is_empty() {
            return Err(ManifestError::field(
                "tests",
                "the suite has no tests; add at least one [[tests]] entry",
            ));
        }
        if self.tests.len() > MAX_TESTS {
            return Err(ManifestError::field(
                "tests",
                format!(
                    "the suite has {} tests, more than the limit of {MAX_TESTS}",
                    self.tests.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut tests = Vec::with_capacity(self.tests.len());
        for (i, entry) in self.tests.iter().enumerate() {
            let at = format!("tests[{i}]");
            check_name(&format!("{at}.name"), &entry.name)?;
            if !seen.insert(entry.name.as_str()) {
                return Err(ManifestError::field(
                    format!("{at}.name"),
                    format!(
                        "duplicate test name `{}`; test names must be unique in a suite",
                        entry.name
                    ),
                ));
            }
            tests.push(resolve(&at, &entry.name, &entry.merged(&self.defaults))?);
        }
        Ok(Suite {
            name: self.name.clone(),
            workspace: self.workspace.clone(),
            network: self.network,
            deadline_ms,
            tests,
            flaky_result: self.flaky_result,
            callback_url: self.callback_url.clone(),
        })
    }
}

fn resolve(at: &str, name: &str, f: &TestFields) -> Result<TestSpec, ManifestError> {
    let framework = match f.framework.as_deref() {
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
    let body = match (&f.code, &f.command, &f.test_id) {
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
            check_test_id(&format!("{at}.test_id"), id)?;
            TestBody::TestId(id.clone())
        }
        (Some(code), None, None) => {
            check_text(&format!("{at}.code"), code)?;
            TestBody::Code(code.clone())
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
            TestBody::Command(argv.clone())
        }
    };
    let timeout = match &f.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => parse_duration(&format!("{at}.timeout"), text)?,
    };
    if timeout > MAX_TIMEOUT {
        return Err(ManifestError::field(
            format!("{at}.timeout"),
            format!(
                "`{}` is longer than the limit of {}",
                f.timeout.as_deref().unwrap_or_default(),
                duration::format(MAX_TIMEOUT)
            ),
        ));
    }
    let env = f.env.clone().unwrap_or_default();
    for (key, value) in &env {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ManifestError::field(
                format!("{at}.env"),
                format!(
                    "`{key}` is not a valid variable name (letters, digits and `_`, not starting with a digit)"
                ),
            ));
        }
        if value.contains('\0') {
            return Err(ManifestError::field(
                format!("{at}.env.{key}"),
                "contains a NUL byte",
            ));
        }
    }
    let files = f.files.clone().unwrap_or_default();
    for (j, file) in files.iter().enumerate() {
        check_relative_path(&format!("{at}.files[{j}].path"), &file.path)?;
        check_text(&format!("{at}.files[{j}].content"), &file.content)?;
    }
    for (field, text) in [("setup", &f.setup), ("teardown", &f.teardown)] {
        if let Some(text) = text {
            check_text(&format!("{at}.{field}"), text)?;
        }
    }
    let retries = f.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return Err(ManifestError::field(
            format!("{at}.retries"),
            format!("{retries} is more than the limit of {MAX_RETRIES}"),
        ));
    }
    if let Some(env_name) = &f.environment {
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
    match (&f.junit_path, framework) {
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
    Ok(TestSpec {
        name: name.to_owned(),
        body,
        framework,
        timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        env,
        files,
        setup: f.setup.clone(),
        teardown: f.teardown.clone(),
        retries,
        environment: f.environment.clone(),
        junit_path: f.junit_path.clone(),
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
    if url.len() > MAX_CALLBACK_URL_BYTES {
        return Err(ManifestError::field(
            field,
            format!(
                "is {} bytes, more than the limit of {MAX_CALLBACK_URL_BYTES}",
                url.len()
            ),
        ));
    }
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
    if id.len() > 4096 {
        return Err(ManifestError::field(field, "is longer than 4096 bytes"));
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

/// Names become report entries, JUnit attributes and Redis hash fields: keep them printable.
fn check_name(field: &str, name: &str) -> Result<(), ManifestError> {
    if name.trim().is_empty() {
        return Err(ManifestError::field(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ManifestError::field(
            field,
            format!(
                "is {} bytes, more than the limit of {MAX_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || *c == '/' || *c == '\\')
    {
        return Err(ManifestError::field(
            field,
            format!(
                "`{}` contains {c:?}; names may not contain path separators or control characters",
                name.escape_default()
            ),
        ));
    }
    Ok(())
}

fn check_text(field: &str, text: &str) -> Result<(), ManifestError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ManifestError::field(
            field,
            format!(
                "is {} bytes, more than the limit of {MAX_TEXT_BYTES}",
                text.len()
            ),
        ));
    }
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
    if path.starts_with('/') {
        return Err(bad("is absolute; give a path relative to the workspace"));
    }
    if path.contains('\0') || path.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if path.len() > 4096 {
        return Err(bad("is longer than 4096 bytes"));
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

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Finds the line of a field path such as `tests[3].timeout` in a TOML manifest
/// written in the usual layout (`[[tests]]` headers, one `key = value` a line).
fn locate_toml_field(text: &str, field: &str) -> Option<usize> {
    let (table, index, key) = split_field(field);
    let mut current: Option<(&str, usize)> = None;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut table_line = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let count = counts.entry(name).or_insert(0);
            current = Some((name, *count));
            *count += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = Some((name.trim(), 0));
        } else {
            let in_place = match (table, current) {
                (None, None) => true,
                (Some(t), Some((c, i))) => t == c && index.unwrap_or(0) == i,
                _ => false,
            };
            if in_place
                && let Some(key) = key
                && is_key_line(line, key)
            {
                return Some(n + 1);
            }
            continue;
        }
        if table.is_some() && current == table.map(|t| (t, index.unwrap_or(0))) {
            table_line = Some(n + 1);
            if key.is_none() {
                return table_line;
            }
        }
    }
    // A test's field the test does not set came from `[defaults]`: point at it there.
    if table == Some("tests")
        && let Some(key) = key
        && let Some(line) = locate_toml_field(text, &format!("defaults.{key}"))
        && text
            .lines()
            .nth(line - 1)
            .is_some_and(|l| is_key_line(l.trim(), key))
    {
        return Some(line);
    }
    table_line
}

/// Whether `line` (trimmed) is a `key = value` line of `key`.
fn is_key_line(line: &str, key: &str) -> bool {
    line.contains('=')
        && line
            .split('=')
            .next()
            .is_some_and(|k| k.trim().trim_matches('"') == key)
}

/// `tests[3].timeout` → (`Some("tests")`, `Some(3)`, `Some("timeout")`); `name` → (None, None, Some("name")).
fn split_field(field: &str) -> (Option<&str>, Option<usize>, Option<&str>) {
    let (head, key) = match field.split_once('.') {
        Some((h, rest)) => (h, Some(rest.split(['.', '[']).next().unwrap_or(rest))),
        None => (field, None),
    };
    if let Some((table, idx)) = head.split_once('[') {
        let index = idx.trim_end_matches(']').parse().ok();
        return (Some(table), index, key);
    }
    match key {
        Some(k) => (Some(head), None, Some(k)),
        None if head == "defaults" || head == "tests" => (Some(head), None, None),
        None => (None, None, Some(head)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"

[defaults]
framework = "pytest"
timeout = "30s"
env = { SHARED = "1" }

[[tests]]
name = "adds"
code = "def test_add():\n    assert 1 + 1 == 2\n"
env = { OWN = "2" }

[[tests]]
name = "lists"
command = ["ls", "-l"]
framework = "command"
retries = 2
"#;

    fn load(text: &str) -> Result<Suite, ManifestError> {
        Manifest::load(text, Format::Toml, Some("suite.toml"))
    }

    #[test]
    fn defaults_apply_where_a_test_is_silent() {
        let suite = load(GOOD).expect("valid manifest");
        assert_eq!(suite.tests.len(), 2);
        let adds = &suite.tests[0];
        assert_eq!(adds.framework, Framework::Pytest);
        assert_eq!(adds.timeout_ms, 30_000);
        assert_eq!(adds.env.get("SHARED").map(String::as_str), Some("1"));
        assert_eq!(adds.env.get("OWN").map(String::as_str), Some("2"));
        let lists = &suite.tests[1];
        assert_eq!(lists.framework, Framework::Command);
        assert_eq!(
            lists.body,
            TestBody::Command(vec!["ls".into(), "-l".into()])
        );
        assert_eq!(lists.retries, 2);
    }

    #[test]
    fn json_and_toml_are_one_schema() {
        let toml_suite = load(GOOD).expect("valid toml");
        let manifest = Manifest::parse(GOOD, Format::Toml, None).expect("parses");
        let json = serde_json::to_string(&manifest).expect("serializes");
        let json_suite =
            Manifest::load(&json, Format::Json, Some("suite.json")).expect("valid json");
        assert_eq!(toml_suite, json_suite);
    }

    /// Each bad manifest, the message fragment it must produce, and the line it must name.
    #[test]
    fn bad_manifests_name_the_field_and_line() {
        let cases: &[(&str, &str, &str, Option<usize>)] = &[
            (
                "unknown framework",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nframework = \"nose\"\n",
                "unknown framework `nose`",
                Some(5),
            ),
            (
                "both bodies",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncode = \"x\"\ncommand = [\"true\"]\n",
                "both `code` and `command`",
                Some(2),
            ),
            (
                "neither body",
                "name = \"s\"\n[[tests]]\nname = \"a\"\n",
                "neither `code` nor `command`",
                Some(2),
            ),
            (
                "duplicate",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
                "duplicate test name `a`",
                Some(6),
            ),
            ("empty suite", "name = \"s\"\n", "no tests", None),
            (
                "zero timeout",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"0s\"\n",
                "greater than zero",
                Some(5),
            ),
            (
                "bad timeout",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"soon\"\n",
                "`soon` is not a duration",
                Some(5),
            ),
            (
                "bad default timeout",
                "name = \"s\"\n[defaults]\ntimeout = \"-1\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
                "not a duration",
                Some(3),
            ),
            (
                "malformed toml",
                "name = \"s\"\n[[tests]\nname = \"a\"\n",
                "",
                Some(2),
            ),
            (
                "unknown field",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ntimout = \"3s\"\n",
                "unknown field `timout`",
                Some(5),
            ),
            (
                "wrong type",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = \"true\"\n",
                "invalid type",
                Some(4),
            ),
            (
                "slash in name",
                "name = \"s\"\n[[tests]]\nname = \"a/b\"\ncommand = [\"true\"]\n",
                "path separators",
                Some(3),
            ),
            (
                "escaping file",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nfiles = [{ path = \"../x\", content = \"\" }]\n",
                "leaves the workspace",
                Some(5),
            ),
            (
                "absolute file",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nfiles = [{ path = \"/etc/x\", content = \"\" }]\n",
                "is absolute",
                Some(5),
            ),
            (
                "empty command",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = []\n",
                "must name a program",
                Some(4),
            ),
            (
                "bad env key",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nenv = { \"A-B\" = \"1\" }\n",
                "not a valid variable name",
                Some(5),
            ),
            (
                "test_id of a command",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ntest_id = \"x\"\n",
                "framework `command` runs `code` or `command`, not a `test_id`",
                Some(4),
            ),
            (
                "test_id beside a command",
                "name = \"s\"\n[[tests]]\nname = \"a\"\nframework = \"go\"\ntest_id = \"TestA\"\ncommand = [\"true\"]\n",
                "has `test_id` and also `code` or `command`",
                Some(2),
            ),
            (
                "test_id like an option",
                "name = \"s\"\n[[tests]]\nname = \"a\"\nframework = \"pytest\"\ntest_id = \"--pdb\"\n",
                "would read as an option",
                Some(5),
            ),
            (
                "junit without a path",
                "name = \"s\"\n[[tests]]\nname = \"a\"\nframework = \"junit\"\ncommand = [\"true\"]\n",
                "without `junit_path`",
                Some(2),
            ),
            (
                "junit_path elsewhere",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\njunit_path = \"r.xml\"\n",
                "is for `junit` tests",
                Some(5),
            ),
            (
                "unexpanded discover",
                "name = \"s\"\n[[discover]]\nframework = \"pytest\"\n",
                "expanded by `isotest run`",
                Some(2),
            ),
            (
                "unknown flaky_result",
                "name = \"s\"\nflaky_result = \"maybe\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
                "unknown variant `maybe`",
                Some(2),
            ),
            (
                "ftp callback",
                "name = \"s\"\ncallback_url = \"ftp://ci.example/hook\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
                "callback_url: `ftp://ci.example/hook` is not an http:// or https:// URL",
                Some(2),
            ),
            (
                "too many retries",
                "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nretries = 99\n",
                "more than the limit",
                Some(5),
            ),
        ];
        for (what, text, fragment, line) in cases {
            let err = load(text).expect_err(what);
            assert!(err.to_string().contains(fragment), "{what}: {err}");
            assert_eq!(err.line, *line, "{what}: {err}");
            assert_eq!(err.origin.as_deref(), Some("suite.toml"), "{what}");
            assert!(err.to_string().starts_with("suite.toml:"), "{what}: {err}");
        }
    }

    #[test]
    fn discovered_ids_become_tests_with_the_entrys_fields() {
        let entry = DiscoverEntry {
            framework: "pytest".into(),
            prefix: Some("py:".into()),
            timeout: Some("5s".into()),
            retries: Some(1),
            ..DiscoverEntry::default()
        };
        let manifest = Manifest {
            name: "s".into(),
            flaky_result: FlakyResult::Fail,
            tests: vec![entry.test_entry("tests/test_a.py::test_b[x/y]")],
            ..Manifest::default()
        };
        let suite = manifest.validate().expect("valid");
        let test = &suite.tests[0];
        assert_eq!(test.name, "py:tests.test_a.py::test_b[x.y]");
        assert_eq!(
            test.body,
            TestBody::TestId("tests/test_a.py::test_b[x/y]".into())
        );
        assert_eq!((test.timeout_ms, test.retries), (5_000, 1));
        assert_eq!(suite.flaky_result, FlakyResult::Fail);
        assert!(entry.framework(0).is_ok());
        let json = serde_json::to_value(&manifest).expect("serializes");
        assert_eq!(json["flaky_result"], "fail");
        assert!(
            serde_json::to_value(Manifest::default())
                .expect("serializes")
                .get("flaky_result")
                .is_none(),
            "the default is not written"
        );
    }

    #[test]
    fn callback_urls_are_http_with_a_host() {
        let long = format!("https://ci.example/{}", "a".repeat(MAX_CALLBACK_URL_BYTES));
        let cases: &[(&str, Option<&str>)] = &[
            ("https://ci.example/hook", None),
            ("http://127.0.0.1:8080/isotest?token=x#f", None),
            ("HTTPS://[::1]:443/h", None),
            ("http://ci.example", None),
            (
                "ftp://ci.example/hook",
                Some("not an http:// or https:// URL"),
            ),
            ("ci.example/hook", Some("not an http:// or https:// URL")),
            ("http:///hook", Some("has no valid host")),
            ("http://:80/hook", Some("has no valid host")),
            ("http://ci.example:0/", Some("port that is not a number")),
            (
                "http://ci.example:99999/",
                Some("port that is not a number"),
            ),
            ("http://ci.example:x/", Some("port that is not a number")),
            ("http://[::1/", Some("unclosed `[`")),
            ("http://user:pw@ci.example/", Some("carries credentials")),
            (
                "http://ci.example/a b",
                Some("whitespace or a control character"),
            ),
            (
                "http://ci.example/\n",
                Some("whitespace or a control character"),
            ),
            (&long, Some("more than the limit of 2048")),
        ];
        for (url, expected) in cases {
            let result = check_callback_url("callback_url", url);
            match (expected, result) {
                (None, Ok(())) => {}
                (Some(fragment), Err(e)) => {
                    assert!(e.to_string().starts_with("callback_url: "), "{url}: {e}");
                    assert!(e.to_string().contains(fragment), "{url}: {e}");
                }
                (expected, got) => panic!("{url}: expected {expected:?}, got {got:?}"),
            }
        }
        let suite = load("name = \"s\"\ncallback_url = \"https://ci.example/hook\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n")
            .expect("valid");
        assert_eq!(
            suite.callback_url.as_deref(),
            Some("https://ci.example/hook")
        );
    }

    #[test]
    fn malformed_json_names_the_line() {
        let err = Manifest::load(
            "{\n\"name\": \"s\",\n\"tests\": [\n}",
            Format::Json,
            Some("s.json"),
        )
        .expect_err("bad json");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.to_string().starts_with("s.json:4: "), "{err}");
    }

    #[test]
    fn field_paths_split_as_expected() {
        assert_eq!(
            split_field("tests[3].timeout"),
            (Some("tests"), Some(3), Some("timeout"))
        );
        assert_eq!(
            split_field("tests[0].files[1].path"),
            (Some("tests"), Some(0), Some("files"))
        );
        assert_eq!(
            split_field("defaults.timeout"),
            (Some("defaults"), None, Some("timeout"))
        );
        assert_eq!(split_field("name"), (None, None, Some("name")));
        assert_eq!(split_field("tests"), (Some("tests"), None, None));
    }
}
