//! Publishing test messages: one long-lived RabbitMQ connection with a channel in
//! confirm mode, reopened on demand after the broker goes away, and a suite's
//! messages sent all at once and then confirmed all at once.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;

use isotest_infra::amqp::{self, AmqpError};
use isotest_infra::error_chain as chain;
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;

/// How many times one request tries to (re)connect before it gives up.
const CONNECT_ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a suite's confirms may take in all before the request fails.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Failure to hand a suite's messages to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("could not connect to RabbitMQ")]
    Connect(#[source] AmqpError),
    #[error("could not put the RabbitMQ channel in confirm mode")]
    ConfirmSelect(#[source] lapin::Error),
    #[error("could not publish test `{test}`")]
    Send {
        test: String,
        #[source]
        source: lapin::Error,
    },
    #[error("could not get RabbitMQ's confirmation of test `{test}`")]
    Confirm {
        test: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ refused test `{test}` (nack)")]
    Nacked { test: String },
    #[error("RabbitMQ could not route test `{test}` to queue `{queue}` ({reply})")]
    Returned {
        test: String,
        queue: String,
        reply: String,
    },
    #[error("RabbitMQ did not confirm the suite's {count} messages within {}s", CONFIRM_TIMEOUT.as_secs())]
    Timeout { count: usize },
}

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
        let mut delay = FIRST_BACKOFF;
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
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(error),
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
        let published = self.publish_on(&channel, messages).await;
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

    async fn publish_on(
        &self,
        channel: &Channel,
        messages: &[TestMessage],
    ) -> Result<(), PublishError> {
        let queue = self.namespace.tests_queue();
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let name = &message.test.name;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.to_bytes(),
                    properties(message),
                )
                .await
                .map_err(|source| PublishError::Send {
                    test: name.clone(),
                    source,
                })?;
            pending.push((name, confirm));
        }
        // Every message is in flight; the confirms arrive in any order, and awaiting
        // them in turn costs no more than the slowest.
        let count = pending.len();
        let confirms = async {
            for (name, confirm) in pending {
                let confirmation = confirm.await.map_err(|source| PublishError::Confirm {
                    test: name.clone(),
                    source,
                })?;
                check(name, &queue, confirmation)?;
            }
            Ok(())
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirms)
            .await
            .map_err(|_| PublishError::Timeout { count })?
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
        let channel = amqp::channel_with_topology(&connection, namespace)
            .await
            .map_err(PublishError::Connect)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(PublishError::ConfirmSelect)?;
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

/// Persistent, and carrying the ids so a test can be followed across services.
fn properties(message: &TestMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("suite_id"),
        AMQPValue::LongString(message.suite_id.as_str().into()),
    );
    headers.insert(
        ShortString::from("test"),
        AMQPValue::LongString(message.test.name.as_str().into()),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id(message).as_str().into())
        .with_headers(headers)
}

/// `{suite}/{name}/{attempt}`: unique per attempt, so duplicates can be spotted.
pub fn message_id(message: &TestMessage) -> String {
    format!(
        "{}/{}/{}",
        message.suite_id, message.test.name, message.attempt
    )
}

/// An ack is a success only if the broker did not also return the message.
fn check(test: &str, queue: &str, confirmation: Confirmation) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishError::Returned {
                test: test.to_owned(),
                queue: queue.to_owned(),
                reply: format!("{} {}", returned.reply_code, returned.reply_text),
            })
        }
        Confirmation::Nack(None) => Err(PublishError::Nacked {
            test: test.to_owned(),
        }),
        // The channel is always put in confirm mode before use, so this means the
        // broker's answer cannot be trusted as a confirmation.
        Confirmation::NotRequested => Err(PublishError::Nacked {
            test: test.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isotest_protocol::manifest::{Framework, TestBody, TestSpec};

    fn message() -> TestMessage {
        TestMessage {
            schema_version: isotest_protocol::SCHEMA_VERSION,
            suite_id: "0190-s".into(),
            index: 0,
            attempt: 1,
            test: TestSpec {
                name: "unit".into(),
                body: TestBody::Command(vec!["true".into()]),
                framework: Framework::Command,
                timeout_ms: 1_000,
                env: Default::default(),
                files: vec![],
                setup: None,
                teardown: None,
                retries: 0,
                environment: None,
                junit_path: None,
                build: None,
                artifact: None,
            },
            workspace: None,
            network: false,
            digest: String::new(),
            published_at_ms: 0,
        }
    }

    #[test]
    fn properties_make_messages_persistent_and_traceable() {
        let props = properties(&message());
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some("0190-s/unit/1")
        );
        let headers = props.headers().as_ref().expect("headers");
        assert_eq!(
            headers.inner().get("test"),
            Some(&AMQPValue::LongString("unit".into()))
        );
        assert_eq!(
            headers.inner().get("suite_id"),
            Some(&AMQPValue::LongString("0190-s".into()))
        );
    }

    #[test]
    fn only_a_plain_ack_is_success() {
        assert!(check("a", "q", Confirmation::Ack(None)).is_ok());
        assert!(matches!(
            check("a", "q", Confirmation::Nack(None)),
            Err(PublishError::Nacked { .. })
        ));
        assert!(matches!(
            check("a", "q", Confirmation::NotRequested),
            Err(PublishError::Nacked { .. })
        ));
    }

    #[test]
    fn chains_causes_on_one_line() {
        let error = PublishError::Send {
            test: "t".into(),
            source: lapin::Error::from(lapin::ErrorKind::InvalidChannel(7)),
        };
        let line = chain(&error);
        assert!(line.starts_with("could not publish test `t`: "), "{line}");
    }
}
