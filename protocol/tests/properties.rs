//! Property tests of the manifest parser: no input makes it panic, every valid manifest
//! survives TOML, validation and JSON unchanged, and every refusal says what and where.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use isotest_protocol::manifest::{
    FileSpec, FlakyResult, Format, Framework, Limits, MAX_ARG_BYTES, MAX_MANIFEST_BYTES,
    MAX_NAME_BYTES, MAX_RETRIES, MAX_TEXT_BYTES, MAX_TIMEOUT, Manifest, ManifestError, Suite,
    TEST_FIELDS, TestEntry, TestFields,
};
use isotest_protocol::message::{TestMessage, outcome_digest};
use isotest_protocol::{SCHEMA_VERSION, duration};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

/// Lines and pieces of real manifests, recombined into inputs that are nearly valid.
const TOML_FRAGMENTS: &[&str] = &[
    "name = \"demo\"",
    "name = \"a\"",
    "name = \"\"",
    "name = \"a/b\"",
    "name = 7",
    "workspace = \".\"",
    "workspace = \" \"",
    "network = true",
    "deadline = \"10m\"",
    "deadline = \"0s\"",
    "flaky_result = \"fail\"",
    "flaky_result = \"maybe\"",
    "[defaults]",
    "[[tests]]",
    "[[discover]]",
    "[tests]",
    "[defaults.env]",
    "[[tests]",
    "framework = \"pytest\"",
    "framework = \"junit\"",
    "framework = \"go\"",
    "framework = \"nose\"",
    "timeout = \"30s\"",
    "timeout = \"1h30m\"",
    "timeout = \"25h\"",
    "timeout = \"soon\"",
    "timeout = \"99999999999999999999h\"",
    "timeout = 5",
    "retries = 2",
    "retries = 99",
    "retries = -1",
    "retries = 4294967296",
    "code = \"def test_a():\\n    assert True\\n\"",
    "code = \"\\u0000\"",
    "code = '''",
    "'''",
    "code = \"\"\"",
    "\"\"\"",
    "command = [\"true\"]",
    "command = []",
    "command = [\"\"]",
    "command = \"true\"",
    "command = [\"sh\", \"-c\", \"exit 1\"]",
    "test_id = \"tests/test_a.py::test_b\"",
    "test_id = \"--pdb\"",
    "test_id = \"\"",
    "junit_path = \"out/report.xml\"",
    "junit_path = \"../r.xml\"",
    "env = { A = \"1\" }",
    "env = { \"A-B\" = \"1\" }",
    "env = { \"1A\" = \"x\", B = \"\\u0000\" }",
    "env = {",
    "files = [{ path = \"data/x.txt\", content = \"x\" }]",
    "files = [{ path = \"../x\", content = \"\" }]",
    "files = [{ path = \"/etc/x\", content = \"\" }]",
    "files = [{ path = \".\", content = \"\" }]",
    "files = [{ path = \"a\" }]",
    "setup = \"pip install -e .\"",
    "teardown = \"rm -rf /tmp/x\"",
    "environment = \"python-3.12\"",
    "environment = \"bad env!\"",
    "paths = [\"tests\"]",
    "prefix = \"py:\"",
    "filter = \"not slow\"",
    "timout = \"3s\"",
    "= \"x\"",
    "\"name\" = \"quoted\"",
    "# a comment",
    "",
    "\u{feff}",
    "name = \"\u{2028}\u{0085}\"",
    "name = \"\\\\\"",
];

const JSON_FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"name\": \"demo\"",
    "\"name\": \"a/b\"",
    "\"name\": null",
    "\"name\": \"\\u0000\"",
    "\"tests\": [",
    "\"tests\": []",
    "\"tests\": {}",
    "\"defaults\": {",
    "\"discover\": [{\"framework\": \"pytest\"}]",
    "\"command\": [\"true\"]",
    "\"command\": []",
    "\"code\": \"exit 0\"",
    "\"code\": \"\\ud800\"",
    "\"framework\": \"junit\"",
    "\"framework\": \"nose\"",
    "\"junit_path\": \"r.xml\"",
    "\"timeout\": \"30s\"",
    "\"timeout\": \"soon\"",
    "\"timeout\": 30",
    "\"retries\": 3",
    "\"retries\": 1e400",
    "\"retries\": -1",
    "\"env\": {\"A\": \"1\"}",
    "\"env\": {\"A-B\": \"1\"}",
    "\"files\": [{\"path\": \"../x\", \"content\": \"\"}]",
    "\"test_id\": \"-x\"",
    "\"flaky_result\": \"fail\"",
    "\"network\": true",
    "\"deadline\": \"1h\"",
    "\"unknown\": 1",
    "null",
    "1e999999",
    "\"",
    "\\",
    "",
];

