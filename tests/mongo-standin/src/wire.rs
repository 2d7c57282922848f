//! MongoDB wire-protocol framing: the 16-byte header, OP_MSG (2013) with
//! kind 0 and kind 1 sections and the optional CRC-32C checksum, the legacy
//! OP_QUERY (2004) / OP_REPLY (1) pair that drivers use for their first
//! `hello`, and OP_COMPRESSED (2012) with snappy or no-op compression.

use std::io::{self, Read, Write};

use bson::{Bson, Document};

/// OP_REPLY, the legacy reply to OP_QUERY.
pub const OP_REPLY: i32 = 1;
/// OP_QUERY, kept by servers only for the first handshake.
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED: wraps another message.
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG, every command since MongoDB 3.6.
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag bit 0: a CRC-32C of the message follows the sections.
pub const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag bit 1: the sender will send another message without waiting
/// for (or, from a client, without wanting) a reply.
pub const MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag bit 16: the client accepts exhaust replies.
pub const EXHAUST_ALLOWED: u32 = 1 << 16;

/// maxMessageSizeBytes as a 7.0 server announces it.
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// maxBsonObjectSize: the largest user document.
pub const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;
/// The largest document the server parses at all (16 MiB + 16 KiB, room for
/// a command around a maximal document).
pub const MAX_INTERNAL_BSON_SIZE: usize = MAX_BSON_SIZE + 16 * 1024;

/// Compressor ids of OP_COMPRESSED.
pub const COMPRESSOR_NOOP: u8 = 0;
/// snappy
pub const COMPRESSOR_SNAPPY: u8 = 1;

/// One request as read off the socket.
pub struct Request {
    pub request_id: i32,
    /// The compressor the request came with (the reply uses the same one).
    pub compressor: Option<u8>,
    pub body: RequestBody,
}

