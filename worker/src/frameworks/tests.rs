//! Tests of what every framework shares: each adapter's plan of a test, and the verdict
//! [`super::judge`] gives each combination of stage exits and report.

use super::*;
use isotest_protocol::manifest::{FileSpec, TestBody};

pub(crate) fn spec(framework: Framework, body: TestBody) -> TestSpec {
    TestSpec {
        name: "t".into(),
        body,
        framework,
        timeout_ms: 1_000,
        env: BTreeMap::from([("MINE".to_owned(), "1".to_owned())]),
        files: vec![FileSpec {
            path: "data/x.txt".into(),
            content: "x".into(),
        }],
        setup: None,
        teardown: None,
        retries: 0,
        environment: None,
        junit_path: None,
        build: None,
        artifact: None,
    }
}

pub(crate) fn tools() -> Toolchain {
    Toolchain {
        python: "/usr/bin/python3".into(),
        node: "/usr/bin/node".into(),
        go: "/usr/bin/go".into(),
        cargo: "/usr/bin/cargo".into(),
        jest: "/usr/lib/node_modules/jest/bin/jest.js".into(),
    }
}

#[test]
fn jest_runs_one_file_and_reports_json() {
    let p = plan(
        &spec(Framework::Jest, TestBody::TestId("test/a.test.js".into())),
        &tools(),
    );
    assert_eq!(
        p.command[..2],
        ["/usr/bin/node", "/usr/lib/node_modules/jest/bin/jest.js"]
    );
    assert!(p.command.contains(&"--runInBand".to_owned()));
    assert!(
        p.command
            .contains(&format!("--outputFile=/workspace/{}", jest::JEST_JSON_PATH))
    );
    assert_eq!(
        p.command[p.command.len() - 2..],
        ["--runTestsByPath", "test/a.test.js"]
    );
    assert_eq!(p.collect, [jest::JEST_JSON_PATH]);
    assert!(p.files.iter().any(|(path, _)| path == ".isotest/.keep"));
}

#[test]
fn pytest_code_is_written_and_reported_as_junit() {
    let p = plan(
        &spec(
            Framework::Pytest,
            TestBody::Code("def test_a(): pass".into()),
        ),
        &tools(),
    );
    assert_eq!(p.command[..3], ["/usr/bin/python3", "-m", "pytest"]);
    assert!(
        p.command
            .contains(&format!("--junitxml=/workspace/{JUNIT_PATH}"))
    );
    assert_eq!(
        p.command.last().map(String::as_str),
        Some(pytest::PYTHON_CODE_FILE)
    );
    assert_eq!(p.collect, [JUNIT_PATH]);
    assert!(
        p.files
            .iter()
            .any(|(path, _)| path == pytest::PYTHON_CODE_FILE)
    );
    assert!(p.files.iter().any(|(path, _)| path == "data/x.txt"));
    assert_eq!(p.env.get("MINE").map(String::as_str), Some("1"));
}

#[test]
fn pytest_command_keeps_the_users_argv_and_addopts() {
    let mut test = spec(
        Framework::Pytest,
        TestBody::Command(vec!["pytest".into(), "tests/".into()]),
    );
    test.env.insert("PYTEST_ADDOPTS".into(), "-x".into());
    let p = plan(&test, &tools());
    assert_eq!(p.command, ["pytest", "tests/"]);
    let addopts = p.env.get("PYTEST_ADDOPTS").expect("set");
    assert!(
        addopts.starts_with("-x ") && addopts.contains("--junitxml="),
        "{addopts}"
    );
}

#[test]
fn command_code_runs_under_sh_and_command_argv_as_is() {
    let p = plan(
        &spec(Framework::Command, TestBody::Code("exit 0".into())),
        &tools(),
    );
    assert_eq!(p.command, ["/bin/sh", command::SHELL_CODE_FILE]);
    assert!(p.collect.is_empty());
    assert!(!p.env.contains_key("PYTHONDONTWRITEBYTECODE"));
    let p = plan(
        &spec(Framework::Command, TestBody::Command(vec!["true".into()])),
        &tools(),
    );
    assert_eq!(p.command, ["true"]);
}

