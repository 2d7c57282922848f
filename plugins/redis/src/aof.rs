//! Redis 7's multi-part append-only file: a manifest naming one base file
//! (`type b`: an RDB, or a RESP command file without the RDB preamble),
//! incremental files (`type i`, RESP commands, replayed in `seq` order)
//! and history files (`type h`, left over from a rewrite, to be deleted).
//! Each manifest line is `file NAME seq N type T`, keys in any order,
//! names quoted when they hold spaces or unusual bytes.

use std::io::Read;

/// One file named by the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AofFile {
    /// File name inside the AOF directory.
    pub name: String,
    /// Sequence number.
    pub seq: u64,
    /// `b` base, `i` incremental, `h` history.
    pub kind: char,
}

/// Splits a manifest line into words, honouring double quotes with
/// `\n`, `\r`, `\t`, `\\`, `\"` and `\xHH` escapes.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unbalanced quotes".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => w.push('\n'),
                        Some('r') => w.push('\r'),
                        Some('t') => w.push('\t'),
                        Some('x') => {
                            let h: String = chars.by_ref().take(2).collect();
                            let v = u8::from_str_radix(&h, 16).map_err(|_| format!("bad escape \\x{h}"))?;
                            w.push(v as char);
                        }
                        Some(other) => w.push(other),
                        None => return Err("unbalanced quotes".into()),
                    },
                    Some(other) => w.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// Parses a manifest. Errors name the line.
pub fn parse_manifest(text: &str) -> Result<Vec<AofFile>, String> {
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w = words(line).map_err(|e| format!("manifest line {}: {e}", n + 1))?;
        if w.len() % 2 != 0 {
            return Err(format!("manifest line {}: keys and values do not pair up", n + 1));
        }
        let (mut name, mut seq, mut kind) = (None, None, None);
        for kv in w.chunks(2) {
            match kv[0].as_str() {
                "file" => name = Some(kv[1].clone()),
                "seq" => seq = kv[1].parse::<u64>().ok(),
                "type" => kind = kv[1].chars().next().filter(|c| matches!(c, 'b' | 'i' | 'h') && kv[1].len() == 1),
                _ => {} // keys a newer Redis may add
            }
        }
        let name = name.ok_or_else(|| format!("manifest line {}: no file name", n + 1))?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("manifest line {}: `{name}` is not a plain file name", n + 1));
        }
        files.push(AofFile {
            name,
            seq: seq.ok_or_else(|| format!("manifest line {}: no valid seq", n + 1))?,
            kind: kind.ok_or_else(|| format!("manifest line {}: type must be b, i or h", n + 1))?,
        });
    }
    let bases = files.iter().filter(|f| f.kind == 'b').count();
    if bases > 1 {
        return Err(format!("the manifest names {bases} base files; Redis writes one"));
    }
    if !files.iter().any(|f| f.kind != 'h') {
        return Err("the manifest names no base or incremental file".into());
    }
    Ok(files)
}

/// The files a server would load, in load order: the base, then the
/// incremental files by `seq`.
pub fn load_order(files: &[AofFile]) -> Vec<AofFile> {
    let mut out: Vec<AofFile> = files.iter().filter(|f| f.kind == 'b').cloned().collect();
    let mut incr: Vec<AofFile> = files.iter().filter(|f| f.kind == 'i').cloned().collect();
    incr.sort_by_key(|f| f.seq);
    out.extend(incr);
    out
}

/// Walks RESP command framing: every top-level item must be an array of
/// bulk strings (a command and its arguments); `#` lines are timestamp
/// annotations. `each` gets the byte length of every complete command and
/// the bytes, in order, so a caller can copy exactly the complete part.
pub struct RespWalker {
    buf: Vec<u8>,
    pos: usize,
    /// Offset of `buf[pos]` in the stream.
    offset: u64,
    /// Complete commands seen.
    pub commands: u64,
}

impl Default for RespWalker {
    fn default() -> Self {
        Self::new()
    }
}

