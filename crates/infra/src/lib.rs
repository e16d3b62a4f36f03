//! Infrastructure shared by every tier: configuration, PostgreSQL, RabbitMQ,
//! Redis locks, telemetry and shutdown. No sync rules live here.

pub mod amqp;
pub mod broker;
pub mod budget;
pub mod config;
pub mod db;
pub mod health;
pub mod inspect;
pub mod locks;
pub mod metrics;
pub mod priority;
pub mod propagation;
pub mod services;
pub mod shutdown;
pub mod statistics;
pub mod telemetry;
pub mod worker;

pub use config::Config;
pub use tokio_util::sync::CancellationToken;
