//! Webhook signatures with a timestamp, as Stripe and Slack sign theirs: each try
//! carries the time it was sent (`X-Isotest-Timestamp`, Unix seconds) and the
//! HMAC-SHA256 of `"{timestamp}.{body}"` keyed by the aggregator's secret
//! (`X-Isotest-Signature: v1=<hex>`). A receiver that checks both, and refuses a
//! timestamp more than [`TOLERANCE`] from its clock, cannot be made to accept a
//! delivery replayed later: the timestamp cannot be changed without the secret.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying `v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "X-Isotest-Signature";
/// The header carrying the Unix time (seconds) the try was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Isotest-Timestamp";
/// How far a timestamp may be from the receiver's clock, either way (5 minutes).
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// Why a delivery does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no {0} header")]
    Missing(&'static str),
    #[error("{TIMESTAMP_HEADER} `{0}` is not a Unix time in seconds")]
    BadTimestamp(String),
    #[error("the request was signed {age_s}s from now, more than the {}s allowed: a replay, or a clock off", TOLERANCE.as_secs())]
    Stale { age_s: u64 },
    #[error("the signature does not match the body and timestamp")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1=<hex>`: the HMAC-SHA256 of `"{timestamp}.{body}"` keyed by `secret`, as
/// [`SIGNATURE_HEADER`] carries it.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a delivery as a receiver should: the timestamp within [`TOLERANCE`] of
/// `now` (Unix seconds), then the signature over timestamp and body, compared in
/// constant time. A header may hold several comma-separated `v1=` signatures (as
/// during a change of secret); one matching is enough.
///
/// # Errors
///
/// Returns the [`VerifyError`] that says why the delivery is to be refused.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), VerifyError> {
    let text = timestamp.ok_or(VerifyError::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(VerifyError::Missing(SIGNATURE_HEADER))?;
    let timestamp: u64 = text
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(text.to_owned()))?;
    let age_s = now.abs_diff(timestamp);
    if age_s > TOLERANCE.as_secs() {
        return Err(VerifyError::Stale { age_s });
    }
    let matches = signature
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_mac| hex::decode(hex_mac).ok())
        .any(|given| mac(secret, timestamp, body).verify_slice(&given).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// The current Unix time in seconds.
pub fn now_s() -> u64 {
    isotest_protocol::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2 (key "Jefe"), over the signed string `"{t}.{body}"`:
    /// the published HMAC-SHA256 of "what do ya want for nothing?" is that of
    /// timestamp `what do ya want for nothing?` split at nothing, so check the
    /// construction against an HMAC of the joined string instead.
    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let joined = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
            mac.update(b"1767225600.{\"a\":1}");
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        };
        assert_eq!(signature(b"Jefe", 1_767_225_600, b"{\"a\":1}"), joined);
        assert_ne!(
            signature(b"Jefe", 1_767_225_601, b"{\"a\":1}"),
            joined,
            "another timestamp, another signature"
        );
        // RFC 4231 test case 2, to pin the HMAC itself.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_receiver_accepts_a_fresh_delivery_and_refuses_replays_and_forgeries() {
        let (secret, body, t) = (
            b"s3cret".as_slice(),
            b"{\"suite_id\":\"s1\"}",
            1_767_225_600,
        );
        let good = signature(secret, t, body);
        let ts = t.to_string();
        let check = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now: u64| {
            verify(secret, ts, sig, body, now)
        };
        assert_eq!(check(Some(&ts), Some(&good), body, t), Ok(()));
        assert_eq!(
            check(Some(&ts), Some(&good), body, t + 300),
            Ok(()),
            "5 minutes late"
        );
        assert_eq!(
            check(Some(&ts), Some(&good), body, t - 60),
            Ok(()),
            "a clock behind"
        );
        let rotated = format!("v1=00ff, {good}");
        assert_eq!(check(Some(&ts), Some(&rotated), body, t), Ok(()));
        // The same request replayed six minutes later.
        assert_eq!(
            check(Some(&ts), Some(&good), body, t + 360),
            Err(VerifyError::Stale { age_s: 360 })
        );
        // A replay with a fresh timestamp, but the old signature.
        let fresh = (t + 360).to_string();
        assert_eq!(
            check(Some(&fresh), Some(&good), body, t + 360),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(Some(&ts), Some(&good), b"{\"suite_id\":\"s2\"}", t),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", Some(&ts), Some(&good), body, t),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(None, Some(&good), body, t),
            Err(VerifyError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            check(Some(&ts), None, body, t),
            Err(VerifyError::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            check(Some("soon"), Some(&good), body, t),
            Err(VerifyError::BadTimestamp("soon".into()))
        );
        // The old, untimed form of the header is not accepted.
        let untimed = good.replacen("v1=", "sha256=", 1);
        assert_eq!(
            check(Some(&ts), Some(&untimed), body, t),
            Err(VerifyError::Mismatch)
        );
    }
}
