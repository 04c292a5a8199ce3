//! unittest: `python -m unittest -v` on inline `code` or one test id; per-case results from
//! its verbose output, which writes one line a case to stderr (`test_a (module.Class.test_a)
//! ... ok`) and then a traceback section per problem; discovery by the standard loader.

use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::Status;

use super::pytest::PYTHON_CODE_FILE;
use super::toolchain::path_str;
use super::verdict::{
    Exit, Observed, Verdict, all_skipped, errored, failed_or_errored, signal_name, verdict,
};
use super::{Adapter, Plan, Toolchain};
use crate::warm::WarmPlan;
use isotest_protocol::result::{CaseResult, CaseStatus};

/// The unittest adapter.
pub(crate) struct Unittest;

/// Lists unittest ids with the standard loader; an import failure fails the listing.
const LISTER: &str = r#"
import sys, unittest
start, pattern = sys.argv[1], sys.argv[2]
loader = unittest.TestLoader()
if pattern:
    glob = any(c in pattern for c in "*?[")
    loader.testNamePatterns = [pattern if glob else "*%s*" % pattern]
suite = loader.discover(start, top_level_dir=".")
def walk(s):
    for t in s:
        if isinstance(t, unittest.TestSuite):
            yield from walk(t)
        else:
            yield t
ids = []
for t in walk(suite):
    if type(t).__name__ in ("_FailedTest", "ModuleImportFailure"):
        print("cannot load %s: %s" % (t.id(), getattr(t, "_exception", "")), file=sys.stderr)
        sys.exit(2)
    ids.append(t.id())
if getattr(loader, "errors", None):
    print("\n".join(loader.errors), file=sys.stderr)
    sys.exit(2)
print("\n".join(ids))
"#;

impl Adapter for Unittest {
    fn tool_env(&self, _tools: &Toolchain, set: &mut dyn FnMut(&str, String)) {
        // The root file system is read-only: spare Python the failed cache writes.
        set("PYTHONDONTWRITEBYTECODE", "1".into());
    }

    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        let target = match &test.body {
            TestBody::Code(code) => {
                plan.file(PYTHON_CODE_FILE, code.as_bytes());
                "test_isotest".to_owned()
            }
            TestBody::TestId(id) => id.clone(),
            TestBody::Command(argv) => {
                plan.command = argv.clone();
                return;
            }
        };
        plan.command = vec![
            path_str(&tools.python),
            "-m".into(),
            "unittest".into(),
            "-v".into(),
            target,
        ];
    }

    fn cases(
        &self,
        seen: &Observed<'_>,
    ) -> (Vec<isotest_protocol::result::CaseResult>, Option<String>) {
        (parse_verbose(seen.stderr), None)
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], _problem: Option<&str>) -> Verdict {
        match exit {
            Exit::Code(0) if all_skipped(cases) => verdict(Status::Skipped, None),
            Exit::Code(0) => verdict(Status::Passed, None),
            Exit::Code(1) if cases.is_empty() => {
                errored("unittest exited with code 1 before running any test")
            }
            Exit::Code(1) => failed_or_errored(cases),
            Exit::Code(5) => errored("unittest ran no tests (exit code 5)"),
            Exit::Code(code) => errored(&format!("unittest exited with code {code}")),
            Exit::Signal(sig) => errored(&format!(
                "the interpreter crashed: killed by {}",
                signal_name(sig)
            )),
        }
    }

    fn warm(&self, test: &TestSpec, tools: &Toolchain) -> Result<Option<WarmPlan>, String> {
        let TestBody::TestId(id) = &test.body else {
            return Err("only a test id starts warm (inline code and commands start cold)".into());
        };
        // `package.module.Class.test_method`: the zygote imports the module.
        let parts: Vec<&str> = id.split('.').collect();
        if parts.len() < 3 {
            return Err(format!("`{id}` names no test method of a module's class"));
        }
        let module = parts[..parts.len() - 2].join(".");
        Ok(Some(WarmPlan {
            group: module.clone(),
            command: vec![
                path_str(&tools.python),
                "-c".into(),
                crate::warm::program(super::UNITTEST_ZYGOTE),
                module,
            ],
            request: serde_json::json!({ "test_id": id }),
        }))
    }

    fn listing(&self, entry: &DiscoverEntry, tools: &Toolchain) -> Vec<String> {
        vec![
            path_str(&tools.python),
            "-c".into(),
            LISTER.into(),
            entry.paths.first().cloned().unwrap_or_else(|| ".".into()),
            entry.filter.clone().unwrap_or_default(),
        ]
    }

    fn parse_listing(&self, _entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains(' '))
            .map(str::to_owned)
            .collect()
    }
}

