//! What following a running suite rides out and tells: an outage of the server (a restart,
//! a cut connection) waited out with growing pauses until the suite's deadline, and the tests
//! queue's state, told to the log when workers come or all go.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use isotest_protocol::api::QueueState;

use super::POLL_EVERY;

/// How long past the suite's deadline an outage is waited out.
pub(super) const OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// The longest pause between two tries during an outage.
pub(super) const OUTAGE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// An outage of the server being ridden out: until when, and how long to pause next.
#[derive(Debug)]
pub(super) struct Outage {
    pub(super) until: Instant,
    pub(super) pause: Duration,
    /// Whether stderr has heard of the current outage.
    pub(super) told: bool,
}

impl Outage {
    pub(super) fn new(until: Instant) -> Outage {
        Outage {
            until,
            pause: POLL_EVERY,
            told: false,
        }
    }
}

/// Whether an answer may be different if asked again: the server, or a proxy before it,
/// is restarting.
pub(super) fn transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether a request that got no answer may get one if made again: the connection
/// failed, timed out or was cut.
pub(super) fn transient_transport(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// How long a suite may wait with no worker consuming before the warning comes again.
const NO_WORKER_REPEAT: Duration = Duration::from_secs(30);

/// What the tests queue looked like, so that a CI log hears of it when it matters: once
/// at the start (how many tests wait, how many workers consume), whenever the workers
/// come or all go, and every [`NO_WORKER_REPEAT`] while none consumes.
#[derive(Debug, Default)]
pub(super) struct QueueWatch {
    last: Option<(QueueState, Instant)>,
}

impl QueueWatch {
    pub(super) fn line(&mut self, queue: QueueState, now: Instant) -> Option<String> {
        let due = match self.last {
            None => true,
            Some((last, at)) => {
                (last.consumers == 0) != (queue.consumers == 0)
                    || (queue.consumers == 0 && now.duration_since(at) >= NO_WORKER_REPEAT)
            }
        };
        if !due {
            return None;
        }
        self.last = Some((queue, now));
        Some(queue_line(queue))
    }
}

/// One line on the tests queue.
fn queue_line(queue: QueueState) -> String {
    let waiting = match queue.waiting {
        1 => "1 test waits".to_owned(),
        n => format!("{n} tests wait"),
    };
    match queue.consumers {
        0 => format!(
            "isotest: warning: no worker consumes the tests queue ({waiting}); start `isotest worker` with this server's AMQP_URL and ISOTEST_NAMESPACE, or the suite ends at its deadline"
        ),
        1 => format!("isotest: {waiting} in the queue, 1 worker consumes it"),
        n => format!("isotest: {waiting} in the queue, {n} workers consume it"),
    }
}

#[cfg(test)]
mod tests {
    use super::{QueueState, QueueWatch};
    use std::time::{Duration, Instant};

    /// The queue lines a CI log gets as workers come and go.
    #[test]
    fn the_log_hears_when_no_worker_consumes() {
        let start = Instant::now();
        let q = |waiting, consumers| QueueState { waiting, consumers };
        let mut watch = QueueWatch::default();
        let polls = [
            (0, q(3, 0)),
            (1, q(3, 0)),
            (31, q(3, 0)),
            (32, q(3, 2)),
            (33, q(1, 2)),
            (40, q(0, 0)),
        ];
        let lines: Vec<String> = polls
            .iter()
            .filter_map(|(s, queue)| {
                let line = watch.line(*queue, start + Duration::from_secs(*s))?;
                Some(format!("{s:>3}s {line}"))
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }
}
