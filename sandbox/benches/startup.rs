//! Startup benchmark: sandbox create -> `/bin/true` -> destroy, measured interleaved beside
//! `unshare -Urmnpif --mount-proc /bin/true` and (if installed) a `bwrap --unshare-all` run.
//! Prints the median and p99 of each. Run with `cargo bench -p isotest-sandbox --bench startup`
//! (as root); `ISOTEST_BENCH_RUNS` sets the number of rounds (default 200).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isotest_sandbox::{RunSpec, SandboxConfig, Sandboxer, StageExit};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn time_command(program: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn baseline");
    let elapsed = started.elapsed();
    assert!(status.success(), "{program} failed: {status}");
    elapsed
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let runs: usize = std::env::var("ISOTEST_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sandboxer = Sandboxer::new(SandboxConfig {
        state_dir: "/run/isotest-sandbox-bench".into(),
        ..SandboxConfig::default()
    })
    .expect("sandboxer");
    println!("isolation: {}", sandboxer.isolation());
    let have_bwrap = which("bwrap");
    let spec = RunSpec {
        command: vec!["/bin/true".into()],
        ..RunSpec::default()
    };

    let unshare_args = ["-Urmnpif", "--mount-proc", "/bin/true"];
    let bwrap_args = [
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/tmp",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "/bin/true",
    ];
    // Warm up caches (page cache, dentries) for all three.
    for _ in 0..5 {
        let outcome = runtime
            .block_on(sandboxer.run(spec.clone()))
            .expect("sandbox run");
        assert_eq!(outcome.command, Some(StageExit::Code(0)));
        time_command("unshare", &unshare_args);
        if have_bwrap {
            time_command("bwrap", &bwrap_args);
        }
    }

    let mut ours = Vec::with_capacity(runs);
    let mut startup = Vec::with_capacity(runs);
    let mut unshare = Vec::with_capacity(runs);
    let mut bwrap = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = runtime
            .block_on(sandboxer.run(spec.clone()))
            .expect("sandbox run");
        ours.push(started.elapsed());
        startup.push(outcome.startup);
        assert_eq!(outcome.command, Some(StageExit::Code(0)));
        unshare.push(time_command("unshare", &unshare_args));
        if have_bwrap {
            bwrap.push(time_command("bwrap", &bwrap_args));
        }
    }

    println!("{runs} rounds, interleaved; create -> /bin/true -> destroy");
    let report = |name: &str, samples: &mut Vec<Duration>| {
        if samples.is_empty() {
            println!("{name:<44} (not installed)");
            return;
        }
        samples.sort_unstable();
        println!(
            "{name:<44} median {:>8.3} ms   p99 {:>8.3} ms",
            percentile(samples, 0.5).as_secs_f64() * 1e3,
            percentile(samples, 0.99).as_secs_f64() * 1e3
        );
    };
    report("isotest-sandbox (full run)", &mut ours);
    report("isotest-sandbox (run() entry -> exec)", &mut startup);
    report("unshare -Urmnpif --mount-proc /bin/true", &mut unshare);
    report("bwrap --unshare-all ... /bin/true", &mut bwrap);
}
