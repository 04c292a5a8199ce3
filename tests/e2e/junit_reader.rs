//! Reading a JUnit report as a CI system does, with a real third-party reader: junitparser
//! (PyPI), in a virtual environment made once per machine (`ISOTEST_JUNITPARSER_VENV`, by
//! default `/var/tmp/isotest-junitparser`), so the tests judge what readers see rather
//! than what our own parser accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The junitparser release the tests read with.
const JUNITPARSER: &str = "junitparser==5.0.3";

/// One `<testcase>` as junitparser gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JunitCase {
    pub suite: String,
    pub classname: String,
    pub name: String,
    pub file: Option<String>,
    /// `passed`, `skipped`, `failure` or `error`.
    pub result: String,
}

/// What junitparser prints: every testcase of every testsuite, in order.
const READ: &str = r#"
import json, sys
from junitparser import JUnitXml, TestSuite
xml = JUnitXml.fromfile(sys.argv[1])
suites = [xml] if isinstance(xml, TestSuite) else list(xml)
cases = []
for suite in suites:
    for case in suite:
        if case.is_passed:
            result = "passed"
        elif case.is_skipped:
            result = "skipped"
        elif case.is_error:
            result = "error"
        else:
            result = "failure"
        cases.append({"suite": suite.name, "classname": case.classname, "name": case.name,
                      "file": case._elem.get("file"), "result": result})
print(json.dumps(cases))
"#;

/// Every testcase of the JUnit report at `path`, as junitparser reads it.
///
/// # Errors
///
/// When the reader cannot be installed or refuses the file.
pub fn read(path: &Path) -> Result<Vec<JunitCase>> {
    let python = python()?;
    let output = Command::new(&python)
        .arg("-c")
        .arg(READ)
        .arg(path)
        .output()
        .with_context(|| format!("run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "junitparser could not read {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The venv's interpreter, with junitparser installed (made now if it is not).
fn python() -> Result<PathBuf> {
    static MADE: Mutex<()> = Mutex::new(());
    let _made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = std::env::var_os("ISOTEST_JUNITPARSER_VENV").map_or_else(
        || PathBuf::from("/var/tmp/isotest-junitparser"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import junitparser"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let steps: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        (
            "python3",
            vec!["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
        ),
        (
            python.to_str().context("venv path")?,
            vec![
                "-m".as_ref(),
                "pip".as_ref(),
                "install".as_ref(),
                "--quiet".as_ref(),
                "--disable-pip-version-check".as_ref(),
                JUNITPARSER.as_ref(),
            ],
        ),
    ];
    for (program, args) in steps {
        let output = Command::new(program).args(&args).output()?;
        if !output.status.success() {
            bail!(
                "could not install {JUNITPARSER} into {}: {}",
                venv.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(python)
}
