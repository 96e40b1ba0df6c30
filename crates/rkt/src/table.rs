//! Output as rkt prints it: tables aligned with tabs the way Go's `tabwriter` does with a
//! tab as padding (`minwidth 0, tabwidth 8, padding 1`), times in Go's
//! `2006-01-02 15:04:05.999 -0700 MST` layout (UTC here) and as go-humanize's "… ago".

/// Renders rows as Go's tabwriter would: each column as wide as its widest cell plus one,
/// rounded up to a multiple of 8, filled with tabs; the last cell of a row is not padded.
#[must_use]
pub fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            widths[i] = widths[i].max(c.chars().count() + 1);
        }
    }
    for w in &mut widths {
        *w = w.div_ceil(8) * 8;
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                let len = c.chars().count();
                let tabs = (widths[i] - len).div_ceil(8).max(1);
                out.push_str(&"\t".repeat(tabs));
            }
        }
        out.push('\n');
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil-from-days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `millis` since the epoch in Go's `2006-01-02 15:04:05.999 -0700 MST` (UTC): trailing
/// zeros of the fraction dropped, as `.999` does.
#[must_use]
pub fn full_time(millis: u64) -> String {
    let secs = i64::try_from(millis / 1000).unwrap_or(0);
    let ms = millis % 1000;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let frac = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}").trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// How long ago `millis` was, as go-humanize's `Time` says it ("now", "3 seconds ago",
/// "2 minutes ago", "1 hour ago", "6 days ago" …).
#[must_use]
pub fn ago(millis: u64, now: u64) -> String {
    let (d, suffix) = if now >= millis {
        ((now - millis) / 1000, "ago")
    } else {
        ((millis - now) / 1000, "from now")
    };
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    const WEEK: u64 = 7 * DAY;
    const MONTH: u64 = 30 * DAY;
    const YEAR: u64 = 12 * MONTH;
    let (n, unit) = match d {
        0 => return "now".to_string(),
        1 => return format!("1 second {suffix}"),
        x if x < MIN => (x, "seconds"),
        x if x < 2 * MIN => return format!("1 minute {suffix}"),
        x if x < HOUR => (x / MIN, "minutes"),
        x if x < 2 * HOUR => return format!("1 hour {suffix}"),
        x if x < DAY => (x / HOUR, "hours"),
        x if x < 2 * DAY => return format!("1 day {suffix}"),
        x if x < WEEK => (x / DAY, "days"),
        x if x < 2 * WEEK => return format!("1 week {suffix}"),
        x if x < MONTH => (x / WEEK, "weeks"),
        x if x < 2 * MONTH => return format!("1 month {suffix}"),
        x if x < YEAR => (x / MONTH, "months"),
        x if x < 18 * MONTH => return format!("1 year {suffix}"),
        x => (x / YEAR, "years"),
    };
    format!("{n} {unit} {suffix}")
}

/// Bytes as go-humanize's `IBytes` writes them (`12MiB`, `4.0KiB`, `512B`).
#[must_use]
pub fn ibytes(n: u64) -> String {
    if n < 10 {
        return format!("{n}B");
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    #[allow(clippy::cast_precision_loss)] // a size shown to one decimal
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{v:.0}{}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_tab_stops() {
        let rows = vec![
            vec!["UUID".into(), "APP".into(), "STATE".into()],
            vec!["5bc080ca".into(), "redis".into(), "running".into()],
        ];
        assert_eq!(
            render(&rows),
            "UUID\t\tAPP\tSTATE\n5bc080ca\tredis\trunning\n"
        );
    }

    #[test]
    fn times_read_like_go() {
        assert_eq!(
            full_time(1_453_740_152_563),
            "2016-01-25 16:42:32.563 +0000 UTC"
        );
        assert_eq!(
            full_time(1_453_740_152_100),
            "2016-01-25 16:42:32.1 +0000 UTC"
        );
        assert_eq!(full_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(ago(0, 0), "now");
        assert_eq!(ago(0, 41_000), "41 seconds ago");
        assert_eq!(ago(0, 150_000), "2 minutes ago");
        assert_eq!(ago(0, 6 * 86_400_000), "6 days ago");
        assert_eq!(ibytes(12 * 1024 * 1024), "12MiB");
        assert_eq!(ibytes(4096), "4.0KiB");
    }
}
