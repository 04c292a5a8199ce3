//! The manifest exactly as written: the serde schema of TOML and JSON manifests. The
//! per-test fields are listed once, in [`per_test_fields!`]'s invocation below, which
//! spells `[defaults]`, `[[tests]]` and `[[discover]]` from that one list.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::limits::{ITEM_BYTES, TEST_BYTES};

/// A file written into the test's workspace before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// A relative path inside the workspace, with no `..` component.
    pub path: String,
    /// The file's text.
    pub content: String,
}

/// A suite manifest exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Locally, a directory to pack; on the wire, a blob reference `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Gitignore-style globs of workspace files not to pack, beside what `.gitignore`
    /// leaves out (`isotest run` only: a submitted manifest's workspace is packed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspace_exclude: Vec<String>,
    /// Gitignore-style globs of workspace files to pack even where `.gitignore` or
    /// `workspace_exclude` leave them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspace_include: Vec<String>,
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
    /// Whether Python tests may start warm, forked from an interpreter that has imported
    /// their framework and collected their file (on by default; `false` starts every test
    /// from nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    /// What the history store keeps about the run: CI system, repository, branch,
    /// commit, job URL (the keys of [`crate::api::meta`]) and any others.
    /// `isotest run` fills it from `--meta KEY=VALUE` and the CI system's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// How urgently the suite's tests are dispatched: `high`, `normal` or `low`, at most
    /// its token's priority (by default, its token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::schedule::Priority>,
    /// Whether a test whose result cache key matches an earlier passed run is reported
    /// from that run instead of running (by default, as the suite's token says; off
    /// without a token). `isotest run --no-cache` sets it to `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
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

