//! Reboot windows as locksmith read them (`REBOOT_WINDOW_START`, `REBOOT_WINDOW_LENGTH`):
//! a start `HH:MM` (daily) or `<day> HH:MM` (weekly, `sun`…`sat`, any case) and a length
//! in Go's duration syntax (`1h30m`), shorter than its period. Times are UTC, the zone
//! CoreOS machines ran in.

/// A window that opens every day or every week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Day of the week (0 = Sunday) for a weekly window.
    day: Option<u8>,
    /// Seconds after midnight.
    at: i64,
    /// Length in seconds (nanoseconds beyond are ignored).
    length: i64,
}

const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Window {
    /// Parses a start and a length, with locksmith's messages.
    pub fn parse(start: &str, length: &str) -> Result<Window, String> {
        let (day, at) = parse_start(start).map_err(|e| format!("unable to parse start: {e}"))?;
        let nanos = parse_duration(length).map_err(|e| format!("unable to parse duration: {e}"))?;
        if nanos < 0 {
            return Err("duration cannot be negative".into());
        }
        let length = i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX);
        let too_long = (day.is_none() && nanos >= i128::from(DAY) * 1_000_000_000)
            || nanos >= i128::from(WEEK) * 1_000_000_000;
        if too_long {
            return Err("duration cannot exceed period".into());
        }
        Ok(Window { day, at, length })
    }

    /// Seconds from `now` (Unix time) to the window: ≤ 0 inside it (how long it has
    /// been open, its closing instant included), else how long until it opens.
    pub fn duration_to_start(&self, now: i64) -> i64 {
        let (period, pos, offset) = match self.day {
            None => (DAY, now.rem_euclid(DAY), self.at),
            // 1970-01-01 was a Thursday: four days after a Sunday.
            Some(d) => (
                WEEK,
                (now + 4 * DAY).rem_euclid(WEEK),
                i64::from(d) * DAY + self.at,
            ),
        };
        let since = (pos - offset).rem_euclid(period);
        let previous = now - since;
        if previous + self.length >= now {
            previous - now
        } else {
            previous + period - now
        }
    }
}

fn parse_start(start: &str) -> Result<(Option<u8>, i64), String> {
    let f: Vec<&str> = start.split_whitespace().collect();
    let (day, time) = match f.as_slice() {
        [t] => (None, *t),
        [d, t] => {
            let lower = d.to_ascii_lowercase();
            let day = DAYS
                .iter()
                .position(|x| *x == lower)
                .ok_or_else(|| format!("invalid day of week {d:?}"))?;
            (u8::try_from(day).ok(), *t)
        }
        _ => return Err("wrong number of fields".into()),
    };
    let bad = |why: &str| format!("invalid time of day {time:?}: {why}");
    let (h, m) = time.split_once(':').ok_or_else(|| bad("unexpected EOF"))?;
    // Go's `%d:%d`: a number, a colon, a number (anything after it is ignored).
    let m_digits: String = m
        .chars()
        .enumerate()
        .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+')))
        .map(|(_, c)| c)
        .collect();
    let hour: i64 = h.parse().map_err(|_| bad("expected integer"))?;
    let minute: i64 = m_digits.parse().map_err(|_| bad("expected integer"))?;
    if !(0..=23).contains(&hour) {
        return Err(bad("hour must be >= 0 and <= 23"));
    }
    if !(0..=59).contains(&minute) {
        return Err(bad("minute must be >= 0 and <= 59"));
    }
    Ok((day, hour * 3600 + minute * 60))
}

/// Go's `time.ParseDuration`, in nanoseconds: `[-+]` then one or more
/// `<decimal><unit>` with units `ns us µs ms s m h`; `0` alone is allowed.
pub fn parse_duration(s: &str) -> Result<i128, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(bad)?;
        let mut div = 1i128;
        for c in frac.chars().take(18) {
            div *= 10;
            part += i128::from(c.to_digit(10).unwrap_or(0)) * scale / div;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > i128::from(i64::MAX) {
            return Err(bad());
        }
        rest = tail;
    }
    Ok(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix time of a UTC date and time (days from civil, Howard Hinnant's algorithm).
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146_097 + doe - 719_468) * DAY + h * 3600 + mi * 60 + s
    }

    #[test]
    fn locksmiths_vectors() {
        let h = 3600;
        let m = 60;
        let cases = [
            ("00:15", "10s", at(2015, 5, 21, 0, 0, 0), 15 * m),
            ("00:00", "1h", at(2015, 5, 21, 0, 0, 0), 0),
            ("00:00", "1h", at(2015, 5, 21, 0, 0, 1), -1),
            ("02:33", "10h", at(2015, 5, 21, 12, 33, 0), -10 * h),
            (
                "02:33",
                "10h",
                at(2015, 5, 21, 12, 33, 1),
                13 * h + 59 * m + 59,
            ),
            (
                "23:05",
                "11h",
                at(2015, 5, 21, 9, 33, 1),
                -(10 * h + 28 * m + 1),
            ),
            ("Thu 00:15", "10s", at(2015, 5, 21, 0, 0, 0), 15 * m),
            ("Sun 00:00", "1h", at(2015, 5, 17, 0, 0, 1), -1),
            (
                "Sat 23:05",
                "11h",
                at(2015, 5, 17, 9, 33, 1),
                -(10 * h + 28 * m + 1),
            ),
            ("Mon 9:00", "1h", at(2015, 5, 30, 23, 0, 0), 34 * h),
            ("Sun 23:00", "4h", at(2015, 6, 1, 1, 0, 0), -2 * h),
        ];
        for (start, len, now, want) in cases {
            let w = Window::parse(start, len).unwrap();
            assert_eq!(w.duration_to_start(now), want, "{start} {len}");
        }
    }

    #[test]
    fn locksmiths_parse_failures() {
        for (start, len) in [
            ("25:00", "1h"),
            ("23:61", "1h"),
            ("14", "1h"),
            ("foo 14:00", "1h"),
            ("14:00", "1j"),
            ("14:00", "-1h"),
            ("sat 14:00 1234", "1h"),
            ("sat", "1h"),
            ("14:00", "24h"),
            ("sun 14:00", "168h"),
        ] {
            assert!(Window::parse(start, len).is_err(), "{start} {len}");
        }
        assert_eq!(
            Window::parse("14:00", "24h").unwrap_err(),
            "duration cannot exceed period"
        );
        assert!(Window::parse("sun 14:00", "25h").is_ok());
        assert!(Window::parse("foo 14:00", "1h")
            .unwrap_err()
            .contains("invalid day of week \"foo\""));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("90m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("10s").unwrap(), 10_000_000_000);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("-1h").unwrap(), -3_600_000_000_000);
        for bad in ["", "1", "h", "1x", ".h", "9999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
