//! Loading a suite from disk: the manifest, validated with its file and line in every
//! error, and its workspace directory packed into a content-addressed bundle (what
//! [`crate::workspace`] selects).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use isotest_protocol::manifest::{Format, Manifest, Suite};

use crate::exit::Failure;

/// A suite as the user gave it, ready to submit or run.
#[derive(Debug)]
pub struct LoadedSuite {
    /// The manifest as written, with `workspace` rewritten to the bundle's reference.
    pub manifest: Manifest,
    pub suite: Suite,
    pub workspace: Option<Bundle>,
    /// The packed builds its tests run from (see `prepare`), uploaded beside the workspace.
    pub artifacts: Vec<Bundle>,
}

/// A packed workspace.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `sha256:<hex>`.
    pub reference: String,
    pub bytes: Arc<[u8]>,
}

/// Reads, validates and packs a suite (one without `[[discover]]` entries; see [`read`]).
///
/// # Errors
///
/// Returns [`Failure::BadInput`] naming the file, field and line of the first problem.
pub fn load(path: &Path) -> Result<LoadedSuite, Failure> {
    read(path)?.validate()
}

/// A manifest read and its workspace packed, but not yet validated: its `[[discover]]`
/// entries (if any) still have to become tests, which needs the packed workspace.
#[derive(Debug)]
pub struct Unexpanded {
    /// The manifest as written, with `workspace` rewritten to the bundle's reference.
    pub manifest: Manifest,
    pub workspace: Option<Bundle>,
    /// The manifest's path as shown in messages.
    pub shown: String,
    text: String,
    format: Format,
}

/// Reads a manifest and packs its workspace. A manifest without `[[discover]]` entries is
/// validated first, so its mistakes are reported before any packing.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] naming the file, field and line of the first problem.
pub fn read(path: &Path) -> Result<Unexpanded, Failure> {
    let shown = path.display().to_string();
    let text = std::fs::read(path)
        .map_err(|e| Failure::BadInput(format!("{shown}: cannot read the manifest: {e}")))?;
    let text = String::from_utf8(text)
        .map_err(|_| Failure::BadInput(format!("{shown}: the manifest is not UTF-8 text")))?;
    let format = Format::from_path(&shown);
    let mut manifest = Manifest::parse(&text, format, Some(&shown))
        .map_err(|e| Failure::BadInput(e.to_string()))?;
    if manifest.discover.is_empty() {
        manifest
            .validate_in(&text, format, Some(&shown))
            .map_err(|e| Failure::BadInput(e.to_string()))?;
    }
    let workspace = match &manifest.workspace {
        None => None,
        Some(dir) => {
            let base = path.parent().unwrap_or(Path::new("."));
            let dir = resolve(base, dir);
            if !dir.is_dir() {
                return Err(Failure::BadInput(format!(
                    "{shown}: workspace: `{}` is not a directory",
                    dir.display()
                )));
            }
            let selection = crate::workspace::select(
                &dir,
                &manifest.workspace_exclude,
                &manifest.workspace_include,
            )
            .map_err(|e| Failure::BadInput(format!("{shown}: {e}")))?;
            let keep = |rel: &Path| selection.keeps(rel);
            let bytes = isotest_sandbox::bundle::pack_dir_only(&dir, &keep).map_err(|e| {
                Failure::BadInput(format!(
                    "{shown}: workspace: cannot pack `{}`: {e}",
                    dir.display()
                ))
            })?;
            let reference = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            Some(Bundle {
                reference,
                bytes: bytes.into(),
            })
        }
    };
    manifest.workspace = workspace.as_ref().map(|b| b.reference.clone());
    // What was packed is decided: the server gets the bundle, not the globs.
    manifest.workspace_exclude.clear();
    manifest.workspace_include.clear();
    Ok(Unexpanded {
        manifest,
        workspace,
        shown,
        text,
        format,
    })
}

impl Unexpanded {
    /// Validates the (expanded) manifest into the suite to run.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::BadInput`] naming the file, field and line of the first problem.
    pub fn validate(self) -> Result<LoadedSuite, Failure> {
        let suite = self
            .manifest
            .validate_in(&self.text, self.format, Some(&self.shown))
            .map_err(|e| Failure::BadInput(e.to_string()))?;
        Ok(LoadedSuite {
            manifest: self.manifest,
            suite,
            workspace: self.workspace,
            artifacts: Vec::new(),
        })
    }
}

/// Keeps only the tests named in `only` (all of them when it is empty), as
/// `isotest run --only NAME` asks.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] for a name the suite does not have.
pub fn only(mut loaded: LoadedSuite, only: &[String]) -> Result<LoadedSuite, Failure> {
    if only.is_empty() {
        return Ok(loaded);
    }
    if let Some(missing) = only
        .iter()
        .find(|name| !loaded.suite.tests.iter().any(|t| t.name == **name))
    {
        return Err(Failure::BadInput(format!(
            "--only {missing}: the suite `{}` has no test of that name",
            loaded.suite.name
        )));
    }
    let keep = |name: &str| only.iter().any(|o| o == name);
    loaded.suite.tests.retain(|t| keep(&t.name));
    loaded.manifest.tests.retain(|t| keep(&t.name));
    Ok(loaded)
}

fn resolve(base: &Path, dir: &str) -> PathBuf {
    let dir = Path::new(dir);
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        base.join(dir)
    }
}
