//! End-to-end tests of the producer's HTTP API against the real RabbitMQ and Redis
//! (`AMQP_URL`, `REDIS_URL`), each test in a namespace of its own.

mod blobs;
mod dashboard;
mod helpers;
mod history;
mod list;
mod openapi;
mod reconnect;
mod status;
mod suites;