/// `cases` cases a property; failures are kept in `proptest-regressions/` (committed) and
/// replayed first on every run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Loads `text` and checks what every outcome must satisfy: no panic (the caller), and an
/// error that says something, in the file it came from, on a line that exists.
fn load_checked(text: &str, format: Format) -> Result<Suite, ManifestError> {
    let result = Manifest::load(text, format, Some("suite"));
    if let Err(err) = &result {
        assert!(!err.message.trim().is_empty(), "empty message: {err:?}");
        assert_eq!(err.origin.as_deref(), Some("suite"), "{err:?}");
        assert!(err.to_string().starts_with("suite"), "{err}");
        if let Some(line) = err.line {
            assert!(line >= 1, "line 0: {err:?}");
            assert!(
                line <= text.split('\n').count(),
                "line {line} past the end of a {}-line text: {err:?}",
                text.split('\n').count()
            );
        }
        if let Some(field) = &err.field {
            assert!(!field.is_empty(), "{err:?}");
        }
    }
    let parsed = Manifest::parse(text, format, None);
    assert_eq!(
        parsed.is_ok(),
        result.is_ok() || result.as_ref().is_err_and(|e| e.field.is_some()),
        "parse and load disagree on syntax: {result:?}"
    );
    result
}

/// Maps bytes to a string that keeps the bytes' variety but stays UTF-8.
fn mutate(text: &str, cut: usize, insert: char, at: usize) -> String {
    let mut out: String = text.to_owned();
    let mut at = at % (out.len() + 1);
    while !out.is_char_boundary(at) {
        at -= 1;
    }
    out.insert(at, insert);
    let mut cut = cut % (out.len() + 1);
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut.max(at));
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = load_checked(&text, Format::Toml);
        let _ = load_checked(&text, Format::Json);
    }

    #[test]
    fn arbitrary_lines_never_panic(text in "(\\PC{0,12}[=\\[\\]{}\"',\\n]){0,24}") {
        let _ = load_checked(&text, Format::Toml);
        let _ = load_checked(&text, Format::Json);
    }

    #[test]
    fn recombined_toml_fragments_never_panic(
        lines in prop::collection::vec(select(TOML_FRAGMENTS), 0..24),
        cut in any::<usize>(),
        insert in any::<char>(),
        at in any::<usize>(),
    ) {
        let text = lines.join("\n");
        let _ = load_checked(&text, Format::Toml);
        let _ = load_checked(&mutate(&text, cut, insert, at), Format::Toml);
    }

    #[test]
    fn recombined_json_fragments_never_panic(
        parts in prop::collection::vec(select(JSON_FRAGMENTS), 0..24),
        cut in any::<usize>(),
        insert in any::<char>(),
        at in any::<usize>(),
    ) {
        let text = parts.join(",\n");
        let _ = load_checked(&text, Format::Json);
        let _ = load_checked(&mutate(&text, cut, insert, at), Format::Json);
    }
}

// ---------------------------------------------------------------------------------------
// Valid manifests, generated.

/// A name as frameworks write ids: any text without a control character, not blank.
fn name() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,24}".prop_filter("blank", |s| {
        !s.trim().is_empty() && s.len() <= MAX_NAME_BYTES
    })
}

fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,40}"
}

fn duration_text() -> impl Strategy<Value = (String, u64)> {
    prop_oneof![
        1u64..=MAX_TIMEOUT.as_millis() as u64,
        (1u64..=24 * 60).prop_map(|m| m * 60_000),
        (1u64..=3600).prop_map(|s| s * 1_000),
    ]
    .prop_map(|ms| (duration::format(Duration::from_millis(ms)), ms))
}

fn env_key() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,8}"
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(env_key(), text(), 0..4)
}

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._ -]{0,7}", 1..4).prop_map(|p| p.join("/"))
}

fn files() -> impl Strategy<Value = Vec<FileSpec>> {
    prop::collection::vec(
        (rel_path(), text()).prop_map(|(path, content)| FileSpec { path, content }),
        0..3,
    )
}

/// What a test runs: its framework, and one of `code`, `command` or `test_id` (+ `junit_path`).
#[derive(Debug, Clone)]
struct Body {
    framework: Option<Framework>,
    code: Option<String>,
    command: Option<Vec<String>>,
    test_id: Option<String>,
    junit_path: Option<String>,
}

fn body() -> impl Strategy<Value = Body> {
    let framework = select(Framework::ALL.to_vec());
    let argv = prop::collection::vec(text(), 0..3).prop_flat_map(|rest| {
        "[^\\x00]{1,12}".prop_map(move |first| {
            let mut argv = vec![first];
            argv.extend(rest.iter().cloned());
            argv
        })
    });
    let test_id = "[^-\\p{Cc}][^\\p{Cc}]{0,30}".prop_filter("blank", |s| !s.trim().is_empty());
    (
        framework,
        prop::option::of(Just(())),
        0..3u8,
        text(),
        argv,
        test_id,
        rel_path(),
    )
        .prop_map(|(framework, explicit, which, code, argv, id, junit_path)| {
            // A test without a framework is a `command` test.
            let framework = if explicit.is_none() && framework == Framework::Command {
                None
            } else {
                Some(framework)
            };
            let fw = framework.unwrap_or(Framework::Command);
            let which = if fw.names_tests() { which } else { which % 2 };
            Body {
                framework,
                code: (which == 0).then_some(code),
                command: (which == 1).then_some(argv),
                test_id: (which == 2).then_some(id),
                junit_path: (fw == Framework::Junit).then_some(junit_path),
            }
        })
}

