//! The CLI's config file and `isotest suites --server` (issue 13): a user who wrote the
//! server's URL into `$XDG_CONFIG_HOME/isotest/config.toml` need not give `--server`,
//! and a malformed file is one line naming the file, the line and the field.

use anyhow::{Context as _, Result, ensure};

use crate::support::TestEnv;

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_names_the_server_for_status_and_suites() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let manifest = env.write(
        "listed.toml",
        "name = \"listed\"\n[[tests]]\nname = \"ok\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "listed", true, &[]);
    ensure!(run.code() == Some(0), "{}", run.stderr());
    let id = run.report().suite_id.clone();
    let server = env.producer_url.clone().context("producer")?;
    let config = env.write(
        "config/isotest/config.toml",
        &format!("server = \"{server}\"\n"),
    );

    // No --server: the file's.
    let status = env.command(&["status", &id]).output()?;
    let stdout = String::from_utf8_lossy(&status.stdout);
    ensure!(
        stdout.starts_with(&format!("suite {id} (listed): complete, 1 of 1 tests done")),
        "{stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let suites = env.command(&["suites"]).output()?;
    let stdout = String::from_utf8_lossy(&suites.stdout);
    ensure!(suites.status.code() == Some(0), "{suites:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 2, "a header and the one suite: {stdout}");
    ensure!(lines[0].starts_with("ID "), "{stdout}");
    ensure!(
        lines[1].starts_with(&id) && lines[1].contains("complete") && lines[1].ends_with("listed"),
        "{stdout}"
    );

    // A flag still wins: another server is asked, and is not there.
    let other = env
        .command(&["status", &id, "--server", "http://127.0.0.1:9"])
        .output()?;
    ensure!(other.status.code() == Some(2), "{other:?}");

    // A malformed file: one line, exit 2, naming file, line and field.
    std::fs::write(&config, "server = 8080\n")?;
    let broken = env.command(&["suites"]).output()?;
    let stderr = String::from_utf8_lossy(&broken.stderr);
    ensure!(broken.status.code() == Some(2), "{broken:?}");
    ensure!(
        stderr.trim()
            == format!(
                "error: config file {}, line 1, field `server`: invalid type: integer `8080`, expected a string",
                config.display()
            ),
        "{stderr}"
    );
    env.stop();
    env.cleanup().await
}
