//! Loading a suite from disk: the manifest, validated with its file and line in every
//! error, and its workspace directory packed into a content-addressed bundle.

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
}

/// A packed workspace.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `sha256:<hex>`.
    pub reference: String,
    pub bytes: Arc<[u8]>,
}

/// Reads, validates and packs a suite.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] naming the file, field and line of the first problem.
pub fn load(path: &Path) -> Result<LoadedSuite, Failure> {
    let shown = path.display().to_string();
    let text = std::fs::read(path)
        .map_err(|e| Failure::BadInput(format!("{shown}: cannot read the manifest: {e}")))?;
    let text = String::from_utf8(text)
        .map_err(|_| Failure::BadInput(format!("{shown}: the manifest is not UTF-8 text")))?;
    let format = Format::from_path(&shown);
    let suite = Manifest::load(&text, format, Some(&shown))
        .map_err(|e| Failure::BadInput(e.to_string()))?;
    let mut manifest = Manifest::parse(&text, format, Some(&shown))
        .map_err(|e| Failure::BadInput(e.to_string()))?;
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
            let bytes = isotest_sandbox::bundle::pack_dir(&dir).map_err(|e| {
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
    let suite = Suite {
        workspace: manifest.workspace.clone(),
        ..suite
    };
    Ok(LoadedSuite {
        manifest,
        suite,
        workspace,
    })
}

fn resolve(base: &Path, dir: &str) -> PathBuf {
    let dir = Path::new(dir);
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        base.join(dir)
    }
}
