#!/usr/bin/env bash
# Installs (when missing) and starts the three services crmsync needs, on
# loopback only: PostgreSQL, Redis and RabbitMQ from Debian's packages.
#
# Idempotent: a service that already answers is left alone, so this runs at the
# start of every demo and every test run, on a fresh machine or a warm one.
# Where a Docker engine is running, `docker compose up -d` is used instead.
#
# Environment (defaults match crmsync's own defaults):
#   CRMSYNC_PG_USER / CRMSYNC_PG_PASSWORD / CRMSYNC_PG_DB   crmsync / crmsync / crmsync
set -euo pipefail

PG_USER=${CRMSYNC_PG_USER:-crmsync}
PG_PASSWORD=${CRMSYNC_PG_PASSWORD:-crmsync}
PG_DB=${CRMSYNC_PG_DB:-crmsync}

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "$2 did not open port $1 within $3 s"; return 1
}

if [ -z "${CRMSYNC_NO_DOCKER:-}" ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  log "Docker engine found: docker compose up -d postgres redis rabbitmq"
  cd "$(dirname "$0")/.."
  docker compose up -d --wait postgres redis rabbitmq
  exit 0
fi

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian's packages"
  # Keep the packages' own init scripts from trying to start services
  # (there is no init system in a container); we start them ourselves below.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- PostgreSQL -------------------------------------------------------------
if ! port_open 5432; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  [ -n "$ver" ] || { log "no PostgreSQL cluster found"; exit 1; }
  conf=/etc/postgresql/$ver/main/conf.d/crmsync.conf
  if [ ! -f "$conf" ]; then
    # Parallel integration tests each open a few pools; the default 100 is tight.
    as_root sh -c "printf \"listen_addresses = '127.0.0.1'\nmax_connections = 400\nshared_buffers = 512MB\n\" > $conf"
  fi
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster "$ver" main start
  wait_port 5432 PostgreSQL 30
fi
as_root su postgres -c "psql -qtAX -v ON_ERROR_STOP=1" <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL

# --- Redis ------------------------------------------------------------------
if ! port_open 6379; then
  log "starting Redis"
  as_root mkdir -p /var/lib/crmsync-redis
  as_root redis-server --bind 127.0.0.1 --port 6379 --daemonize yes \
    --dir /var/lib/crmsync-redis --save "" --appendonly no \
    --logfile /var/lib/crmsync-redis/redis.log
  wait_port 6379 Redis 30
fi

# --- RabbitMQ ---------------------------------------------------------------
if ! port_open 5672; then
  log "starting RabbitMQ (takes a few seconds)"
  env_conf=/etc/rabbitmq/rabbitmq-env.conf
  if ! grep -q '^NODENAME=rabbit@localhost' "$env_conf" 2>/dev/null; then
    as_root sh -c "printf 'NODENAME=rabbit@localhost\nNODE_IP_ADDRESS=127.0.0.1\n' >> $env_conf"
  fi
  as_root sh -c 'cd /var/lib/rabbitmq && nohup /usr/sbin/rabbitmq-server >/var/log/rabbitmq/crmsync-start.log 2>&1 &'
  wait_port 5672 RabbitMQ 120
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi

log "PostgreSQL, Redis and RabbitMQ are up on 127.0.0.1"
