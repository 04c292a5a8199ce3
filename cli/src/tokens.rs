//! `isotest token add | list | revoke`: the API tokens of the producer, managed
//! directly in its Redis (one token per CI system, each with its share of the test
//! slots, its priority and an optional quota).

use clap::{Args, Subcommand};

use isotest_infra::Endpoints;
use isotest_producer::auth;
use isotest_producer::store::Store;
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::TokenRecord;
use isotest_protocol::schedule::Priority;

use crate::args::EndpointsArgs;
use crate::exit::Failure;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for a CI system and print it (only this once).
    Add {
        /// Who holds it, such as `ci-gitlab` (1 to 64 of A-Z a-z 0-9 . - _).
        name: String,
        /// The most of its tests that may run at once (no limit by default); the rest of
        /// its suites wait their turn.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        quota: Option<u32>,
        /// Its share of the test slots against other tokens of its priority: a token of
        /// weight 3 gets three times the slots of one of weight 1 while both have work.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        weight: u32,
        /// The highest priority its suites may ask for, and theirs by default: every test
        /// of a higher priority goes before any of a lower one.
        #[arg(long, default_value = "normal", value_parser = parse_priority)]
        priority: Priority,
        /// Let this token read and cancel every suite, not only its own (for operators).
        #[arg(long)]
        admin: bool,
        /// Let this token's suites ask for the host's network (`network = true`); a
        /// worker must also allow it (--allow-network).
        #[arg(long)]
        network: bool,
        /// Let this token's runs write the shared result cache (say, the main branch's
        /// CI); they then read only the shared cache. Other tokens write their own.
        #[arg(long)]
        trusted: bool,
        /// Use the result cache for this token's suites unless a suite says `cache = false`.
        #[arg(long)]
        cache: bool,
        #[command(flatten)]
        endpoints: EndpointsArgs,
    },
    /// List the tokens: name, quota, weight, priority, tests running and waiting (never
    /// the secrets).
    List {
        #[command(flatten)]
        endpoints: EndpointsArgs,
    },
    /// Revoke a token by name: requests with it are refused from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        endpoints: EndpointsArgs,
    },
}

/// Runs a `token` subcommand.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] for a bad or taken name or an unknown token,
/// [`Failure::Unreachable`] when Redis cannot be reached.
pub async fn token(args: TokenArgs) -> Result<(), Failure> {
    match args.command {
        TokenCommand::Add {
            name,
            quota,
            weight,
            priority,
            admin,
            network,
            trusted,
            cache,
            endpoints,
        } => {
            auth::validate_name(&name).map_err(|e| Failure::BadInput(e.to_string()))?;
            let store = connect(&endpoints.into()).await?;
            let token = auth::generate().map_err(|e| Failure::Service(e.into()))?;
            let record = TokenRecord {
                schema_version: SCHEMA_VERSION,
                name: name.clone(),
                quota,
                weight,
                priority,
                admin,
                network,
                trusted,
                cache,
            };
            if !store
                .add_token(&auth::hash(&token), &record)
                .await
                .map_err(service)?
            {
                return Err(Failure::BadInput(format!(
                    "a token named {name} exists; revoke it first (isotest token revoke {name})"
                )));
            }
            let quota = quota.map_or("no quota".to_owned(), |q| format!("quota {q}"));
            let mut role = String::new();
            if admin {
                role.push_str(", admin: sees every suite");
            }
            if network {
                role.push_str(", may use the host's network");
            }
            if trusted {
                role.push_str(", writes the shared result cache");
            }
            if cache {
                role.push_str(", uses the result cache by default");
            }
            eprintln!(
                "isotest: added token {name} ({quota}, weight {weight}, priority {priority}{role}); it is shown only now: store it as that CI system's ISOTEST_TOKEN secret"
            );
            println!("{token}");
        }
        TokenCommand::List { endpoints } => {
            let store = connect(&endpoints.into()).await?;
            let tokens = store.tokens().await.map_err(service)?;
            println!(
                "{:<32} {:>8} {:>6} {:>8} {:>8} {:>8}",
                "NAME", "QUOTA", "WEIGHT", "PRIORITY", "RUNNING", "WAITING"
            );
            for token in tokens {
                let (running, waiting) = store.in_flight(&token.name).await.map_err(service)?;
                let quota = token.quota.map_or("-".to_owned(), |q| q.to_string());
                println!(
                    "{:<32} {quota:>8} {:>6} {:>8} {running:>8} {waiting:>8}",
                    token.name, token.weight, token.priority
                );
            }
        }
        TokenCommand::Revoke { name, endpoints } => {
            let store = connect(&endpoints.into()).await?;
            if !store.revoke_token(&name).await.map_err(service)? {
                return Err(Failure::BadInput(format!("there is no token named {name}")));
            }
            eprintln!("isotest: revoked token {name}");
        }
    }
    Ok(())
}

async fn connect(endpoints: &Endpoints) -> Result<Store, Failure> {
    let conn = isotest_infra::store::connect(&endpoints.redis_url)
        .await
        .map_err(|e| Failure::Unreachable(isotest_infra::error_chain(&e)))?;
    Ok(Store::new(conn, endpoints.namespace.clone()))
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    Priority::parse(text)
        .ok_or_else(|| format!("`{text}` is not a priority; use high, normal or low"))
}

fn service(e: isotest_producer::store::StoreError) -> Failure {
    Failure::Service(anyhow::Error::new(e).context("manage API tokens in Redis"))
}
