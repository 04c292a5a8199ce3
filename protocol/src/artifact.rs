//! A prepared build: what a suite's prepare stage left for its tests to run from. The build
//! runs once per (workspace, environment, toolchain, build) in a sandbox; its products are
//! packed like a workspace (a content-addressed blob) with this index at their root, and
//! every test that names the blob runs one of its binaries, bound read-only into its
//! workspace at the paths the build wrote them to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::Framework;

/// The index's file name, at the root of a prepared build.
pub const ARTIFACT_INDEX: &str = "isotest-artifact.json";

/// What a prepared build holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactIndex {
    pub schema_version: u32,
    /// The framework whose build this is.
    pub framework: Framework,
    /// The sha256 of the build's inputs (workspace, environment, toolchain, build command):
    /// the same inputs give the same key, so a build is reused rather than run again.
    pub key: String,
    /// Workspace-relative directories the build wrote, each bound read-only at the same
    /// path in every test that runs from it (so paths compiled into a binary still hold).
    pub mounts: Vec<String>,
    /// The test binaries, each able to run any one of its tests alone.
    #[serde(default)]
    pub binaries: Vec<TestBinary>,
    /// Tests the framework lists that no binary can run alone (Rust's doctests, which
    /// rustdoc compiles as it runs them): they run the slow way, without the build.
    #[serde(default)]
    pub unbuilt: Vec<String>,
}

/// One test binary of a prepared build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestBinary {
    /// Its id, the first word of the ids of its tests: `crate` for a library's unit tests,
    /// `crate::name` for an integration test, `crate::bin/name` for a binary's (as
    /// `cargo nextest` names them); a Go package's import path.
    pub id: String,
    /// The executable, relative to the workspace.
    pub exe: String,
    /// The directory the framework runs it in, relative to the workspace (empty: its root).
    #[serde(default)]
    pub cwd: String,
    /// Variables the framework sets when it runs the binary (`CARGO_MANIFEST_DIR`, …).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A program the binary runs under, with its leading arguments (Go's `test2json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrapper: Vec<String>,
}

impl ArtifactIndex {
    /// The binary of this id.
    pub fn binary(&self, id: &str) -> Option<&TestBinary> {
        self.binaries.iter().find(|b| b.id == id)
    }
}
