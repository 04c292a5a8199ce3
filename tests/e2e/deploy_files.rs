//! The deployment files run as written: the services of `deploy/compose.yaml` started
//! with their own `command`s, and the `isotest run` line of each CI job in
//! `deploy/ci/` run against them, its JUnit report written where the job's publishing
//! step reads it.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;

use crate::support::{TestEnv, poll};

/// The repository's `deploy/` folder.
fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn yaml(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(deploy(path)).with_context(|| path.to_owned())?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("{path} is not YAML"))
}

/// A compose service's `command`, as a list of arguments.
fn compose_command(compose: &Value, service: &str) -> Result<Vec<String>> {
    compose["services"][service]["command"]
        .as_sequence()
        .with_context(|| format!("compose.yaml: services.{service}.command is not a list"))?
        .iter()
        .map(|arg| {
            arg.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{service}: an argument that is not a string"))
        })
        .collect()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts producer, aggregator and worker with compose's commands (the producer's
/// `--listen` moved to a free local port) and waits until they serve.
async fn start_as_composed(env: &mut TestEnv) -> Result<()> {
    let compose = yaml("compose.yaml")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut producer = compose_command(&compose, "producer")?;
    let at = producer
        .iter()
        .position(|a| a == "--listen")
        .context("the producer's command sets --listen")?;
    *producer.get_mut(at + 1).context("--listen has a value")? = listen.clone();
    for (name, args) in [
        ("producer", producer),
        ("aggregator", compose_command(&compose, "aggregator")?),
        ("worker-0", compose_command(&compose, "worker")?),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.spawn(name, &args);
    }
    let url = format!("http://{listen}");
    let ready = format!("{url}/readyz");
    poll(
        Duration::from_secs(30),
        "the producer to be ready",
        || async {
            Ok(reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success()))
        },
    )
    .await
    .with_context(|| env.log("producer").join("\n"))?;
    poll(Duration::from_secs(30), "the worker to consume", || async {
        Ok(env.consumers().await? >= 1)
    })
    .await
    .with_context(|| env.log("worker-0").join("\n"))?;
    env.producer_url = Some(url);
    Ok(())
}

/// A small suite: two passing tests, one of them pytest with two cases.
fn small_suite(env: &TestEnv) -> PathBuf {
    env.write(
        "suite/suite.toml",
        "name = \"deploy-files\"\n\n\
         [[tests]]\nname = \"true\"\ncommand = [\"true\"]\n\n\
         [[tests]]\nname = \"py\"\nframework = \"pytest\"\n\
         code = \"\"\"\ndef test_one():\n    assert 1 + 1 == 2\n\ndef test_two():\n    assert 'a' * 2 == 'aa'\n\"\"\"\n",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_services_run_a_suite() -> Result<()> {
    let mut env = TestEnv::new().await;
    start_as_composed(&mut env).await?;
    let suite = small_suite(&env);
    let run = env.run_suite(&suite, "compose", true, &[]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    let report = run.report();
    assert_eq!(report.summary.total, 2);
    assert_eq!(report.summary.passed, 2);
    env.stop();
    env.cleanup().await
}

/// Splits a shell command line as `sh` would for the plain words, quotes and
/// `$VAR`/`${VAR}` references these files use; a variable not in `vars` is an error.
fn shell_words(line: &str, vars: &BTreeMap<&str, String>) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                words.extend(word.take());
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '$') => {
                let braced = chars.next_if_eq(&'{').is_some();
                let mut name = String::new();
                while let Some(n) = chars.next_if(|n| n.is_ascii_alphanumeric() || *n == '_') {
                    name.push(n);
                }
                if braced && chars.next() != Some('}') {
                    bail!("unclosed ${{ in `{line}`");
                }
                let value = vars.get(name.as_str()).with_context(|| {
                    format!("`{line}` uses ${name}, which the test does not set")
                })?;
                word.get_or_insert_default().push_str(value);
            }
            (_, c) => word.get_or_insert_default().push(c),
        }
    }
    ensure!(quote.is_none(), "unclosed quote in `{line}`");
    words.extend(word);
    Ok(words)
}

/// The one `isotest run …` line of a CI file, and the JUnit path its publishing step reads.
struct CiJob {
    file: &'static str,
    line: String,
    published_junit: String,
}

fn the_isotest_line<'a>(file: &str, lines: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let found: Vec<&str> = lines
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| l.starts_with("isotest run "))
        .collect();
    match found.as_slice() {
        [line] => Ok((*line).to_owned()),
        other => bail!("{file}: expected one `isotest run` line, found {other:?}"),
    }
}

fn github_actions() -> Result<CiJob> {
    let file = "ci/github-actions.yml";
    let doc = yaml(file)?;
    let steps: Vec<&Value> = doc["jobs"]
        .as_mapping()
        .context("jobs")?
        .values()
        .filter_map(|job| job["steps"].as_sequence())
        .flatten()
        .collect();
    let line = the_isotest_line(file, steps.iter().filter_map(|s| s["run"].as_str()))?;
    let published_junit = steps
        .iter()
        .find_map(|s| s["with"]["report_paths"].as_str())
        .context("a step publishing report_paths")?
        .to_owned();
    Ok(CiJob {
        file,
        line,
        published_junit,
    })
}

