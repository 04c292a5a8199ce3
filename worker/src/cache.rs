//! The worker's side of the result cache: the identity of each environment it offers
//! (advertised in Redis, so the producer's cache keys cover it), and whether a result
//! goes into the cache where its message asks.
//!
//! An identity is the sha256 of what decides how a test behaves there besides the test
//! itself: the root's package databases and OS release, the files installed outside
//! packages (`usr/local`, `opt`, the exposed toolchain directories) by name, size and
//! time, the toolchain programs, and the sandbox limits of this worker. Reading the
//! package databases, not hashing every file, keeps it to a fraction of a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use isotest_infra::results::Keep;
use isotest_protocol::cache::{CacheEntry, DEFAULT_ENVIRONMENT};
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::result::TestResult;
use isotest_sandbox::SandboxConfig;

use crate::RunnerConfig;

/// Files whose contents say what a root has installed.
const PACKAGE_FILES: [&str; 5] = [
    "etc/os-release",
    "var/lib/dpkg/status",
    "lib/apk/db/installed",
    "var/lib/rpm/rpmdb.sqlite",
    "usr/lib/sysimage/rpm/rpmdb.sqlite",
];

/// Directories of files installed outside the package manager.
const LOOSE_DIRS: [&str; 2] = ["usr/local", "opt"];

/// The most entries of one directory tree listed in an identity: past it, the listing
/// stops (and says so), so a huge tree costs a bounded time.
const MAX_ENTRIES: usize = 50_000;

/// The identity of every environment this worker offers, by name (`default` for tests
/// that name none).
pub fn identities(sandbox: &SandboxConfig, runner: &RunnerConfig) -> BTreeMap<String, String> {
    let mut roots: BTreeMap<String, PathBuf> = sandbox.environments.clone();
    roots
        .entry(DEFAULT_ENVIRONMENT.to_owned())
        .or_insert_with(|| PathBuf::from("/"));
    let mut shared = Sha256::new();
    shared.update(format!("{:?}\n{:?}\n", runner.limits, runner.tools).as_bytes());
    let tools = &runner.tools;
    for program in [
        &tools.python,
        &tools.node,
        &tools.go,
        &tools.cargo,
        &tools.jest,
    ] {
        stat_line(&mut shared, program);
    }
    for dir in &sandbox.expose {
        list(&mut shared, dir);
    }
    let shared = shared.finalize();
    roots
        .into_iter()
        .map(|(name, root)| {
            let mut hasher = Sha256::new();
            hasher.update(shared);
            hasher.update(root.as_os_str().as_encoded_bytes());
            for file in PACKAGE_FILES {
                if let Ok(bytes) = std::fs::read(root.join(file)) {
                    hasher.update(file.as_bytes());
                    hasher.update(Sha256::digest(&bytes));
                }
            }
            for dir in LOOSE_DIRS {
                list(&mut hasher, &root.join(dir));
            }
            (name, hex::encode(hasher.finalize()))
        })
        .collect()
}

/// Adds a path's size and modification time (following links, as running it does).
fn stat_line(hasher: &mut Sha256, path: &Path) {
    let line = match std::fs::metadata(path) {
        Ok(meta) => {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} {} {mtime}\n", path.display(), meta.len())
        }
        Err(_) => format!("{} missing\n", path.display()),
    };
    hasher.update(line.as_bytes());
}

/// Adds every entry under `dir` (without following links), by path, size and time.
fn list(hasher: &mut Sha256, dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                hasher.update(b"truncated\n");
                return;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hasher
                .update(format!("{} {} {mtime}\n", entry.path().display(), meta.len()).as_bytes());
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
}

/// The cache entry to write with `result`, if its message asks for one, the result may
/// be cached ([`CacheEntry::of`]: a first attempt that passed), the test had no
/// network, and this worker's identity of the test's environment is the one the key
/// was made with (else the entry would claim an environment it did not run in).
pub fn keep(
    ns: &Namespace,
    msg: &TestMessage,
    result: &TestResult,
    identities: &BTreeMap<String, String>,
) -> Option<Keep> {
    let write = msg.cache.as_ref()?;
    if msg.network {
        return None;
    }
    let environment = msg
        .test
        .environment
        .as_deref()
        .unwrap_or(DEFAULT_ENVIRONMENT);
    if identities.get(environment) != Some(&write.environment) {
        return None;
    }
    let entry = CacheEntry::of(result)?;
    Some(Keep {
        key: ns.cache_entry_key(&write.scope, &write.key),
        // A struct of strings and numbers always serializes.
        entry: serde_json::to_string(&entry).unwrap_or_default(),
        ttl_secs: write.ttl_secs.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use isotest_protocol::cache::{CacheScope, CacheWrite};
    use isotest_protocol::result::Status;

    fn message(environment: &str, network: bool) -> TestMessage {
        let json = serde_json::json!({
            "schema_version": 1, "suite_id": "s", "index": 0, "attempt": 1,
            "test": {"name": "a", "body": {"command": ["true"]}, "framework": "command", "timeout_ms": 1000},
            "digest": "", "published_at_ms": 0, "network": network,
            "cache": {"key": "k", "scope": "shared", "ttl_secs": 60, "environment": environment},
        });
        TestMessage::from_bytes(json.to_string().as_bytes()).expect("a test message")
    }

    #[test]
    fn keeps_only_passes_from_the_environment_the_key_names() {
        let ns = Namespace::new("n").expect("namespace");
        let ids: BTreeMap<String, String> = [("default".to_owned(), "id1".to_owned())].into();
        let msg = message("id1", false);
        assert_eq!(
            msg.cache,
            Some(CacheWrite {
                key: "k".into(),
                scope: CacheScope::Shared,
                ttl_secs: 60,
                environment: "id1".into()
            })
        );
        let mut passed = TestResult::prepare_error(&msg, "w", "x".into(), 1);
        passed.status = Status::Passed;
        let kept = keep(&ns, &msg, &passed, &ids).expect("kept");
        assert_eq!(kept.key, "n:cache:shared:k");
        assert!(keep(&ns, &message("id2", false), &passed, &ids).is_none());
        assert!(keep(&ns, &message("id1", true), &passed, &ids).is_none());
        let mut failed = passed.clone();
        failed.status = Status::Failed;
        assert!(keep(&ns, &msg, &failed, &ids).is_none());
    }

    #[test]
    fn an_identity_sees_the_limits_and_the_root() {
        let sandbox = SandboxConfig::default();
        let runner = RunnerConfig {
            worker_id: "w".into(),
            tools: crate::frameworks::Toolchain::default(),
            limits: isotest_sandbox::Limits::default(),
            allow_network: false,
            artifact_dir: PathBuf::from("/nonexistent"),
            warm: None,
        };
        let base = identities(&sandbox, &runner);
        assert_eq!(base, identities(&sandbox, &runner), "stable");
        let mut tighter = runner.clone();
        tighter.limits.pids = tighter.limits.pids.saturating_add(1);
        assert_ne!(base["default"], identities(&sandbox, &tighter)["default"]);
        let mut other_root = sandbox.clone();
        other_root
            .environments
            .insert("default".into(), PathBuf::from("/nonexistent-root"));
        assert_ne!(base["default"], identities(&other_root, &runner)["default"]);
    }
}
