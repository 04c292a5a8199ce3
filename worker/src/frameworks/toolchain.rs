//! Where the interpreters and toolchains the adapters call live. They are called by
//! absolute path: the sandbox binds the host's `/usr` but not `/root` or `/home`, so a
//! toolchain must live in `/usr` (or a directory the operator exposes) to be seen there.

use std::path::PathBuf;

/// Worker-wide settings the adapters need.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The Python interpreter, by absolute path: a shim on PATH can cost 100 ms a start.
    pub python: PathBuf,
    /// Node.js, for `node` tests.
    pub node: PathBuf,
    /// The `go` command, for `go` tests.
    pub go: PathBuf,
    /// `cargo`, for `cargo` tests; its `rustc` is the one beside it.
    pub cargo: PathBuf,
    /// Jest's `bin/jest.js` from a global `npm install -g jest`, run by [`Self::node`].
    pub jest: PathBuf,
}

impl Default for Toolchain {
    fn default() -> Self {
        let first = |candidates: &[&str], fallback: &str| {
            candidates
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(fallback))
        };
        Toolchain {
            python: first(&["/usr/bin/python3"], "python3"),
            node: first(&["/usr/bin/node", "/usr/local/bin/node"], "node"),
            go: first(
                &["/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go"],
                "go",
            ),
            cargo: first(&["/usr/bin/cargo", "/usr/local/bin/cargo"], "cargo"),
            // npm's global prefix is `/usr` for Debian's node and `/usr/local` for others.
            jest: first(
                &[
                    "/usr/lib/node_modules/jest/bin/jest.js",
                    "/usr/local/lib/node_modules/jest/bin/jest.js",
                ],
                "/usr/local/lib/node_modules/jest/bin/jest.js",
            ),
        }
    }
}

/// A path as the string a command line carries.
pub(crate) fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
