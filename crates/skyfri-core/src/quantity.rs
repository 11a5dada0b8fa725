//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `0.5`).

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
}
