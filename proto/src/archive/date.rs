//! UTC calendar days: the archive's partition key (`date=YYYY-MM-DD`) and the `--since/--until`
//! bounds of a training run, without a date crate.

use std::fmt;
use std::str::FromStr;

use super::ArchiveError;
use crate::bundle::time::{civil_from_days, days_from_civil};

const MS_PER_DAY: i64 = 86_400_000;

/// One UTC day, as days since 1970-01-01. Only years 0000–9999 exist here, so that every date has
/// one fixed-width `YYYY-MM-DD` form and partitions sort by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(i32);

impl Date {
    /// 0000-01-01.
    pub const MIN: Date = Date(-719_528);
    /// 9999-12-31.
    pub const MAX: Date = Date(2_932_896);

    /// The UTC day of a Unix-epoch millisecond time. Times before year 0 or after 9999 (a client's
    /// clock gone wrong) fall into [`Date::MIN`] / [`Date::MAX`]: the row keeps its time, only its
    /// partition is clamped.
    pub fn from_unix_ms(ms: i64) -> Date {
        let days = ms.div_euclid(MS_PER_DAY);
        Date(days.clamp(i64::from(Date::MIN.0), i64::from(Date::MAX.0)) as i32)
    }

    /// Days since 1970-01-01 (negative before).
    pub fn days_since_epoch(self) -> i32 {
        self.0
    }

    /// Unix-epoch ms of this day's first millisecond.
    pub fn start_unix_ms(self) -> i64 {
        i64::from(self.0) * MS_PER_DAY
    }

    /// The next day (saturating at [`Date::MAX`]).
    pub fn succ(self) -> Date {
        Date((self.0 + 1).min(Date::MAX.0))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(i64::from(self.0));
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl FromStr for Date {
    type Err = ArchiveError;

    /// Exactly `YYYY-MM-DD` (the partition form), and a day that exists (no February 30th).
    fn from_str(s: &str) -> Result<Date, ArchiveError> {
        let bad = |reason: &str| ArchiveError::InvalidDate {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
            return Err(bad("expected YYYY-MM-DD"));
        }
        if !digits(5..7) || !digits(8..10) {
            return Err(bad("expected YYYY-MM-DD"));
        }
        // All ASCII digits: the parses cannot fail.
        let year: i64 = s[0..4].parse().unwrap_or_default();
        let month: u32 = s[5..7].parse().unwrap_or_default();
        let day: u32 = s[8..10].parse().unwrap_or_default();
        if !(1..=12).contains(&month) {
            return Err(bad("month must be 01-12"));
        }
        let days = days_from_civil(year, month, day);
        if day == 0 || civil_from_days(days) != (year, month, day) {
            return Err(bad("no such day"));
        }
        Ok(Date(days as i32))
    }
}

/// Inclusive bounds on partition dates; `None` leaves that side open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DateRange {
    pub since: Option<Date>,
    pub until: Option<Date>,
}

impl DateRange {
    /// Every date.
    pub const ALL: DateRange = DateRange {
        since: None,
        until: None,
    };

    /// A range, refusing one that ends before it starts (a swapped pair of flags is a mistake, not
    /// a request for nothing).
    pub fn new(since: Option<Date>, until: Option<Date>) -> Result<DateRange, ArchiveError> {
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(ArchiveError::InvalidRange { since: s, until: u });
        }
        Ok(DateRange { since, until })
    }

    pub fn contains(&self, date: Date) -> bool {
        self.since.is_none_or(|s| date >= s) && self.until.is_none_or(|u| date <= u)
    }
}

impl fmt::Display for DateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.since, self.until) {
            (None, None) => write!(f, "any date"),
            (Some(s), None) => write!(f, "dates from {s}"),
            (None, Some(u)) => write!(f, "dates up to {u}"),
            (Some(s), Some(u)) if s == u => write!(f, "date {s}"),
            (Some(s), Some(u)) => write!(f, "dates {s} to {u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_format_round_trip() {
        for s in [
            "1970-01-01",
            "2024-02-29",
            "2000-02-29",
            "1969-12-31",
            "0000-01-01",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("9999-12-31"), Date::MAX);
        assert_eq!(d("0000-01-01"), Date::MIN);
        assert_eq!(d("1970-01-02").days_since_epoch(), 1);
    }

    #[test]
    fn bad_dates_are_refused_with_the_reason() {
        for (s, why) in [
            ("2024-2-29", "YYYY-MM-DD"),
            ("2024/02/29", "YYYY-MM-DD"),
            ("2024-02-29T00", "YYYY-MM-DD"),
            ("+024-02-29", "YYYY-MM-DD"),
            ("2024-13-01", "month"),
            ("2024-00-01", "month"),
            ("2023-02-29", "no such day"),
            ("2100-02-29", "no such day"),
            ("2024-04-31", "no such day"),
            ("2024-04-00", "no such day"),
        ] {
            let err = s.parse::<Date>().unwrap_err().to_string();
            assert!(err.contains(s) && err.contains(why), "{s}: {err}");
        }
    }

    #[test]
    fn days_of_unix_ms_are_utc_and_clamped() {
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        let ms = d("2024-02-29").start_unix_ms() + 86_399_999;
        assert_eq!(Date::from_unix_ms(ms).to_string(), "2024-02-29");
        assert_eq!(Date::from_unix_ms(ms + 1).to_string(), "2024-03-01");
        assert_eq!(Date::from_unix_ms(-1).to_string(), "1969-12-31");
        assert_eq!(Date::from_unix_ms(i64::MAX), Date::MAX);
        assert_eq!(Date::from_unix_ms(i64::MIN), Date::MIN);
        assert_eq!(Date::MAX.succ(), Date::MAX);
    }

    #[test]
    fn ranges_are_inclusive_and_refuse_swapped_bounds() {
        let r = DateRange::new(Some(d("2024-01-02")), Some(d("2024-01-03"))).unwrap();
        assert!(!r.contains(d("2024-01-01")));
        assert!(r.contains(d("2024-01-02")) && r.contains(d("2024-01-03")));
        assert!(!r.contains(d("2024-01-04")));
        assert!(DateRange::ALL.contains(Date::MIN) && DateRange::ALL.contains(Date::MAX));
        let open = DateRange::new(None, Some(d("2024-01-02"))).unwrap();
        assert!(open.contains(Date::MIN) && !open.contains(d("2024-01-03")));
        let err = DateRange::new(Some(d("2024-01-03")), Some(d("2024-01-02"))).unwrap_err();
        assert!(err.to_string().contains("2024-01-03"), "{err}");
    }
}
