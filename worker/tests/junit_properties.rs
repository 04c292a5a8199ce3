//! Property tests of the JUnit reader: no bytes make it panic, and a well-formed report gives
//! one case per `<testcase>`, with the status its children call for. Also the worker's word on
//! reports and output that are too big or not UTF-8.

use std::fmt::Write as _;

use isotest_protocol::manifest::Framework;
use isotest_protocol::result::{CaseStatus, Status};
use isotest_sandbox::{Captured, CollectError};
use isotest_worker::frameworks::{Exit, Observed, judge, parse_junit};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/junit_properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// XML-ish documents: the right tags in any nesting, with any attributes and text, entities
// good and bad, CDATA, comments, processing instructions and DTDs.

const TAGS: &[&str] = &[
    "testsuites",
    "testsuite",
    "testcase",
    "failure",
    "error",
    "skipped",
    "system-out",
    "properties",
    "property",
    "x:testcase",
    "html",
];

const ATTRS: &[&str] = &[
    "name",
    "classname",
    "file",
    "time",
    "message",
    "type",
    "line",
    "xmlns:x",
    "xml:lang",
];

const VALUES: &[&str] = &[
    "",
    "a",
    "pytest.xfail",
    "0.001",
    "NaN",
    "inf",
    "-1",
    "1e308",
    "18446744073709551616",
    "&amp;&lt;&gt;&quot;&apos;",
    "&#65;&#x1F600;",
    "&#0;",
    "&#xD800;",
    "&#x110000;",
    "&bogus;",
    "&",
    "<",
    "\"",
    "\u{0}",
    "é\u{feff}",
];

const TEXTS: &[&str] = &[
    "",
    " ",
    "traceback",
    "&amp;",
    "&lol;",
    "&#10;",
    "&#xFFFF;",
    "<![CDATA[<not a tag>]]>",
    "<![CDATA[",
    "]]>",
    "<!-- comment -->",
    "<!--",
    "<?pi data?>",
    "<?xml version=\"1.0\"?>",
    "<!DOCTYPE testsuite [<!ENTITY lol \"lol\">]>",
    "<!DOCTYPE x SYSTEM \"file:///etc/passwd\">",
    "<!ENTITY e \"e\">",
    "\u{0}",
    "\r\n",
    "</testcase>",
    "<testcase/>",
];

