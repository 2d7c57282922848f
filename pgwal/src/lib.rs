//! PostgreSQL WAL positions and file names: LSNs, segment numbers, the
//! names of segments, partial segments, timeline history and backup
//! history files, and timeline history contents.
//!
//! The `postgres` plugin uses them to name, check and order the WAL it
//! archives in its stream, and to read a base backup's WAL positions; the
//! coffer host knows none of this (fuzz targets exercise it directly).

use std::fmt;
use std::str::FromStr;

/// The segment size PostgreSQL uses unless `initdb --wal-segsize` changed it.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL position: a 64-bit byte offset, written `HI/LO` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `HI/LO` (1 to 8 hex digits each, either case), as PostgreSQL
    /// prints LSNs (`16/B374D848`).
    pub fn parse(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not an LSN (expected two hex numbers such as 16/B374D848)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let word = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(p, 16).ok()
        };
        let (hi, lo) = (word(hi).ok_or_else(bad)?, word(lo).ok_or_else(bad)?);
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The number of the segment holding this position.
    pub fn segno(self, segment_size: u64) -> u64 {
        self.0 / segment_size.max(1)
    }

    /// The number of the segment holding the byte just before this
    /// position: the last segment a backup that stops here needs (how
    /// PostgreSQL names a backup's stop file).
    pub fn prev_segno(self, segment_size: u64) -> u64 {
        self.0.saturating_sub(1) / segment_size.max(1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        Lsn::parse(s)
    }
}

/// True for a segment size PostgreSQL allows: a power of two from 1 MiB to 1 GiB.
pub fn valid_segment_size(segment_size: u64) -> bool {
    segment_size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&segment_size)
}

/// Segments per "log", the middle 8 digits of a segment name.
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.clamp(1, 0x1_0000_0000)
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per = segments_per_log(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// Parses a segment file name into (timeline, segment number); `None` if it
/// is not one, or names a segment that cannot exist with this segment size.
pub fn parse_segment_name(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    match WalFile::parse(name)? {
        WalFile::Segment { timeline, log, seg } => {
            let per = segments_per_log(segment_size);
            (u64::from(seg) < per).then(|| (timeline, u64::from(log) * per + u64::from(seg)))
        }
        _ => None,
    }
}

/// What an archived WAL file is, parsed from its name. Names are upper-case
/// hex, exactly as PostgreSQL writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFile {
    /// A segment, `TTTTTTTTLLLLLLLLSSSSSSSS`: timeline, log, segment in log.
    Segment {
        /// Timeline.
        timeline: u32,
        /// The middle 8 digits.
        log: u32,
        /// The last 8 digits.
        seg: u32,
    },
    /// The unfinished last segment of a timeline, `<segment>.partial`.
    Partial {
        /// Timeline.
        timeline: u32,
        /// The middle 8 digits.
        log: u32,
        /// The last 8 digits.
        seg: u32,
    },
    /// A timeline history file, `TTTTTTTT.history`.
    History {
        /// The timeline it describes.
        timeline: u32,
    },
    /// A backup history file, `<segment>.OOOOOOOO.backup` (the backup's start
    /// segment and offset in it).
    BackupHistory {
        /// Timeline.
        timeline: u32,
        /// The middle 8 digits.
        log: u32,
        /// The last 8 digits.
        seg: u32,
        /// Start offset within the segment.
        offset: u32,
    },
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn hex24(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24 {
        return None;
    }
    Some((hex8(s.get(..8)?)?, hex8(s.get(8..16)?)?, hex8(s.get(16..)?)?))
}

impl WalFile {
    /// Parses an archived file's name; `None` for anything else.
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some((timeline, log, seg)) = hex24(name) {
            return Some(WalFile::Segment { timeline, log, seg });
        }
        if let Some(base) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = hex24(base)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return Some(WalFile::History { timeline: hex8(tli)? });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (base, offset) = rest.split_once('.')?;
            let (timeline, log, seg) = hex24(base)?;
            return Some(WalFile::BackupHistory { timeline, log, seg, offset: hex8(offset)? });
        }
        None
    }

    /// Checks a name, with a message naming what is accepted.
    pub fn parse_checked(name: &str) -> Result<WalFile, String> {
        WalFile::parse(name).ok_or_else(|| {
            format!(
                "{name:?} is not a WAL file name (a segment such as 000000010000000000000003, \
                 00000002.history, 000000010000000000000003.00000028.backup or a .partial segment)"
            )
        })
    }

    /// The timeline.
    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupHistory { timeline, .. } => timeline,
        }
    }

    /// The (log, segment in log) position, for every kind but history files.
    pub fn position(&self) -> Option<(u32, u32)> {
        match *self {
            WalFile::Segment { log, seg, .. }
            | WalFile::Partial { log, seg, .. }
            | WalFile::BackupHistory { log, seg, .. } => Some((log, seg)),
            WalFile::History { .. } => None,
        }
    }

    /// The segment number, for every kind but history files; `None` too if
    /// the name cannot exist with this segment size.
    pub fn segno(&self, segment_size: u64) -> Option<u64> {
        let (log, seg) = self.position()?;
        let per = segments_per_log(segment_size);
        (u64::from(seg) < per).then(|| u64::from(log) * per + u64::from(seg))
    }

    /// True for a complete segment.
    pub fn is_segment(&self) -> bool {
        matches!(self, WalFile::Segment { .. })
    }

    /// The key that sorts files in WAL order: by timeline, the history file
    /// first, then by position; at one position the segment, then backup
    /// history files, then the partial segment. It is also the order of the
    /// names as strings.
    pub fn order_key(&self) -> (u32, u8, u32, u32, u8, u32) {
        match *self {
            WalFile::History { timeline } => (timeline, 0, 0, 0, 0, 0),
            WalFile::Segment { timeline, log, seg } => (timeline, 1, log, seg, 0, 0),
            WalFile::BackupHistory { timeline, log, seg, offset } => (timeline, 1, log, seg, 1, offset),
            WalFile::Partial { timeline, log, seg } => (timeline, 1, log, seg, 2, 0),
        }
    }
}

