-- The admin console (`/console`): its people, their sessions, sign-in attempts for rate
-- limiting, the audit log of every write made in it, and the indexes its company search needs.

CREATE TABLE console_users (
    id                      text PRIMARY KEY,
    email                   text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    password_hash           text NOT NULL,
    role                    text NOT NULL CHECK (role IN ('admin', 'viewer')),
    -- Set for a one-time password (create, reset): the next sign-in asks for a new one.
    must_change_password    boolean NOT NULL DEFAULT true,
    disabled                boolean NOT NULL DEFAULT false,
    -- Consecutive failed sign-ins; the fifth locks the account until `locked_until`.
    failed_count            integer NOT NULL DEFAULT 0,
    locked_until            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT console_users_email_key UNIQUE (email)
);

-- Sessions live here so that any replica serves any request. `id_hash` is the SHA-256 of
-- the cookie's secret: a leaked table does not leak sessions.
CREATE TABLE console_sessions (
    id_hash         text PRIMARY KEY,
    user_id         text NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    csrf_token      text NOT NULL,
    environment_id  text REFERENCES environments (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);

-- Sign-in attempts per client address, for the per-address rate limit.
CREATE TABLE console_sign_in_attempts (
    address         text NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sign_in_attempts_address ON console_sign_in_attempts (address, attempted_at);

-- Every write made in the console: who, when, what, before and after.
CREATE TABLE console_audit (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_id        text REFERENCES console_users (id) ON DELETE SET NULL,
    actor_email     text NOT NULL,
    environment_id  text REFERENCES environments (id) ON DELETE CASCADE,
    company_id      text,
    action          text NOT NULL,
    target          text NOT NULL,
    before          jsonb,
    after           jsonb
);
CREATE INDEX console_audit_at ON console_audit (at DESC, id DESC);
CREATE INDEX console_audit_company ON console_audit (company_id, at DESC) WHERE company_id IS NOT NULL;
CREATE INDEX console_audit_actor ON console_audit (actor_email, at DESC);

-- An override created in the console records its author next to its note.
ALTER TABLE company_overrides ADD COLUMN note_author text NOT NULL DEFAULT '';

-- Company search: name prefix (case-insensitive) and key value prefix, fast at 100k companies.
CREATE INDEX companies_env_lower_name ON companies (environment_id, lower(name) text_pattern_ops, id);
CREATE INDEX company_keys_env_value ON company_keys (environment_id, value text_pattern_ops);
-- The plan filter: live memberships of one plan in one environment, walked by company.
CREATE INDEX company_plans_env_plan_live ON company_plans (environment_id, plan_id, company_id) WHERE ended_at IS NULL;
