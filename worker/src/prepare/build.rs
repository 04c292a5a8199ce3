//! Running one build in a sandbox and turning its products into a prepared artifact: the
//! exported directory, with the framework's index of its test binaries written at its root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isotest_protocol::artifact::{ARTIFACT_INDEX, ArtifactIndex};
use isotest_sandbox::{
    CollectError, Export, Limits, RunSpec, SandboxError, Sandboxer, StageExit, Termination,
};

use super::BuildPlan;
use crate::frameworks::{adapter, signal_name};

/// How many lines of a failed build's output its one-line reason quotes from.
const REASON_LINES: usize = 3;

/// A build that ran to its end and left its products.
#[derive(Debug, Clone)]
pub struct Built {
    /// Where its products are, with the index at the root.
    pub dir: PathBuf,
    pub index: ArtifactIndex,
    /// What it printed (stdout, then stderr), capped as a test's output is.
    pub output: String,
    pub duration: Duration,
}

/// A build that left nothing to run tests from.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The sandbox could not be made: the host's failure, not the build's.
    #[error("make a sandbox for the {framework} build")]
    Sandbox {
        framework: isotest_protocol::manifest::Framework,
        #[source]
        source: SandboxError,
    },
    /// The build ran and failed: the suite's own doing.
    #[error("the {framework} build failed ({how})")]
    Failed {
        framework: isotest_protocol::manifest::Framework,
        how: String,
        /// What it printed, to be shown once.
        output: String,
        duration: Duration,
    },
    /// Its products could not be taken out of the sandbox (too large, a link).
    #[error("take the {framework} build's products out of its sandbox")]
    Export {
        framework: isotest_protocol::manifest::Framework,
        #[source]
        source: CollectError,
    },
    /// Its output did not say what it built.
    #[error("read what the {framework} build made: {why}")]
    Index {
        framework: isotest_protocol::manifest::Framework,
        why: String,
    },
    #[error("write the prepared build to {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// Whether the build itself is to blame (its tests are errors), rather than the host.
    pub fn is_the_builds(&self) -> bool {
        !matches!(self, BuildError::Sandbox { .. } | BuildError::Io { .. })
    }

    /// The build's output, where it ran.
    pub fn output(&self) -> Option<&str> {
        match self {
            BuildError::Failed { output, .. } => Some(output),
            _ => None,
        }
    }

    /// One line saying why, quoting the first lines of the compiler's complaint.
    pub fn reason(&self) -> String {
        match self {
            BuildError::Failed { output, .. } => {
                let quoted: Vec<&str> = output
                    .lines()
                    .map(str::trim)
                    .filter(|l| {
                        l.starts_with("error") || l.contains(".go:") || l.contains("error:")
                    })
                    .take(REASON_LINES)
                    .collect();
                if quoted.is_empty() {
                    self.to_string()
                } else {
                    format!("{self}: {}", quoted.join(" | "))
                }
            }
            other => isotest_infra::error_chain(other),
        }
    }
}

/// Runs `plan` once over `workspace` and leaves its products, indexed, in the new directory
/// `into` (which must not exist yet; it is removed again when the build fails).
///
/// # Errors
///
/// Returns [`BuildError`]: the sandbox could not be made, the build failed (with its
/// output), or its products could not be exported or indexed.
pub async fn build(
    sandboxer: &Sandboxer,
    plan: &BuildPlan,
    key: &str,
    workspace: Option<Arc<[u8]>>,
    limits: Limits,
    into: &Path,
) -> Result<Built, BuildError> {
    let io = |source| BuildError::Io {
        path: into.to_owned(),
        source,
    };
    std::fs::create_dir_all(into).map_err(io)?;
    let export_cap = limits.workspace_bytes;
    let spec = RunSpec {
        environment: plan.environment.clone(),
        workspace_bundle: workspace,
        command: plan.command.clone(),
        env: plan.env.clone(),
        limits,
        export: Some(Export {
            paths: plan.export.clone(),
            exclude: plan.exclude.clone(),
            into: into.to_owned(),
            max_bytes: export_cap,
        }),
        ..RunSpec::default()
    };
    let started = Instant::now();
    let result = run(sandboxer, plan, key, spec, into, started).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(into);
    }
    result
}

async fn run(
    sandboxer: &Sandboxer,
    plan: &BuildPlan,
    key: &str,
    spec: RunSpec,
    into: &Path,
    started: Instant,
) -> Result<Built, BuildError> {
    let framework = plan.framework;
    let outcome = sandboxer
        .run(spec)
        .await
        .map_err(|source| BuildError::Sandbox { framework, source })?;
    let duration = started.elapsed();
    let stdout = outcome.stdout.render("stdout");
    let stderr = outcome.stderr.render("stderr");
    let how = match (outcome.termination, outcome.command) {
        (Termination::TimedOut | Termination::CpuTimeExceeded, _) => Some("timed out".to_owned()),
        (Termination::OutOfMemory, _) => Some("ran out of memory".to_owned()),
        (_, Some(StageExit::Code(0))) => None,
        (_, Some(StageExit::Code(c))) => Some(format!("exit code {c}")),
        (_, Some(StageExit::Signal(s))) => Some(format!("killed by {}", signal_name(s))),
        (_, None) => Some("it did not run to its end".to_owned()),
    };
    if let Some(how) = how {
        return Err(BuildError::Failed {
            framework,
            how,
            output: format!("{stdout}{stderr}"),
            duration,
        });
    }
    match outcome.exported {
        Some(Ok(_)) => {}
        Some(Err(source)) => return Err(BuildError::Export { framework, source }),
        None => {}
    }
    let mut index = adapter(framework)
        .index_build(&stdout, key)
        .map_err(|why| BuildError::Index { framework, why })?;
    index.framework = framework;
    if index.mounts.is_empty() {
        // A suite's own build: what it leaves is what it was asked to export.
        index.mounts = plan
            .export
            .iter()
            .filter(|p| into.join(p).is_dir())
            .cloned()
            .collect();
    }
    let json = serde_json::to_vec_pretty(&index).unwrap_or_default();
    std::fs::write(into.join(ARTIFACT_INDEX), json).map_err(|source| BuildError::Io {
        path: into.join(ARTIFACT_INDEX),
        source,
    })?;
    Ok(Built {
        dir: into.to_owned(),
        index,
        output: stderr,
        duration,
    })
}
