//! Cargo: built once by the prepare stage ([`build`]), after which a test id (`BINARY NAME`,
//! as nextest names tests) runs its one binary for that one test; without a build (a
//! doctest, or an older bare name) `cargo test --offline [TARGET] -- --exact NAME`; inline
//! `code` as an integration test of a crate made for it. Per-case results from libtest's
//! output ([`libtest`]); discovery lists the built binaries' tests and the doctests.

mod build;
mod libtest;

use libtest::parse;

use std::collections::BTreeMap;
use std::path::PathBuf;

use isotest_protocol::artifact::ArtifactIndex;
use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::CaseResult;

use crate::frameworks::toolchain::path_str;
use crate::frameworks::verdict::{Exit, Observed, Verdict, judge_runner};
use crate::frameworks::{Adapter, Plan, Toolchain, sh};
use crate::prepare::BuildPlan;

/// The integration test inline `code` of a `cargo` test is written to.
pub const CARGO_CODE_FILE: &str = "tests/isotest_code.rs";

/// The Cargo adapter.
pub(crate) struct Cargo;

impl Adapter for Cargo {
    fn tool_env(&self, tools: &Toolchain, set: &mut dyn FnMut(&str, String)) {
        set("CARGO_HOME", "/tmp/cargo-home".into());
        set("CARGO_TARGET_DIR", "/tmp/cargo-target".into());
        set("CARGO_TERM_COLOR", "never".into());
        set("CARGO_NET_OFFLINE", "true".into());
        // The compiler and rustdoc beside this cargo, not whatever PATH finds (a rustup
        // proxy there would look for ~/.rustup under the sandbox's home).
        for (var, program) in [("RUSTC", "rustc"), ("RUSTDOC", "rustdoc")] {
            let path = tools.cargo.with_file_name(program);
            if path.is_absolute() {
                set(var, path.to_string_lossy().into_owned());
            }
        }
    }

    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        let cargo = path_str(&tools.cargo);
        plan.command = match &test.body {
            TestBody::Code(code) => {
                plan.file(CARGO_CODE_FILE, code.as_bytes());
                let prelude = "[ -f Cargo.toml ] || { printf '[package]\\nname = \"isotest-code\"\\nversion = \"0.0.0\"\\nedition = \"2021\"\\n[workspace]\\n' > Cargo.toml; mkdir -p src; : > src/lib.rs; }; ";
                sh(prelude, &[cargo, "test".into(), "--offline".into()])
            }
            TestBody::TestId(id) => {
                // A `BINARY NAME` id picks its target; an older bare name runs in every one.
                let (targets, name) = match build::split_id(id) {
                    Some((binary, name)) => (build::target_args(binary), name),
                    None => (Vec::new(), id.as_str()),
                };
                let mut argv = vec![cargo, "test".into(), "--offline".into()];
                argv.extend(targets);
                argv.extend(["--".into(), "--exact".into(), name.to_owned()]);
                argv
            }
            TestBody::Command(argv) => argv.clone(),
        };
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        (parse(seen.stdout), None)
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], _problem: Option<&str>) -> Verdict {
        judge_runner("cargo test", exit, cases, &[101])
    }

    fn listing(&self, entry: &DiscoverEntry, tools: &Toolchain) -> Vec<String> {
        let mut argv = vec![
            path_str(&tools.cargo),
            "test".into(),
            "--offline".into(),
            "--".into(),
            "--list".into(),
        ];
        argv.extend(entry.filter.clone());
        argv
    }

    fn parse_listing(&self, _entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned)
            .collect()
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
        vec![tools.cargo.clone(), tools.cargo.with_file_name("rustc")]
    }

    fn index_build(&self, stdout: &str, key: &str) -> Result<ArtifactIndex, String> {
        build::index(stdout, key)
    }

    fn listing_prepared(&self, index: &ArtifactIndex, entry: &DiscoverEntry) -> Vec<String> {
        build::listing(index, entry)
    }

    fn parse_listing_prepared(
        &self,
        index: &ArtifactIndex,
        entry: &DiscoverEntry,
        stdout: &str,
    ) -> Vec<String> {
        build::parse_listing(index, entry, stdout)
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
        let Some((binary, name)) = build::split_id(id) else {
            return false;
        };
        let Some(binary) = index.binary(binary) else {
            return false;
        };
        // As cargo runs a test binary: in its package's directory, with its variables.
        plan.command = vec![
            format!("/workspace/{}", binary.exe),
            "--exact".into(),
            name.to_owned(),
        ];
        plan.workdir = binary.cwd.clone();
        for (key, value) in &binary.env {
            plan.env.entry(key.clone()).or_insert_with(|| value.clone());
        }
        true
    }
}
