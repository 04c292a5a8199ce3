//! Starting a zygote: its sandbox run with the fork server's privilege and a control
//! socket, its configuration sent, and its first word (ready, or why it could not prepare)
//! awaited.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;

use super::control::{Control, Waiters, read_events};
use super::{LIFETIME, Zygote, ZygoteError, ZygoteSpec, chain};
use crate::spec::Privilege;
use crate::{Sandboxer, seccomp};

impl Sandboxer {
    /// Starts a zygote and waits until its fork server says it is ready.
    ///
    /// # Errors
    ///
    /// [`ZygoteError::Prepare`] with the runner's words when it could not prepare (its tests
    /// then run cold); [`ZygoteError::NotReady`], `Gone`, `Start` or `Io` otherwise.
    pub async fn start_zygote(&self, spec: ZygoteSpec) -> Result<Zygote, ZygoteError> {
        let inner = Arc::clone(&self.inner);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| ZygoteError::Io(e.into()))?;
        // SAFETY: the AsyncFd owns the socket until it is dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                ours,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )
        }
        .map_err(|e| ZygoteError::Io(e.into()))?;
        let control = Arc::new(Control {
            fd,
            send: tokio::sync::Mutex::new(()),
        });
        let mut run = spec.run;
        run.control = Some(Arc::new(theirs));
        run.privilege = Privilege::ForkServer;
        run.limits.timeout = LIFETIME;
        let tmp_bytes = run.limits.workspace_bytes;
        let sandboxer = self.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let (ended_tx, mut ended) = tokio::sync::watch::channel(None::<String>);
        let run = tokio::spawn({
            let alive = Arc::clone(&alive);
            async move {
                let why = match sandboxer.run(run).await {
                    Ok(outcome) => {
                        let stderr = outcome.stderr.render("stderr");
                        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
                        let last: Vec<&str> = last.into_iter().rev().collect();
                        format!(": {}", last.join(" | "))
                    }
                    Err(e) => format!(": {}", chain(&e)),
                };
                alive.store(false, Ordering::Relaxed);
                let _ = ended_tx.send(Some(why));
            }
        });
        let seccomp =
            seccomp::strict_program_bytes().map_err(|e| ZygoteError::Io(io::Error::other(e)))?;
        control
            .send(
                &json!({
                    "op": "configure",
                    "seccomp": hex::encode(seccomp),
                    "tmp_bytes": tmp_bytes,
                    "spares": spec.spares,
                }),
                // `isotest-init`, which the server execs as each test's pid 1.
                &[inner.init_program.as_raw_fd()],
            )
            .await
            .map_err(ZygoteError::Io)?;
        // Biased: a fork server that says why it failed and then exits has its message read
        // first, not lost to the race with its exit.
        let hello = tokio::select! {
            biased;
            hello = tokio::time::timeout(spec.ready_timeout, control.receive()) => match hello {
                Err(_) => return Err(ZygoteError::NotReady(spec.ready_timeout)),
                Ok(Err(e)) => return Err(ZygoteError::Io(e)),
                Ok(Ok(None)) => return Err(ZygoteError::Gone(String::new())),
                Ok(Ok(Some((hello, _)))) => hello,
            },
            why = ended.wait_for(Option::is_some) => {
                let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
                return Err(ZygoteError::Gone(why));
            }
        };
        match hello.get("event").and_then(Value::as_str) {
            Some("ready") => {}
            Some("failed") => {
                let why = hello.get("why").and_then(Value::as_str).unwrap_or_default();
                return Err(ZygoteError::Prepare(why.to_owned()));
            }
            _ => return Err(ZygoteError::Gone(format!(": it said {hello}"))),
        }
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(read_events(
            Arc::clone(&control),
            Arc::clone(&waiters),
            Arc::clone(&alive),
        ));
        Ok(Zygote {
            inner,
            control,
            waiters,
            alive,
            next: AtomicU64::new(0),
            facts: hello,
            run,
            reader,
        })
    }
}
