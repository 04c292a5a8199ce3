//! End-to-end tests that create real sandboxes (they need root, user namespaces and cgroups,
//! as on the CI machine).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use isotest_sandbox::{
    CollectError, Limits, RunOutcome, RunSpec, SandboxConfig, SandboxError, Sandboxer, StageExit,
    Termination,
};

fn sandboxer() -> &'static Sandboxer {
    static SANDBOXER: OnceLock<Sandboxer> = OnceLock::new();
    SANDBOXER.get_or_init(|| {
        let config = SandboxConfig {
            state_dir: "/run/isotest-sandbox-test".into(),
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

fn stdout(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.stdout.data).into_owned()
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host pids whose command line contains `needle`.
fn host_processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

async fn poll_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stages_report_their_exits() {
    let mut spec = sh("echo command; exit 3");
    spec.setup = Some("echo setup > /workspace/setup-ran".into());
    spec.teardown = Some("echo teardown; cat setup-ran".into());
    let o = run(spec).await;
    assert_eq!(o.setup, Some(StageExit::Code(0)));
    assert_eq!(o.command, Some(StageExit::Code(3)));
    assert_eq!(o.teardown, Some(StageExit::Code(0)));
    assert_eq!(o.termination, Termination::Exited);
    assert_eq!(stdout(&o), "command\nteardown\nsetup\n");
    assert!(o.startup > Duration::ZERO && o.usage.wall > Duration::ZERO);
}

#[tokio::test]
async fn failed_setup_skips_command_and_teardown() {
    let mut spec = sh("echo should-not-run");
    spec.setup = Some("exit 5".into());
    spec.teardown = Some("echo nor-this".into());
    let o = run(spec).await;
    assert_eq!(o.setup, Some(StageExit::Code(5)));
    assert_eq!((o.command, o.teardown), (None, None));
    assert_eq!(stdout(&o), "");
}

#[tokio::test]
async fn signals_and_missing_commands_are_reported() {
    let o = run(sh("kill -9 $$")).await;
    assert_eq!(o.command, Some(StageExit::Signal(9)));
    let mut spec = sh("");
    spec.command = vec!["no-such-program-anywhere".into()];
    let o = run(spec).await;
    assert_eq!(o.command, Some(StageExit::Code(127)));
    let mut spec = sh("");
    spec.command = vec!["exit".into(), "4".into()];
    spec.teardown = Some("echo teardown still runs".into());
    let o = run(spec).await;
    assert_eq!(
        o.command,
        Some(StageExit::Code(127)),
        "builtins cannot act on the init"
    );
    assert_eq!(o.teardown, Some(StageExit::Code(0)));
}

#[tokio::test]
async fn a_lone_command_is_looked_up_and_run_like_execvp() {
    // Without setup or teardown `isotest-init` starts the command itself.
    let dir = std::env::temp_dir().join(format!("isotest-execvp-{}", nonce()));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    let write = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join(name), text).expect("write");
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    };
    write("bin/script", "echo from-script \"$1\" $$\n", 0o755);
    write("plain", "echo never\n", 0o644);
    let bundle: Arc<[u8]> = isotest_sandbox::bundle::pack_dir(&dir)
        .expect("pack")
        .into();
    let _ = std::fs::remove_dir_all(&dir);
    /// argv, the test's PATH, the exit, stdout, stderr.
    type Case<'a> = (&'a [&'a str], Option<&'a str>, StageExit, &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        // No known format: run by /bin/sh, as pid 2.
        (
            &["./bin/script", "a b"],
            None,
            StageExit::Code(0),
            "from-script a b 2\n",
            "",
        ),
        // Found on the test's own PATH.
        (
            &["script", "x"],
            Some("/workspace/bin:/usr/bin:/bin"),
            StageExit::Code(0),
            "from-script x 2\n",
            "",
        ),
        (
            &["./plain"],
            None,
            StageExit::Code(126),
            "",
            "isotest: ./plain: cannot execute\n",
        ),
        (
            &["isotest-no-such-tool"],
            None,
            StageExit::Code(127),
            "",
            "isotest: isotest-no-such-tool: not found\n",
        ),
    ];
    for (argv, path, exit, out, err) in cases {
        let mut spec = sh("");
        spec.command = argv.iter().map(|a| (*a).to_owned()).collect();
        spec.workspace_bundle = Some(Arc::clone(&bundle));
        if let Some(path) = path {
            spec.env.insert("PATH".into(), (*path).into());
        }
        let o = run(spec).await;
        assert_eq!(o.command, Some(*exit), "{argv:?}");
        assert_eq!(stdout(&o), *out, "{argv:?}");
        assert_eq!(o.stderr.render("stderr"), *err, "{argv:?}");
    }
}

#[tokio::test]
async fn programs_start_with_default_signal_handling() {
    // The worker is a Rust program (SIGPIPE ignored) that may block signals on its threads;
    // none of that reaches a test, under either init.
    for staged in [false, true] {
        let mut spec = sh("");
        spec.command = vec!["grep".into(), "-E".into(), "^Sig(Ign|Blk)".into()];
        spec.command.push("/proc/self/status".into());
        if staged {
            spec.teardown = Some("true".into());
        }
        let o = run(spec).await;
        assert_eq!(
            stdout(&o),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
            "staged: {staged}"
        );
    }
}

#[tokio::test]
async fn timeout_kills_the_sandbox_and_its_daemons() {
    let tag = nonce();
    // A double-forked setsid daemon that outlives the command, then a long sleep.
    let script = format!(
        "setsid sh -c 'exec sleep 1000.{tag}' </dev/null >/dev/null 2>&1 & \
         while ! pgrep -f 1000.{tag} >/dev/null; do :; done; exec sleep 1001.{tag}"
    );
    let mut spec = sh(&script);
    spec.limits.timeout = Duration::from_secs(1);
    spec.limits.kill_grace = Duration::from_millis(200);
    let started = Instant::now();
    let o = run(spec).await;
    assert_eq!(o.termination, Termination::TimedOut);
    // The SIGTERM of the stop may let the init report the command before the SIGKILL.
    assert!(
        matches!(o.command, None | Some(StageExit::Signal(15))),
        "{:?}",
        o.command
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        host_processes_with(&format!("1000.{tag}")).is_empty(),
        "daemon survived"
    );
    assert!(
        host_processes_with(&format!("1001.{tag}")).is_empty(),
        "command survived"
    );
}

#[tokio::test]
async fn daemon_left_by_a_finished_command_dies_with_the_sandbox() {
    let tag = nonce();
    let script = format!(
        "setsid sh -c 'echo $$ > /workspace/daemon.pid; exec sleep 1000.{tag}' \
         </dev/null >/dev/null 2>&1 & \
         while [ ! -s /workspace/daemon.pid ]; do :; done; exit 0"
    );
    let mut spec = sh(&script);
    spec.collect = vec!["daemon.pid".into()];
    let o = run(spec).await;
    assert_eq!(o.command, Some(StageExit::Code(0)));
    assert!(matches!(o.collected.get("daemon.pid"), Some(Ok(pid)) if !pid.is_empty()));
    assert!(
        host_processes_with(&format!("1000.{tag}")).is_empty(),
        "daemon survived"
    );
}

#[tokio::test]
async fn cpu_time_limit_kills_a_busy_loop() {
    let mut spec = sh("while :; do :; done");
    spec.limits.cpu_time = Some(Duration::from_millis(300));
    spec.limits.kill_grace = Duration::from_millis(100);
    let o = run(spec).await;
    assert_eq!(o.termination, Termination::CpuTimeExceeded);
    assert!(o.usage.cpu >= Duration::from_millis(300));
}

#[tokio::test]
async fn memory_bomb_is_oom_killed() {
    let mut spec = sh("python3 -c \"s = 'x' * (512 << 20); print(len(s))\"");
    spec.limits.memory_bytes = 64 << 20;
    let o = run(spec).await;
    assert_eq!(o.termination, Termination::OutOfMemory);
    assert_eq!(o.command, Some(StageExit::Signal(9)));
    assert!(o.usage.max_rss_bytes <= 64 << 20);
}

#[tokio::test]
async fn cgroups_kept_for_the_next_run_start_clean() {
    // An OOM kill, a busy CPU and a high peak must not carry over to the slot's next run.
    let mut spec = sh("python3 -c \"s = 'x' * (512 << 20)\"");
    spec.limits.memory_bytes = 64 << 20;
    let bomb = run(spec).await;
    assert_eq!(bomb.termination, Termination::OutOfMemory);
    let mut spec = sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
    spec.limits.memory_bytes = 64 << 20;
    let busy = run(spec).await;
    assert_eq!(busy.termination, Termination::Exited);
    for _ in 0..4 {
        let mut spec = sh("true");
        spec.limits.memory_bytes = 64 << 20;
        let o = run(spec).await;
        assert_eq!(o.termination, Termination::Exited);
        assert!(
            o.usage.cpu < busy.usage.cpu,
            "{:?} {:?}",
            o.usage,
            busy.usage
        );
        assert!(o.usage.max_rss_bytes < 32 << 20, "{:?}", o.usage);
    }
}

#[tokio::test]
async fn fork_bomb_fails_alone_and_the_next_run_works() {
    // `exec`: the test's own process must not need a fork once the bomb has taken every pid,
    // or it could exit with "Cannot fork" before its timeout.
    let mut spec = sh("f() { f | f & }; f; exec sleep 5");
    spec.limits.pids = 64;
    spec.limits.timeout = Duration::from_secs(2);
    spec.limits.kill_grace = Duration::from_millis(100);
    let bomb = tokio::spawn(sandboxer().run(spec));
    // A sandbox running beside the bomb is unaffected.
    let beside = run(sh("echo fine")).await;
    assert_eq!(beside.command, Some(StageExit::Code(0)));
    let bomb = bomb.await.expect("join").expect("bomb sandbox runs");
    assert_eq!(bomb.termination, Termination::TimedOut);
    let errors = bomb.stderr.render("stderr");
    assert!(
        errors.contains("fork"),
        "the pids limit was not hit: {errors}"
    );
    assert!(bomb.usage.cpu > Duration::ZERO);
    let after = run(sh("echo fine")).await;
    assert_eq!(stdout(&after), "fine\n");
}

#[tokio::test]
async fn huge_output_is_capped_and_drained() {
    let o = run(sh("head -c 1000000000 /dev/zero; echo done >&2")).await;
    assert_eq!(o.command, Some(StageExit::Code(0)));
    assert_eq!(o.stdout.data.len(), 1 << 20);
    assert_eq!(o.stdout.dropped_bytes, 1_000_000_000 - (1 << 20));
    assert_eq!(o.stderr.data, b"done\n");
    assert!(o.stdout.render("stdout").ends_with(&format!(
        "[isotest: {} bytes of stdout dropped]\n",
        1_000_000_000 - (1 << 20)
    )));
}

#[tokio::test]
async fn environment_holds_only_declared_variables() {
    // SAFETY: no other thread of this test binary reads or writes this variable.
    unsafe { std::env::set_var("ISOTEST_WORKER_SECRET", "hunter2") };
    let script = "env; echo ---; tr '\\0' '\\n' < /proc/1/environ; echo ---; \
                  tr '\\0' '\\n' < /proc/1/cmdline; cat /proc/1/comm";
    // The init is `isotest-init`, non-dumpable, with stages or without: its environment is not
    // readable at all. (With stages it used to be a shell running an init script, whose
    // environment the test could read: the test's own, but its memory was writable too.)
    for staged in [false, true] {
        let mut spec = sh(script);
        spec.env = BTreeMap::from([("MY_VAR".to_owned(), "1".to_owned())]);
        if staged {
            spec.teardown = Some("true".into());
        }
        let o = run(spec).await;
        let out = stdout(&o);
        assert!(!out.contains("hunter2"), "{out}");
        let mut parts = out.split("---\n");
        let (env, init_env, init_cmdline) = (
            parts.next().expect("env"),
            parts.next().expect("separator"),
            parts.next().expect("separator"),
        );
        let allowed = [
            "MY_VAR=1",
            "PATH=",
            "HOME=/workspace",
            "LANG=C.UTF-8",
            "TMPDIR=/tmp",
        ];
        for line in env.lines() {
            // PWD is exported by the shell running the command itself.
            let ok = allowed.iter().any(|a| line.starts_with(a)) || line == "PWD=/workspace";
            assert!(ok, "unexpected variable {line:?}");
        }
        let mut init: Vec<&str> = init_env.lines().collect();
        init.sort_unstable();
        assert!(init.is_empty(), "{init:?}");
        let errors = o.stderr.render("stderr");
        assert!(errors.contains("Permission denied"), "{errors}");
        if !staged {
            // Its command line is `isotest-init` and the test's own command, like `tini CMD`;
            // nothing of the worker.
            let shown: Vec<&str> = init_cmdline.lines().filter(|l| !l.is_empty()).collect();
            assert_eq!(shown.first(), Some(&"isotest-init"), "{shown:?}");
            assert_eq!(shown.get(1..3), Some(&["sh", "-c"][..]), "{shown:?}");
            assert_eq!(shown.last(), Some(&"isotest-init"), "{shown:?}");
        }
    }
}

#[tokio::test]
async fn no_network_but_own_loopback() {
    let script = r#"python3 - <<'EOF'
import socket
try:
    socket.create_connection(("127.0.0.1", 6379), timeout=2)
    print("host redis reachable")
except OSError as e:
    print("no host redis", e.errno)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname(), timeout=2)
print("loopback up")
EOF"#;
    let o = run(sh(script)).await;
    let out = stdout(&o);
    assert!(out.contains("no host redis"), "{out}");
    assert!(out.contains("loopback up"), "{out}");
}

