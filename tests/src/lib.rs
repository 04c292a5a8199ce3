//! End-to-end tests of isotest against real RabbitMQ and Redis.
