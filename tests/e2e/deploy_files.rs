//! The deployment files run as written: the services of `deploy/compose.yaml` started
//! with their own `command`s, and the `isotest run` line of each CI job in
//! `deploy/ci/` run against them, its JUnit report written where the job's publishing
//! step reads it.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;

use crate::deploy_commands::deploy;
use crate::support::{TestEnv, poll};

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
/// `--listen` moved to a free local port), waits until they serve, and gives an API token
/// (compose's producer requires one).
async fn start_as_composed(env: &mut TestEnv) -> Result<String> {
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
    let added = env.command(&["token", "add", "compose"]).output()?;
    ensure!(added.status.success(), "{added:?}");
    Ok(String::from_utf8(added.stdout)?.trim().to_owned())
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
    let token = start_as_composed(&mut env).await?;
    let suite = small_suite(&env);
    let run = env.run_suite(&suite, "compose", true, &["--token", &token]);
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

/// The arguments of the Jenkinsfile's `junit` step, named-argument form.
fn junit_step(jenkinsfile: &str) -> Option<&str> {
    jenkinsfile
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("junit "))
}

/// The quoted value of a Groovy named argument: `name: 'value'`.
fn named_string(args: &str, name: &str) -> Option<String> {
    let rest = args.split_once(&format!("{name}:"))?.1.trim_start();
    let rest = rest.strip_prefix('\'')?;
    rest.split_once('\'').map(|(value, _)| value.to_owned())
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
    // `junit allowEmptyResults: true, testResults: '…'`, or the short `junit '…'`.
    let published_junit = quoted_after("junit ")
        .into_iter()
        .chain(junit_step(&text).and_then(|step| named_string(step, "testResults")))
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

/// The CI jobs inside the cluster name the producer by its Service: `http://NAME.NAMESPACE.svc`
/// must be a Service of the Kubernetes base, on a port it serves.
#[test]
fn the_ci_jobs_name_the_producer_service() -> Result<()> {
    let objects = crate::deploy_commands::documents(&crate::deploy_commands::kustomize(&deploy(
        "k8s/base",
    ))?)?;
    let gitlab = yaml("ci/gitlab-ci.yml")?;
    let jenkins = std::fs::read_to_string(deploy("ci/Jenkinsfile"))?;
    let jenkins_server = jenkins
        .lines()
        .find_map(|l| l.trim().strip_prefix("ISOTEST_SERVER = '"))
        .and_then(|rest| rest.split_once('\''))
        .map(|(url, _)| url.to_owned())
        .context("Jenkinsfile: ISOTEST_SERVER = '…'")?;
    let gitlab_server = gitlab["isotest"]["variables"]["ISOTEST_SERVER"]
        .as_str()
        .context("gitlab-ci.yml: variables.ISOTEST_SERVER")?
        .to_owned();
    for (file, url) in [
        ("gitlab-ci.yml", gitlab_server),
        ("Jenkinsfile", jenkins_server),
    ] {
        let url = reqwest::Url::parse(&url).with_context(|| format!("{file}: {url}"))?;
        let host = url.host_str().unwrap_or_default();
        let (service, namespace) = host
            .strip_suffix(".svc")
            .and_then(|h| h.split_once('.'))
            .with_context(|| format!("{file}: {host} is not NAME.NAMESPACE.svc"))?;
        let port = url.port_or_known_default().context("a port")?;
        let found = objects.iter().any(|o| {
            o["kind"].as_str() == Some("Service")
                && o["metadata"]["name"].as_str() == Some(service)
                && o["metadata"]["namespace"].as_str() == Some(namespace)
                && o["spec"]["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|p| p["port"].as_u64() == Some(u64::from(port)))
        });
        assert!(
            found,
            "{file}: {url} names no Service {service} in namespace {namespace} with port {port}"
        );
    }
    Ok(())
}

/// Each CI system runs the job as it would: GitLab runs the script through the image's
/// shell, so an image whose ENTRYPOINT is isotest needs it cleared; GitHub Actions does not
/// build isotest on every run and lets action-junit-report write its check run; Jenkins'
/// junit step does not hide isotest's own failure behind "no test report found".
#[test]
fn the_ci_jobs_run_as_their_systems_run_them() -> Result<()> {
    let targets = crate::deploy_commands::dockerfile_targets(&std::fs::read_to_string(deploy(
        "Dockerfile",
    ))?)?;

    let gitlab = yaml("ci/gitlab-ci.yml")?;
    let image = &gitlab["isotest"]["image"];
    let name = image["name"]
        .as_str()
        .or(image.as_str())
        .unwrap_or_default();
    let target = targets
        .get(crate::deploy_commands::image_target(name))
        .with_context(|| format!("gitlab-ci.yml: image {name} is not built by the Dockerfile"))?;
    if !target.entrypoint.is_empty() {
        assert_eq!(
            image["entrypoint"],
            Value::Sequence(vec![Value::String(String::new())]),
            "gitlab-ci.yml: image {name} has ENTRYPOINT {:?}: the job needs entrypoint: [\"\"]",
            target.entrypoint
        );
    }

    let github = yaml("ci/github-actions.yml")?;
    for (name, job) in github["jobs"].as_mapping().context("jobs")? {
        let steps = job["steps"].as_sequence().context("steps")?;
        for step in steps {
            let run = step["run"].as_str().unwrap_or_default();
            assert!(
                !run.contains("cargo "),
                "github-actions.yml: job {name:?} builds isotest: {run}"
            );
        }
        let reports = steps.iter().any(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("mikepenz/action-junit-report"))
        });
        if reports {
            assert_eq!(
                job["permissions"]["checks"].as_str(),
                Some("write"),
                "github-actions.yml: job {name:?} publishes a check run without checks: write"
            );
        }
    }

    let jenkins = std::fs::read_to_string(deploy("ci/Jenkinsfile"))?;
    let junit = junit_step(&jenkins).context("Jenkinsfile: a junit step")?;
    assert!(
        junit.contains("allowEmptyResults: true"),
        "Jenkinsfile: `junit {junit}` fails the build when isotest wrote no report"
    );
    Ok(())
}

