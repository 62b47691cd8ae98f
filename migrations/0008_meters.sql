-- Usage-based billing: Stripe Billing Meters mirrored from Stripe, metered prices (a price
-- whose `recurring.meter` is set), and the billing behaviour of plan entitlements
-- (Schematic's `price_behavior`, metered price ids and `soft_limit`).

ALTER TABLE stripe_object_versions DROP CONSTRAINT stripe_object_versions_object_type_check;
ALTER TABLE stripe_object_versions ADD CONSTRAINT stripe_object_versions_object_type_check
    CHECK (object_type IN ('customer', 'product', 'price', 'subscription', 'meter'));

-- A Stripe meter (`/v1/billing/meters`): what a meter event must carry. Meters are never
-- deleted in Stripe, only deactivated (`status = inactive`).
CREATE TABLE billing_meters (
    environment_id          text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    id                      text NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    display_name            text NOT NULL DEFAULT '',
    event_name              text NOT NULL CHECK (length(event_name) BETWEEN 1 AND 255),
    -- customer_mapping.event_payload_key: the payload key that names the Stripe customer.
    customer_payload_key    text NOT NULL DEFAULT 'stripe_customer_id',
    -- value_settings.event_payload_key: the payload key that carries the value.
    value_payload_key       text NOT NULL DEFAULT 'value',
    status                  text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    -- default_aggregation.formula: sum, count or last.
    aggregation_formula     text NOT NULL DEFAULT 'sum',
    livemode                boolean NOT NULL DEFAULT false,
    stripe_created          timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, id)
);
CREATE INDEX billing_meters_env_created ON billing_meters (environment_id, created_at DESC, id DESC);

-- The meter a metered price bills (`recurring.meter`); null for licensed prices.
ALTER TABLE billing_prices ADD COLUMN meter_id text CHECK (length(meter_id) <= 255);

-- Billing behaviour of an entitlement: the metered prices (Stripe price ids; per environment,
-- as a plan's billing product is) that usage is reported against, and the soft limit above
-- which `overage` and `pay_as_you_go` stop allowing use.
ALTER TABLE plan_entitlements
    ADD COLUMN monthly_metered_price_id text CHECK (length(monthly_metered_price_id) BETWEEN 1 AND 255),
    ADD COLUMN yearly_metered_price_id  text CHECK (length(yearly_metered_price_id) BETWEEN 1 AND 255),
    ADD COLUMN soft_limit bigint CHECK (soft_limit >= 0),
    ADD CONSTRAINT plan_entitlements_soft_limit_above_allocation
        CHECK (soft_limit IS NULL OR value_numeric IS NULL OR soft_limit >= value_numeric);

-- The meter-event outbox: billable units owed to Stripe, written in the transaction that
-- stored the track event (per event), or summed into one row per company, meter and window
-- (`stripe_meter_flush_secs` > 0). Drained by `FOR UPDATE SKIP LOCKED` senders in every
-- replica; a row always sends its own `identifier`, so Stripe drops a resend after a crash.
CREATE TABLE meter_events (
    id                  text PRIMARY KEY CHECK (id LIKE 'mevt\_%'),
    environment_id      text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    company_id          text NOT NULL,
    stripe_customer_id  text NOT NULL CHECK (length(stripe_customer_id) BETWEEN 1 AND 255),
    meter_id            text NOT NULL CHECK (length(meter_id) BETWEEN 1 AND 255),
    -- The meter's event_name and payload keys when the row was written.
    event_name          text NOT NULL CHECK (length(event_name) BETWEEN 1 AND 255),
    customer_payload_key text NOT NULL,
    value_payload_key   text NOT NULL,
    price_id            text NOT NULL,
    entitlement_id      text,
    -- Per-event rows: the track event. Aggregated rows: null.
    usage_event_id      text,
    identifier          text NOT NULL CHECK (length(identifier) BETWEEN 1 AND 100),
    value               bigint NOT NULL,
    -- The event's time (`sent_at` with `trusted_client_clock`, else when it was received);
    -- aggregated rows: the window's start.
    timestamp           timestamptz NOT NULL,
    -- Aggregated rows: the window; sent once it has ended.
    window_start        timestamptz,
    window_end          timestamptz,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'expired')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error               text,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    -- While a sender holds the row (its lease): no other request for the same customer and
    -- meter starts meanwhile (Stripe's one-in-flight rule).
    claimed_until       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE,
    UNIQUE (environment_id, identifier),
    CHECK ((window_start IS NULL) = (window_end IS NULL)),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
    CHECK (status NOT IN ('failed', 'expired') OR error IS NOT NULL)
);
-- What the senders drain.
CREATE INDEX meter_events_due ON meter_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX meter_events_env_created ON meter_events (environment_id, created_at DESC, id DESC);
CREATE INDEX meter_events_company ON meter_events (company_id);
CREATE INDEX meter_events_claimed ON meter_events (stripe_customer_id, meter_id)
    WHERE status = 'pending' AND claimed_until IS NOT NULL;
-- One open (never attempted) aggregated row per company, meter and window: later units of
-- the window are added to it. Once a sender has claimed it, later units start a new row.
CREATE UNIQUE INDEX meter_events_open_window
    ON meter_events (environment_id, company_id, meter_id, window_start)
    WHERE status = 'pending' AND attempts = 0 AND window_start IS NOT NULL;
