//! UTC timestamps without a date crate: RFC 3339 strings for manifests and the compact form used as
//! bundle version names.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 UTC with milliseconds: `0` → `1970-01-01T00:00:00.000Z`.
pub fn format_rfc3339_ms(unix_ms: u64) -> String {
    let t = Civil::from_unix_ms(unix_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

/// The compact UTC form used as a bundle version: `20261126T101500123Z`. Fixed width (until year
/// 10000), so versions of one writer sort lexicographically in time order.
pub fn format_version_stamp(unix_ms: u64) -> String {
    let t = Civil::from_unix_ms(unix_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    milli: u64,
}

impl Civil {
    fn from_unix_ms(unix_ms: u64) -> Civil {
        const MS_PER_DAY: u64 = 86_400_000;
        let days = unix_ms / MS_PER_DAY;
        let ms_of_day = unix_ms % MS_PER_DAY;
        // u64 ms / day fits i64 days comfortably (~2.1e11).
        let (year, month, day) = civil_from_days(days as i64);
        Civil {
            year,
            month,
            day,
            hour: ms_of_day / 3_600_000,
            minute: ms_of_day / 60_000 % 60,
            second: ms_of_day / 1000 % 60,
            milli: ms_of_day % 1000,
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days` (public domain): shift the year to start in March so the leap
/// day is the last day of the year, then count 400-year eras of 146097 days.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) in the proleptic Gregorian calendar → days since 1970-01-01; the inverse of
/// [`civil_from_days`] (Hinnant's `days_from_civil`). The caller checks that the day exists.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // [0, 11], March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_version_stamp(0), "19700101T000000000Z");
    }

    #[test]
    fn leap_day_2024() {
        // `date -u -d @1709210096` → Thu Feb 29 12:34:56 UTC 2024.
        let ms = 1_709_210_096_789;
        assert_eq!(format_rfc3339_ms(ms), "2024-02-29T12:34:56.789Z");
        assert_eq!(format_version_stamp(ms), "20240229T123456789Z");
        // The next day is March 1st, not February 30th.
        assert_eq!(
            format_rfc3339_ms(ms + 86_400_000),
            "2024-03-01T12:34:56.789Z"
        );
    }

    #[test]
    fn year_ends_and_century_rules() {
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_767_225_599_999),
            "2025-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_767_225_600_000),
            "2026-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn now_is_after_2024() {
        assert!(now_unix_ms() > 1_704_067_200_000);
    }
}
