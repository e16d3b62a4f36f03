//! The services a tier holds: PostgreSQL, RabbitMQ and Redis, each able to
//! come back after it went away.
//!
//! - PostgreSQL: the sqlx pool opens new connections as old ones fail (and
//!   tests each one before handing it out), so a restarted server costs the
//!   queries in flight, which are retried by their callers.
//! - Redis: a `ConnectionManager` that reconnects with backoff on the next
//!   command after a failure; commands time out instead of hanging.
//! - RabbitMQ: the [`Broker`], which reconnects and redeclares the topology.
//!
//! At start a tier waits (with backoff, logging what it waits for) until all
//! three answer, instead of exiting: an orchestrator that starts the tier
//! before its services would otherwise see it crash-loop.

use std::sync::Arc;
use std::time::Duration;

use crmsync_domain::Lane;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::amqp::{AmqpError, Topology};
use crate::broker::Broker;
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
    #[error("stopped while waiting for the services")]
    Stopped,
}

impl StartError {
    /// Errors that waiting cannot fix: the schema is missing or behind.
    fn permanent(&self) -> bool {
        matches!(self, StartError::Schema(db::SchemaError::Empty | db::SchemaError::Behind { .. }))
    }
}

/// PostgreSQL, RabbitMQ (with the topology declared) and Redis.
#[derive(Debug)]
pub struct Services {
    pub pool: PgPool,
    /// The immediate lane's own connections (`database.immediate_connections`;
    /// the main pool when that is 0): see [`Services::lane_pool`].
    pub immediate_pool: PgPool,
    pub broker: Arc<Broker>,
    pub topology: Topology,
    pub locks: Locks,
    pub redis: redis::aio::ConnectionManager,
}

impl Services {
    /// Connects to everything and declares the broker topology (idempotent).
    pub async fn connect(config: &Config, name: &str) -> Result<Services, StartError> {
        let pool = db::connect(&config.database).await?;
        db::ensure_migrated(&pool).await?;
        let immediate_pool = match config.database.immediate_connections {
            0 => pool.clone(),
            n => db::connect_sized(&config.database, n).await?,
        };
        let broker = Broker::new(&config.amqp, name);
        broker.live().await?;
        let redis = locks::connect(&config.redis).await?;
        let locks = Locks::new(redis.clone(), &config.redis, &config.locks);
        Ok(Services { pool, immediate_pool, topology: broker.topology().clone(), broker, locks, redis })
    }

    /// The pool a lane's work uses. A live change must not queue for a
    /// connection behind a backfill's chunks, which take every connection
    /// of the main pool while they run (a live edit's p99 went from 66 ms
    /// to seconds with one connection backfilling, issue 29).
    pub fn lane_pool(&self, lane: Lane) -> &PgPool {
        match lane {
            Lane::Immediate => &self.immediate_pool,
            Lane::Batch => &self.pool,
        }
    }

    /// As [`Services::connect`], trying again with backoff while a service
    /// is away, until `shutdown`. A missing or old schema is not waited out:
    /// it needs `crmsync migrate`.
    pub async fn connect_patiently(config: &Config, name: &str, shutdown: &CancellationToken) -> Result<Services, StartError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match Self::connect(config, name).await {
                Ok(s) => return Ok(s),
                Err(e) if e.permanent() => return Err(e),
                Err(e) => warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "waiting for the services"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(StartError::Stopped),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
