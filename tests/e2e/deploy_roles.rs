//! The RabbitMQ users of deploy/rabbitmq/definitions.json, applied to the real local
//! RabbitMQ (as users of this test's namespace, removed at the end): each role can
//! declare the topology and do its own work, and no more. The producer and the workers
//! cannot read the dead letters, the aggregator cannot publish a test message. (The
//! producer can consume the tests queue: RabbitMQ asks for read permission on a queue to
//! declare it with `x-dead-letter-exchange`, and every service declares the topology.)

use anyhow::{Context as _, Result, bail, ensure};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Deserialize as _;

use isotest_protocol::names::Namespace;

use crate::deploy_commands::deploy;
use crate::support::TestEnv;

/// One role's user as the definitions give it.
struct Role {
    name: String,
    configure: String,
    write: String,
    read: String,
}

/// The roles of deploy/rabbitmq/definitions.json, their patterns moved from the
/// `isotest` namespace to `ns`.
fn roles(ns: &str) -> Result<Vec<Role>> {
    let text = std::fs::read_to_string(deploy("rabbitmq/definitions.json"))?;
    let definitions: serde_json::Value = serde_json::from_str(&text)?;
    let moved = |pattern: &serde_json::Value| -> Result<String> {
        let pattern = pattern.as_str().context("a pattern is a string")?;
        ensure!(
            pattern.contains("isotest\\."),
            "{pattern} is of the namespace"
        );
        Ok(pattern.replace("isotest\\.", &format!("{}\\.", ns.replace('-', "\\-"))))
    };
    definitions["permissions"]
        .as_array()
        .context("permissions")?
        .iter()
        .map(|p| {
            Ok(Role {
                name: p["user"].as_str().context("user")?.to_owned(),
                configure: moved(&p["configure"])?,
                write: moved(&p["write"])?,
                read: moved(&p["read"])?,
            })
        })
        .collect()
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("run rabbitmqctl (this test needs it beside the local RabbitMQ)")?;
    ensure!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    Ok(())
}

/// The test's users, deleted when dropped.
struct Users(Vec<String>);

impl Drop for Users {
    fn drop(&mut self) {
        for user in &self.0 {
            let _ = rabbitmqctl(&["delete_user", user]);
        }
    }
}

async fn channel_as(amqp_url: &str, user: &str, password: &str) -> Result<(Connection, Channel)> {
    let (_, rest) = amqp_url
        .split_once('@')
        .context("AMQP_URL has user information")?;
    let url = format!("amqp://{user}:{password}@{rest}");
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// Whether consuming `queue` as this channel's user is allowed.
async fn may_consume(channel: &Channel, queue: &str) -> bool {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// Whether publishing a message to the tests queue (through the default exchange, as
/// the producer and a worker's retry do) is confirmed for this channel's user.
async fn may_publish_a_test(channel: &Channel, ns: &Namespace) -> bool {
    if channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return false;
    }
    let Ok(confirm) = channel
        .basic_publish(
            "".into(),
            ns.tests_queue().as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
    else {
        return false;
    };
    matches!(confirm.await, Ok(c) if c.is_ack())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_rabbitmq_role_does_its_own_work_and_no_more() -> Result<()> {
    let env = TestEnv::new().await;
    let ns = Namespace::new(&env.ns)?;
    let roles = roles(&env.ns)?;
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    ensure!(names == ["producer", "worker", "aggregator"], "{names:?}");
    let mut users = Users(Vec::new());
    let password = format!("pw-{}", env.ns);
    for role in &roles {
        let user = format!("{}-{}", env.ns, role.name);
        rabbitmqctl(&["add_user", &user, &password])?;
        users.0.push(user.clone());
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user,
            &role.configure,
            &role.write,
            &role.read,
        ])?;
    }
    let url = env.servers.amqp_url.clone();
    let user = |role: &str| format!("{}-{role}", env.ns);
    let tests = ns.tests_queue();
    let dead = ns.dead_letter_queue();

    // Every role declares the topology, as each service does when it connects.
    for role in ["producer", "worker", "aggregator"] {
        let (_conn, channel) = channel_as(&url, &user(role), &password).await?;
        if let Err(e) = isotest_infra::amqp::declare_topology(&channel, &ns).await {
            bail!("{role} could not declare the topology: {e}");
        }
    }

    let (_p, producer) = channel_as(&url, &user("producer"), &password).await?;
    ensure!(
        may_publish_a_test(&producer, &ns).await,
        "the producer publishes"
    );
    let (_p2, producer) = channel_as(&url, &user("producer"), &password).await?;
    ensure!(
        !may_consume(&producer, &dead).await,
        "the producer may not read dead letters"
    );

    let (_w, worker) = channel_as(&url, &user("worker"), &password).await?;
    ensure!(
        may_consume(&worker, &tests).await,
        "a worker consumes tests"
    );
    let (_w2, worker) = channel_as(&url, &user("worker"), &password).await?;
    ensure!(
        may_publish_a_test(&worker, &ns).await,
        "a worker publishes a retry"
    );
    let (_w3, worker) = channel_as(&url, &user("worker"), &password).await?;
    ensure!(
        !may_consume(&worker, &dead).await,
        "a worker may not read dead letters"
    );

    let (_a, aggregator) = channel_as(&url, &user("aggregator"), &password).await?;
    ensure!(
        may_consume(&aggregator, &dead).await,
        "the aggregator reads dead letters"
    );
    let (_a2, aggregator) = channel_as(&url, &user("aggregator"), &password).await?;
    ensure!(
        !may_publish_a_test(&aggregator, &ns).await,
        "the aggregator may not publish test messages"
    );
    let (_a3, aggregator) = channel_as(&url, &user("aggregator"), &password).await?;
    ensure!(
        !may_consume(&aggregator, &tests).await,
        "the aggregator may not consume tests"
    );
    drop(users);
    env.cleanup().await
}

/// The value of `key` in the `stringData` of the Secret `name` of a multi-document file.
fn secret_value(file: &str, name: &str, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(deploy(file))?;
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(document)?;
        if value["kind"].as_str() == Some("Secret")
            && value["metadata"]["name"].as_str() == Some(name)
        {
            return value["stringData"][key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{file}: Secret {name} has no {key}"));
        }
    }
    bail!("{file} has no Secret {name}")
}

/// Kubernetes gets the same users as compose: its Secrets hold the files themselves.
#[test]
fn kubernetes_holds_the_same_users_as_compose() -> Result<()> {
    for (file, secret, key, original) in [
        (
            "k8s/backing-services/redis.yaml",
            "redis-users",
            "users.acl",
            "redis/users.acl",
        ),
        (
            "k8s/backing-services/rabbitmq.yaml",
            "rabbitmq-definitions",
            "definitions.json",
            "rabbitmq/definitions.json",
        ),
        (
            "k8s/backing-services/rabbitmq.yaml",
            "rabbitmq-definitions",
            "20-definitions.conf",
            "rabbitmq/20-definitions.conf",
        ),
    ] {
        let copy = secret_value(file, secret, key)?;
        let text = std::fs::read_to_string(deploy(original))?;
        ensure!(
            copy == text,
            "{file}: {secret}/{key} differs from deploy/{original}"
        );
    }
    Ok(())
}
