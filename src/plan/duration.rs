//! Durations as a plan writes them: `6h`, `30m`, `90s`, `1h30m`, `2d`.
//!
//! The grammar is one or more `<digits><unit>` parts with units `d`, `h`, `m` and `s`,
//! each unit at most once and from largest to smallest, so that a value reads one way
//! only. Pure: no clock, no I/O.

use std::fmt;
use std::time::Duration;

/// Why a string is not a duration: what was expected, in words a plan author can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for DurationError {}

/// What a duration looks like, for messages that quote the grammar.
pub const EXPECTED: &str = "a duration like 6h, 30m, 90s, 1h30m or 2d";

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration such as `1h30m`. Zero (`0s`) is a valid duration here; callers
/// that need a positive one check `is_zero` themselves.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |reason| Err(DurationError { reason });
    if text.is_empty() {
        return err("empty: expected a number followed by d, h, m or s");
    }
    let mut total: u64 = 0;
    // Index into UNITS of the smallest unit seen so far: the next part must be smaller.
    let mut next_unit = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return err("expected a number before each unit (d, h, m or s)");
        }
        let Ok(count) = rest[..digits].parse::<u64>() else {
            return err("number too large");
        };
        let Some(unit) = rest[digits..].chars().next() else {
            return err("missing unit after the number: add d, h, m or s");
        };
        let Some(position) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return err("unknown unit: expected d, h, m or s");
        };
        if position < next_unit {
            return err("units out of order or repeated: write them largest first, like 1h30m");
        }
        next_unit = position + 1;
        let Some(seconds) = count.checked_mul(UNITS[position].1).and_then(|s| total.checked_add(s)) else {
            return err("number too large");
        };
        total = seconds;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// Writes a duration in the same grammar, largest units first (`90m` becomes `1h30m`),
/// dropping sub-second parts. `parse(&format(d))` gives back `d` for whole seconds.
pub fn format(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let count = seconds / size;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push(unit);
            seconds %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("6h"), Ok(secs(6 * 3600)));
        assert_eq!(parse("30m"), Ok(secs(30 * 60)));
        assert_eq!(parse("90s"), Ok(secs(90)));
        assert_eq!(parse("2d"), Ok(secs(2 * 86_400)));
        assert_eq!(parse("0s"), Ok(secs(0)));
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("1h30m"), Ok(secs(5400)));
        assert_eq!(parse("1d2h3m4s"), Ok(secs(86_400 + 7200 + 180 + 4)));
        assert_eq!(parse("2d12h"), Ok(secs(2 * 86_400 + 12 * 3600)));
        // A part may exceed the next unit up: 90m is simply 90 minutes.
        assert_eq!(parse("90m"), Ok(secs(5400)));
    }

    #[test]
    fn refuses_malformed_durations() {
        for bad in
            ["", "6", "h", "6x", "6 h", " 6h", "6h ", "1.5h", "-1h", "30m1h", "1h1h", "6H", "1h30", "ms", "1ms", "P1D"]
        {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("999999999999999999d").is_err());
        assert!(parse(&format!("{}s", u64::MAX)).is_ok());
        assert!(parse(&format!("1m{}s", u64::MAX)).is_err());
    }

    #[test]
    fn messages_say_what_to_write() {
        assert_eq!(parse("6").unwrap_err().to_string(), "missing unit after the number: add d, h, m or s");
        assert_eq!(
            parse("30m1h").unwrap_err().to_string(),
            "units out of order or repeated: write them largest first, like 1h30m"
        );
    }

    #[test]
    fn formats_largest_units_first() {
        assert_eq!(format(secs(0)), "0s");
        assert_eq!(format(secs(5400)), "1h30m");
        assert_eq!(format(secs(86_400)), "1d");
        assert_eq!(format(secs(86_400 + 1)), "1d1s");
        assert_eq!(format(Duration::from_millis(1500)), "1s");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for s in [1, 59, 60, 61, 3599, 3600, 5400, 86_399, 86_400, 1_000_000, u64::MAX] {
            assert_eq!(parse(&format(secs(s))), Ok(secs(s)), "{s}");
        }
    }
}