pub enum RequestBody {
    /// OP_MSG: flag bits, the kind 0 body, and kind 1 sequences (identifier,
    /// documents) with each document's size as sent.
    Msg { flags: u32, body: Document, sequences: Vec<(String, Vec<Document>)> },
    /// OP_QUERY on `collection` (`admin.$cmd` for a handshake).
    Query { collection: String, query: Document },
    /// A document that failed to parse or was too large: the error to send
    /// back as a command reply.
    Invalid { code: i32, code_name: &'static str, message: String },
    /// Any other opcode (OP_INSERT, OP_GET_MORE... removed in 6.0): the
    /// server closes the connection.
    Unsupported,
}

/// Why a connection ends (the server closes it either way; the reason is
/// kept for debugging).
#[derive(Debug)]
#[allow(dead_code)]
pub enum ReadError {
    Io(io::Error),
    /// Bytes that are not a valid message (closing is what servers do).
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub fn read_request(stream: &mut impl Read) -> Result<Option<Request>, ReadError> {
    let mut header = [0u8; 16];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = le_i32(&header[0..4]);
    if len < 16 || len as usize > MAX_MESSAGE_SIZE {
        return Err(ReadError::Protocol(format!("message length {len} is out of range")));
    }
    let request_id = le_i32(&header[4..8]);
    let op = le_i32(&header[12..16]);
    let mut payload = vec![0u8; len as usize - 16];
    stream.read_exact(&mut payload)?;
    if op == OP_COMPRESSED {
        if payload.len() < 9 {
            return Err(ReadError::Protocol("short OP_COMPRESSED".into()));
        }
        let original = le_i32(&payload[0..4]);
        let size = le_i32(&payload[4..8]);
        let id = payload[8];
        if size < 0 || size as usize > MAX_MESSAGE_SIZE {
            return Err(ReadError::Protocol(format!("uncompressed size {size} out of range")));
        }
        let data = decompress(id, &payload[9..]).map_err(ReadError::Protocol)?;
        if data.len() != size as usize {
            return Err(ReadError::Protocol("uncompressed size does not match the header".into()));
        }
        let body = parse_body(original, &header, &data)?;
        return Ok(Some(Request { request_id, compressor: Some(id), body }));
    }
    let body = parse_body(op, &header, &payload)?;
    Ok(Some(Request { request_id, compressor: None, body }))
}

fn decompress(id: u8, data: &[u8]) -> Result<Vec<u8>, String> {
    match id {
        COMPRESSOR_NOOP => Ok(data.to_vec()),
        COMPRESSOR_SNAPPY => snap::raw::Decoder::new().decompress_vec(data).map_err(|e| format!("snappy: {e}")),
        other => Err(format!("compressor id {other} is not supported")),
    }
}

fn compress(id: u8, data: &[u8]) -> Vec<u8> {
    match id {
        COMPRESSOR_SNAPPY => snap::raw::Encoder::new().compress_vec(data).unwrap_or_default(),
        _ => data.to_vec(),
    }
}

/// Parses one BSON document at the start of `b`; returns it and its length.
fn take_doc(b: &[u8]) -> Result<(Document, usize), Result<RequestBody, ReadError>> {
    if b.len() < 5 {
        return Err(Err(ReadError::Protocol("truncated document".into())));
    }
    let size = le_i32(b);
    if size < 5 || size as usize > b.len() {
        return Err(Err(ReadError::Protocol(format!("document size {size} overruns the message"))));
    }
    let size = size as usize;
    if size > MAX_INTERNAL_BSON_SIZE {
        let first = match Document::from_reader(&b[..size]) {
            Ok(d) => {
                d.iter().next().map(|(k, v)| format!("{k}: {}", crate::query::shell_string(v))).unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        let shown: String = first.chars().take(80).collect();
        return Err(Ok(RequestBody::Invalid {
            code: 10334,
            code_name: "BSONObjectTooLarge",
            message: format!(
                "BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {MAX_INTERNAL_BSON_SIZE}(16MB) First element: {shown}"
            ),
        }));
    }
    match Document::from_reader(&b[..size]) {
        Ok(d) => Ok((d, size)),
        Err(e) => Err(Err(ReadError::Protocol(format!("invalid BSON: {e}")))),
    }
}

fn parse_body(op: i32, header: &[u8; 16], payload: &[u8]) -> Result<RequestBody, ReadError> {
    match op {
        OP_MSG => {
            if payload.len() < 5 {
                return Err(ReadError::Protocol("short OP_MSG".into()));
            }
            let flags = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            let known = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED;
            if flags & 0xffff & !known != 0 {
                return Err(ReadError::Protocol(format!("OP_MSG has unknown required flag bits {flags:#x}")));
            }
            let mut end = payload.len();
            if flags & CHECKSUM_PRESENT != 0 {
                if end < 9 {
                    return Err(ReadError::Protocol("OP_MSG too short for its checksum".into()));
                }
                end -= 4;
                let want = u32::from_le_bytes([payload[end], payload[end + 1], payload[end + 2], payload[end + 3]]);
                let got = crc32c_update(crc32c_update(0, header), &payload[..end]);
                if got != want {
                    return Err(ReadError::Protocol("OP_MSG checksum mismatch".into()));
                }
            }
            let mut body = None;
            let mut sequences = Vec::new();
            let mut i = 4;
            while i < end {
                let kind = payload[i];
                i += 1;
                match kind {
                    0 => {
                        let (d, n) = match take_doc(&payload[i..end]) {
                            Ok(x) => x,
                            Err(r) => return r,
                        };
                        if body.replace(d).is_some() {
                            return Err(ReadError::Protocol("OP_MSG has two kind 0 sections".into()));
                        }
                        i += n;
                    }
                    1 => {
                        if i + 4 > end {
                            return Err(ReadError::Protocol("truncated document sequence".into()));
                        }
                        let size = le_i32(&payload[i..]);
                        if size < 5 || i + size as usize > end {
                            return Err(ReadError::Protocol("document sequence overruns the message".into()));
                        }
                        let seq_end = i + size as usize;
                        let mut j = i + 4;
                        let nul = payload[j..seq_end]
                            .iter()
                            .position(|b| *b == 0)
                            .ok_or_else(|| ReadError::Protocol("sequence identifier is not terminated".into()))?;
                        let ident = String::from_utf8_lossy(&payload[j..j + nul]).into_owned();
                        j += nul + 1;
                        let mut docs = Vec::new();
                        while j < seq_end {
                            let (d, n) = match take_doc(&payload[j..seq_end]) {
                                Ok(x) => x,
                                Err(r) => return r,
                            };
                            docs.push(d);
                            j += n;
                        }
                        sequences.push((ident, docs));
                        i = seq_end;
                    }
                    other => return Err(ReadError::Protocol(format!("unknown OP_MSG section kind {other}"))),
                }
            }
            let body = body.ok_or_else(|| ReadError::Protocol("OP_MSG without a kind 0 section".into()))?;
            Ok(RequestBody::Msg { flags, body, sequences })
        }
        OP_QUERY => {
            if payload.len() < 4 {
                return Err(ReadError::Protocol("short OP_QUERY".into()));
            }
            let rest = &payload[4..];
            let nul =
                rest.iter().position(|b| *b == 0).ok_or_else(|| ReadError::Protocol("OP_QUERY namespace".into()))?;
            let collection = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let after = nul + 1 + 8; // numberToSkip, numberToReturn
            if rest.len() < after {
                return Err(ReadError::Protocol("short OP_QUERY".into()));
            }
            let (mut query, _) = match take_doc(&rest[after..]) {
                Ok(x) => x,
                Err(r) => return r,
            };
            // A query may be wrapped as {$query: {...}, $readPreference: ...}.
            if let Some(Bson::Document(inner)) = query.get("$query") {
                query = inner.clone();
            }
            Ok(RequestBody::Query { collection, query })
        }
        _ => Ok(RequestBody::Unsupported),
    }
}

/// Writes a message with the given opcode and payload, compressed with
/// `compressor` when the request was.
fn write_message(
    out: &mut impl Write,
    request_id: i32,
    response_to: i32,
    op: i32,
    payload: &[u8],
    compressor: Option<u8>,
) -> io::Result<()> {
    let mut msg = Vec::with_capacity(payload.len() + 25);
    match compressor {
        Some(id) => {
            let data = compress(id, payload);
            msg.extend_from_slice(&((16 + 9 + data.len()) as i32).to_le_bytes());
            msg.extend_from_slice(&request_id.to_le_bytes());
            msg.extend_from_slice(&response_to.to_le_bytes());
            msg.extend_from_slice(&OP_COMPRESSED.to_le_bytes());
            msg.extend_from_slice(&op.to_le_bytes());
            msg.extend_from_slice(&(payload.len() as i32).to_le_bytes());
            msg.push(id);
            msg.extend_from_slice(&data);
        }
        None => {
            msg.extend_from_slice(&((16 + payload.len()) as i32).to_le_bytes());
            msg.extend_from_slice(&request_id.to_le_bytes());
            msg.extend_from_slice(&response_to.to_le_bytes());
            msg.extend_from_slice(&op.to_le_bytes());
            msg.extend_from_slice(payload);
        }
    }
    out.write_all(&msg)?;
    out.flush()
}

/// Sends an OP_MSG reply with one kind 0 section.
pub fn write_msg(
    out: &mut impl Write,
    request_id: i32,
    response_to: i32,
    flags: u32,
    doc: &Document,
    compressor: Option<u8>,
) -> io::Result<()> {
    let mut payload = flags.to_le_bytes().to_vec();
    payload.push(0);
    doc.to_writer(&mut payload).map_err(io::Error::other)?;
    write_message(out, request_id, response_to, OP_MSG, &payload, compressor)
}

/// Sends an OP_REPLY holding one document.
pub fn write_reply(
    out: &mut impl Write,
    request_id: i32,
    response_to: i32,
    doc: &Document,
    compressor: Option<u8>,
) -> io::Result<()> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&8i32.to_le_bytes()); // responseFlags: AwaitCapable
    payload.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    payload.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    payload.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    doc.to_writer(&mut payload).map_err(io::Error::other)?;
    write_message(out, request_id, response_to, OP_REPLY, &payload, compressor)
}

/// CRC-32C (Castagnoli), bitwise: checksums are rare (drivers send them
/// only when asked), so speed does not matter.
pub fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
        }
    }
    !c
}
