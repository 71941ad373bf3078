//! Small helpers every layer may use: hex, sha256, and durations read from
//! the environment. A leaf: it imports nothing of bpfplan.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = vec![0u8; bytes.len() * 2];
    hex_to(bytes, &mut s);
    // Hex digits are ASCII.
    String::from_utf8(s).unwrap_or_default()
}

/// `bytes` in lower-case hex, written to the start of `out`, which holds
/// at least twice as many bytes (a buffer of the caller's: no allocation).
pub fn hex_to(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// `bytes` in lower-case hex, appended to `out` (no allocation of its own).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let mut pair = [0u8; 2];
        hex_to(&[*b], &mut pair);
        out.push(char::from(pair[0]));
        out.push(char::from(pair[1]));
    }
}

/// Bytes from lower-case or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// sha256 of some bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file's bytes, as hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// A duration in seconds from an environment variable: `default` when unset,
/// `None` for `inf` (no limit). Anything else that is not a finite,
/// non-negative number is an error naming the variable.
pub fn env_seconds(name: &str, default: f64) -> Result<Option<Duration>> {
    match std::env::var(name) {
        Err(_) => Ok(Some(Duration::from_secs_f64(default))),
        Ok(text) => parse_seconds(&text)
            .with_context(|| format!("{name}={text:?} is not a number of seconds (or `inf`)")),
    }
}

fn parse_seconds(text: &str) -> Result<Option<Duration>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
        return Ok(None);
    }
    let secs: f64 = t.parse().context("not a number")?;
    if !secs.is_finite() || secs < 0.0 {
        bail!("must be finite and not negative");
    }
    // Beyond a century is no limit (and a deadline that far overflows the
    // clock).
    if secs > 3.2e9 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .context("out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn secs(text: &str, want: Option<Option<f64>>) {
        let got = parse_seconds(text).ok().map(|d| d.map(|d| d.as_secs_f64()));
        assert_eq!(got, want, "{text:?}");
    }

    #[test]
    fn seconds() {
        secs("30", Some(Some(30.0)));
        secs("0.25", Some(Some(0.25)));
        secs("inf", Some(None));
        secs("Infinity", Some(None));
        secs("-1", None);
        secs("NaN", None);
        secs("1e400", None);
        // So large a deadline would overflow the clock: no limit.
        secs("1e19", Some(None));
        secs("soon", None);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
