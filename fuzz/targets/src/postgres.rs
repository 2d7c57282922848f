//! Targets for the `postgres` plugin's readers: the tar headers of a base
//! backup stream and the backup manifest and `backup_label` it sends.

use coffer_fuzz_formats::manifest::{self, Manifest};
use coffer_fuzz_formats::tar::{self, BLOCK, Kind};
use sha2::Digest;

use crate::control;

/// Writes a header block's checksum field as tar does: the sum of its
/// bytes with the field taken as spaces, six octal digits, NUL, space.
pub(crate) fn set_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Header blocks after a control byte: when its low bit is set, each
/// block's checksum is made right before it is parsed (a fuzzer would not
/// find it), so the fields behind it are reached.
pub(crate) fn tar(data: &[u8]) {
    let Some((c, blocks)) = control(data) else { return };
    for chunk in blocks.chunks(BLOCK) {
        let mut block = [0u8; BLOCK];
        block[..chunk.len()].copy_from_slice(chunk);
        if c & 1 == 1 {
            set_checksum(&mut block);
        }
        if let Ok(Some(h)) = tar::parse(&block) {
            assert!(h.padding() < BLOCK as u64);
            assert!(!h.path.is_empty() && !h.path.starts_with('/') && !h.path.ends_with('/'), "{:?}", h.path);
            assert!(h.path.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{:?}", h.path);
            if h.kind != Kind::File {
                assert_eq!(h.size, 0);
            }
        }
    }
}

/// A backup manifest as sent, then the input completed with the checksum
/// line the server writes (so the layout behind the checksum is reached),
/// and the input as a `backup_label`.
pub(crate) fn manifest(data: &[u8]) {
    let _ = Manifest::parse(data);
    let mut signed = data.to_vec();
    signed.push(b'\n');
    let sum = hex::encode(sha2::Sha256::digest(&signed));
    signed.extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
    let _ = Manifest::parse(&signed);
    let _ = manifest::parse_label(&String::from_utf8_lossy(data));
}
