//! The dead-letter consumer: a test message no worker could handle (RabbitMQ
//! dead-letters it after the delivery limit) is recorded as an infrastructure `error`
//! through the same idempotent write workers use, so its suite still completes and no
//! test is dropped silently.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use isotest_infra::amqp;
use isotest_infra::amqp::consume::{Consumer, ConsumerConfig, death_reason};
use isotest_infra::error_chain;
use isotest_infra::metrics::{self, StatusLabels};
use isotest_protocol::message::TestMessage;
use isotest_protocol::result::TestResult;

use super::Aggregator;

/// How many dead letters are handled at once.
const DEAD_LETTER_PREFETCH: u16 = 16;

impl Aggregator {
    /// Consumes the dead-letter queue until shutdown, reconnecting whenever RabbitMQ
    /// goes away; each dead letter is handled before the next is taken.
    pub(super) async fn dead_letter_loop(&self, url: String, token: CancellationToken) {
        let ns = &self.config.namespace;
        let tag = format!("{}-dead-letters", self.config.consumer);
        let consumer = Consumer::lazy(ConsumerConfig {
            url,
            queue: ns.dead_letter_queue(),
            connection_name: amqp::connection_name(&tag, ns),
            tag,
            prefetch: DEAD_LETTER_PREFETCH,
            namespace: ns.clone(),
            ready_part: None,
        });
        let redis = self.sweeper.clone();
        let session = consumer
            .run(&token, |delivery, _| {
                self.handle_dead_letter(redis.clone(), delivery)
            })
            .await;
        if let Some(session) = session {
            session.close("aggregator dead-letter consumer").await;
        }
    }

    /// Records a dead test message as an infrastructure error, then acks; a body that
    /// is no test message belongs to no suite and is only logged.
    async fn handle_dead_letter(&self, mut redis: ConnectionManager, delivery: Delivery) {
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
            match isotest_infra::results::record(&mut redis, &self.config.namespace, &result).await {
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
