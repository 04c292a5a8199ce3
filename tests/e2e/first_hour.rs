//! A new user's first hour (issue 13): what the README promises, checked as a user meets
//! it: verdicts kept at a deadline, JUnit testcases that name their test, reports written
//! when a run is interrupted, and the CLI's lines at submission.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use isotest_protocol::report::Report;
use isotest_protocol::result::Status;

use crate::junit_reader;
use crate::support::TestEnv;

/// The status of each test of a report, by name.
fn statuses(report: &Report) -> Vec<(String, Status)> {
    report
        .tests
        .iter()
        .map(|t| (t.name.clone(), t.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_junit_testcase_names_its_test_and_none_collide() -> Result<()> {
    let env = TestEnv::new().await;
    env.write("ws/tests/test_one.py", "def test_x():\n    pass\n");
    let workspace = env.dir.join("ws");
    let manifest = env.write(
        "identity.toml",
        &format!(
            "name = \"identity\"\nworkspace = \"{}\"\n\
             [[tests]]\nname = \"login\"\nframework = \"pytest\"\ncode = \"def test_it():\\n    assert True\\n\"\n\
             [[tests]]\nname = \"logout\"\nframework = \"pytest\"\ncode = \"def test_it():\\n    assert False\\n\"\n\
             [[discover]]\nframework = \"pytest\"\npaths = [\"tests\"]\nprefix = \"a:\"\n\
             [[discover]]\nframework = \"pytest\"\npaths = [\"tests\"]\nprefix = \"b:\"\n",
            workspace.display()
        ),
    );
    let run = env.run_suite(&manifest, "identity", false, &[]);
    let report = run.report();
    ensure!(report.tests.len() == 4, "{:?}", statuses(report));
    let cases = junit_reader::read(&env.dir.join("identity.xml"))?;
    let names: BTreeSet<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    // Every testcase says which isotest test reported it.
    for case in &cases {
        ensure!(
            names.contains(case.classname.as_str()),
            "{case:?} names no test of {names:?}"
        );
    }
    // No two testcases are one to a reader.
    let ids: BTreeSet<(&str, &str)> = cases
        .iter()
        .map(|c| (c.classname.as_str(), c.name.as_str()))
        .collect();
    ensure!(ids.len() == cases.len(), "colliding testcases: {cases:#?}");
    let find = |classname: &str| {
        cases
            .iter()
            .find(|c| c.classname == classname)
            .with_context(|| format!("no testcase of {classname}: {cases:#?}"))
    };
    ensure!(find("login")?.result == "passed", "{cases:#?}");
    ensure!(find("logout")?.result == "failure", "{cases:#?}");
    ensure!(find("login")?.name == "test_isotest.test_it", "{cases:#?}");
    // The discover entries' prefixes keep the one file's test apart.
    ensure!(find("a:tests/test_one.py::test_x")?.result == "passed");
    ensure!(find("b:tests/test_one.py::test_x")?.result == "passed");
    Ok(())
}
