//! The worker's end of a zygote's control socket: one JSON message a `SOCK_SEQPACKET`
//! packet with descriptors riding along, and the reader that routes the fork server's
//! messages to the forks waiting for them.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// The largest message a fork server sends.
const MAX_PACKET: usize = 1 << 20;
/// The most descriptors one message carries.
const MAX_FDS: usize = 8;

/// A message from the fork server about one fork.
#[derive(Debug)]
pub(super) struct Event {
    pub(super) event: String,
    pub(super) status: Option<i32>,
    pub(super) why: Option<String>,
    pub(super) fds: Vec<OwnedFd>,
}

/// The worker's end of the socket.
#[derive(Debug)]
pub(super) struct Control {
    pub(super) fd: AsyncFd<OwnedFd>,
    /// One sender at a time: a packet and its descriptors go together.
    pub(super) send: tokio::sync::Mutex<()>,
}

impl Control {
    pub(super) async fn send(&self, message: &Value, fds: &[RawFd]) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        let _one = self.send.lock().await;
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                let iov = [IoSlice::new(&bytes)];
                let cmsg = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    pub(super) async fn receive(&self) -> io::Result<Option<(Value, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let mut ready = self.fd.readable().await?;
            let got = ready.try_io(|fd| receive_packet(fd.get_ref().as_fd(), &mut buf));
            match got {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn receive_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(Value, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    if len == 0 {
        return Ok(None);
    }
    let value = serde_json::from_slice(&iov[0][..len]).map_err(io::Error::other)?;
    Ok(Some((value, fds)))
}

/// Forks waiting for word of their child, by id.
pub(super) type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>>;

/// Routes the fork server's messages to the forks waiting for them, until it is gone.
pub(super) async fn read_events(control: Arc<Control>, waiters: Waiters, alive: Arc<AtomicBool>) {
    loop {
        let received = control.receive().await;
        let Ok(Some((message, fds))) = received else {
            break;
        };
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let event = Event {
            event: message
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            status: message
                .get("status")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok()),
            why: message
                .get("why")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fds,
        };
        let waiter = waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(waiter) = waiter {
            let _ = waiter.send(event);
        }
    }
    alive.store(false, Ordering::Relaxed);
    // Every fork still waiting hears that the zygote is gone.
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

/// Forgets a fork's waiter however the fork ends.
pub(super) struct Registered<'a> {
    pub(super) waiters: &'a Waiters,
    pub(super) id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}
