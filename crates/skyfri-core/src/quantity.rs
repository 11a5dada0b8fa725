//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `0.5`) and Go durations
//! (`30s`, `1m30s`, `500ms`), as manifests and annotations write them.

use std::time::Duration;

/// Parses a memory quantity into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
            "{s:?} is not a memory quantity: use a number with a unit such as 128Mi, 1Gi or 500M"
        ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a memory quantity: expected a number such as 128Mi"))?;
    Ok((n * mult) as u64)
}

/// Parses a CPU quantity into millicores.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a CPU quantity: use cores (0.5, 1) or millicores (500m)");
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad());
    }
    let n: f64 = s.parse().map_err(|_| bad())?;
    if n < 0.0 {
        return Err(bad());
    }
    Ok((n * 1000.0).round() as u64)
}

/// Parses a duration: whole or fractional seconds (`30`, `1.5`) or a Go duration (`30s`,
/// `1m`, `1m30s`, `500ms`, `1h`). Negative values are refused; zero is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || {
        format!("{s:?} is not a duration: use seconds (30) or a duration such as 30s, 1m or 1m30s")
    };
    let secs: f64 = if let Ok(n) = s.parse::<f64>() {
        n
    } else {
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let split = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (num, tail) = rest.split_at(split);
            let n: f64 = num.parse().map_err(|_| bad())?;
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let mult = match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                _ => return Err(bad()),
            };
            total += n * mult;
            rest = next;
        }
        total
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        assert_eq!(parse_memory("128Mi"), Ok(128 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("512"), Ok(512));
        assert!(parse_memory("128Mbb").is_err());
        assert!(parse_memory("Mi").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("1000m"), Ok(1000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert!(parse_cpu("fast").is_err());
    }

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("30"), Ok(30.0));
        assert_eq!(secs("0"), Ok(0.0));
        assert_eq!(secs("0s"), Ok(0.0));
        assert_eq!(secs("15m"), Ok(900.0));
        assert_eq!(secs("1h1m1s"), Ok(3661.0));
        assert_eq!(secs("1m30s"), Ok(90.0));
        assert_eq!(secs("500ms"), Ok(0.5));
        assert_eq!(secs("1.5s"), Ok(1.5));
        for bad in ["", "s", "10x", "-5", "-5s", "1d", "NaN", "inf", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
