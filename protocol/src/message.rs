//! The message published for each test attempt: everything a worker needs to run it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SCHEMA_VERSION;
use crate::manifest::TestSpec;

/// One test attempt on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMessage {
    pub schema_version: u32,
    pub suite_id: String,
    /// The test's position in the suite, which orders the report.
    pub index: u32,
    /// 1 for the first run; a retry carries the next number.
    pub attempt: u32,
    pub test: TestSpec,
    /// The packed workspace, `sha256:<hex>`, if the suite has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default)]
    pub network: bool,
    /// Whether the test may start warm (the suite's `warm`; messages of older producers
    /// say nothing, and may).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub warm: bool,
    /// sha256 of everything that decides the outcome (see [`outcome_digest`]).
    pub digest: String,
    /// When the message was published, ms since the epoch (for queue-wait figures).
    pub published_at_ms: u64,
    /// The dispatcher's token for this copy of the message: a worker runs it only while
    /// it is the test's current dispatch (see [`crate::names::Namespace::dispatch_key`]).
    /// Absent from messages of older producers, which are run without that check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<String>,
    /// Where to keep the result in the result cache if it passes (the suite asked for
    /// caching and the test was not found there). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheWrite>,
}

fn yes() -> bool {
    true
}

fn is_true(warm: &bool) -> bool {
    *warm
}

/// A message body that is not an isotest test message this worker can run.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not valid JSON of a test message")]
    Malformed(#[source] serde_json::Error),
    #[error("message has schema_version {0}, newer than this worker's {SCHEMA_VERSION}")]
    UnknownVersion(u32),
}

impl TestMessage {
    /// The number of attempts the test may have in all.
    pub fn max_attempts(&self) -> u32 {
        self.test.retries.saturating_add(1)
    }

    /// Whether this is the last attempt the test may have.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts()
    }

    /// The message for the next attempt, if retries remain.
    pub fn next_attempt(&self, now_ms: u64) -> Option<TestMessage> {
        (!self.is_last_attempt()).then(|| TestMessage {
            attempt: self.attempt + 1,
            published_at_ms: now_ms,
            ..self.clone()
        })
    }

    /// Serializes the message body.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message body, refusing unknown schema versions.
    ///
    /// # Errors
    ///
    /// Returns [`MessageError`] for a body that is not a test message or is too new.
    pub fn from_bytes(body: &[u8]) -> Result<TestMessage, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let version: Version = serde_json::from_slice(body).map_err(MessageError::Malformed)?;
        if version.schema_version > SCHEMA_VERSION {
            return Err(MessageError::UnknownVersion(version.schema_version));
        }
        serde_json::from_slice(body).map_err(MessageError::Malformed)
    }
}

