-- Outbound webhooks: endpoints an application registers, and a transactional outbox of the
-- messages owed to them. A message row is written in the transaction that made the change it
-- reports (no change without its message, no message without its change) and drained by
-- `FOR UPDATE SKIP LOCKED` workers in every replica.

CREATE TABLE webhooks (
    id              text PRIMARY KEY CHECK (id LIKE 'whk\_%'),
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    url             text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    request_types   text[] NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    -- `whsec_` + base64 of 24 random bytes. Schematic's signature keys HMAC with the whole
    -- string; Standard Webhooks with the decoded bytes after the prefix.
    secret          text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    -- After a rotation the old secret keeps signing (alongside the new one) until it expires.
    previous_secret text CHECK (previous_secret LIKE 'whsec\_%'),
    previous_secret_expires_at timestamptz,
    -- [{feature_id}] / [{credit_id}]: the features and credits whose limit events are sent;
    -- empty: all of them.
    entitlement_trigger_configs jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(entitlement_trigger_configs) = 'array'),
    credit_trigger_configs      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(credit_trigger_configs) = 'array'),
    -- Why the endpoint was disabled by entitled (410 Gone, a high failure rate), if it was.
    disabled_reason text,
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_env ON webhooks (environment_id, created_at DESC, id DESC);

-- One message for one endpoint. `message_id` is the event's id (`msg_…`), the same for every
-- endpoint the event goes to and on every retry (the `webhook-id` header).
CREATE TABLE webhook_events (
    id              text PRIMARY KEY CHECK (id LIKE 'whev\_%'),
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    webhook_id      text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id      text NOT NULL,
    request_type    text NOT NULL,
    -- The body, exactly as signed and sent.
    payload         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'success', 'failure')),
    attempt_count   integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    response_code   integer,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_events_env ON webhook_events (environment_id, created_at DESC, id DESC);
CREATE INDEX webhook_events_webhook ON webhook_events (webhook_id, created_at DESC);

-- Every delivery attempt: what the receiver answered and how long it took.
CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    webhook_event_id text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    webhook_id       text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    succeeded        boolean NOT NULL,
    response_code    integer,
    latency_ms       integer NOT NULL CHECK (latency_ms >= 0),
    -- The first KiB of the response body, or why there was no response.
    response_body    text,
    error            text
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (webhook_event_id, attempted_at);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, attempted_at DESC);

-- Limit events fire once per company, feature (or credit) and metric window.
CREATE TABLE webhook_limit_crossings (
    environment_id  text NOT NULL,
    company_id      text NOT NULL,
    subject_id      text NOT NULL,
    request_type    text NOT NULL,
    window_start    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, subject_id, request_type, window_start),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE
);
