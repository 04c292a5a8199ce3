//! Where the interpreters and toolchains the adapters call live. They are called by
//! absolute path: the sandbox binds the host's `/usr` but not `/root` or `/home`, so a
//! toolchain must live in `/usr` (or a directory the operator exposes) to be seen there.

use std::path::{Path, PathBuf};

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

impl Toolchain {
    /// The toolchain of this host as its sandboxes see it: the usual places under `/usr`,
    /// then for each of cargo, go, node and jest the one in an `exposed` directory (one
    /// given with `--toolchain-dir`), where there is one. A rustup proxy (`~/.cargo/bin/cargo`
    /// runs `rustup`) is resolved to the toolchain it stands for (`rustup which`), which
    /// needs `~/.rustup` exposed too.
    pub fn detect(exposed: &[PathBuf]) -> Toolchain {
        let mut tools = Toolchain::default();
        let find = |name: &str| {
            exposed
                .iter()
                .map(|dir| dir.join("bin").join(name))
                .find(|p| p.is_file())
        };
        if let Some(cargo) = find("cargo") {
            tools.cargo = resolve_rustup_proxy(&cargo, "cargo").unwrap_or(cargo);
        }
        if let Some(go) = find("go") {
            tools.go = go;
        }
        if let Some(node) = find("node") {
            tools.node = node;
        }
        for dir in exposed {
            let jest = dir.join("lib/node_modules/jest/bin/jest.js");
            if jest.is_file() {
                tools.jest = jest;
            }
        }
        tools
    }

    /// The programs of the toolchain that are not where sandboxes can see them, each with
    /// its path: a sandbox sees `/usr`, `/bin`, `/opt`... of the host's root, and the
    /// exposed directories.
    pub fn unseen(&self, exposed: &[PathBuf]) -> Vec<(&'static str, &Path)> {
        let hidden = ["/root", "/home", "/tmp", "/run"];
        [
            ("cargo", self.cargo.as_path()),
            ("go", self.go.as_path()),
            ("node", self.node.as_path()),
            ("python", self.python.as_path()),
        ]
        .into_iter()
        .filter(|(_, path)| {
            path.is_absolute()
                && hidden.iter().any(|h| path.starts_with(h))
                && !exposed.iter().any(|d| path.starts_with(d))
        })
        .collect()
    }
}

/// The real program a rustup proxy stands for (`rustup which NAME`), if `program` is one.
fn resolve_rustup_proxy(program: &Path, name: &str) -> Option<PathBuf> {
    let target = std::fs::canonicalize(program).ok()?;
    if target.file_name()? != "rustup" {
        return None;
    }
    let output = std::process::Command::new(&target)
        .args(["which", name])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// A path as the string a command line carries.
pub(crate) fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