/// Two sandboxes alive at once each have a network namespace of their own, neither the
/// host's, and cannot reconfigure it (it may have been made ahead by the host).
#[tokio::test]
async fn each_sandbox_has_its_own_network_namespace_it_cannot_reconfigure() {
    // Both stay alive for a while so that their namespaces exist at the same time (a
    // namespace's inode number may be reused once it is gone).
    let script = "readlink /proc/self/ns/net; \
        echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null && echo changed-sysctl; \
        python3 -c 'import socket,fcntl,struct; s=socket.socket(); \
fcntl.ioctl(s, 0x8914, struct.pack(\"16sh22x\", b\"lo\", 0))' 2>/dev/null && echo lo-down; \
        sleep 1";
    let (a, b) = tokio::join!(run(sh(script)), run(sh(script)));
    let host = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let (a, b) = (stdout(&a), stdout(&b));
    let first = |out: &str| out.lines().next().unwrap_or_default().to_owned();
    assert!(first(&a).starts_with("net:["), "{a}");
    assert_ne!(
        first(&a),
        first(&b),
        "two live sandboxes shared a network namespace"
    );
    for out in [&a, &b] {
        assert_ne!(
            first(out),
            host.to_string_lossy(),
            "ran in the host's namespace"
        );
        assert!(!out.contains("changed-sysctl"), "{out}");
        assert!(!out.contains("lo-down"), "{out}");
    }
}

