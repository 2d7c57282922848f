//! A snapshot's entry list.
//!
//! Entries, sorted by path, are serialized one after another as CBOR maps
//! into one byte stream, and that stream is cut by the content-defined
//! chunker into tree blobs. Runs of unchanged entries therefore produce the
//! same tree blobs from one snapshot to the next and are stored once.

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file with content.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative `/`-separated path, no `.`/`..`/empty parts.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Unix permission bits (and file type bits if the source gives them).
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds within the second.
    pub mtime_nsec: u32,
    /// Content length in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Data blob ids, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Plain BLAKE3 of the whole content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Id>,
}

/// Serializes sorted entries into the tree byte stream.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 128);
    for e in entries {
        encode_entry(e, &mut out);
    }
    out
}

/// Appends one entry to a tree byte stream (see [`encode_entries`]).
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    ciborium::into_writer(entry, out).expect("entries serialize to a Vec");
}

/// The path of one entry as [`encode_entry`] writes it (its first field),
/// as bytes, without decoding the rest: entries sort by it as by
/// [`Entry::path`]. `None` if the entry does not start with its path.
pub fn encoded_path(entry: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    let (5, _) = head(entry, &mut pos)? else { return None };
    let (3, 4) = head(entry, &mut pos)? else { return None };
    if body(entry, &mut pos, 4)? != b"path" {
        return None;
    }
    let (3, len) = head(entry, &mut pos)? else { return None };
    body(entry, &mut pos, len)
}

/// Parses the tree byte stream. Entries in the shape [`encode_entries`]
/// writes are read by [`fast_entry`]; anything else (an older or foreign
/// encoding, a damaged entry) goes through the general CBOR decoder, which
/// also words the error.
pub fn decode_entries(data: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    decode_into(data, &mut out)?;
    Ok(out)
}

/// Decodes every entry of `data` onto the end of `out`; errors number the
/// entries as `out` does.
fn decode_into(data: &[u8], out: &mut Vec<Entry>) -> Result<(), String> {
    let mut pos = 0;
    // One scratch buffer for every entry (`from_reader` would clear a fresh
    // 4 KiB one for each).
    let mut scratch = Vec::new();
    while pos < data.len() {
        let mut at = pos;
        if let Some(e) = fast_entry(data, &mut at) {
            out.push(e);
            pos = at;
            continue;
        }
        if scratch.is_empty() {
            scratch = vec![0u8; 4096];
        }
        let mut cursor = std::io::Cursor::new(&data[pos..]);
        let e: Entry = ciborium::de::from_reader_with_buffer(&mut cursor, &mut scratch)
            .map_err(|e| format!("entry {}: {e}", out.len()))?;
        out.push(e);
        pos += cursor.position() as usize;
    }
    Ok(())
}

/// Decodes a tree stream that arrives in pieces (its tree blobs, in
/// order): the complete entries of each piece are decoded as it comes, so
/// the stream is never held whole, only the bytes of an entry that a piece
/// boundary cut. The same entries and errors as [`decode_entries`] on the
/// whole stream.
#[derive(Default)]
pub struct EntryDecoder {
    /// Bytes not decoded yet: an entry cut by a piece boundary (or, after
    /// an entry [`fast_entry`] does not read, everything from there on,
    /// for the general decoder at the end).
    carry: Vec<u8>,
    entries: Vec<Entry>,
}

impl EntryDecoder {
    /// A decoder with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        EntryDecoder { carry: Vec::new(), entries: Vec::with_capacity(n) }
    }

    /// Adds the next piece of the stream.
    pub fn push(&mut self, piece: &[u8]) {
        self.carry.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let mut at = pos;
            match fast_entry(&self.carry, &mut at) {
                Some(e) => {
                    self.entries.push(e);
                    pos = at;
                }
                None => break,
            }
        }
        self.carry.drain(..pos);
    }

    /// Decodes what is left and returns every entry.
    pub fn finish(mut self) -> Result<Vec<Entry>, String> {
        decode_into(&self.carry, &mut self.entries)?;
        Ok(self.entries)
    }
}

