//! The prepare stage of `isotest run`: before a suite runs or is submitted, every build its
//! tests run from is made once here, in a local sandbox (cargo's and go's, or a suite's own
//! `build`), or found made by an earlier run with the same inputs; each test that runs from
//! one names it (`artifact`), and in server mode it is uploaded beside the workspace. This is
//! where the suite is expanded (`[[discover]]` of a compiled suite needs the build to list
//! its tests), so the build runs once however many workers take the tests, and a broken
//! build fails the CI job in seconds, before anything is queued. A failed build makes every
//! test of the suite an `error`, its output once in the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isotest_protocol::manifest::{BuildSpec, Framework, TestBody};
use isotest_protocol::now_ms;
use isotest_protocol::report::{BuildReport, BuildStatus, Report, SuiteState};
use isotest_protocol::result::TestResult;
use isotest_sandbox::Limits;
use isotest_worker::prepare::{BuildError, BuildRecord, CachedBuild, Request};

use crate::exit::Failure;
use crate::input::{Bundle, LoadedSuite};
use crate::run::Local;

/// How long one build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How much of a build's stdout is kept (cargo's JSON messages, one a line).
const BUILD_STDOUT_BYTES: usize = 64 * 1024 * 1024;
/// How much of a failed build's output the report keeps.
const BUILD_OUTPUT_BYTES: usize = 64 * 1024;

/// A build's limits, from a test's: longer, and room for a compiler and its products.
pub fn build_limits(test: &Limits) -> Limits {
    Limits {
        timeout: BUILD_TIMEOUT,
        memory_bytes: test.memory_bytes.max(4 << 30),
        pids: test.pids.max(1024),
        workspace_bytes: test.workspace_bytes.max(8 << 30),
        stdout_bytes: BUILD_STDOUT_BYTES,
        ..test.clone()
    }
}

/// The builds of a run, for its report and its upload.
#[derive(Debug, Default)]
pub struct Preparation {
    records: Vec<BuildRecord>,
    /// How many tests run from each build, by its packed digest.
    tests: BTreeMap<String, u32>,
    /// The first build that failed, with the number of tests it left without a build.
    failure: Option<Arc<BuildError>>,
}

impl Preparation {
    /// The build that failed, if one did.
    pub fn failure(&self) -> Option<&BuildError> {
        self.failure.as_deref()
    }

    /// Each build, as the report shows it.
    pub fn reports(&self) -> Vec<BuildReport> {
        self.records
            .iter()
            .map(|r| {
                let (status, reason, output, tests) = match &r.outcome {
                    Ok(digest) => (
                        if r.cached {
                            BuildStatus::Cached
                        } else {
                            BuildStatus::Built
                        },
                        None,
                        String::new(),
                        self.tests.get(digest).copied().unwrap_or(0),
                    ),
                    Err(e) => (
                        BuildStatus::Failed,
                        Some(e.reason()),
                        e.output().map(cap_output).unwrap_or_default(),
                        0,
                    ),
                };
                BuildReport {
                    framework: r.framework,
                    key: r.key.clone(),
                    status,
                    duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
                    tests,
                    reason,
                    output,
                }
            })
            .collect()
    }
}

/// The last [`BUILD_OUTPUT_BYTES`] of a build's output, where the compiler's verdict is.
fn cap_output(output: &str) -> String {
    if output.len() <= BUILD_OUTPUT_BYTES {
        return output.to_owned();
    }
    let mut start = output.len() - BUILD_OUTPUT_BYTES;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut]\n{}", &output[start..])
}

/// Whether a test runs from a build: a compiled framework's test id, or a suite's own build.
fn wants_build(framework: Framework, body: &TestBody, build: Option<&BuildSpec>) -> bool {
    build.is_some()
        || (matches!(framework, Framework::Cargo | Framework::Go)
            && matches!(body, TestBody::TestId(_)))
}

