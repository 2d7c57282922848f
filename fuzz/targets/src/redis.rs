//! Targets for the `redis` plugin's readers: RDB files (as streamed by a
//! server or read from a data directory), LZF strings, the compact
//! encodings inside RDB strings, AOF manifests and RESP command files.

use coffer_fuzz_formats::rdb::{self, Depth, Item, Parser};
use coffer_fuzz_formats::{aof, compact, lzf};

use crate::{Pieces, control};

/// Every record of an RDB file, and how the walk ended.
fn walk(data: &[u8], piece: usize, depth: Depth, capture: bool) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    let Ok(p) = Parser::new(Pieces { data, piece }, depth) else { return (items, false) };
    let version = p.version();
    let mut p = p.capture(capture);
    loop {
        match p.next_item() {
            Ok(Some(item)) => {
                if let Item::Key(k) = &item {
                    let _ = rdb::dump_payload(k.raw.clone(), version);
                    let _ = rdb::type_name(k.kind);
                }
                items.push(item);
            }
            Ok(None) => return (items, true),
            Err(_) => return (items, false),
        }
    }
}

/// An RDB file after a control byte: its low 6 bits + 1 are the size of
/// the reads the parser gets, its top bit turns capture on. A shallow walk
/// (what a backup does) and a deep one (what verify does) must read the
/// same records as far as the deep one gets, and the deep one may only
/// refuse more.
pub(crate) fn rdb(data: &[u8]) {
    let Some((c, file)) = control(data) else { return };
    let piece = usize::from(c & 0x3f) + 1;
    let capture = c & 0x80 != 0;
    let (shallow, shallow_ok) = walk(file, piece, Depth::Shallow, capture);
    let (deep, deep_ok) = walk(file, piece, Depth::Deep, capture);
    assert!(deep.len() <= shallow.len(), "a deep walk read more records than a shallow one");
    assert_eq!(deep[..], shallow[..deep.len()], "deep and shallow walks read different records");
    if deep_ok {
        assert!(shallow_ok && deep.len() == shallow.len(), "a file verify accepts fails a backup");
    }
    // Reads of any size give the same records.
    let (whole, whole_ok) = walk(file, file.len().max(1), Depth::Shallow, capture);
    assert_eq!((whole, whole_ok), (shallow, shallow_ok), "the records depend on the size of the reads");
}

/// An LZF string: the first 4 bytes are the length the RDB announces (LE,
/// up to 2 GiB, as the RDB parser allows), the rest the compressed data.
pub(crate) fn lzf(data: &[u8]) {
    let Some((len, compressed)) = data.split_first_chunk::<4>() else { return };
    let expected = (u32::from_le_bytes(*len) & 0x7fff_ffff) as usize;
    if let Ok(out) = lzf::decompress(compressed, expected) {
        assert_eq!(out.len(), expected);
    }
}

/// A compact encoding after a control byte that picks it: listpack,
/// ziplist, intset or zipmap. The count returned must be the number of
/// elements walked.
pub(crate) fn compact(data: &[u8]) {
    let Some((c, blob)) = control(data) else { return };
    match c % 4 {
        0 => {
            let mut n = 0;
            if let Ok(count) = compact::listpack(blob, |_| n += 1) {
                assert_eq!(count, n);
            }
        }
        1 => {
            let mut n = 0;
            if let Ok(count) = compact::ziplist(blob, |_| n += 1) {
                assert_eq!(count, n);
            }
        }
        2 => {
            let _ = compact::intset(blob);
        }
        _ => {
            let _ = compact::zipmap(blob);
        }
    }
}

/// The input as an AOF manifest, and as a RESP command file: checked
/// whole, and fed to a [`aof::RespWalker`] in pieces of the first byte's
/// value + 1 bytes (a backup copies the files in pieces), which must find
/// the same commands.
pub(crate) fn aof(data: &[u8]) {
    if let Ok(files) = aof::parse_manifest(&String::from_utf8_lossy(data)) {
        let order = aof::load_order(&files);
        assert!(order.len() <= files.len());
    }
    let Some((c, _)) = control(data) else { return };
    let whole = aof::check_commands(data);
    let mut w = aof::RespWalker::new();
    let mut complete = 0u64;
    let mut failed = false;
    for piece in data.chunks(usize::from(c) + 1) {
        match w.feed(piece) {
            Ok(n) => complete += n,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        assert_eq!(complete, w.complete_offset());
    }
    if let Ok((commands, bytes)) = whole {
        assert!(!failed, "fed in pieces, a file that checks whole is refused");
        assert_eq!((w.commands, complete, w.incomplete()), (commands, bytes, 0));
    }
}
