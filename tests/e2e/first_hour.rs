//! A new user's first hour (issue 13): what the README promises, checked as a user meets
//! it: verdicts kept at a deadline, JUnit testcases that name their test, reports written
//! when a run is interrupted, and the CLI's lines at submission.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use isotest_protocol::report::{Report, SuiteState};
use isotest_protocol::result::Status;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::junit_reader;
use crate::support::TestEnv;

/// The status of each test of a report, by name.
fn statuses(report: &Report) -> Vec<(String, Status)> {
    report
        .tests
        .iter()
        .map(|t| (t.name.clone(), t.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_mode_keeps_the_verdicts_of_tests_that_ended_before_the_deadline() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "deadline.toml",
        "name = \"deadline\"\ndeadline = \"3s\"\n\
         [[tests]]\nname = \"short\"\ncommand = [\"true\"]\n\
         [[tests]]\nname = \"mid\"\ncommand = [\"sleep\", \"1\"]\n\
         [[tests]]\nname = \"long\"\ncommand = [\"sleep\", \"8\"]\n",
    );
    let run = env.run_suite(&manifest, "deadline", false, &["--concurrency", "3"]);
    let report = run.report();
    ensure!(
        report.state == SuiteState::DeadlineExceeded,
        "{:?}",
        report.state
    );
    ensure!(
        statuses(report)
            == vec![
                ("short".to_owned(), Status::Passed),
                ("mid".to_owned(), Status::Passed),
                ("long".to_owned(), Status::Lost),
            ],
        "{:?}",
        statuses(report)
    );
    ensure!(
        (report.summary.passed, report.summary.lost) == (2, 1),
        "{:?}",
        report.summary
    );
    ensure!(run.code() == Some(1), "{:?}", run.code());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_junit_testcase_names_its_test_and_none_collide() -> Result<()> {
    let env = TestEnv::new().await;
    env.write("ws/tests/test_one.py", "def test_x():\n    pass\n");
    let workspace = env.dir.join("ws");
    let manifest = env.write(
        "identity.toml",
        &format!(
            "name = \"identity\"\nworkspace = \"{}\"\n\
             [[tests]]\nname = \"login\"\nframework = \"pytest\"\ncode = \"def test_it():\\n    assert True\\n\"\n\
             [[tests]]\nname = \"logout\"\nframework = \"pytest\"\ncode = \"def test_it():\\n    assert False\\n\"\n\
             [[discover]]\nframework = \"pytest\"\npaths = [\"tests\"]\nprefix = \"a:\"\n\
             [[discover]]\nframework = \"pytest\"\npaths = [\"tests\"]\nprefix = \"b:\"\n",
            workspace.display()
        ),
    );
    let run = env.run_suite(&manifest, "identity", false, &[]);
    let report = run.report();
    ensure!(report.tests.len() == 4, "{:?}", statuses(report));
    let cases = junit_reader::read(&env.dir.join("identity.xml"))?;
    let names: BTreeSet<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    // Every testcase says which isotest test reported it.
    for case in &cases {
        ensure!(
            names.contains(case.classname.as_str()),
            "{case:?} names no test of {names:?}"
        );
    }
    // No two testcases are one to a reader.
    let ids: BTreeSet<(&str, &str)> = cases
        .iter()
        .map(|c| (c.classname.as_str(), c.name.as_str()))
        .collect();
    ensure!(ids.len() == cases.len(), "colliding testcases: {cases:#?}");
    let find = |classname: &str| {
        cases
            .iter()
            .find(|c| c.classname == classname)
            .with_context(|| format!("no testcase of {classname}: {cases:#?}"))
    };
    ensure!(find("login")?.result == "passed", "{cases:#?}");
    ensure!(find("logout")?.result == "failure", "{cases:#?}");
    ensure!(find("login")?.name == "test_isotest.test_it", "{cases:#?}");
    // The discover entries' prefixes keep the one file's test apart.
    ensure!(find("a:tests/test_one.py::test_x")?.result == "passed");
    ensure!(find("b:tests/test_one.py::test_x")?.result == "passed");
    Ok(())
}

/// A running `isotest run` and the lines of its stderr, read as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(env: &TestEnv, args: &[&str]) -> Result<Running> {
        let mut child = env
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits until a line of stderr contains `text`, within `within`.
    fn wait_for(&mut self, text: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => bail!("no line with {text:?} in {within:?}: {:#?}", self.seen),
            }
        }
    }

    /// Sends `signal`, then waits for the exit code and the rest of stderr.
    fn stop(mut self, signal: Signal) -> Result<(Option<i32>, String)> {
        kill(Pid::from_raw(i32::try_from(self.child.id())?), signal)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("isotest run did not end on {signal}: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.seen.extend(self.lines.try_iter());
        Ok((status.code(), self.seen.join("\n")))
    }
}