/// One entry of a timeline history file: `parent` ended at `switch`, where
/// its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The ancestor timeline.
    pub parent: u32,
    /// Where it ended.
    pub switch: Lsn,
}

/// Parses a timeline history file (`<parent tli> <switch LSN> <reason>` per
/// line; blank lines and `#` comments ignored). Entries are oldest first.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || format!("line {}: expected `<timeline> <LSN> <reason>`, found {line:?}", n + 1);
        let parent: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let switch = Lsn::parse(fields.next().ok_or_else(bad)?).map_err(|_| bad())?;
        if out.last().is_some_and(|p: &TimelineSwitch| p.parent >= parent || p.switch > switch) {
            return Err(format!("line {}: timelines must increase and switch points must not go back", n + 1));
        }
        out.push(TimelineSwitch { parent, switch });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// WAL page headers

/// The long header of a WAL segment's first page (the fields coffer reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// Format magic (changes with PostgreSQL major versions).
    pub magic: u16,
    /// Flag bits; `XLP_LONG_HEADER` is set on a segment's first page.
    pub info: u16,
    /// Timeline of the page's first record.
    pub timeline: u32,
    /// WAL position of the page.
    pub pageaddr: u64,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// Segment size in bytes.
    pub segment_size: u32,
    /// WAL block size in bytes.
    pub block_size: u32,
}

/// `XLP_LONG_HEADER`: the page starts with the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Bytes of the long header read here: standard header (20, padded to 24),
/// system identifier u64 at 24, segment size u32 at 32, block size u32 at 36.
const LONG_HEADER_LEN: usize = 40;

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and sanity-checks the long page header at the start of a segment.
pub fn parse_long_header(data: &[u8]) -> Result<LongPageHeader, String> {
    if data.len() < LONG_HEADER_LEN {
        return Err(format!("it has {} bytes, too few for a WAL page header", data.len()));
    }
    let h = LongPageHeader {
        magic: le_u16(data, 0),
        info: le_u16(data, 2),
        timeline: le_u32(data, 4),
        pageaddr: le_u64(data, 8),
        system_identifier: le_u64(data, 24),
        segment_size: le_u32(data, 32),
        block_size: le_u32(data, 36),
    };
    if h.info & XLP_LONG_HEADER == 0 {
        return Err("its first page has no long header (not a WAL segment, or a recycled one)".into());
    }
    if !valid_segment_size(u64::from(h.segment_size)) {
        return Err(format!(
            "its header gives a segment size of {} bytes, which PostgreSQL never uses",
            h.segment_size
        ));
    }
    if !h.block_size.is_power_of_two() || !(1024..=65536).contains(&h.block_size) {
        return Err(format!(
            "its header gives a WAL block size of {} bytes, which PostgreSQL never uses",
            h.block_size
        ));
    }
    if h.system_identifier == 0 {
        return Err("its header carries no system identifier".into());
    }
    Ok(h)
}

// ---------------------------------------------------------------------------
// pg_control and backup history files

