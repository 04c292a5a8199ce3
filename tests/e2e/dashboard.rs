//! The dashboard's live view fed by the real services: a suite run by worker processes
//! and ended by the aggregator is streamed, replayed from its start, as every attempt's
//! result (a failure with its output) and then its end. The browser side is tested in
//! `producer/tests/ui`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::support::TestEnv;

/// The events of a server-sent event stream up to its end: (event, id, data).
async fn read_to_end(
    mut response: reqwest::Response,
) -> Result<Vec<(String, Option<String>, Value)>> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(event) = event {
                events.push((event, id, serde_json::from_str(&data)?));
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .context("the stream ended within 30s")??;
        match chunk {
            Some(chunk) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            None => return Ok(events),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suite_run_by_the_services_is_streamed_result_by_result_to_its_end() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let manifest = env.write(
        "live.toml",
        "name = \"live\"\n\n\
         [[tests]]\nname = \"passes\"\ncommand = [\"true\"]\n\n\
         [[tests]]\nname = \"fails\"\ncode = \"echo 'boom: expected 2, got 3' >&2; exit 3\"\nretries = 1\n\n\
         [[tests]]\nname = \"passes-too\"\ncode = \"exit 0\"\n",
    );
    let run = env.run_suite(&manifest, "live", true, &[]);
    ensure!(run.code() == Some(1), "one test fails: {}", run.stderr());
    let suite = run.report().suite_id.clone();

    // An open producer: the live view needs no session. A new view replays from the start.
    let producer = env.producer_url.clone().context("services started")?;
    let response = reqwest::get(format!("{producer}/ui/api/suites/{suite}/events")).await?;
    ensure!(response.status().is_success(), "{}", response.status());
    let events = read_to_end(response).await?;
    env.stop();

    let kinds: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
    ensure!(
        kinds.first() == Some(&"suite") && kinds.last() == Some(&"end"),
        "{kinds:?}"
    );
    ensure!(events[0].2["total"] == 3, "{:?}", events[0]);
    ensure!(events.last().context("end")?.2["state"] == "complete");
    let results: BTreeMap<String, &Value> = events
        .iter()
        .filter(|(e, _, _)| e == "result")
        .map(|(_, _, r)| {
            (
                format!(
                    "{}#{}",
                    r["test"].as_str().unwrap_or_default(),
                    r["attempt"]
                ),
                r,
            )
        })
        .collect();
    let fields: Vec<&str> = results.keys().map(String::as_str).collect();
    ensure!(
        fields == ["fails#1", "fails#2", "passes#1", "passes-too#1"],
        "every attempt once: {fields:?}"
    );
    ensure!(
        events.iter().filter(|(e, _, _)| e == "result").count() == 4,
        "no result twice: {kinds:?}"
    );
    let first_try = results["fails#1"];
    ensure!(
        first_try["status"] == "failed" && first_try["final"] == false,
        "{first_try}"
    );
    ensure!(
        first_try["stderr_tail"]
            .as_str()
            .is_some_and(|s| s.contains("boom: expected 2, got 3")),
        "a failure carries its output: {first_try}"
    );
    ensure!(results["fails#2"]["final"] == true);
    ensure!(results["passes#1"]["status"] == "passed");
    ensure!(
        events.iter().skip(1).all(|(_, id, _)| id.is_some()),
        "every event after the first carries its stream id"
    );
    env.cleanup().await
}
