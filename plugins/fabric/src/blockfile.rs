//! Fabric's block files (`blockfile_NNNNNN` under `chains/chains/<channel>/`
//! on a peer, `chains/<channel>/` on an orderer): a sequence of records,
//! each a varint length followed by Fabric's own block serialization (not a
//! `common.Block` protobuf):
//!
//! ```text
//! varint  number
//! bytes   data_hash          (bytes = varint length, then the bytes)
//! bytes   previous_hash
//! varint  transaction count, then `bytes` per envelope (common.Envelope)
//! varint  metadata count,    then `bytes` per entry (common.Metadata)
//! ```
//!
//! A peer appends records and never rewrites them, so a file read while the
//! peer writes may end inside a record: [`scan`] reports that tail as
//! partial, not as damage.

use std::fmt;

/// One block as stored in a block file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock<'a> {
    /// Block number.
    pub number: u64,
    /// SHA-256 of the concatenated envelopes, as the header records it.
    pub data_hash: &'a [u8],
    /// The previous header's hash, as the header records it.
    pub previous_hash: &'a [u8],
    /// Transactions: marshalled `common.Envelope`s.
    pub envelopes: Vec<&'a [u8]>,
    /// Metadata entries: marshalled `common.Metadata`s, by
    /// `BlockMetadataIndex`.
    pub metadata: Vec<&'a [u8]>,
}

/// A record: where it starts and what it holds.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Byte offset of the record (its length varint) in the file.
    pub offset: u64,
    /// Where the record ends (the next one's offset): the whole record,
    /// length included, is `offset..end`.
    pub end: u64,
    /// The block serialization.
    pub bytes: &'a [u8],
}

/// A file's records and how it ends.
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    /// Complete records, in file order.
    pub records: Vec<Record<'a>>,
    /// Where the complete records end: the file's useful length.
    pub complete_len: u64,
    /// Bytes after the last complete record (a partly written record).
    pub partial_tail: u64,
}

/// A decoding problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// Reads a protobuf-style varint at `*at`; `None` when the input ends
/// inside it, an error when it is longer than 10 bytes.
pub(crate) fn varint(buf: &[u8], at: &mut usize) -> Result<Option<u64>, FormatError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*at + i) else { return Ok(None) };
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *at += i + 1;
            return Ok(Some(v));
        }
    }
    Err(FormatError(format!("varint at byte {} is longer than 10 bytes", *at)))
}

/// Splits a file into records. The last record may be incomplete (the
/// file ends inside its length or its bytes): it is counted in
/// `partial_tail`, not returned.
pub fn scan(buf: &[u8]) -> Scan<'_> {
    let mut records = Vec::new();
    let mut at = 0usize;
    loop {
        let start = at;
        if start == buf.len() {
            break;
        }
        let mut p = start;
        let len = match varint(buf, &mut p) {
            Ok(Some(len)) => len,
            // A malformed length: treated as the end of what can be read;
            // the caller sees the tail and reports it.
            Ok(None) | Err(_) => break,
        };
        let Some(end) = usize::try_from(len).ok().and_then(|l| p.checked_add(l)) else { break };
        if end > buf.len() {
            break;
        }
        records.push(Record { offset: start as u64, end: end as u64, bytes: &buf[p..end] });
        at = end;
    }
    Scan { records, complete_len: at as u64, partial_tail: (buf.len() - at) as u64 }
}

fn raw_bytes<'a>(buf: &'a [u8], at: &mut usize, what: &str) -> Result<&'a [u8], FormatError> {
    let len = varint(buf, at)?.ok_or_else(|| FormatError(format!("the record ends inside the length of {what}")))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| at.checked_add(l))
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| FormatError(format!("{what} declares {len} bytes; the record ends before")))?;
    let s = &buf[*at..end];
    *at = end;
    Ok(s)
}

fn count(buf: &[u8], at: &mut usize, what: &str) -> Result<usize, FormatError> {
    let n = varint(buf, at)?.ok_or_else(|| FormatError(format!("the record ends inside the {what} count")))?;
    // Every item takes at least one byte: a larger count cannot be real.
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= buf.len() - *at)
        .ok_or_else(|| FormatError(format!("{what} count {n} exceeds the record")))
}

/// Decodes one record's block serialization.
pub fn decode_block(rec: &[u8]) -> Result<StoredBlock<'_>, FormatError> {
    let mut at = 0usize;
    let number = varint(rec, &mut at)?.ok_or_else(|| FormatError("the record ends inside the block number".into()))?;
    let data_hash = raw_bytes(rec, &mut at, "the data hash")?;
    let previous_hash = raw_bytes(rec, &mut at, "the previous hash")?;
    let n = count(rec, &mut at, "transaction")?;
    let mut envelopes = Vec::with_capacity(n);
    for i in 0..n {
        envelopes.push(raw_bytes(rec, &mut at, &format!("transaction {i}"))?);
    }
    let n = count(rec, &mut at, "metadata")?;
    let mut metadata = Vec::with_capacity(n);
    for i in 0..n {
        metadata.push(raw_bytes(rec, &mut at, &format!("metadata entry {i}"))?);
    }
    if at != rec.len() {
        return Err(FormatError(format!("{} bytes follow the block's last metadata entry", rec.len() - at)));
    }
    Ok(StoredBlock { number, data_hash, previous_hash, envelopes, metadata })
}

/// Appends the DER encoding of a length.
fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The ASN.1 DER encoding Fabric hashes for a header:
/// `SEQUENCE { INTEGER number, OCTET STRING previous_hash, OCTET STRING data_hash }`.
pub fn header_der(number: u64, previous_hash: &[u8], data_hash: &[u8]) -> Vec<u8> {
    // INTEGER: minimal big-endian two's complement (a leading 0 when the
    // top bit is set, since the number is unsigned).
    let be = number.to_be_bytes();
    let skip = be.iter().take_while(|&&b| b == 0).count().min(7);
    let mut int = Vec::with_capacity(9);
    if be[skip] & 0x80 != 0 {
        int.push(0);
    }
    int.extend_from_slice(&be[skip..]);
    let mut body = Vec::with_capacity(int.len() + previous_hash.len() + data_hash.len() + 12);
    body.push(0x02);
    der_len(&mut body, int.len());
    body.extend_from_slice(&int);
    for s in [previous_hash, data_hash] {
        body.push(0x04);
        der_len(&mut body, s.len());
        body.extend_from_slice(s);
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

impl StoredBlock<'_> {
    /// The header's DER encoding (what is hashed and signed).
    pub fn header_der(&self) -> Vec<u8> {
        header_der(self.number, self.previous_hash, self.data_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_der_matches_go_asn1() {
        // Go's asn1.Marshal of {0, [], []} and of a number with the top bit set.
        assert_eq!(header_der(0, &[], &[]), vec![0x30, 0x07, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
        assert_eq!(header_der(128, &[], &[]), vec![0x30, 0x08, 0x02, 0x02, 0x00, 0x80, 0x04, 0x00, 0x04, 0x00]);
        let big = header_der(1, &[7; 32], &[9; 200]);
        assert_eq!(&big[..4], &[0x30, 0x81, 0xf0, 0x02]);
    }

    #[test]
    fn a_cut_record_is_a_partial_tail() {
        let mut file = vec![3, 0, 0, 0];
        file.extend_from_slice(&[5, 1, 2]);
        let s = scan(&file);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.complete_len, 4);
        assert_eq!(s.partial_tail, 3);
        // A cut inside the length varint.
        let s = scan(&[0x80]);
        assert_eq!((s.records.len(), s.partial_tail), (0, 1));
    }
}
