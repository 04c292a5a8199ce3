//! isotest's one AMQP edge. This module connects to RabbitMQ and declares the
//! topology: one durable quorum queue of test messages whose over-delivered messages go
//! to a dead-letter queue. [`publish`] is the one way to publish a test message (with
//! confirms), and [`consume`] the one consume loop with reconnection. lapin does not
//! reconnect by itself (its opt-in recovery keeps consumers and acks of the old channel
//! in a half-alive state), so a lost connection means a new connection, the topology
//! declared again and a new channel, after [`Backoff`], the one backoff of this edge.

pub mod consume;
pub mod publish;

use std::future::Future;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error_chain;
use isotest_protocol::names::Namespace;

/// How many times RabbitMQ delivers one message before dead-lettering it: a message
/// that kills its worker every time must not take down the fleet one by one.
pub const DELIVERY_LIMIT: i64 = 5;

/// Failure to reach RabbitMQ or to declare the topology.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("could not connect to RabbitMQ at {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("could not declare `{name}` on RabbitMQ")]
    Declare {
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error("could not open a RabbitMQ channel")]
    Channel(#[source] lapin::Error),
    #[error("could not set the prefetch of a RabbitMQ channel")]
    Prefetch(#[source] lapin::Error),
    #[error("could not put the RabbitMQ channel in confirm mode")]
    ConfirmSelect(#[source] lapin::Error),
}

/// The name a service gives its RabbitMQ connection: who it is, then its namespace,
/// so an operator (or a test) can find, and close, one deployment's connections.
pub fn connection_name(who: &str, ns: &Namespace) -> String {
    format!("{who}/{ns}")
}

/// Connects, naming the connection after the service so it shows in the management UI.
///
/// # Errors
///
/// Returns [`AmqpError::Connect`] when RabbitMQ does not accept the connection.
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(|source| AmqpError::Connect {
            url: redact(url),
            source,
        })
}

/// Exponential backoff between attempts to reach RabbitMQ: 100 ms doubling up to 5 s.
/// Every reconnection of the AMQP edge waits by it (the consumers, the producer's
/// publisher, the queue watcher); start a new one, or [`Backoff::reset`], once
/// RabbitMQ answers again.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The pause before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts over from the shortest pause.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Sleeps for the next pause; `false` when `stop` completed first.
    pub async fn wait(&mut self, stop: impl Future<Output = ()>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop => false,
        }
    }
}

/// Connects again and again, with [`Backoff`], until RabbitMQ accepts or `stop`
/// completes (then `None`). Every failed attempt is logged.
pub async fn reconnect(
    url: &str,
    name: &str,
    stop: impl Future<Output = ()>,
) -> Option<Connection> {
    let mut backoff = Backoff::default();
    tokio::pin!(stop);
    let mut attempt = 1u32;
    loop {
        let connected = tokio::select! {
            connected = connect(url, name) => connected,
            () = &mut stop => return None,
        };
        match connected {
            Ok(conn) => {
                if attempt > 1 {
                    tracing::info!(attempt, "Reconnected to RabbitMQ.");
                }
                return Some(conn);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(attempt, ?delay, error = %error_chain(&error), "Could not reach RabbitMQ; trying again.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut stop => return None,
                }
                attempt += 1;
            }
        }
    }
}

/// Opens a channel and declares the topology on it (idempotent).
///
/// # Errors
///
/// Returns [`AmqpError`] when the channel cannot be opened or a declaration is refused.
pub async fn channel_with_topology(
    conn: &Connection,
    ns: &Namespace,
) -> Result<Channel, AmqpError> {
    let channel = conn.create_channel().await.map_err(AmqpError::Channel)?;
    declare_topology(&channel, ns).await?;
    Ok(channel)
}

/// Declares the dead-letter exchange and queue and the tests queue.
///
/// # Errors
///
/// Returns [`AmqpError::Declare`] naming what RabbitMQ refused.
pub async fn declare_topology(channel: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    let dlx = ns.dead_letter_exchange();
    let dead = ns.dead_letter_queue();
    let tests = ns.tests_queue();
    let declare_err = |name: &str| {
        let name = name.to_owned();
        move |source| AmqpError::Declare { name, source }
    };
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dlx))?;
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dead))?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dead))?;
    channel
        .queue_declare(
            tests.as_str().into(),
            QueueDeclareOptions::durable(),
            tests_queue_arguments(ns),
        )
        .await
        .map_err(declare_err(&tests))?;
    Ok(())
}

/// A quorum queue: replicated, with a delivery limit, and dead-lettering to the namespace's DLX.
pub fn tests_queue_arguments(ns: &Namespace) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(ns.dead_letter_exchange().as_str().into()),
    );
    args
}

/// Hides the password of an AMQP URL for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Backoff, redact};
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[5], Duration::from_millis(3200));
        assert_eq!(delays[6], Duration::from_secs(5));
        assert_eq!(delays[7], Duration::from_secs(5));
    }

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
    }
}