/// Makes (or finds) every build the suite's tests run from, once each, and names it in
/// each test (in the suite and in the manifest that is submitted).
///
/// # Errors
///
/// Returns [`Failure::Isolation`] when the host cannot make sandboxes, and a
/// [`Failure::Service`] when a build could not run for a reason of the host's. A build that
/// fails is not an `Err`: [`Preparation::failure`] has it.
pub async fn stage(loaded: &mut LoadedSuite, local: &Local<'_>) -> Result<Preparation, Failure> {
    let needs = loaded
        .suite
        .tests
        .iter()
        .any(|t| t.artifact.is_none() && wants_build(t.framework, &t.body, t.build.as_ref()));
    let mut preparation = Preparation::default();
    if needs {
        let preparer = local.preparer()?;
        let workspace = loaded.workspace.clone();
        let mut named: BTreeMap<String, String> = BTreeMap::new();
        for test in &mut loaded.suite.tests {
            if test.artifact.is_some()
                || !wants_build(test.framework, &test.body, test.build.as_ref())
            {
                continue;
            }
            let request = Request {
                framework: test.framework,
                env: &test.env,
                environment: test.environment.as_deref(),
                build: test.build.as_ref(),
                workspace: workspace.as_ref().map(|b| (b.reference.as_str(), &b.bytes)),
            };
            match preparer.prepare(request).await {
                Ok(Some(build)) => {
                    named.insert(test.name.clone(), build.digest.clone());
                    test.artifact = Some(build.digest);
                }
                Ok(None) => {}
                Err(e) if e.is_the_builds() => {
                    preparation.failure.get_or_insert(e);
                }
                Err(e) => {
                    return Err(Failure::Service(anyhow::anyhow!(
                        isotest_infra::error_chain(&*e)
                    )));
                }
            }
        }
        for entry in &mut loaded.manifest.tests {
            if let Some(digest) = named.get(&entry.name) {
                entry.artifact = Some(digest.clone());
            }
        }
    }
    if let Some(preparer) = local.prepared() {
        preparation.records = preparer.records();
        for record in &preparation.records {
            if let Err(e) = &record.outcome
                && e.is_the_builds()
            {
                preparation.failure.get_or_insert_with(|| Arc::clone(e));
            }
        }
    }
    for test in &loaded.suite.tests {
        if let Some(digest) = &test.artifact {
            *preparation.tests.entry(digest.clone()).or_default() += 1;
        }
    }
    if let Some(preparer) = local.prepared() {
        loaded.artifacts = bundles(&preparer.builds(), &loaded.suite.tests);
    }
    Ok(preparation)
}

/// The report of a suite whose build failed: every test an `error` of the prepare stage,
/// the build's output once, in the report's `builds`.
pub fn report_failed_build(loaded: &LoadedSuite, failure: &BuildError) -> Report {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let record = isotest_producer::suite::record(
        &id,
        &loaded.suite,
        now,
        isotest_producer::config::DEFAULT_DEADLINE,
    );
    let reason = format!(
        "not run: {}; its output is in the report's `builds`",
        failure.reason()
    );
    let results: Vec<TestResult> = isotest_producer::suite::messages(&id, &loaded.suite, now)
        .iter()
        .map(|msg| TestResult::prepare_error(msg, "prepare", reason.clone(), now))
        .collect();
    isotest_report::assemble(&record, results, SuiteState::Complete)
}

/// The packed builds some test of `tests` runs from, to upload beside the workspace.
fn bundles(builds: &[CachedBuild], tests: &[isotest_protocol::manifest::TestSpec]) -> Vec<Bundle> {
    builds
        .iter()
        .filter(|b| {
            tests
                .iter()
                .any(|t| t.artifact.as_deref() == Some(b.digest.as_str()))
        })
        .map(|b| Bundle {
            reference: b.digest.clone(),
            bytes: Arc::clone(&b.bundle),
        })
        .collect()
}
