//! Go: `go test -json -run '^Name$' PACKAGE` for one test id (`[package.]TestName`), or
//! inline `code` as a package of its own; per-case results from the `-json` event stream
//! (one event a line: `run`, `output`, `pass`, `fail`, `skip`, each naming its package and
//! test; a test that started and never ended, its binary crashed under it, is an error);
//! discovery by `go test -list`.

mod build;
mod events;

use events::{package_output, parse};

use std::collections::BTreeMap;
use std::path::PathBuf;

use isotest_protocol::artifact::ArtifactIndex;
use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::CaseResult;

use crate::frameworks::toolchain::path_str;
use crate::frameworks::verdict::{Exit, Observed, Verdict, judge_runner};
use crate::frameworks::{Adapter, Plan, Toolchain, sh};
use crate::prepare::BuildPlan;

/// The file inline `code` of a `go` test is written to (the module is made if missing).
pub const GO_CODE_FILE: &str = "isotest_test.go";

/// The Go adapter.
pub(crate) struct Go;

/// Splits a Go test id, `[package.]TestName`, into the package pattern and the name.
pub fn split_go_id(id: &str) -> (&str, &str) {
    match id.rsplit_once('.') {
        Some((pkg, name)) if !pkg.is_empty() && !name.is_empty() => (pkg, name),
        _ => ("./...", id),
    }
}

/// A regular expression matching exactly `name` (Go's `-run` splits on `/` for subtests).
fn go_run_pattern(name: &str) -> String {
    name.split('/')
        .map(|part| {
            let escaped: String = part
                .chars()
                .flat_map(|c| {
                    let special = "\\.+*?()|[]{}^$".contains(c);
                    special
                        .then_some('\\')
                        .into_iter()
                        .chain(std::iter::once(c))
                })
                .collect();
            format!("^{escaped}$")
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Adapter for Go {
    fn tool_env(&self, _tools: &Toolchain, set: &mut dyn FnMut(&str, String)) {
        set("GOCACHE", "/tmp/go-build".into());
        set("GOPATH", "/tmp/go".into());
        set("GOMODCACHE", "/tmp/go/pkg/mod".into());
        set("GOPROXY", "off".into());
        set("GOTOOLCHAIN", "local".into());
        set("GOFLAGS", "-mod=mod".into());
        set("CGO_ENABLED", "0".into());
        set("HOME", "/tmp".into());
    }

    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        let go = path_str(&tools.go);
        plan.command = match &test.body {
            TestBody::Code(code) => {
                plan.file(GO_CODE_FILE, code.as_bytes());
                let prelude = format!(
                    "[ -f go.mod ] || '{go}' mod init isotest.local/code >/dev/null 2>&1; "
                );
                sh(
                    &prelude,
                    &[
                        go,
                        "test".into(),
                        "-json".into(),
                        "-count=1".into(),
                        ".".into(),
                    ],
                )
            }
            TestBody::TestId(id) => {
                let (package, name) = split_go_id(id);
                vec![
                    go,
                    "test".into(),
                    "-json".into(),
                    "-count=1".into(),
                    "-run".into(),
                    go_run_pattern(name),
                    package.to_owned(),
                ]
            }
            TestBody::Command(argv) => argv.clone(),
        };
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        (parse(seen.stdout), None)
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], _problem: Option<&str>) -> Verdict {
        judge_runner("go test", exit, cases, &[1])
    }

    fn error_text(&self, seen: &Observed<'_>) -> String {
        package_output(seen.stdout)
    }

    fn listing(&self, entry: &DiscoverEntry, tools: &Toolchain) -> Vec<String> {
        let mut argv = vec![
            path_str(&tools.go),
            "test".into(),
            "-list".into(),
            entry.filter.clone().unwrap_or_else(|| ".".into()),
        ];
        if entry.paths.is_empty() {
            argv.push("./...".into());
        }
        argv.extend(entry.paths.iter().cloned());
        argv
    }

    fn parse_listing(&self, _entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        // Names, then `ok  \tPACKAGE\t0.01s` (or `?  \tPACKAGE\t[no test files]`).
        let mut ids = Vec::new();
        let mut pending = Vec::new();
        for line in stdout.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["ok", package, ..] => {
                    ids.extend(pending.drain(..).map(|n: &str| format!("{package}.{n}")));
                }
                [name] if name.starts_with("Test") => pending.push(*name),
                _ => {}
            }
        }
        ids
    }

    fn build(
        &self,
        tools: &Toolchain,
        env: &BTreeMap<String, String>,
        environment: Option<&str>,
    ) -> Option<BuildPlan> {
        Some(build::plan(tools, env, environment))
    }

    fn build_tools(&self, tools: &Toolchain) -> Vec<PathBuf> {
        vec![tools.go.clone()]
    }

    fn index_build(&self, stdout: &str, key: &str) -> Result<ArtifactIndex, String> {
        build::index(stdout, key)
    }

    fn listing_prepared(&self, index: &ArtifactIndex, entry: &DiscoverEntry) -> Vec<String> {
        build::listing(index, entry)
    }

    fn parse_listing_prepared(
        &self,
        _index: &ArtifactIndex,
        _entry: &DiscoverEntry,
        stdout: &str,
    ) -> Vec<String> {
        build::parse_listing(stdout)
    }

    fn lay_out_prepared(
        &self,
        test: &TestSpec,
        index: &ArtifactIndex,
        _tools: &Toolchain,
        plan: &mut Plan,
    ) -> bool {
        let TestBody::TestId(id) = &test.body else {
            return false;
        };
        let (package, name) = split_go_id(id);
        let Some(binary) = index.binary(package) else {
            return false;
        };
        // As `go test -json` runs it: under test2json, verbose, in the package's directory.
        let mut argv = binary.wrapper.clone();
        argv.extend([
            format!("/workspace/{}", binary.exe),
            "-test.v".into(),
            "-test.paniconexit0".into(),
            "-test.run".into(),
            go_run_pattern(name),
        ]);
        plan.command = argv;
        plan.workdir = binary.cwd.clone();
        true
    }
}
