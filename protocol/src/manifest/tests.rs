//! The manifest's unit tests: good and bad manifests through parsing, validation and
//! the TOML line locator.

use std::collections::{BTreeMap, BTreeSet};

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
    let json_suite = Manifest::load(&json, Format::Json, Some("suite.json")).expect("valid json");
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
            "control character in name",
            "name = \"s\"\n[[tests]]\nname = \"a\\u0007b\"\ncommand = [\"true\"]\n",
            "names may not contain control characters",
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
    assert_eq!(
        test.name, "py:tests/test_a.py::test_b[x/y]",
        "a discovered test keeps the id its framework gives it"
    );
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

/// A test config of the HopX cookbook, keys as it writes them: `test_code`, `env_vars`
/// and a `timeout` in seconds are taken as `code`, `env` and `timeout`.
#[test]
fn the_cookbooks_spellings_are_taken() {
    let cookbook = r#"{
  "name": "cookbook",
  "defaults": {"env_vars": {"SHARED": "1"}},
  "tests": [
    {
      "name": "test_math",
      "test_code": "import unittest\n\nclass TestMath(unittest.TestCase):\n    def test_addition(self):\n        self.assertEqual(1 + 1, 2)\n",
      "framework": "unittest",
      "setup": "true",
      "timeout": 30,
      "env_vars": {"TEST_MODE": "true"},
      "files": [{"path": "test_utils.py", "content": "def helper(): return 'helper'"}]
    }
  ]
}"#;
    let suite = Manifest::load(cookbook, Format::Json, Some("c.json")).expect("valid");
    let test = &suite.tests[0];
    assert!(matches!(&test.body, TestBody::Code(code) if code.starts_with("import unittest")));
    assert_eq!(test.timeout_ms, 30_000);
    assert_eq!(test.env.get("TEST_MODE").map(String::as_str), Some("true"));
    assert_eq!(test.env.get("SHARED").map(String::as_str), Some("1"));

    // The same in TOML, and it reads back under isotest's own names.
    let toml = "name = \"cookbook\"\n[[tests]]\nname = \"a\"\ntest_code = \"exit 0\"\ntimeout = 30\nenv_vars = { TEST_MODE = \"true\" }\n";
    let manifest = Manifest::parse(toml, Format::Toml, None).expect("parses");
    assert_eq!(manifest.tests[0].code.as_deref(), Some("exit 0"));
    assert_eq!(manifest.tests[0].timeout.as_deref(), Some("30"));
    let json = serde_json::to_value(&manifest).expect("serializes");
    assert_eq!(json["tests"][0]["env"]["TEST_MODE"], "true");
    assert!(json["tests"][0].get("env_vars").is_none());

    // An error in an aliased field points at the line it is written on.
    let err = load("name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nenv_vars = { \"A-B\" = \"1\" }\n")
        .expect_err("bad key");
    assert_eq!(err.field.as_deref(), Some("tests[0].env"), "{err}");
    assert_eq!(err.line, Some(5), "{err}");
}

