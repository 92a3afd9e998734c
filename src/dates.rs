//! Calendar arithmetic for the few dates kartei reads and writes (RFC 3339 in ingest and creationdate,
//! certificate validity), without a date crate: Howard Hinnant's civil-date algorithms.

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `1970-01-01T00:00:00Z` form of a Unix time.
pub fn format_rfc3339(unix: i64) -> String {
    let (y, mo, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Seconds since the epoch of an RFC 3339 date-time (`2026-11-23T10:00:00Z`, `+01:00` offsets, fractions)
/// or a plain date.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_at(s.find(['T', 't', ' ']).unwrap_or(s.len()));
    let mut parts = date.split('-');
    let (y, m, d): (i64, i64, i64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1..=9999).contains(&y) {
        return None;
    }
    let mut seconds = days_from_civil(y, m, d) * 86_400;
    let rest = rest.get(1..).unwrap_or("");
    if !rest.is_empty() {
        let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let clock = clock.split('.').next()?;
        let mut hms = clock.split(':');
        let h: i64 = hms.next()?.parse().ok()?;
        let min: i64 = hms.next()?.parse().ok()?;
        let sec: i64 = hms.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        if hms.next().is_some() || h > 23 || min > 59 || sec > 60 {
            return None;
        }
        seconds += h * 3600 + min * 60 + sec;
        if let Some(sign) = offset.chars().next().filter(|c| matches!(c, '+' | '-')) {
            let (oh, om) = offset[1..].split_once(':').unwrap_or((offset.get(1..3)?, offset.get(3..).unwrap_or("0")));
            let minutes = oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?;
            seconds -= if sign == '+' { minutes * 60 } else { -minutes * 60 };
        } else if !offset.is_empty() && !offset.eq_ignore_ascii_case("z") {
            return None;
        }
    }
    Some(seconds)
}

/// An HTTP date (RFC 9110 §5.6.7, all three formats) as Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// The IMF-fixdate form of a Unix time (Last-Modified).
pub fn format_http_date(unix: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(parse_http_date(&format_http_date(1_795_000_000)), Some(1_795_000_000));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("yesterday"), None);
        for t in [0, 951_782_400, 1_795_000_000, -86_400 * 400] {
            assert_eq!(parse_timestamp(&format_rfc3339(t)), Some(t), "{t}");
        }
    }
}
