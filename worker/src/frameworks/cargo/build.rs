//! Cargo's build once: `cargo test --no-run --message-format=json` in the prepare stage,
//! whose `compiler-artifact` messages name each test executable; every test then runs its
//! binary for itself alone (`BINARY --exact NAME`), as `cargo nextest run` does. Test ids
//! are nextest's: the binary id (`crate`, `crate::name`, `crate::bin/name`), a space, the
//! test's name. Doctests have no binary (rustdoc compiles each as it runs it): they are
//! listed at build time and run the slow way, `cargo test --doc -- --exact NAME`.

use std::collections::BTreeMap;

use serde::Deserialize;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::artifact::{ArtifactIndex, TestBinary};
use isotest_protocol::manifest::{DiscoverEntry, Framework};

use crate::frameworks::toolchain::path_str;
use crate::frameworks::{Toolchain, tool_env};
use crate::prepare::BuildPlan;

/// Where the build's target directory is, relative to the workspace: inside it, so that
/// paths compiled into a test (`CARGO_BIN_EXE_*`, `OUT_DIR`) hold in every test sandbox.
pub const TARGET_DIR: &str = "target";
/// The pseudo-binary of a crate's doctests: `crate::doc NAME`.
const DOC: &str = "doc";
/// The line that separates the build's messages from its doctest listing.
const DOCTESTS_MARK: &str = "@isotest doctests";

/// The prepare stage's build of a cargo workspace.
pub fn plan(
    tools: &Toolchain,
    env: &BTreeMap<String, String>,
    environment: Option<&str>,
) -> BuildPlan {
    let mut env = env.clone();
    env.insert(
        "CARGO_TARGET_DIR".into(),
        format!("/workspace/{TARGET_DIR}"),
    );
    // A one-shot build gains nothing from incremental state, and it would double the export.
    env.insert("CARGO_INCREMENTAL".into(), "0".into());
    tool_env(Framework::Cargo, tools, &mut env);
    let cargo = path_str(&tools.cargo);
    let script = format!(
        "'{cargo}' test --no-run --offline --message-format=json-render-diagnostics || exit $?\n\
         echo '{DOCTESTS_MARK}'\n\
         '{cargo}' test --doc --offline -- --list --format terse 2>/dev/null || true\n"
    );
    BuildPlan {
        framework: Framework::Cargo,
        environment: environment.map(str::to_owned),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        env,
        export: vec![TARGET_DIR.to_owned()],
        exclude: [
            "incremental",
            ".fingerprint",
            ".cargo-lock",
            "*.rlib",
            "*.rmeta",
            "*.d",
            "build-script-*",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
    }
}

/// One line of `cargo --message-format=json` this build cares about.
#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    manifest_path: Option<String>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    executable: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    test: bool,
}

/// The package name and version in a cargo package id: the newer form
/// `path+file:///p/strsim#strsim@0.11.1` (or `…/strsim#0.11.1`), or the older
/// `strsim 0.11.1 (path+file:///p/strsim)`.
fn package_name_version(id: &str) -> (String, String) {
    if let Some((url, fragment)) = id.rsplit_once('#') {
        return match fragment.split_once('@') {
            Some((name, version)) => (name.to_owned(), version.to_owned()),
            None => {
                let name = url.rsplit('/').next().unwrap_or(url);
                (name.to_owned(), fragment.to_owned())
            }
        };
    }
    let mut words = id.split(' ');
    let name = words.next().unwrap_or_default().to_owned();
    let version = words.next().unwrap_or_default().to_owned();
    (name, version)
}

/// A path cargo printed, relative to the workspace (the sandbox has it at `/workspace`).
fn in_workspace(path: &str) -> Option<String> {
    let rel = path.strip_prefix("/workspace")?;
    Some(rel.trim_start_matches('/').to_owned())
}

