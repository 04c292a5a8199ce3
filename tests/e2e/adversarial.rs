//! Hostile tests submitted through the whole path (producer → worker → aggregator): each gets
//! a clear verdict, the worker survives it, an ordinary test after it passes, none of its
//! processes is left, and nothing on the host changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isotest_protocol::report::{Report, TestReport};
use isotest_protocol::result::Status;
use sha2::{Digest, Sha256};

use crate::support::{TestEnv, poll};

/// Given to the worker process only; no test may see it.
const SECRET: &str = "ISOTEST_CANARY_SECRET";

/// One hostile test: its TOML body and the verdict it must get.
struct Case {
    name: &'static str,
    body: String,
    status: Status,
}

fn case(name: &'static str, body: impl Into<String>, status: Status) -> Case {
    Case {
        name,
        body: body.into(),
        status,
    }
}

/// A suite running every case followed by an ordinary `true` test.
fn suite(name: &str, cases: &[Case]) -> String {
    let mut toml = format!("name = \"{name}\"\n\n[defaults]\ntimeout = \"20s\"\n");
    for c in cases {
        let _ = write!(
            toml,
            "\n[[tests]]\nname = \"{}\"\n{}\n\n[[tests]]\nname = \"after-{}\"\ncommand = [\"true\"]\n",
            c.name, c.body, c.name
        );
    }
    toml
}

/// Size, mtime and content hash of the host files a hostile test might try to change.
fn host_state(canary: &Path) -> BTreeMap<PathBuf, (u64, i64, String)> {
    let mut files = vec![
        PathBuf::from("/etc/hostname"),
        PathBuf::from("/etc/passwd"),
        PathBuf::from("/etc/shadow"),
        PathBuf::from("/usr/bin/python3"),
        canary.to_owned(),
    ];
    files.retain(|p| p.exists());
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).expect("stat host file");
            let hash = hex::encode(Sha256::digest(
                std::fs::read(&path).expect("read host file"),
            ));
            (path, (meta.len(), meta.mtime(), hash))
        })
        .collect()
}