/// Interrupts `isotest run` once its first test has passed, and checks the reports it
/// leaves: the JSON `cancelled`, the passed test kept, the other `cancelled`, and a JUnit
/// file a real reader takes.
async fn interrupted_run_writes_the_reports(server: bool, signal: Signal) -> Result<()> {
    let mut env = TestEnv::new().await;
    if server {
        env.start(1, 2).await?;
    }
    let label = if server { "server" } else { "embedded" };
    let manifest = env.write(
        &format!("{label}.toml"),
        "name = \"interrupted\"\n\
         [[tests]]\nname = \"short\"\ncommand = [\"true\"]\n\
         [[tests]]\nname = \"long\"\ncommand = [\"sleep\", \"60\"]\n",
    );
    let json = env.dir.join(format!("{label}.json"));
    let junit = env.dir.join(format!("{label}.xml"));
    let manifest = manifest.display().to_string();
    let (json_arg, junit_arg) = (json.display().to_string(), junit.display().to_string());
    let mut args = vec![
        "run",
        manifest.as_str(),
        "--json",
        json_arg.as_str(),
        "--junit",
        junit_arg.as_str(),
    ];
    let url = env.producer_url.clone().unwrap_or_default();
    if server {
        args.extend(["--server", url.as_str()]);
    }
    let mut run = Running::start(&env, &args)?;
    // The first line names the suite, before any test ends, in both modes.
    run.wait_for("isotest: suite ", Duration::from_secs(60))?;
    let first = run.seen.last().cloned().unwrap_or_default();
    let (at, tests) = if server {
        (format!("status: {url}/v1/suites/"), "submitted, 2 tests;")
    } else {
        (" at a time".to_owned(), "running here, 2 tests,")
    };
    ensure!(first.contains(&at) && first.contains(tests), "{first}");
    // (The test environment's RUST_LOG=info may put log lines before it.)
    ensure!(
        run.seen
            .iter()
            .filter(|l| l.starts_with("isotest:") || l.starts_with('['))
            .count()
            == 1,
        "the suite's line comes first: {:#?}",
        run.seen
    );
    // Embedded mode prints each test; server mode the count done.
    let passed = if server {
        "1/2 tests done"
    } else {
        "passed short"
    };
    run.wait_for(passed, Duration::from_secs(60))?;
    let (code, stderr) = run.stop(signal)?;
    ensure!(code == Some(130), "exit {code:?}\n{stderr}");
    let report: Report = serde_json::from_slice(
        &std::fs::read(&json).with_context(|| format!("no JSON report\n{stderr}"))?,
    )?;
    ensure!(report.state == SuiteState::Cancelled, "{:?}", report.state);
    ensure!(
        statuses(&report)
            == vec![
                ("short".to_owned(), Status::Passed),
                ("long".to_owned(), Status::Cancelled),
            ],
        "{:?}",
        statuses(&report)
    );
    let cases = junit_reader::read(&junit)?;
    let results: Vec<(&str, &str)> = cases
        .iter()
        .map(|c| (c.name.as_str(), c.result.as_str()))
        .collect();
    ensure!(
        results == vec![("short", "passed"), ("long", "error")],
        "{results:?}"
    );
    if server {
        env.stop();
        env.cleanup().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_run_interrupted_by_ctrl_c_writes_its_reports() -> Result<()> {
    interrupted_run_writes_the_reports(false, Signal::SIGINT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_run_stopped_by_sigterm_writes_its_reports() -> Result<()> {
    interrupted_run_writes_the_reports(true, Signal::SIGTERM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_url_without_a_scheme_is_bad_input() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "scheme.toml",
        "name = \"scheme\"\n[[tests]]\nname = \"t\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "scheme", false, &["--server", "127.0.0.1:18580"]);
    ensure!(
        run.code() == Some(2),
        "exit {:?}: {}",
        run.code(),
        run.stderr()
    );
    ensure!(
        run.stderr().trim()
            == "error: the server URL `127.0.0.1:18580` has no http:// or https:// scheme; give one like http://127.0.0.1:18580",
        "{}",
        run.stderr()
    );
    Ok(())
}

/// Bytes zstd cannot shrink, so that a packed workspace is as large as its files.
fn noise(len: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_upload_leaves_out_what_git_ignores_and_says_what_to_do_when_too_large()
-> Result<()> {
    let mut env = TestEnv::new().await;
    env.service_env
        .push(("ISOTEST_MAX_BLOB_BYTES".to_owned(), "65536".to_owned()));
    env.start(1, 2).await?;
    let ws = env.dir.join("ws");
    env.write("ws/src/a.txt", "kept\n");
    env.write("ws/.env", "A=1\n");
    env.write("ws/.gitignore", "target/\n");
    env.write("ws/.git/HEAD", "ref: refs/heads/main\n");
    env.write("ws/logs/x.log", "left out\n");
    env.write("ws/target/keep/fixture.txt", "brought back\n");
    std::fs::write(ws.join("target/big.bin"), noise(256 * 1024)?)?;
    std::fs::create_dir_all(ws.join("data"))?;
    std::fs::write(ws.join("data/big.bin"), noise(256 * 1024)?)?;
    let check = "test -e src/a.txt && test -e .env && test ! -e .git && test ! -e target/big.bin \
                 && test -e target/keep/fixture.txt && test ! -e logs/x.log";
    let manifest = |exclude: &str| {
        format!(
            "name = \"upload\"\nworkspace = \"{}\"\n{exclude}\
             [[tests]]\nname = \"what-was-sent\"\ncommand = [\"/bin/sh\", \"-c\", \"{check}\"]\n",
            ws.display()
        )
    };
    // data/big.bin is not ignored: the upload is too large, and the error says what to do.
    let large = env.write(
        "large.toml",
        &manifest("workspace_exclude = [\"*.log\"]\nworkspace_include = [\"target/keep/\"]\n"),
    );
    let refused = env.run_suite(&large, "large", true, &[]);
    ensure!(
        refused.code() == Some(2),
        "exit {:?}: {}",
        refused.code(),
        refused.stderr()
    );
    ensure!(
        refused.stderr().contains("larger than the server takes")
            && refused.stderr().contains("workspace_exclude"),
        "{}",
        refused.stderr()
    );
    let fits = env.write(
        "fits.toml",
        &manifest(
            "workspace_exclude = [\"*.log\", \"/data\"]\nworkspace_include = [\"target/keep/\"]\n",
        ),
    );
    let run = env.run_suite(&fits, "fits", true, &[]);
    ensure!(
        statuses(run.report()) == vec![("what-was-sent".to_owned(), Status::Passed)],
        "{:?}\n{}",
        run.report().tests,
        run.stderr()
    );
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suite_no_worker_takes_says_so() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(0, 1).await?;
    let manifest = env.write(
        "unconsumed.toml",
        "name = \"unconsumed\"\ndeadline = \"3s\"\n[[tests]]\nname = \"t\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "unconsumed", true, &[]);
    ensure!(
        run.stderr()
            .contains("isotest: warning: no worker consumes the tests queue (1 test waits)"),
        "{}",
        run.stderr()
    );
    ensure!(run.code() == Some(1), "exit {:?}", run.code());
    // The producer's address is logged as an address, not as Rust's `Some(…)`.
    let log = env.log("producer");
    let listening = log
        .iter()
        .find(|l| l.contains("Producer listening"))
        .context("no listening line")?;
    ensure!(
        listening.contains("addr=127.0.0.1:") && !listening.contains("Some("),
        "{listening}"
    );
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_suite_refused_in_embedded_mode_names_the_flag_of_isotest_run() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "network.toml",
        "name = \"net\"\nnetwork = true\n[[tests]]\nname = \"t\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "network", false, &[]);
    let reason = run.report().tests[0].reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("`isotest run` in embedded mode"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_shows_the_verdict_of_a_flaky_pass_under_flaky_result_fail() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "flaky.toml",
        "name = \"flaky\"\nflaky_result = \"fail\"\n\
         [[tests]]\nname = \"second-time\"\nretries = 1\n\
         command = [\"/bin/sh\", \"-c\", \"test \\\"$ISOTEST_ATTEMPT\\\" = 2\"]\n",
    );
    let run = env.run_suite(&manifest, "flaky", false, &[]);
    ensure!(
        statuses(run.report()) == vec![("second-time".to_owned(), Status::Failed)],
        "{:?}",
        run.report().tests
    );
    // run_suite passes --quiet: run again with progress.
    let output = env
        .command(&["run", &manifest.display().to_string()])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr
            .lines()
            .any(|l| l.starts_with("[1/1] failed (flaky) second-time (")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_report_fetch_a_suite_by_its_id() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let manifest = env.write(
        "fetch.toml",
        "name = \"fetch\"\n[[tests]]\nname = \"ok\"\ncommand = [\"true\"]\n\
         [[tests]]\nname = \"bad\"\ncommand = [\"false\"]\n",
    );
    let run = env.run_suite(&manifest, "fetch", true, &[]);
    let id = run.report().suite_id.clone();
    let server = env.producer_url.clone().context("producer")?;

    let status = env
        .command(&["status", &id, "--server", &server])
        .output()?;
    let stdout = String::from_utf8_lossy(&status.stdout);
    ensure!(
        stdout.trim()
            == format!(
                "suite {id} (fetch): complete, 2 of 2 tests done; 1 passed, 1 failed, 0 error, 0 timeout, 0 lost, 0 cancelled"
            ),
        "{stdout}"
    );
    ensure!(status.status.code() == Some(1), "{:?}", status.status);

    let junit = env.dir.join("fetched.xml");
    let fetched = env
        .command(&[
            "report",
            &id,
            "--server",
            &server,
            "--junit",
            &junit.display().to_string(),
        ])
        .output()?;
    ensure!(fetched.status.code() == Some(1), "{:?}", fetched);
    let cases = junit_reader::read(&junit)?;
    let results: Vec<(&str, &str)> = cases
        .iter()
        .map(|c| (c.name.as_str(), c.result.as_str()))
        .collect();
    ensure!(
        results == vec![("ok", "passed"), ("bad", "failure")],
        "{results:?}"
    );

    let unknown = env
        .command(&["status", "nope", "--server", &server])
        .output()?;
    ensure!(unknown.status.code() == Some(2), "{unknown:?}");
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_url_in_embedded_mode_is_refused_not_ignored() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "callback.toml",
        "name = \"cb\"\ncallback_url = \"http://127.0.0.1:9/hook\"\n\
         [[tests]]\nname = \"t\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "callback", false, &[]);
    ensure!(
        run.code() == Some(2),
        "exit {:?}: {}",
        run.code(),
        run.stderr()
    );
    ensure!(
        run.stderr()
            .contains("callback_url: embedded mode sends no webhook"),
        "{}",
        run.stderr()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_result_cache_in_embedded_mode_is_named_and_every_test_runs() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "cached.toml",
        "name = \"cached\"\ncache = true\n[[tests]]\nname = \"t\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "cached", false, &[]);
    ensure!(
        run.code() == Some(0),
        "exit {:?}: {}",
        run.code(),
        run.stderr()
    );
    ensure!(
        run.stderr()
            .contains("cache = true: embedded mode keeps no result cache; every test runs"),
        "{}",
        run.stderr()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_rides_out_a_producer_restart() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let manifest = env.write(
        "restart.toml",
        "name = \"restart\"\n[[tests]]\nname = \"slow\"\ncommand = [\"sleep\", \"4\"]\n",
    );
    let url = env.producer_url.clone().context("producer")?;
    let json = env.dir.join("restart.json");
    let (manifest, json_arg) = (manifest.display().to_string(), json.display().to_string());
    let mut run = Running::start(
        &env,
        &["run", &manifest, "--server", &url, "--json", &json_arg],
    )?;
    run.wait_for("isotest: suite ", Duration::from_secs(60))?;
    // The producer goes away while the suite runs, and comes back on the same address.
    let pid = env.pid("producer").context("producer pid")?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    run.wait_for("the server did not answer", Duration::from_secs(30))?;
    let listen = url.trim_start_matches("http://").to_owned();
    env.spawn(
        "producer-again",
        &["producer", "--listen", &listen, "--open"],
    );
    run.wait_for("the server answers again", Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "isotest run did not end: {:#?}",
            run.seen
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(status.code() == Some(0), "exit {status:?}: {:#?}", run.seen);
    let report: Report = serde_json::from_slice(&std::fs::read(&json)?)?;
    ensure!(
        statuses(&report) == vec![("slow".to_owned(), Status::Passed)],
        "{:?}",
        report.tests
    );
    env.stop();
    env.cleanup().await
}
