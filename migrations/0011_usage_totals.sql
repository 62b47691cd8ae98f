-- Usage counters: one row per company and event holding every window's count, instead of one
-- row per company, event, period and window. A group of track events now writes one row per
-- (company, event) it touches, not four or five, and a snapshot load reads one row per pair
-- with no join (the row carries its environment).
--
-- Each window is its start and its count. A write for the stored window adds to it; a write
-- for a later window starts it over; a write for an earlier one (a writer whose clock is
-- behind another's at a window boundary) counts toward `all_time` only. `cycle_start` is NULL
-- while the company has no base subscription: the billing-cycle month is then the calendar
-- month's count. The events themselves stay in `events`, from which every count can be
-- recomputed.
CREATE TABLE usage_totals (
    company_id      text NOT NULL,
    event_name      text NOT NULL CHECK (event_name <> ''),
    environment_id  text NOT NULL,
    all_time        bigint NOT NULL DEFAULT 0,
    day_start       timestamptz,
    day_count       bigint NOT NULL DEFAULT 0,
    week_start      timestamptz,
    week_count      bigint NOT NULL DEFAULT 0,
    month_start     timestamptz,
    month_count     bigint NOT NULL DEFAULT 0,
    cycle_start     timestamptz,
    cycle_count     bigint NOT NULL DEFAULT 0,
    -- Incremented on every write, so replicas keep the newest value.
    version         bigint NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, event_name),
    FOREIGN KEY (environment_id, company_id) REFERENCES companies (environment_id, id) ON DELETE CASCADE
) WITH (fillfactor = 70); -- room on each page for HOT updates: every write updates a row

-- The newest window of each period from the old rows; older windows were history.
INSERT INTO usage_totals (company_id, event_name, environment_id, all_time,
                          day_start, day_count, week_start, week_count,
                          month_start, month_count, cycle_start, cycle_count, version)
SELECT p.company_id, p.event_name, c.environment_id, COALESCE(a.count, 0),
       d.window_start, COALESCE(d.count, 0), w.window_start, COALESCE(w.count, 0),
       m.window_start, COALESCE(m.count, 0), b.window_start, COALESCE(b.count, 0),
       p.version
FROM (SELECT company_id, event_name, max(version) AS version
      FROM usage_counters GROUP BY company_id, event_name) p
JOIN companies c ON c.id = p.company_id
LEFT JOIN usage_counters a ON a.company_id = p.company_id AND a.event_name = p.event_name
    AND a.period = 'all_time'
LEFT JOIN LATERAL (SELECT window_start, count FROM usage_counters u
    WHERE u.company_id = p.company_id AND u.event_name = p.event_name
      AND u.period = 'current_day' ORDER BY window_start DESC LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT window_start, count FROM usage_counters u
    WHERE u.company_id = p.company_id AND u.event_name = p.event_name
      AND u.period = 'current_week' ORDER BY window_start DESC LIMIT 1) w ON true
LEFT JOIN LATERAL (SELECT window_start, count FROM usage_counters u
    WHERE u.company_id = p.company_id AND u.event_name = p.event_name
      AND u.period = 'current_month' AND u.month_reset = 'first_of_month'
    ORDER BY window_start DESC LIMIT 1) m ON true
LEFT JOIN LATERAL (SELECT window_start, count FROM usage_counters u
    WHERE u.company_id = p.company_id AND u.event_name = p.event_name
      AND u.period = 'current_month' AND u.month_reset = 'billing_cycle'
    ORDER BY window_start DESC LIMIT 1) b ON true;

DROP TABLE usage_counters;
