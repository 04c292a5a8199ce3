//! Zygotes end to end: a fork server in a sandbox, each test forked from it into a fresh
//! sandbox of its own (they need root, user namespaces and cgroups, as on the CI machine).
//! The runner here is a few lines of Python, so that what is checked is the isolation, not
//! a framework.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use isotest_sandbox::{
    FORK_SERVER, ForkOutcome, Limits, RunSpec, SandboxConfig, Sandboxer, StageExit, Termination,
    Zygote, ZygoteError, ZygoteSpec,
};
use serde_json::json;

fn sandboxer() -> &'static Sandboxer {
    static SANDBOXER: OnceLock<Sandboxer> = OnceLock::new();
    SANDBOXER.get_or_init(|| {
        let config = SandboxConfig {
            state_dir: "/run/isotest-sandbox-test-zygote".into(),
            ..SandboxConfig::default()
        };
        Sandboxer::new(config).expect("this host supports full isolation")
    })
}

/// A runner whose `prepare` sets state the tests then try to change, and whose `run_one`
/// executes the request's `code` and writes its `result` to the result pipe.
const RUNNER: &str = r#"
import os, sys, threading
STATE = {"imported": 1}
def prepare():
    if os.environ.get("FAIL_PREPARE"):
        raise RuntimeError("cannot collect tests/test_x.py")
    with open("/workspace/seen-by-zygote.txt", "w") as f:
        f.write("zygote")
    return {"collected": 3}
def run_one(request, result):
    scope = {"STATE": STATE, "os": os, "sys": sys, "threading": threading, "out": []}
    exec(request["code"], scope)
    os.write(result, "\n".join(scope["out"]).encode())
    return int(scope.get("code", 0))
ForkServer().serve(prepare, run_one)
"#;

async fn zygote(env: &[(&str, &str)]) -> Result<Zygote, ZygoteError> {
    let program = format!("{FORK_SERVER}\n{RUNNER}");
    sandboxer()
        .start_zygote(ZygoteSpec {
            run: RunSpec {
                command: vec!["/usr/bin/python3".into(), "-c".into(), program],
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                files: vec![("data.txt".into(), b"original".to_vec())],
                ..RunSpec::default()
            },
            ready_timeout: Duration::from_secs(60),
            spares: 2,
        })
        .await
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        ..Limits::default()
    }
}

async fn fork(zygote: &Zygote, code: &str) -> ForkOutcome {
    zygote
        .fork(json!({ "code": code }), BTreeMap::new(), &limits())
        .await
        .expect("forks")
}

fn report(outcome: &ForkOutcome) -> String {
    String::from_utf8_lossy(&outcome.report).into_owned()
}

/// The canary: each test changes what a test could change (module state, the environment,
/// the workspace, /tmp, its pid namespace with a thread and a daemon); the next sees none of
/// it, and the zygote keeps serving.
#[tokio::test]
async fn no_forked_test_sees_what_another_changed() {
    let zygote = zygote(&[]).await.expect("ready");
    assert_eq!(zygote.facts()["collected"], 3);
    let mutate = r#"
STATE["imported"] += 100
os.environ["CANARY"] = "set"
open("/workspace/data.txt", "w").write("changed")
open("/workspace/new.txt", "w").write("new")
open("/tmp/canary", "w").write("x")
threading.Thread(target=lambda: __import__("time").sleep(60), daemon=True).start()
if os.fork() == 0:
    os.setsid(); __import__("time").sleep(60); os._exit(0)
out.append("mutated")
"#;
    let look = r#"
out.append("state=%d" % STATE["imported"])
out.append("env=%s" % os.environ.get("CANARY"))
out.append("data=%s" % open("/workspace/data.txt").read())
out.append("new=%s" % os.path.exists("/workspace/new.txt"))
out.append("tmp=%s" % os.listdir("/tmp"))
out.append("zygote-file=%s" % open("/workspace/seen-by-zygote.txt").read())
out.append("pid=%d" % os.getpid())
out.append("procs=%d" % len([p for p in os.listdir("/proc") if p.isdigit()]))
out.append("threads=%d" % threading.active_count())
"#;
    for round in 0..3 {
        let changed = fork(&zygote, mutate).await;
        assert_eq!(changed.outcome.command, Some(StageExit::Code(0)), "{round}");
        assert_eq!(report(&changed), "mutated");
        let seen = report(&fork(&zygote, look).await);
        for want in [
            "state=1",
            "env=None",
            "data=original",
            "new=False",
            "tmp=[]",
            "zygote-file=zygote",
            "pid=2",
            "procs=2",
            "threads=1",
        ] {
            assert!(
                seen.lines().any(|l| l == want),
                "round {round}: {want} not in {seen}"
            );
        }
    }
    assert!(zygote.is_alive());
}