/// The system identifier at the start of `global/pg_control` (its first 8
/// bytes, little-endian).
pub fn control_system_identifier(data: &[u8]) -> Result<u64, String> {
    if data.len() < 8 {
        return Err(format!("{} bytes, too short for a control file", data.len()));
    }
    let id = le_u64(data, 0);
    if id == 0 {
        return Err("no system identifier in it".into());
    }
    Ok(id)
}

/// The start of a backup history file (`<segment>.<offset>.backup`): the
/// LSN and the segment name of its `START WAL LOCATION: 0/700028 (file
/// 000000010000000000000007)` line.
pub fn parse_backup_start(text: &str) -> Result<(Lsn, String), String> {
    let line =
        text.lines().find_map(|l| l.strip_prefix("START WAL LOCATION:")).ok_or("it has no START WAL LOCATION line")?;
    let mut words = line.split_whitespace();
    let lsn = Lsn::parse(words.next().unwrap_or_default())?;
    let file = match (words.next(), words.next()) {
        (Some("(file"), Some(f)) => f.trim_end_matches(')').to_string(),
        _ => return Err(format!("its START WAL LOCATION line {line:?} names no file")),
    };
    Ok((lsn, file))
}

// ---------------------------------------------------------------------------
// Recovery target times

/// Parses a recovery target time: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.frac]`
/// followed by an optional zone (`Z`, `UTC`, `GMT`, `+HH`, `+HH:MM`,
/// `+HHMM`, with or without a space before it). No zone means UTC.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    // `T` or a space between date and time.
    let t = match t.get(10..11) {
        Some("T") => format!("{} {}", &t[..10], &t[11..]),
        _ => t.to_string(),
    };
    // No zone, or UTC by name.
    for zone in ["", "Z", "z", "UTC", "GMT"] {
        if let Some(Ok(n)) =
            t.strip_suffix(zone).map(|body| NaiveDateTime::parse_from_str(body.trim_end(), "%Y-%m-%d %H:%M:%S%.f"))
        {
            return Ok(Utc.from_utc_datetime(&n));
        }
    }
    // A numeric offset (`+02`, `+0200`, `+02:00`), with or without a space.
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f %#z"] {
        if let Ok(d) = DateTime::parse_from_str(&t, format) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-05-01T12:00:00Z) or YYYY-MM-DD HH:MM:SS with UTC or an offset such \
         as +02:00"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn header(sysid: u64, pageaddr: u64, seg_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; 8192];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        h[24..32].copy_from_slice(&sysid.to_le_bytes());
        h[32..36].copy_from_slice(&seg_size.to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        h
    }

    #[test]
    fn the_long_page_header_gives_the_system_identifier() {
        let h = parse_long_header(&header(7_283_947_561_234_567_890, 0x300_0000, SEG as u32)).unwrap();
        assert_eq!(h.system_identifier, 7_283_947_561_234_567_890);
        assert_eq!((h.pageaddr, h.segment_size, h.block_size, h.timeline), (0x300_0000, SEG as u32, 8192, 1));
        assert!(parse_long_header(&[0u8; 10]).unwrap_err().contains("too few"));
        let mut no_long = header(1, 0, SEG as u32);
        no_long[2] = 0;
        assert!(parse_long_header(&no_long).unwrap_err().contains("no long header"));
        assert!(parse_long_header(&header(1, 0, 12345)).unwrap_err().contains("segment size"));
        assert!(parse_long_header(&header(0, 0, SEG as u32)).unwrap_err().contains("no system identifier"));
    }

    #[test]
    fn target_times_parse_in_the_accepted_forms() {
        let want = parse_time("2026-05-01T10:00:00Z").unwrap();
        for s in [
            "2026-05-01T12:00:00+02:00",
            "2026-05-01 10:00:00",
            "2026-05-01 10:00:00 UTC",
            "2026-05-01 12:00:00+02",
            "2026-05-01 12:00:00 +0200",
            "2026-05-01 07:30:00-02:30",
            "2026-05-01 10:00:00.000000+00",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        assert_eq!(parse_time("2026-05-01 10:00:00.25").unwrap(), want + chrono::Duration::milliseconds(250));
        for bad in
            ["", "yesterday", "2026-05-01", "2026-13-01 10:00:00", "2026-05-01 10:00:00 CEST", "2026-05-01 10:00:00+2"]
        {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    const MIB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsns_parse_print_and_map_to_segments() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0").unwrap(), Lsn(0));
        assert_eq!(Lsn::parse(" 1/a ").unwrap(), Lsn(0x1_0000_000A));
        for bad in ["", "16", "16/", "/1", "1/2/3", "123456789/0", "g/0", "1 /2"] {
            assert!(Lsn::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(l.segno(MIB16), 0x16B3);
        assert_eq!(segment_name(1, l.segno(MIB16), MIB16), "0000000100000016000000B3");
        assert_eq!(segment_name(1, Lsn::parse("0/3000028").unwrap().segno(MIB16), MIB16), "000000010000000000000003");
        // 1 GiB segments: 4 per log.
        assert_eq!(segment_name(2, 9, 1 << 30), "000000020000000200000001");
        assert_eq!(segments_per_log(MIB16), 256);
    }

    #[test]
    fn segment_names_round_trip_and_reject_impossible_ones() {
        for segno in [0u64, 1, 255, 256, 0x16B3, 0xFFFF_FFFF] {
            let n = segment_name(3, segno, MIB16);
            assert_eq!(parse_segment_name(&n, MIB16), Some((3, segno)), "{n}");
        }
        // Segment 0x100 does not exist in a log of 256.
        assert_eq!(parse_segment_name("000000010000000000000100", MIB16), None);
        assert_eq!(parse_segment_name("000000010000000000000100", 1 << 20), Some((1, 0x100)));
        assert_eq!(parse_segment_name("00000001000000000000000a", MIB16), None, "lower case");
        assert_eq!(parse_segment_name("00000002.history", MIB16), None);
        assert!(valid_segment_size(MIB16) && valid_segment_size(1 << 20) && valid_segment_size(1 << 30));
        assert!(!valid_segment_size(3 << 20) && !valid_segment_size(1 << 19) && !valid_segment_size(1 << 31));
    }

    #[test]
    fn wal_file_names_parse_and_sort_in_wal_order() {
        let names = [
            "000000010000000000000003",
            "000000010000000000000003.00000028.backup",
            "000000010000000000000004.partial",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000100000000",
        ];
        let files: Vec<WalFile> = names.iter().map(|n| WalFile::parse(n).unwrap()).collect();
        assert_eq!(files[1], WalFile::BackupHistory { timeline: 1, log: 0, seg: 3, offset: 0x28 });
        assert_eq!(files[3], WalFile::History { timeline: 2 });
        let mut shuffled = files.clone();
        shuffled.reverse();
        shuffled.sort_by_key(WalFile::order_key);
        assert_eq!(shuffled, files);
        let mut sorted = names.to_vec();
        sorted.sort();
        assert_eq!(sorted, names, "string order is WAL order");
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000030",
            "00000001000000000000000g",
            "000000010000000000000003.backup",
            "00000002.History",
            "0000002.history",
            "000000010000000000000003.partial.partial",
            "../00000002.history",
            "000000010000000000000003#1",
        ] {
            assert!(WalFile::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(files[5].segno(MIB16), Some(256));
        assert_eq!(files[3].segno(MIB16), None);
    }

    #[test]
    fn control_files_and_backup_history_files_parse() {
        let mut control = 42u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        assert_eq!(control_system_identifier(&control), Ok(42));
        assert!(control_system_identifier(&control[..4]).unwrap_err().contains("too short"));
        assert!(control_system_identifier(&[0u8; 16]).unwrap_err().contains("no system identifier"));
        let text = "START WAL LOCATION: 0/700028 (file 000000010000000000000007)\nSTOP WAL LOCATION: 0/700100 \
                    (file 000000010000000000000007)\n";
        assert_eq!(parse_backup_start(text), Ok((Lsn(0x70_0028), "000000010000000000000007".to_string())));
        assert!(parse_backup_start("nothing").is_err());
        assert!(parse_backup_start("START WAL LOCATION: 0/7").is_err());
    }

    #[test]
    fn history_files_parse() {
        let h = "1\t0/3000060\tno recovery target specified\n\n# comment\n2\t0/5000000\tat restore point \"x\"\n";
        let e = parse_history(h).unwrap();
        assert_eq!(
            e,
            vec![
                TimelineSwitch { parent: 1, switch: Lsn(0x300_0060) },
                TimelineSwitch { parent: 2, switch: Lsn(0x500_0000) }
            ]
        );
        assert!(parse_history("x 0/1 r").is_err());
        assert!(parse_history("2 0/5 r\n1 0/6 r").is_err());
        assert_eq!(parse_history("").unwrap(), vec![]);
    }

    #[test]
    fn a_backup_that_stops_at_a_segment_boundary_needs_the_segment_before_it_only() {
        let boundary = Lsn::parse("0/3000000").unwrap();
        assert_eq!(segment_name(1, boundary.prev_segno(MIB16), MIB16), "000000010000000000000002");
        assert_eq!(
            segment_name(1, Lsn::parse("0/3000028").unwrap().prev_segno(MIB16), MIB16),
            "000000010000000000000003"
        );
        assert_eq!(Lsn(0).prev_segno(MIB16), 0);
    }
}
