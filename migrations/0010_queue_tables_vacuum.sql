-- The outboxes and the Stripe inbox are queues: rows are inserted in bursts, updated on every
-- claim and attempt, and leave their partial "due" indexes when delivered. With the default
-- thresholds (20% of the table) autovacuum and autoanalyze come long after a burst, so claims
-- walk dead index entries and the planner plans against an empty table. Vacuum and analyze
-- them after a fixed number of changed rows instead.
ALTER TABLE webhook_events SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
ALTER TABLE meter_events SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
ALTER TABLE stripe_events SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
