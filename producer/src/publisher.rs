//! Publishing a suite's test messages: one long-lived RabbitMQ connection with a
//! channel in confirm mode, reopened on demand after the broker goes away. The messages
//! themselves go through [`isotest_infra::amqp::publish`], the one publish path, which
//! sends them all at once and then confirms them all at once.

use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use isotest_infra::amqp::publish::{confirm_channel, publish_confirmed};
use isotest_infra::amqp::{self, Backoff};
use isotest_infra::error_chain as chain;
use isotest_protocol::api::QueueState;
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;

pub use isotest_infra::amqp::publish::PublishError;

/// How many times one request tries to (re)connect before it gives up: a request
/// waits for RabbitMQ a moment, not as long as a consumer would.
const CONNECT_ATTEMPTS: u32 = 3;

/// A connection and its confirm-mode channel.
#[derive(Debug)]
struct Link {
    connection: Connection,
    channel: Channel,
    /// Set after a failed publish: the next request opens a new channel and declares
    /// the topology again, in case the failure was a deleted queue.
    stale: bool,
}

/// The producer's one RabbitMQ connection, shared by every request.
#[derive(Debug)]
pub struct Publisher {
    url: String,
    namespace: Namespace,
    // One lock so that concurrent requests after an outage reconnect once, not each;
    // it is held only to look at or replace the link, never while publishing.
    link: Mutex<Option<Link>>,
}

impl Publisher {
    /// Connects, declares the topology and opens the confirm channel.
    ///
    /// # Errors
    ///
    /// Returns [`PublishError`] when RabbitMQ is unreachable or refuses the set-up.
    pub async fn connect(url: &str, namespace: Namespace) -> Result<Publisher, PublishError> {
        let link = Link::open(url, &namespace, None).await?;
        Ok(Publisher {
            url: url.to_owned(),
            namespace,
            link: Mutex::new(Some(link)),
        })
    }

    /// Whether the connection and its channel are up, reconnecting first if they are
    /// not: a load balancer sends no requests to an unready producer, so the readiness
    /// probe must be able to heal it on its own.
    ///
    /// # Errors
    ///
    /// Returns the [`PublishError`] of the last reconnection attempt.
    pub async fn ensure_connected(&self) -> Result<(), PublishError> {
        self.channel().await.map(drop)
    }

    /// The confirm channel, reconnecting with backoff if the old one was closed.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.is_usable()
        {
            return Ok(link.channel.clone());
        }
        let old = guard.take();
        if let Some(link) = &old
            && link.channel.status().connected()
        {
            let _ = link.channel.close(200, "reopening".into()).await;
        }
        // A connection that is still up only lost its channel (a channel error, or a
        // failed publish): keep the connection and open a new channel on it.
        let mut reusable = old.map(|l| l.connection).filter(|c| c.status().connected());
        let mut backoff = Backoff::default();
        let mut attempt = 1;
        loop {
            match Link::open(&self.url, &self.namespace, reusable.take()).await {
                Ok(link) => {
                    tracing::info!(attempt, "Reconnected to RabbitMQ.");
                    let channel = link.channel.clone();
                    *guard = Some(link);
                    return Ok(channel);
                }
                Err(error) if attempt < CONNECT_ATTEMPTS => {
                    tracing::warn!(attempt, error = %chain(&error), "Could not reconnect to RabbitMQ, retrying.");
                    tokio::time::sleep(backoff.next_delay()).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The tests queue's waiting messages and consumers, or `None` when RabbitMQ does not
    /// say (it is away, or the queue is missing): a passive declare on a channel of its
    /// own, since a missing queue closes the channel it is asked on, and the confirm
    /// channel must stay open.
    pub async fn queue_state(&self) -> Option<QueueState> {
        self.channel().await.ok()?;
        let channel = {
            let guard = self.link.lock().await;
            guard.as_ref()?.connection.create_channel().await.ok()?
        };
        let queue = channel
            .queue_declare(
                self.namespace.tests_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        if channel.status().connected() {
            let _ = channel.close(200, "queue state read".into()).await;
        }
        match queue {
            Ok(queue) => Some(QueueState {
                waiting: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
            Err(error) => {
                tracing::debug!(error = %error, "Could not read the tests queue's state.");
                None
            }
        }
    }

    /// Publishes every message, then waits for every confirm: all must be acks.
    ///
    /// # Errors
    ///
    /// Returns the first [`PublishError`]: a send that failed, a nack, a message the
    /// broker returned as unroutable, or confirms that did not come in time.
    pub async fn publish_all(&self, messages: &[TestMessage]) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let published = publish_confirmed(&channel, &self.namespace, messages).await;
        if published.is_err() {
            self.mark_stale(&channel).await;
        }
        published
    }

    /// Makes the next request start over on a new channel, unless another request
    /// already did.
    async fn mark_stale(&self, channel: &Channel) {
        if let Some(link) = self.link.lock().await.as_mut()
            && link.channel.id() == channel.id()
        {
            link.stale = true;
        }
    }

    /// Closes the connection politely, so the broker does not log it as lost.
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take()
            && link.connection.status().connected()
        {
            let _ = link
                .connection
                .close(200, "producer shutting down".into())
                .await;
        }
    }
}

impl Link {
    async fn open(
        url: &str,
        namespace: &Namespace,
        connection: Option<Connection>,
    ) -> Result<Link, PublishError> {
        let connection = match connection {
            Some(c) => c,
            // Named after the namespace, so an operator can tell deployments apart.
            None => amqp::connect(url, &connection_name(namespace))
                .await
                .map_err(PublishError::Connect)?,
        };
        let channel = confirm_channel(&connection, namespace)
            .await
            .map_err(PublishError::Connect)?;
        Ok(Link {
            connection,
            channel,
            stale: false,
        })
    }

    fn is_usable(&self) -> bool {
        !self.stale && self.connection.status().connected() && self.channel.status().connected()
    }
}

/// The name the connection shows in RabbitMQ's management UI and `rabbitmqctl`.
pub fn connection_name(namespace: &Namespace) -> String {
    amqp::connection_name("isotest-producer", namespace)
}