/// The fields a test entry may set beside its body, each present or not.
#[derive(Debug, Clone, Default)]
struct Extras {
    timeout: Option<(String, u64)>,
    env: Option<BTreeMap<String, String>>,
    files: Option<Vec<FileSpec>>,
    setup: Option<String>,
    teardown: Option<String>,
    retries: Option<u32>,
    environment: Option<String>,
}

fn extras() -> impl Strategy<Value = Extras> {
    (
        prop::option::of(duration_text()),
        prop::option::of(env()),
        prop::option::of(files()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(0..=MAX_RETRIES),
        prop::option::of("[A-Za-z0-9._-]{1,20}"),
    )
        .prop_map(
            |(timeout, env, files, setup, teardown, retries, environment)| Extras {
                timeout,
                env,
                files,
                setup,
                teardown,
                retries,
                environment,
            },
        )
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let tests = prop::collection::btree_set(name(), 1..5).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            prop::collection::vec(body(), n),
            prop::collection::vec(extras(), n),
        )
    });
    (
        name(),
        prop::option::of("[^\\p{Cc}]{0,10}[a-z][^\\p{Cc}]{0,10}"),
        any::<bool>(),
        prop::option::of(duration_text()),
        any::<bool>(),
        extras(),
        tests,
    )
        .prop_map(
            |(name, workspace, network, deadline, fail, defaults, (names, bodies, extras))| {
                let tests = names
                    .into_iter()
                    .zip(bodies)
                    .zip(extras)
                    .map(|((name, body), x)| TestEntry {
                        name,
                        code: body.code,
                        command: body.command,
                        framework: body.framework.map(|f| f.as_str().to_owned()),
                        timeout: x.timeout.map(|t| t.0),
                        env: x.env,
                        files: x.files,
                        setup: x.setup,
                        teardown: x.teardown,
                        retries: x.retries,
                        environment: x.environment,
                        test_id: body.test_id,
                        junit_path: body.junit_path,
                        build: None,
                        artifact: None,
                    })
                    .collect();
                Manifest {
                    name,
                    workspace,
                    workspace_exclude: Vec::new(),
                    workspace_include: Vec::new(),
                    network,
                    deadline: deadline.map(|d| d.0),
                    flaky_result: if fail {
                        FlakyResult::Fail
                    } else {
                        FlakyResult::Pass
                    },
                    defaults: TestFields {
                        timeout: defaults.timeout.map(|t| t.0),
                        env: defaults.env,
                        files: defaults.files,
                        setup: defaults.setup,
                        teardown: defaults.teardown,
                        retries: defaults.retries,
                        environment: defaults.environment,
                        ..TestFields::default()
                    },
                    tests,
                    discover: Vec::new(),
                    callback_url: None,
                    warm: None,
                    meta: Default::default(),
                    priority: None,
                    cache: None,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// TOML in the usual layout: top-level keys, `[defaults]`, then one `[[tests]]` per test,
// one `key = value` a line, strings on one line.

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

fn toml_env(env: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

fn toml_files(files: &[FileSpec]) -> String {
    let items: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "{{ path = {}, content = {} }}",
                toml_str(&f.path),
                toml_str(&f.content)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn write_fields(out: &mut String, f: &TestFields) {
    let mut line = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value}");
        }
    };
    line("framework", f.framework.as_deref().map(toml_str));
    line("code", f.code.as_deref().map(toml_str));
    line("command", f.command.as_deref().map(toml_list));
    line("test_id", f.test_id.as_deref().map(toml_str));
    line("junit_path", f.junit_path.as_deref().map(toml_str));
    line("timeout", f.timeout.as_deref().map(toml_str));
    line("env", f.env.as_ref().map(toml_env));
    line("files", f.files.as_deref().map(toml_files));
    line("setup", f.setup.as_deref().map(toml_str));
    line("teardown", f.teardown.as_deref().map(toml_str));
    line("retries", f.retries.map(|r| r.to_string()));
    line("environment", f.environment.as_deref().map(toml_str));
}

fn to_toml(m: &Manifest) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name = {}", toml_str(&m.name));
    if let Some(ws) = &m.workspace {
        let _ = writeln!(out, "workspace = {}", toml_str(ws));
    }
    if m.network {
        out.push_str("network = true\n");
    }
    if let Some(d) = &m.deadline {
        let _ = writeln!(out, "deadline = {}", toml_str(d));
    }
    if m.flaky_result == FlakyResult::Fail {
        out.push_str("flaky_result = \"fail\"\n");
    }
    out.push_str("\n[defaults]\n");
    write_fields(&mut out, &m.defaults);
    for t in &m.tests {
        out.push_str("\n[[tests]]\n");
        let _ = writeln!(out, "name = {}", toml_str(&t.name));
        write_fields(
            &mut out,
            &TestFields {
                code: t.code.clone(),
                command: t.command.clone(),
                framework: t.framework.clone(),
                timeout: t.timeout.clone(),
                env: t.env.clone(),
                files: t.files.clone(),
                setup: t.setup.clone(),
                teardown: t.teardown.clone(),
                retries: t.retries,
                environment: t.environment.clone(),
                test_id: t.test_id.clone(),
                junit_path: t.junit_path.clone(),
                build: t.build.clone(),
                artifact: t.artifact.clone(),
            },
        );
    }
    out
}

fn millis(text: &str) -> u64 {
    duration::parse(text)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_manifests_parse_validate_and_round_trip(m in manifest()) {
        let text = to_toml(&m);
        let parsed = Manifest::parse(&text, Format::Toml, None)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &m, "TOML round trip\n{}", text);
        let suite = Manifest::load(&text, Format::Toml, Some("suite.toml"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;

        // What validation resolved, checked against the generator's own choices.
        prop_assert_eq!(&suite.name, &m.name);
        prop_assert_eq!(suite.network, m.network);
        prop_assert_eq!(suite.flaky_result, m.flaky_result);
        prop_assert_eq!(suite.deadline_ms, m.deadline.as_deref().map(millis));
        prop_assert_eq!(suite.tests.len(), m.tests.len());
        for (spec, entry) in suite.tests.iter().zip(&m.tests) {
            prop_assert_eq!(&spec.name, &entry.name);
            let timeout = entry.timeout.as_ref().or(m.defaults.timeout.as_ref());
            prop_assert_eq!(spec.timeout_ms, timeout.map_or(60_000, |t| millis(t)));
            prop_assert_eq!(spec.retries, entry.retries.or(m.defaults.retries).unwrap_or(0));
            let framework = entry.framework.as_deref().unwrap_or("command");
            prop_assert_eq!(spec.framework.as_str(), framework);
            for (k, v) in entry.env.iter().flatten() {
                prop_assert_eq!(spec.env.get(k), Some(v), "own env wins");
            }
            for k in m.defaults.env.iter().flatten().map(|(k, _)| k) {
                prop_assert!(spec.env.contains_key(k), "default env {} kept", k);
            }
        }

        // The same manifest as JSON is the same suite, and so is the suite itself.
        let json = serde_json::to_string(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_json = Manifest::load(&json, Format::Json, Some("suite.json"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
        prop_assert_eq!(&from_json, &suite);
        let wire = serde_json::to_string(&suite).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Suite = serde_json::from_str(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &suite);
    }
}

// ---------------------------------------------------------------------------------------
// The cookbook's spellings, and the expanded size.

proptest! {
    #![proptest_config(config(128))]

    /// `env_vars` and `test_code` (the HopX cookbook's keys) are `env` and `code`.
    #[test]
    fn cookbook_spellings_are_the_same_suite(m in manifest()) {
        let text = to_toml(&m);
        let cookbook: String = text
            .lines()
            .map(|l| match l.split_once(" = ") {
                Some(("env", v)) => format!("env_vars = {v}\n"),
                Some(("code", v)) => format!("test_code = {v}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        let suite = Manifest::load(&text, Format::Toml, Some("s.toml"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let same = Manifest::load(&cookbook, Format::Toml, Some("s.toml"))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{cookbook}")))?;
        prop_assert_eq!(same, suite);
    }

    /// The expanded size decides alone: a suite passes a limit at or above it and is
    /// refused under it, and its test messages on the wire weigh no more than it.
    #[test]
    fn the_expanded_size_is_the_limit_checked(m in manifest(), under in 1usize..4096) {
        let expanded = m.expanded_bytes();
        let at = Limits { expanded_bytes: expanded, ..Limits::default() };
        let suite = m.validate_with(&at).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let below = Limits { expanded_bytes: expanded.saturating_sub(under), ..Limits::default() };
        let err = m.validate_with(&below).expect_err("under the limit");
        prop_assert_eq!(err.field.as_deref(), Some("tests"), "{}", err);
        prop_assert!(err.message.contains("more than the limit"), "{}", err);

        let blob = format!("sha256:{}", "f".repeat(64));
        let wire: usize = suite
            .tests
            .iter()
            .enumerate()
            .map(|(index, test)| {
                TestMessage {
                    schema_version: SCHEMA_VERSION,
                    suite_id: "0190a3b4-1c2d-7e8f-9a0b-1c2d3e4f5a6b".into(),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    attempt: 1,
                    test: test.clone(),
                    workspace: Some(blob.clone()),
                    network: suite.network,
                    warm: suite.warm,
                    digest: outcome_digest(test, Some(&blob), suite.network),
                    published_at_ms: u64::MAX,
                    dispatch: None,
                    cache: None,
                }
                .to_bytes()
                .len()
            })
            .sum();
        prop_assert!(wire <= expanded, "{} bytes on the wire, {} counted", wire, expanded);
    }
}

// ---------------------------------------------------------------------------------------
// docs/openapi.yaml's manifest schema says what the parser does.

/// A validator of the OpenAPI document's `Manifest` schema (JSON Schema 2020-12).
fn openapi_manifest() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let doc: serde_json::Value = serde_yaml_ng::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/openapi.yaml"
        )))
        .expect("docs/openapi.yaml is YAML");
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": "#/components/schemas/Manifest",
            "components": doc["components"],
        });
        jsonschema::validator_for(&schema).expect("the schema is valid")
    })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn every_valid_manifest_fits_the_openapi_schema(m in manifest()) {
        let json = serde_json::to_value(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let errors: Vec<String> = openapi_manifest().iter_errors(&json).map(|e| e.to_string()).collect();
        prop_assert!(errors.is_empty(), "{:?}\n{}", errors, json);
    }
}