/// Each cookbook key isotest spells otherwise, or has not, and what the refusal says to
/// write instead; the line is still the key's.
#[test]
fn other_cookbook_keys_are_refused_with_what_to_write() {
    let cases = [
        (
            "[defaults]\nname = \"x\"\n",
            "name",
            "a name belongs to the suite and to each [[tests]] entry",
        ),
        (
            "[[tests]]\nname = \"a\"\nlanguage = \"python\"\n",
            "language",
            "`pytest` or `unittest` for Python",
        ),
        (
            "[[tests]]\nname = \"a\"\ntest_framework = \"pytest\"\n",
            "test_framework",
            "write `framework`",
        ),
        (
            "[[tests]]\nname = \"a\"\ntest_name = \"b\"\n",
            "test_name",
            "write `name`",
        ),
        (
            "[[tests]]\nname = \"a\"\ntimeout_seconds = 5\n",
            "timeout_seconds",
            "write `timeout`",
        ),
        (
            "[[tests]]\nname = \"a\"\ntemplate = \"code-interpreter\"\n",
            "template",
            "write `environment`",
        ),
        ("api_key = \"k\"\n", "api_key", "--token"),
        (
            "[[tests]]\nname = \"a\"\nmax_workers = 5\n",
            "max_workers",
            "--concurrency",
        ),
    ];
    for (body, key, hint) in cases {
        let text = format!("name = \"s\"\n{body}");
        let err = load(&text).expect_err(key);
        let message = err.to_string();
        assert!(
            message.contains(&format!("field `{key}`")),
            "{key}: {message}"
        );
        assert!(message.contains(hint), "{key}: {message}");
        let line = err.line.expect("a line");
        assert!(
            text.lines().nth(line - 1).is_some_and(|l| l.contains(key)),
            "{key}: line {line} of\n{text}"
        );
        // JSON says the same.
        let toml: toml::Value = match toml::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let json = serde_json::to_string(&toml).expect("serializes");
        let err = Manifest::load(&json, Format::Json, None).expect_err(key);
        assert!(err.to_string().contains(hint), "{key} as JSON: {err}");
    }
    // A field and its alias are one field, given twice.
    let err = load("name = \"s\"\n[[tests]]\nname = \"a\"\nenv = {}\nenv_vars = {}\n")
        .expect_err("twice");
    assert!(err.to_string().contains("duplicate field `env`"), "{err}");
    let err = load("name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nfiles = [{ path = \"/workspace/test_utils.py\", content = \"\" }]\n")
        .expect_err("absolute");
    assert!(
        err.to_string().ends_with("`/workspace/test_utils.py` is absolute; give a path relative to the workspace, which tests see as /workspace (`test_utils.py`)"),
        "{err}"
    );
}

/// A manifest's parts, checked against what `execve` takes: each at the limit passes,
/// a byte over is refused naming the field and the limit.
#[test]
fn what_execve_would_refuse_is_refused_here() {
    let longest = MAX_ARG_BYTES - 1;
    type Set = fn(&mut Manifest, usize);
    let cases: [(&str, &str, Set); 5] = [
        // `KEY=value` is one string.
        (
            "tests[0].env.BIG",
            "more than the limit of 131067 (execve takes a string of at most 131072 bytes, `BIG=` and the closing NUL included)",
            |m, n| {
                m.defaults.env = Some([("BIG".to_owned(), "x".repeat(n - 4))].into());
            },
        ),
        (
            "tests[0].command[1]",
            "more than the limit of 131071 (execve takes a string of at most 131072 bytes, the closing NUL included)",
            |m, n| {
                m.tests[0].command = Some(vec!["echo".into(), "x".repeat(n)]);
            },
        ),
        ("tests[0].setup", "more than the limit of 131071", |m, n| {
            m.tests[0].setup = Some("x".repeat(n));
        }),
        (
            "tests[0].teardown",
            "more than the limit of 131071",
            |m, n| {
                m.defaults.teardown = Some("x".repeat(n));
            },
        ),
        ("tests[0].env.A", "more than the limit of 131069", |m, n| {
            m.tests[0].env = Some([("A".to_owned(), "x".repeat(n - 2))].into());
        }),
    ];
    for (field, message, set) in cases {
        let mut m = one_test();
        set(&mut m, longest);
        m.validate()
            .unwrap_or_else(|e| panic!("{field} at the limit: {e}"));
        set(&mut m, longest + 1);
        let err = m.validate().expect_err(field);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.message.contains(message), "{field}: {err}");
    }

    // Strings each under the limit, over execve's total: the largest part is named.
    let mut m = one_test();
    let arg = "x".repeat(100 * 1024);
    m.tests[0].command = Some(vec![arg.clone(); 10]);
    m.tests[0].env = Some([("A".to_owned(), arg.clone())].into());
    let err = m.validate().expect_err("over the total");
    assert_eq!(err.field.as_deref(), Some("tests[0].command"), "{err}");
    assert!(
        err.message.starts_with("the test's arguments and environment take 1126501 bytes of execve (env 102411, command 1024090), more than the limit of 1048576"),
        "{err}"
    );
    m.tests[0].command = Some(vec![arg; 8]);
    m.validate().expect("under the total");
}

