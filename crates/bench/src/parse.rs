//! Parsers for the command-line values that clap cannot read by itself:
//! durations such as `500ms`, `10s`, `2m`, `1m30s` and rates such as `1000/s`.

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts (`us` or `µs`, `ms`, `s`, `m`, `h`),
/// e.g. `500ms`, `10s`, `2m`, `1m30s`, `1.5s`. A bare number is read as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, text);
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration `{text}`: expected a number at `{rest}`"));
        }
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration `{text}`: bad number `{num}`"))?;
        let unit_len = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let scale = match unit {
            // micro sign (U+00B5) or Greek mu (U+03BC)
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("invalid duration `{text}`: missing unit after `{num}`"));
            }
            other => return Err(format!("invalid duration `{text}`: unknown unit `{other}`")),
        };
        total += value * scale;
        rest = tail;
    }
    secs_to_duration(total, text)
}

fn secs_to_duration(secs: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration `{text}`"))
}

/// Parses an arrival rate into requests per second: `1000/s`, `1000` (per second), `600/m`,
/// `36000/h`, `2/ms`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let s = text.trim();
    let (num, per) = match s.split_once('/') {
        Some((n, unit)) => (n.trim(), unit.trim()),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid rate `{text}`: bad number `{num}`"))?;
    let per_secs = match per {
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("invalid rate `{text}`: unknown unit `{other}`")),
    };
    let rate = value / per_secs;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("invalid rate `{text}`: must be positive"))
    }
}

/// A positive users-per-second spawn rate.
pub fn parse_spawn_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("invalid spawn rate `{text}`: must be a positive number")),
    }
}

/// A ratio in `0.0..=1.0`.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid ratio `{text}`: must be between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500\u{b5}s"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("500\u{3bc}s"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1ms500\u{b5}s"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000/s"), Ok(1000.0));
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert_eq!(parse_rate("2/ms"), Ok(2000.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("5/d").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn ratios_and_spawn_rates() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert_eq!(parse_spawn_rate("5"), Ok(5.0));
        assert!(parse_spawn_rate("0").is_err());
    }
}
