//! WAL positions and segment file names.
//!
//! An LSN is a 64-bit byte position in the WAL, written `HI/LO` in hex
//! (`16/B374D848`). A segment file name is 24 hex digits: the timeline, then
//! the segment number split into a "log" part and a segment-within-log part,
//! each 8 digits (`000000010000001600000B3`-style; with 16 MiB segments
//! there are 256 segments per log).

use std::fmt;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `HI/LO` (hex, either case).
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return None;
        }
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The segment number holding this position.
    pub fn segment(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// The segment number holding the byte just before this position: the
    /// last segment a backup that ends here needs (PostgreSQL names a
    /// backup's stop file this way).
    pub fn prev_segment(self, seg_size: u64) -> u64 {
        self.0.saturating_sub(1) / seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Segments per "log" (the middle 8 digits of a name).
fn per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// True for a segment size PostgreSQL allows: a power of two from 1 MiB to
/// 1 GiB.
pub fn valid_segment_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&seg_size)
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per = per_log(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// Parses a segment file name into (timeline, segment number).
pub fn parse_segment_name(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    let per = per_log(seg_size);
    if seg >= per {
        return None;
    }
    Some((tli, log * per + seg))
}

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
    fn lsns_and_segment_names() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0").unwrap().to_string(), "0/0");
        for bad in ["", "16", "/1", "1/", "g/1", "123456789/0", "1/2/3"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
        let seg = 16 << 20;
        // 16/B374D848 is in log 0x16, segment 0xB3 with 16 MiB segments.
        assert_eq!(segment_name(1, l.segment(seg), seg), "0000000100000016000000B3");
        assert_eq!(parse_segment_name("0000000100000016000000B3", seg), Some((1, l.segment(seg))));
        // A backup that stops exactly at a segment boundary needs the
        // segment before it only.
        let boundary = Lsn::parse("0/3000000").unwrap();
        assert_eq!(segment_name(1, boundary.prev_segment(seg), seg), "000000010000000000000002");
        assert_eq!(
            segment_name(1, Lsn::parse("0/3000028").unwrap().prev_segment(seg), seg),
            "000000010000000000000003"
        );
        // Names round-trip for other sizes; the last digits stay below the
        // segments per log.
        let big = 1 << 30;
        assert_eq!(segment_name(2, 9, big), "000000020000000200000001");
        assert_eq!(parse_segment_name("000000020000000200000001", big), Some((2, 9)));
        assert_eq!(parse_segment_name("000000010000000000000004", big), None);
        assert_eq!(parse_segment_name("00000001.history", seg), None);
        assert!(valid_segment_size(seg) && !valid_segment_size(3 << 20) && !valid_segment_size(1 << 31));
    }

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
