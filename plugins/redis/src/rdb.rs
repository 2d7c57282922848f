//! A streaming parser of Redis RDB files (versions 1 to 12: Redis 1.0 to
//! 7.4), reading from any [`std::io::Read`] without holding the file.
//!
//! The file is `REDIS` and a 4-digit version, then records: opcodes
//! (`SELECTDB`, `AUX`, `RESIZEDB`, expiry, LRU idle time, LFU frequency,
//! functions, module aux data) and key/value pairs (a type byte, the key
//! string, the value in the type's encoding), then `EOF` and, from version
//! 5, a CRC-64 of every byte before it (0 when the server ran with
//! `rdbchecksum no`).
//!
//! [`Depth::Shallow`] walks every record and length but skips string
//! contents (what a backup does while the stream passes); [`Depth::Deep`]
//! also decompresses LZF strings and checks every listpack, ziplist,
//! intset and zipmap inside them (what `verify` does). With
//! [`Parser::capture`], each key's value bytes are kept as they were read,
//! which is what a `RESTORE` payload is made of.

use std::io::Read;

use crate::compact;

/// Highest RDB version this parser reads (Redis 7.4 writes 12).
pub const MAX_VERSION: u16 = 12;

/// CRC-64 as Redis computes it (Jones polynomial, reflected, no final xor).
pub static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

/// Damage or an unsupported construct, at a byte offset of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdbError {
    /// Offset of the record (or byte) concerned.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// The input failed (connection lost, read error), not the data.
    pub io: bool,
}

impl std::fmt::Display for RdbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

type Result<T> = std::result::Result<T, RdbError>;

/// How much of each value to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Structure and lengths only; string contents are skipped.
    Shallow,
    /// Every string decompressed and every compact encoding walked.
    Deep,
}

/// Value type bytes.
pub mod types {
    #![allow(missing_docs)]
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
    pub const HASH_METADATA_PRE_GA: u8 = 22;
    pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
    pub const HASH_METADATA: u8 = 24;
    pub const HASH_LISTPACK_EX: u8 = 25;
}

/// Opcode bytes.
mod op {
    pub const SLOT_INFO: u8 = 244;
    pub const FUNCTION2: u8 = 245;
    pub const FUNCTION_PRE_GA: u8 = 246;
    pub const MODULE_AUX: u8 = 247;
    pub const IDLE: u8 = 248;
    pub const FREQ: u8 = 249;
    pub const AUX: u8 = 250;
    pub const RESIZEDB: u8 = 251;
    pub const EXPIRETIME_MS: u8 = 252;
    pub const EXPIRETIME: u8 = 253;
    pub const SELECTDB: u8 = 254;
    pub const EOF: u8 = 255;
}

/// The name Redis users know a value type by (`TYPE key`), for reports.
pub fn type_name(t: u8) -> &'static str {
    use types::*;
    match t {
        STRING => "string",
        LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => "list",
        SET | SET_INTSET | SET_LISTPACK => "set",
        ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => "zset",
        HASH
        | HASH_ZIPMAP
        | HASH_ZIPLIST
        | HASH_LISTPACK
        | HASH_METADATA
        | HASH_LISTPACK_EX
        | HASH_METADATA_PRE_GA
        | HASH_LISTPACK_EX_PRE_GA => "hash",
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => "stream",
        MODULE_PRE_GA | MODULE_2 => "module",
        _ => "unknown",
    }
}

/// How the file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The CRC-64 trailer matched.
    Valid,
    /// The trailer is zero: the server ran with `rdbchecksum no`.
    Disabled,
    /// Versions before 5 have no trailer.
    Absent,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Database number (`SELECT`).
    pub db: u64,
    /// The key, binary-safe.
    pub key: Vec<u8>,
    /// The value's type byte (see [`types`]).
    pub kind: u8,
    /// Absolute expiry in Unix milliseconds.
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds, when the server recorded it.
    pub idle: Option<u64>,
    /// LFU access frequency, when the server recorded it.
    pub freq: Option<u8>,
    /// The type byte and the value bytes as stored, when capturing (a
    /// `RESTORE` payload without its footer); empty otherwise.
    pub raw: Vec<u8>,
    /// Module name for module values (`ReJSON-RL`), which are skipped.
    pub module: Option<String>,
    /// Offset of the record.
    pub offset: u64,
}

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An auxiliary field (`redis-ver`, `ctime`, `used-mem`, ...).
    Aux {
        /// Field name.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// The following keys belong to this database.
    SelectDb(u64),
    /// Size hints for the current database.
    ResizeDb {
        /// Keys.
        keys: u64,
        /// Keys with an expiry.
        expires: u64,
    },
    /// A key and its value.
    Key(KeyRecord),
    /// A function library (Redis 7.0+): the opcode and its string as
    /// stored when capturing (a `FUNCTION RESTORE` payload without its
    /// footer), otherwise empty.
    Function {
        /// Raw bytes when capturing.
        raw: Vec<u8>,
        /// Offset of the record.
        offset: u64,
    },
    /// Module auxiliary data, skipped.
    ModuleAux {
        /// The module's name.
        module: String,
    },
    /// Cluster slot sizes (Redis 8), skipped.
    SlotInfo,
    /// The end of the file; every byte was read.
    End(Checksum),
}

