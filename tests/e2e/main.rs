//! End-to-end tests of isotest: real RabbitMQ and Redis, the `isotest` binary started
//! as separate processes, suites submitted the way a CI job submits them.

mod adversarial;
mod auth;
mod bad_input;
mod cache;
mod cli_config;
mod dashboard;
mod deploy_commands;
mod deploy_files;
mod deploy_roles;
mod faults;
mod first_hour;
mod frameworks;
mod history;
mod hostile;
mod junit_reader;
mod metrics;
mod modes;
mod pipeline;
mod prepare;
mod scheduling;
mod support;
mod warm;
mod webhooks;
