-- Metering: tracked and identify events, idempotency keys, and usage counters per company,
-- event and metric window.

CREATE TABLE events (
    id              text PRIMARY KEY,
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    event_type      text NOT NULL CHECK (event_type IN ('track', 'identify')),
    -- For track events: the event name (a feature's event_subtype).
    event_name      text CHECK (event_name <> ''),
    -- Resolved at ingest. Events are history: they outlive a deleted company or user.
    company_id      text,
    user_id         text,
    quantity        bigint NOT NULL DEFAULT 1,
    body            jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object'),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    sent_at         timestamptz,
    status          text NOT NULL DEFAULT 'processed' CHECK (status IN ('processed', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (event_type <> 'track' OR event_name IS NOT NULL)
);
CREATE INDEX events_env_created ON events (environment_id, created_at DESC, id DESC);
CREATE INDEX events_company_created ON events (company_id, created_at DESC) WHERE company_id IS NOT NULL;

-- An idempotency key is remembered for 24 hours per environment.
CREATE TABLE event_idempotency (
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    key             text NOT NULL,
    event_id        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, key)
);
CREATE INDEX event_idempotency_created ON event_idempotency (created_at);

-- One row per company, event, metric period and window: checks compare `count` with the
-- allocation while the window is current. Rows of past windows are history.
CREATE TABLE usage_counters (
    company_id      text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    event_name      text NOT NULL CHECK (event_name <> ''),
    period          text NOT NULL CHECK (period IN ('all_time', 'current_day', 'current_week', 'current_month')),
    month_reset     text NOT NULL CHECK (month_reset IN ('first_of_month', 'billing_cycle')),
    window_start    timestamptz NOT NULL,
    count           bigint NOT NULL,
    -- Incremented on every write, so replicas keep the newest value.
    version         bigint NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, event_name, period, month_reset, window_start),
    CHECK (month_reset = 'first_of_month' OR period = 'current_month')
);