/// A buffered reader that keeps the offset, the running CRC and, while
/// capturing, a copy of what it consumed.
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Offset of `buf[pos]` in the file.
    offset: u64,
    crc: crc::Digest<'static, u64>,
    capture: Option<Vec<u8>>,
}

/// Read buffer.
const BUF: usize = 256 * 1024;
/// Longest string accepted: wasm32 cannot hold more, and Redis caps
/// strings at 512 MiB by default.
const MAX_STRING: u64 = 1 << 31;

impl<R: Read> Input<R> {
    fn new(r: R) -> Self {
        Input { r, buf: vec![0; BUF], pos: 0, end: 0, offset: 0, crc: CRC64.digest(), capture: None }
    }

    fn err(&self, reason: impl Into<String>) -> RdbError {
        RdbError { offset: self.offset, reason: reason.into(), io: false }
    }

    /// Makes at least `n` (<= BUF) bytes available.
    fn fill(&mut self, n: usize) -> Result<()> {
        if self.end - self.pos >= n {
            return Ok(());
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        while self.end < n {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(RdbError {
                        offset: self.offset + self.end as u64,
                        reason: "the file ends in the middle of a record (truncated)".into(),
                        io: false,
                    });
                }
                Ok(k) => self.end += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RdbError { offset: self.offset + self.end as u64, reason: e.to_string(), io: true });
                }
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        let s = &self.buf[self.pos..self.pos + n];
        self.crc.update(s);
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(s);
        }
        self.pos += n;
        self.offset += n as u64;
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.fill(N)?;
        let a: [u8; N] = self.buf[self.pos..self.pos + N].try_into().expect("filled");
        self.consume(N);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes::<1>()?[0])
    }

    /// Reads `n` bytes into a new vector, growing it as data arrives so a
    /// damaged length fails at the end of the input, not in the allocator.
    fn vec(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > MAX_STRING {
            return Err(self.err(format!("a string of {n} bytes is longer than any Redis writes")));
        }
        let mut out = Vec::with_capacity((n as usize).min(BUF));
        let mut left = n as usize;
        while left > 0 {
            self.fill(1)?;
            let k = left.min(self.end - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.consume(k);
            left -= k;
        }
        Ok(out)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        if n > MAX_STRING {
            return Err(self.err(format!("a string of {n} bytes is longer than any Redis writes")));
        }
        let mut left = n as usize;
        while left > 0 {
            self.fill(1)?;
            let k = left.min(self.end - self.pos);
            self.consume(k);
            left -= k;
        }
        Ok(())
    }
}

/// A length, or the special encoding of the string that follows.
enum Len {
    Plain(u64),
    Special(u8),
}

/// Parses one RDB stream record by record.
pub struct Parser<R> {
    input: Input<R>,
    version: u16,
    depth: Depth,
    capture: bool,
    db: u64,
    expire_ms: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
    done: bool,
}

