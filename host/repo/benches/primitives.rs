//! Criterion micro-benchmarks of the hot path's parts on 8 MiB of real files
//! from /usr/lib: chunk id (keyed BLAKE3), sealing, zstd, FastCDC, and a whole
//! blob encode and decode. Run with `cargo xtask bench primitives`.

use std::path::Path;

use bytes::Bytes;
use coffer_repo::blob::{self, BlobKind, Compression};
use coffer_repo::chunker::{Chunker, ChunkerParams};
use coffer_repo::crypto::{Keys, MasterSecret};
use criterion::{Criterion, Throughput, criterion_main};

const SAMPLE: usize = 8 << 20;

fn real_bytes() -> Vec<u8> {
    fn walk(dir: &Path, out: &mut Vec<u8>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if out.len() >= SAMPLE {
                return;
            }
            match p.symlink_metadata() {
                Ok(m) if m.is_dir() => walk(&p, out),
                Ok(m) if m.is_file() => out.extend_from_slice(&std::fs::read(&p).unwrap_or_default()),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/usr/lib"), &mut out);
    out.truncate(SAMPLE);
    out
}

fn primitives(c: &mut Criterion) {
    let data = real_bytes();
    let keys = Keys::derive(&MasterSecret::generate());
    let dk = keys.epoch_zero();
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("chunk id (keyed BLAKE3)", |b| b.iter(|| keys.chunk_id(&data)));
    g.bench_function("seal (XChaCha20-Poly1305)", |b| b.iter(|| keys.seal(&data, b"aad")));
    let level = Compression::default().zstd_level;
    g.bench_function(format!("zstd level {level}"), |b| b.iter(|| zstd::bulk::compress(&data, level).unwrap()));
    let chunker = Chunker::new(ChunkerParams::default(), keys.chunker_seed());
    g.bench_function("FastCDC cut points", |b| b.iter(|| chunker.split_all(Bytes::from(data.clone())).len()));
    let id = keys.chunk_id(&data);
    g.bench_function(format!("blob encode (zstd-{level} + seal)"), |b| {
        b.iter(|| blob::encode(&dk, BlobKind::Data, &id, &data, Compression::default()))
    });
    let sealed = blob::encode(&dk, BlobKind::Data, &id, &data, Compression::default());
    g.bench_function("blob decode (open + unzstd + id check)", |b| {
        b.iter(|| blob::decode(&keys, &dk, BlobKind::Data, &id, &sealed, data.len()).unwrap())
    });
    g.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::primitives);
}
use group::benches;
criterion_main!(benches);