/// The value KEDA's `metrics-api` scaler reads with `format: prometheus`: the first sample
/// of the family `location` names (a bare metric name here), from Prometheus' text format.
fn keda_prometheus_value(text: &str, location: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == location).then(|| value.parse().ok()).flatten()
        })
}

#[test]
fn keda_reads_the_first_sample_of_the_named_family() {
    let text = "# HELP isotest_tests_unfinished Tests\n# TYPE isotest_tests_unfinished gauge\n\
                isotest_tests_unfinished_other 9\nisotest_tests_unfinished 7\n# EOF\n";
    assert_eq!(
        keda_prometheus_value(text, "isotest_tests_unfinished"),
        Some(7.0)
    );
    assert_eq!(keda_prometheus_value(text, "isotest_absent"), None);
}

/// KEDA's trigger, as the Kubernetes base declares it, resolved to what serves it: the
/// metric, the aggregator container port its URL reaches, and the tests per worker.
struct Trigger {
    metric: String,
    aggregator_port: u16,
    target: u64,
}

fn scaled_object_trigger(objects: &[Value]) -> Result<Trigger> {
    use crate::deploy_commands::image_target;
    let of = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
            })
            .with_context(|| format!("no {kind} {name} in the Kubernetes base"))
    };
    let scaled = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("ScaledObject"))
        .context("no ScaledObject")?;
    let worker = of(
        "Deployment",
        scaled["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let triggers = scaled["spec"]["triggers"]
        .as_sequence()
        .context("triggers")?;
    ensure!(triggers.len() == 1, "one trigger, not {}", triggers.len());
    let trigger = &triggers[0];
    ensure!(
        trigger["type"].as_str() == Some("metrics-api")
            && trigger["metadata"]["format"].as_str() == Some("prometheus"),
        "a metrics-api trigger reading Prometheus text: {trigger:?}"
    );
    let meta = &trigger["metadata"];
    let url = reqwest::Url::parse(meta["url"].as_str().context("url")?)?;
    ensure!(url.path() == "/metrics", "{url} is not /metrics");
    let host = url.host_str().unwrap_or_default();
    let (service_name, rest) = host.split_once('.').context("NAME.NAMESPACE.svc")?;
    let namespace = rest.strip_suffix(".svc").context("NAME.NAMESPACE.svc")?;
    let service = of("Service", service_name)?;
    ensure!(
        service["metadata"]["namespace"].as_str() == Some(namespace),
        "{host}"
    );
    let port = url.port().context("a port in the url")?;
    let target_port = service["spec"]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .map(|p| p["targetPort"].clone())
        .with_context(|| format!("Service {service_name} has no port {port}"))?;
    // The Deployment the Service selects, and its container port the targetPort names.
    let selector = service["spec"]["selector"]
        .as_mapping()
        .context("selector")?;
    let aggregator = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some("Deployment")
                && selector
                    .iter()
                    .all(|(k, v)| &o["spec"]["template"]["metadata"]["labels"][k] == v)
        })
        .context("no Deployment behind the trigger's Service")?;
    let container = &aggregator["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        image_target(container["image"].as_str().unwrap_or_default()) == "isotest"
            && container["args"][0].as_str() == Some("aggregator"),
        "the trigger's Service does not reach an aggregator: {container:?}"
    );
    let aggregator_port = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == target_port || p["containerPort"] == target_port)
        .and_then(|p| p["containerPort"].as_u64())
        .context("the Service's targetPort is no port of the aggregator")?;
    let worker_args: Vec<&str> = worker["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let concurrency = worker_args
        .iter()
        .position(|a| *a == "--concurrency")
        .and_then(|i| worker_args.get(i + 1))
        .context("the worker sets --concurrency")?;
    let target: u64 = meta["targetValue"]
        .as_str()
        .context("targetValue")?
        .parse()?;
    ensure!(
        concurrency.parse::<u64>()? == target,
        "targetValue {target} is not the worker's --concurrency {concurrency}: one worker per that many tests"
    );
    Ok(Trigger {
        metric: meta["valueLocation"]
            .as_str()
            .context("valueLocation")?
            .to_owned(),
        aggregator_port: u16::try_from(aggregator_port)?,
        target,
    })
}

