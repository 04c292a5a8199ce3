//! Host-side configuration of a `Sandboxer`: where workspaces live, which root filesystems
//! tests may run in, and whether weaker isolation is acceptable.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// How a [`crate::Sandboxer`] is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Host-side directory for per-sandbox state (created 0700). As root it is also the mount
    /// point of each sandbox's fresh root inside that sandbox's own mount namespace.
    pub state_dir: PathBuf,
    /// Environment name -> root directory; `"default"` is `/` unless overridden here.
    pub environments: BTreeMap<String, PathBuf>,
    /// Run even where a limit cannot be applied, logging what is missing.
    pub allow_weaker_isolation: bool,
    /// Host directories every sandbox sees read-only at the same path (toolchains installed
    /// outside `/usr`: rustup's `~/.cargo` and `~/.rustup`, pyenv, nvm, `/opt/...`); their
    /// `bin` directories go on the sandbox's `PATH`.
    pub expose: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let state_dir = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/isotest-sandbox")
        } else {
            std::env::temp_dir().join(format!("isotest-sandbox-{}", nix::unistd::geteuid()))
        };
        SandboxConfig {
            state_dir,
            environments: BTreeMap::new(),
            allow_weaker_isolation: false,
            expose: Vec::new(),
        }
    }
}