#[tokio::test]
async fn host_secrets_are_unreadable_and_only_workspace_and_tmp_are_writable() {
    let script = "cat /etc/shadow && echo read-shadow; ls /root && echo saw-root; \
        for p in /x /usr/x /etc/x /dev/x /proc/x /var/x; do touch $p 2>/dev/null && echo wrote $p; done; \
        touch /workspace/x /tmp/x /dev/shm/x && echo wrote-allowed; \
        mknod /workspace/null c 1 3 2>/dev/null && echo made-device; exit 0";
    let o = run(sh(script)).await;
    let out = stdout(&o);
    assert_eq!(
        out,
        "wrote-allowed\n",
        "stderr: {}",
        o.stderr.render("stderr")
    );
}

#[tokio::test]
async fn concurrent_sandbox_workspace_is_invisible() {
    let tag = nonce();
    let mut first = sh(&format!("exec sleep 30.{tag}"));
    first.files = vec![(format!("marker-{tag}"), b"secret".to_vec())];
    let first = tokio::spawn(sandboxer().run(first));
    poll_until("first sandbox", Duration::from_secs(10), || {
        !host_processes_with(&format!("30.{tag}")).is_empty()
    })
    .await;
    let o = run(sh(&format!(
        "find / -path /proc -prune -o -name 'marker-{tag}' -print 2>/dev/null; ls /proc | grep -c '^[0-9]'"
    )))
    .await;
    // Only its own init, find's shell and ls are visible: no marker and no foreign pids.
    assert!(!stdout(&o).contains("marker"), "{}", stdout(&o));
    let pids: u32 = stdout(&o).trim().parse().expect("count");
    assert!(pids <= 4, "saw {pids} processes");
    // Dropping a run kills its sandbox.
    first.abort();
    let _ = first.await;
    poll_until("cancelled sandbox gone", Duration::from_secs(10), || {
        host_processes_with(&format!("30.{tag}")).is_empty()
    })
    .await;
}

