//! Property tests of workspace bundles: no bytes make `unpack` panic or write outside its
//! target directory, whatever a hand-built tar says, and `pack_dir` → `unpack` gives back
//! exactly the tree that was packed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use isotest_sandbox::bundle::{UnpackOptions, pack_dir, unpack};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/bundle_properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// A scratch directory holding `target/` (unpacked into) and `canary/` (must never change),
/// removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "isotest-bundle-prop-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("target")).expect("create target");
        std::fs::create_dir_all(root.join("canary/sub")).expect("create canary");
        std::fs::write(root.join("canary/keep"), b"keep").expect("write canary");
        Scratch { root }
    }

    fn target(&self) -> PathBuf {
        self.root.join("target")
    }

    fn canary(&self) -> PathBuf {
        self.root.join("canary")
    }

    fn unpack(&self, bundle: &[u8], options: UnpackOptions) -> bool {
        let dir = File::open(self.target()).expect("open target");
        unpack(bundle, dir.as_fd(), options).is_ok()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What a tree holds, without following a link: each path's kind, content, mode and target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { content: Vec<u8>, executable: bool },
    Symlink(PathBuf),
    Other(u32),
}

fn listing(dir: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = rel.join(entry.file_name());
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        let node = if kind.is_symlink() {
            Node::Symlink(std::fs::read_link(&path).unwrap_or_default())
        } else if kind.is_dir() {
            walk(&path, &rel, out);
            Node::Dir
        } else if kind.is_file() {
            Node::File {
                content: std::fs::read(&path).unwrap_or_default(),
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            Node::Other(meta.mode())
        };
        out.insert(rel, node);
    }
}

fn names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    names
}

/// Unpacks the bundle `make` builds (given the canary's absolute path, to aim at) into a
/// fresh target and checks that nothing outside it changed, and that what it made inside is
/// only directories, symlinks and regular files with one link each.
fn unpack_contained(
    make: impl FnOnce(&Path) -> Vec<u8>,
    options: UnpackOptions,
) -> Result<(), TestCaseError> {
    let scratch = Scratch::new("contain");
    let bundle = make(&scratch.canary());
    let canary = listing(&scratch.canary());
    let siblings = names(&scratch.root);
    let parent = scratch.root.parent().map(Path::to_owned);
    let parent_has = |name: &str| parent.as_ref().is_some_and(|p| p.join(name).exists());
    let before = (parent_has("pwned"), parent_has("evil"));

    scratch.unpack(&bundle, options);

    prop_assert_eq!(listing(&scratch.canary()), canary, "the canary changed");
    prop_assert_eq!(
        names(&scratch.root),
        siblings,
        "the target's parent changed"
    );
    prop_assert_eq!((parent_has("pwned"), parent_has("evil")), before);
    for (path, node) in listing(&scratch.target()) {
        prop_assert!(
            !matches!(node, Node::Other(_)),
            "{:?} is a device, FIFO or socket: {:?}",
            path,
            node
        );
        if let Node::File { .. } = node {
            let meta = std::fs::symlink_metadata(scratch.target().join(&path))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(meta.nlink(), 1, "{:?} is a hard link", path);
            if let Some((uid, gid)) = options.owner {
                prop_assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{:?}", path);
            }
        }
    }
    Ok(())
}

const OPTS: UnpackOptions = UnpackOptions {
    max_bytes: 1 << 20,
    owner: None,
};

// ---------------------------------------------------------------------------------------
// Hand-built tar archives: headers written byte by byte, so the tar crate's own path checks
// on the writing side do not tidy up the hostile names.

/// The kinds an entry's type byte may claim.
const KINDS: &[u8] = b"000552213467LKxg\0Z";

/// Path pieces: ordinary names, the ones that escape, and the canary's own absolute path
/// (filled in per scratch directory by [`Piece::Canary`]).
#[derive(Debug, Clone)]
enum Piece {
    Name(&'static str),
    Canary,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "evil",
    "pwned",
    "..",
    ".",
    "",
    "/",
    "//",
    "a/..",
    "../canary",
    "target",
];

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => select(NAMES).prop_map(Piece::Name),
        1 => Just(Piece::Canary),
    ]
}

#[derive(Debug, Clone)]
struct RawEntry {
    path: Vec<Piece>,
    absolute: bool,
    kind: u8,
    link: Vec<Piece>,
    link_absolute: bool,
    data: Vec<u8>,
    /// A size claimed in the header instead of the data's length.
    claimed_size: Option<u64>,
    mode: u32,
}

