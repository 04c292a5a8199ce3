//! `isotest token add | list | revoke`: the API tokens of the producer, managed
//! directly in its Redis (one token per CI system, each with an optional quota).

use clap::{Args, Subcommand};

use isotest_infra::Endpoints;
use isotest_producer::auth;
use isotest_producer::store::Store;
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::TokenRecord;

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
        /// The most of its tests that may be queued or running at once (no limit by default).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        quota: Option<u32>,
        /// Let this token read and cancel every suite, not only its own (for operators).
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// List the tokens: name, quota and tests in flight (never the secrets).
    List {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Revoke a token by name: requests with it are refused from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        endpoints: Endpoints,
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
            admin,
            endpoints,
        } => {
            auth::validate_name(&name).map_err(|e| Failure::BadInput(e.to_string()))?;
            let store = connect(&endpoints).await?;
            let token = auth::generate().map_err(|e| Failure::Service(e.into()))?;
            let record = TokenRecord {
                schema_version: SCHEMA_VERSION,
                name: name.clone(),
                quota,
                admin,
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
            let role = if admin {
                ", admin: sees every suite"
            } else {
                ""
            };
            eprintln!(
                "isotest: added token {name} ({quota}{role}); it is shown only now: store it as that CI system's ISOTEST_TOKEN secret"
            );
            println!("{token}");
        }
        TokenCommand::List { endpoints } => {
            let store = connect(&endpoints).await?;
            let tokens = store.tokens().await.map_err(service)?;
            println!("{:<32} {:>10} {:>10}", "NAME", "QUOTA", "IN FLIGHT");
            for token in tokens {
                let in_flight = store.in_flight(&token.name).await.map_err(service)?;
                let quota = token.quota.map_or("-".to_owned(), |q| q.to_string());
                println!("{:<32} {quota:>10} {in_flight:>10}", token.name);
            }
        }
        TokenCommand::Revoke { name, endpoints } => {
            let store = connect(&endpoints).await?;
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

fn service(e: isotest_producer::store::StoreError) -> Failure {
    Failure::Service(anyhow::Error::new(e).context("manage API tokens in Redis"))
}
