//! Metric periods: when a usage counter's current window started and when it resets.
//! All arithmetic is in UTC; there is no daylight saving to worry about.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricPeriod {
    AllTime,
    CurrentDay,
    CurrentWeek,
    CurrentMonth,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MonthReset {
    #[default]
    FirstOfMonth,
    BillingCycle,
}

impl MetricPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricPeriod::AllTime => "all_time",
            MetricPeriod::CurrentDay => "current_day",
            MetricPeriod::CurrentWeek => "current_week",
            MetricPeriod::CurrentMonth => "current_month",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all_time" => MetricPeriod::AllTime,
            "current_day" => MetricPeriod::CurrentDay,
            "current_week" => MetricPeriod::CurrentWeek,
            "current_month" => MetricPeriod::CurrentMonth,
            _ => return None,
        })
    }
}

impl MonthReset {
    pub fn as_str(self) -> &'static str {
        match self {
            MonthReset::FirstOfMonth => "first_of_month",
            MonthReset::BillingCycle => "billing_cycle",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "first_of_month" => MonthReset::FirstOfMonth,
            "billing_cycle" => MonthReset::BillingCycle,
            _ => return None,
        })
    }
}

/// The window a counter covers at `now`: `[start, end)`. `all_time` has no end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

/// The start of time for `all_time` counters.
pub fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// The current window of `period` at `now`. `billing_anchor` is the subscription's period
/// start; it only matters for `current_month` with `billing_cycle`, and without one the
/// calendar month applies.
pub fn window(
    period: MetricPeriod,
    reset: MonthReset,
    billing_anchor: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Window {
    match period {
        MetricPeriod::AllTime => Window {
            start: epoch(),
            end: None,
        },
        MetricPeriod::CurrentDay => {
            let start = midnight(now.date_naive());
            Window {
                start,
                end: Some(start + Duration::days(1)),
            }
        }
        MetricPeriod::CurrentWeek => {
            let back = now.weekday().num_days_from_sunday() as i64;
            let start = midnight(now.date_naive() - Duration::days(back));
            Window {
                start,
                end: Some(start + Duration::days(7)),
            }
        }
        MetricPeriod::CurrentMonth => match (reset, billing_anchor) {
            (MonthReset::BillingCycle, Some(anchor)) => billing_month(anchor, now),
            _ => {
                let start = midnight(first_of_month(now.year(), now.month()));
                let (ny, nm) = next_month(now.year(), now.month());
                Window {
                    start,
                    end: Some(midnight(first_of_month(ny, nm))),
                }
            }
        },
    }
}

/// Monthly windows anchored on `anchor`'s day and time of day, clamped to the month's last
/// day (an anchor on the 31st resets on Feb 28/29, then on Mar 31), as Stripe bills.
fn billing_month(anchor: DateTime<Utc>, now: DateTime<Utc>) -> Window {
    let at = |y: i32, m: u32| -> DateTime<Utc> {
        let day = anchor.day().min(days_in_month(y, m));
        let date = NaiveDate::from_ymd_opt(y, m, day).unwrap_or_else(|| first_of_month(y, m));
        let t = date
            .and_hms_opt(anchor.hour(), anchor.minute(), anchor.second())
            .unwrap_or_else(|| date.and_hms_opt(0, 0, 0).unwrap_or_default());
        Utc.from_utc_datetime(&t)
    };
    let (mut y, mut m) = (now.year(), now.month());
    let mut start = at(y, m);
    if start > now {
        (y, m) = prev_month(y, m);
        start = at(y, m);
    }
    let (ny, nm) = next_month(y, m);
    Window {
        start,
        end: Some(at(ny, nm)),
    }
}

/// How often a plan's credits are granted anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetCadence {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl ResetCadence {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "daily" => ResetCadence::Daily,
            "weekly" => ResetCadence::Weekly,
            "monthly" => ResetCadence::Monthly,
            "yearly" => ResetCadence::Yearly,
            _ => return None,
        })
    }
}

/// Where credit periods start: on the calendar, or on the billing period's anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetStart {
    BillingPeriod,
    FirstOfMonth,
}

impl ResetStart {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "billing_period" => ResetStart::BillingPeriod,
            "first_of_month" => ResetStart::FirstOfMonth,
            _ => return None,
        })
    }
}