/// Reads the verbose lines and the `FAIL:`/`ERROR:` sections that follow them.
pub fn parse_verbose(stderr: &str) -> Vec<CaseResult> {
    let mut cases: Vec<CaseResult> = stderr.lines().filter_map(parse_line).collect();
    for (header, body) in sections(stderr) {
        let Some((kind, id)) = header.split_once(": ") else {
            continue;
        };
        if kind != "FAIL" && kind != "ERROR" {
            continue;
        }
        let (name, classname) = split_id(id.trim());
        if let Some(case) = cases
            .iter_mut()
            .find(|c| c.name == name && c.classname == classname)
        {
            case.message = body
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned());
            case.detail = Some(body.trim_end().to_owned());
        }
    }
    cases
}

fn parse_line(line: &str) -> Option<CaseResult> {
    let (id, outcome) = line.rsplit_once(" ... ")?;
    let outcome = outcome.trim();
    let (status, message) = match outcome {
        "ok" => (CaseStatus::Passed, None),
        "FAIL" => (CaseStatus::Failed, None),
        "ERROR" => (CaseStatus::Error, None),
        "expected failure" => (CaseStatus::Xfail, None),
        "unexpected success" => (CaseStatus::Xpass, None),
        other => {
            let reason = other.strip_prefix("skipped")?;
            let reason = reason.trim().trim_matches('\'').to_owned();
            (CaseStatus::Skipped, (!reason.is_empty()).then_some(reason))
        }
    };
    let (name, classname) = split_id(id.trim());
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    Some(CaseResult {
        name,
        classname,
        file: None,
        status,
        duration_ms: 0,
        message,
        detail: None,
    })
}

/// `test_a (pkg.mod.Class.test_a)` (3.11+) or `test_a (pkg.mod.Class)` (older) →
/// (`test_a`, `pkg.mod.Class`).
fn split_id(id: &str) -> (String, String) {
    match id.split_once(" (") {
        Some((name, rest)) => {
            let qualified = rest.trim_end_matches(')');
            let class = qualified
                .strip_suffix(name)
                .map_or(qualified, |c| c.trim_end_matches('.'));
            (name.to_owned(), class.to_owned())
        }
        None => (id.to_owned(), String::new()),
    }
}

/// Splits the report part into (`FAIL: id`, traceback) pairs.
fn sections(stderr: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with("======") {
            continue;
        }
        let Some(header) = lines.next() else { break };
        if lines.peek().is_some_and(|l| l.starts_with("------")) {
            lines.next();
        }
        let mut body = String::new();
        while let Some(l) = lines.peek() {
            if l.starts_with("======") || l.starts_with("------") {
                break;
            }
            body.push_str(l);
            body.push('\n');
            lines.next();
        }
        out.push((header, body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
test_add (test_isotest.T.test_add) ... ok
test_err (test_isotest.T.test_err) ... ERROR
test_fail (test_isotest.T.test_fail) ... FAIL
test_skip (test_isotest.T.test_skip) ... skipped 'not today'
test_xf (test_isotest.T.test_xf) ... expected failure
test_old (test_isotest.Old) ... ok

======================================================================
ERROR: test_err (test_isotest.T.test_err)
----------------------------------------------------------------------
Traceback (most recent call last):
  File \"/workspace/test_isotest.py\", line 7, in test_err
    raise KeyError('k')
KeyError: 'k'

======================================================================
FAIL: test_fail (test_isotest.T.test_fail)
----------------------------------------------------------------------
Traceback (most recent call last):
  File \"/workspace/test_isotest.py\", line 5, in test_fail
    self.assertEqual(1, 2)
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 6 tests in 0.001s

FAILED (failures=1, errors=1, skipped=1, expected failures=1)
";

    #[test]
    fn reads_every_case_and_its_traceback() {
        let cases = parse_verbose(OUTPUT);
        let got: Vec<(&str, &str, CaseStatus)> = cases
            .iter()
            .map(|c| (c.name.as_str(), c.classname.as_str(), c.status))
            .collect();
        assert_eq!(
            got,
            [
                ("test_add", "test_isotest.T", CaseStatus::Passed),
                ("test_err", "test_isotest.T", CaseStatus::Error),
                ("test_fail", "test_isotest.T", CaseStatus::Failed),
                ("test_skip", "test_isotest.T", CaseStatus::Skipped),
                ("test_xf", "test_isotest.T", CaseStatus::Xfail),
                ("test_old", "test_isotest.Old", CaseStatus::Passed),
            ]
        );
        assert_eq!(cases[1].message.as_deref(), Some("KeyError: 'k'"));
        assert_eq!(cases[2].message.as_deref(), Some("AssertionError: 1 != 2"));
        assert!(
            cases[2]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("line 5"))
        );
        assert_eq!(cases[3].message.as_deref(), Some("not today"));
    }

    #[test]
    fn ignores_lines_that_are_not_cases() {
        assert!(parse_verbose("hello ... world\nTraceback ... \n\n").is_empty());
        assert!(parse_verbose("").is_empty());
    }
}
