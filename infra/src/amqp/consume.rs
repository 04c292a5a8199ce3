//! Consuming a queue for as long as the service runs, the one way every consumer does
//! it (the worker's tests queue, the aggregator's dead-letter queue): a [`Session`] (a
//! connection, a consuming channel with the topology declared and the prefetch set, and
//! a confirm-mode channel to publish on), and when RabbitMQ goes away a new session
//! after [`Backoff`]. The messages the lost session held unacked go back to the queue.
//! Also the headers RabbitMQ adds to what it delivers.

use std::future::Future;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use isotest_protocol::names::Namespace;

use super::publish::confirm_channel;
use super::{AmqpError, Backoff, channel_with_topology, connect, reconnect};
use crate::{error_chain, metrics};

/// What a [`Consumer`] consumes, and how.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub url: String,
    pub namespace: Namespace,
    /// The queue to consume (a name from [`Namespace`]).
    pub queue: String,
    /// The connection's name in RabbitMQ (see [`super::connection_name`]).
    pub connection_name: String,
    /// The consumer tag, which also names this consumer in the logs.
    pub tag: String,
    /// How many deliveries RabbitMQ hands out unacked at once.
    pub prefetch: u16,
    /// The part of `/readyz` this consumer keeps: ready while it consumes.
    pub ready_part: Option<&'static str>,
}

/// One connection's worth of consuming: the connection, its consuming channel and its
/// confirm-mode publishing channel.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    consume: Channel,
    publish: Channel,
}

impl Session {
    /// Connects a session: declares the topology, sets the prefetch and opens the
    /// publishing channel in confirm mode.
    async fn open(conn: Connection, config: &ConsumerConfig) -> Result<Session, AmqpError> {
        let consume = channel_with_topology(&conn, &config.namespace).await?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::Prefetch)?;
        let publish = confirm_channel(&conn, &config.namespace).await?;
        Ok(Session {
            conn,
            consume,
            publish,
        })
    }

    /// The confirm-mode channel on which deliveries of this session publish (see
    /// [`super::publish::publish_confirmed`]).
    pub fn publisher(&self) -> &Channel {
        &self.publish
    }

    /// Tells RabbitMQ to deliver no more to the consumer `tag`; what is in hand may
    /// still be acked.
    pub async fn stop_consuming(&self, tag: &str) {
        let _ = self
            .consume
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the connection politely; RabbitMQ returns every unacked message to its
    /// queue.
    pub async fn close(&self, why: &str) {
        let _ = self.conn.close(200, why.into()).await;
    }
}

/// Why a session stopped consuming.
enum Ended {
    Shutdown,
    Lost(String),
}

/// A long-running consumer of one queue; see the module documentation.
#[derive(Debug)]
pub struct Consumer {
    config: ConsumerConfig,
    session: Option<Session>,
}

impl Consumer {
    /// Connects the first session now, so that a service that cannot reach RabbitMQ
    /// at start says so instead of waiting.
    ///
    /// # Errors
    ///
    /// Returns [`AmqpError`] when RabbitMQ is unreachable or refuses the set-up.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer, AmqpError> {
        let conn = connect(&config.url, &config.connection_name).await?;
        let session = Session::open(conn, &config).await?;
        set_ready(&config, false);
        Ok(Consumer {
            config,
            session: Some(session),
        })
    }

    /// A consumer that makes its first session when it runs, waiting for RabbitMQ
    /// as long as it takes.
    pub fn lazy(config: ConsumerConfig) -> Consumer {
        Consumer {
            config,
            session: None,
        }
    }

    /// Consumes until `stop` is cancelled, handing each delivery and its session to
    /// `handle` (which may await it, or spawn it and return), and reconnecting with
    /// [`Backoff`] whenever RabbitMQ goes away. Returns the session alive at shutdown,
    /// on whose channels deliveries still in hand can be settled; `None` when `stop`
    /// came while reconnecting.
    pub async fn run<F, Fut>(mut self, stop: &CancellationToken, mut handle: F) -> Option<Session>
    where
        F: FnMut(Delivery, &Session) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = Backoff::default();
        let mut current = self.session.take();
        loop {
            let session = match current.take() {
                Some(session) => session,
                None => self.reconnect(stop, &mut backoff).await?,
            };
            let ended = self
                .consume(&session, stop, &mut backoff, &mut handle)
                .await;
            set_ready(&self.config, false);
            match ended {
                Ended::Shutdown => return Some(session),
                Ended::Lost(why) => {
                    tracing::warn!(reason = %why, queue = %self.config.queue, "Lost RabbitMQ; reconnecting. Unacked messages go back to the queue.");
                    session.close("reconnecting").await;
                    if !backoff.wait(stop.cancelled()).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A new session, after as many attempts as it takes; `None` on shutdown.
    async fn reconnect(&self, stop: &CancellationToken, backoff: &mut Backoff) -> Option<Session> {
        let config = &self.config;
        loop {
            let conn = reconnect(&config.url, &config.connection_name, stop.cancelled()).await?;
            match Session::open(conn, config).await {
                Ok(session) => return Some(session),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), queue = %config.queue, "Could not set up consuming; trying again.");
                    if !backoff.wait(stop.cancelled()).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Consumes on one session until shutdown or until the session dies.
    async fn consume<F, Fut>(
        &self,
        session: &Session,
        stop: &CancellationToken,
        backoff: &mut Backoff,
        handle: &mut F,
    ) -> Ended
    where
        F: FnMut(Delivery, &Session) -> Fut,
        Fut: Future<Output = ()>,
    {
        let config = &self.config;
        let consumer = session
            .consume
            .basic_consume(
                config.queue.as_str().into(),
                config.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(e) => return Ended::Lost(format!("start consuming: {}", error_chain(&e))),
        };
        backoff.reset();
        tracing::info!(consumer = %config.tag, prefetch = config.prefetch, queue = %config.queue, "Consuming.");
        set_ready(config, true);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ended::Shutdown,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => handle(delivery, session).await,
                    Some(Err(e)) => return Ended::Lost(error_chain(&e)),
                    None => return Ended::Lost("the broker cancelled the consumer".to_owned()),
                },
            }
        }
    }
}

fn set_ready(config: &ConsumerConfig, ready: bool) {
    if let Some(part) = config.ready_part {
        metrics::readiness().set(part, ready);
    }
}

/// How many times RabbitMQ delivered this message before (quorum queues count them in
/// `x-delivery-count`).
pub fn delivery_count(delivery: &Delivery) -> u64 {
    match header(delivery, "x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// Why RabbitMQ dead-lettered a message, from its `x-first-death-reason` header:
/// `delivery_limit` (its workers kept failing or dying), `rejected`, or `expired`.
pub fn death_reason(delivery: &Delivery) -> String {
    match header(delivery, "x-first-death-reason") {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        Some(AMQPValue::ShortString(text)) => text.to_string(),
        _ => "unknown".to_owned(),
    }
}

fn header(delivery: &Delivery, name: &str) -> Option<AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}
