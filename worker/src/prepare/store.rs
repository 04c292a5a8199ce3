//! Prepared builds on this host, by the content address of their packed form: registered
//! directly by whoever built them here (embedded mode), or unpacked once from their blob by
//! the first test that needs them (a worker). Tests bind them read-only, never change them.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use isotest_protocol::artifact::{ARTIFACT_INDEX, ArtifactIndex};
use isotest_sandbox::bundle::{self, BundleError, UnpackOptions};
use tokio::sync::OnceCell;

/// The most bytes a prepared build may unpack to.
const MAX_UNPACKED: u64 = 4 << 30;
/// The largest index read.
const MAX_INDEX: u64 = 16 << 20;
/// How many unpacked builds are kept; beyond that the least recently used unused one goes.
const KEEP: usize = 16;

/// A prepared build this host can bind into sandboxes.
#[derive(Debug)]
pub struct Prepared {
    /// Its products, with the index at the root.
    pub dir: PathBuf,
    pub index: ArtifactIndex,
    /// Whether this store unpacked it (and so removes it when it is evicted).
    owned: bool,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A prepared build that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unpack prepared build {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: BundleError,
    },
    #[error("read the index of prepared build {digest}: {why}")]
    Index { digest: String, why: String },
    #[error("fetch prepared build {digest}: {why}")]
    Fetch { digest: String, why: String },
    #[error("make room for prepared build {digest} in {path:?}")]
    Io {
        digest: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Prepared builds by digest (`sha256:<hex>` of their packed form).
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    cells: HashMap<String, Arc<OnceCell<Arc<Prepared>>>>,
    /// Digests from least to most recently used.
    order: Vec<String>,
}

impl ArtifactStore {
    /// A store that unpacks into `root` (created when first needed).
    pub fn new(root: PathBuf) -> ArtifactStore {
        ArtifactStore {
            root,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn cell(&self, digest: &str) -> Arc<OnceCell<Arc<Prepared>>> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.order.retain(|d| d != digest);
        entries.order.push(digest.to_owned());
        let cell = Arc::clone(entries.cells.entry(digest.to_owned()).or_default());
        // Forget the least recently used builds no test holds any more.
        while entries.cells.len() > KEEP {
            let Some(victim) = entries.order.iter().find(|d| {
                entries.cells.get(*d).is_some_and(|c| {
                    Arc::strong_count(c) == 1 && c.get().is_none_or(|p| Arc::strong_count(p) == 1)
                })
            }) else {
                break;
            };
            let victim = victim.clone();
            entries.order.retain(|d| *d != victim);
            entries.cells.remove(&victim);
        }
        cell
    }

    /// The prepared build of `digest` if this store has it already (registered, or fetched
    /// before), with no fetch.
    pub fn get_local(&self, digest: &str) -> Option<Arc<Prepared>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.cells.get(digest).and_then(|c| c.get().cloned())
    }

    /// Registers a build made on this host, kept where it is.
    pub fn insert(&self, digest: &str, dir: PathBuf, index: ArtifactIndex) -> Arc<Prepared> {
        let prepared = Arc::new(Prepared {
            dir,
            index,
            owned: false,
        });
        let _ = self.cell(digest).set(Arc::clone(&prepared));
        prepared
    }

    /// The prepared build of `digest`, unpacked from what `fetch` returns the first time it
    /// is asked for (concurrent askers wait for that one fetch).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when the fetch fails or the blob is not a usable build.
    pub async fn get<F, Fut>(&self, digest: &str, fetch: F) -> Result<Arc<Prepared>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<[u8]>, String>>,
    {
        let cell = self.cell(digest);
        cell.get_or_try_init(|| async {
            let bytes = fetch().await.map_err(|why| StoreError::Fetch {
                digest: digest.to_owned(),
                why,
            })?;
            let root = self.root.clone();
            let owned = digest.to_owned();
            tokio::task::spawn_blocking(move || unpack(&root, &owned, &bytes))
                .await
                .map_err(|e| StoreError::Fetch {
                    digest: digest.to_owned(),
                    why: e.to_string(),
                })?
                .map(Arc::new)
        })
        .await
        .cloned()
    }
}

/// Unpacks a packed build into a fresh directory under `root` and reads its index.
fn unpack(root: &Path, digest: &str, bytes: &[u8]) -> Result<Prepared, StoreError> {
    let name: String = digest
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = root.join(format!("{name}-{}", std::process::id()));
    let io = |source| StoreError::Io {
        digest: digest.to_owned(),
        path: dir.clone(),
        source,
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    // Removed again unless the whole build unpacks and its index reads.
    let mut partial = RemoveOnDrop(Some(dir.clone()));
    let handle = std::fs::File::open(&dir).map_err(io)?;
    bundle::unpack(
        bytes,
        handle.as_fd(),
        UnpackOptions {
            max_bytes: MAX_UNPACKED,
            owner: None,
        },
    )
    .map_err(|source| StoreError::Unpack {
        digest: digest.to_owned(),
        source,
    })?;
    let index = read_index(&dir).map_err(|why| StoreError::Index {
        digest: digest.to_owned(),
        why,
    })?;
    partial.0 = None;
    Ok(Prepared {
        dir,
        index,
        owned: true,
    })
}

/// Removes a directory when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads and checks the index at the root of a prepared build.
///
/// # Errors
///
/// Says why when it is missing, too large, unreadable, too new, or names paths outside.
pub fn read_index(dir: &Path) -> Result<ArtifactIndex, String> {
    use std::io::Read;
    let file = std::fs::File::open(dir.join(ARTIFACT_INDEX)).map_err(|e| e.to_string())?;
    let mut json = Vec::new();
    file.take(MAX_INDEX + 1)
        .read_to_end(&mut json)
        .map_err(|e| e.to_string())?;
    if json.len() as u64 > MAX_INDEX {
        return Err(format!("larger than {MAX_INDEX} bytes"));
    }
    let index: ArtifactIndex = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
    if index.schema_version > isotest_protocol::SCHEMA_VERSION {
        return Err(format!(
            "schema_version {} is newer than this worker's {}",
            index.schema_version,
            isotest_protocol::SCHEMA_VERSION
        ));
    }
    super::check_index(&index)?;
    Ok(index)
}
