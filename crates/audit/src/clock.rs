//! UTC timestamps with microseconds, without a calendar dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `2026-11-24T08:15:42.123456Z`.
pub fn format_time(us: i64) -> String {
    portcullis_config::calendar::rfc3339_micros(us)
}

/// Parse `2026-11-24`, `2026-11-24T08:15:42Z` (fraction and offset allowed),
/// or a duration back from now: `90s`, `15m`, `6h`, `7d`.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Some(n) = t.strip_suffix(['s', 'm', 'h', 'd']) {
        if let Ok(n) = n.parse::<i64>() {
            let unit = match t.as_bytes()[t.len() - 1] {
                b's' => 1,
                b'm' => 60,
                b'h' => 3600,
                _ => 86_400,
            };
            return Some(now_us() - n * unit * 1_000_000);
        }
    }
    let b = t.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = portcullis_config::calendar::days_from_civil(y, m, d) * 86_400;
    let mut micros = 0i64;
    if b.len() > 10 {
        if b[10] != b'T' && b[10] != b' ' || b.len() < 19 {
            return None;
        }
        let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
        let mut rest = &t[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
            rest = &frac[digits.len()..];
            let mut padded = digits.chars().take(6).collect::<String>();
            while padded.len() < 6 {
                padded.push('0');
            }
            micros = padded.parse().ok()?;
        }
        match rest {
            "" | "Z" | "z" => {}
            off if off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) => {
                let sign = if off.starts_with('-') { -1 } else { 1 };
                let oh: i64 = off.get(1..3)?.parse().ok()?;
                let om: i64 = off.get(4..6)?.parse().ok()?;
                secs -= sign * (oh * 3600 + om * 60);
            }
            _ => return None,
        }
    }
    Some(secs * 1_000_000 + micros)
}