impl RespWalker {
    /// A walker at offset 0.
    pub fn new() -> Self {
        RespWalker { buf: Vec::new(), pos: 0, offset: 0, commands: 0 }
    }

    /// Offset of the first byte not yet part of a complete command.
    pub fn complete_offset(&self) -> u64 {
        self.offset
    }

    /// Feeds bytes; returns how many bytes of complete commands (and
    /// annotations) this call finished, from the previous such boundary.
    pub fn feed(&mut self, data: &[u8]) -> Result<u64, String> {
        use redis_protocol::resp2::types::RangeFrame;
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        let before = self.offset;
        loop {
            let rest = &self.buf[self.pos..];
            if rest.is_empty() {
                break;
            }
            if rest[0] == b'#' {
                match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.pos += i + 1;
                        self.offset += i as u64 + 1;
                        continue;
                    }
                    None => break,
                }
            }
            if rest[0] != b'*' {
                return Err(format!("at byte {}: expected a command (`*`), found byte 0x{:02x}", self.offset, rest[0]));
            }
            match redis_protocol::resp2::decode::decode_range(rest) {
                Ok(Some((frame, used))) => {
                    let ok = matches!(&frame, RangeFrame::Array(items)
                        if !items.is_empty() && items.iter().all(|i| matches!(i, RangeFrame::BulkString(_))));
                    if !ok {
                        return Err(format!("at byte {}: a command must be an array of bulk strings", self.offset));
                    }
                    self.pos += used;
                    self.offset += used as u64;
                    self.commands += 1;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("at byte {}: {}", self.offset, e.details())),
            }
        }
        Ok(self.offset - before)
    }

    /// Bytes after the last complete command (a truncated tail).
    pub fn incomplete(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Reads `r` to the end through a [`RespWalker`]; returns (commands,
/// bytes). A truncated last command is damage.
pub fn check_commands(mut r: impl Read) -> Result<(u64, u64), String> {
    let mut w = RespWalker::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| format!("at byte {total}: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        w.feed(&buf[..n])?;
    }
    if w.incomplete() > 0 {
        return Err(format!(
            "at byte {}: the last command is cut short ({} bytes)",
            w.complete_offset(),
            w.incomplete()
        ));
    }
    Ok((w.commands, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let m = "file appendonly.aof.3.base.rdb seq 3 type b\nfile appendonly.aof.9.incr.aof seq 9 type i\n\
                 file appendonly.aof.8.incr.aof seq 8 type i\nfile appendonly.aof.2.base.rdb seq 2 type h\n";
        let f = parse_manifest(m).unwrap();
        let names: Vec<String> = load_order(&f).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["appendonly.aof.3.base.rdb", "appendonly.aof.8.incr.aof", "appendonly.aof.9.incr.aof"]);
        let q = parse_manifest("type i seq 1 file \"my aof.1.incr.aof\"\n").unwrap();
        assert_eq!(q[0].name, "my aof.1.incr.aof");
        assert!(parse_manifest("file ../x seq 1 type b").is_err());
        assert!(parse_manifest("file a seq x type b").is_err());
        assert!(parse_manifest("file a seq 1 type z").is_err());
        assert!(parse_manifest("file a seq 1 type b\nfile b seq 2 type b").is_err());
    }

    #[test]
    fn resp_framing() {
        let cmds = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n#TS:1700000000\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        assert_eq!(check_commands(&cmds[..]).unwrap(), (2, cmds.len() as u64));
        let e = check_commands(&cmds[..cmds.len() - 3]).unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        assert!(check_commands(&b"+OK\r\n"[..]).unwrap_err().contains("byte 0"));
        assert!(check_commands(&b"*1\r\n:5\r\n"[..]).unwrap_err().contains("bulk strings"));
        // Fed a byte at a time, the boundaries come out the same.
        let mut w = RespWalker::new();
        let mut done = 0;
        for b in cmds.iter() {
            done += w.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!((done, w.commands), (cmds.len() as u64, 2));
    }
}