/// The sha256 of everything that decides a test's outcome: every field of its
/// [`TestSpec`] but its name and its retry budget, the workspace blob, and network
/// access. It is taken from the spec's own serialization, so a field added to
/// [`TestSpec`] counts without an edit here (and, skipped when absent, leaves the
/// digests of tests without it as they were).
pub fn outcome_digest(test: &TestSpec, workspace: Option<&str>, network: bool) -> String {
    /// Fields of a [`TestSpec`] that do not decide what happens when it runs.
    const NOT_OUTCOME: [&str; 2] = ["name", "retries"];
    // A spec of strings, numbers and maps with string keys always serializes.
    let mut inputs = match serde_json::to_value(test) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    for field in NOT_OUTCOME {
        inputs.remove(field);
    }
    inputs.insert("workspace".into(), workspace.into());
    inputs.insert("network".into(), network.into());
    let canonical = serde_json::to_vec(&inputs).unwrap_or_default();
    hex::encode(Sha256::digest(canonical))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{Framework, TestBody};

    /// A command test of one second; other modules' tests build messages with it.
    pub(crate) fn spec(name: &str) -> TestSpec {
        TestSpec {
            name: name.to_owned(),
            body: TestBody::Command(vec!["true".into()]),
            framework: Framework::Command,
            timeout_ms: 1_000,
            env: Default::default(),
            files: vec![],
            setup: None,
            teardown: None,
            retries: 1,
            environment: None,
            junit_path: None,
            build: None,
            artifact: None,
        }
    }

    #[test]
    fn round_trips_and_refuses_the_future() {
        let msg = TestMessage {
            schema_version: SCHEMA_VERSION,
            suite_id: "s".into(),
            index: 0,
            attempt: 1,
            test: spec("a"),
            workspace: None,
            network: false,
            warm: true,
            digest: outcome_digest(&spec("a"), None, false),
            published_at_ms: 1,
            dispatch: None,
            cache: None,
        };
        assert_eq!(
            TestMessage::from_bytes(&msg.to_bytes()).expect("round trip"),
            msg
        );
        let mut future = serde_json::to_value(&msg).expect("value");
        future["schema_version"] = (SCHEMA_VERSION + 1).into();
        let body = serde_json::to_vec(&future).expect("bytes");
        assert!(matches!(
            TestMessage::from_bytes(&body),
            Err(MessageError::UnknownVersion(_))
        ));
        assert!(matches!(
            TestMessage::from_bytes(b"not json"),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(
            TestMessage::from_bytes(br#"{"schema_version":1}"#),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn retries_count_attempts() {
        let msg = TestMessage {
            schema_version: SCHEMA_VERSION,
            suite_id: "s".into(),
            index: 0,
            attempt: 1,
            test: spec("a"),
            workspace: None,
            network: false,
            warm: true,
            digest: String::new(),
            published_at_ms: 0,
            dispatch: None,
            cache: None,
        };
        let second = msg.next_attempt(5).expect("one retry left");
        assert_eq!(second.attempt, 2);
        assert!(second.is_last_attempt());
        assert!(second.next_attempt(6).is_none());
    }

    #[test]
    fn digest_ignores_the_name_and_sees_the_inputs() {
        assert_eq!(
            outcome_digest(&spec("a"), None, false),
            outcome_digest(&spec("b"), None, false)
        );
        assert_ne!(
            outcome_digest(&spec("a"), None, false),
            outcome_digest(&spec("a"), Some("sha256:00"), false)
        );
        assert_ne!(
            outcome_digest(&spec("a"), None, false),
            outcome_digest(&spec("a"), None, true)
        );
        let mut slow = spec("a");
        slow.timeout_ms = 2_000;
        assert_ne!(
            outcome_digest(&spec("a"), None, false),
            outcome_digest(&slow, None, false)
        );
        let mut patient = spec("a");
        patient.retries = 5;
        assert_eq!(
            outcome_digest(&spec("a"), None, false),
            outcome_digest(&patient, None, false),
            "the retry budget does not decide an attempt's outcome"
        );
    }

    /// Every field of a spec but the name and retries moves the digest: one changed at a
    /// time from a spec that sets them all.
    #[test]
    fn every_outcome_field_moves_the_digest() {
        let full = TestSpec {
            name: "a".into(),
            body: TestBody::Command(vec!["true".into()]),
            framework: Framework::Junit,
            timeout_ms: 1_000,
            env: [("A".to_owned(), "1".to_owned())].into(),
            files: vec![crate::manifest::FileSpec {
                path: "f".into(),
                content: "x".into(),
            }],
            setup: Some("s".into()),
            teardown: Some("t".into()),
            retries: 1,
            environment: Some("e".into()),
            junit_path: Some("r.xml".into()),
            build: Some(crate::manifest::BuildSpec {
                command: vec!["make".into()],
                outputs: vec!["out".into()],
            }),
            artifact: Some(format!("sha256:{}", "a".repeat(64))),
        };
        let base = outcome_digest(&full, None, false);
        type Change = fn(&mut TestSpec);
        let changes: [(&str, Change); 12] = [
            ("body", |t| t.body = TestBody::Code("true".into())),
            ("framework", |t| t.framework = Framework::Command),
            ("timeout_ms", |t| t.timeout_ms = 2_000),
            ("env", |t| t.env.clear()),
            ("files", |t| t.files.clear()),
            ("setup", |t| t.setup = None),
            ("teardown", |t| t.teardown = None),
            ("environment", |t| t.environment = None),
            ("junit_path", |t| t.junit_path = None),
            ("build", |t| t.build = None),
            ("artifact", |t| t.artifact = None),
            ("setup text", |t| t.setup = Some("other".into())),
        ];
        for (field, change) in changes {
            let mut changed = full.clone();
            change(&mut changed);
            assert_ne!(outcome_digest(&changed, None, false), base, "{field}");
        }
        // Every serialized field of the spec is one of those, or name and retries.
        let value = serde_json::to_value(&full).expect("serializes");
        let keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in keys {
            assert!(
                changes.iter().any(|(f, _)| *f == key) || ["name", "retries"].contains(&key),
                "`{key}` is neither tested here nor excluded"
            );
        }
    }
}