impl<R: Read> Parser<R> {
    /// Reads the header (`REDIS` and the version).
    pub fn new(r: R, depth: Depth) -> Result<Self> {
        let mut input = Input::new(r);
        let magic: [u8; 9] = input.bytes()?;
        if &magic[..5] != b"REDIS" {
            return Err(RdbError {
                offset: 0,
                reason: "not an RDB file (it does not start with REDIS)".into(),
                io: false,
            });
        }
        let version = std::str::from_utf8(&magic[5..])
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| RdbError { offset: 5, reason: "the RDB version is not 4 digits".into(), io: false })?;
        if version == 0 || version > MAX_VERSION {
            return Err(RdbError {
                offset: 5,
                reason: format!(
                    "RDB version {version} is not supported (this plugin reads 1 to {MAX_VERSION}, Redis up to \
                     7.4); upgrade coffer"
                ),
                io: false,
            });
        }
        Ok(Parser {
            input,
            version,
            depth,
            capture: false,
            db: 0,
            expire_ms: None,
            idle: None,
            freq: None,
            done: false,
        })
    }

    /// Keeps each value's bytes in [`KeyRecord::raw`] from now on.
    pub fn capture(mut self, on: bool) -> Self {
        self.capture = on;
        self
    }

    /// The file's RDB version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    /// The underlying reader (to check nothing follows the file).
    pub fn into_inner(self) -> R {
        self.input.r
    }

    /// True if unconsumed bytes follow the end of the file in the buffer.
    pub fn trailing_buffered(&self) -> usize {
        self.input.end - self.input.pos
    }

    fn err(&self, reason: impl Into<String>) -> RdbError {
        self.input.err(reason)
    }

    fn length(&mut self) -> Result<Len> {
        let first = self.input.u8()?;
        Ok(match first >> 6 {
            0 => Len::Plain((first & 0x3f) as u64),
            1 => Len::Plain((((first & 0x3f) as u64) << 8) | self.input.u8()? as u64),
            2 => match first {
                0x80 => Len::Plain(u32::from_be_bytes(self.input.bytes()?) as u64),
                0x81 => Len::Plain(u64::from_be_bytes(self.input.bytes()?)),
                other => return Err(self.err(format!("unknown length encoding 0x{other:02x}"))),
            },
            _ => Len::Special(first & 0x3f),
        })
    }

    fn plain_len(&mut self, what: &str) -> Result<u64> {
        match self.length()? {
            Len::Plain(n) => Ok(n),
            Len::Special(_) => Err(self.err(format!("{what}: expected a length, found a string encoding"))),
        }
    }

    /// A count of elements: refused when absurd, so damage is not taken
    /// for a billion-element loop.
    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.plain_len(what)?;
        if n > 1 << 32 {
            return Err(self.err(format!("{what}: {n} elements is more than any Redis stores")));
        }
        Ok(n)
    }

    /// A string, decoded (integers as decimal text, LZF decompressed).
    fn string(&mut self) -> Result<Vec<u8>> {
        match self.length()? {
            Len::Plain(n) => self.input.vec(n),
            Len::Special(0) => Ok((self.input.u8()? as i8).to_string().into_bytes()),
            Len::Special(1) => Ok(i16::from_le_bytes(self.input.bytes()?).to_string().into_bytes()),
            Len::Special(2) => Ok(i32::from_le_bytes(self.input.bytes()?).to_string().into_bytes()),
            Len::Special(3) => {
                let at = self.input.offset;
                let clen = self.plain_len("compressed length")?;
                let len = self.plain_len("uncompressed length")?;
                if len > MAX_STRING {
                    return Err(self.err(format!("a string of {len} bytes is longer than any Redis writes")));
                }
                let data = self.input.vec(clen)?;
                crate::lzf::decompress(&data, len as usize).map_err(|e| RdbError { offset: at, reason: e, io: false })
            }
            Len::Special(k) => Err(self.err(format!("unknown string encoding {k}"))),
        }
    }

    /// A string whose content matters only in a deep parse.
    fn value_string(&mut self) -> Result<Option<Vec<u8>>> {
        if self.depth == Depth::Deep {
            return self.string().map(Some);
        }
        match self.length()? {
            Len::Plain(n) => self.input.skip(n)?,
            Len::Special(0) => self.input.skip(1)?,
            Len::Special(1) => self.input.skip(2)?,
            Len::Special(2) => self.input.skip(4)?,
            Len::Special(3) => {
                let clen = self.plain_len("compressed length")?;
                let _len = self.plain_len("uncompressed length")?;
                self.input.skip(clen)?;
            }
            Len::Special(k) => return Err(self.err(format!("unknown string encoding {k}"))),
        }
        Ok(None)
    }

    /// A string holding a compact encoding, checked by `walk` when deep.
    fn compact(&mut self, what: &str, walk: impl Fn(&[u8]) -> std::result::Result<usize, String>) -> Result<()> {
        let at = self.input.offset;
        if let Some(blob) = self.value_string()? {
            walk(&blob).map_err(|e| RdbError { offset: at, reason: format!("{what}: {e}"), io: false })?;
        }
        Ok(())
    }

    /// An old-style (type 3) score: a length byte (253 NaN, 254 +inf,
    /// 255 -inf) or that many bytes of decimal text.
    fn text_double(&mut self) -> Result<()> {
        let n = self.input.u8()?;
        if n < 253 {
            let at = self.input.offset;
            let text = self.input.vec(n as u64)?;
            if self.depth == Depth::Deep
                && std::str::from_utf8(&text).ok().and_then(|t| t.parse::<f64>().ok()).is_none()
            {
                return Err(RdbError { offset: at, reason: "a sorted set score is not a number".into(), io: false });
            }
        }
        Ok(())
    }

    fn stream_id(&mut self) -> Result<()> {
        self.plain_len("stream id milliseconds")?;
        self.plain_len("stream id sequence")?;
        Ok(())
    }

    fn listpack_of(&mut self, what: &str, multiple: usize) -> Result<()> {
        let w = move |b: &[u8]| {
            let n = compact::listpack(b, |_| {})?;
            if multiple > 1 && n % multiple != 0 {
                return Err(format!("{n} elements, not a multiple of {multiple}"));
            }
            Ok(n)
        };
        self.compact(what, w)
    }

    fn ziplist_of(&mut self, what: &str, multiple: usize) -> Result<()> {
        let w = move |b: &[u8]| {
            let n = compact::ziplist(b, |_| {})?;
            if multiple > 1 && n % multiple != 0 {
                return Err(format!("{n} elements, not a multiple of {multiple}"));
            }
            Ok(n)
        };
        self.compact(what, w)
    }

    /// A module value: the module id, then typed fields until the module
    /// EOF opcode. Returns the module's name.
    fn module_value(&mut self) -> Result<String> {
        let id = self.plain_len("module id")?;
        let name = module_name(id);
        self.module_fields(&name)?;
        Ok(name)
    }

    /// The typed fields of module data (a value or aux data), up to the
    /// module EOF opcode: signed and unsigned integers as lengths, a
    /// 4-byte float, an 8-byte double, strings.
    fn module_fields(&mut self, name: &str) -> Result<()> {
        loop {
            match self.plain_len("module field")? {
                0 => return Ok(()),
                1 | 2 => {
                    self.plain_len("module integer")?;
                }
                3 => {
                    self.input.bytes::<4>()?;
                }
                4 => {
                    self.input.bytes::<8>()?;
                }
                5 => {
                    self.value_string()?;
                }
                other => return Err(self.err(format!("module {name}: unknown field opcode {other}"))),
            }
        }
    }

    fn stream(&mut self, kind: u8) -> Result<()> {
        let nodes = self.count("stream nodes")?;
        for _ in 0..nodes {
            let at = self.input.offset;
            if let Some(master) = self.value_string()?
                && master.len() != 16
            {
                return Err(RdbError {
                    offset: at,
                    reason: format!("stream node id is {} bytes, not 16", master.len()),
                    io: false,
                });
            }
            self.compact("stream node listpack", |b| {
                let n = compact::listpack(b, |_| {})?;
                if n == 0 {
                    return Err("empty stream node".into());
                }
                Ok(n)
            })?;
        }
        self.plain_len("stream length")?;
        self.stream_id()?; // last id
        if kind >= types::STREAM_LISTPACKS_2 {
            self.stream_id()?; // first id
            self.stream_id()?; // max deleted entry id
            self.plain_len("stream entries added")?;
        }
        let groups = self.count("stream consumer groups")?;
        for _ in 0..groups {
            self.value_string()?; // group name
            self.stream_id()?; // last delivered id
            if kind >= types::STREAM_LISTPACKS_2 {
                self.plain_len("group entries read")?;
            }
            let pel = self.count("group pending entries")?;
            for _ in 0..pel {
                self.input.bytes::<16>()?; // raw id
                self.input.bytes::<8>()?; // delivery time, ms
                self.plain_len("delivery count")?;
            }
            let consumers = self.count("group consumers")?;
            for _ in 0..consumers {
                self.value_string()?; // consumer name
                self.input.bytes::<8>()?; // seen time, ms
                if kind >= types::STREAM_LISTPACKS_3 {
                    self.input.bytes::<8>()?; // active time, ms
                }
                let own = self.count("consumer pending entries")?;
                for _ in 0..own {
                    self.input.bytes::<16>()?;
                }
            }
        }
        Ok(())
    }

    /// Reads a value of type `kind`. Returns the module name for modules.
    fn value(&mut self, kind: u8) -> Result<Option<String>> {
        use types::*;
        match kind {
            STRING => {
                self.value_string()?;
            }
            LIST | SET => {
                for _ in 0..self.count("elements")? {
                    self.value_string()?;
                }
            }
            ZSET => {
                for _ in 0..self.count("sorted set members")? {
                    self.value_string()?;
                    self.text_double()?;
                }
            }
            ZSET_2 => {
                for _ in 0..self.count("sorted set members")? {
                    self.value_string()?;
                    self.input.bytes::<8>()?;
                }
            }
            HASH => {
                for _ in 0..self.count("hash fields")? {
                    self.value_string()?;
                    self.value_string()?;
                }
            }
            HASH_ZIPMAP => self.compact("zipmap", compact::zipmap)?,
            LIST_ZIPLIST => self.ziplist_of("list ziplist", 1)?,
            SET_INTSET => self.compact("intset", compact::intset)?,
            ZSET_ZIPLIST => self.ziplist_of("sorted set ziplist", 2)?,
            HASH_ZIPLIST => self.ziplist_of("hash ziplist", 2)?,
            LIST_QUICKLIST => {
                for _ in 0..self.count("quicklist nodes")? {
                    self.ziplist_of("quicklist node", 1)?;
                }
            }
            LIST_QUICKLIST_2 => {
                for _ in 0..self.count("quicklist nodes")? {
                    match self.plain_len("quicklist container")? {
                        1 => {
                            self.value_string()?; // one plain element
                        }
                        2 => self.listpack_of("quicklist node", 1)?,
                        other => return Err(self.err(format!("quicklist container {other} (1 or 2 exist)"))),
                    }
                }
            }
            HASH_LISTPACK => self.listpack_of("hash listpack", 2)?,
            ZSET_LISTPACK => self.listpack_of("sorted set listpack", 2)?,
            SET_LISTPACK => self.listpack_of("set listpack", 1)?,
            STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => self.stream(kind)?,
            HASH_METADATA | HASH_METADATA_PRE_GA => {
                // Hash with field expiry (Redis 7.4): the minimum expiry
                // (absent before GA), then fields with a TTL each.
                if kind == HASH_METADATA {
                    self.input.bytes::<8>()?;
                }
                for _ in 0..self.count("hash fields")? {
                    self.plain_len("field ttl")?;
                    self.value_string()?;
                    self.value_string()?;
                }
            }
            HASH_LISTPACK_EX | HASH_LISTPACK_EX_PRE_GA => {
                if kind == HASH_LISTPACK_EX {
                    self.input.bytes::<8>()?;
                }
                // Triples of field, value, TTL.
                self.listpack_of("hash listpack with field expiry", 3)?;
            }
            MODULE_2 => return self.module_value().map(Some),
            MODULE_PRE_GA => {
                return Err(self.err("a module value from a Redis 4.0 release candidate cannot be read"));
            }
            other => return Err(self.err(format!("unknown value type {other}"))),
        }
        Ok(None)
    }

    /// The next record; `None` after [`Item::End`].
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let offset = self.input.offset;
            let t = self.input.u8()?;
            match t {
                op::EOF => {
                    self.done = true;
                    if self.version < 5 {
                        return Ok(Some(Item::End(Checksum::Absent)));
                    }
                    let computed = self.input.crc.clone().finalize();
                    let stored = u64::from_le_bytes(self.input.bytes()?);
                    return match stored {
                        0 => Ok(Some(Item::End(Checksum::Disabled))),
                        s if s == computed => Ok(Some(Item::End(Checksum::Valid))),
                        s => Err(RdbError {
                            offset: offset + 1,
                            reason: format!(
                                "CRC-64 mismatch: the file says {s:016x}, its bytes give {computed:016x} (the file is \
                                 damaged)"
                            ),
                            io: false,
                        }),
                    };
                }
                op::SELECTDB => {
                    self.db = self.plain_len("database number")?;
                    return Ok(Some(Item::SelectDb(self.db)));
                }
                op::RESIZEDB => {
                    let keys = self.plain_len("database size")?;
                    let expires = self.plain_len("expires size")?;
                    return Ok(Some(Item::ResizeDb { keys, expires }));
                }
                op::AUX => {
                    let key = self.string()?;
                    let value = self.string()?;
                    return Ok(Some(Item::Aux { key, value }));
                }
                op::EXPIRETIME_MS => self.expire_ms = Some(i64::from_le_bytes(self.input.bytes()?)),
                op::EXPIRETIME => self.expire_ms = Some(i32::from_le_bytes(self.input.bytes()?) as i64 * 1000),
                op::IDLE => self.idle = Some(self.plain_len("idle time")?),
                op::FREQ => self.freq = Some(self.input.u8()?),
                op::MODULE_AUX => {
                    let id = self.plain_len("module id")?;
                    self.plain_len("module aux when-opcode")?;
                    self.plain_len("module aux when")?;
                    let module = module_name(id);
                    self.module_fields(&module)?;
                    return Ok(Some(Item::ModuleAux { module }));
                }
                op::FUNCTION2 => {
                    if self.capture {
                        self.input.capture = Some(vec![t]);
                    }
                    let r = self.value_string();
                    let raw = self.input.capture.take().unwrap_or_default();
                    r?;
                    return Ok(Some(Item::Function { raw, offset }));
                }
                op::FUNCTION_PRE_GA => {
                    return Err(self.err("a function from a Redis 7.0 release candidate cannot be read"));
                }
                op::SLOT_INFO => {
                    self.plain_len("slot id")?;
                    self.plain_len("slot size")?;
                    self.plain_len("slot expires size")?;
                    return Ok(Some(Item::SlotInfo));
                }
                kind => {
                    let key = self.string()?;
                    if self.capture {
                        self.input.capture = Some(vec![kind]);
                    }
                    let r = self.value(kind);
                    let raw = self.input.capture.take().unwrap_or_default();
                    let module = r?;
                    let rec = KeyRecord {
                        db: self.db,
                        key,
                        kind,
                        expire_ms: self.expire_ms.take(),
                        idle: self.idle.take(),
                        freq: self.freq.take(),
                        raw,
                        module,
                        offset,
                    };
                    return Ok(Some(Item::Key(rec)));
                }
            }
        }
    }
}

