-- Stripe: the webhook inbox, the billing catalog and subscriptions as Stripe last told us,
-- the newest event applied per Stripe object, and the Stripe side of plan memberships.
--
-- Stripe objects reference each other by id (a price names its product, a subscription its
-- customer) but events arrive in any order, so those references carry no foreign keys: a
-- price may be stored before its product. Rows are scoped by environment: each environment
-- is one Stripe account (or mode).

-- The inbox: every verified event, stored before it is acknowledged. Stripe event ids are
-- globally unique; a redelivery hits the primary key and is acknowledged without a new row.
CREATE TABLE stripe_events (
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    id              text NOT NULL CHECK (id LIKE 'evt\_%' AND length(id) <= 255),
    type            text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    -- data.object.id: the customer, product, price or subscription the event is about.
    object_id       text CHECK (length(object_id) <= 255),
    -- pending: not applied yet; applied; skipped: older than what was applied for the
    -- object; ignored: a type entitled does not act on; failed: applying raised `error`,
    -- retried from next_attempt_at.
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'applied', 'skipped', 'ignored', 'failed')),
    -- The event's own `created` (one-second resolution).
    created         timestamptz NOT NULL,
    livemode        boolean NOT NULL DEFAULT false,
    api_version     text,
    -- The body exactly as Stripe sent it (json keeps the text; the signature covered it).
    payload         json NOT NULL CHECK (json_typeof(payload) = 'object'),
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- When the event reached its current final status (applied, skipped or ignored).
    applied_at      timestamptz,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error           text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id),
    CHECK (status <> 'failed' OR error IS NOT NULL),
    CHECK ((status IN ('applied', 'skipped', 'ignored')) = (applied_at IS NOT NULL))
);
-- What the worker drains: pending events and failed ones whose backoff has passed.
CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX stripe_events_env_created ON stripe_events (environment_id, created DESC, received_at DESC, id DESC);

-- Per Stripe object, the `created` time of the newest event applied to it. An event older
-- than this is skipped; an equal one applies (Stripe's one-second resolution).
CREATE TABLE stripe_object_versions (
    environment_id      text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    object_id           text NOT NULL CHECK (length(object_id) BETWEEN 1 AND 255),
    object_type         text NOT NULL CHECK (object_type IN ('customer', 'product', 'price', 'subscription')),
    last_event_created  timestamptz NOT NULL,
    last_event_id       text NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, object_id)
);

-- Stripe products, the billing side of plans (plans.billing_product_id).
CREATE TABLE billing_products (
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    id              text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    name            text NOT NULL DEFAULT '',
    description     text,
    active          boolean NOT NULL DEFAULT true,
    metadata        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    livemode        boolean NOT NULL DEFAULT false,
    stripe_created  timestamptz,
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id)
);

CREATE TABLE billing_prices (
    environment_id          text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    id                      text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    product_id              text NOT NULL CHECK (length(product_id) BETWEEN 1 AND 255),
    active                  boolean NOT NULL DEFAULT true,
    currency                text NOT NULL DEFAULT '',
    unit_amount             bigint,
    billing_scheme          text,
    price_type              text CHECK (price_type IN ('one_time', 'recurring')),
    recurring_interval      text CHECK (recurring_interval IN ('day', 'week', 'month', 'year')),
    recurring_interval_count integer CHECK (recurring_interval_count > 0),
    usage_type              text CHECK (usage_type IN ('licensed', 'metered')),
    nickname                text,
    lookup_key              text,
    metadata                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    livemode                boolean NOT NULL DEFAULT false,
    stripe_created          timestamptz,
    deleted_at              timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id)
);
CREATE INDEX billing_prices_product ON billing_prices (environment_id, product_id);

-- A Stripe customer and the company it maps to (company key stripe_customer_id = id).
-- A deleted customer keeps its row and its company; its memberships end.
CREATE TABLE stripe_customers (
    environment_id  text NOT NULL,
    id              text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    company_id      text NOT NULL,
    email           text,
    name            text,
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE
);
CREATE INDEX stripe_customers_company ON stripe_customers (company_id);

-- Subscriptions and their items as of the newest event (or API read) applied. Memberships
-- (company_plans with source = 'stripe') are derived from these rows per company.
CREATE TABLE stripe_subscriptions (
    environment_id      text NOT NULL,
    id                  text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    customer_id         text NOT NULL,
    company_id          text NOT NULL,
    status              text NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing',
                            'active', 'past_due', 'canceled', 'unpaid', 'paused')),
    trial_end           timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    canceled_at         timestamptz,
    stripe_created      timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE
);
CREATE INDEX stripe_subscriptions_company ON stripe_subscriptions (company_id);

CREATE TABLE stripe_subscription_items (
    environment_id          text NOT NULL,
    id                      text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    subscription_id         text NOT NULL,
    price_id                text NOT NULL,
    product_id              text NOT NULL,
    quantity                bigint NOT NULL DEFAULT 1 CHECK (quantity >= 0),
    current_period_start    timestamptz,
    current_period_end      timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id),
    FOREIGN KEY (environment_id, subscription_id) REFERENCES stripe_subscriptions (environment_id, id) ON DELETE CASCADE,
    CHECK (current_period_end IS NULL OR current_period_start IS NULL OR current_period_end >= current_period_start)
);
CREATE INDEX stripe_subscription_items_subscription ON stripe_subscription_items (environment_id, subscription_id);
CREATE INDEX stripe_subscription_items_product ON stripe_subscription_items (product_id);

-- The Stripe side of a membership: which subscription (and item) grants it, in what status,
-- until when the trial runs. Manual memberships have none of these.
ALTER TABLE company_plans
    ADD COLUMN stripe_subscription_id text,
    ADD COLUMN stripe_subscription_item_id text,
    ADD COLUMN stripe_status text CHECK (stripe_status IN ('trialing', 'active', 'past_due')),
    ADD COLUMN trial_end timestamptz,
    ADD CONSTRAINT company_plans_stripe_link CHECK (
        (source = 'stripe') = (stripe_subscription_id IS NOT NULL AND stripe_status IS NOT NULL)
    );
CREATE INDEX company_plans_stripe_subscription ON company_plans (stripe_subscription_id)
    WHERE stripe_subscription_id IS NOT NULL;