/// The credit period containing `now`. Calendar periods (`first_of_month`) start at midnight,
/// on Sunday, on the 1st, or on January 1st; billing periods start on `anchor` (the
/// subscription's period start, or the membership's start without one) and repeat every day,
/// week, month (clamped to short months) or year from it.
pub fn credit_period(
    cadence: ResetCadence,
    start: ResetStart,
    anchor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Window {
    match (start, cadence) {
        (ResetStart::FirstOfMonth, ResetCadence::Daily) => window(
            MetricPeriod::CurrentDay,
            MonthReset::FirstOfMonth,
            None,
            now,
        ),
        (ResetStart::FirstOfMonth, ResetCadence::Weekly) => window(
            MetricPeriod::CurrentWeek,
            MonthReset::FirstOfMonth,
            None,
            now,
        ),
        (ResetStart::FirstOfMonth, ResetCadence::Monthly) => window(
            MetricPeriod::CurrentMonth,
            MonthReset::FirstOfMonth,
            None,
            now,
        ),
        (ResetStart::FirstOfMonth, ResetCadence::Yearly) => {
            let start = midnight(NaiveDate::from_ymd_opt(now.year(), 1, 1).unwrap_or_default());
            let end = midnight(NaiveDate::from_ymd_opt(now.year() + 1, 1, 1).unwrap_or_default());
            Window {
                start,
                end: Some(end),
            }
        }
        (ResetStart::BillingPeriod, ResetCadence::Daily | ResetCadence::Weekly) => {
            let step = if cadence == ResetCadence::Daily {
                Duration::days(1)
            } else {
                Duration::days(7)
            };
            let n = (now - anchor).num_seconds().div_euclid(step.num_seconds());
            let start = anchor + step * (n as i32);
            Window {
                start,
                end: Some(start + step),
            }
        }
        (ResetStart::BillingPeriod, ResetCadence::Monthly) => billing_month(anchor, now),
        (ResetStart::BillingPeriod, ResetCadence::Yearly) => {
            let at = |y: i32| -> DateTime<Utc> {
                let day = anchor.day().min(days_in_month(y, anchor.month()));
                let date = NaiveDate::from_ymd_opt(y, anchor.month(), day).unwrap_or_default();
                let t = date
                    .and_hms_opt(anchor.hour(), anchor.minute(), anchor.second())
                    .unwrap_or_default();
                Utc.from_utc_datetime(&t)
            };
            let mut y = now.year();
            if at(y) > now {
                y -= 1;
            }
            Window {
                start: at(y),
                end: Some(at(y + 1)),
            }
        }
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

fn first_of_month(y: i32, m: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or_default()
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn prev_month(y: i32, m: u32) -> (i32, u32) {
    if m == 1 {
        (y - 1, 12)
    } else {
        (y, m - 1)
    }
}

pub fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = next_month(y, m);
    (first_of_month(ny, nm) - first_of_month(y, m)).num_days() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn w(p: MetricPeriod, r: MonthReset, anchor: Option<&str>, now: &str) -> (String, String) {
        let win = window(p, r, anchor.map(t), t(now));
        (
            win.start.to_rfc3339(),
            win.end.map(|e| e.to_rfc3339()).unwrap_or_default(),
        )
    }

    #[test]
    fn table() {
        use MetricPeriod::*;
        use MonthReset::*;
        let cases = [
            // day: midnight UTC, including the last second of the day
            (
                CurrentDay,
                FirstOfMonth,
                None,
                "2026-03-14T23:59:59Z",
                "2026-03-14T00:00:00+00:00",
                "2026-03-15T00:00:00+00:00",
            ),
            (
                CurrentDay,
                FirstOfMonth,
                None,
                "2026-03-15T00:00:00Z",
                "2026-03-15T00:00:00+00:00",
                "2026-03-16T00:00:00+00:00",
            ),
            // week: Sunday 00:00 UTC. 2026-11-22 is a Sunday.
            (
                CurrentWeek,
                FirstOfMonth,
                None,
                "2026-11-22T00:00:00Z",
                "2026-11-22T00:00:00+00:00",
                "2026-11-29T00:00:00+00:00",
            ),
            (
                CurrentWeek,
                FirstOfMonth,
                None,
                "2026-11-21T23:59:59Z",
                "2026-11-15T00:00:00+00:00",
                "2026-11-22T00:00:00+00:00",
            ),
            // week across a year boundary
            (
                CurrentWeek,
                FirstOfMonth,
                None,
                "2027-01-01T12:00:00Z",
                "2026-12-27T00:00:00+00:00",
                "2027-01-03T00:00:00+00:00",
            ),
            // calendar month, end of month and December
            (
                CurrentMonth,
                FirstOfMonth,
                None,
                "2026-01-31T23:59:59Z",
                "2026-01-01T00:00:00+00:00",
                "2026-02-01T00:00:00+00:00",
            ),
            (
                CurrentMonth,
                FirstOfMonth,
                None,
                "2026-12-31T10:00:00Z",
                "2026-12-01T00:00:00+00:00",
                "2027-01-01T00:00:00+00:00",
            ),
            // leap day
            (
                CurrentMonth,
                FirstOfMonth,
                None,
                "2028-02-29T12:00:00Z",
                "2028-02-01T00:00:00+00:00",
                "2028-03-01T00:00:00+00:00",
            ),
            (
                CurrentDay,
                FirstOfMonth,
                None,
                "2028-02-29T12:00:00Z",
                "2028-02-29T00:00:00+00:00",
                "2028-03-01T00:00:00+00:00",
            ),
            // billing cycle without a subscription: calendar month
            (
                CurrentMonth,
                BillingCycle,
                None,
                "2026-05-10T00:00:00Z",
                "2026-05-01T00:00:00+00:00",
                "2026-06-01T00:00:00+00:00",
            ),
            // billing cycle anchored on the 31st: clamps to Feb 28, back to Mar 31
            (
                CurrentMonth,
                BillingCycle,
                Some("2026-01-31T09:30:00Z"),
                "2026-02-15T00:00:00Z",
                "2026-01-31T09:30:00+00:00",
                "2026-02-28T09:30:00+00:00",
            ),
            (
                CurrentMonth,
                BillingCycle,
                Some("2026-01-31T09:30:00Z"),
                "2026-03-01T00:00:00Z",
                "2026-02-28T09:30:00+00:00",
                "2026-03-31T09:30:00+00:00",
            ),
            (
                CurrentMonth,
                BillingCycle,
                Some("2026-01-31T09:30:00Z"),
                "2026-03-31T09:30:00Z",
                "2026-03-31T09:30:00+00:00",
                "2026-04-30T09:30:00+00:00",
            ),
            // anchor on the 31st in a leap year
            (
                CurrentMonth,
                BillingCycle,
                Some("2027-12-31T00:00:00Z"),
                "2028-02-28T23:00:00Z",
                "2028-01-31T00:00:00+00:00",
                "2028-02-29T00:00:00+00:00",
            ),
            (
                CurrentMonth,
                BillingCycle,
                Some("2027-12-31T00:00:00Z"),
                "2028-02-29T23:00:00Z",
                "2028-02-29T00:00:00+00:00",
                "2028-03-31T00:00:00+00:00",
            ),
            (
                CurrentMonth,
                BillingCycle,
                Some("2027-12-31T00:00:00Z"),
                "2028-03-01T00:00:00Z",
                "2028-02-29T00:00:00+00:00",
                "2028-03-31T00:00:00+00:00",
            ),
            // anchor mid-month, just before the anniversary instant
            (
                CurrentMonth,
                BillingCycle,
                Some("2026-06-15T12:00:00Z"),
                "2026-08-15T11:59:59Z",
                "2026-07-15T12:00:00+00:00",
                "2026-08-15T12:00:00+00:00",
            ),
            // anniversary across the year boundary
            (
                CurrentMonth,
                BillingCycle,
                Some("2026-06-20T00:00:00Z"),
                "2027-01-05T00:00:00Z",
                "2026-12-20T00:00:00+00:00",
                "2027-01-20T00:00:00+00:00",
            ),
        ];
        for (p, r, anchor, now, start, end) in cases {
            assert_eq!(
                w(p, r, anchor, now),
                (start.to_string(), end.to_string()),
                "{p:?} {r:?} {anchor:?} {now}"
            );
        }
        let all = window(AllTime, FirstOfMonth, None, t("2026-01-01T00:00:00Z"));
        assert_eq!(
            all,
            Window {
                start: epoch(),
                end: None
            }
        );
    }

    #[test]
    fn credit_periods() {
        use ResetCadence::*;
        use ResetStart::*;
        let anchor = t("2026-01-31T09:30:00Z");
        let cases = [
            (
                Monthly,
                BillingPeriod,
                "2026-02-28T09:29:59Z",
                "2026-01-31T09:30:00+00:00",
                "2026-02-28T09:30:00+00:00",
            ),
            (
                Monthly,
                BillingPeriod,
                "2026-03-01T00:00:00Z",
                "2026-02-28T09:30:00+00:00",
                "2026-03-31T09:30:00+00:00",
            ),
            (
                Monthly,
                FirstOfMonth,
                "2026-03-01T00:00:00Z",
                "2026-03-01T00:00:00+00:00",
                "2026-04-01T00:00:00+00:00",
            ),
            (
                Yearly,
                BillingPeriod,
                "2027-01-31T09:29:00Z",
                "2026-01-31T09:30:00+00:00",
                "2027-01-31T09:30:00+00:00",
            ),
            (
                Yearly,
                FirstOfMonth,
                "2027-06-01T00:00:00Z",
                "2027-01-01T00:00:00+00:00",
                "2028-01-01T00:00:00+00:00",
            ),
            (
                Daily,
                BillingPeriod,
                "2026-02-02T09:29:59Z",
                "2026-02-01T09:30:00+00:00",
                "2026-02-02T09:30:00+00:00",
            ),
            (
                Weekly,
                BillingPeriod,
                "2026-02-07T09:30:00Z",
                "2026-02-07T09:30:00+00:00",
                "2026-02-14T09:30:00+00:00",
            ),
            (
                Weekly,
                FirstOfMonth,
                "2026-11-22T00:00:00Z",
                "2026-11-22T00:00:00+00:00",
                "2026-11-29T00:00:00+00:00",
            ),
        ];
        for (cadence, start, now, ws, we) in cases {
            let w = credit_period(cadence, start, anchor, t(now));
            assert_eq!(
                (w.start.to_rfc3339(), w.end.unwrap().to_rfc3339()),
                (ws.to_string(), we.to_string()),
                "{cadence:?} {start:?} {now}"
            );
        }
        // A yearly anchor on Feb 29 falls on Feb 28 in common years.
        let w = credit_period(
            Yearly,
            BillingPeriod,
            t("2028-02-29T00:00:00Z"),
            t("2029-03-01T00:00:00Z"),
        );
        assert_eq!(w.start.to_rfc3339(), "2029-02-28T00:00:00+00:00");
    }

    proptest! {
        #[test]
        fn credit_periods_contain_now(
            now_s in 946_684_800i64..4_102_444_800i64,
            anchor_s in 946_684_800i64..4_102_444_800i64,
            cadence in prop_oneof![Just(ResetCadence::Daily), Just(ResetCadence::Weekly), Just(ResetCadence::Monthly), Just(ResetCadence::Yearly)],
            start in prop_oneof![Just(ResetStart::BillingPeriod), Just(ResetStart::FirstOfMonth)],
        ) {
            let now = DateTime::from_timestamp(now_s, 0).unwrap();
            let anchor = DateTime::from_timestamp(anchor_s, 0).unwrap();
            let w = credit_period(cadence, start, anchor, now);
            prop_assert!(w.start <= now && now < w.end.unwrap());
            prop_assert_eq!(credit_period(cadence, start, anchor, w.start), w);
        }

        #[test]
        fn now_is_inside_its_window(
            now_s in 946_684_800i64..4_102_444_800i64,
            anchor_s in 946_684_800i64..4_102_444_800i64,
            period in prop_oneof![Just(MetricPeriod::CurrentDay), Just(MetricPeriod::CurrentWeek), Just(MetricPeriod::CurrentMonth)],
            reset in prop_oneof![Just(MonthReset::FirstOfMonth), Just(MonthReset::BillingCycle)],
        ) {
            let now = DateTime::from_timestamp(now_s, 0).unwrap();
            let anchor = DateTime::from_timestamp(anchor_s, 0);
            let win = window(period, reset, anchor, now);
            let end = win.end.unwrap();
            prop_assert!(win.start <= now && now < end);
            // The window is stable: asking at its start or just before its end gives the same one.
            prop_assert_eq!(window(period, reset, anchor, win.start), win);
            prop_assert_eq!(window(period, reset, anchor, end - Duration::seconds(1)), win);
            // Windows are between 1 and 31 days long.
            let len = (end - win.start).num_days();
            prop_assert!((1..=31).contains(&len));
        }
    }
}
