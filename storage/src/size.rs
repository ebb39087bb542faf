//! Human sizes on the command line: `4096`, `64K`, `512M`, `10G`, `1T`
//! (binary units; an optional `B` or `iB` suffix is accepted), and back.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size `{input}`: {reason}")]
pub struct SizeError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(s: &str, reason: impl Into<String>) -> SizeError {
    SizeError {
        input: s.to_string(),
        reason: reason.into(),
    }
}

/// Parses a size such as `64M` into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                _ => return Err(bad(s, format!("unknown unit `{c}` (use K, M, G, T or P)"))),
            };
            (&t[..t.len() - 1], mult)
        }
        _ => (t, 1),
    };
    if num.is_empty() {
        return Err(bad(s, "no number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| bad(s, "expected a whole number with an optional K/M/G/T suffix"))?;
    n.checked_mul(mult).ok_or_else(|| bad(s, "too large"))
}

/// Formats bytes with a binary unit, e.g. `64.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("64K").ok(), Some(64 << 10));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("2GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("10MB").ok(), Some(10 << 20));
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("256MiB").ok(), Some(256 << 20));
        assert!(parse_size("1X").is_err());
        for bad in ["", "G", "12Q", "-1", "1.5G", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(human(64 << 20), "64.0 MiB");
    }
}