/// What the parser refuses for its shape, the schema refuses; the aliases it takes, the
/// schema takes; and the schema lists every per-test field.
#[test]
fn the_openapi_schema_and_the_parser_agree() {
    let test = |extra: &str| {
        format!(r#"{{"name":"s","tests":[{{"name":"a","command":["true"]{extra}}}]}}"#)
    };
    let cases = [
        (r#"{"name":"s","defaults":{"name":"x"},"tests":[{"name":"a","command":["true"]}]}"#.to_owned(), false),
        (r#"{"name":"s","unknown":1,"tests":[{"name":"a","command":["true"]}]}"#.to_owned(), false),
        (test(r#","timout":"3s""#), false),
        (test(r#","files":[{"path":"a","content":"","mode":1}]"#), false),
        (test(r#","retries":-1"#), false),
        (test(r#","env_vars":{"A":"1"}"#), true),
        (test(r#","timeout":30"#), true),
        (r#"{"name":"s","tests":[{"name":"a","test_code":"exit 0"}]}"#.to_owned(), true),
        (r#"{"name":"s","defaults":{"framework":"jest"},"tests":[{"name":"a/b::c[d e]","test_id":"a.test.js"}]}"#.to_owned(), true),
    ];
    for (text, valid) in cases {
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(openapi_manifest().is_valid(&json), valid, "schema: {text}");
        let parsed = Manifest::load(&text, Format::Json, None);
        assert_eq!(parsed.is_ok(), valid, "parser: {text}: {parsed:?}");
    }

    let doc: serde_json::Value = serde_yaml_ng::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/openapi.yaml"
    )))
    .expect("YAML");
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["TestFields"]["properties"]
        .as_object()
        .expect("TestFields has properties")
        .keys()
        .map(String::as_str)
        .collect();
    for field in TEST_FIELDS {
        assert!(
            documented.contains(field),
            "`{field}` is not in docs/openapi.yaml"
        );
    }
    for extra in documented.iter().filter(|f| !TEST_FIELDS.contains(f)) {
        // Only aliases, which the parser takes.
        let text = format!(
            r#"{{"name":"s","defaults":{{"{extra}":{}}},"tests":[{{"name":"a","command":["true"]}}]}}"#,
            if *extra == "env_vars" { "{}" } else { "\"x\"" }
        );
        assert!(
            Manifest::parse(&text, Format::Json, None).is_ok(),
            "`{extra}` is documented but refused"
        );
    }
}

// ---------------------------------------------------------------------------------------
// One fault in an otherwise valid manifest: the error names the field, and in TOML the
// line it reports holds that field's key.

#[derive(Debug, Clone, Copy)]
enum Fault {
    SuiteName,
    Deadline,
    Workspace,
    TestName,
    DuplicateName,
    Framework,
    BothBodies,
    Timeout,
    LongTimeout,
    Retries,
    EnvKey,
    EnvValue,
    FilePath,
    FileContent,
    Setup,
    Environment,
    TestIdOfCommand,
    TestIdOption,
    JunitPathElsewhere,
    EmptyCommand,
    DefaultTimeout,
    DefaultEnvKey,
    DefaultRetries,
}

const FAULTS: &[Fault] = &[
    Fault::SuiteName,
    Fault::Deadline,
    Fault::Workspace,
    Fault::TestName,
    Fault::DuplicateName,
    Fault::Framework,
    Fault::BothBodies,
    Fault::Timeout,
    Fault::LongTimeout,
    Fault::Retries,
    Fault::EnvKey,
    Fault::EnvValue,
    Fault::FilePath,
    Fault::FileContent,
    Fault::Setup,
    Fault::Environment,
    Fault::TestIdOfCommand,
    Fault::TestIdOption,
    Fault::JunitPathElsewhere,
    Fault::EmptyCommand,
    Fault::DefaultTimeout,
    Fault::DefaultEnvKey,
    Fault::DefaultRetries,
];

/// Breaks `m` in one place and returns the field path the error must name.
fn inject(m: &mut Manifest, fault: Fault, pick: usize, bad_name: &str) -> String {
    let n = m.tests.len();
    let i = pick % n;
    let at = format!("tests[{i}]");
    let t = &mut m.tests[i];
    let command_test = |t: &mut TestEntry| {
        t.framework = None;
        t.code = None;
        t.test_id = None;
        t.junit_path = None;
        t.command = Some(vec!["true".into()]);
    };
    match fault {
        Fault::SuiteName => {
            m.name = bad_name.to_owned();
            "name".into()
        }
        Fault::Deadline => {
            m.deadline = Some("soon".into());
            "deadline".into()
        }
        Fault::Workspace => {
            m.workspace = Some("  ".into());
            "workspace".into()
        }
        Fault::TestName => {
            t.name = bad_name.to_owned();
            format!("{at}.name")
        }
        Fault::DuplicateName => {
            if n < 2 {
                let mut twin = m.tests[0].clone();
                twin.name = m.tests[0].name.clone();
                m.tests.push(twin);
                return "tests[1].name".into();
            }
            let j = (i + 1) % n;
            let (first, second) = (i.min(j), i.max(j));
            m.tests[second].name = m.tests[first].name.clone();
            format!("tests[{second}].name")
        }
        Fault::Framework => {
            t.framework = Some("nose".into());
            format!("{at}.framework")
        }
        Fault::BothBodies => {
            command_test(t);
            t.code = Some("exit 0".into());
            at
        }
        Fault::Timeout => {
            t.timeout = Some("soon".into());
            format!("{at}.timeout")
        }
        Fault::LongTimeout => {
            t.timeout = Some("25h".into());
            format!("{at}.timeout")
        }
        Fault::Retries => {
            t.retries = Some(MAX_RETRIES + 1 + pick as u32 % 100);
            format!("{at}.retries")
        }
        Fault::EnvKey => {
            t.env
                .get_or_insert_default()
                .insert("9-lives".into(), "x".into());
            format!("{at}.env")
        }
        Fault::EnvValue => {
            t.env
                .get_or_insert_default()
                .insert("ZZZ".into(), "a\0b".into());
            format!("{at}.env.ZZZ")
        }
        Fault::FilePath => {
            let files = t.files.get_or_insert_default();
            let bad = ["../x", "/etc/passwd", "", "./.", "a/../../b", "a\u{7}b"][pick % 6];
            files.push(FileSpec {
                path: bad.into(),
                content: String::new(),
            });
            format!("{at}.files[{}].path", files.len() - 1)
        }
        Fault::FileContent => {
            let files = t.files.get_or_insert_default();
            files.push(FileSpec {
                path: "ok.txt".into(),
                content: "nul\0".into(),
            });
            format!("{at}.files[{}].content", files.len() - 1)
        }
        Fault::Setup => {
            t.setup = Some("x\0".into());
            format!("{at}.setup")
        }
        Fault::Environment => {
            t.environment = Some("no spaces allowed".into());
            format!("{at}.environment")
        }
        Fault::TestIdOfCommand => {
            command_test(t);
            t.command = None;
            t.test_id = Some("TestA".into());
            format!("{at}.test_id")
        }
        Fault::TestIdOption => {
            command_test(t);
            t.command = None;
            t.framework = Some("pytest".into());
            t.test_id = Some("--pdb".into());
            format!("{at}.test_id")
        }
        Fault::JunitPathElsewhere => {
            command_test(t);
            t.junit_path = Some("r.xml".into());
            format!("{at}.junit_path")
        }
        Fault::EmptyCommand => {
            command_test(t);
            t.command = Some(Vec::new());
            format!("{at}.command")
        }
        Fault::DefaultTimeout => {
            m.defaults.timeout = Some("soon".into());
            m.tests.iter_mut().for_each(|t| t.timeout = None);
            "tests[0].timeout".into()
        }
        Fault::DefaultEnvKey => {
            m.defaults
                .env
                .get_or_insert_default()
                .insert("A B".into(), "x".into());
            "tests[0].env".into()
        }
        Fault::DefaultRetries => {
            m.defaults.retries = Some(MAX_RETRIES + 1);
            m.tests.iter_mut().for_each(|t| t.retries = None);
            "tests[0].retries".into()
        }
    }
}

/// The key a field path is written under in the usual layout: `tests[3].files[0].path` is
/// on a `files = ...` line, `tests[3]` on its `[[tests]]` header.
fn key_of(field: &str) -> &str {
    match field.split_once('.') {
        Some((_, rest)) => rest.split(['.', '[']).next().unwrap_or(rest),
        None => field.split('[').next().unwrap_or(field),
    }
}

fn bad_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_owned()),
        Just("nul\0byte".to_owned()),
        Just("x".repeat(MAX_NAME_BYTES + 1)),
        ("[a-z]{0,5}", "\\p{Cc}", "[a-z]{0,5}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn one_fault_is_named_with_its_line(
        mut m in manifest(),
        fault in select(FAULTS),
        pick in any::<usize>(),
        bad_name in bad_name(),
    ) {
        let field = inject(&mut m, fault, pick, &bad_name);
        let text = to_toml(&m);
        let err = load_checked(&text, Format::Toml).expect_err("a broken manifest is refused");
        prop_assert_eq!(err.field.as_deref(), Some(field.as_str()), "{:?}: {}\n{}", fault, err, text);
        let line = err.line.ok_or_else(|| TestCaseError::fail(format!("no line: {err}\n{text}")))?;
        let written = text.lines().nth(line - 1).unwrap_or_default();
        let key = key_of(&field);
        prop_assert!(
            written.contains(key),
            "{:?}: line {} is `{}`, without `{}`: {}\n{}", fault, line, written, key, err, text
        );

        // The same manifest as JSON is refused for the same field.
        let json = serde_json::to_string(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let err = load_checked(&json, Format::Json).expect_err("refused as JSON too");
        prop_assert_eq!(err.field.as_deref(), Some(field.as_str()), "{}", err);
    }
}

// ---------------------------------------------------------------------------------------
// Bad input at the limits.

/// A test named `name` that runs `true`.
fn true_test(name: &str) -> TestEntry {
    TestEntry {
        name: name.to_owned(),
        command: Some(vec!["true".into()]),
        ..TestEntry::default()
    }
}

#[test]
fn a_manifest_over_the_size_limit_is_refused_before_parsing() {
    let head = "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n";
    let mut text = String::with_capacity(MAX_MANIFEST_BYTES + 1);
    text.push_str(head);
    text.push_str(&"#".repeat(MAX_MANIFEST_BYTES - head.len()));
    assert_eq!(text.len(), MAX_MANIFEST_BYTES);
    Manifest::load(&text, Format::Toml, Some("big.toml")).expect("at the limit is fine");
    text.push('#');
    for format in [Format::Toml, Format::Json] {
        let err = Manifest::load(&text, format, Some("big.toml")).expect_err("over the limit");
        assert!(
            err.message.contains("more than the limit"),
            "{format:?}: {err}"
        );
        assert!(err.to_string().starts_with("big.toml: "), "{err}");
        assert_eq!((err.line, err.field.as_deref()), (None, None), "{err}");
    }
}

#[test]
fn a_field_over_the_text_limit_is_refused() {
    type Set = fn(&mut TestEntry, &str);
    // Text written to a file may take MAX_TEXT_BYTES; a string execve takes (setup and
    // teardown are arguments of /bin/sh) one MAX_ARG_BYTES with its NUL.
    let cases: &[(&str, usize, Set)] = &[
        ("tests[0].code", MAX_TEXT_BYTES, |t, s| {
            t.command = None;
            t.code = Some(s.to_owned());
        }),
        ("tests[0].setup", MAX_ARG_BYTES - 1, |t, s| {
            t.setup = Some(s.to_owned())
        }),
        ("tests[0].teardown", MAX_ARG_BYTES - 1, |t, s| {
            t.teardown = Some(s.to_owned())
        }),
        ("tests[0].files[0].content", MAX_TEXT_BYTES, |t, s| {
            t.files = Some(vec![FileSpec {
                path: "big.txt".into(),
                content: s.to_owned(),
            }]);
        }),
    ];
    for (field, limit, set) in cases {
        let at_limit = "x".repeat(*limit);
        let over = "x".repeat(limit + 1);
        let mut m = Manifest {
            name: "s".into(),
            tests: vec![true_test("a")],
            ..Manifest::default()
        };
        set(&mut m.tests[0], &at_limit);
        m.validate()
            .unwrap_or_else(|e| panic!("{field} at the limit: {e}"));
        set(&mut m.tests[0], &over);
        let text = to_toml(&m);
        let err = Manifest::load(&text, Format::Toml, Some("s.toml")).expect_err(field);
        assert_eq!(err.field.as_deref(), Some(*field), "{err}");
        assert!(err.message.contains("more than the limit"), "{err}");
        let line = err.line.expect("a line");
        assert!(
            text.lines()
                .nth(line - 1)
                .is_some_and(|l| l.starts_with(key_of(field))),
            "{field}: line {line}"
        );
    }
}

#[test]
fn names_with_control_characters_are_refused() {
    let cases = [
        ("a\0b", "a\\u0000b"),
        ("\0", "\\u0000"),
        ("a\u{7}b", "a\\u0007b"),
        ("a\u{85}", "a\\u0085"),
    ];
    for (name, escaped) in cases {
        for (field, text) in [
            (
                "tests[0].name",
                format!("name = \"s\"\n[[tests]]\nname = \"{escaped}\"\ncommand = [\"true\"]\n"),
            ),
            (
                "name",
                format!("name = \"{escaped}\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n"),
            ),
        ] {
            let err = Manifest::load(&text, Format::Toml, Some("s.toml"))
                .expect_err("a name with a control character is refused");
            assert_eq!(err.field.as_deref(), Some(field), "{name:?}: {err}");
            assert!(
                err.message
                    .contains("names may not contain control characters"),
                "{name:?}: {err}"
            );
            assert!(
                !err.to_string().contains(|c: char| c.is_control()),
                "the message escapes the character: {err:?}"
            );
            let expected_line = if field == "name" { 1 } else { 3 };
            assert_eq!(err.line, Some(expected_line), "{name:?}: {err}");

            let mut m = Manifest::parse(&text, Format::Toml, None).expect("parses");
            let json = serde_json::to_string(&m).expect("serializes");
            let err = Manifest::load(&json, Format::Json, None).expect_err("refused as JSON");
            assert_eq!(err.field.as_deref(), Some(field), "{name:?} JSON: {err}");
            m.tests[0].name = "fine".into();
            m.name = "fine".into();
            m.validate().expect("and fine without it");
        }
    }
}

/// A test's name is often its framework's own id: long, with slashes, backslashes (pytest
/// escapes non-ASCII parameters), brackets, `::`, spaces and any Unicode.
#[test]
fn framework_ids_are_names_everywhere_they_are_checked() {
    let url_id = format!(
        "tests/test_urls.py::test_fetch[https://example.com/{}?q=a b&r=é]",
        "a".repeat(240)
    );
    let mut longest = format!("t::{}", "é".repeat((MAX_NAME_BYTES - 4) / 2));
    while longest.len() < MAX_NAME_BYTES {
        longest.push('x');
    }
    let names = [
        url_id.as_str(),
        "tests/test_a.py::TestB::test_c[1-2]",
        "tests\\test_a.py::test_b[\\xe9\\u1234]",
        "example.com/pkg/sub.TestName/sub_test",
        "src/lib.rs - tests::it_works (line 12)",
        "テスト/データ[🦀]",
        " leading and trailing spaces ",
        longest.as_str(),
    ];
    assert_eq!(longest.len(), MAX_NAME_BYTES);
    let tests: Vec<TestEntry> = names.iter().map(|n| true_test(n)).collect();
    let mut m = Manifest {
        name: "suite/with [brackets] :: é".into(),
        tests,
        ..Manifest::default()
    };
    let toml = to_toml(&m);
    let suite = Manifest::load(&toml, Format::Toml, Some("s.toml")).expect("valid TOML");
    let got: Vec<&str> = suite.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(got, names);
    let json = serde_json::to_string(&m).expect("serializes");
    let from_json = Manifest::load(&json, Format::Json, Some("s.json")).expect("valid JSON");
    assert_eq!(from_json, suite);

    // Duplicates are still found, and a later field's error still finds its line.
    for (i, name) in names.iter().enumerate().skip(1) {
        let mut twin = m.clone();
        twin.tests[0].name = (*name).to_owned();
        let err = twin.validate().expect_err("duplicate");
        assert_eq!(err.field, Some(format!("tests[{i}].name")), "{err}");
    }
    m.tests[5].timeout = Some("soon".into());
    let toml = to_toml(&m);
    let err = Manifest::load(&toml, Format::Toml, Some("s.toml")).expect_err("bad timeout");
    assert_eq!(err.field.as_deref(), Some("tests[5].timeout"), "{err}");
    let line = err.line.expect("a line");
    assert!(
        toml.lines()
            .nth(line - 1)
            .is_some_and(|l| l.starts_with("timeout")),
        "{err}\n{toml}"
    );

    // One byte over the limit is refused, naming the limit.
    m.tests[5].timeout = None;
    m.tests[2].name = format!("{longest}x");
    let err = m.validate().expect_err("too long");
    assert_eq!(err.field.as_deref(), Some("tests[2].name"), "{err}");
    assert!(
        err.message
            .contains(&format!("more than the limit of {MAX_NAME_BYTES}")),
        "{err}"
    );
}

#[test]
fn duplicate_names_are_told_apart_exactly() {
    // Names that differ only in case or trailing space are different tests; equal ones clash.
    let mut names = BTreeSet::new();
    for n in ["a", "A", "a ", " a"] {
        names.insert(n);
    }
    let tests = names.iter().map(|n| true_test(n)).collect();
    let m = Manifest {
        name: "s".into(),
        tests,
        ..Manifest::default()
    };
    assert_eq!(m.validate().expect("distinct").tests.len(), 4);
}