fn one_test() -> Manifest {
    Manifest {
        name: "s".into(),
        tests: vec![TestEntry {
            name: "a".into(),
            command: Some(vec!["true".into()]),
            ..TestEntry::default()
        }],
        ..Manifest::default()
    }
}

/// The expanded size, counted without applying `[defaults]`, is what the tests weigh
/// once it is applied: the same manifest with every test's fields written out in full
/// and no `[defaults]` weighs the same.
#[test]
fn the_expanded_size_is_counted_as_if_expanded() {
    let env = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    };
    let defaults = TestFields {
        env: env(&[("A", "1"), ("B", "a longer value\n\u{1}")]),
        setup: Some("make".into()),
        files: Some(vec![FileSpec {
            path: "f".into(),
            content: "x".repeat(100),
        }]),
        timeout: Some("5s".into()),
        ..TestFields::default()
    };
    let tests = vec![
        TestEntry {
            name: "inherits everything".into(),
            command: Some(vec!["true".into()]),
            ..TestEntry::default()
        },
        TestEntry {
            name: "overrides B, adds C".into(),
            code: Some("exit 0".into()),
            env: env(&[("B", "b"), ("C", "c")]),
            ..TestEntry::default()
        },
        TestEntry {
            name: "own setup, no files".into(),
            command: Some(vec!["true".into()]),
            setup: Some("other".into()),
            files: Some(Vec::new()),
            env: env(&[]),
            ..TestEntry::default()
        },
    ];
    let m = Manifest {
        name: "s".into(),
        defaults: defaults.clone(),
        tests: tests.clone(),
        ..Manifest::default()
    };
    let written_out = Manifest {
        tests: tests
            .iter()
            .map(|t| {
                let mut fields = serde_json::to_value(t.merged(&defaults)).expect("serializes");
                fields["name"] = t.name.clone().into();
                serde_json::from_value(fields).expect("a test entry")
            })
            .collect(),
        defaults: TestFields::default(),
        ..m.clone()
    };
    assert_eq!(m.expanded_bytes(), written_out.expanded_bytes());
    assert_eq!(m.validate(), written_out.validate());
    // Each of the three tests weighs at least its fixed part, and the first inherits the
    // 100-byte file the third does not.
    assert!(m.expanded_bytes() > 3 * TEST_BYTES + 100);
}

/// A caller's own limits replace the defaults: tests per suite, manifest size, names.
#[test]
fn a_callers_limits_are_the_ones_checked() {
    let text = "name = \"s\"\n[[tests]]\nname = \"abc\"\ncommand = [\"true\"]\n[[tests]]\nname = \"b\"\ncommand = [\"true\"]\n";
    let m = Manifest::parse(text, Format::Toml, None).expect("parses");
    let tight = |f: fn(&mut Limits)| {
        let mut limits = Limits::default();
        f(&mut limits);
        limits
    };
    let err = m
        .validate_with(&tight(|l| l.tests = 1))
        .expect_err("two tests");
    assert_eq!(
        err.to_string(),
        "tests: the suite has 2 tests, more than the limit of 1"
    );
    let err = m
        .validate_with(&tight(|l| l.name_bytes = 2))
        .expect_err("long name");
    assert_eq!(
        err.to_string(),
        "tests[0].name: is 3 bytes, more than the limit of 2"
    );
    let err = Manifest::parse_with(
        text,
        Format::Toml,
        Some("s.toml"),
        &tight(|l| {
            l.manifest_bytes = 10;
        }),
    )
    .expect_err("long text");
    assert_eq!(
        err.to_string(),
        format!(
            "s.toml: manifest is {} bytes, more than the limit of 10",
            text.len()
        )
    );
    assert_eq!(Limits::default(), Limits::DEFAULT);
    assert_eq!(m.validate_with(&Limits::DEFAULT), m.validate());
}