/// Writes `[defaults]` ([`TestFields`]), `[[tests]]` ([`TestEntry`]: a name and the
/// fields) and `[[discover]]` ([`DiscoverEntry`]: its own keys and the `shared` fields)
/// from one list of per-test fields, with how an entry's fields fall back to
/// `[defaults]` and what a test's fields cost once expanded. `run` fields say what a
/// test runs (a `[[discover]]` entry runs the ids it finds instead); `shared` fields
/// say how, and a discovered test takes them from its entry. Each field's type says
/// how it layers over `[defaults]` ([`Layer`]).
macro_rules! per_test_fields {
    (
        run { $( $(#[$rmeta:meta])* $rfield:ident : $rty:ty, )* }
        shared { $( $(#[$smeta:meta])* $sfield:ident : $sty:ty, )* }
    ) => {
        /// The per-test fields, as written in `[defaults]` and in each `[[tests]]` entry.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct TestFields {
            $( $(#[$rmeta])* #[serde(default, skip_serializing_if = "Option::is_none")]
               pub $rfield: Option<$rty>, )*
            $( $(#[$smeta])* #[serde(default, skip_serializing_if = "Option::is_none")]
               pub $sfield: Option<$sty>, )*
        }

        /// One `[[tests]]` entry: a name and the per-test fields.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct TestEntry {
            /// The test's name, unique in the suite.
            pub name: String,
            $( $(#[$rmeta])* #[serde(default, skip_serializing_if = "Option::is_none")]
               pub $rfield: Option<$rty>, )*
            $( $(#[$smeta])* #[serde(default, skip_serializing_if = "Option::is_none")]
               pub $sfield: Option<$sty>, )*
        }

        /// One `[[discover]]` entry: a framework lists its tests under `paths`
        /// (optionally filtered), and each id becomes a test named `prefix` + the id
        /// (see [`discovered_name`]), carrying the entry's per-test fields.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct DiscoverEntry {
            /// `pytest`, `unittest`, `node`, `go`, `cargo` or `jest`.
            pub framework: String,
            /// Where to look, relative to the workspace (pytest, node and jest: files or
            /// directories; unittest: one start directory; go: package patterns; cargo:
            /// unused). Empty: the framework's default (the workspace, `./...` for go).
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub paths: Vec<String>,
            /// The framework's own selection: pytest `-k`, unittest `-k`, a go `-list`
            /// regexp, a libtest name filter, a substring of node or jest test file paths.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub filter: Option<String>,
            /// Put before every discovered test's name, to keep two entries' names apart.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub prefix: Option<String>,
            $( $(#[$smeta])* #[serde(default, skip_serializing_if = "Option::is_none")]
               pub $sfield: Option<$sty>, )*
        }

        /// The keys of the per-test fields, in the order the structs declare them.
        pub const TEST_FIELDS: &[&str] = &[$(stringify!($rfield),)* $(stringify!($sfield),)*];

        /// What each field of `[defaults]` weighs ([`Layer::expanded_bytes`]), counted
        /// once for all the tests that take it.
        pub(crate) struct DefaultsBytes {
            $( $rfield: usize, )*
            $( $sfield: usize, )*
        }

        impl TestFields {
            /// What each field weighs, for [`TestEntry::expanded_bytes`].
            pub(crate) fn bytes(&self) -> DefaultsBytes {
                DefaultsBytes {
                    $( $rfield: self.$rfield.as_ref().map_or(0, Layer::expanded_bytes), )*
                    $( $sfield: self.$sfield.as_ref().map_or(0, Layer::expanded_bytes), )*
                }
            }
        }

        impl TestEntry {
            /// The entry's fields, each layered over `[defaults]` (see [`Layer`]).
            pub(crate) fn merged(&self, d: &TestFields) -> TestFields {
                TestFields {
                    $( $rfield: Layer::layer(self.$rfield.as_ref(), d.$rfield.as_ref()), )*
                    $( $sfield: Layer::layer(self.$sfield.as_ref(), d.$sfield.as_ref()), )*
                }
            }

            /// What this test weighs once `[defaults]` is applied, computed without
            /// applying it: [`TEST_BYTES`], then the bytes of its name and of every field
            /// it ends up with as JSON, plus [`ITEM_BYTES`] for each string, variable and
            /// file. `bytes` is `d.bytes()`, so that each test costs only its own fields.
            pub(crate) fn expanded_bytes(&self, d: &TestFields, bytes: &DefaultsBytes) -> usize {
                TEST_BYTES
                    .saturating_add(json_len(&self.name))
                    $( .saturating_add(Layer::layered_bytes(
                        self.$rfield.as_ref(),
                        d.$rfield.as_ref(),
                        bytes.$rfield,
                    )) )*
                    $( .saturating_add(Layer::layered_bytes(
                        self.$sfield.as_ref(),
                        d.$sfield.as_ref(),
                        bytes.$sfield,
                    )) )*
            }
        }

        impl DiscoverEntry {
            /// The `[[tests]]` entry of one discovered id.
            pub fn test_entry(&self, id: &str) -> TestEntry {
                TestEntry {
                    name: discovered_name(self.prefix.as_deref().unwrap_or_default(), id),
                    framework: Some(self.framework.clone()),
                    test_id: Some(id.to_owned()),
                    $( $sfield: self.$sfield.clone(), )*
                    ..TestEntry::default()
                }
            }
        }
    };
}

// The one list of per-test fields. A new field is one line here (its type implementing
// `Layer`); the compiler then stops at `validate.rs`'s `resolve`, which takes the fields
// apart with no `..`, until the field is checked and carried into `TestSpec` (`wire.rs`).
per_test_fields! {
    run {
        /// Inline source, written to a file in the workspace and run by the framework
        /// (the cookbook's `test_code` is accepted for it).
        #[serde(alias = "test_code")]
        code: String,
        /// An argv run in the workspace.
        command: Vec<String>,
        /// How the test is run and its results read (`command` when unset).
        framework: String,
        /// One test as its framework names it (a pytest node id, a unittest dotted name, a
        /// Go `[package.]TestName`, a libtest path, a Node test file), instead of `code`
        /// or `command`.
        test_id: String,
        /// Where a `junit` test's command writes its JUnit XML, relative to the workspace.
        junit_path: String,
    }
    shared {
        /// How long one attempt may take: a duration (`"30s"`), or a number of seconds as
        /// the cookbook writes it.
        #[serde(deserialize_with = "duration_or_seconds")]
        timeout: String,
        /// The test's environment variables (the cookbook's `env_vars` is accepted for it).
        #[serde(alias = "env_vars")]
        env: BTreeMap<String, String>,
        /// Files written into the workspace before the test runs.
        files: Vec<FileSpec>,
        /// A shell command run before the test, in the same sandbox.
        setup: String,
        /// A shell command run after the test, in the same sandbox.
        teardown: String,
        /// How many times a test that did not pass is run again, each in a fresh sandbox.
        retries: u32,
        /// The named sandbox environment (root file system) the test runs in.
        environment: String,
        /// A `command` or `junit` suite's build, run once by the prepare stage; its
        /// `outputs` are bound read-only into every test at the same paths.
        build: BuildSpec,
        /// The prepared build the test runs from, a blob reference `sha256:<hex>`: set by
        /// `isotest run`'s prepare stage (cargo, go, or a `build`), not written by hand.
        artifact: String,
    }
}

/// A suite's own build (a Maven, Gradle or CMake build): what to run, what it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// The build's argv, run in the workspace (with `sh -c` for a shell line).
    pub command: Vec<String>,
    /// Workspace-relative directories it writes that the tests need (`target`, `build`).
    pub outputs: Vec<String>,
}

impl Layer for BuildSpec {
    fn expanded_bytes(&self) -> usize {
        self.command
            .expanded_bytes()
            .saturating_add(self.outputs.expanded_bytes())
    }
}

/// Every other spelling a per-test field is accepted under, and the field it stands for.
pub(crate) const ALIASES: &[(&str, &str)] = &[("test_code", "code"), ("env_vars", "env")];

/// Keys of the HopX cookbook's test configs (and of the functions that take them) that
/// isotest spells otherwise or does not have: an unknown-field error on one of them ends
/// with what to write instead.
const HINTS: &[(&str, &str)] = &[
    (
        "name",
        "a name belongs to the suite and to each [[tests]] entry; [defaults] holds what every test shares, and a [[discover]] entry names its tests after the ids it finds (see `prefix`)",
    ),
    (
        "language",
        "isotest runs `code` by its `framework`: `pytest` or `unittest` for Python, `command` for a /bin/sh script",
    ),
    ("test_framework", "write `framework`"),
    ("test_name", "write `name`"),
    (
        "timeout_seconds",
        "write `timeout` (a number of seconds, or a duration like \"30s\")",
    ),
    (
        "template",
        "write `environment`: the name of a root file system the workers offer",
    ),
    (
        "api_key",
        "the API token is not part of the manifest: give `isotest run --token` or ISOTEST_TOKEN",
    ),
    (
        "max_workers",
        "how many tests run at once is the worker's `--concurrency`, not part of the manifest",
    ),
];

/// serde's `unknown field `KEY`, expected …` with the hint for `KEY`, if it has one.
pub(crate) fn with_hint(message: String) -> String {
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match key.and_then(|k| HINTS.iter().find(|(key, _)| *key == k)) {
        Some((_, hint)) => format!("{message}; {hint}"),
        None => message,
    }
}

/// Reads `timeout` as written: a duration string, or a whole number of seconds (which
/// the duration parser reads the same way once written as a string).
fn duration_or_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration like \"30s\", or a whole number of seconds")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(v) => Ok(Some(v.to_string())),
                Err(_) => Err(E::invalid_value(
                    serde::de::Unexpected::Signed(v),
                    &"a whole number of seconds",
                )),
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// How a test's own value of a field and the `[defaults]` value combine, and what the
/// result weighs in the expanded suite. A field's type implements it once; the default
/// methods take the test's own value where it has one.
pub(crate) trait Layer: Clone {
    /// The bytes a value adds to a test's expanded size ([`ITEM_BYTES`] per item).
    fn expanded_bytes(&self) -> usize;

    /// The value the test ends up with.
    fn layer(own: Option<&Self>, defaults: Option<&Self>) -> Option<Self> {
        own.or(defaults).cloned()
    }

    /// [`Layer::expanded_bytes`] of [`Layer::layer`], without building it;
    /// `defaults_bytes` is the defaults' own, counted once for every test (a value that
    /// replaces the default needs no more).
    fn layered_bytes(own: Option<&Self>, _defaults: Option<&Self>, defaults_bytes: usize) -> usize {
        own.map_or(defaults_bytes, Self::expanded_bytes)
    }
}

impl Layer for String {
    fn expanded_bytes(&self) -> usize {
        ITEM_BYTES.saturating_add(json_len(self))
    }
}

impl Layer for u32 {
    fn expanded_bytes(&self) -> usize {
        0
    }
}

impl Layer for Vec<String> {
    fn expanded_bytes(&self) -> usize {
        self.iter()
            .map(Layer::expanded_bytes)
            .fold(0, usize::saturating_add)
    }
}

impl Layer for Vec<FileSpec> {
    fn expanded_bytes(&self) -> usize {
        self.iter()
            .map(|f| {
                f.path
                    .expanded_bytes()
                    .saturating_add(f.content.expanded_bytes())
            })
            .fold(0, usize::saturating_add)
    }
}

/// `env` merges key by key: a test's own variables win over the defaults'.
impl Layer for BTreeMap<String, String> {
    fn expanded_bytes(&self) -> usize {
        entries_bytes(self.iter())
    }

    fn layer(own: Option<&Self>, defaults: Option<&Self>) -> Option<Self> {
        match (own, defaults) {
            (None, None) => None,
            (own, defaults) => Some(
                merged_env(own, defaults)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }
    }

    fn layered_bytes(own: Option<&Self>, defaults: Option<&Self>, defaults_bytes: usize) -> usize {
        // The test's own variables, and the defaults' but those it sets itself.
        let Some(own) = own else {
            return defaults_bytes;
        };
        let overridden = own
            .keys()
            .filter_map(|k| defaults.and_then(|d| d.get_key_value(k)))
            .map(entry_bytes)
            .fold(0, usize::saturating_add);
        own.expanded_bytes()
            .saturating_add(defaults_bytes.saturating_sub(overridden))
    }
}

/// One variable's weight: its name as a string, its value's JSON bytes.
fn entry_bytes((key, value): (&String, &String)) -> usize {
    key.expanded_bytes().saturating_add(json_len(value))
}

fn entries_bytes<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> usize {
    entries.map(entry_bytes).fold(0, usize::saturating_add)
}

/// The bytes of `text` as a JSON string on the wire, quotes included: a control
/// character takes up to six (`\u0001`), so a value cannot grow past its count there.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .fold(2, usize::saturating_add)
}

/// The variables a test ends up with, borrowed: its own, then those of `[defaults]` it
/// does not set, each in key order.
pub(crate) fn merged_env<'a>(
    own: Option<&'a BTreeMap<String, String>>,
    defaults: Option<&'a BTreeMap<String, String>>,
) -> impl Iterator<Item = (&'a String, &'a String)> {
    let inherited = defaults
        .into_iter()
        .flatten()
        .filter(move |(k, _)| !own.is_some_and(|own| own.contains_key(*k)));
    own.into_iter().flatten().chain(inherited)
}

/// A test name for a discovered id: the prefix, then the id as its framework gives it
/// (`tests/test_a.py::test_b[x/y]`), so that a user finds the id they know in every report
/// and `--only` takes it back; only control characters, which no name may hold, are dropped.
pub fn discovered_name(prefix: &str, id: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + id.len());
    name.push_str(prefix);
    name.extend(id.chars().filter(|c| !c.is_control()));
    name
}
