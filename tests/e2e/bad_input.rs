//! Bad input gets one clear line naming what is wrong, exit code 2, and changes nothing.

use crate::support::TestEnv;

const BAD: &[(&str, &str, &str)] = &[
    (
        "malformed.toml",
        "name = \"s\"\n[[tests]\nname = \"a\"\n",
        "malformed.toml:2:",
    ),
    (
        "malformed.json",
        "{\"name\": \"s\",\n \"tests\": [\n",
        "malformed.json:3:",
    ),
    (
        "framework.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\nframework = \"nose\"\n",
        "framework.toml:5: tests[0].framework: unknown framework `nose`",
    ),
    (
        "both.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ncode = \"x\"\n",
        "both.toml:2: tests[0]: has both `code` and `command`",
    ),
    (
        "neither.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\n",
        "neither.toml:2: tests[0]: has neither `code` nor `command`",
    ),
    (
        "duplicate.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
        "duplicate.toml:6: tests[1].name: duplicate test name `a`",
    ),
    (
        "empty.toml",
        "name = \"s\"\n",
        "empty.toml: tests: the suite has no tests",
    ),
    (
        "zero.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"0s\"\n",
        "zero.toml:5: tests[0].timeout: must be greater than zero",
    ),
    (
        "soon.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"soon\"\n",
        "soon.toml:5: tests[0].timeout: `soon` is not a duration",
    ),
    (
        "noworkspace.toml",
        "name = \"s\"\nworkspace = \"does-not-exist\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
        "noworkspace.toml: workspace: `",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn bad_manifests_are_refused_with_one_line_and_change_nothing() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 1).await?;
    for (file, text, expected) in BAD {
        let manifest = env.write(file, text);
        for server in [false, true] {
            let run = env.run_suite(&manifest, file, server, &[]);
            let stderr = run.stderr();
            assert_eq!(run.code(), Some(2), "{file} (server: {server}): {stderr}");
            assert!(
                stderr.contains(expected),
                "{file} (server: {server}): expected `{expected}` in\n{stderr}"
            );
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{file}: one line\n{stderr}"
            );
            assert!(run.report.is_none(), "{file}: no report written");
        }
    }
    assert_eq!(
        env.suite_keys().await?,
        Vec::<String>::new(),
        "no suite or blob written to Redis"
    );
    assert_eq!(env.queue_state().await?.0, 0, "nothing published");
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_exit_code_2() {
    let env = TestEnv::new().await;
    let manifest = env.write(
        "ok.toml",
        "name = \"s\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
    );
    let output = env
        .command(&[
            "run",
            &manifest.display().to_string(),
            "--server",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("run isotest");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the isotest server at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_over_the_blob_limit_is_refused() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    env.spawn(
        "producer",
        &[
            "producer",
            "--listen",
            &listen,
            "--open",
            "--max-blob-bytes",
            "1024",
        ],
    );
    let url = format!("http://{listen}");
    let ready = format!("{url}/readyz");
    crate::support::poll(
        std::time::Duration::from_secs(30),
        "the producer",
        || async {
            Ok(reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success()))
        },
    )
    .await?;
    env.producer_url = Some(url);
    // Pseudo-random bytes do not compress: the bundle stays over the 1 KiB limit.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::create_dir_all(env.dir.join("big"))?;
    std::fs::write(env.dir.join("big/noise.bin"), noise)?;
    let manifest = env.write(
        "big.toml",
        "name = \"s\"\nworkspace = \"big\"\n[[tests]]\nname = \"a\"\ncommand = [\"true\"]\n",
    );
    let run = env.run_suite(&manifest, "big", true, &[]);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("413") && stderr.contains("limit"),
        "{stderr}"
    );
    assert_eq!(
        env.suite_keys().await?,
        Vec::<String>::new(),
        "no suite or blob stored"
    );
    env.stop();
    env.cleanup().await
}