/// The autoscaler's query and threshold against what the services expose: the aggregator
/// serves the metric on the port the ScaledObject's URL reaches (its default
/// --metrics-listen), and the value counts every test without a final result, waiting or
/// running, so that ceil(value / target) workers are asked for, and none once all are done.
#[tokio::test(flavor = "multi_thread")]
async fn the_scaled_object_reads_the_tests_waiting_and_running() -> Result<()> {
    let objects = crate::deploy_commands::documents(&crate::deploy_commands::kustomize(&deploy(
        "k8s/base",
    ))?)?;
    let trigger = scaled_object_trigger(&objects)?;
    let listen = isotest::args::AGGREGATOR_METRICS;
    assert_eq!(
        listen.port(),
        trigger.aggregator_port,
        "the aggregator's default metrics port"
    );

    let mut env = TestEnv::new().await;
    let metrics_port = crate::support::free_port()?;
    let metrics_env = (
        "ISOTEST_METRICS_LISTEN".to_owned(),
        format!("127.0.0.1:{metrics_port}"),
    );
    env.service_env.push(metrics_env);
    env.start(0, 1).await?;
    let tests: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"name": format!("t{i}"), "command": ["sleep", "1"]}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/suites",
            env.producer_url.as_deref().context("producer")?
        ))
        .json(&serde_json::json!({"name": "scaling", "tests": tests}))
        .send()
        .await?;
    ensure!(
        response.status().as_u16() == 202,
        "{}",
        response.text().await?
    );

    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let read = || async {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        keda_prometheus_value(&text, &trigger.metric)
            .with_context(|| format!("{} is not in the aggregator's /metrics", trigger.metric))
    };
    // No worker yet: all five wait, and KEDA asks for ceil(5 / 2) = 3 workers.
    poll(
        Duration::from_secs(15),
        "the metric to count 5 waiting tests",
        || async { Ok(read().await? == 5.0) },
    )
    .await
    .with_context(|| env.log("aggregator").join("\n"))?;
    assert_eq!(5_u64.div_ceil(trigger.target), 3);

    // One worker taking one test at a time: once the queue is empty, its running test still
    // counts (KEDA must not scale it away), and when all are done the value is 0.
    env.service_env.clear();
    env.spawn("worker-0", &["worker", "--concurrency", "1"]);
    let seen_running_with_empty_queue = std::sync::atomic::AtomicBool::new(false);
    poll(
        Duration::from_secs(60),
        "the metric to fall to 0",
        || async {
            let (ready, _) = env.queue_state().await?;
            let value = read().await?;
            if ready == 0 && value >= 1.0 {
                seen_running_with_empty_queue.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(value == 0.0)
        },
    )
    .await
    .with_context(|| env.log("worker-0").join("\n"))?;
    assert!(
        seen_running_with_empty_queue.load(std::sync::atomic::Ordering::Relaxed),
        "the running test was not counted once the queue was empty"
    );
    env.stop();
    env.cleanup().await
}
