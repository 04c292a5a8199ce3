//! Which files of a workspace directory are packed and sent: what git would track. The
//! `.gitignore` files (and `.git/info/exclude`) are read as git reads them, by the
//! `ignore` crate; `.git/` itself stays home; the manifest's `workspace_exclude` globs
//! leave out more, and its `workspace_include` globs bring back what either left out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ignore::WalkBuilder;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The relative paths to pack: every file, directory and link kept, and every directory
/// above a kept entry.
#[derive(Debug, Default)]
pub struct Selection {
    kept: HashSet<PathBuf>,
}

impl Selection {
    /// Whether the entry at `rel` (relative to the workspace) is packed.
    pub fn keeps(&self, rel: &Path) -> bool {
        self.kept.contains(rel)
    }

    fn keep(&mut self, rel: &Path) {
        for ancestor in rel.ancestors() {
            if ancestor.as_os_str().is_empty() || !self.kept.insert(ancestor.to_path_buf()) {
                break;
            }
        }
    }
}

/// Selects the entries of `dir` to pack.
///
/// # Errors
///
/// Returns the one-line reason when a glob is not valid or the directory cannot be read.
pub fn select(dir: &Path, exclude: &[String], include: &[String]) -> Result<Selection, String> {
    let exclude = globs(dir, exclude, "workspace_exclude")?;
    let include = globs(dir, include, "workspace_include")?;
    let mut selection = Selection::default();
    let walk = WalkBuilder::new(dir)
        // Dot files are test data as any other; only what git ignores is left out.
        .hidden(false)
        .ignore(false)
        .git_global(false)
        .git_ignore(true)
        .git_exclude(true)
        // A workspace copied out of its repository still means what its .gitignore says.
        .require_git(false)
        .follow_links(false)
        .filter_entry({
            let exclude = exclude.clone();
            let root = dir.to_path_buf();
            move |entry| {
                let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
                if is_dir && entry.file_name() == ".git" {
                    return false;
                }
                let rel = entry.path().strip_prefix(&root).unwrap_or(entry.path());
                rel.as_os_str().is_empty() || !exclude.matched(rel, is_dir).is_ignore()
            }
        })
        .build();
    for entry in walk {
        let entry = entry.map_err(|e| format!("cannot read the workspace: {e}"))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        selection.keep(rel);
    }
    if include.is_empty() {
        return Ok(selection);
    }
    // Brought back: everything the globs name, wherever the first walk did not go.
    let walk = WalkBuilder::new(dir)
        .standard_filters(false)
        .follow_links(false)
        .build();
    for entry in walk {
        let entry = entry.map_err(|e| format!("cannot read the workspace: {e}"))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        if !rel.as_os_str().is_empty()
            && include.matched_path_or_any_parents(rel, is_dir).is_ignore()
        {
            selection.keep(rel);
        }
    }
    Ok(selection)
}

/// Gitignore-style globs (`target/`, `*.log`, `/build`, `data/**/*.bin`), rooted at `dir`.
fn globs(dir: &Path, lines: &[String], field: &str) -> Result<Gitignore, String> {
    let mut builder = GitignoreBuilder::new(dir);
    for line in lines {
        builder
            .add_line(None, line)
            .map_err(|e| format!("{field}: `{line}` is not a glob: {e}"))?;
    }
    builder.build().map_err(|e| format!("{field}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for file in files {
            let path = dir.0.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, file).expect("write");
        }
        dir
    }

    mod tempdir {
        /// A directory removed when dropped.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let dir = std::env::temp_dir()
                    .join(format!("isotest-ws-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("mkdir");
                Dir(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// The packed files (not directories) for each set of globs.
    #[test]
    fn gitignore_exclude_and_include_decide_what_is_packed() {
        let dir = tree(&[
            ".gitignore",
            ".env",
            ".git/HEAD",
            "src/lib.rs",
            "target/debug/big.bin",
            "target/keep/fixture.txt",
            "node_modules/x/index.js",
            "logs/run.log",
            "data/a.csv",
        ]);
        std::fs::write(dir.0.join(".gitignore"), "target/\nnode_modules/\n").expect("write");
        let files = |exclude: &[&str], include: &[&str]| -> Vec<String> {
            let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
            let selection = select(&dir.0, &own(exclude), &own(include)).expect("select");
            let mut files: Vec<String> = selection
                .kept
                .iter()
                .filter(|p| dir.0.join(p).is_file())
                .map(|p| p.display().to_string())
                .collect();
            files.sort();
            files
        };
        assert_eq!(
            files(&[], &[]),
            [
                ".env",
                ".gitignore",
                "data/a.csv",
                "logs/run.log",
                "src/lib.rs"
            ]
        );
        assert_eq!(
            files(&["*.log", "/data"], &[]),
            [".env", ".gitignore", "src/lib.rs"]
        );
        assert_eq!(
            files(&["*.log"], &["target/keep/", "logs/run.log"]),
            [
                ".env",
                ".gitignore",
                "data/a.csv",
                "logs/run.log",
                "src/lib.rs",
                "target/keep/fixture.txt"
            ]
        );
        let bad = select(&dir.0, &["a{b".to_owned()], &[]).expect_err("bad glob");
        assert!(bad.starts_with("workspace_exclude: `a{b`"), "{bad}");
    }
}