fn raw_entry() -> impl Strategy<Value = RawEntry> {
    (
        prop::collection::vec(piece(), 0..4),
        prop::bool::weighted(0.2),
        select(KINDS),
        prop::collection::vec(piece(), 0..3),
        prop::bool::weighted(0.3),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::weighted(
            0.15,
            prop_oneof![Just(u64::MAX >> 31), Just(1 << 33), 0u64..4096],
        ),
        prop_oneof![Just(0o644), Just(0o7777), Just(0), any::<u32>()],
    )
        .prop_map(
            |(path, absolute, kind, link, link_absolute, data, claimed_size, mode)| RawEntry {
                path,
                absolute,
                kind,
                link,
                link_absolute,
                data,
                claimed_size,
                mode,
            },
        )
}

fn join(pieces: &[Piece], absolute: bool, canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if absolute {
        out.push(b'/');
    }
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match piece {
            Piece::Name(n) => out.extend_from_slice(n.as_bytes()),
            Piece::Canary => out.extend_from_slice(canary.as_os_str().as_bytes()),
        }
    }
    out
}

/// Writes a tar archive with raw headers. Names longer than the header field go in a GNU
/// long-name entry first, as real archivers do.
fn raw_tar(entries: &[RawEntry], canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let name = join(&e.path, e.absolute, canary);
        let link = join(&e.link, e.link_absolute, canary);
        for (long, kind) in [(&name, b'L'), (&link, b'K')] {
            if long.len() > 100 {
                let mut data = long.clone();
                data.push(0);
                let h = header_for(b"././@LongLink", kind, b"", data.len() as u64, 0o644);
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(&data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        let size = e.claimed_size.unwrap_or(e.data.len() as u64);
        let h = header_for(&name, e.kind, &link, size, e.mode);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn header_for(name: &[u8], kind: u8, link: &[u8], size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    let bytes = header.as_mut_bytes();
    let n = name.len().min(100);
    bytes[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    bytes[157..157 + l].copy_from_slice(&link[..l]);
    bytes[156] = kind;
    header.set_size(size);
    header.set_mode(mode & 0o777_7777);
    header.set_cksum();
    header
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 1).expect("compress")
}

fn options() -> impl Strategy<Value = UnpackOptions> {
    (
        prop_oneof![Just(1 << 20), Just(0), Just(100), Just(u64::MAX)],
        prop::option::weighted(0.3, Just((4242, 4343))),
    )
        .prop_map(|(max_bytes, owner)| UnpackOptions {
            max_bytes,
            // Changing owners needs root, as the sandbox's tests have.
            owner: owner.filter(|_| nix::unistd::geteuid().is_root()),
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_escape(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        unpack_contained(|_| bytes.clone(), OPTS)?;
        unpack_contained(|_| zstd(&bytes), OPTS)?;
    }

    #[test]
    fn hostile_archives_never_escape(
        entries in prop::collection::vec(raw_entry(), 1..8),
        options in options(),
        cut in any::<prop::sample::Index>(),
    ) {
        unpack_contained(|canary| zstd(&raw_tar(&entries, canary)), options)?;
        // And the same archive cut short anywhere.
        unpack_contained(
            |canary| {
                let tar = raw_tar(&entries, canary);
                zstd(&tar[..cut.index(tar.len() + 1)])
            },
            options,
        )?;
    }
}

/// The archives the brief worries about most, spelled out: each must be refused and leave
/// the canary, aimed at by an absolute path, untouched.
#[test]
fn classic_escapes_are_refused() {
    use Piece::{Canary, Name};
    let entry = |path: Vec<Piece>, absolute: bool, kind: u8, link: Vec<Piece>| RawEntry {
        path,
        absolute,
        kind,
        link,
        link_absolute: false,
        data: b"pwned".to_vec(),
        claimed_size: None,
        mode: 0o644,
    };
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        (
            "dotdot",
            vec![entry(vec![Name(".."), Name("pwned")], false, b'0', vec![])],
        ),
        (
            "absolute into the canary",
            vec![entry(vec![Canary, Name("pwned")], false, b'0', vec![])],
        ),
        (
            "symlink to the canary, then a file through it",
            vec![
                entry(vec![Name("evil")], false, b'2', vec![Canary]),
                entry(vec![Name("evil"), Name("pwned")], false, b'0', vec![]),
            ],
        ),
        (
            "symlink up, then a directory through it",
            vec![
                entry(
                    vec![Name("evil")],
                    false,
                    b'2',
                    vec![Name(".."), Name("canary")],
                ),
                entry(vec![Name("evil"), Name("pwned")], false, b'5', vec![]),
            ],
        ),
        (
            "symlink to a canary file, then a file over it",
            vec![
                entry(vec![Name("evil")], false, b'2', vec![Canary, Name("keep")]),
                entry(vec![Name("evil")], false, b'0', vec![]),
            ],
        ),
        (
            "hard link to a canary file",
            vec![entry(
                vec![Name("h")],
                false,
                b'1',
                vec![Canary, Name("keep")],
            )],
        ),
        (
            "char device",
            vec![entry(vec![Name("d")], false, b'3', vec![])],
        ),
        (
            "block device",
            vec![entry(vec![Name("d")], false, b'4', vec![])],
        ),
        ("fifo", vec![entry(vec![Name("p")], false, b'6', vec![])]),
        (
            "huge size",
            vec![RawEntry {
                claimed_size: Some(1 << 40),
                ..entry(vec![Name("big")], false, b'0', vec![])
            }],
        ),
    ];
    for (what, entries) in cases {
        let scratch = Scratch::new("classic");
        let bundle = zstd(&raw_tar(&entries, &scratch.canary()));
        let canary = listing(&scratch.canary());
        assert!(!scratch.unpack(&bundle, OPTS), "{what}: accepted");
        assert_eq!(listing(&scratch.canary()), canary, "{what}: wrote outside");
        assert_eq!(
            names(&scratch.root),
            ["canary", "target"],
            "{what}: wrote beside the target"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Round trip of real trees.

#[derive(Debug, Clone)]
enum Tree {
    File(Vec<u8>, bool),
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

fn file_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9_.-]{1,12}".prop_map(String::into_bytes),
        "[^/\\x00]{1,8}".prop_map(String::into_bytes),
        // Not UTF-8: file names are bytes.
        prop::collection::vec(1u8..=255, 1..8),
        // Long enough for a GNU long-name entry once nested.
        "[a-z]{90,120}".prop_map(String::into_bytes),
    ]
    .prop_filter("no `/`, `.` or `..`", |n| {
        !n.contains(&b'/') && n != b"." && n != b".."
    })
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        3 => (prop::collection::vec(any::<u8>(), 0..600), any::<bool>())
            .prop_map(|(c, x)| Tree::File(c, x)),
        1 => prop_oneof![
            "[a-z./]{1,20}".prop_map(String::into_bytes),
            Just(b"/etc/passwd".to_vec()),
            Just(b"..".to_vec()),
            "[a-z]{100,140}".prop_map(String::into_bytes),
        ]
        .prop_map(Tree::Symlink),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop::collection::btree_map(file_name(), inner, 0..6).prop_map(Tree::Dir)
    })
}

fn build(path: &Path, tree: &Tree) {
    match tree {
        Tree::File(content, executable) => {
            std::fs::write(path, content).expect("write file");
            let mode = if *executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Tree::Symlink(target) => {
            std::os::unix::fs::symlink(OsString::from_vec(target.clone()), path).expect("symlink");
        }
        Tree::Dir(children) => {
            std::fs::create_dir(path).expect("mkdir");
            for (name, child) in children {
                build(&path.join(OsString::from_vec(name.clone())), child);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn pack_then_unpack_gives_back_the_tree(tree in tree()) {
        let scratch = Scratch::new("trip");
        let src = scratch.root.join("src");
        let tree = match tree {
            dir @ Tree::Dir(_) => dir,
            other => Tree::Dir(BTreeMap::from([(b"only".to_vec(), other)])),
        };
        build(&src, &tree);
        let bundle = pack_dir(&src).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", std::error::Error::source(&e))))?;
        prop_assert_eq!(&pack_dir(&src).map_err(|e| TestCaseError::fail(e.to_string()))?, &bundle, "deterministic");
        let dir = File::open(scratch.target()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        unpack(&bundle, dir.as_fd(), UnpackOptions { max_bytes: u64::MAX, owner: None })
            .map_err(|e| TestCaseError::fail(format!("{e}: {:?}", std::error::Error::source(&e))))?;
        prop_assert_eq!(listing(&scratch.target()), listing(&src));
        let again = pack_dir(&scratch.target()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(again == bundle, "repacking the unpacked tree gives other bytes");
    }
}