/// Processes left behind: descendants of the worker (every sandbox is one) and any process
/// whose command line has `marker` (one that escaped to another parent).
fn leftovers(worker: u32, marker: &str) -> Vec<String> {
    let mut parents = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
            .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let uid = std::fs::metadata(entry.path()).map_or(0, |m| m.uid());
        parents.insert(pid, ppid);
        lines.insert(
            pid,
            format!(
                "{pid} (uid {uid}): {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ),
        );
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match parents.get(&pid) {
                Some(&parent) if parent == worker => return true,
                Some(&parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    lines
        .into_iter()
        .filter(|(pid, line)| descends(*pid) || line.contains(marker))
        .map(|(_, line)| line)
        .collect()
}

/// The worker is a live process, not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn test<'a>(report: &'a Report, name: &str) -> &'a TestReport {
    report
        .tests
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} is missing from the report"))
}

/// Everything that must hold after a suite of hostile cases.
async fn check_suite(
    env: &TestEnv,
    label: &str,
    cases: &[Case],
    marker: &str,
    before: &BTreeMap<PathBuf, (u64, i64, String)>,
    canary: &Path,
) -> anyhow::Result<Report> {
    let manifest = env.write(&format!("{label}.toml"), &suite(label, cases));
    let run = env.run_suite(&manifest, label, true, &[]);
    let report = run.report().clone();
    let secret = secret_value(env);
    let json = std::fs::read_to_string(env.dir.join(format!("{label}.json")))?;
    assert!(!json.contains(&secret), "the worker's secret leaked");
    for c in cases {
        let t = test(&report, c.name);
        assert_eq!(
            t.status, c.status,
            "{}: {:?}\nstdout: {}\nstderr: {}",
            c.name, t.reason, t.stdout, t.stderr
        );
        if c.status != Status::Passed {
            assert!(
                t.reason.as_deref().is_some_and(|r| !r.is_empty()),
                "{} has no reason",
                c.name
            );
        }
        let after = test(&report, &format!("after-{}", c.name));
        assert_eq!(after.status, Status::Passed, "after-{}: {after:?}", c.name);
    }
    let worker = env.pid("worker-0").expect("worker started");
    assert!(
        alive(worker),
        "the worker died\n{}",
        env.log("worker-0").join("\n")
    );
    poll(
        Duration::from_secs(10),
        "every sandboxed process to be gone",
        || async { Ok(leftovers(worker, marker).is_empty()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", leftovers(worker, marker)))?;
    assert_eq!(&host_state(canary), before, "a host file changed");
    Ok(report)
}

fn secret_value(env: &TestEnv) -> String {
    env.service_env
        .iter()
        .find(|(k, _)| k == SECRET)
        .map(|(_, v)| v.clone())
        .expect("secret set")
}

/// Digits unique to this test, usable in a `sleep` argument (`sleep 30.<marker>`) so that its
/// processes can be found on the host by command line.
fn marker(env: &TestEnv) -> String {
    let hex = env.ns.trim_start_matches("t-");
    let value = u64::from_str_radix(&hex[..hex.len().min(12)], 16).unwrap_or(7);
    format!("{value:015}")
}

async fn start() -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::new().await;
    let secret = format!("s3cr3t-{}", env.ns);
    env.service_env = [
        (SECRET, secret.as_str()),
        ("ISOTEST_MEMORY_MIB", "128"),
        ("ISOTEST_PIDS", "64"),
        ("ISOTEST_WORKSPACE_MIB", "64"),
        ("ISOTEST_OUTPUT_BYTES", "65536"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.start(1, 2).await?;
    Ok(env)
}

/// Resource abuse: each is stopped by its limit with the verdict that names it.
#[tokio::test(flavor = "multi_thread")]
async fn resource_abuse_is_contained() -> anyhow::Result<()> {
    let mut env = start().await?;
    let marker = marker(&env);
    let canary = env.write("canary", "untouched\n");
    let before = host_state(&canary);
    let hostname = nix::unistd::gethostname()?;
    let cases = [
        case(
            "fork-bomb",
            // The bomb starts in a subshell and the test's own shell then `exec`s: the test's
            // process never needs a fork once the bomb has taken every pid (a bomb started
            // by the test's shell itself could fail its own next fork with "Cannot fork" and
            // exit 2 before its timeout, a race seen on a loaded machine).
            "command = [\"sh\", \"-c\", \"(f() { f | f & }; f); exec sleep 30\"]\ntimeout = \"3s\"",
            Status::Timeout,
        ),
        case(
            "memory-bomb",
            "command = [\"python3\", \"-c\", \"s = 'x' * (512 << 20)\"]",
            Status::Oom,
        ),
        case(
            "busy-loop",
            "command = [\"sh\", \"-c\", \"while :; do :; done\"]\ntimeout = \"1s\"",
            Status::Timeout,
        ),
        case(
            "sleep-past-timeout",
            format!("command = [\"sleep\", \"30.{marker}\"]\ntimeout = \"1s\""),
            Status::Timeout,
        ),
        // Double fork and a new session: the daemon is reparented and outlives the command,
        // but not the sandbox.
        case(
            "daemon",
            format!(
                "command = [\"sh\", \"-c\", \"(setsid sleep 1000.{marker} </dev/null >/dev/null 2>&1 &); \
                 while ! pgrep -f 1000.{marker} >/dev/null; do :; done; echo daemon started\"]"
            ),
            Status::Passed,
        ),
        case(
            "gigabyte-of-stdout",
            "command = [\"head\", \"-c\", \"1000000000\", \"/dev/zero\"]",
            Status::Passed,
        ),
        case(
            "fill-the-workspace",
            "command = [\"sh\", \"-c\", \"cat /dev/zero > big\"]",
            Status::Failed,
        ),
        // A million empty files: tmpfs inodes and dentries are charged to the sandbox's memory
        // cgroup, so the 128 MiB limit stops it with an OOM kill long before the million.
        case(
            "many-empty-files",
            "command = [\"python3\", \"-c\", \"\"\"\nimport os\nfor i in range(1000000):\n    os.close(os.open(f'f{i}', os.O_CREAT | os.O_WRONLY))\nprint('created', len(os.listdir('.')))\n\"\"\"]\ntimeout = \"30s\"",
            Status::Oom,
        ),
    ];
    let report = check_suite(&env, "abuse", &cases, &marker, &before, &canary).await?;
    assert_eq!(nix::unistd::gethostname()?, hostname);

    let bomb = test(&report, "fork-bomb");
    assert!(
        bomb.stderr.contains("fork"),
        "pids limit not hit: {}",
        bomb.stderr
    );
    let oom = test(&report, "memory-bomb");
    assert!(
        oom.reason.as_deref().is_some_and(|r| r.contains("128 MiB")),
        "{oom:?}"
    );
    for name in ["busy-loop", "sleep-past-timeout"] {
        let t = test(&report, name);
        assert_eq!(t.reason.as_deref(), Some("timed out after 1s"), "{name}");
    }
    let flood = test(&report, "gigabyte-of-stdout");
    let dropped = 1_000_000_000 - 65_536;
    assert!(
        flood
            .stdout
            .contains(&format!("[isotest: {dropped} bytes of stdout dropped]")),
        "no drop marker in {} bytes of stdout",
        flood.stdout.len()
    );
    let full = test(&report, "fill-the-workspace");
    assert!(
        full.stderr.contains("No space left on device"),
        "{}",
        full.stderr
    );
    let files = test(&report, "many-empty-files");
    assert!(!files.stdout.contains("created"), "{files:?}");

    env.stop();
    env.cleanup().await
}

/// Escapes: secrets, the host network, host files, other tests, the kernel's interfaces.
#[tokio::test(flavor = "multi_thread")]
async fn escapes_fail_and_leave_the_host_alone() -> anyhow::Result<()> {
    let mut env = start().await?;
    let marker = marker(&env);
    let canary = env.write("canary", "untouched\n");
    let before = host_state(&canary);
    let hostname = nix::unistd::gethostname()?;
    let worker = env.pid("worker-0").expect("worker started");
    let canary_path = canary.display();
    let cases = [
        // Two tests at once (concurrency 2, first in the suite): one leaves a file in its
        // workspace for 4 seconds, the other looks for it for 4 seconds wherever it could be.
        case(
            "holds-a-file",
            format!(
                "command = [\"sh\", \"-c\", \"echo $(date +%s%N) > secret-{marker}; cat secret-{marker}; \
                 sleep 4; date +%s%N\"]\ntimeout = \"60s\""
            ),
            Status::Passed,
        ),
        case(
            "looks-for-it",
            format!(
                "command = [\"sh\", \"-c\", \"date +%s%N; end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do \
                 ls -d /proc/[0-9]*/root/workspace/secret-* /proc/[0-9]*/cwd/secret-* 2>/dev/null; \
                 find /tmp /dev/shm /var/tmp /workspace /run /mnt -name 'secret-{marker}' 2>/dev/null; \
                 done; date +%s%N\"]\ntimeout = \"60s\""
            ),
            Status::Passed,
        ),
        case(
            "reads-secrets",
            format!(
                "command = [\"sh\", \"-c\", \"env; cat /proc/1/environ; cat /proc/{worker}/environ; \
                 cat /proc/*/environ; ls /proc; exit 0\"]"
            ),
            Status::Passed,
        ),
        case(
            "host-network",
            "command = [\"python3\", \"-c\", \"\"\"\nimport socket, sys\nopen_ports = []\nfor port in (6379, 5672):\n    try:\n        socket.create_connection(('127.0.0.1', port), timeout=2).close()\n        open_ports.append(port)\n    except OSError as e:\n        print(port, 'refused:', e)\nsys.exit(1 if open_ports else 0)\n\"\"\"]",
            Status::Passed,
        ),
        case(
            "outside-the-workspace",
            format!(
                "command = [\"sh\", \"-c\", \"\"\"\nfail=0\nls /root && fail=1\ncat /etc/shadow && fail=1\n\
                 touch /etc/isotest-{marker} && fail=1\nls /run/isotest-sandbox && fail=1\n\
                 cat {canary_path} && fail=1\necho pwned > {canary_path} && fail=1\n\
                 cp /bin/true /usr/bin/python3 && fail=1\necho x >> /usr/bin/python3 && fail=1\n\
                 exit $fail\n\"\"\"]"
            ),
            Status::Passed,
        ),
        case(
            "junit-symlink",
            "framework = \"pytest\"\ncommand = [\"sh\", \"-c\", \"mkdir -p .isotest && ln -sf /etc/shadow .isotest/junit.xml\"]",
            Status::Error,
        ),
        case(
            "junit-fifo",
            "framework = \"pytest\"\ncommand = [\"sh\", \"-c\", \"mkdir -p .isotest && mkfifo .isotest/junit.xml\"]",
            Status::Error,
        ),
        case(
            "kill-everything",
            format!(
                "command = [\"sh\", \"-c\", \"sleep 100.{marker} & kill -9 -1; echo still-here\"]"
            ),
            Status::Passed,
        ),
        case(
            "ptrace",
            "command = [\"python3\", \"-c\", \"\"\"\nimport ctypes, os, subprocess, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nchild = subprocess.Popen(['sleep', '10'])\nret = libc.ptrace(16, child.pid, None, None)\nprint('attach', ret, ctypes.get_errno())\nchild.kill()\nsys.exit(0 if ret == -1 else 1)\n\"\"\"]",
            Status::Passed,
        ),
        case(
            "mount-and-unshare",
            "command = [\"sh\", \"-c\", \"mount -t tmpfs none /tmp && exit 1; unshare -U true && exit 1; unshare -rm true && exit 1; exit 0\"]",
            Status::Passed,
        ),
        case(
            "hostname",
            "command = [\"sh\", \"-c\", \"hostname evil; test $(hostname) = sandbox\"]",
            Status::Passed,
        ),
        case(
            "setuid",
            "command = [\"sh\", \"-c\", \"test -u /usr/bin/su || exit 2; grep CapEff /proc/self/status; \
             su root -s /bin/sh -c 'cat /etc/shadow' && exit 1; /usr/bin/mount -t tmpfs none /mnt && exit 1; exit 0\"]",
            Status::Passed,
        ),
        case(
            "open-fds",
            "command = [\"ls\", \"/proc/self/fd\"]",
            Status::Passed,
        ),
    ];
    let report = check_suite(&env, "escapes", &cases, &marker, &before, &canary).await?;
    assert_eq!(nix::unistd::gethostname()?, hostname);
    assert!(!Path::new(&format!("/etc/isotest-{marker}")).exists());

    // The two ran at the same time, and the second never saw the first's file.
    let holder = test(&report, "holds-a-file");
    let seeker = test(&report, "looks-for-it");
    let times = |t: &TestReport| -> Vec<u128> {
        t.stdout
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let (held, sought) = (times(holder), times(seeker));
    assert!(held.len() == 2 && sought.len() == 2, "{held:?} {sought:?}");
    assert!(
        sought[0] < held[1] && held[0] < sought[1],
        "the two tests did not overlap: {held:?} {sought:?}"
    );
    assert!(!seeker.stdout.contains("secret-"), "{}", seeker.stdout);

    let secrets = test(&report, "reads-secrets");
    assert!(secrets.stdout.contains("PATH="), "{}", secrets.stdout);
    assert!(
        secrets
            .stderr
            .contains(&format!("/proc/{worker}/environ: No such file")),
        "{}",
        secrets.stderr
    );
    let outside = test(&report, "outside-the-workspace");
    assert!(!outside.stdout.contains("untouched"), "{}", outside.stdout);
    let shadow = std::fs::read_to_string("/etc/shadow")?;
    let shadow_line = shadow.lines().next().unwrap_or("root:");
    for name in [
        "junit-symlink",
        "junit-fifo",
        "setuid",
        "outside-the-workspace",
    ] {
        let t = test(&report, name);
        assert!(
            !t.stdout.contains(shadow_line) && !t.stderr.contains(shadow_line),
            "{name} read /etc/shadow"
        );
    }
    let link = test(&report, "junit-symlink");
    assert!(
        link.reason
            .as_deref()
            .is_some_and(|r| r.contains("symbolic link")),
        "{link:?}"
    );
    let fifo = test(&report, "junit-fifo");
    assert!(
        fifo.reason
            .as_deref()
            .is_some_and(|r| r.contains("not a regular file")),
        "{fifo:?}"
    );
    assert_eq!(test(&report, "kill-everything").stdout, "still-here\n");
    let setuid = test(&report, "setuid");
    assert!(
        setuid.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        setuid.stdout
    );
    assert_eq!(test(&report, "open-fds").stdout, "0\n1\n2\n3\n");

    env.stop();
    env.cleanup().await
}
