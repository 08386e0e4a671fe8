//! Budget periods: which `[start, end)` window of Unix seconds a moment belongs to, for each
//! [`BudgetDuration`].
//!
//! Pure arithmetic on timestamps (UTC, proleptic Gregorian calendar); nothing here reads the
//! clock, so callers pass the moment (`at`) and, for rolling windows, the entity's creation
//! time (`anchor`).
//!
//! - `1d`: calendar days, from midnight UTC.
//! - `7d`: calendar weeks, from Monday 00:00 UTC.
//! - `1mo`: calendar months, from the 1st at 00:00 UTC (so 28 to 31 days long).
//! - `30d`: rolling 30-day windows counted from `anchor`: `anchor + k·30d` for the integer
//!   `k` (negative before the anchor) that puts `at` inside.
//!
//! Entities with a budget but no `budget_duration`, and spend of entities without one, use
//! [`DEFAULT_DURATION`] (`1mo`), see [`effective`].
//!
//! Every `i64` is accepted: bounds that fall outside the `i64` range are clamped to it (only
//! for moments within a month of `i64::MIN`/`i64::MAX` seconds, hundreds of billions of years
//! away).

use crate::domain::BudgetDuration;

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// The period used when an entity has no `budget_duration`: calendar months.
pub const DEFAULT_DURATION: BudgetDuration = BudgetDuration::Month;

/// The duration an entity's spend is kept in: its own, else [`DEFAULT_DURATION`].
pub fn effective(duration: Option<BudgetDuration>) -> BudgetDuration {
    duration.unwrap_or(DEFAULT_DURATION)
}

/// The `[start, end)` of the budget period of `duration` that contains `at` (Unix seconds,
/// UTC). `anchor` (the entity's `created_at`) only matters for `30d`.
///
/// Always `start <= at < end`, except where `end` is clamped to `i64::MAX` (see the module
/// docs).
pub fn window(duration: BudgetDuration, at: i64, anchor: i64) -> (i64, i64) {
    let at = i128::from(at);
    let (start, end) = match duration {
        BudgetDuration::Day => {
            let start = floor_to(at, DAY.into(), 0);
            (start, start + i128::from(DAY))
        }
        BudgetDuration::Week => {
            // 1970-01-05 (day 4 of the epoch) was a Monday.
            let start = floor_to(at, (7 * DAY).into(), (4 * DAY).into());
            (start, start + i128::from(7 * DAY))
        }
        BudgetDuration::ThirtyDays => {
            let start = floor_to(at, (30 * DAY).into(), anchor.into());
            (start, start + i128::from(30 * DAY))
        }
        BudgetDuration::Month => {
            let day = at.div_euclid(DAY.into());
            let (year, month, _) = civil_from_days(day);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            (
                days_from_civil(year, month, 1) * i128::from(DAY),
                days_from_civil(next_year, next_month, 1) * i128::from(DAY),
            )
        }
    };
    (clamp(start), clamp(end))
}

/// The largest `origin + k·step <= at`.
fn floor_to(at: i128, step: i128, origin: i128) -> i128 {
    origin + (at - origin).div_euclid(step) * step
}

fn clamp(t: i128) -> i64 {
    i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX })
}

/// (year, month 1–12, day 1–31) of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

