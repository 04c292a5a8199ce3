//! Build products leaving one sandbox and entering others: a build's output exported to a
//! host directory once, then bound read-only into the workspace of every test that runs from
//! it (they need root, user namespaces and cgroups, as on the CI machine).

use std::sync::OnceLock;
use std::time::Duration;

use isotest_sandbox::{
    Bind, CollectError, Export, Limits, RunOutcome, RunSpec, SandboxConfig, Sandboxer, StageExit,
};

fn sandboxer() -> &'static Sandboxer {
    static SANDBOXER: OnceLock<Sandboxer> = OnceLock::new();
    SANDBOXER.get_or_init(|| {
        let config = SandboxConfig {
            state_dir: "/run/isotest-sandbox-test-prepared".into(),
            ..SandboxConfig::default()
        };
        Sandboxer::new(config).expect("this host supports full isolation")
    })
}

fn sh(script: &str) -> RunSpec {
    RunSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        limits: Limits {
            timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        ..RunSpec::default()
    }
}

async fn run(spec: RunSpec) -> RunOutcome {
    sandboxer().run(spec).await.expect("sandbox runs")
}

fn host_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("isotest-prepared-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("host dir");
    dir
}

#[tokio::test]
async fn a_build_exported_once_runs_read_only_in_other_sandboxes() {
    let artifact = host_dir("artifact");
    let build = run(RunSpec {
        export: Some(Export {
            paths: vec!["out".into(), "not-built".into()],
            exclude: Vec::new(),
            into: artifact.clone(),
            max_bytes: 1 << 20,
        }),
        ..sh(
            "mkdir -p out/bin && printf '#!/bin/sh\\necho built-once \"$@\"\\n' > out/bin/tool \
              && chmod 700 out/bin/tool && echo scratch > scratch",
        )
    })
    .await;
    assert_eq!(build.command, Some(StageExit::Code(0)));
    let copied = build
        .exported
        .expect("an export was asked")
        .expect("exported");
    assert!(copied > 0);
    assert!(artifact.join("out/bin/tool").is_file());
    assert!(
        !artifact.join("scratch").exists(),
        "only the listed paths leave the sandbox"
    );

    // Two tests run from it: they see it where it was built, can run it, cannot change it.
    for n in 0..2 {
        let test = run(RunSpec {
            binds: vec![Bind {
                host: artifact.join("out"),
                target: "out".into(),
            }],
            ..sh(&format!(
                "out/bin/tool {n} && ! touch out/bin/new 2>/dev/null && ! rm out/bin/tool 2>/dev/null \
                 && touch elsewhere && echo writable-workspace"
            ))
        })
        .await;
        let stdout = String::from_utf8_lossy(&test.stdout.data).into_owned();
        assert_eq!(test.command, Some(StageExit::Code(0)), "{stdout}");
        assert!(stdout.contains(&format!("built-once {n}")), "{stdout}");
        assert!(stdout.contains("writable-workspace"), "{stdout}");
    }
    assert!(
        artifact.join("out/bin/tool").is_file(),
        "tests left it whole"
    );
    assert!(!artifact.join("out/bin/new").exists());
    let _ = std::fs::remove_dir_all(artifact);
}

#[tokio::test]
async fn an_export_follows_no_link_and_keeps_its_cap() {
    let artifact = host_dir("capped");
    let build = run(RunSpec {
        export: Some(Export {
            paths: vec!["big".into()],
            exclude: Vec::new(),
            into: artifact.clone(),
            max_bytes: 1000,
        }),
        ..sh("head -c 5000 /dev/zero > big")
    })
    .await;
    assert!(matches!(
        build.exported,
        Some(Err(CollectError::TooLarge { cap: 1000 }))
    ));
    let linked = host_dir("linked");
    let build = run(RunSpec {
        export: Some(Export {
            paths: vec!["etc/passwd".into()],
            exclude: Vec::new(),
            into: linked.clone(),
            max_bytes: 1 << 20,
        }),
        ..sh("ln -s /etc etc")
    })
    .await;
    assert_eq!(build.exported, Some(Err(CollectError::Link)));
    assert!(!linked.join("etc").exists());
    for dir in [artifact, linked] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
