//! The replication stream as coffer stores it: item names, positions, and
//! the RESP commands inside items.
//!
//! A follower of a Redis server writes one stream per replication ID,
//! `redis-<replid>` (40 hex digits). Offsets are Redis's replication
//! offsets: the number of stream bytes the master produced, so the byte
//! after offset `o` is byte `o + 1`, which is what `PSYNC <replid> <o + 1>`
//! asks for. Two kinds of item:
//!
//! - `rdb-<o: 20 digits>` at position `o`: the RDB of a full resync, the
//!   dataset exactly at offset `o`;
//! - `cmd-<s: 20 digits>` at position `e`: the raw stream bytes `s..=e`
//!   (whole RESP commands, `e = s - 1 + size`). The position is the item's
//!   *last* offset so that a snapshot at offset `o` that declares it needs
//!   the stream from `o + 1` keeps the item holding byte `o + 1`.

use redis_protocol::resp2::types::RangeFrame;

/// Digits of an offset in an item key (a u64 has at most 20).
const OFFSET_DIGITS: usize = 20;

/// The stream of replication ID `replid`.
pub fn stream_name(replid: &str) -> String {
    format!("redis-{replid}")
}

/// A replication ID as Redis writes it: 40 lowercase hex digits.
pub fn is_replid(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key of the RDB item at offset `o`.
pub fn rdb_key(o: u64) -> String {
    format!("rdb-{o:0OFFSET_DIGITS$}")
}

/// The key of the command item whose first byte is `start`.
pub fn cmd_key(start: u64) -> String {
    format!("cmd-{start:0OFFSET_DIGITS$}")
}

/// What an item key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// An RDB at this offset.
    Rdb(u64),
    /// Commands from this offset on.
    Cmd(u64),
}

/// Parses an item key; `None` for a key this plugin does not write.
pub fn parse_key(key: &str) -> Option<ItemKind> {
    let (kind, digits) = key.split_once('-')?;
    if digits.len() != OFFSET_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let o = digits.parse().ok()?;
    match kind {
        "rdb" => Some(ItemKind::Rdb(o)),
        "cmd" if o > 0 => Some(ItemKind::Cmd(o)),
        _ => None,
    }
}

/// What a command in the stream is, as far as following and replaying
/// care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `PING`: the master's keepalive, no data.
    Ping,
    /// `REPLCONF GETACK *`: the master asks for an acknowledgement.
    GetAck,
    /// Another `REPLCONF`: no data.
    Replconf,
    /// `SELECT`.
    Select,
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// Anything else: a write.
    Write,
}

impl Command {
    /// True for commands that change no data (a replay leaves them out).
    pub fn is_link_traffic(self) -> bool {
        matches!(self, Command::Ping | Command::GetAck | Command::Replconf)
    }
}

/// The first complete command in `buf`: its length in bytes and what it
/// is; `Ok(None)` when `buf` ends before the command does. Anything but an
/// array of bulk strings is damage.
pub fn next_command(buf: &[u8]) -> Result<Option<(usize, Command)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return Err(format!("expected a command (`*`), found byte 0x{:02x}", buf[0]));
    }
    let (frame, used) = match redis_protocol::resp2::decode::decode_range(buf) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.details().to_string()),
    };
    let RangeFrame::Array(items) = frame else { return Err("a command must be an array".into()) };
    let mut args = Vec::with_capacity(2);
    for i in &items {
        match i {
            RangeFrame::BulkString((s, e)) => {
                if args.len() < 2 {
                    args.push(&buf[*s..*e]);
                }
            }
            _ => return Err("a command must be an array of bulk strings".into()),
        }
    }
    let Some(name) = args.first() else { return Err("an empty command".into()) };
    let is = |n: &[u8], want: &str| n.eq_ignore_ascii_case(want.as_bytes());
    let cmd = if is(name, "PING") {
        Command::Ping
    } else if is(name, "REPLCONF") {
        if args.get(1).is_some_and(|a| is(a, "GETACK")) { Command::GetAck } else { Command::Replconf }
    } else if is(name, "SELECT") {
        Command::Select
    } else if is(name, "MULTI") {
        Command::Multi
    } else if is(name, "EXEC") {
        Command::Exec
    } else {
        Command::Write
    };
    Ok(Some((used, cmd)))
}

/// Splits a whole buffer into commands: their (start, length, kind), or
/// the byte where the framing breaks. A command cut short at the end is
/// damage too.
pub fn commands(buf: &[u8]) -> Result<Vec<(usize, usize, Command)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match next_command(&buf[at..]).map_err(|e| format!("at byte {at}: {e}"))? {
            Some((n, c)) => {
                out.push((at, n, c));
                at += n;
            }
            None => return Err(format!("at byte {at}: the last command is cut short ({} bytes)", buf.len() - at)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_offset() {
        assert_eq!(rdb_key(42), "rdb-00000000000000000042");
        assert_eq!(parse_key(&rdb_key(42)), Some(ItemKind::Rdb(42)));
        assert_eq!(parse_key(&cmd_key(u64::MAX)), Some(ItemKind::Cmd(u64::MAX)));
        assert!(cmd_key(9) < cmd_key(10));
        assert_eq!(parse_key("cmd-00000000000000000000"), None, "offsets of bytes start at 1");
        assert_eq!(parse_key("cmd-1"), None);
        assert_eq!(parse_key("wal-00000000000000000001"), None);
        assert!(is_replid("987cfd62223fb3073d902a72adad11a87c86b012"));
        assert!(!is_replid("987CFD62223fb3073d902a72adad11a87c86b012"));
    }

    #[test]
    fn commands_are_told_apart() {
        let s =
            b"*1\r\n$4\r\nPING\r\n*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n\
                  *1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$4\r\nEXEC\r\n";
        let kinds: Vec<Command> = commands(s).unwrap().into_iter().map(|c| c.2).collect();
        use Command::*;
        assert_eq!(kinds, [Ping, GetAck, Select, Multi, Write, Exec]);
        assert_eq!(next_command(&s[..20]).unwrap().map(|c| c.1), Some(Ping));
        assert_eq!(next_command(&s[14..20]).unwrap(), None);
        assert!(commands(&s[..s.len() - 2]).unwrap_err().contains("cut short"));
        assert!(commands(b"+OK\r\n").is_err());
        assert!(commands(b"*1\r\n:1\r\n").is_err());
    }
}
