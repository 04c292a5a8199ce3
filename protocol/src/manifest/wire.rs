//! The resolved forms validation produces and the wire carries: a [`Suite`] of
//! [`TestSpec`]s, each with every default applied and every field checked.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw::{BuildSpec, FileSpec, FlakyResult};

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

/// A test after validation: every field resolved, every default applied. Every field
/// but `name` and `retries` decides the test's outcome and enters its digest
/// ([`crate::message::outcome_digest`]) without further ado.
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
    /// A `command` or `junit` suite's own build, run once by the prepare stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    /// The prepared build the test runs from (`sha256:<hex>`), where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
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
    /// Where the aggregator POSTs the `suite.finished` webhook, checked by
    /// [`super::check_callback_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Whether Python tests may start warm (see the manifest's `warm`).
    #[serde(default = "yes")]
    pub warm: bool,
    /// The manifest's `[meta]`, checked by [`super::check_meta`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
    /// The priority the suite asks for (see the manifest's `priority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::schedule::Priority>,
    /// Whether the suite asks for the result cache (see the manifest's `cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

fn yes() -> bool {
    true
}
