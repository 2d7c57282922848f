//! The ustar headers of a base backup's tar stream.
//!
//! The server sends each tablespace as a tar stream of 512-byte headers,
//! each followed by the member's content padded to 512 bytes, and omits
//! the two zero blocks that end a regular tar file. Only what a data
//! directory holds occurs: regular files, directories and symbolic links.

/// The size of a tar block.
pub const BLOCK: usize = 512;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the given target.
    Symlink(String),
}

/// One member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Relative path, `/`-separated, without a trailing `/`.
    pub path: String,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Content length (0 for directories and links).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

impl Header {
    /// Bytes of padding after the content.
    pub fn padding(&self) -> u64 {
        (BLOCK as u64 - self.size % BLOCK as u64) % BLOCK as u64
    }
}

/// Reads a numeric field: octal digits (space or NUL terminated), or
/// base-256 when the top bit of the first byte is set.
fn number(field: &[u8], name: &str) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7F);
        for &b in &field[1..] {
            v = v.checked_mul(256).ok_or_else(|| format!("{name} overflows"))? | u64::from(b);
        }
        return Ok(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|b| *b != 0).collect();
    let t = std::str::from_utf8(&text).map_err(|_| format!("{name} is not text"))?.trim();
    if t.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(t, 8).map_err(|_| format!("{name} `{t}` is not an octal number"))
}

fn text(field: &[u8]) -> Result<String, String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
}

/// Parses one header block. `Ok(None)` is a zero block (an end marker).
pub fn parse(block: &[u8; BLOCK]) -> Result<Option<Header>, String> {
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let stored = number(&block[148..156], "checksum")?;
    let sum: u64 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
    if stored != sum {
        return Err(format!("header checksum {stored:o}, the bytes sum to {sum:o}"));
    }
    let mut path = text(&block[..100])?;
    if &block[257..262] == b"ustar" {
        let prefix = text(&block[345..500])?;
        if !prefix.is_empty() {
            path = format!("{prefix}/{path}");
        }
    }
    let path = clean_path(&path)?;
    let mode = (number(&block[100..108], "mode")? & 0o7777) as u32;
    let size = number(&block[124..136], "size")?;
    let mtime = number(&block[136..148], "mtime")? as i64;
    let kind = match block[156] {
        b'0' | 0 => Kind::File,
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink(text(&block[157..257])?),
        t => {
            return Err(format!(
                "{path}: member type `{}` (a data directory holds files, directories and links)",
                t as char
            ));
        }
    };
    let size = if kind == Kind::File { size } else { 0 };
    Ok(Some(Header { path, kind, mode, size, mtime }))
}

/// A member path as a snapshot entry path: no leading `./` or `/`, no
/// trailing `/`, no empty, `.` or `..` parts.
fn clean_path(p: &str) -> Result<String, String> {
    let p = p.trim_start_matches("./").trim_end_matches('/');
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("member path `{p}` is not a relative path inside the data directory"));
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as PostgreSQL's server writes one.
    fn header(name: &str, mode: u32, size: u64, flag: u8, link: &str) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(format!("{mode:07o} ").as_bytes());
        h[108..116].copy_from_slice(b"0000000 ");
        h[116..124].copy_from_slice(b"0000000 ");
        h[124..136].copy_from_slice(format!("{size:011o} ").as_bytes());
        h[136..148].copy_from_slice(format!("{:011o} ", 1_700_000_000u64).as_bytes());
        h[156] = flag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn members() {
        let f = parse(&header("base/1/1259", 0o600, 8192 * 3 + 5, b'0', "")).unwrap().unwrap();
        assert_eq!((f.path.as_str(), f.mode, f.size, f.mtime), ("base/1/1259", 0o600, 24581, 1_700_000_000));
        assert_eq!(f.padding(), 507);
        let d = parse(&header("pg_wal/", 0o700, 0, b'5', "")).unwrap().unwrap();
        assert_eq!((d.path.as_str(), d.kind), ("pg_wal", Kind::Dir));
        let l = parse(&header("pg_tblspc/16384", 0o777, 0, b'2', "/srv/ts")).unwrap().unwrap();
        assert_eq!(l.kind, Kind::Symlink("/srv/ts".into()));
        assert_eq!(parse(&[0u8; BLOCK]).unwrap(), None);
        // Base-256 sizes (members over 8 GiB).
        let mut big = header("big", 0o600, 0, b'0', "");
        big[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        big[148..156].copy_from_slice(b"        ");
        let sum: u32 = big.iter().map(|b| u32::from(*b)).sum();
        big[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(parse(&big).unwrap().unwrap().size, 2 << 24);
    }

    #[test]
    fn damage_is_an_error() {
        let good = header("global/pg_control", 0o600, 8192, b'0', "");
        // Byte 155 follows the NUL that ends the checksum digits: it is in
        // neither the sum nor the value.
        for i in (0..BLOCK).filter(|i| *i != 155) {
            let mut h = good;
            h[i] ^= 0x01;
            // Every changed byte breaks the checksum, or (within the checksum
            // field) its value.
            assert!(parse(&h).is_err(), "byte {i}");
        }
        for bad in ["../etc/passwd", "/etc/passwd", "a//b", "a/./b"] {
            assert!(parse(&header(bad, 0o600, 0, b'0', "")).is_err(), "{bad}");
        }
        assert!(parse(&header("fifo", 0o600, 0, b'6', "")).unwrap_err().contains("member type"));
    }
}