#[derive(Debug, Clone)]
enum Xmlish {
    Text(&'static str),
    Element {
        tag: &'static str,
        attrs: Vec<(&'static str, &'static str)>,
        children: Vec<Xmlish>,
        close: bool,
    },
}

fn xmlish() -> impl Strategy<Value = Xmlish> {
    let leaf = select(TEXTS).prop_map(Xmlish::Text);
    leaf.prop_recursive(6, 64, 6, |inner| {
        (
            select(TAGS),
            prop::collection::vec((select(ATTRS), select(VALUES)), 0..4),
            prop::collection::vec(inner, 0..6),
            prop::bool::weighted(0.95),
        )
            .prop_map(|(tag, attrs, children, close)| Xmlish::Element {
                tag,
                attrs,
                children,
                close,
            })
    })
}

fn render_xmlish(node: &Xmlish, out: &mut String) {
    match node {
        Xmlish::Text(t) => out.push_str(t),
        Xmlish::Element {
            tag,
            attrs,
            children,
            close,
        } => {
            out.push('<');
            out.push_str(tag);
            for (k, v) in attrs {
                let _ = write!(out, " {k}=\"{v}\"");
            }
            if children.is_empty() && *close {
                out.push_str("/>");
                return;
            }
            out.push('>');
            for child in children {
                render_xmlish(child, out);
            }
            if *close {
                let _ = write!(out, "</{tag}>");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_junit(&bytes);
    }

    #[test]
    fn xmlish_documents_never_panic(
        prolog in select(&["", "<?xml version=\"1.0\" encoding=\"utf-8\"?>", "\u{feff}",
            "<!DOCTYPE testsuites [<!ENTITY a \"&#38;#60;\">]>", "<!DOCTYPE testsuites>"][..]),
        doc in xmlish(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = prolog.to_owned();
        render_xmlish(&doc, &mut text);
        if let Ok(cases) = parse_junit(text.as_bytes()) {
            // Whatever is accepted has no DTD and a suite root. A DTD can only stand in
            // the prolog: `<!DOCTYPE` further on is either malformed or the text of a
            // CDATA section, which a reader rightly takes as text.
            prop_assert!(!prolog.contains("<!DOCTYPE"), "a DTD was accepted: {}", text);
            let trimmed = text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace());
            prop_assert!(trimmed.contains("<testsuite"), "{}", text);
            prop_assert!(cases.len() <= text.matches("testcase").count());
        }
        let bytes = text.as_bytes();
        let _ = parse_junit(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

// ---------------------------------------------------------------------------------------
// Well-formed reports, and what they must give.

/// A child of a `<testcase>`: a status element, or something the reader passes over.
#[derive(Debug, Clone)]
struct Child {
    tag: &'static str,
    kind: Option<&'static str>,
    message: Option<String>,
    text: String,
    cdata: bool,
}

#[derive(Debug, Clone)]
struct Case {
    name: Option<String>,
    classname: Option<String>,
    file: Option<String>,
    time_ms: Option<u64>,
    children: Vec<Child>,
}

#[derive(Debug, Clone)]
enum Suite {
    Suite(Vec<Suite>),
    Case(Case),
}

fn xml_text() -> impl Strategy<Value = String> {
    // Any characters XML allows, `]]>` aside (it ends a CDATA section); `\r` is left out
    // because XML reads a line end as `\n`.
    "[\\t\\n\\x20-\\u{D7FF}\\u{E000}-\\u{FFFD}\\u{10000}-\\u{10FFFF}]{0,20}"
        .prop_filter("no ]]>", |s| !s.contains("]]>"))
}

fn child() -> impl Strategy<Value = Child> {
    (
        select(
            &[
                "failure",
                "error",
                "skipped",
                "system-out",
                "system-err",
                "rerunFailure",
            ][..],
        ),
        prop::option::of(select(
            &["pytest.xfail", "pytest.skip", "AssertionError"][..],
        )),
        prop::option::of(xml_text()),
        xml_text(),
        any::<bool>(),
    )
        .prop_map(|(tag, kind, message, text, cdata)| Child {
            tag,
            kind,
            message,
            text,
            cdata,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::of(xml_text()),
        prop::option::of(xml_text()),
        prop::option::of(xml_text()),
        prop::option::of(0u64..10_000_000),
        prop::collection::vec(child(), 0..4),
    )
        .prop_map(|(name, classname, file, time_ms, children)| Case {
            name,
            classname,
            file,
            time_ms,
            children,
        })
}

fn suite() -> impl Strategy<Value = Suite> {
    case()
        .prop_map(Suite::Case)
        .prop_recursive(3, 40, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Suite::Suite)
        })
}

fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            // Attribute values turn raw white space into spaces; a reference keeps it.
            '\n' | '\t' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn attr(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = write!(out, " {key}=\"{}\"", escape(v, true));
    }
}

fn render(suite: &Suite, out: &mut String, cases: &mut Vec<Case>) {
    match suite {
        Suite::Suite(children) => {
            out.push_str("<testsuite name=\"s\">");
            for child in children {
                render(child, out, cases);
            }
            out.push_str("</testsuite>");
        }
        Suite::Case(case) => {
            out.push_str("<testcase");
            attr(out, "name", case.name.as_deref());
            attr(out, "classname", case.classname.as_deref());
            attr(out, "file", case.file.as_deref());
            let time = case
                .time_ms
                .map(|ms| format!("{}.{:03}", ms / 1000, ms % 1000));
            attr(out, "time", time.as_deref());
            out.push('>');
            for child in &case.children {
                let _ = write!(out, "<{}", child.tag);
                attr(out, "type", child.kind);
                attr(out, "message", child.message.as_deref());
                out.push('>');
                if child.cdata {
                    let _ = write!(out, "<![CDATA[{}]]>", child.text);
                } else {
                    out.push_str(&escape(&child.text, false));
                }
                let _ = write!(out, "</{}>", child.tag);
            }
            out.push_str("</testcase>");
            cases.push(case.clone());
        }
    }
}

/// What a case's children make of it: the strongest status among them (a failure over an
/// error over a skip; the first of equals), with that child's message and text.
fn expected(case: &Case) -> (CaseStatus, Option<String>, Option<String>) {
    let rank = |s: CaseStatus| match s {
        CaseStatus::Passed => 0,
        CaseStatus::Skipped | CaseStatus::Xfail => 1,
        CaseStatus::Error => 2,
        CaseStatus::Failed | CaseStatus::Xpass => 3,
    };
    let mut best = (CaseStatus::Passed, None, None);
    for child in &case.children {
        let status = match (child.tag, child.kind) {
            ("failure", _) => CaseStatus::Failed,
            ("error", _) => CaseStatus::Error,
            ("skipped", Some("pytest.xfail")) => CaseStatus::Xfail,
            ("skipped", _) => CaseStatus::Skipped,
            _ => continue,
        };
        if rank(status) > rank(best.0) {
            let text = child.text.trim();
            best = (
                status,
                child.message.clone(),
                (!text.is_empty()).then(|| text.to_owned()),
            );
        }
    }
    best
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn one_case_per_testcase_with_its_status(
        root in prop::collection::vec(suite(), 0..5),
        wrap in any::<bool>(),
    ) {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
        let mut cases = Vec::new();
        xml.push_str(if wrap { "<testsuites>" } else { "<testsuite>" });
        for s in &root {
            render(s, &mut xml, &mut cases);
        }
        xml.push_str(if wrap { "</testsuites>" } else { "</testsuite>" });

        let got = parse_junit(xml.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e}: {:?}\n{xml}", std::error::Error::source(&e))))?;
        prop_assert_eq!(got.len(), cases.len(), "{}", xml);
        for (got, want) in got.iter().zip(&cases) {
            prop_assert_eq!(&got.name, want.name.as_deref().unwrap_or_default());
            prop_assert_eq!(&got.classname, want.classname.as_deref().unwrap_or_default());
            prop_assert_eq!(&got.file, &want.file);
            prop_assert_eq!(got.duration_ms, want.time_ms.unwrap_or(0));
            let (status, message, detail) = expected(want);
            prop_assert_eq!(got.status, status, "{}", xml);
            prop_assert_eq!(&got.message, &message, "{}", xml);
            prop_assert_eq!(&got.detail, &detail, "{}", xml);
        }
    }

    /// The first failure, error or skipped child decides when it is the only one.
    #[test]
    fn a_single_status_child_decides(case in case(), pick in 0..4usize) {
        let mut case = case;
        case.children.retain(|c| !matches!(c.tag, "failure" | "error" | "skipped"));
        let (tag, kind, status) = [
            ("failure", None, CaseStatus::Failed),
            ("error", None, CaseStatus::Error),
            ("skipped", None, CaseStatus::Skipped),
            ("skipped", Some("pytest.xfail"), CaseStatus::Xfail),
        ][pick];
        case.children.push(Child { tag, kind, message: None, text: String::new(), cdata: false });
        let mut xml = String::from("<testsuites>");
        render(&Suite::Case(case), &mut xml, &mut Vec::new());
        xml.push_str("</testsuites>");
        let got = parse_junit(xml.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(got[0].status, status, "{}", xml);
    }
}

#[test]
fn deep_nesting_is_read_or_refused_without_overflow() {
    let depth = 200_000;
    let mut xml = "<testsuite>".repeat(depth);
    xml.push_str("<testcase name=\"deep\"/>");
    xml.push_str(&"</testsuite>".repeat(depth));
    // Either answer is fine; a stack overflow would abort the test binary.
    if let Ok(cases) = parse_junit(xml.as_bytes()) {
        assert_eq!(cases.len(), 1);
    }
}

#[test]
fn a_large_report_under_the_cap_gives_every_case() {
    let n = 20_000;
    let mut xml = String::from("<testsuites><testsuite>");
    for i in 0..n {
        let _ = write!(
            xml,
            "<testcase classname=\"m\" name=\"t{i}\" time=\"0.001\">{}</testcase>",
            if i % 2 == 0 {
                "<failure message=\"no\">tb</failure>"
            } else {
                ""
            }
        );
    }
    xml.push_str("</testsuite></testsuites>");
    let cases = parse_junit(xml.as_bytes()).expect("valid");
    assert_eq!(cases.len(), n);
    assert_eq!(
        cases
            .iter()
            .filter(|c| c.status == CaseStatus::Failed)
            .count(),
        n / 2
    );
}

// ---------------------------------------------------------------------------------------
// Reports over the collect cap, and output that is not UTF-8, as the worker judges them.

/// What the worker passes `judge` when the sandbox refused to collect a report as too big
/// (see `Runner::judge` in `run.rs`).
fn too_big() -> Option<Result<&'static [u8], String>> {
    Some(Err(CollectError::TooLarge { cap: 16 << 20 }.to_string()))
}

#[test]
fn a_report_over_the_collect_cap_is_a_clear_error_when_the_run_passed() {
    for framework in [Framework::Pytest, Framework::Junit] {
        let seen = Observed {
            command: Some(Exit::Code(0)),
            report: too_big(),
            ..Default::default()
        };
        let v = judge(framework, &seen);
        assert_eq!(v.status, Status::Error, "{framework}: {v:?}");
        let reason = v.reason.unwrap_or_default();
        assert!(
            reason.contains("JUnit report") && reason.contains("larger than 16777216 bytes"),
            "{framework}: {reason}"
        );
        assert!(v.cases.is_empty());
    }
}

#[test]
fn a_report_over_the_collect_cap_still_fails_a_failed_run() {
    for framework in [Framework::Pytest, Framework::Junit, Framework::Node] {
        let seen = Observed {
            command: Some(Exit::Code(1)),
            report: too_big(),
            ..Default::default()
        };
        let v = judge(framework, &seen);
        assert!(!v.status.is_success(), "{framework}: {v:?}");
        assert!(v.reason.is_some(), "{framework}: {v:?}");
    }
}

#[test]
fn output_that_is_not_utf8_is_rendered_lossily_and_still_read() {
    let mut stderr = b"\xff\xfe garbage \xc3\n".to_vec();
    stderr.extend_from_slice(b"test_a (m.T.test_a) ... FAIL\n\x80tail \xe2\x82");
    let captured = Captured {
        data: stderr,
        dropped_bytes: 3,
    };
    let text = captured.render("stderr");
    assert!(
        text.starts_with("\u{fffd}\u{fffd} garbage \u{fffd}\n"),
        "{text:?}"
    );
    assert!(
        text.contains("\u{fffd}tail \u{fffd}\n[isotest: 3 bytes of stderr dropped]\n"),
        "{text:?}"
    );

    let seen = Observed {
        command: Some(Exit::Code(1)),
        stderr: &text,
        ..Default::default()
    };
    let v = judge(Framework::Unittest, &seen);
    assert_eq!(v.status, Status::Failed, "{v:?}");
    assert_eq!(v.cases.len(), 1, "{v:?}");
    assert_eq!(v.cases[0].status, CaseStatus::Failed);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rendering_any_output_is_lossless_where_it_is_utf8(
        data in prop::collection::vec(any::<u8>(), 0..512),
        dropped in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let text = Captured { data: data.clone(), dropped_bytes: dropped }.render("stdout");
        let lossy = String::from_utf8_lossy(&data);
        prop_assert!(text.starts_with(lossy.as_ref()));
        if dropped == 0 {
            prop_assert_eq!(text.as_str(), lossy.as_ref());
        } else {
            let marker = format!("[isotest: {dropped} bytes of stdout dropped]\n");
            prop_assert!(text.ends_with(&marker), "{:?}", text);
        }
        for framework in [Framework::Unittest, Framework::Go, Framework::Cargo] {
            let seen = Observed {
                command: Some(Exit::Code(1)),
                stdout: &text,
                stderr: &text,
                ..Default::default()
            };
            let v = judge(framework, &seen);
            prop_assert!(!v.status.is_success());
        }
    }
}
