//! Parsing of the human-friendly values the CLI accepts: sizes with units and TTLs.

use std::time::Duration;

/// Parses a size such as `20MiB`, `500GiB`, `1.5 TB` or `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("invalid size {s:?}: use a number with a unit, such as 20MiB, 500GiB or 2TB"))
}

/// A metadata TTL: a duration, or `None` for `indefinite`.
pub type Ttl = Option<Duration>;

/// Parses `--metadata-ttl`: whole seconds (`60`), or `indefinite` for datasets that never change.
pub fn parse_ttl(s: &str) -> Result<Ttl, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("indefinite") {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(|n| Some(Duration::from_secs(n)))
        .map_err(|_| format!("invalid TTL {s:?}: give whole seconds (such as 60) or 'indefinite'"))
}

/// Parses a duration such as `7d`, `12h`, `30m` or `45s` (for `cache evict --older-than`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: use a number and a unit, such as 7d or 12h"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(n * secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("500GiB"), Ok(500 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").unwrap_err().contains("20MiB"));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("indefinite"), Ok(None));
        assert_eq!(parse_ttl("60"), Ok(Some(Duration::from_secs(60))));
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("7w").is_err());
    }
}
