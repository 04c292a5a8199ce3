//! The aggregator service against the real Redis at `REDIS_URL` (default the local
//! one): each test works in a namespace of its own, writes suites and results the way
//! the producer and the worker do, and polls with a deadline for the report.

mod helpers;

mod complete;
mod deadline;
mod history;
mod replicas;
mod restart;
mod webhooks;
