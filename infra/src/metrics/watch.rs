//! The queue watcher: RabbitMQ's depth and consumers of the namespace's queues, read with a
//! passive `queue.declare` into the queue gauges, reconnecting when RabbitMQ goes away.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use isotest_protocol::names::Namespace;

use super::{QueueMetrics, queues};
use crate::amqp;

/// Reads the depth and consumers of the namespace's queues every `interval` with a
/// passive `queue.declare`, into [`queues`], until `stop` is cancelled. RabbitMQ going
/// away only pauses it: it reconnects after [`amqp::Backoff`].
pub async fn watch_queues(
    url: String,
    name: String,
    ns: Namespace,
    interval: Duration,
    stop: CancellationToken,
) {
    let gauges = queues();
    let mut backoff = amqp::Backoff::default();
    loop {
        let Some(conn) = amqp::reconnect(&url, &name, stop.cancelled()).await else {
            return;
        };
        let why = watch_on(&conn, &ns, interval, &stop, &mut backoff, gauges).await;
        let _ = conn.close(200, "queue watcher".into()).await;
        let Some(why) = why else {
            return;
        };
        tracing::warn!(reason = %why, "Could not read the queue depths; reconnecting.");
        if !backoff.wait(stop.cancelled()).await {
            return;
        }
    }
}

/// Reads on one connection; `None` on shutdown, else why it stopped. A read that
/// succeeds resets `backoff`.
async fn watch_on(
    conn: &lapin::Connection,
    ns: &Namespace,
    interval: Duration,
    stop: &CancellationToken,
    backoff: &mut amqp::Backoff,
    gauges: &QueueMetrics,
) -> Option<String> {
    // Declaring the topology first (idempotent) means the passive declares below find
    // the queues even when this runs before any other service has started.
    let channel = match amqp::channel_with_topology(conn, ns).await {
        Ok(channel) => channel,
        Err(e) => return Some(e.to_string()),
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return None,
        }
        // A passive declare of a queue that does not exist closes the channel: someone
        // deleted it. Reconnecting declares it again.
        let read = async {
            let tests = channel
                .queue_declare(
                    ns.tests_queue().as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            let dead = channel
                .queue_declare(
                    ns.dead_letter_queue().as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((tests, dead))
        };
        match read.await {
            Ok((tests, dead)) => {
                backoff.reset();
                gauges.tests_ready.set(i64::from(tests.message_count()));
                gauges
                    .tests_consumers
                    .set(i64::from(tests.consumer_count()));
                gauges
                    .dead_letter_ready
                    .set(i64::from(dead.message_count()));
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}