/// A CBOR item head at `data[*pos..]`: major type and argument. `None` for
/// an indefinite length, a reserved value or the end of the data.
fn head(data: &[u8], pos: &mut usize) -> Option<(u8, u64)> {
    let first = *data.get(*pos)?;
    let (major, info) = (first >> 5, first & 0x1f);
    let extra = match info {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
    };
    let bytes = data.get(*pos + 1..*pos + 1 + extra)?;
    let arg = if extra == 0 { u64::from(info) } else { bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)) };
    *pos += 1 + extra;
    Some((major, arg))
}

/// The `len` bytes after the head, as a CBOR string or byte string body.
fn body<'a>(data: &'a [u8], pos: &mut usize, len: u64) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    let b = data.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(b)
}

fn text<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    match head(data, pos)? {
        (3, len) => std::str::from_utf8(body(data, pos, len)?).ok(),
        _ => None,
    }
}

fn uint(data: &[u8], pos: &mut usize) -> Option<u64> {
    match head(data, pos)? {
        (0, v) => Some(v),
        _ => None,
    }
}

fn id(data: &[u8], pos: &mut usize) -> Option<Id> {
    match head(data, pos)? {
        (2, 32) => Id::from_slice(body(data, pos, 32)?),
        _ => None,
    }
}

/// Reads one entry written by [`encode_entries`] (a definite map of known
/// field names to values of the expected CBOR types) without going through
/// serde, which spent microseconds per entry on a parent snapshot of a
/// hundred thousand files. `None`, with `pos` left anywhere, for anything
/// else: an unknown or repeated field, a missing one, another type.
fn fast_entry(data: &[u8], pos: &mut usize) -> Option<Entry> {
    let (5, fields) = head(data, pos)? else { return None };
    let (mut path, mut kind, mut mode, mut mtime, mut mtime_nsec, mut size) = (None, None, None, None, None, None);
    let (mut target, mut content, mut blake3) = (None, None, None);
    for _ in 0..fields {
        // Each field at most once, as serde requires.
        match text(data, pos)? {
            "path" if path.is_none() => path = Some(text(data, pos)?.to_string()),
            "kind" if kind.is_none() => {
                kind = Some(match text(data, pos)? {
                    "file" => EntryKind::File,
                    "dir" => EntryKind::Dir,
                    "symlink" => EntryKind::Symlink,
                    _ => return None,
                })
            }
            "mode" if mode.is_none() => mode = Some(u32::try_from(uint(data, pos)?).ok()?),
            "mtime" if mtime.is_none() => {
                mtime = Some(match head(data, pos)? {
                    (0, v) => i64::try_from(v).ok()?,
                    (1, v) => -1 - i64::try_from(v).ok()?,
                    _ => return None,
                })
            }
            "mtime_nsec" if mtime_nsec.is_none() => mtime_nsec = Some(u32::try_from(uint(data, pos)?).ok()?),
            "size" if size.is_none() => size = Some(uint(data, pos)?),
            "target" if target.is_none() => target = Some(text(data, pos)?.to_string()),
            "content" if content.is_none() => {
                let (4, n) = head(data, pos)? else { return None };
                // Each id takes 34 bytes: a count beyond the data is damage.
                let n = usize::try_from(n).ok().filter(|n| *n <= data.len() / 34)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(id(data, pos)?);
                }
                content = Some(ids);
            }
            "blake3" if blake3.is_none() => blake3 = Some(id(data, pos)?),
            _ => return None,
        }
    }
    Some(Entry {
        path: path?,
        kind: kind?,
        mode: mode?,
        mtime: mtime?,
        mtime_nsec: mtime_nsec?,
        size: size?,
        target,
        content: content.unwrap_or_default(),
        blake3,
    })
}