/// The index of a build from what it printed: the test executables, then the doctests.
pub fn index(stdout: &str, key: &str) -> Result<ArtifactIndex, String> {
    let (messages, doctests) = stdout.split_once(DOCTESTS_MARK).unwrap_or((stdout, ""));
    let mut binaries: Vec<TestBinary> = Vec::new();
    let mut unbuilt = Vec::new();
    for message in messages
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Message>(l).ok())
    {
        if message.reason != "compiler-artifact" || !message.profile.is_some_and(|p| p.test) {
            continue;
        }
        let (Some(target), Some(exe)) = (message.target, message.executable) else {
            continue;
        };
        let exe = in_workspace(&exe).ok_or_else(|| {
            format!("test executable {exe} is not in the workspace's target directory")
        })?;
        let (package, version) = package_name_version(&message.package_id);
        let manifest_dir = message
            .manifest_path
            .as_deref()
            .and_then(|p| p.rsplit_once('/'))
            .map(|(dir, _)| dir.to_owned())
            .unwrap_or_else(|| "/workspace".to_owned());
        let kind = target.kind.first().map(String::as_str).unwrap_or("lib");
        let id = match kind {
            "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro" => package.clone(),
            "test" => format!("{package}::{}", target.name),
            other => format!("{package}::{other}/{}", target.name),
        };
        let env = BTreeMap::from([
            ("CARGO_MANIFEST_DIR".to_owned(), manifest_dir.clone()),
            ("CARGO_PKG_NAME".to_owned(), package.clone()),
            ("CARGO_PKG_VERSION".to_owned(), version),
            ("CARGO_CRATE_NAME".to_owned(), target.name.replace('-', "_")),
        ]);
        binaries.push(TestBinary {
            id,
            exe,
            cwd: in_workspace(&manifest_dir).unwrap_or_default(),
            env,
            wrapper: Vec::new(),
        });
    }
    // `cargo test --doc --list` of a workspace lists the doctests of every library; with one
    // package (the common case) they are its own.
    let doc_owner = binaries
        .iter()
        .find(|b| !b.id.contains("::"))
        .map(|b| b.id.clone());
    if let Some(owner) = doc_owner {
        unbuilt.extend(
            doctests
                .lines()
                .filter_map(|l| l.strip_suffix(": test"))
                .map(|name| format!("{owner}::{DOC} {name}")),
        );
    }
    binaries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ArtifactIndex {
        schema_version: SCHEMA_VERSION,
        framework: Framework::Cargo,
        key: key.to_owned(),
        mounts: vec![TARGET_DIR.to_owned()],
        binaries,
        unbuilt,
    })
}

/// Which kinds of test a `[[discover]]` entry asks for: its `paths` name them (`lib`,
/// `bins`, `tests`, `examples`, `benches`, `doc`); none means all that `cargo test` runs.
fn wants(entry: &DiscoverEntry, id: &str) -> bool {
    if entry.paths.is_empty() {
        return true;
    }
    let kind = match id.split_once("::") {
        None => "lib",
        Some((_, rest)) if rest == DOC => "doc",
        Some((_, rest)) => match rest.split_once('/') {
            Some(("bin", _)) => "bins",
            Some(("example", _)) => "examples",
            Some(("bench", _)) => "benches",
            _ => "tests",
        },
    };
    entry.paths.iter().any(|p| p == kind)
}

/// A shell script that lists every test of every binary (each under a line naming it).
pub fn listing(index: &ArtifactIndex, entry: &DiscoverEntry) -> Vec<String> {
    let mut script = String::new();
    for binary in index.binaries.iter().filter(|b| wants(entry, &b.id)) {
        script.push_str(&format!(
            "echo '@isotest binary {}'; '/workspace/{}' --list --format terse{} || exit $?\n",
            binary.id,
            binary.exe,
            entry
                .filter
                .as_deref()
                .map(|f| format!(" '{}'", f.replace('\'', "'\\''")))
                .unwrap_or_default()
        ));
    }
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The ids in that listing (`BINARY NAME`), then the doctests the entry asks for.
pub fn parse_listing(index: &ArtifactIndex, entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut binary = None;
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("@isotest binary ") {
            binary = Some(id.to_owned());
        } else if let (Some(binary), Some(name)) = (&binary, line.strip_suffix(": test")) {
            ids.push(format!("{binary} {name}"));
        }
    }
    ids.extend(
        index
            .unbuilt
            .iter()
            .filter(|id| wants(entry, id.split_once(' ').map_or(id.as_str(), |(b, _)| b)))
            .filter(|id| entry.filter.as_deref().is_none_or(|f| id.contains(f)))
            .cloned(),
    );
    ids
}

/// A test id split into its binary id and test name, where it has that form: the binary id
/// is a crate name with at most a `::target` (or `::kind/target`) after it.
pub fn split_id(id: &str) -> Option<(&str, &str)> {
    let (binary, name) = id.split_once(' ')?;
    let word = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let ok = match binary.split_once("::") {
        None => word(binary),
        Some((krate, target)) => {
            word(krate)
                && match target.split_once('/') {
                    Some((kind, name)) => matches!(kind, "bin" | "example" | "bench") && word(name),
                    None => word(target),
                }
        }
    };
    (ok && !name.is_empty()).then_some((binary, name))
}