/// The day number (days since 1970-01-01) of a date, after Howard Hinnant's
/// `days_from_civil`.
fn days_from_civil(year: i128, month: i128, day: i128) -> i128 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400); // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate};
    use BudgetDuration::{Day, Month, ThirtyDays, Week};

    /// Unix seconds of an RFC 3339 time.
    fn t(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .timestamp()
    }

    fn w(duration: BudgetDuration, at: &str, anchor: &str) -> (i64, i64) {
        window(duration, t(at), t(anchor))
    }

    fn span(start: &str, end: &str) -> (i64, i64) {
        (t(start), t(end))
    }

    const ANY: &str = "2000-01-01T00:00:00Z";

    #[test]
    fn days_start_at_midnight_utc() {
        let day = span("2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z");
        assert_eq!(w(Day, "2026-11-24T00:00:00Z", ANY), day);
        assert_eq!(w(Day, "2026-11-24T13:37:00Z", ANY), day);
        assert_eq!(w(Day, "2026-11-24T23:59:59Z", ANY), day);
        assert_eq!(
            w(Day, "2026-11-25T00:00:00Z", ANY),
            span("2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z")
        );
        // Offsets are read as the UTC moment they name.
        assert_eq!(
            w(Day, "2026-11-24T23:30:00-05:00", ANY),
            (day.1, day.1 + DAY)
        );
        // The anchor does not matter.
        assert_eq!(window(Day, t("2026-11-24T13:37:00Z"), 12_345), day);
    }

    #[test]
    fn day_at_leap_day_and_year_end() {
        assert_eq!(
            w(Day, "2024-02-29T12:00:00Z", ANY),
            span("2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z")
        );
        assert_eq!(
            w(Day, "2026-12-31T23:59:59Z", ANY),
            span("2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-23 is a Monday, 2026-11-29 a Sunday.
        let week = span("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z");
        assert_eq!(w(Week, "2026-11-23T00:00:00Z", ANY), week);
        assert_eq!(w(Week, "2026-11-24T10:00:00Z", ANY), week);
        assert_eq!(w(Week, "2026-11-29T23:59:59Z", ANY), week);
        // Sunday → Monday is the boundary.
        assert_eq!(
            w(Week, "2026-11-30T00:00:00Z", ANY),
            span("2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z")
        );
        assert_eq!(
            w(Week, "2026-11-22T23:59:59Z", ANY),
            span("2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z")
        );
        // Across a year end: Monday 2024-12-30 to Monday 2025-01-06.
        assert_eq!(
            w(Week, "2025-01-01T08:00:00Z", ANY),
            span("2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z")
        );
        // The epoch was a Thursday: its week started on Monday 1969-12-29.
        assert_eq!(
            window(Week, 0, 0),
            span("1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z")
        );
    }

    #[test]
    fn every_week_starts_on_a_monday_and_lasts_seven_days() {
        let mut at = t("1969-06-01T05:00:00Z");
        while at < t("1971-06-01T00:00:00Z") {
            let (start, end) = window(Week, at, 0);
            assert!(start <= at && at < end, "{at}");
            assert_eq!(end - start, 7 * DAY);
            let monday = chrono::DateTime::from_timestamp(start, 0).unwrap();
            assert_eq!(monday.weekday(), chrono::Weekday::Mon, "{at}");
            assert_eq!(start % DAY, 0);
            at += 7 * 3600 + 13;
        }
    }

    #[test]
    fn months_start_on_the_first() {
        let november = span("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
        assert_eq!(w(Month, "2026-11-01T00:00:00Z", ANY), november);
        assert_eq!(w(Month, "2026-11-24T10:00:00Z", ANY), november);
        assert_eq!(w(Month, "2026-11-30T23:59:59Z", ANY), november);
        assert_eq!(
            w(Month, "2026-12-31T23:59:59Z", ANY),
            span("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        );
        assert_eq!(
            w(Month, "2027-01-01T00:00:00Z", ANY),
            span("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z")
        );
        // 31-day months end on the 31st.
        assert_eq!(
            w(Month, "2026-01-31T23:59:59Z", ANY),
            span("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        );
        // The anchor does not matter.
        assert_eq!(window(Month, t("2026-11-24T10:00:00Z"), -99), november);
    }

    #[test]
    fn february_in_leap_and_common_years() {
        // 2024: leap (divisible by 4).
        assert_eq!(
            w(Month, "2024-02-29T23:59:59Z", ANY),
            span("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")
        );
        assert_eq!(
            w(Month, "2024-03-01T00:00:00Z", ANY),
            span("2024-03-01T00:00:00Z", "2024-04-01T00:00:00Z")
        );
        let (start, end) = w(Month, "2024-02-10T00:00:00Z", ANY);
        assert_eq!(end - start, 29 * DAY);
        // 2026: common.
        let (start, end) = w(Month, "2026-02-28T23:59:59Z", ANY);
        assert_eq!(
            (start, end),
            span("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z")
        );
        assert_eq!(end - start, 28 * DAY);
        // 1900: divisible by 100, not a leap year; 2000: divisible by 400, a leap year.
        let (start, end) = w(Month, "1900-02-15T00:00:00Z", ANY);
        assert_eq!(end - start, 28 * DAY);
        let (start, end) = w(Month, "2000-02-15T00:00:00Z", ANY);
        assert_eq!(end - start, 29 * DAY);
        assert_eq!(
            w(Month, "2100-02-28T12:00:00Z", ANY),
            span("2100-02-01T00:00:00Z", "2100-03-01T00:00:00Z")
        );
    }

    #[test]
    fn months_match_the_calendar_over_centuries() {
        // Every day from 1899 to 2101 (noon), against chrono's calendar.
        let mut date = NaiveDate::from_ymd_opt(1899, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(2101, 12, 31).unwrap();
        while date <= last {
            let at = date.and_hms_opt(12, 0, 0).unwrap().and_utc().timestamp();
            let first = date.with_day(1).unwrap();
            let next = first.checked_add_months(chrono::Months::new(1)).unwrap();
            let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
            assert_eq!(
                window(Month, at, 0),
                (midnight(first), midnight(next)),
                "{date}"
            );
            date = date.succ_opt().unwrap();
        }
    }

    #[test]
    fn thirty_days_roll_from_the_anchor() {
        let anchor = "2026-11-10T15:20:00Z";
        let first = span("2026-11-10T15:20:00Z", "2026-12-10T15:20:00Z");
        assert_eq!(w(ThirtyDays, "2026-11-10T15:20:00Z", anchor), first);
        assert_eq!(w(ThirtyDays, "2026-11-24T00:00:00Z", anchor), first);
        assert_eq!(w(ThirtyDays, "2026-12-10T15:19:59Z", anchor), first);
        assert_eq!(
            w(ThirtyDays, "2026-12-10T15:20:00Z", anchor),
            span("2026-12-10T15:20:00Z", "2027-01-09T15:20:00Z")
        );
        // Not calendar months: the third window starts on 2027-01-09.
        assert_eq!(
            w(ThirtyDays, "2027-01-09T15:20:00Z", anchor),
            span("2027-01-09T15:20:00Z", "2027-02-08T15:20:00Z")
        );
        // Far after the anchor: window 100.
        let a = t(anchor);
        assert_eq!(
            window(ThirtyDays, a + 100 * 30 * DAY + 5, a),
            (a + 100 * 30 * DAY, a + 101 * 30 * DAY)
        );
    }

    #[test]
    fn thirty_days_before_the_anchor() {
        let anchor = t("2026-11-10T15:20:00Z");
        assert_eq!(
            window(ThirtyDays, anchor - 1, anchor),
            (anchor - 30 * DAY, anchor)
        );
        assert_eq!(
            window(ThirtyDays, anchor - 30 * DAY, anchor),
            (anchor - 30 * DAY, anchor)
        );
        assert_eq!(
            window(ThirtyDays, anchor - 30 * DAY - 1, anchor),
            (anchor - 60 * DAY, anchor - 30 * DAY)
        );
    }

    #[test]
    fn thirty_days_across_a_leap_day() {
        // 2024-02-15 + 30 days = 2024-03-16 (February 2024 has 29 days).
        assert_eq!(
            w(ThirtyDays, "2024-03-01T00:00:00Z", "2024-02-15T00:00:00Z"),
            span("2024-02-15T00:00:00Z", "2024-03-16T00:00:00Z")
        );
        // The same in 2023: 2023-02-15 + 30 days = 2023-03-17.
        assert_eq!(
            w(ThirtyDays, "2023-03-01T00:00:00Z", "2023-02-15T00:00:00Z"),
            span("2023-02-15T00:00:00Z", "2023-03-17T00:00:00Z")
        );
    }

    #[test]
    fn negative_timestamps() {
        // Before the epoch, periods still floor (toward the past), not truncate.
        assert_eq!(window(Day, -1, 0), (-DAY, 0));
        assert_eq!(window(Day, -DAY, 0), (-DAY, 0));
        assert_eq!(window(Day, -DAY - 1, 0), (-2 * DAY, -DAY));
        assert_eq!(
            window(Month, -1, 0),
            span("1969-12-01T00:00:00Z", "1970-01-01T00:00:00Z")
        );
        assert_eq!(
            w(Month, "1969-02-28T23:59:59Z", ANY),
            span("1969-02-01T00:00:00Z", "1969-03-01T00:00:00Z")
        );
        assert_eq!(
            window(Week, -1, 0),
            span("1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z")
        );
        // 1969-12-29 (a Monday) itself.
        assert_eq!(
            window(Week, t("1969-12-28T23:59:59Z"), 0),
            span("1969-12-22T00:00:00Z", "1969-12-29T00:00:00Z")
        );
        assert_eq!(window(ThirtyDays, -1, 0), (-30 * DAY, 0));
        assert_eq!(window(ThirtyDays, 0, -10), (-10, -10 + 30 * DAY));
        // Leap day 1968, before the epoch.
        assert_eq!(
            w(Month, "1968-02-29T06:00:00Z", ANY),
            span("1968-02-01T00:00:00Z", "1968-03-01T00:00:00Z")
        );
    }

    #[test]
    fn exact_boundaries_belong_to_the_period_they_start() {
        for duration in [Day, Week, Month, ThirtyDays] {
            let anchor = t("2026-03-03T03:03:03Z");
            let (start, end) = window(duration, t("2026-11-24T10:00:00Z"), anchor);
            assert_eq!(window(duration, start, anchor), (start, end), "{duration}");
            assert_eq!(
                window(duration, end - 1, anchor),
                (start, end),
                "{duration}"
            );
            let (next_start, _) = window(duration, end, anchor);
            assert_eq!(next_start, end, "{duration}");
            let (_, previous_end) = window(duration, start - 1, anchor);
            assert_eq!(previous_end, start, "{duration}");
        }
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        for duration in [Day, Week, Month, ThirtyDays] {
            for (at, anchor) in [
                (i64::MAX, 0),
                (i64::MIN, 0),
                (i64::MAX, i64::MIN),
                (i64::MIN, i64::MAX),
                (0, i64::MIN),
                (0, i64::MAX),
            ] {
                let (start, end) = window(duration, at, anchor);
                assert!(start <= at, "{duration} {at} {anchor}");
                assert!(at < end || end == i64::MAX, "{duration} {at} {anchor}");
            }
        }
        assert_eq!(window(Day, i64::MAX, 0).1, i64::MAX);
        assert_eq!(window(Day, i64::MIN, 0).0, i64::MIN);
        // A year far away still has calendar months.
        let (start, end) = window(Month, t("9999-12-31T23:59:59Z"), 0);
        assert_eq!(start, t("9999-12-01T00:00:00Z"));
        assert_eq!(end, start + 31 * DAY);
    }

    #[test]
    fn default_duration_is_a_calendar_month() {
        assert_eq!(DEFAULT_DURATION, Month);
        assert_eq!(effective(None), Month);
        assert_eq!(effective(Some(Day)), Day);
        assert_eq!(effective(Some(ThirtyDays)), ThirtyDays);
    }
}
