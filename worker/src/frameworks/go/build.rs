//! Go's build once: `go test -c` for every package with tests, in the prepare stage; every
//! test then runs its package's test binary for itself alone, under `test2json` (as `go test
//! -json` does), in the package's directory. Test ids stay Go's: `IMPORT/PATH.TestName`.

use std::collections::BTreeMap;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::artifact::{ArtifactIndex, TestBinary};
use isotest_protocol::manifest::{DiscoverEntry, Framework};

use crate::frameworks::toolchain::path_str;
use crate::frameworks::{Toolchain, tool_env};
use crate::prepare::BuildPlan;

/// Where the test binaries are written, relative to the workspace.
pub const BUILD_DIR: &str = ".isotest/go-build";

/// The prepare stage's build of a Go module: a test binary per package that has tests.
pub fn plan(
    tools: &Toolchain,
    env: &BTreeMap<String, String>,
    environment: Option<&str>,
) -> BuildPlan {
    let mut env = env.clone();
    tool_env(Framework::Go, tools, &mut env);
    let go = path_str(&tools.go);
    let script = format!(
        "set -e\n\
         echo \"@isotest tooldir $('{go}' env GOTOOLDIR)\"\n\
         mkdir -p {BUILD_DIR}\n\
         '{go}' list -f '{{{{.ImportPath}}}}|{{{{.Dir}}}}|{{{{len .TestGoFiles}}}}|{{{{len .XTestGoFiles}}}}' ./... > /tmp/isotest-packages\n\
         n=0\n\
         while IFS='|' read -r path dir tests xtests; do\n\
           if [ \"$tests\" = 0 ] && [ \"$xtests\" = 0 ]; then continue; fi\n\
           n=$((n+1))\n\
           '{go}' test -c -o \"{BUILD_DIR}/$n.test\" \"$path\"\n\
           echo \"@isotest package {BUILD_DIR}/$n.test|$path|$dir\"\n\
         done < /tmp/isotest-packages\n"
    );
    BuildPlan {
        framework: Framework::Go,
        environment: environment.map(str::to_owned),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        env,
        export: vec![BUILD_DIR.to_owned()],
        exclude: Vec::new(),
    }
}

/// The index of a build from what its script printed.
pub fn index(stdout: &str, key: &str) -> Result<ArtifactIndex, String> {
    let tooldir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("@isotest tooldir "))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or("it did not say where Go's tools are (`go env GOTOOLDIR`)")?;
    let mut binaries = Vec::new();
    for line in stdout.lines() {
        let Some(package) = line.strip_prefix("@isotest package ") else {
            continue;
        };
        let mut fields = package.splitn(3, '|');
        let (Some(exe), Some(path), Some(dir)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("cannot read `{line}`"));
        };
        let cwd = dir
            .strip_prefix("/workspace")
            .ok_or_else(|| format!("package {path} is not in the workspace ({dir})"))?
            .trim_start_matches('/')
            .to_owned();
        binaries.push(TestBinary {
            id: path.to_owned(),
            exe: exe.to_owned(),
            cwd,
            env: BTreeMap::new(),
            wrapper: vec![
                format!("{tooldir}/test2json"),
                "-t".into(),
                "-p".into(),
                path.to_owned(),
            ],
        });
    }
    Ok(ArtifactIndex {
        schema_version: SCHEMA_VERSION,
        framework: Framework::Go,
        key: key.to_owned(),
        mounts: vec![BUILD_DIR.to_owned()],
        binaries,
        unbuilt: Vec::new(),
    })
}

/// Whether a package is one a `[[discover]]` entry's `paths` (package patterns, `./...`
/// style, relative to the module) asks for; none means every package.
fn wants(entry: &DiscoverEntry, binary: &TestBinary) -> bool {
    entry.paths.is_empty()
        || entry.paths.iter().any(|p| {
            let p = p.trim_start_matches("./").trim_end_matches('/');
            match p.strip_suffix("...") {
                Some(prefix) => binary.cwd.starts_with(prefix.trim_end_matches('/')),
                None => binary.cwd == p || (p == "." && binary.cwd.is_empty()),
            }
        })
}

/// A shell script that lists every test of every binary (each under a line naming it).
pub fn listing(index: &ArtifactIndex, entry: &DiscoverEntry) -> Vec<String> {
    let filter = entry
        .filter
        .as_deref()
        .unwrap_or(".*")
        .replace('\'', "'\\''");
    let mut script = String::new();
    for binary in index.binaries.iter().filter(|b| wants(entry, b)) {
        script.push_str(&format!(
            "echo '@isotest binary {}'; '/workspace/{}' -test.list '{filter}' || exit $?\n",
            binary.id, binary.exe
        ));
    }
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The ids in that listing: `PACKAGE.TestName`, tests only (not benchmarks or examples).
pub fn parse_listing(stdout: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut package = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(id) = line.strip_prefix("@isotest binary ") {
            package = Some(id.to_owned());
        } else if let Some(package) = &package
            && line.starts_with("Test")
            && !line.contains(' ')
        {
            ids.push(format!("{package}.{line}"));
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = "@isotest tooldir /usr/lib/go-1.19/pkg/tool/linux_amd64\n\
        @isotest package .isotest/go-build/1.test|example.com/m|/workspace\n\
        @isotest package .isotest/go-build/2.test|example.com/m/sub|/workspace/sub\n";

    #[test]
    fn the_build_output_indexes_every_package() {
        let index = index(BUILD, "k").expect("index");
        assert_eq!(index.binaries.len(), 2);
        let sub = index.binary("example.com/m/sub").expect("sub");
        assert_eq!(sub.exe, ".isotest/go-build/2.test");
        assert_eq!(sub.cwd, "sub");
        assert_eq!(
            sub.wrapper,
            [
                "/usr/lib/go-1.19/pkg/tool/linux_amd64/test2json",
                "-t",
                "-p",
                "example.com/m/sub"
            ]
        );
        assert!(super::index("", "k").is_err(), "no tool dir");
    }

    #[test]
    fn listings_become_package_dot_name_ids() {
        let out = "@isotest binary example.com/m\nTestA\nBenchmarkB\nExampleC\nTestD\n\
                   @isotest binary example.com/m/sub\nTestE\n";
        assert_eq!(
            parse_listing(out),
            [
                "example.com/m.TestA",
                "example.com/m.TestD",
                "example.com/m/sub.TestE"
            ]
        );
        let index = index(BUILD, "k").expect("index");
        let only_sub = DiscoverEntry {
            paths: vec!["./sub/...".into()],
            ..DiscoverEntry::default()
        };
        let script = &listing(&index, &only_sub)[2];
        assert!(script.contains("2.test"), "{script}");
        assert!(!script.contains("1.test"), "{script}");
    }
}