/// `cargo test`'s selection of the target a binary id names, for running it the slow way.
pub fn target_args(binary: &str) -> Vec<String> {
    match binary.split_once("::") {
        None => vec!["--lib".into()],
        Some((_, DOC)) => vec!["--doc".into()],
        Some((_, target)) => match target.split_once('/') {
            Some((kind, name)) => vec![format!("--{kind}"), name.to_owned()],
            None => vec!["--test".into(), target.to_owned()],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///workspace#strsim@0.11.1","manifest_path":"/workspace/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"strsim","src_path":"/workspace/src/lib.rs"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","package_id":"path+file:///workspace#strsim@0.11.1","manifest_path":"/workspace/Cargo.toml","target":{"kind":["test"],"name":"lib"},"profile":{"test":true},"executable":"/workspace/target/debug/deps/lib-b805"}
{"reason":"compiler-artifact","package_id":"path+file:///workspace#strsim@0.11.1","manifest_path":"/workspace/Cargo.toml","target":{"kind":["lib"],"name":"strsim"},"profile":{"test":true},"executable":"/workspace/target/debug/deps/strsim-b260"}
{"reason":"compiler-artifact","package_id":"strsim-cli 0.1.0 (path+file:///workspace/cli)","manifest_path":"/workspace/cli/Cargo.toml","target":{"kind":["bin"],"name":"strsim-cli"},"profile":{"test":true},"executable":"/workspace/target/debug/deps/strsim_cli-77"}
{"reason":"build-finished","success":true}
@isotest doctests
src/lib.rs - hamming (line 41): test
src/lib.rs - jaro (line 98): test
"#;

    #[test]
    fn the_build_output_indexes_every_test_binary_and_doctest() {
        let index = index(BUILD, "k").expect("index");
        let ids: Vec<&str> = index.binaries.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["strsim", "strsim-cli::bin/strsim-cli", "strsim::lib"]);
        let lib = index.binary("strsim").expect("lib");
        assert_eq!(lib.exe, "target/debug/deps/strsim-b260");
        assert_eq!(lib.cwd, "");
        assert_eq!(lib.env["CARGO_MANIFEST_DIR"], "/workspace");
        assert_eq!(lib.env["CARGO_PKG_VERSION"], "0.11.1");
        let cli = index.binary("strsim-cli::bin/strsim-cli").expect("bin");
        assert_eq!(cli.cwd, "cli");
        assert_eq!(
            index.unbuilt,
            [
                "strsim::doc src/lib.rs - hamming (line 41)",
                "strsim::doc src/lib.rs - jaro (line 98)"
            ]
        );
        assert_eq!(index.mounts, [TARGET_DIR]);
    }

    #[test]
    fn ids_split_into_binary_and_name() {
        for (id, want) in [
            ("strsim tests::a", Some(("strsim", "tests::a"))),
            (
                "strsim::lib levenshtein",
                Some(("strsim::lib", "levenshtein")),
            ),
            ("cli::bin/main t", Some(("cli::bin/main", "t"))),
            (
                "strsim::doc src/lib.rs - jaro (line 98)",
                Some(("strsim::doc", "src/lib.rs - jaro (line 98)")),
            ),
            ("tests::a", None),
            ("src/lib.rs - jaro (line 98)", None),
            ("a::weird/x y", None),
        ] {
            assert_eq!(split_id(id), want, "{id}");
        }
        assert_eq!(target_args("strsim"), ["--lib"]);
        assert_eq!(target_args("strsim::doc"), ["--doc"]);
        assert_eq!(target_args("strsim::lib"), ["--test", "lib"]);
        assert_eq!(target_args("cli::bin/main"), ["--bin", "main"]);
    }

    #[test]
    fn listings_become_binary_and_name_ids_and_paths_choose_kinds() {
        let index = index(BUILD, "k").expect("index");
        let out = "@isotest binary strsim\ntests::a: test\n@isotest binary strsim::lib\njaro: test\nbench_x: benchmark\n";
        let all = parse_listing(&index, &DiscoverEntry::default(), out);
        assert_eq!(
            all,
            [
                "strsim tests::a",
                "strsim::lib jaro",
                "strsim::doc src/lib.rs - hamming (line 41)",
                "strsim::doc src/lib.rs - jaro (line 98)"
            ]
        );
        let no_doc = DiscoverEntry {
            paths: vec!["lib".into(), "tests".into()],
            ..DiscoverEntry::default()
        };
        assert_eq!(
            parse_listing(&index, &no_doc, out),
            ["strsim tests::a", "strsim::lib jaro"]
        );
        let script = &listing(&index, &no_doc)[2];
        assert!(
            script.contains("target/debug/deps/strsim-b260' --list"),
            "{script}"
        );
        assert!(!script.contains("strsim_cli"), "{script}");
    }
}