#[tokio::test]
async fn collect_refuses_links_and_special_files() {
    let script = "echo '<ok/>' > report.xml; ln -s /etc/hostname link.xml; \
        mkfifo fifo.xml; mkdir dir.xml; ln -s /etc escape; head -c 2000 /dev/zero > big";
    let mut spec = sh(script);
    spec.limits.collect_bytes = 1000;
    spec.collect = [
        "report.xml",
        "link.xml",
        "fifo.xml",
        "dir.xml",
        "escape/hostname",
        "missing.xml",
        "../etc/passwd",
        "/etc/passwd",
        "big",
    ]
    .map(String::from)
    .to_vec();
    let o = run(spec).await;
    let got = |p: &str| {
        o.collected
            .get(p)
            .cloned()
            .expect("every path has a result")
    };
    assert_eq!(got("report.xml"), Ok(b"<ok/>\n".to_vec()));
    assert_eq!(got("link.xml"), Err(CollectError::Link));
    assert_eq!(got("fifo.xml"), Err(CollectError::NotRegularFile));
    assert_eq!(got("dir.xml"), Err(CollectError::NotRegularFile));
    assert_eq!(got("escape/hostname"), Err(CollectError::Link));
    assert_eq!(got("missing.xml"), Err(CollectError::Missing));
    assert_eq!(got("../etc/passwd"), Err(CollectError::Escapes));
    assert_eq!(got("/etc/passwd"), Err(CollectError::Escapes));
    assert_eq!(got("big"), Err(CollectError::TooLarge { cap: 1000 }));
}

