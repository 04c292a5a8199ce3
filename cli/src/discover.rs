//! Expanding a manifest's `[[discover]]` entries into `[[tests]]` before the suite is run
//! or submitted: each entry's framework lists its tests in a sandbox over the packed
//! workspace (the same sandbox a test gets), here on the machine that runs `isotest run`.
//! So the producer and the workers never see a `[[discover]]` entry, and `isotest run
//! --server` needs the same sandbox capability as embedded mode when a manifest has one.

use std::collections::BTreeSet;
use std::time::Duration;

use isotest_protocol::manifest::Framework;
use isotest_sandbox::Limits;
use isotest_worker::frameworks::discover::{DiscoverError, discover};
use isotest_worker::prepare::Request;

use crate::args::RunArgs;
use crate::exit::Failure;
use crate::input::Unexpanded;
use crate::run::Local;

/// How long one listing may take.
const LISTING_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a listing's stdout is read (one id a line).
const LISTING_BYTES: usize = 16 * 1024 * 1024;
/// How many lines of a failed build's output a failed discovery quotes.
const QUOTED_LINES: usize = 40;

/// Replaces every `[[discover]]` entry with one `[[tests]]` entry per id it lists.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] with the framework's own message when a listing fails,
/// finds nothing, or names a test the suite already has; [`Failure::Isolation`] when the
/// host cannot make sandboxes.
pub async fn expand(
    unexpanded: &mut Unexpanded,
    args: &RunArgs,
    local: &Local<'_>,
) -> Result<(), Failure> {
    if unexpanded.manifest.discover.is_empty() {
        return Ok(());
    }
    let sandboxer = local.sandboxer()?;
    let tools = args.sandbox.toolchain();
    let limits = Limits {
        timeout: LISTING_TIMEOUT,
        stdout_bytes: LISTING_BYTES,
        ..args.sandbox.limits()
    };
    let bundle = unexpanded.workspace.clone();
    let workspace = bundle.as_ref().map(|b| b.bytes.clone());
    let shown = unexpanded.shown.clone();
    let manifest = &mut unexpanded.manifest;
    let mut names: BTreeSet<String> = manifest.tests.iter().map(|t| t.name.clone()).collect();
    let entries = std::mem::take(&mut manifest.discover);
    for (index, entry) in entries.iter().enumerate() {
        // A compiled suite's tests are listed from its build, made once here for every test.
        let framework = entry
            .framework(index)
            .map_err(|e| Failure::BadInput(format!("{shown}: {e}")))?;
        let prepared = match framework {
            Framework::Cargo | Framework::Go => {
                let preparer = local.preparer()?;
                let env = entry.env.clone().unwrap_or_default();
                let request = Request {
                    framework,
                    env: &env,
                    environment: entry.environment.as_deref(),
                    build: None,
                    workspace: bundle.as_ref().map(|b| (b.reference.as_str(), &b.bytes)),
                };
                preparer.prepare(request).await.map_err(|e| {
                    if e.is_the_builds() {
                        let output = e.output().unwrap_or_default();
                        let lines: Vec<&str> =
                            output.lines().filter(|l| !l.trim().is_empty()).collect();
                        let quoted = lines[lines.len().saturating_sub(QUOTED_LINES)..].join("\n");
                        Failure::BadInput(format!("{shown}: discover[{index}]: {e}:\n{quoted}"))
                    } else {
                        Failure::Service(anyhow::anyhow!(isotest_infra::error_chain(&*e)))
                    }
                })?
            }
            _ => None,
        };
        let ids = discover(
            &sandboxer,
            index,
            entry,
            workspace.clone(),
            prepared.as_ref(),
            &tools,
            limits.clone(),
            manifest.network,
        )
        .await
        .map_err(|e| match e {
            DiscoverError::Sandbox { source, .. } => Failure::from(source),
            other => Failure::BadInput(format!("{shown}: {other}")),
        })?;
        tracing::info!(index, framework = %entry.framework, tests = ids.len(), "Tests discovered.");
        for id in ids {
            let mut test = entry.test_entry(&id);
            if let Some(build) = &prepared {
                test.artifact = Some(build.digest.clone());
            }
            if !names.insert(test.name.clone()) {
                return Err(Failure::BadInput(format!(
                    "{shown}: discover[{index}]: the discovered test `{}` has the name of another test; give the entry a `prefix`",
                    test.name
                )));
            }
            manifest.tests.push(test);
        }
    }
    Ok(())
}