#[tokio::test]
async fn a_forked_test_is_a_sandbox_of_its_own() {
    let zygote = zygote(&[]).await.expect("ready");
    let probe = r#"
import socket, ctypes
out.append("hostname=%s" % socket.gethostname())
s = socket.socket(); out.append("redis=%d" % s.connect_ex(("127.0.0.1", 6379))); s.close()
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd", "Seccomp:", "NoNewPrivs"))]
out.extend(l.strip().replace("\t", " ") for l in caps)
libc = ctypes.CDLL(None, use_errno=True)
out.append("unshare=%d" % libc.unshare(0x00020000))
out.append("mount=%d" % libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None))
try:
    socket.socket(38, socket.SOCK_SEQPACKET, 0)  # AF_ALG
    out.append("af_alg=open")
except OSError as e:
    out.append("af_alg=%d" % e.errno)
out.append("fds=%s" % sorted(int(f) for f in os.listdir("/proc/self/fd")))
# Its pid 1 stays in the zygote's mount namespace: nothing may reach it through /proc/1.
for what in ("root", "cwd", "mem"):
    try:
        os.listdir("/proc/1/" + what) if what != "mem" else open("/proc/1/mem", "rb").close()
        out.append("init_%s=open" % what)
    except OSError as e:
        out.append("init_%s=%d" % (what, e.errno))
try:
    held = os.listdir("/proc/1/fd")
except OSError:
    held = []
opened = []
for fd in held:
    try:
        open("/proc/1/fd/" + fd, "rb").close()
        opened.append(fd)
    except OSError:
        pass
out.append("init_fds_opened=%s" % opened)
"#;
    let seen = report(&fork(&zygote, probe).await);
    for want in [
        "hostname=sandbox",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "NoNewPrivs: 1",
        "unshare=-1",
        "mount=-1",
        "af_alg=97",
        "init_root=13",
        "init_cwd=13",
        "init_mem=13",
        "init_fds_opened=[]",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want} not in {seen}");
    }
    assert!(
        seen.lines()
            .any(|l| l.starts_with("redis=") && l != "redis=0"),
        "the host's loopback is out of reach: {seen}"
    );
    assert!(seen.lines().any(|l| l == "Seccomp: 2"), "{seen}");
    // stdin, stdout, stderr, the result pipe, and the one listing /proc/self/fd.
    let fds = seen.lines().find(|l| l.starts_with("fds=")).expect("fds");
    assert!(
        !fds.contains(" 6") && !fds.contains("6,"),
        "the control socket is not inherited: {fds}"
    );
}

#[tokio::test]
async fn limits_hold_for_forked_tests_and_the_zygote_survives_them() {
    let zygote = zygote(&[]).await.expect("ready");
    let short = Limits {
        timeout: Duration::from_millis(500),
        kill_grace: Duration::from_millis(100),
        ..limits()
    };
    let slow = zygote
        .fork(
            json!({"code": "__import__('time').sleep(30)"}),
            BTreeMap::new(),
            &short,
        )
        .await
        .expect("forks");
    assert_eq!(slow.outcome.termination, Termination::TimedOut);
    // At its timeout a test is asked to stop (SIGTERM, passed on by its pid 1) before the
    // grace runs out, as in a cold sandbox.
    let graceful = Limits {
        kill_grace: Duration::from_secs(10),
        ..short
    };
    let asked = zygote
        .fork(
            json!({"code": "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: (print('asked to stop', flush=True), os._exit(7)))\ntime.sleep(30)"}),
            BTreeMap::new(),
            &graceful,
        )
        .await
        .expect("forks");
    assert_eq!(asked.outcome.termination, Termination::TimedOut);
    assert_eq!(asked.outcome.command, Some(StageExit::Code(7)));
    assert!(
        asked
            .outcome
            .stdout
            .render("stdout")
            .contains("asked to stop"),
        "{:?}",
        asked.outcome.stdout
    );
    let small = Limits {
        memory_bytes: 64 << 20,
        ..limits()
    };
    let hog = zygote
        .fork(
            json!({"code": "x = bytearray(512 << 20); x[::4096] = b'1' * len(x[::4096])"}),
            BTreeMap::new(),
            &small,
        )
        .await
        .expect("forks");
    assert_eq!(
        hog.outcome.termination,
        Termination::OutOfMemory,
        "{:?}",
        hog.outcome
    );
    let failing = fork(&zygote, "code = 3").await;
    assert_eq!(failing.outcome.command, Some(StageExit::Code(3)));
    // A test that kills itself dies of it, as it would as pid 2 of a cold sandbox.
    let crash = fork(&zygote, "os.kill(os.getpid(), 11)").await;
    assert_eq!(crash.outcome.command, Some(StageExit::Signal(11)));
    let env = zygote
        .fork(
            json!({"code": "out.append(os.environ['ISOTEST_ATTEMPT'])"}),
            BTreeMap::from([("ISOTEST_ATTEMPT".to_owned(), "2".to_owned())]),
            &limits(),
        )
        .await
        .expect("forks");
    assert_eq!(report(&env), "2");
    assert!(zygote.is_alive(), "the zygote outlives its tests' limits");
}

#[tokio::test]
async fn a_runner_that_cannot_prepare_says_why() {
    let err = zygote(&[("FAIL_PREPARE", "1")])
        .await
        .expect_err("cannot prepare");
    match err {
        ZygoteError::Prepare(why) => {
            assert!(why.contains("cannot collect tests/test_x.py"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}
