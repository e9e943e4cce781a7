//! Parsing the time values found in interaction logs into unix seconds (UTC).
//!
//! Hand-written rather than pulled from a date crate: logs only use unix seconds, `YYYY-MM-DD`
//! and ISO-like date-times, and this sits on the per-line hot path.

/// A parsed time: unix seconds, and whether the text was a bare date (midnight UTC), which the
/// reader needs to know to refine DIGINETICA's `eventdate` with its `timeframe` column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ParsedTime {
    pub secs: f64,
    pub date_only: bool,
}

/// Parses a number of unix seconds (float allowed), `YYYY-MM-DD`, or
/// `YYYY-MM-DD[T ]HH:MM:SS[.fff][Z]`; `None` for anything else or a non-finite number.
pub(crate) fn parse_time(text: &str) -> Option<ParsedTime> {
    let s = text.trim();
    let b = s.as_bytes();
    // A date always has '-' at index 4; a number never does (a sign is only at index 0).
    if b.len() >= 10 && b[4] == b'-' {
        return parse_datetime(b);
    }
    let secs: f64 = s.parse().ok()?;
    secs.is_finite().then_some(ParsedTime {
        secs,
        date_only: false,
    })
}

fn parse_datetime(b: &[u8]) -> Option<ParsedTime> {
    if b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = days_from_civil(year, month, day) as f64 * 86_400.0;
    if b.len() == 10 {
        return Some(ParsedTime {
            secs: midnight,
            date_only: true,
        });
    }
    let mut rest = &b[10..];
    if rest.last() == Some(&b'Z') {
        rest = &rest[..rest.len() - 1];
    }
    // rest is now "THH:MM:SS" or " HH:MM:SS", optionally followed by ".fff".
    if rest.len() < 9 || !(rest[0] == b'T' || rest[0] == b' ') || rest[3] != b':' || rest[6] != b':'
    {
        return None;
    }
    let hour = digits(&rest[1..3])?;
    let minute = digits(&rest[4..6])?;
    let second = digits(&rest[7..9])?;
    // 60 allows a leap second as written in some logs.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut fraction = 0.0;
    let frac = &rest[9..];
    if !frac.is_empty() {
        if frac[0] != b'.' || frac.len() == 1 || !frac[1..].iter().all(u8::is_ascii_digit) {
            return None;
        }
        // The digits are ASCII, so this is valid UTF-8 and a valid float literal.
        fraction = std::str::from_utf8(&frac[1..])
            .ok()
            .and_then(|d| format!("0.{d}").parse().ok())?;
    }
    Some(ParsedTime {
        secs: midnight + f64::from(hour * 3600 + minute * 60 + second) + fraction,
        date_only: false,
    })
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Option<f64> {
        parse_time(s).map(|t| t.secs)
    }

    #[test]
    fn numbers_are_unix_seconds() {
        assert_eq!(secs("881250949"), Some(881_250_949.0));
        assert_eq!(secs("1396860669.277"), Some(1_396_860_669.277));
        assert_eq!(secs(" 12 "), Some(12.0));
        assert_eq!(secs("inf"), None);
        assert_eq!(secs("NaN"), None);
        assert_eq!(secs("abc"), None);
        assert_eq!(secs(""), None);
    }

    #[test]
    fn dates_and_datetimes_are_utc() {
        let d = parse_time("2016-05-09").unwrap();
        assert!(d.date_only);
        assert_eq!(d.secs, 1_462_752_000.0);
        assert_eq!(secs("1970-01-01"), Some(0.0));
        assert_eq!(secs("2000-02-29"), Some(951_782_400.0));
        assert_eq!(secs("2014-04-07T08:51:09.277Z"), Some(1_396_860_669.277));
        assert_eq!(secs("2014-04-07 08:51:09"), Some(1_396_860_669.0));
        assert!(!parse_time("2014-04-07T08:51:09").unwrap().date_only);
        assert_eq!(secs("1969-12-31T23:59:59Z"), Some(-1.0));
    }

    #[test]
    fn malformed_dates_are_rejected() {
        for bad in [
            "2001-02-29",
            "2016-13-01",
            "2016-00-10",
            "2016-05-9",
            "2016/05/09",
            "2016-05-09T25:00:00",
            "2016-05-09T10:00",
            "2016-05-09T10:00:00.",
            "2016-05-09T10:00:00+01:00",
            "2016-05-09X",
        ] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }
}
