//! Usage counters: one `usage_totals` row per company and event, holding the count of every
//! window a track event counts in (all time, the day, the week, the calendar month and, with
//! a base subscription, the billing-cycle month). Ingestion adds a group's quantities with
//! one upsert of one row per (company, event); snapshots read the rows and expand each into
//! the engine's per-window [`UsageCounter`]s.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Duration, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::engine::{period, MetricPeriod, MonthReset, UsageCounter};

/// The columns [`Totals::read`] reads, after the company id (0) and event name (1).
pub(super) const COLUMNS: &str = "company_id, event_name, all_time, day_start, day_count,
    week_start, week_count, month_start, month_count, cycle_start, cycle_count, version";

/// The windows a row keeps besides all time, in its column order.
pub(super) const WINDOWS: [(MetricPeriod, MonthReset); 4] = [
    (MetricPeriod::CurrentDay, MonthReset::FirstOfMonth),
    (MetricPeriod::CurrentWeek, MonthReset::FirstOfMonth),
    (MetricPeriod::CurrentMonth, MonthReset::FirstOfMonth),
    (MetricPeriod::CurrentMonth, MonthReset::BillingCycle),
];

/// A window older than this cannot be current (the longest is a month): snapshots skip it.
const CURRENT_AT_MOST_DAYS: i64 = 40;

/// One row's counts: all time, and per window of [`WINDOWS`] its start (none yet: `None`)
/// and count.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Totals {
    pub all_time: i64,
    pub windows: [(Option<DateTime<Utc>>, i64); 4],
    pub version: i64,
}

impl Totals {
    /// Reads a row selected with [`COLUMNS`].
    pub(super) fn read(row: &PgRow) -> Result<Totals, sqlx::Error> {
        let mut windows = [(None, 0); 4];
        for (i, w) in windows.iter_mut().enumerate() {
            *w = (
                row.try_get_unchecked(3 + 2 * i)?,
                row.try_get_unchecked(4 + 2 * i)?,
            );
        }
        Ok(Totals {
            all_time: row.try_get_unchecked(2)?,
            windows,
            version: row.try_get_unchecked(11)?,
        })
    }

    /// The engine's counters of `event`: all time, and each window that may still be
    /// current at `now`.
    pub(super) fn counters<'a>(
        &'a self,
        event: &'a Arc<str>,
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = UsageCounter> + 'a {
        let oldest = now - Duration::days(CURRENT_AT_MOST_DAYS);
        let all_time = UsageCounter {
            event: event.clone(),
            period: MetricPeriod::AllTime,
            month_reset: MonthReset::FirstOfMonth,
            window_start: period::epoch(),
            count: self.all_time,
            version: self.version,
        };
        let windows = WINDOWS.iter().zip(&self.windows).filter_map(
            move |(&(period, month_reset), &(start, count))| {
                let start = start.filter(|s| *s > oldest)?;
                Some(UsageCounter {
                    event: event.clone(),
                    period,
                    month_reset,
                    window_start: start,
                    count,
                    version: self.version,
                })
            },
        );
        std::iter::once(all_time).chain(windows)
    }
}

/// What a group of events adds to one company's counters of one event.
pub(super) struct Delta<'a> {
    pub company_id: &'a str,
    pub event: &'a str,
    pub environment_id: &'a str,
    pub quantity: i64,
    /// The windows' starts at the time of writing, in [`WINDOWS`] order; the billing cycle's
    /// is `None` without a base subscription.
    pub starts: [Option<DateTime<Utc>>; 4],
}

