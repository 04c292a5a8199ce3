//! Publishing test messages, the one way every service does it: persistent and
//! mandatory, with the ids in headers so one test can be followed through every
//! service's logs, on a channel in confirm mode. A batch (a whole suite, or one retry)
//! is sent pipelined and then confirmed as a whole: it succeeds only when the broker
//! acked every message and returned none.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;

use super::{AmqpError, channel_with_topology};

/// How long a batch's confirms may take in all before publishing counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Test messages the broker did not take.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("could not connect to RabbitMQ")]
    Connect(#[source] AmqpError),
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
    #[error("RabbitMQ did not confirm {count} messages within {}s", CONFIRM_TIMEOUT.as_secs())]
    Timeout { count: usize },
}

impl PublishError {
    /// Whether publishing again may succeed: *retry* for a broker that went away, was
    /// slow, nacked or could not route (a deleted queue is declared again on the next
    /// channel); *poison* for a message the broker refused for what it is (larger than
    /// it accepts, or not encodable as a frame), which no number of tries will send.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Send { source, .. } | PublishError::Confirm { source, .. } => {
                !refuses_the_message(source)
            }
            PublishError::Connect(_)
            | PublishError::Nacked { .. }
            | PublishError::Returned { .. }
            | PublishError::Timeout { .. } => true,
        }
    }
}

/// Whether lapin failed because of the message itself: the broker closes the channel
/// with `PRECONDITION_FAILED` for a message over its `max_message_size`, and a frame that
/// cannot be encoded never leaves.
fn refuses_the_message(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        ),
        lapin::ErrorKind::SerialisationError(_) => true,
        _ => false,
    }
}

/// `{suite}/{name}/{attempt}`: unique per attempt, so duplicates can be spotted.
pub fn message_id(msg: &TestMessage) -> String {
    format!("{}/{}/{}", msg.suite_id, msg.test.name, msg.attempt)
}

/// The AMQP properties of every test message: persistent JSON with its
/// [`message_id`], and the suite id, test name and attempt in the `suite_id`, `test`
/// and `attempt` headers, on the first attempt as on every retry.
pub fn properties(msg: &TestMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("suite_id"),
        AMQPValue::LongString(msg.suite_id.as_str().into()),
    );
    headers.insert(
        ShortString::from("test"),
        AMQPValue::LongString(msg.test.name.as_str().into()),
    );
    headers.insert(
        ShortString::from("attempt"),
        AMQPValue::LongUInt(msg.attempt),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id(msg).as_str().into())
        .with_headers(headers)
}

/// Opens a channel on `conn`, declares the topology on it and puts it in confirm mode:
/// the channel [`publish_confirmed`] needs.
///
/// # Errors
///
/// Returns [`AmqpError`] when the channel, the topology or confirm mode is refused.
pub async fn confirm_channel(conn: &Connection, ns: &Namespace) -> Result<Channel, AmqpError> {
    let channel = channel_with_topology(conn, ns).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(AmqpError::ConfirmSelect)?;
    Ok(channel)
}

/// Publishes every message to the namespace's tests queue, then waits for every
/// confirm (the channel must be in confirm mode, see [`confirm_channel`]). The
/// messages are all in flight before the first confirm is awaited, so a suite of a
/// thousand tests costs about one round trip, not a thousand.
///
/// # Errors
///
/// Returns the first [`PublishError`]: a send that failed, a nack, a message the broker
/// returned as unroutable, or confirms that did not come within [`CONFIRM_TIMEOUT`].
pub async fn publish_confirmed(
    channel: &Channel,
    ns: &Namespace,
    messages: &[TestMessage],
) -> Result<(), PublishError> {
    let queue = ns.tests_queue();
    let mut pending = Vec::with_capacity(messages.len());
    for msg in messages {
        let name = &msg.test.name;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &msg.to_bytes(),
                properties(msg),
            )
            .await
            .map_err(|source| PublishError::Send {
                test: name.clone(),
                source,
            })?;
        pending.push((name, confirm));
    }
    // Every message is in flight; the confirms arrive in any order, and awaiting them
    // in turn costs no more than the slowest.
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

/// Turns the confirm of test `test`'s message into success or the reason it is not
/// one: an ack is a success only if the broker did not also return the message.
///
/// # Errors
///
/// Returns [`PublishError::Returned`] or [`PublishError::Nacked`].
pub fn check(test: &str, queue: &str, confirmation: Confirmation) -> Result<(), PublishError> {
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
        // A channel is always put in confirm mode before use, so this means the
        // broker's answer cannot be trusted as a confirmation.
        Confirmation::NotRequested => Err(PublishError::Nacked {
            test: test.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain as chain;

    /// Built from the wire form, which outlives the Rust structs behind it.
    fn message() -> TestMessage {
        let json = serde_json::json!({
            "schema_version": 1, "suite_id": "0190-s", "index": 0, "attempt": 1,
            "test": {"name": "unit", "body": {"command": ["true"]}, "framework": "command", "timeout_ms": 1000},
            "digest": "", "published_at_ms": 0,
        });
        TestMessage::from_bytes(json.to_string().as_bytes()).expect("a test message")
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
    fn every_attempt_carries_its_attempt_header() {
        let first = message();
        let retry = TestMessage {
            attempt: 2,
            ..message()
        };
        for (msg, attempt) in [(first, 1), (retry, 2)] {
            let props = properties(&msg);
            let headers = props.headers().as_ref().expect("headers");
            assert_eq!(
                headers.inner().get("attempt"),
                Some(&AMQPValue::LongUInt(attempt))
            );
            assert_eq!(
                props.message_id().as_ref().map(|s| s.to_string()),
                Some(format!("0190-s/unit/{attempt}"))
            );
        }
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

    #[test]
    fn only_a_message_the_broker_refuses_for_itself_is_poison() {
        let protocol = |kind| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(
                lapin::protocol::AMQPError::new(kind, "refused".into()),
            ))
        };
        let send = |source| PublishError::Send {
            test: "t".into(),
            source,
        };
        let cases = [
            (
                send(protocol(AMQPErrorKind::Soft(
                    AMQPSoftError::PRECONDITIONFAILED,
                ))),
                false,
            ),
            (
                send(protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))),
                true,
            ),
            (
                send(lapin::Error::from(lapin::ErrorKind::InvalidChannel(7))),
                true,
            ),
            (PublishError::Nacked { test: "t".into() }, true),
            (
                PublishError::Returned {
                    test: "t".into(),
                    queue: "q".into(),
                    reply: "312 NO_ROUTE".into(),
                },
                true,
            ),
            (PublishError::Timeout { count: 3 }, true),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{}", chain(&error));
        }
    }
}
