//! What a run holds while it lives: its slot (and so its uid) and its cgroup, taken
//! from the slot's pool or made ([`take_cgroup`]) and given back when the last holder
//! lets go ([`Lease`]).

use std::io;
use std::sync::Arc;

use crate::Inner;
use crate::error::SandboxError;

/// The cgroup of a run: v1 keeps one per slot between runs (mkdir and rmdir of v1 cgroups cost
/// more than resetting one), v2 creates one per run.
pub(crate) fn take_cgroup(
    inner: &Inner,
    parent: &crate::cgroup::CgroupParent,
    slot: u32,
    name: &str,
    limits: &crate::spec::Limits,
) -> Result<crate::cgroup::SandboxCgroup, SandboxError> {
    let kept = {
        let mut pool = inner.cgroup_pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.get_mut(slot as usize).and_then(Option::take)
    };
    if let Some(mut cg) = kept {
        match cg.reset(limits.memory_bytes, limits.pids) {
            Ok(()) => return Ok(cg),
            Err(e) => {
                tracing::warn!(error = %e, "Could not reuse a sandbox cgroup; creating a fresh one.");
                if let Err(e) = cg.destroy() {
                    tracing::warn!(error = %e, "Could not remove a sandbox cgroup.");
                }
            }
        }
    }
    let name = if parent.version() == crate::CgroupVersion::V1 {
        format!("slot-{slot}")
    } else {
        name.to_owned()
    };
    parent
        .create(&name, limits.memory_bytes, limits.pids)
        .map_err(|e| SandboxError::io("create cgroup", io::Error::other(e)))
}

/// A run's slot (and so its uid) and its cgroup. When the last holder lets go, however the run
/// ends, the cgroup goes back to the slot's pool (v1) or is removed, then the slot is freed.
/// On v1 the launcher thread holds it too while it sits in the cgroup to clone: a run cancelled
/// meanwhile must not hand the cgroup (nor the slot, whose next run would take the cgroup) to
/// the next run, whose reset would find the worker in it.
pub(crate) struct Lease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) slot: u32,
    pub(crate) cgroup: Option<crate::cgroup::SandboxCgroup>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if cg.reusable() {
                // The next run of this slot waits until it is empty and resets it.
                let mut pool = self
                    .inner
                    .cgroup_pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let slot = self.slot as usize;
                if pool.len() <= slot {
                    pool.resize_with(slot + 1, || None);
                }
                pool[slot] = Some(cg);
            } else if let Err(e) = cg.destroy() {
                tracing::warn!(error = %e, "Could not remove a sandbox cgroup.");
            }
        }
        self.inner.slots.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::launcher::hooks;
    use crate::spec::RunSpec;

    /// A run cancelled while the launcher thread sits in its sandbox's cgroup (v1 moves the
    /// thread there to clone) must not hand that cgroup, nor its slot, to the next run before
    /// the thread has left: that run's reset would find this process in it and kill it. (Were
    /// this process killed, the whole test binary would die.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_cancelled_mid_spawn_leaves_its_cgroup_alone() {
        let sandboxer = crate::Sandboxer::new(crate::SandboxConfig {
            state_dir: "/run/isotest-sandbox-unit".into(),
            ..crate::SandboxConfig::default()
        })
        .expect("this host supports full isolation");
        let spec = |script: &str| RunSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..RunSpec::default()
        };
        let wait_for = |paused: bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut pause = hooks::PAUSE.lock().expect("lock");
            while pause.paused != paused {
                assert!(Instant::now() < deadline, "the launcher never paused");
                pause = hooks::CHANGED
                    .wait_timeout(pause, Duration::from_millis(100))
                    .expect("lock")
                    .0;
            }
        };
        *hooks::PAUSE.lock().expect("lock") = hooks::Pause {
            armed: true,
            ..hooks::Pause::default()
        };
        let first = tokio::spawn({
            let sandboxer = sandboxer.clone();
            async move { sandboxer.run(spec("sleep 30")).await }
        });
        tokio::task::spawn_blocking(move || wait_for(true))
            .await
            .expect("join");
        first.abort();
        assert!(first.await.expect_err("cancelled").is_cancelled());
        // Neither its slot nor its cgroup is handed out while the launcher is in the cgroup.
        let inner = &sandboxer.inner;
        let slot_taken = |slot: usize| {
            let used = inner.slots.used.lock().expect("lock");
            used.get(slot).copied().unwrap_or(false)
        };
        let pooled = |slot: usize| {
            let pool = inner.cgroup_pool.lock().expect("lock");
            pool.get(slot).is_some_and(Option::is_some)
        };
        // Only on v1 does the launcher thread enter the cgroup (on v2 the child is moved).
        let launcher_enters = inner
            .cgroups
            .as_ref()
            .is_some_and(|c| !c.home_tasks().is_empty());
        if launcher_enters {
            assert!(slot_taken(0) && !pooled(0));
        }
        // The next run (which may queue behind the paused launcher) gets another slot and
        // cgroup, and resets no cgroup the launcher is in.
        let next = tokio::spawn({
            let sandboxer = sandboxer.clone();
            async move { sandboxer.run(spec("echo ok")).await }
        });
        {
            let mut pause = hooks::PAUSE.lock().expect("lock");
            pause.released = true;
            hooks::CHANGED.notify_all();
        }
        let o = next.await.expect("join").expect("runs");
        assert_eq!(o.stdout.data, b"ok\n");
        tokio::task::spawn_blocking(move || wait_for(false))
            .await
            .expect("join");
        // Once the launcher has left, slot 0 (and on v1 its cgroup) serves runs again.
        let reusable = inner
            .cgroups
            .as_ref()
            .is_some_and(|c| c.version() == crate::CgroupVersion::V1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while slot_taken(0) || (reusable && !pooled(0)) {
            assert!(Instant::now() < deadline, "slot 0 never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            let o = sandboxer.run(spec("echo ok")).await.expect("runs");
            assert_eq!(o.stdout.data, b"ok\n");
        }
    }
}
