//! The dead-letter consumer: a test message no worker could handle (RabbitMQ
//! dead-letters it after the delivery limit) is recorded as an infrastructure `error`
//! through the same idempotent write workers use, so its suite still completes and no
//! test is dropped silently.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use isotest_infra::amqp;
use isotest_infra::error_chain;
use isotest_infra::metrics::{self, StatusLabels};
use isotest_protocol::message::TestMessage;
use isotest_protocol::result::TestResult;

use super::Aggregator;

/// How many dead letters are handled at once.
const DEAD_LETTER_PREFETCH: u16 = 16;

impl Aggregator {
    /// Consumes the dead-letter queue until shutdown, reconnecting whenever RabbitMQ
    /// goes away.
    pub(super) async fn dead_letter_loop(&self, url: String, token: CancellationToken) {
        let name = amqp::connection_name(
            &format!("{}-dead-letters", self.config.consumer),
            &self.config.namespace,
        );
        loop {
            let Some(conn) = amqp::reconnect(&url, &name, token.cancelled()).await else {
                return;
            };
            let why = self.consume_dead_letters(&conn, &name, &token).await;
            let _ = conn
                .close(200, "aggregator dead-letter consumer".into())
                .await;
            match why {
                None => return,
                Some(why) => {
                    tracing::warn!(reason = %why, "Lost the dead-letter queue; reconnecting.");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_backoff) => {}
                        () = token.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Handles dead letters on one connection; `None` on shutdown, else why it stopped.
    async fn consume_dead_letters(
        &self,
        conn: &lapin::Connection,
        tag: &str,
        token: &CancellationToken,
    ) -> Option<String> {
        let ns = &self.config.namespace;
        let channel = match amqp::channel_with_topology(conn, ns).await {
            Ok(channel) => channel,
            Err(e) => return Some(error_chain(&e)),
        };
        if let Err(e) = channel
            .basic_qos(DEAD_LETTER_PREFETCH, BasicQosOptions::default())
            .await
        {
            return Some(error_chain(&e));
        }
        let consumer = channel
            .basic_consume(
                ns.dead_letter_queue().as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(e) => return Some(error_chain(&e)),
        };
        tracing::info!(queue = %ns.dead_letter_queue(), "Consuming dead letters.");
        let mut redis = self.sweeper.clone();
        loop {
            tokio::select! {
                () = token.cancelled() => return None,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.handle_dead_letter(&mut redis, delivery).await,
                    Some(Err(e)) => return Some(error_chain(&e)),
                    None => return Some("the broker cancelled the consumer".to_owned()),
                },
            }
        }
    }

    /// Records a dead test message as an infrastructure error, then acks; a body that
    /// is no test message belongs to no suite and is only logged.
    async fn handle_dead_letter(&self, redis: &mut ConnectionManager, delivery: Delivery) {
        let reason = death_reason(&delivery);
        let msg = match TestMessage::from_bytes(&delivery.data) {
            Ok(msg) => msg,
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    bytes = delivery.data.len(),
                    death = %reason,
                    "Dropping a dead letter that is not a test message this aggregator reads."
                );
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            }
        };
        let span = tracing::info_span!("dead_letter", suite_id = %msg.suite_id, test = %msg.test.name, attempt = msg.attempt);
        async {
            let result = dead_letter_result(&msg, &self.config.consumer, &reason);
            match isotest_infra::results::record(redis, &self.config.namespace, &result).await {
                Ok(written) => {
                    tracing::warn!(written, death = %reason, "Recorded an infrastructure error for a dead test message.");
                    metrics::aggregator().dead_letters.inc();
                    if written {
                        metrics::results_written()
                            .get_or_create(&StatusLabels {
                                status: result.status.as_str(),
                            })
                            .inc();
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Could not record a dead test message; returning it.");
                    tokio::time::sleep(self.config.retry_backoff).await;
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
        .instrument(span)
        .await;
    }
}

/// Why RabbitMQ dead-lettered a message, from its `x-first-death-reason` header:
/// `delivery_limit` (its workers kept failing or dying), `rejected`, or `expired`.
fn death_reason(delivery: &Delivery) -> String {
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    match header {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        Some(AMQPValue::ShortString(text)) => text.to_string(),
        _ => "unknown".to_owned(),
    }
}

/// The final `error` result of a test whose message was dead-lettered.
fn dead_letter_result(msg: &TestMessage, consumer: &str, death: &str) -> TestResult {
    let now = isotest_protocol::now_ms();
    let why = match death {
        "delivery_limit" => format!(
            "no worker could handle the test in {} deliveries (dead-lettered)",
            amqp::DELIVERY_LIMIT
        ),
        other => format!("the test message was dead-lettered ({other})"),
    };
    TestResult::infrastructure_error(msg, consumer, &why, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_the_infrastructures_error() {
        // Built from the wire form, which outlives the Rust structs behind it.
        let json = serde_json::json!({
            "schema_version": 1, "suite_id": "s1", "index": 0, "attempt": 1,
            "test": {"name": "a", "body": {"command": ["true"]}, "framework": "command", "timeout_ms": 1000},
            "digest": "", "published_at_ms": 0,
        });
        let msg = TestMessage::from_bytes(json.to_string().as_bytes()).expect("a test message");
        let cases = [
            (
                "delivery_limit",
                "infrastructure: no worker could handle the test in 5 deliveries (dead-lettered)",
            ),
            (
                "expired",
                "infrastructure: the test message was dead-lettered (expired)",
            ),
        ];
        for (death, reason) in cases {
            let result = dead_letter_result(&msg, "aggregator-1", death);
            assert!(result.is_infrastructure_failure(), "{death}");
            assert!(result.is_final, "{death}");
            assert_eq!(result.reason.as_deref(), Some(reason), "{death}");
            assert_eq!(result.worker, "aggregator-1");
        }
    }
}