/// Adding a per-test field is one line in `raw.rs`'s list: the three structs, the
/// merging over `[defaults]`, the expanded size and discovered tests all follow from
/// it. This lists what follows, so that a field missing from one of them fails here.
#[test]
fn every_per_test_field_is_in_every_place() {
    let fields: BTreeSet<&str> = TEST_FIELDS.iter().copied().collect();
    assert_eq!(fields.len(), TEST_FIELDS.len(), "no field twice");
    // `[defaults]` and `[[tests]]` take every field (`[[tests]]` with its name).
    let defaults_keys = |v: serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    let full = TestFields {
        code: Some("c".into()),
        command: Some(vec!["c".into()]),
        framework: Some("pytest".into()),
        test_id: Some("t".into()),
        junit_path: Some("j".into()),
        timeout: Some("1s".into()),
        env: Some([("A".to_owned(), "1".to_owned())].into()),
        files: Some(vec![FileSpec {
            path: "p".into(),
            content: "c".into(),
        }]),
        setup: Some("s".into()),
        teardown: Some("t".into()),
        retries: Some(1),
        environment: Some("e".into()),
        build: Some(crate::manifest::BuildSpec {
            command: vec!["make".into()],
            outputs: vec!["out".into()],
        }),
        artifact: Some(format!("sha256:{}", "a".repeat(64))),
    };
    let keys = defaults_keys(serde_json::to_value(&full).expect("serializes"));
    assert_eq!(
        keys.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        fields,
        "a field of TestFields is missing from TEST_FIELDS (or this test)"
    );
    // A test with no field of its own ends up with every field of `[defaults]`.
    let bare = TestEntry {
        name: "a".into(),
        ..TestEntry::default()
    };
    assert_eq!(bare.merged(&full), full);
    // A discovered test takes every field of its entry but what it runs.
    let entry: DiscoverEntry = serde_json::from_value(serde_json::json!({
        "framework": "pytest",
        "timeout": "1s",
        "env": {"A": "1"},
        "files": [{"path": "p", "content": "c"}],
        "setup": "s",
        "teardown": "t",
        "retries": 1,
        "environment": "e",
        "build": {"command": ["make"], "outputs": ["out"]},
        "artifact": format!("sha256:{}", "a".repeat(64)),
    }))
    .expect("a discover entry takes every shared field");
    let test = serde_json::to_value(entry.test_entry("t")).expect("serializes");
    let mut expected = keys.clone();
    for runs in ["code", "command", "junit_path"] {
        expected.remove(runs);
    }
    expected.insert("name".into());
    assert_eq!(defaults_keys(test), expected);
}

#[test]
fn meta_is_kept_and_checked() {
    let suite = load(
        "name = \"s\"\n[meta]\ncommit = \"abc\"\nrepository = \"acme/shop\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
    )
    .expect("valid meta");
    assert_eq!(suite.meta.get("commit").map(String::as_str), Some("abc"));
    assert_eq!(suite.meta.len(), 2);
    let cases = [
        ("[meta]\n\"Bad Key\" = \"x\"\n", "key `Bad Key` is invalid"),
        ("[meta]\nnote = \"a\\nb\"\n", "meta.note: must be at most"),
    ];
    for (meta, fragment) in cases {
        let text = format!("name = \"s\"\n{meta}[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n");
        let err = load(&text).expect_err(meta);
        assert!(err.to_string().contains(fragment), "{meta}: {err}");
    }
    let many: String = (0..=crate::manifest::MAX_META_ENTRIES)
        .map(|i| format!("k{i} = \"v\"\n"))
        .collect();
    let text =
        format!("name = \"s\"\n[meta]\n{many}[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n");
    let err = load(&text).expect_err("too many");
    assert!(err.to_string().contains("at most 32 are allowed"), "{err}");
}