fn gitlab_ci() -> Result<CiJob> {
    let file = "ci/gitlab-ci.yml";
    let doc = yaml(file)?;
    let job = &doc["isotest"];
    let script = job["script"].as_sequence().context("isotest.script")?;
    let line = the_isotest_line(file, script.iter().filter_map(Value::as_str))?;
    let published_junit = job["artifacts"]["reports"]["junit"]
        .as_str()
        .context("artifacts.reports.junit")?
        .to_owned();
    Ok(CiJob {
        file,
        line,
        published_junit,
    })
}

/// Jenkinsfiles are Groovy: the command is the string of an `sh '…'` step, and the
/// report the string of the `junit '…'` step.
fn jenkinsfile() -> Result<CiJob> {
    let file = "ci/Jenkinsfile";
    let text = std::fs::read_to_string(deploy(file))?;
    let quoted_after = |step: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(step))
            .filter_map(|rest| rest.trim().strip_prefix('\''))
            .filter_map(|rest| rest.rsplit_once('\'').map(|(s, _)| s.to_owned()))
            .collect()
    };
    let shells = quoted_after("sh ");
    let line = the_isotest_line(file, shells.iter().map(String::as_str))?;
    let published_junit = quoted_after("junit ")
        .into_iter()
        .next()
        .context("a junit step")?;
    Ok(CiJob {
        file,
        line,
        published_junit,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn each_ci_job_runs_its_isotest_line_and_writes_the_junit_it_publishes() -> Result<()> {
    let mut env = TestEnv::new().await;
    start_as_composed(&mut env).await?;
    let suite = small_suite(&env);
    let server = env.producer_url.clone().context("producer")?;
    // A server with a token refuses requests without one: each job must send the
    // token its CI system keeps as a secret (ISOTEST_TOKEN in the job's environment).
    let added = env.command(&["token", "add", "ci"]).output()?;
    ensure!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout)?.trim().to_owned();
    for job in [github_actions()?, gitlab_ci()?, jenkinsfile()?] {
        let text = std::fs::read_to_string(deploy(job.file))?;
        assert!(
            text.contains("ISOTEST_TOKEN"),
            "{}: names no ISOTEST_TOKEN",
            job.file
        );
        let vars = BTreeMap::from([("ISOTEST_SERVER", server.clone())]);
        let mut words = shell_words(&job.line, &vars)?;
        ensure!(
            words.first().map(String::as_str) == Some("isotest"),
            "{}",
            job.line
        );
        words.remove(0);
        // The CI job's checkout is its working directory; here, a fresh one per job.
        let checkout = env.dir.join(job.file.replace('/', "_"));
        std::fs::create_dir_all(&checkout)?;
        let manifest_at = words
            .iter()
            .position(|w| w.ends_with(".toml"))
            .with_context(|| format!("{}: no manifest in `{}`", job.file, job.line))?;
        words[manifest_at] = suite.display().to_string();
        let junit_at = words
            .iter()
            .position(|w| w == "--junit")
            .with_context(|| format!("{}: no --junit in `{}`", job.file, job.line))?;
        let junit = words
            .get(junit_at + 1)
            .context("--junit has a value")?
            .clone();
        assert_eq!(
            junit, job.published_junit,
            "{}: the report written is the one published",
            job.file
        );

        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let output = env
            .command(&args)
            .env("ISOTEST_TOKEN", &token)
            .current_dir(&checkout)
            .output()?;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}\n{}",
            job.file,
            job.line,
            String::from_utf8_lossy(&output.stderr)
        );
        let xml = std::fs::read_to_string(checkout.join(&junit))
            .with_context(|| format!("{}: {junit} was not written", job.file))?;
        let doc = roxmltree::Document::parse(&xml)
            .with_context(|| format!("{}: {junit} is not XML", job.file))?;
        let cases = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .count();
        // `true` is one case, the pytest test two.
        assert_eq!(cases, 3, "{}: {xml}", job.file);
        assert!(
            doc.descendants()
                .all(|n| !n.has_tag_name("failure") && !n.has_tag_name("error")),
            "{}: {xml}",
            job.file
        );
    }
    env.stop();
    env.cleanup().await
}

#[test]
fn shell_words_reads_quotes_and_variables() {
    let vars = BTreeMap::from([("S", "http://h:1".to_owned())]);
    let cases: [(&str, &[&str]); 4] = [
        ("isotest run a.toml", &["isotest", "run", "a.toml"]),
        (r#"--server "$S" --x"#, &["--server", "http://h:1", "--x"]),
        ("--server ${S}/v", &["--server", "http://h:1/v"]),
        ("'$S' \"a b\"", &["$S", "a b"]),
    ];
    for (line, expected) in cases {
        assert_eq!(shell_words(line, &vars).expect(line), expected, "{line}");
    }
    assert!(shell_words("$UNSET", &vars).is_err());
    assert!(shell_words("\"open", &vars).is_err());
}
