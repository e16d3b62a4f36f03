//! The connections a tier holds, opened once at start.

use lapin::Connection;
use sqlx::PgPool;

use crate::amqp::{self, AmqpError, Publisher, Topology};
use crate::config::Config;
use crate::db;
use crate::locks::{self, Locks};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("PostgreSQL: {0}")]
    Schema(#[from] db::SchemaError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] AmqpError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// PostgreSQL, RabbitMQ (with the topology declared) and Redis.
#[derive(Debug)]
pub struct Services {
    pub pool: PgPool,
    pub amqp: std::sync::Arc<Connection>,
    pub topology: Topology,
    pub publisher: Publisher,
    pub locks: Locks,
    pub redis: redis::aio::ConnectionManager,
}

impl Services {
    /// Connects to everything and declares the broker topology (idempotent).
    pub async fn connect(config: &Config, name: &str) -> Result<Services, StartError> {
        let pool = db::connect(&config.database).await?;
        db::ensure_migrated(&pool).await?;
        let amqp = amqp::connect(&config.amqp, name).await?;
        let topology = Topology::new(&config.amqp);
        let channel = amqp.create_channel().await.map_err(AmqpError::from)?;
        topology.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        let publisher = Publisher::new(&amqp, &topology).await?;
        let redis = locks::connect(&config.redis).await?;
        let locks = Locks::new(redis.clone(), &config.redis, &config.locks);
        Ok(Services { pool, amqp: std::sync::Arc::new(amqp), topology, publisher, locks, redis })
    }
}
