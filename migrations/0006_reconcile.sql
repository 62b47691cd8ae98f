-- Reconciliation with Stripe: a record per run, and per environment the cursor from which
-- missed events are caught up through Stripe's events list.

CREATE TABLE stripe_reconcile_runs (
    id              text PRIMARY KEY CHECK (id LIKE 'rcn\_%'),
    environment_id  text NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed')),
    -- Who started it: the scheduler, POST /stripe/reconcile, or `entitled reconcile`.
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'api', 'cli')),
    -- The process running it (its cache origin); a run whose process died is failed by the
    -- next run of its environment.
    instance        text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- {customers|products|prices|subscriptions: {seen, created, updated, deleted}}
    counts          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(counts) = 'object'),
    -- Events listed from Stripe's /v1/events that the inbox did not have yet.
    events_caught_up integer NOT NULL DEFAULT 0 CHECK (events_caught_up >= 0),
    requests        integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    errors          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX stripe_reconcile_runs_env ON stripe_reconcile_runs (environment_id, started_at DESC, id DESC);

CREATE TABLE stripe_sync_state (
    environment_id  text PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    -- `created` of the newest event seen in Stripe's events list; the next catch-up lists
    -- from here (inclusive: same-second events are deduplicated by the inbox's key).
    events_cursor   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Finding objects that vanished from Stripe: those of a type whose version was not
-- refreshed by the run's listing.
CREATE INDEX stripe_object_versions_type
    ON stripe_object_versions (environment_id, object_type, last_event_created);

-- A company's memberships, whatever their plan: sync_memberships and the snapshot read them
-- per company. Without it the planner may walk a plan's memberships instead
-- (company_plans_plan), which grows with the number of subscribers.
CREATE INDEX company_plans_company ON company_plans (company_id, started_at);
