//! Manifests that expand (issue 17's "manifest amplification"): `[defaults]` given to many
//! tests is refused before it is applied to any, and validating a manifest, refused or
//! not, takes memory within a small multiple of the request or of the expanded suite.
//!
//! The heap is measured by a counting allocator, so this binary holds one test: tests
//! running beside it on other threads would be counted too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use isotest_protocol::manifest::{Format, Limits, MAX_EXPANDED_BYTES, Manifest, TEST_BYTES};

/// The system allocator, counting the bytes live now and the most live since a reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is `System.realloc`'s.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap `f` held at once beyond what was live before it, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - before, out)
}

/// A JSON manifest of `tests` tests running `true`, with `defaults` (a JSON object) as
/// its `[defaults]` and `own` (JSON members, or empty) in every test.
fn manifest(tests: usize, defaults: &str, own: &str) -> String {
    let entries: Vec<String> = (0..tests)
        .map(|i| {
            let sep = if own.is_empty() { "" } else { "," };
            format!(r#"{{"name":"t{i}","command":["true"]{sep}{own}}}"#)
        })
        .collect();
    format!(
        r#"{{"name":"amplified","defaults":{defaults},"tests":[{}]}}"#,
        entries.join(",")
    )
}

fn env_of(count: usize, bytes: usize) -> String {
    let vars: Vec<String> = (0..count)
        .map(|i| format!(r#""V{i}":"{}""#, "x".repeat(bytes)))
        .collect();
    format!("{{{}}}", vars.join(","))
}

#[test]
fn amplified_manifests_are_refused_before_they_expand() {
    let kib = 1024;
    let big_file = format!(
        r#"{{"files":[{{"path":"big.txt","content":"{}"}}]}}"#,
        "x".repeat(1024 * kib)
    );
    // (what, manifest, the error's start, or None when it is valid)
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "issue 17: 500 tests, a 1 MiB variable in [defaults]",
            manifest(500, r#"{"env":{"BIG":"BIGVALUE"}}"#, "")
                .replace("BIGVALUE", &"x".repeat(1024 * kib)),
            Some(
                "request body: tests[0].env.BIG: is 1048576 bytes, more than the limit of 131067 (execve takes a string of at most 131072 bytes, `BIG=` and the closing NUL included)",
            ),
        ),
        (
            "500 tests, [defaults] of eight 120 KiB variables",
            manifest(500, &format!(r#"{{"env":{}}}"#, env_of(8, 120 * kib)), ""),
            Some(
                "request body: tests: with [defaults] applied, tests[0] to tests[68] (of 500) already weigh",
            ),
        ),
        (
            "20,000 tests, a 100 KiB setup in [defaults]",
            manifest(
                20_000,
                &format!(r#"{{"setup":"{}"}}"#, "x".repeat(100 * kib)),
                "",
            ),
            Some("request body: tests: with [defaults] applied"),
        ),
        (
            "20,000 tests, a 1 MiB file in [defaults]",
            manifest(20_000, &big_file, ""),
            Some("request body: tests: with [defaults] applied"),
        ),
        (
            "20,000 tests, 10,000 empty variables in [defaults]",
            manifest(20_000, &format!(r#"{{"env":{}}}"#, env_of(10_000, 0)), ""),
            Some("request body: tests: with [defaults] applied"),
        ),
        (
            "1,000 tests, each with its own 10 KiB variable",
            manifest(1_000, "{}", &format!(r#""env":{}"#, env_of(1, 10 * kib))),
            None,
        ),
        ("20,000 small tests", manifest(20_000, "{}", ""), None),
        (
            "40 tests, a 1 MiB file in [defaults]",
            manifest(40, &big_file, ""),
            None,
        ),
    ];
    for (what, text, expected) in cases {
        let (peak, result) = peak_of(|| Manifest::load(&text, Format::Json, Some("request body")));
        let request = text.len();
        let tests = text.matches(r#"{"name":"t"#).count();
        eprintln!(
            "{what}: request {request}, peak {peak} ({:.1}x the request)",
            peak as f64 / request as f64
        );
        match (expected, result) {
            (Some(start), Err(e)) => {
                assert!(e.to_string().starts_with(start), "{what}: {e}");
                // Parsed, each test holds about its share of the expanded size before
                // `[defaults]`, and no more is built.
                let floor = request.max(tests * TEST_BYTES);
                assert!(
                    peak <= 4 * floor,
                    "{what}: refused, but only after holding {peak} bytes for a {request}-byte request of {tests} tests"
                );
            }
            (None, Ok(suite)) => {
                let parsed = Manifest::parse(&text, Format::Json, None).expect("parses");
                let expanded = parsed.expanded_bytes();
                assert!(expanded <= MAX_EXPANDED_BYTES, "{what}");
                assert!(
                    peak <= 4 * request.max(expanded),
                    "{what}: held {peak} bytes for a {request}-byte request expanding to {expanded}"
                );
                // The count is an upper bound of the suite's wire size.
                let wire: usize = suite
                    .tests
                    .iter()
                    .map(|t| serde_json::to_vec(t).map_or(0, |v| v.len()))
                    .sum();
                assert!(wire <= expanded, "{what}: {wire} bytes on the wire");
            }
            (expected, got) => panic!("{what}: expected {expected:?}, got {got:?}"),
        }
    }

    // A caller's own limit: the same suite, refused under a lower one.
    let text = manifest(40, &big_file, "");
    let manifest = Manifest::parse(&text, Format::Json, None).expect("parses");
    let limits = Limits {
        expanded_bytes: manifest.expanded_bytes() - 1,
        ..Limits::default()
    };
    let err = manifest
        .validate_with(&limits)
        .expect_err("over a lower limit");
    assert_eq!(err.field.as_deref(), Some("tests"), "{err}");
    assert!(
        err.message.contains("tests[0] to tests[39] (of 40)"),
        "{err}"
    );
    let limits = Limits {
        expanded_bytes: manifest.expanded_bytes(),
        ..Limits::default()
    };
    manifest.validate_with(&limits).expect("at the limit");
}