#[tokio::test]
async fn bundles_unpack_into_the_workspace_and_hostile_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("isotest-bundle-src-{}", nonce()));
    std::fs::create_dir_all(dir.join("tests")).expect("mkdir");
    std::fs::write(dir.join("tests/run.sh"), "echo from-bundle; cat data").expect("write");
    std::os::unix::fs::symlink("tests/run.sh", dir.join("link")).expect("symlink");
    let bundle: Arc<[u8]> = isotest_sandbox::bundle::pack_dir(&dir)
        .expect("pack")
        .into();
    let mut spec = sh("sh link; ls -l link | grep -c 'link -> tests/run.sh'");
    spec.workspace_bundle = Some(bundle);
    spec.files = vec![("data".into(), b"from-files\n".to_vec())];
    let o = run(spec).await;
    assert_eq!(stdout(&o), "from-bundle\nfrom-files\n1\n");
    let _ = std::fs::remove_dir_all(&dir);

    // A bundle whose entry climbs out with "..".
    let mut header = [0u8; 512];
    let name = b"../../../../tmp/isotest-pwned";
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[124..136].copy_from_slice(b"00000000001\0");
    header[156] = b'0';
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0u8; 1024]);
    let hostile = zstd::encode_all(tar.as_slice(), 1).expect("compress");
    let mut spec = sh("true");
    spec.workspace_bundle = Some(hostile.into());
    assert!(matches!(
        sandboxer().run(spec).await,
        Err(SandboxError::Bundle(_))
    ));
    assert!(!std::path::Path::new("/tmp/isotest-pwned").exists());

    // A file path that goes through a bundle symlink is refused too.
    let dir = std::env::temp_dir().join(format!("isotest-bundle-link-{}", nonce()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink("/tmp", dir.join("out")).expect("symlink");
    let mut spec = sh("true");
    spec.workspace_bundle = Some(
        isotest_sandbox::bundle::pack_dir(&dir)
            .expect("pack")
            .into(),
    );
    spec.files = vec![("out/isotest-pwned-2".into(), b"x".to_vec())];
    assert!(matches!(
        sandboxer().run(spec).await,
        Err(SandboxError::Bundle(_))
    ));
    assert!(!std::path::Path::new("/tmp/isotest-pwned-2").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn seccomp_denies_namespaces_mounts_and_ptrace() {
    let script = r#"python3 - <<'EOF'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def check(name, ret):
    print(name, "denied" if ret == -1 else "ALLOWED", ctypes.get_errno())
check("unshare", libc.unshare(0x10000000))
check("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
check("ptrace", libc.ptrace(0, 0, None, None))
check("setns", libc.setns(0, 0))
check("clone3", libc.syscall(435, None, 0))
EOF
unshare -U true 2>/dev/null && echo unshare-cli ALLOWED; exit 0"#;
    let o = run(sh(script)).await;
    let out = stdout(&o);
    assert!(!out.contains("ALLOWED"), "{out}");
    assert!(out.contains("unshare denied 1"), "{out}");
    assert!(out.contains("clone3 denied 38"), "{out}");
}

#[tokio::test]
async fn hostname_is_sandbox_and_host_keeps_its_own() {
    let before = nix::unistd::gethostname().expect("hostname");
    let o = run(sh("hostname; hostname evil 2>/dev/null; hostname")).await;
    assert_eq!(stdout(&o), "sandbox\nsandbox\n");
    assert_eq!(nix::unistd::gethostname().expect("hostname"), before);
}

#[tokio::test]
async fn kill_all_inside_kills_only_the_sandbox() {
    let tag = nonce();
    let neighbour = tokio::spawn(sandboxer().run(sh(&format!("sleep 2.{tag}; echo alive"))));
    poll_until("neighbour", Duration::from_secs(10), || {
        !host_processes_with(&format!("2.{tag}")).is_empty()
    })
    .await;
    let o = run(sh("sleep 100 & kill -9 -1; echo still-here")).await;
    assert_eq!(o.command, Some(StageExit::Code(0)));
    assert_eq!(stdout(&o), "still-here\n");
    let neighbour = neighbour.await.expect("join").expect("neighbour runs");
    assert_eq!(stdout(&neighbour), "alive\n");
}

#[tokio::test]
async fn only_stdio_fds_are_open() {
    let o = run(sh("ls /proc/self/fd")).await;
    assert_eq!(stdout(&o), "0\n1\n2\n3\n");
}

#[tokio::test]
async fn unknown_environment_is_an_error() {
    let mut spec = sh("true");
    spec.environment = Some("nope".into());
    assert!(matches!(
        sandboxer().run(spec).await,
        Err(SandboxError::UnknownEnvironment(name)) if name == "nope"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_runs_each_get_their_own_sandbox() {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut spec = sh("cat id; echo $$; touch /workspace/mine");
        spec.files = vec![("id".into(), format!("{i}\n").into_bytes())];
        spec.collect = vec!["mine".into()];
        set.spawn(async move { (i, sandboxer().run(spec).await) });
    }
    while let Some(joined) = set.join_next().await {
        let (i, outcome) = joined.expect("join");
        let o = outcome.expect("sandbox runs");
        // Each sees its own file and is the first process after its init.
        assert_eq!(stdout(&o), format!("{i}\n2\n"));
        assert_eq!(o.collected.get("mine"), Some(&Ok(Vec::new())));
    }
}

#[tokio::test]
async fn the_sandbox_sees_its_own_cgroup_as_the_root() {
    // One line per hierarchy (v1) or the one v2 line, each the root of the cgroup namespace.
    let o = run(sh("cat /proc/self/cgroup")).await;
    let text = stdout(&o);
    assert!(
        !text.is_empty() && text.lines().all(|l| l.ends_with(":/")),
        "{text}"
    );
}

/// No process of a sandbox holds an image of the worker: the init of a single command is
/// `isotest-init` from its memfd, and nothing in its address space comes from this binary.
#[tokio::test]
async fn the_init_holds_nothing_of_the_worker() {
    let marker = format!("init-image-{}", nonce());
    let running = tokio::spawn(async move {
        sandboxer()
            .run(sh(&format!("sleep 30 # {marker}")))
            .await
            .expect("sandbox runs")
    });
    let needle = "init-image-";
    let mut init = None;
    poll_until("the sandbox's init", Duration::from_secs(10), || {
        init = host_processes_with(needle).into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "isotest-init")
        });
        init.is_some()
    })
    .await;
    let pid = init.expect("found");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("init's exe");
    assert!(
        exe.to_string_lossy().contains("memfd:isotest-init"),
        "{exe:?}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("init's maps");
    let worker = std::env::current_exe().expect("own exe");
    assert!(!maps.contains(&*worker.to_string_lossy()), "{maps}");
    // A handful of mappings (text, data, stack, vdso), not the worker's hundreds.
    assert!(maps.lines().count() < 16, "{maps}");
    running.abort();
    let _ = running.await;
}

#[tokio::test]
async fn inodes_are_capped_in_the_workspace_tmp_and_shm() {
    for dir in ["/workspace", "/tmp", "/dev/shm"] {
        let mut spec = sh(&format!(
            "cd {dir} && i=0; while [ $i -lt 300 ] && printf x > f$i 2>/dev/null; do i=$((i+1)); done; echo $i"
        ));
        spec.limits.workspace_inodes = 100;
        let o = run(spec).await;
        let made: u32 = stdout(&o)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{dir}: {o:?}"));
        // The root directory takes one inode of the hundred.
        assert!((90..100).contains(&made), "{dir}: made {made} files");
    }
}

/// What test programs do at start and at work passes the allow list: threads, epoll, pipes,
/// sleeping, getrandom, memfd, rseq (glibc registers it), clone3 (answered ENOSYS, so libc
/// falls back to clone), subprocesses, every allowed socket family; in Python, Node.js, a JVM
/// and a cargo-built libtest binary (this one).
#[tokio::test]
async fn real_programs_run_under_the_allow_list() {
    let python = r#"python3 - <<'EOF'
import ctypes, os, selectors, socket, subprocess, threading, time
done = []
threads = [threading.Thread(target=done.append, args=(i,)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
assert sorted(done) == list(range(8)), done
r, w = os.pipe()
sel = selectors.EpollSelector(); sel.register(r, selectors.EVENT_READ)
os.write(w, b"ping"); assert sel.select(5) and os.read(r, 4) == b"ping"
before = time.monotonic(); time.sleep(0.01); assert time.monotonic() - before >= 0.01
assert len(os.getrandom(16)) == 16
m = os.memfd_create("isotest"); os.write(m, b"x"); assert os.pread(m, 1, 0) == b"x"
libc = ctypes.CDLL(None)
assert ctypes.c_uint.in_dll(libc, "__rseq_size").value > 0, "rseq not registered"
assert subprocess.run(["sh", "-c", "exit 3"]).returncode == 3
for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
    socket.socket(family, socket.SOCK_STREAM).close()
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE).close()
a, b = socket.socketpair(); a.send(b"y"); assert b.recv(1) == b"y"
print("python ok")
EOF"#;
    let node = r#"node -e '
const { Worker } = require("worker_threads");
const { execFileSync } = require("child_process");
const fs = require("fs");
fs.writeFileSync("/tmp/n", "z"); if (fs.readFileSync("/tmp/n", "utf8") !== "z") throw 1;
if (execFileSync("sh", ["-c", "echo sub"]).toString() !== "sub\n") throw 2;
new Worker("require(\"worker_threads\").parentPort.postMessage(6*7)", { eval: true })
  .on("message", (m) => { if (m !== 42) throw 3; setTimeout(() => console.log("node ok"), 10); });
'"#;
    let java = "java -Xmx64m -XX:+UseSerialGC -version 2>&1 | grep -q 'version' && echo java ok";
    let test_binary = std::env::current_exe().expect("own path");
    let libtest = format!(
        "{} --list --test-threads 2 real_programs | grep -q ': test' && echo libtest ok",
        test_binary.display()
    );
    for (script, want) in [
        (python, "python ok\n"),
        (node, "node ok\n"),
        (java, "java ok\n"),
        (libtest.as_str(), "libtest ok\n"),
    ] {
        let o = run(sh(script)).await;
        assert_eq!(
            stdout(&o),
            want,
            "{script}\nstderr: {}",
            o.stderr.render("stderr")
        );
    }
}

/// Socket families other than local, IP and netlink, and calls that reach beyond the sandbox,
/// are refused (AF_ALG: CVE-2026-31431; AF_VSOCK: not confined by a network namespace).
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn seccomp_refuses_other_socket_families_and_calls_beyond_the_sandbox() {
    let script = r#"python3 - <<'EOF'
import ctypes, errno, socket
for name in ("AF_ALG", "AF_VSOCK", "AF_PACKET"):
    try:
        socket.socket(getattr(socket, name), socket.SOCK_SEQPACKET if name == "AF_ALG" else socket.SOCK_STREAM)
        print(name, "ALLOWED")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in [("name_to_handle_at", 303), ("kcmp", 312), ("syslog", 103),
                 ("statmount", 457), ("listmount", 458), ("open_tree_attr", 467),
                 ("unknown", 470)]:
    ret = libc.syscall(nr, 0, 0, 0, 0, 0)
    print(name, "ALLOWED" if ret != -1 else errno.errorcode[ctypes.get_errno()])
print("personality", libc.personality(0x0040000), errno.errorcode.get(ctypes.get_errno()))
print("query", libc.personality(0xffffffff) >= 0)
EOF"#;
    let o = run(sh(script)).await;
    assert_eq!(
        stdout(&o),
        "AF_ALG EAFNOSUPPORT\nAF_VSOCK EAFNOSUPPORT\nAF_PACKET EAFNOSUPPORT\n\
         name_to_handle_at EPERM\nkcmp EPERM\nsyslog EPERM\nstatmount EPERM\n\
         listmount EPERM\nopen_tree_attr EPERM\nunknown ENOSYS\n\
         personality -1 EPERM\nquery True\n",
        "stderr: {}",
        o.stderr.render("stderr")
    );
}

/// The rlimits nsjail sets where they make sense here (see docs/isolation.md for those left
/// alone, such as the address space, which Go, the JVM and V8 reserve by gigabytes).
#[tokio::test]
async fn rlimits_are_set() {
    let mut spec = sh("cat /proc/self/limits");
    spec.limits.pids = 77;
    let o = run(spec).await;
    let limits = stdout(&o);
    let row = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    let own_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("own limit")
        .1;
    let nofile_hard = own_hard.min(65536).to_string();
    assert_eq!(row("Max open files"), ["1024", nofile_hard.as_str()]);
    assert_eq!(row("Max processes"), ["77", "77"]);
    assert_eq!(row("Max core file size"), ["0", "0"]);
    assert_eq!(row("Max file size"), ["536870912", "536870912"]);
    assert_eq!(row("Max realtime priority"), ["0", "0"]);
    assert_eq!(row("Max nice priority"), ["0", "0"]);
    assert_eq!(row("Max address space"), ["unlimited", "unlimited"]);
}

/// The host's proc files that a fresh proc still shares with the host, and that tell about it
/// (Docker's masked paths where they exist), read as empty.
#[tokio::test]
async fn proc_files_about_the_host_are_masked() {
    let files = [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "timer_stats",
        "interrupts",
        "sysrq-trigger",
    ];
    let dirs = ["acpi", "asound", "scsi"];
    let present = |name: &&str| std::path::Path::new("/proc").join(name).exists();
    let files: Vec<&str> = files.into_iter().filter(present).collect();
    let dirs: Vec<&str> = dirs.into_iter().filter(present).collect();
    assert!(!files.is_empty(), "nothing to mask on this host");
    let mut script = String::new();
    for f in &files {
        script.push_str(&format!("printf '{f} '; wc -c < /proc/{f} 2>&1; "));
    }
    for d in &dirs {
        script.push_str(&format!("printf '{d} '; ls -A /proc/{d} | wc -l; "));
    }
    script.push_str("[ \"$(head -c1 /proc/cpuinfo)\" ] && echo cpuinfo readable");
    let o = run(sh(&script)).await;
    let mut want: String = files.iter().map(|f| format!("{f} 0\n")).collect();
    want.extend(dirs.iter().map(|d| format!("{d} 0\n")));
    want.push_str("cpuinfo readable\n");
    assert_eq!(stdout(&o), want, "stderr: {}", o.stderr.render("stderr"));
}

/// With stages, the init reports each stage's exit on a descriptor no stage holds; a test must
/// not be able to write a report of its own, neither through `/proc/1/fd/3` nor by writing
/// into the init's memory through `/proc/1/mem` (nor read its environment).
#[tokio::test]
async fn stage_reports_cannot_be_forged() {
    let forge = "for fd in 3 4; do printf 'command 0\\nteardown 0\\n' > /proc/1/fd/$fd \
                 && echo forged $fd; done; cat /proc/1/environ >/dev/null 2>&1 && echo read-env; \
                 python3 -c \"open('/proc/1/mem', 'r+b')\" 2>/dev/null && echo mem-writable; \
                 exit 1";
    let mut spec = sh(forge);
    spec.setup = Some("true".into());
    spec.teardown = Some("exit 2".into());
    let o = run(spec).await;
    assert_eq!(o.setup, Some(StageExit::Code(0)));
    assert_eq!(o.command, Some(StageExit::Code(1)));
    assert_eq!(o.teardown, Some(StageExit::Code(2)));
    assert_eq!(stdout(&o), "", "stderr: {}", o.stderr.render("stderr"));
    // Nor from the setup, nor from a process left behind by it.
    let mut spec = sh("exit 7");
    spec.setup = Some(format!("({forge}) & wait"));
    let o = run(spec).await;
    assert_eq!(o.setup, Some(StageExit::Code(0)));
    assert_eq!(o.command, Some(StageExit::Code(7)));
}

/// A stop (timeout, CPU limit) sends SIGTERM to every process through the init, which then
/// starts no further stage; the sandbox ends as soon as they are gone, before the SIGKILL.
#[tokio::test]
async fn a_stop_reaches_every_process_and_starts_no_further_stage() {
    let mut spec = sh("trap 'echo term' TERM; sleep 1000 & wait; wait; echo after");
    spec.teardown = Some("echo teardown-ran".into());
    spec.limits.timeout = Duration::from_secs(1);
    spec.limits.kill_grace = Duration::from_secs(20);
    let started = Instant::now();
    let o = run(spec).await;
    assert_eq!(o.termination, Termination::TimedOut);
    assert_eq!(stdout(&o), "term\nafter\n");
    assert_eq!((o.command, o.teardown), (Some(StageExit::Code(0)), None));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the SIGKILL"
    );
}

/// A workspace bundle of one file `name` of `size` zero bytes, as tar in a zstd frame of
/// run-length blocks (a few bytes per 128 KiB).
fn bundle_of_zeros(name: &str, size: u64) -> Arc<[u8]> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).expect("path");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_cksum();
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    let mut block = |kind: u32, len: u64, last: bool, body: &[u8]| {
        let head = u32::from(last) | (kind << 1) | ((len as u32) << 3);
        frame.extend_from_slice(&head.to_le_bytes()[..3]);
        frame.extend_from_slice(body);
    };
    block(0, 512, false, header.as_bytes());
    // The file, its padding to 512 bytes and the two zero blocks that end the archive.
    let mut left = size.div_ceil(512) * 512 + 1024;
    while left > 0 {
        let len = left.min(128 << 10);
        left -= len;
        block(1, len, left == 0, &[0]);
    }
    frame.into()
}

/// The workspace is charged to the test's memory cgroup, not the worker's: what a bundle unpacks
/// to counts in the test's peak, and one larger than the test's memory limit is refused.
#[tokio::test]
async fn the_workspace_counts_against_the_tests_memory() {
    let mut spec = sh("wc -c < big");
    spec.workspace_bundle = Some(bundle_of_zeros("big", 48 << 20));
    spec.limits.memory_bytes = 128 << 20;
    let o = run(spec).await;
    assert_eq!(stdout(&o), format!("{}\n", 48 << 20));
    assert!(o.usage.max_rss_bytes >= 48 << 20, "{:?}", o.usage);

    let mut spec = sh("echo ran");
    spec.workspace_bundle = Some(bundle_of_zeros("big", 200 << 20));
    spec.limits.memory_bytes = 64 << 20;
    match sandboxer().run(spec).await {
        Err(SandboxError::Bundle(e)) => assert!(e.to_string().contains("memory"), "{e}"),
        other => panic!("a workspace over the memory limit: {other:?}"),
    }
    // The slot's cgroup serves the next run as usual.
    let mut spec = sh("echo fine");
    spec.limits.memory_bytes = 64 << 20;
    assert_eq!(stdout(&run(spec).await), "fine\n");
}

/// The sandboxes' uids are configurable, and a range that cannot be used (not mapped in this
/// user namespace, as in a pod with `hostUsers: false`, or holding the worker's own uid) is
/// refused at start with one line saying why.
#[tokio::test]
async fn the_uid_range_is_configurable_and_checked() {
    let config = |tag: &str, base: u32, count: u32| SandboxConfig {
        state_dir: format!("/run/isotest-sandbox-test-uids-{tag}").into(),
        uid_base: base,
        uid_count: count,
        ..SandboxConfig::default()
    };
    let sandboxer = Sandboxer::new(config("ok", 300_000, 16)).expect("a mapped range");
    let o = sandboxer
        .run(sh("cat /proc/self/uid_map"))
        .await
        .expect("runs");
    let map: Vec<String> = stdout(&o).split_whitespace().map(str::to_owned).collect();
    assert_eq!(map.len(), 3, "{map:?}");
    let outside: u32 = map[1].parse().expect("a uid");
    assert!((300_000..300_016).contains(&outside), "{map:?}");
    // Kept, not dropped: every sandboxer of a process names its parent cgroup after the
    // process, and dropping one removes that parent under the other tests' sandboxer.
    std::mem::forget(sandboxer);
    for (tag, base, count, why) in [
        ("own", 0, 65_536, "own id 0"),
        ("empty", 300_000, 0, "empty"),
        ("past", u32::MAX - 10, 65_536, "passes the largest"),
    ] {
        let err = Sandboxer::new(config(tag, base, count)).expect_err(tag);
        assert!(
            matches!(err, SandboxError::IdRange { .. }),
            "{tag}: {err:?}"
        );
        let line = err.to_string();
        assert!(line.contains(why) && !line.contains('\n'), "{tag}: {line}");
    }
}

/// A command the kernel will not start for a reason of the test's own (an environment value
/// over the 128 KiB `execve` takes) is an error of its own kind, named, not an infrastructure
/// failure with an errno number.
#[tokio::test]
async fn an_exec_the_test_made_impossible_is_its_own_error() {
    let mut spec = sh("true");
    spec.env.insert("HUGE".into(), "x".repeat(200 << 10));
    let err = sandboxer().run(spec).await.expect_err("no exec");
    assert!(
        matches!(err, SandboxError::ExecRefused { errno } if errno == libc::E2BIG),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "exec the test's command: E2BIG: argument list too long"
    );
}
