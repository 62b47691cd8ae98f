-- Insights: how often each flag was checked, per environment and hour, and indexes for the
-- insights queries over tracked events and plan memberships.
--
-- Checks are answered from memory and never write to Postgres; every replica counts them
-- in memory and adds its counts to these hourly buckets every few seconds.

CREATE TABLE flag_check_counts (
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    -- No foreign key: counts of a deleted flag are history; queries join the live flags.
    flag_id         text NOT NULL,
    -- The start of the hour the checks fall in.
    bucket_start    timestamptz NOT NULL,
    checks          bigint NOT NULL CHECK (checks >= 0),
    -- Checks that answered true.
    allowed         bigint NOT NULL CHECK (allowed >= 0 AND allowed <= checks),
    PRIMARY KEY (environment_id, bucket_start, flag_id)
);

-- Usage by feature over a window: track events by name and time.
CREATE INDEX events_env_track_name_created ON events (environment_id, event_name, created_at)
    INCLUDE (quantity) WHERE event_type = 'track';

-- Plan growth: memberships joining and leaving in a window.
CREATE INDEX company_plans_env_started ON company_plans (environment_id, started_at);
CREATE INDEX company_plans_env_ended ON company_plans (environment_id, ended_at)
    WHERE ended_at IS NOT NULL;
