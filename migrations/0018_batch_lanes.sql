-- The batch lane's backlog (issue 29): where batch-lane records wait for
-- their connection's budget, instead of one RabbitMQ queue per connection.
--
-- One quorum queue per connection did not scale: at a few hundred
-- connections a single broker node ran out of channels (one consumer
-- channel per queue, 2,047 per AMQP connection) and then stopped
-- completing handshakes. The matcher now publishes batch-lane commands to
-- one shared queue; the applier takes each message off it into these
-- tables (acked only once committed), and drains them connection by
-- connection at each one's budget. A connection costs one row in
-- `batch_lanes` and its records, however many connections there are.

-- One row per connection that ever had batch work: how many records wait,
-- when its budget allows the next chunk, and which applier replica is
-- working on it (a lease, so that replicas share lanes and a dead
-- replica's lanes are taken over when its lease expires).
CREATE TABLE batch_lanes (
    connection_id text PRIMARY KEY,
    queued        bigint NOT NULL DEFAULT 0,
    due_at        timestamptz NOT NULL DEFAULT now(),
    leased_by     text,
    leased_until  timestamptz
);

-- Only lanes with work are ever looked for: an idle lane is not in this
-- index, so finding work costs the same with 10 connections or 10,000.
CREATE INDEX batch_lanes_due ON batch_lanes (due_at) WHERE queued > 0;

-- One row per record (an apply command, a mirror or a CSQL), in arrival
-- order per connection.
CREATE TABLE batch_backlog (
    id            bigserial PRIMARY KEY,
    connection_id text NOT NULL,
    -- The record's command id: a message taken in twice (redelivered after
    -- a crash between commit and ack) adds nothing the second time.
    command_id    uuid NOT NULL,
    -- 'command', 'mirror' or 'csql': which list of an apply batch it is.
    kind          text NOT NULL,
    body          jsonb NOT NULL,
    -- The message it came in, for the trace and the dead letters.
    batch_id      uuid NOT NULL,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, command_id)
);

CREATE INDEX batch_backlog_lane ON batch_backlog (connection_id, id);
