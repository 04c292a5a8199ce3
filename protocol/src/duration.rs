//! Human durations as manifests write them (`"30s"`, `"2m"`, `"1h30m"`, `"500ms"`).

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("is empty")]
    Empty,
    #[error("`{0}` is not a duration like \"30s\", \"2m\" or \"1h30m\"")]
    Malformed(String),
    #[error("must be greater than zero")]
    Zero,
    #[error("`{0}` is too long")]
    Overflow(String),
}

/// Parses `"90s"`, `"2m"`, `"1h30m"`, `"250ms"`; a bare number means seconds.
///
/// # Errors
///
/// Returns [`DurationError`] for an empty, malformed, zero or overflowing duration.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let overflow = || DurationError::Overflow(text.to_owned());
    if let Ok(secs) = text.parse::<u64>() {
        return nonzero(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(malformed());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(malformed()),
        };
        rest = &rest[unit_len..];
        let part = value.checked_mul(unit_ms).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
    }
    nonzero(Duration::from_millis(total_ms))
}

fn nonzero(d: Duration) -> Result<Duration, DurationError> {
    if d.is_zero() {
        Err(DurationError::Zero)
    } else {
        Ok(d)
    }
}

/// Formats a duration the way [`parse`] reads it back (`"1m30s"`, `"250ms"`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1_000;
    let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_manifests_use() {
        let cases = [
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("45", 45_000),
            (" 5s ", 5_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("0s"), Err(DurationError::Zero));
        assert_eq!(parse("0"), Err(DurationError::Zero));
        for bad in ["s", "10 minutes", "1.5s", "-3s", "3d", "ten"] {
            assert!(
                matches!(parse(bad), Err(DurationError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for ms in [250, 1_000, 90_000, 5_400_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
