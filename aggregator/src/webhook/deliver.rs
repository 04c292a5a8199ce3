//! One delivery of a `suite.finished` event over HTTP: each try checked against the egress
//! policy, signed with its own time, judged (delivered, retry, give up) and retried with
//! exponential backoff until it succeeds, fails for good or the tries run out.

use std::time::Duration;

use isotest_infra::egress::{EgressError, EgressPolicy};
use isotest_infra::error_chain;
use isotest_protocol::api::SuiteFinished;

use super::signing::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
use super::{DELIVERY_HEADER, Delivery, EVENT_HEADER, WebhookConfig};

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Try {
    /// A 2xx answer: done.
    Delivered(u16),
    /// A failure that may pass (connection refused or reset, a timeout, 429, 5xx).
    Retry(String),
    /// A failure that trying again will not mend (another 4xx, a redirect, a URL
    /// this client cannot send to).
    GiveUp(String),
}

/// The verdict of an HTTP answer's status.
fn judge_status(status: u16) -> Try {
    match status {
        200..=299 => Try::Delivered(status),
        429 | 500..=599 => Try::Retry(format!("the receiver answered {status}")),
        300..=399 => Try::GiveUp(format!(
            "the receiver answered {status}, a redirect, which is not followed"
        )),
        _ => Try::GiveUp(format!("the receiver answered {status}")),
    }
}

/// The verdict of a request that got no answer.
fn judge_error(error: &reqwest::Error) -> Try {
    let text = error_chain(error);
    if error.is_builder() || error.is_redirect() {
        Try::GiveUp(text)
    } else {
        // Connecting, a timeout, a connection reset mid-request: the receiver or the
        // network may be back in a moment.
        Try::Retry(text)
    }
}
/// The HTTP client's resolver: every name through [`EgressPolicy::resolve`].
pub(super) struct Guarded(pub(super) EgressPolicy);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = policy.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The verdict of a callback URL the egress check refused: an internal address will
/// stay one, a name that did not resolve may resolve later.
fn judge_egress(error: &EgressError) -> Try {
    let text = error_chain(error);
    match error {
        EgressError::Internal { .. } | EgressError::BadUrl(_) => Try::GiveUp(text),
        EgressError::Resolve { .. }
        | EgressError::ResolveTimeout { .. }
        | EgressError::NoAddress { .. } => Try::Retry(text),
    }
}

/// POSTs `event` to `url` until a try succeeds, fails for good, or the tries run out.
/// Before each try the URL passes [`WebhookConfig::egress`] (an address literal is
/// never given to the resolver, so it is judged here).
pub async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    url: &str,
    event: &SuiteFinished,
) -> Delivery {
    // An event of strings and numbers always serializes.
    let body = serde_json::to_vec(event).unwrap_or_default();
    let attempts = config.attempts.max(1);
    let mut backoff = config.first_backoff;
    let mut attempt = 1;
    loop {
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, SuiteFinished::EVENT)
            .header(DELIVERY_HEADER, &event.delivery_id)
            .body(body.clone());
        // Signed at each try with its own time: a try after a long wait (a sweep
        // after the lease ran out) is as fresh as the first.
        if let Some(secret) = &config.secret {
            let now = signing::now_s();
            request = request
                .header(TIMESTAMP_HEADER, now.to_string())
                .header(SIGNATURE_HEADER, signature(secret.0.as_bytes(), now, &body));
        }
        let verdict = match config.egress.check_url(url).await {
            Err(refused) => judge_egress(&refused),
            Ok(_) => match request.send().await {
                Ok(response) => judge_status(response.status().as_u16()),
                Err(error) => judge_error(&error),
            },
        };
        match verdict {
            Try::Delivered(status) => return Delivery::Delivered { status, attempt },
            Try::GiveUp(reason) => {
                return Delivery::Failed {
                    reason,
                    attempts: attempt,
                };
            }
            Try::Retry(reason) if attempt >= attempts => {
                return Delivery::Failed {
                    reason,
                    attempts: attempt,
                };
            }
            Try::Retry(reason) => {
                tracing::warn!(%reason, attempt, wait_ms = duration_ms(backoff), "Webhook delivery failed; trying again.");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
        }
    }
}

pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{WebhookSecret, event};

    #[test]
    fn statuses_decide_between_done_retry_and_give_up() {
        let cases: &[(u16, &str)] = &[
            (200, "delivered"),
            (202, "delivered"),
            (204, "delivered"),
            (301, "give up"),
            (307, "give up"),
            (400, "give up"),
            (401, "give up"),
            (404, "give up"),
            (410, "give up"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (100, "give up"),
        ];
        for (status, expected) in cases {
            let got = match judge_status(*status) {
                Try::Delivered(_) => "delivered",
                Try::Retry(_) => "retry",
                Try::GiveUp(_) => "give up",
            };
            assert_eq!(got, *expected, "{status}");
        }
    }

    /// A receiver on a local port answering each try with the next status of
    /// `statuses`; returns its URL and the requests' headers as they arrive.
    async fn receiver(
        statuses: Vec<u16>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Option<String>)>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in statuses {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                // Headers and a small body arrive in the first reads.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("\r\n\r\n{") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let header = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .map(str::to_owned)
                };
                let _ = tx.send((header("x-isotest-delivery"), header("x-isotest-signature")));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (url, rx)
    }

    fn fast(attempts: u32) -> WebhookConfig {
        WebhookConfig {
            secret: WebhookSecret::new("s3cret"),
            attempts,
            first_backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            // These receivers listen on loopback.
            egress: EgressPolicy::allowing(&["127.0.0.1"]).expect("valid"),
            ..WebhookConfig::default()
        }
    }

    fn sample_event() -> SuiteFinished {
        let report = isotest_report::assemble(
            &isotest_report::fixtures::record(&["a"]),
            [],
            isotest_protocol::report::SuiteState::Cancelled,
        );
        event(&report, None)
    }

    /// Each receiver's answers and what the delivery must come to.
    #[tokio::test]
    async fn retries_what_may_pass_and_stops_at_what_will_not() {
        let cases: &[(&[u16], u32, Result<u32, u32>)] = &[
            (&[200], 5, Ok(1)),
            (&[500, 429, 204], 5, Ok(3)),
            (&[404], 5, Err(1)),
            (&[503, 410], 5, Err(2)),
            (&[500, 500, 500], 3, Err(3)),
        ];
        let client = reqwest::Client::new();
        for (statuses, attempts, expected) in cases {
            let (url, mut seen) = receiver(statuses.to_vec()).await;
            let got = match deliver(&client, &fast(*attempts), &url, &sample_event()).await {
                Delivery::Delivered { attempt, .. } => Ok(attempt),
                Delivery::Failed { attempts, .. } => Err(attempts),
            };
            assert_eq!(got, *expected, "{statuses:?}");
            let tries = match got {
                Ok(n) | Err(n) => n,
            };
            for _ in 0..tries {
                let (delivery, signature) = seen.recv().await.expect("a request arrived");
                assert_eq!(delivery.as_deref(), Some("s1.finished"), "{statuses:?}");
                assert!(
                    signature.is_some_and(|s| s.starts_with("v1=")),
                    "{statuses:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_without_a_request() {
        let (url, mut seen) = receiver(vec![204]).await;
        let config = WebhookConfig {
            egress: EgressPolicy::default(),
            ..fast(3)
        };
        for target in [url.as_str(), "http://169.254.169.254/latest/meta-data/"] {
            let got = deliver(&reqwest::Client::new(), &config, target, &sample_event()).await;
            match got {
                Delivery::Failed { reason, attempts } => {
                    assert_eq!(attempts, 1, "{target}");
                    assert!(
                        reason.contains("callbacks may not reach internal addresses"),
                        "{reason}"
                    );
                }
                other @ Delivery::Delivered { .. } => panic!("{target}: {other:?}"),
            }
        }
        assert!(seen.try_recv().is_err(), "no request reached the receiver");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_then_given_up() {
        // Bind and drop: nothing listens on the port afterwards.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let got = deliver(&reqwest::Client::new(), &fast(3), &url, &sample_event()).await;
        assert!(
            matches!(got, Delivery::Failed { attempts: 3, .. }),
            "{got:?}"
        );
    }
}