/// A module's 9-character name from its 64-bit id (6 bits a character,
/// the low 10 bits are the encoding version).
pub fn module_name(id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut name = String::with_capacity(9);
    for k in 0..9 {
        let c = (id >> (64 - 6 * (k + 1))) & 63;
        name.push(CHARSET[c as usize] as char);
    }
    name
}

/// Turns captured value bytes into a `RESTORE` / `FUNCTION RESTORE`
/// payload in place: appends the RDB version (2 bytes, little-endian) and
/// the CRC-64 of everything before it (8 bytes, little-endian).
pub fn dump_payload(mut raw: Vec<u8>, version: u16) -> Vec<u8> {
    raw.extend_from_slice(&version.to_le_bytes());
    let crc = CRC64.checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    raw
}

/// The RDB version a Redis release writes (and the newest it loads).
pub fn rdb_version_of(redis_version: &str) -> Option<u16> {
    let mut parts = redis_version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    Some(match (major, minor) {
        (0..=1, _) => 1,
        (2, 0..=4) => 4,
        (2, _) => 6,
        (3, 0) => 6,
        (3, _) => 7,
        (4, _) => 8,
        (5 | 6, _) => 9,
        (7, 0) => 10,
        (7, 2) => 11,
        (7, 4) => 12,
        (7, _) => 11,
        _ => 12,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::compact::Element;
    use crate::compact::tests::{make_listpack, make_ziplist};

    /// Builds RDB bytes for tests.
    pub struct Writer {
        pub out: Vec<u8>,
    }

    impl Writer {
        pub fn new(version: u16) -> Self {
            Writer { out: format!("REDIS{version:04}").into_bytes() }
        }
        pub fn len(&mut self, n: u64) -> &mut Self {
            if n < 64 {
                self.out.push(n as u8);
            } else if n < 16384 {
                self.out.push(0x40 | (n >> 8) as u8);
                self.out.push(n as u8);
            } else if n <= u32::MAX as u64 {
                self.out.push(0x80);
                self.out.extend_from_slice(&(n as u32).to_be_bytes());
            } else {
                self.out.push(0x81);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            self
        }
        pub fn s(&mut self, b: &[u8]) -> &mut Self {
            self.len(b.len() as u64);
            self.out.extend_from_slice(b);
            self
        }
        pub fn byte(&mut self, b: u8) -> &mut Self {
            self.out.push(b);
            self
        }
        pub fn raw(&mut self, b: &[u8]) -> &mut Self {
            self.out.extend_from_slice(b);
            self
        }
        pub fn finish(&mut self) -> Vec<u8> {
            self.out.push(op::EOF);
            let crc = CRC64.checksum(&self.out);
            self.out.extend_from_slice(&crc.to_le_bytes());
            self.out.clone()
        }
    }

    fn parse_all(bytes: &[u8], depth: Depth, capture: bool) -> Result<Vec<Item>> {
        let mut p = Parser::new(bytes, depth)?.capture(capture);
        let mut items = Vec::new();
        while let Some(i) = p.next_item()? {
            items.push(i);
        }
        Ok(items)
    }

    /// A file with every type and encoding, old and new.
    pub fn every_type() -> Vec<u8> {
        use types::*;
        let mut w = Writer::new(11);
        w.byte(op::AUX).s(b"redis-ver").s(b"7.2.4");
        w.byte(op::SELECTDB).len(0).byte(op::RESIZEDB).len(20).len(1);
        w.byte(STRING).s(b"plain").s(b"value");
        // Integer-encoded strings and an LZF string.
        w.byte(STRING).s(b"int8").byte(0xc0).byte(0x85);
        w.byte(STRING).s(b"int32").byte(0xc2).raw(&(-70000i32).to_le_bytes());
        w.byte(STRING).s(b"lzf").byte(0xc3).len(7).len(12).raw(&[2, b'a', b'b', b'c', 0xe0, 0, 2]);
        w.byte(op::EXPIRETIME_MS).raw(&1_900_000_000_000i64.to_le_bytes());
        w.byte(op::IDLE).len(42);
        w.byte(LIST).s(b"oldlist").len(2).s(b"a").s(b"b");
        w.byte(SET).s(b"set").len(1).s(b"m");
        w.byte(ZSET).s(b"oldzset").len(2).s(b"a").byte(3).raw(b"1.5").s(b"b").byte(254);
        w.byte(ZSET_2).s(b"zset2").len(1).s(b"a").raw(&2.5f64.to_le_bytes());
        w.byte(HASH).s(b"hash").len(1).s(b"f").s(b"v");
        w.byte(HASH_ZIPMAP).s(b"zipmap").s(&[1, 1, b'a', 2, 1, b'b', b'c', 0, 0xff]);
        let zl = make_ziplist(&[Element::Bytes(b"x"), Element::Int(3)]);
        w.byte(LIST_ZIPLIST).s(b"zl").s(&zl);
        let mut is = Vec::new();
        is.extend_from_slice(&2u32.to_le_bytes());
        is.extend_from_slice(&2u32.to_le_bytes());
        is.extend_from_slice(&1i16.to_le_bytes());
        is.extend_from_slice(&9i16.to_le_bytes());
        w.byte(SET_INTSET).s(b"intset").s(&is);
        w.byte(ZSET_ZIPLIST).s(b"zzl").s(&zl);
        w.byte(HASH_ZIPLIST).s(b"hzl").s(&zl);
        w.byte(LIST_QUICKLIST).s(b"ql").len(2).s(&zl).s(&zl);
        let lp2 = make_listpack(&[Element::Bytes(b"f"), Element::Int(1)]);
        let lp1 = make_listpack(&[Element::Bytes(b"m")]);
        w.byte(HASH_LISTPACK).s(b"hlp").s(&lp2);
        w.byte(ZSET_LISTPACK).s(b"zlp").s(&lp2);
        w.byte(SET_LISTPACK).s(b"slp").s(&lp1);
        w.byte(LIST_QUICKLIST_2).s(b"ql2").len(2).len(2).s(&lp1).len(1).s(b"a big plain element");
        // A stream (v3) with one node, a group, a pending entry, a consumer.
        w.byte(STREAM_LISTPACKS_3).s(b"stream").len(1).s(&[0u8; 16]).s(&lp2);
        w.len(1).len(5).len(0); // length, last id
        w.len(5).len(0).len(0).len(0).len(1); // first id, max deleted, added
        w.len(1).s(b"group").len(5).len(0).len(1); // group, last id, entries read
        w.len(1).raw(&[0u8; 16]).raw(&7i64.to_le_bytes()).len(1); // PEL
        w.len(1).s(b"alice").raw(&1i64.to_le_bytes()).raw(&2i64.to_le_bytes()).len(1).raw(&[0u8; 16]);
        // A module value (type ids encode "ReJSON-RL").
        let id = module_id("ReJSON-RL", 3);
        w.byte(MODULE_2).s(b"json").len(id).len(5).s(b"{}").len(2).len(7).len(4).raw(&1.0f64.to_le_bytes()).len(0);
        w.byte(op::MODULE_AUX).len(id).len(2).len(0).len(5).s(b"aux").len(0);
        w.byte(op::SELECTDB).len(3);
        w.byte(op::FREQ).byte(9);
        w.byte(STRING).s(b"\x00binary\xffkey").s(b"\x00\x01");
        w.byte(op::FUNCTION2).s(b"#!lua name=lib\nredis.register_function('f', function() return 1 end)");
        w.finish()
    }

    pub fn module_id(name: &str, version: u64) -> u64 {
        const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for c in name.bytes() {
            id = (id << 6) | CHARSET.iter().position(|x| *x == c).unwrap() as u64;
        }
        (id << 10) | version
    }

    #[test]
    fn every_type_parses_shallow_and_deep() {
        let bytes = every_type();
        for depth in [Depth::Shallow, Depth::Deep] {
            let items = parse_all(&bytes, depth, false).unwrap();
            let keys: Vec<&KeyRecord> =
                items.iter().filter_map(|i| if let Item::Key(k) = i { Some(k) } else { None }).collect();
            assert_eq!(keys.len(), 22, "{depth:?}");
            assert_eq!(items.last(), Some(&Item::End(Checksum::Valid)));
            let exp = keys.iter().find(|k| k.key == b"oldlist").unwrap();
            assert_eq!((exp.expire_ms, exp.idle), (Some(1_900_000_000_000), Some(42)));
            assert_eq!(keys.iter().filter(|k| k.expire_ms.is_some()).count(), 1);
            let bin = keys.iter().find(|k| k.key == b"\x00binary\xffkey").unwrap();
            assert_eq!((bin.db, bin.freq), (3, Some(9)));
            let json = keys.iter().find(|k| k.key == b"json").unwrap();
            assert_eq!(json.module.as_deref(), Some("ReJSON-RL"));
            assert!(items.iter().any(|i| matches!(i, Item::Function { .. })));
            assert!(items.contains(&Item::ModuleAux { module: "ReJSON-RL".into() }));
        }
    }

    #[test]
    fn capture_keeps_exactly_the_value_bytes() {
        let bytes = every_type();
        let items = parse_all(&bytes, Depth::Shallow, true).unwrap();
        let k = items
            .iter()
            .find_map(|i| match i {
                Item::Key(k) if k.key == b"plain" => Some(k),
                _ => None,
            })
            .unwrap();
        assert_eq!(k.raw, b"\x00\x05value");
        let p = dump_payload(k.raw.clone(), 11);
        assert_eq!(&p[7..9], &11u16.to_le_bytes());
        assert_eq!(CRC64.checksum(&p[..9]).to_le_bytes(), p[9..]);
        let f = items.iter().find_map(|i| if let Item::Function { raw, .. } = i { Some(raw) } else { None }).unwrap();
        assert_eq!(f[0], op::FUNCTION2);
    }

    #[test]
    fn damage_is_found_with_its_offset() {
        let bytes = every_type();
        // A flipped byte anywhere fails the CRC (or the structure), and a
        // truncation anywhere is an error: never a panic, never success.
        for k in 9..bytes.len() {
            let mut bad = bytes.clone();
            bad[k] ^= 0x20;
            assert!(parse_all(&bad, Depth::Deep, false).is_err(), "flip at {k} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(parse_all(&bytes[..n], Depth::Shallow, false).is_err(), "truncation at {n}");
        }
        let mut bad = bytes.clone();
        let at = bytes.len() - 3;
        bad[at] ^= 1;
        let e = parse_all(&bad, Depth::Shallow, false).unwrap_err();
        assert!(e.reason.contains("CRC-64 mismatch"), "{e}");
    }

    #[test]
    fn deep_parse_finds_damage_inside_a_listpack() {
        let mut lp = make_listpack(&[Element::Bytes(b"f"), Element::Int(1)]);
        lp[4] = 3; // wrong element count
        let mut w = Writer::new(10);
        w.byte(types::HASH_LISTPACK).s(b"h").s(&lp);
        let bytes = w.finish();
        assert!(parse_all(&bytes, Depth::Shallow, false).is_ok());
        let e = parse_all(&bytes, Depth::Deep, false).unwrap_err();
        assert!(e.reason.contains("hash listpack") && e.offset == 12, "{e}");
    }

    #[test]
    fn versions_and_headers() {
        assert!(Parser::new(&b"REDIS0013"[..], Depth::Shallow).err().unwrap().reason.contains("version 13"));
        assert!(Parser::new(&b"RDB000010"[..], Depth::Shallow).is_err());
        let mut w = Writer::new(10);
        let mut bytes = w.finish();
        let n = bytes.len();
        bytes[n - 8..].fill(0);
        assert_eq!(parse_all(&bytes, Depth::Deep, false).unwrap(), vec![Item::End(Checksum::Disabled)]);
        assert_eq!(rdb_version_of("7.0.15"), Some(10));
        assert_eq!(rdb_version_of("7.2.4"), Some(11));
        assert_eq!(rdb_version_of("6.2.0"), Some(9));
        assert_eq!(module_name(module_id("ReJSON-RL", 3)), "ReJSON-RL");
    }
}
