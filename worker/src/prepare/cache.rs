//! Builds kept across runs on the machine that made them, by key (the sha256 of their
//! inputs): an unchanged workspace is not built again, as `cargo` and `go` do not rebuild
//! what is fresh. Each entry is the build's products with its index, and their packed form
//! (the blob tests name, by its sha256).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use isotest_protocol::artifact::ArtifactIndex;
use isotest_sandbox::bundle;

use super::store::read_index;

/// How many builds are kept; older ones are removed when a new one is added.
const KEEP: usize = 8;

/// A build this machine made, ready to run tests from or to upload.
#[derive(Debug, Clone)]
pub struct CachedBuild {
    /// The products, with the index at the root.
    pub dir: PathBuf,
    pub index: ArtifactIndex,
    /// `sha256:<hex>` of the packed form: what a test's `artifact` names.
    pub digest: String,
    /// The packed form.
    pub bundle: Arc<[u8]>,
}

/// A build that could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("pack the build in {path:?}")]
    Pack {
        path: PathBuf,
        #[source]
        source: bundle::BundleError,
    },
    #[error("keep the build in {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds by key under one directory.
#[derive(Debug, Clone)]
pub struct BuildCache {
    root: PathBuf,
}

impl BuildCache {
    pub fn new(root: PathBuf) -> BuildCache {
        BuildCache { root }
    }

    /// `$ISOTEST_CACHE_DIR`, else `$XDG_CACHE_HOME/isotest`, else `~/.cache/isotest`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("ISOTEST_CACHE_DIR") {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(dir).join("isotest");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cache/isotest"),
            None => std::env::temp_dir().join("isotest-cache"),
        }
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.root.join("builds").join(key)
    }

    /// The build of `key` made before, if it is whole.
    pub fn lookup(&self, key: &str) -> Option<CachedBuild> {
        let entry = self.entry(key);
        let digest = std::fs::read_to_string(entry.join("digest")).ok()?;
        let bundle: Arc<[u8]> = std::fs::read(entry.join("bundle.tar.zst")).ok()?.into();
        let dir = entry.join("tree");
        let index = read_index(&dir).ok()?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&bundle))) != digest.trim() {
            return None;
        }
        // Touched, so that pruning keeps what is used.
        let _ = std::fs::write(entry.join("used"), b"");
        Some(CachedBuild {
            dir,
            index,
            digest: digest.trim().to_owned(),
            bundle,
        })
    }

    /// A fresh, empty directory for a new build of `key` to export into.
    ///
    /// # Errors
    ///
    /// Returns [`CacheError::Io`] when it cannot be made.
    pub fn scratch(&self, key: &str) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("scratch").join(format!(
            "{key}-{}-{}",
            std::process::id(),
            isotest_protocol::now_ms()
        ));
        let io = |source| CacheError::Io {
            path: dir.clone(),
            source,
        };
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        Ok(dir)
    }

    /// Keeps the build a sandbox left in `scratch` (from [`Self::scratch`]) as `key`: packs it,
    /// then moves it into place in one rename, so a reader never sees half of it.
    ///
    /// # Errors
    ///
    /// Returns [`CacheError`] when it cannot be packed or written.
    pub fn keep(
        &self,
        key: &str,
        scratch: &Path,
        index: ArtifactIndex,
    ) -> Result<CachedBuild, CacheError> {
        let packed = bundle::pack_dir(scratch).map_err(|source| CacheError::Pack {
            path: scratch.to_owned(),
            source,
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&packed)));
        let staging = scratch.with_extension("entry");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        std::fs::rename(scratch, staging.join("tree")).map_err(io(scratch))?;
        std::fs::write(staging.join("bundle.tar.zst"), &packed).map_err(io(&staging))?;
        std::fs::write(staging.join("digest"), &digest).map_err(io(&staging))?;
        let entry = self.entry(key);
        if let Some(parent) = entry.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // Another run may have kept the same build meanwhile: either copy is right.
        let _ = std::fs::remove_dir_all(&entry);
        std::fs::rename(&staging, &entry).map_err(io(&entry))?;
        self.prune(key);
        Ok(CachedBuild {
            dir: entry.join("tree"),
            index,
            digest,
            bundle: packed.into(),
        })
    }

    /// Removes all but the [`KEEP`] most recently used builds (never `keep`).
    fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join("builds")) else {
            return;
        };
        let mut builds: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name() != keep)
            .map(|e| {
                let used = std::fs::metadata(e.path().join("used"))
                    .or_else(|_| e.metadata())
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (used, e.path())
            })
            .collect();
        builds.sort();
        let excess = builds.len().saturating_sub(KEEP - 1);
        for (_, path) in builds.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}
