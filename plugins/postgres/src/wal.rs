//! WAL positions and file names (`coffer-pgwal`), and the size settings
//! `SHOW` prints.

pub use coffer_pgwal::{Lsn, segment_name};

/// Parses a size setting as `SHOW` prints it (`16MB`, `1GB`, `512kB`, or
/// bytes).
pub fn parse_size_setting(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let mult = match s[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_settings() {
        assert_eq!(parse_size_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_size_setting("8192"), Some(8192));
        assert_eq!(parse_size_setting("512kB"), Some(512 << 10));
        assert_eq!(parse_size_setting("16 MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("MB"), None);
        assert_eq!(parse_size_setting("16XB"), None);
    }
}