/// Checks that a path is relative, `/`-separated and free of `.`/`..`/empty
/// parts and NUL bytes.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.contains('\0') {
        return Err("NUL byte in path".into());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("paths may not contain empty, `.` or `..` parts".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        let id = |b: u8| Id([b; 32]);
        let base = Entry {
            path: "a".into(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 999_999_999,
            size: 3 << 40,
            target: None,
            content: vec![id(1), id(2)],
            blake3: Some(id(3)),
        };
        vec![
            base.clone(),
            Entry { path: "b/empty".into(), size: 0, content: vec![], blake3: Some(id(4)), ..base.clone() },
            Entry { path: "c".into(), kind: EntryKind::Dir, mode: 0o4755, mtime: -1, mtime_nsec: 0, ..base.clone() },
            Entry {
                path: "d ü".into(),
                kind: EntryKind::Symlink,
                mtime: i64::MIN,
                size: 0,
                target: Some("/x".repeat(3000)),
                content: vec![],
                blake3: None,
                ..base.clone()
            },
            Entry { path: "e".into(), mtime: i64::MAX, size: u64::MAX, mode: u32::MAX, ..base },
        ]
    }

    #[test]
    fn the_fast_path_reads_what_encode_writes_as_serde_does() {
        let want = entries();
        let data = encode_entries(&want);
        let mut pos = 0;
        for w in &want {
            let start = pos;
            assert_eq!(fast_entry(&data, &mut pos).as_ref(), Some(w));
            let via_serde: Entry = ciborium::from_reader(&data[start..pos]).unwrap();
            assert_eq!(&via_serde, w);
        }
        assert_eq!(pos, data.len());
        assert_eq!(decode_entries(&data).unwrap(), want);
    }

    /// A stream decoded piece by piece, cut anywhere (as tree blobs cut
    /// it), gives the entries of the whole stream, and a cut-off stream is
    /// an error at the end; so is a foreign entry in the middle read.
    #[test]
    fn a_stream_in_pieces_decodes_as_the_whole() {
        let want = entries();
        let whole = encode_entries(&want);
        for piece in [1, 7, 40, 1000, whole.len()] {
            let mut d = EntryDecoder::with_capacity(2);
            for p in whole.chunks(piece) {
                d.push(p);
            }
            assert_eq!(d.finish().unwrap(), want, "pieces of {piece}");
            let mut d = EntryDecoder::default();
            d.push(&whole[..whole.len() - 1]);
            assert!(d.finish().is_err());
        }
        // The paths the sort at commit reads are those of the entries.
        let mut pos = 0;
        for w in &want {
            let start = pos;
            fast_entry(&whole, &mut pos).unwrap();
            assert_eq!(encoded_path(&whole[start..pos]), Some(w.path.as_bytes()));
        }
        assert_eq!(encoded_path(b"\xa1\x64kind"), None);
    }

    #[test]
    fn other_shapes_go_through_serde_and_damage_is_an_error() {
        // An entry with an unknown field and an explicit null (another
        // writer's shape) is read by the general decoder.
        #[derive(Serialize)]
        struct Foreign<'a> {
            extra: u8,
            path: &'a str,
            kind: &'a str,
            mode: u32,
            mtime: i64,
            mtime_nsec: u32,
            size: u64,
            target: Option<&'a str>,
        }
        let mut data = encode_entries(&entries()[..1]);
        let f =
            Foreign { extra: 1, path: "z", kind: "dir", mode: 0o755, mtime: 5, mtime_nsec: 0, size: 0, target: None };
        ciborium::into_writer(&f, &mut data).unwrap();
        let mut at = encode_entries(&entries()[..1]).len();
        assert!(fast_entry(&data, &mut at).is_none());
        let got = decode_entries(&data).unwrap();
        assert_eq!(got.len(), 2);
        let mut d = EntryDecoder::default();
        for p in data.chunks(5) {
            d.push(p);
        }
        assert_eq!(d.finish().unwrap(), got);
        assert_eq!((got[1].path.as_str(), got[1].kind, got[1].target.clone()), ("z", EntryKind::Dir, None));

        // Cut anywhere but between entries, the stream is an error, never a
        // panic.
        let whole = encode_entries(&entries());
        let bounds: Vec<usize> = (1..=entries().len()).map(|n| encode_entries(&entries()[..n]).len()).collect();
        for cut in (1..whole.len()).filter(|c| !bounds.contains(c)) {
            if let Ok(got) = decode_entries(&whole[..cut]) {
                panic!("a stream cut at {cut} of {} decoded to {} entries", whole.len(), got.len());
            }
        }
        // A flipped byte is an error or a different entry, never a panic.
        for i in 0..whole.len() {
            let mut bad = whole.clone();
            bad[i] ^= 0x55;
            let _ = decode_entries(&bad);
        }
    }
}
