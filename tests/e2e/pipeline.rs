//! The whole path: producer → RabbitMQ → several worker processes → Redis →
//! aggregator → report, checked test by test.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use isotest_protocol::result::{CaseStatus, Stage, Status};

use crate::support::TestEnv;

/// A 60-test suite mixing every kind of outcome, with the verdict each test must get.
pub fn mixed_suite(name: &str) -> (String, BTreeMap<String, Status>) {
    let mut toml = format!("name = \"{name}\"\n\n[defaults]\ntimeout = \"20s\"\n");
    let mut expected = BTreeMap::new();
    for i in 0..60 {
        let (body, status) = match i % 10 {
            0 => ("command = [\"true\"]".to_owned(), Status::Passed),
            1 => ("command = [\"sh\", \"-c\", \"echo failing >&2; exit 3\"]".to_owned(), Status::Failed),
            2 => ("command = [\"true\"]\nsetup = \"echo setting up; exit 4\"".to_owned(), Status::Error),
            3 => ("command = [\"sleep\", \"30\"]\ntimeout = \"1s\"".to_owned(), Status::Timeout),
            4 => (
                "framework = \"pytest\"\ncode = \"\"\"\ndef test_one():\n    assert 1 + 1 == 2\n\ndef test_two():\n    assert 'a' * 2 == 'aa'\n\"\"\"".to_owned(),
                Status::Passed,
            ),
            5 => (
                "framework = \"pytest\"\ncode = \"\"\"\ndef test_good():\n    pass\n\ndef test_bad():\n    assert 2 + 2 == 5, 'arithmetic'\n\"\"\"".to_owned(),
                Status::Failed,
            ),
            6 => (
                "framework = \"unittest\"\ncode = \"\"\"\nimport unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        self.assertEqual(1, 1)\n\"\"\"".to_owned(),
                Status::Passed,
            ),
            7 => (
                "framework = \"unittest\"\ncode = \"\"\"\nimport unittest\n\nclass T(unittest.TestCase):\n    def test_no(self):\n        self.assertEqual(1, 2)\n\"\"\"".to_owned(),
                Status::Failed,
            ),
            8 => (
                "command = [\"sh\", \"-c\", \"test \\\"$GREETING\\\" = hello && test -f data/input.txt\"]\nenv = { GREETING = \"hello\" }\nfiles = [{ path = \"data/input.txt\", content = \"x\" }]".to_owned(),
                Status::Passed,
            ),
            _ => ("code = \"exit 0\"\nteardown = \"exit 0\"".to_owned(), Status::Passed),
        };
        let name = format!("t{i:02}");
        let _ = write!(toml, "\n[[tests]]\nname = \"{name}\"\n{body}\n");
        expected.insert(name, status);
    }
    (toml, expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_suite_runs_once_per_test_across_three_workers() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    env.start(3, 2).await?;
    let (toml, expected) = mixed_suite("mixed");
    let manifest = env.write("mixed.toml", &toml);
    let run = env.run_suite(&manifest, "mixed", true, &[]);
    let report = run.report();
    assert_eq!(
        run.code(),
        Some(1),
        "failures make exit code 1\n{}",
        run.stderr()
    );

    assert_eq!(report.tests.len(), 60, "every test exactly once");
    let names: BTreeSet<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 60, "no test twice");
    for test in &report.tests {
        assert_eq!(
            Some(&test.status),
            expected.get(&test.name),
            "{}: {test:?}",
            test.name
        );
        assert_eq!(test.attempts, 1, "{}", test.name);
    }
    let workers: BTreeSet<&str> = report.tests.iter().map(|t| t.worker.as_str()).collect();
    assert_eq!(workers.len(), 3, "all three workers took part: {workers:?}");

    // The verdicts carry their reasons and the framework's cases.
    let setup_failure = report.tests.iter().find(|t| t.name == "t02").expect("t02");
    assert_eq!(setup_failure.stage, Some(Stage::Setup));
    assert!(setup_failure.stdout.contains("setting up"));
    let timeout = report.tests.iter().find(|t| t.name == "t03").expect("t03");
    assert!(
        timeout
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("timed out after 1s")),
        "{timeout:?}"
    );
    let failing = report.tests.iter().find(|t| t.name == "t01").expect("t01");
    assert_eq!(failing.exit_code, Some(3));
    assert!(failing.stderr.contains("failing"));
    let pytest = report.tests.iter().find(|t| t.name == "t05").expect("t05");
    let cases: Vec<(&str, CaseStatus)> = pytest
        .cases
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect();
    assert_eq!(
        cases,
        [
            ("test_good", CaseStatus::Passed),
            ("test_bad", CaseStatus::Failed)
        ]
    );
    let unittest = report.tests.iter().find(|t| t.name == "t07").expect("t07");
    assert_eq!(unittest.cases.len(), 1);
    assert_eq!(unittest.cases[0].status, CaseStatus::Failed);

    let s = &report.summary;
    assert_eq!(
        (s.total, s.passed, s.failed, s.errored, s.timed_out),
        (60, 30, 18, 6, 6)
    );

    // The JUnit report parses and has one <testcase> per case (per test without cases).
    let junit = run.junit.as_deref().expect("junit written");
    let doc = roxmltree::Document::parse(junit)?;
    let testcases = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .count();
    let expected_cases: usize = report.tests.iter().map(|t| t.cases.len().max(1)).sum();
    assert_eq!(testcases, expected_cases);

    let (ready, _) = env.queue_state().await?;
    assert_eq!(ready, 0, "nothing left on the queue");
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_test_gets_a_fresh_workspace_and_tmp() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    // Every test first checks that nothing of any other test is there, then leaves
    // files behind in its workspace and /tmp. One leak fails a later test.
    let check = "test -z \"$(ls -A /tmp)\" && test ! -e leftover && echo mine > leftover && echo mine > /tmp/leftover && mkdir -p /tmp/dir";
    let mut toml = String::from("name = \"fresh\"\n");
    for i in 0..16 {
        let _ = write!(
            toml,
            "\n[[tests]]\nname = \"fresh{i}\"\ncommand = [\"sh\", \"-c\", '{check}']\n"
        );
    }
    let manifest = env.write("fresh.toml", &toml);
    let run = env.run_suite(&manifest, "fresh", true, &[]);
    let report = run.report();
    assert_eq!(run.code(), Some(0), "{}", run.stdout());
    assert_eq!(report.summary.passed, 16);
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_sigterm_finishes_what_it_holds() -> anyhow::Result<()> {
    use std::time::Duration;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let first_worker = env.pid("worker-0").expect("worker-0 started");
    let mut toml = String::from("name = \"drain\"\n");
    for i in 0..6 {
        let _ = write!(
            toml,
            "\n[[tests]]\nname = \"slow{i}\"\ncommand = [\"sleep\", \"2\"]\n"
        );
    }
    let manifest = env.write("drain.toml", &toml);
    let url = env.producer_url.clone().expect("started");
    let json = env.dir.join("drain.json");
    let mut run = env
        .command(&[
            "run",
            &manifest.display().to_string(),
            "--server",
            &url,
            "--json",
            &json.display().to_string(),
            "--quiet",
        ])
        .spawn()?;
    // Once the worker holds its two messages (prefetch 2), ask it to stop.
    crate::support::poll(
        Duration::from_secs(20),
        "the worker to take two tests",
        || async { Ok(env.queue_state().await?.0 == 4) },
    )
    .await?;
    kill(Pid::from_raw(i32::try_from(first_worker)?), Signal::SIGTERM)?;
    crate::support::poll(
        Duration::from_secs(30),
        "the stopped worker to exit",
        || async {
            Ok(
                !std::path::Path::new(&format!("/proc/{first_worker}")).exists()
                    || is_zombie(first_worker),
            )
        },
    )
    .await?;
    assert!(
        env.log("worker-0")
            .iter()
            .any(|l| l.contains("Worker stopped.")),
        "{:?}",
        env.log("worker-0")
    );
    // A second worker takes the rest.
    env.spawn("worker-1", &["worker", "--concurrency", "2"]);
    let status = tokio::task::spawn_blocking(move || run.wait()).await??;
    let report: isotest_protocol::report::Report = serde_json::from_slice(&std::fs::read(&json)?)?;
    assert!(status.success(), "{report:?}");
    assert_eq!(report.tests.len(), 6);
    let by_first = report
        .tests
        .iter()
        .filter(|t| t.worker.contains(&format!("-{first_worker}")))
        .count();
    assert_eq!(
        by_first, 2,
        "the stopped worker finished the two tests it held"
    );
    assert!(
        report
            .tests
            .iter()
            .all(|t| t.status == Status::Passed && t.attempts == 1)
    );
    env.stop();
    env.cleanup().await
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}
