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
    /// As root, the first host uid and gid of sandboxes: each sandbox running at once gets its
    /// own, `uid_base + slot`. They must be mapped in the worker's user namespace and should be
    /// used by nothing else on the host (checked at start, with a warning where `/etc/subuid`
    /// or `/etc/subgid` hands some of them out).
    pub uid_base: u32,
    /// How many uids (and gids) from `uid_base` sandboxes use, and so how many run at once at
    /// most. A pod with `hostUsers: false` maps 65 536 ids from 0, the worker's own root
    /// among them: there, for example, a base of 1 and a count of 65 535.
    pub uid_count: u32,
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
            uid_base: crate::SANDBOX_UID_BASE,
            uid_count: crate::MAX_CONCURRENT,
            expose: Vec::new(),
        }
    }
}