#[test]
fn verdicts_follow_stage_exits_and_cases() {
    let xml_pass = br#"<testsuites><testsuite><testcase classname="m" name="a" time="0.1"/></testsuite></testsuites>"#;
    let xml_skip = br#"<testsuite><testcase classname="m" name="a"><skipped message="no"/></testcase></testsuite>"#;
    let xml_fail = br#"<testsuite><testcase classname="m" name="a"><failure message="boom">tb</failure></testcase><testcase classname="m" name="b"/></testsuite>"#;
    let xml_err = br#"<testsuite><testcase classname="m" name="a"><error message="fixture">tb</error></testcase></testsuite>"#;
    let ok = |code| Some(Exit::Code(code));
    let table: Vec<(&str, Framework, Observed<'_>, Status, Option<Stage>)> = vec![
        (
            "setup fails",
            Framework::Command,
            Observed {
                setup: ok(3),
                command: None,
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Setup),
        ),
        (
            "command passes",
            Framework::Command,
            Observed {
                command: ok(0),
                ..Default::default()
            },
            Status::Passed,
            None,
        ),
        (
            "command fails",
            Framework::Command,
            Observed {
                command: ok(1),
                ..Default::default()
            },
            Status::Failed,
            Some(Stage::Test),
        ),
        (
            "command crashes",
            Framework::Command,
            Observed {
                command: Some(Exit::Signal(11)),
                ..Default::default()
            },
            Status::Failed,
            Some(Stage::Test),
        ),
        (
            "teardown fails after a pass",
            Framework::Command,
            Observed {
                command: ok(0),
                teardown: ok(2),
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Teardown),
        ),
        (
            "teardown fails after a failure",
            Framework::Command,
            Observed {
                command: ok(1),
                teardown: ok(2),
                ..Default::default()
            },
            Status::Failed,
            Some(Stage::Test),
        ),
        (
            "never finished",
            Framework::Command,
            Observed::default(),
            Status::Error,
            Some(Stage::Test),
        ),
        (
            "pytest passes",
            Framework::Pytest,
            Observed {
                command: ok(0),
                report: Some(Ok(xml_pass)),
                ..Default::default()
            },
            Status::Passed,
            None,
        ),
        (
            "pytest all skipped",
            Framework::Pytest,
            Observed {
                command: ok(0),
                report: Some(Ok(xml_skip)),
                ..Default::default()
            },
            Status::Skipped,
            None,
        ),
        (
            "pytest fails",
            Framework::Pytest,
            Observed {
                command: ok(1),
                report: Some(Ok(xml_fail)),
                ..Default::default()
            },
            Status::Failed,
            Some(Stage::Test),
        ),
        (
            "pytest only errors",
            Framework::Pytest,
            Observed {
                command: ok(1),
                report: Some(Ok(xml_err)),
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Test),
        ),
        (
            "pytest no tests",
            Framework::Pytest,
            Observed {
                command: ok(5),
                report: Some(Ok(xml_pass)),
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Test),
        ),
        (
            "pytest crash",
            Framework::Pytest,
            Observed {
                command: Some(Exit::Signal(11)),
                report: Some(Err("missing".into())),
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Test),
        ),
        (
            "pytest passes without report",
            Framework::Pytest,
            Observed {
                command: ok(0),
                report: Some(Err("missing".into())),
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Test),
        ),
        (
            "unittest fails",
            Framework::Unittest,
            Observed {
                command: ok(1),
                stderr: "test_a (m.T.test_a) ... FAIL\n",
                ..Default::default()
            },
            Status::Failed,
            Some(Stage::Test),
        ),
        (
            "unittest import error",
            Framework::Unittest,
            Observed {
                command: ok(1),
                stderr: "ImportError: nope\n",
                ..Default::default()
            },
            Status::Error,
            Some(Stage::Test),
        ),
    ];
    for (what, framework, seen, status, stage) in table {
        let v = judge(framework, &seen);
        assert_eq!((v.status, v.stage), (status, stage), "{what}: {v:?}");
        if !status.is_success() {
            assert!(v.reason.is_some(), "{what} has no reason");
        }
    }
}

#[test]
fn a_missing_report_is_named_in_every_verdict() {
    let missing = || Some(Err("collect file: larger than 16 bytes".to_owned()));
    for (framework, code, status) in [
        (Framework::Pytest, 0, Status::Error),
        (Framework::Pytest, 1, Status::Failed),
        (Framework::Node, 0, Status::Error),
        (Framework::Jest, 0, Status::Error),
        (Framework::Jest, 1, Status::Error),
        (Framework::Junit, 0, Status::Error),
        (Framework::Junit, 1, Status::Failed),
    ] {
        let seen = Observed {
            command: Some(Exit::Code(code)),
            report: missing(),
            ..Default::default()
        };
        let v = judge(framework, &seen);
        assert_eq!(v.status, status, "{framework} exit {code}: {v:?}");
        let reason = v.reason.unwrap_or_default();
        assert!(
            reason.contains("larger than 16 bytes"),
            "{framework} exit {code}: {reason}"
        );
    }
}