/// The upsert [`add`] runs, written once: per window, [`window_count`]'s rule.
static UPSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO usage_totals AS t (company_id, event_name, environment_id, all_time,
             day_start, day_count, week_start, week_count, month_start, month_count,
             cycle_start, cycle_count)
         SELECT c, e, env, n, d, n, w, n, m, n, b, CASE WHEN b IS NULL THEN 0 ELSE n END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[]) AS x(c, e, env, n, d, w, m, b)
         ON CONFLICT (company_id, event_name) DO UPDATE SET
             all_time = t.all_time + EXCLUDED.all_time,
             {day}, {week}, {month},
             cycle_count = CASE WHEN EXCLUDED.cycle_start IS NULL THEN t.cycle_count
                 ELSE {cycle_count} END,
             cycle_start = GREATEST(t.cycle_start, EXCLUDED.cycle_start),
             version = t.version + 1, updated_at = now()
         RETURNING {COLUMNS}",
        day = window_update("day"),
        week = window_update("week"),
        month = window_update("month"),
        cycle_count = window_count("cycle"),
    )
});

/// Adds `deltas` (sorted by company and event, so that concurrent groups lock rows in the
/// same order) to the counters, one row per delta, and returns the rows as written: per
/// window, a delta for the stored window adds to it, one for a later window starts it over,
/// one for an earlier window (a clock behind another writer's) counts toward all time only.
pub(super) async fn add(
    conn: &mut PgConnection,
    deltas: &[Delta<'_>],
) -> Result<Vec<(String, String, Totals)>, sqlx::Error> {
    let column = |f: fn(&Delta<'_>) -> Option<DateTime<Utc>>| -> Vec<Option<DateTime<Utc>>> {
        deltas.iter().map(f).collect()
    };
    let rows = sqlx::query(&UPSERT)
        .bind(deltas.iter().map(|d| d.company_id).collect::<Vec<_>>())
        .bind(deltas.iter().map(|d| d.event).collect::<Vec<_>>())
        .bind(deltas.iter().map(|d| d.environment_id).collect::<Vec<_>>())
        .bind(deltas.iter().map(|d| d.quantity).collect::<Vec<_>>())
        .bind(column(|d| d.starts[0]))
        .bind(column(|d| d.starts[1]))
        .bind(column(|d| d.starts[2]))
        .bind(column(|d| d.starts[3]))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get_unchecked(0)?,
                row.try_get_unchecked(1)?,
                Totals::read(row)?,
            ))
        })
        .collect()
}

/// The new count of window `w` (`day`, …): added to when the start is the stored one, kept
/// when the stored start is later, started over otherwise (a later window, or none yet).
fn window_count(w: &str) -> String {
    format!(
        "CASE WHEN t.{w}_start = EXCLUDED.{w}_start THEN t.{w}_count + EXCLUDED.{w}_count
              WHEN t.{w}_start > EXCLUDED.{w}_start THEN t.{w}_count
              ELSE EXCLUDED.{w}_count END"
    )
}

fn window_update(w: &str) -> String {
    format!(
        "{w}_count = {}, {w}_start = GREATEST(t.{w}_start, EXCLUDED.{w}_start)",
        window_count(w)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_row_expands_to_all_time_and_its_current_windows() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let day = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
        let stale_week = Utc.with_ymd_and_hms(2026, 9, 6, 0, 0, 0).unwrap();
        let month = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let totals = Totals {
            all_time: 50,
            windows: [
                (Some(day), 3),
                (Some(stale_week), 9),
                (Some(month), 20),
                (None, 0),
            ],
            version: 7,
        };
        let event: Arc<str> = Arc::from("api_call");
        let got: Vec<_> = totals
            .counters(&event, now)
            .map(|c| (c.period, c.month_reset, c.window_start, c.count, c.version))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    MetricPeriod::AllTime,
                    MonthReset::FirstOfMonth,
                    period::epoch(),
                    50,
                    7
                ),
                (
                    MetricPeriod::CurrentDay,
                    MonthReset::FirstOfMonth,
                    day,
                    3,
                    7
                ),
                (
                    MetricPeriod::CurrentMonth,
                    MonthReset::FirstOfMonth,
                    month,
                    20,
                    7
                ),
            ]
        );
    }
}
