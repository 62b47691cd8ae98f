-- Credits: credit types and bundles (catalog), plan credit grants (catalog), grants to
-- companies, and the ledger. Amounts are stored in micro-credits (1 credit = 1,000,000) so
-- sums are exact; the API speaks in credits.

CREATE TABLE credit_types (
    id          text PRIMARY KEY,
    key         text NOT NULL UNIQUE CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Entitlements and overrides may now name a credit type.
ALTER TABLE plan_entitlements
    ADD CONSTRAINT plan_entitlements_credit_fk FOREIGN KEY (value_credit_id) REFERENCES credit_types (id) ON DELETE RESTRICT;
ALTER TABLE company_overrides
    ADD CONSTRAINT company_overrides_credit_fk FOREIGN KEY (value_credit_id) REFERENCES credit_types (id) ON DELETE RESTRICT;

-- A purchasable pack of credits.
CREATE TABLE credit_bundles (
    id              text PRIMARY KEY,
    credit_id       text NOT NULL REFERENCES credit_types (id) ON DELETE RESTRICT,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    quantity_micros bigint NOT NULL CHECK (quantity_micros > 0),
    price_cents     bigint CHECK (price_cents >= 0),
    currency        text CHECK (currency ~ '^[a-z]{3}$'),
    -- Credits from the bundle expire this many days after the grant; NULL: never.
    expiry_days     integer CHECK (expiry_days > 0),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Credits a plan includes each period.
CREATE TABLE plan_credit_grants (
    id                  text PRIMARY KEY,
    plan_id             text NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    credit_id           text NOT NULL REFERENCES credit_types (id) ON DELETE RESTRICT,
    amount_micros       bigint NOT NULL CHECK (amount_micros > 0),
    reset_cadence       text NOT NULL CHECK (reset_cadence IN ('daily', 'weekly', 'monthly', 'yearly')),
    reset_start         text NOT NULL CHECK (reset_start IN ('billing_period', 'first_of_month')),
    -- period_end: unused credits lapse when the next period starts; never: they roll over.
    expiry              text NOT NULL DEFAULT 'period_end' CHECK (expiry IN ('period_end', 'never')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plan_credit_grants_plan_credit UNIQUE (plan_id, credit_id)
);

CREATE TABLE credit_grants (
    id                   text PRIMARY KEY,
    environment_id       text NOT NULL,
    company_id           text NOT NULL,
    credit_id            text NOT NULL REFERENCES credit_types (id) ON DELETE RESTRICT,
    source               text NOT NULL CHECK (source IN ('plan', 'company')),
    plan_credit_grant_id text REFERENCES plan_credit_grants (id) ON DELETE SET NULL,
    bundle_id            text REFERENCES credit_bundles (id) ON DELETE SET NULL,
    reason               text NOT NULL CHECK (reason IN ('free', 'purchased', 'adjustment', 'plan')),
    -- For plan grants: the period this grant is for.
    period_start         timestamptz,
    granted_micros       bigint NOT NULL CHECK (granted_micros > 0),
    used_micros          bigint NOT NULL DEFAULT 0 CHECK (used_micros >= 0),
    zeroed_micros        bigint NOT NULL DEFAULT 0 CHECK (zeroed_micros >= 0),
    expires_at           timestamptz,
    zeroed_at            timestamptz,
    zero_reason          text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE,
    -- Never below zero.
    CHECK (used_micros + zeroed_micros <= granted_micros),
    CHECK ((source = 'plan') = (reason = 'plan')),
    CHECK (source <> 'plan' OR period_start IS NOT NULL)
);
-- A plan grant is issued once per company and period, however often the job runs.
CREATE UNIQUE INDEX credit_grants_plan_period ON credit_grants (plan_credit_grant_id, company_id, period_start)
    WHERE plan_credit_grant_id IS NOT NULL;
CREATE INDEX credit_grants_company ON credit_grants (company_id, credit_id);
CREATE INDEX credit_grants_expiring ON credit_grants (expires_at)
    WHERE expires_at IS NOT NULL AND zeroed_at IS NULL;

-- Every movement of credits: balance = grants − usage − zero-outs.
CREATE TABLE credit_ledger (
    id              text PRIMARY KEY,
    environment_id  text NOT NULL,
    company_id      text NOT NULL,
    credit_id       text NOT NULL REFERENCES credit_types (id) ON DELETE RESTRICT,
    grant_id        text NOT NULL REFERENCES credit_grants (id) ON DELETE CASCADE,
    event_type      text NOT NULL CHECK (event_type IN ('grant', 'usage', 'zero_out')),
    amount_micros   bigint NOT NULL CHECK (amount_micros > 0),
    reason          text NOT NULL DEFAULT '',
    feature_id      text,
    usage_event_id  text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE
);
CREATE INDEX credit_ledger_company ON credit_ledger (company_id, created_at DESC, id DESC);

-- One scheduled tick of a job runs once across all replicas: the first to insert it runs it.
CREATE TABLE job_runs (
    job         text NOT NULL,
    tick        timestamptz NOT NULL,
    instance    text NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    summary     jsonb,
    error       text,
    PRIMARY KEY (job, tick)
);
CREATE INDEX job_runs_started ON job_runs (started_at DESC);

-- The expire_overrides job records each expiry it performs.
CREATE TABLE override_expiries (
    override_id     text PRIMARY KEY,
    environment_id  text NOT NULL,
    company_id      text NOT NULL,
    feature_id      text NOT NULL,
    expiration_date timestamptz NOT NULL,
    expired_at      timestamptz NOT NULL DEFAULT now()
);
