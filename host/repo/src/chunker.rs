//! Content-defined chunking with FastCDC (2020), keyed by a secret gear seed.
//!
//! [`Chunker`] finds cut points; [`StreamChunker`] turns pushed byte pieces of
//! any size into whole chunks without holding more than `max_size` plus one
//! piece in memory.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// Chunk size parameters, stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is smaller than this, except the last of a stream.
    pub min_size: u32,
    /// The target average chunk size.
    pub avg_size: u32,
    /// No chunk is larger than this.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 8 MiB: few enough chunks to keep the index small
    /// (about 1 million per TiB), small enough that a local change costs about
    /// 1 MiB of new data.
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 8 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Checks the bounds FastCDC accepts.
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        let in_bounds = (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min)
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg)
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if !in_bounds {
            return Err(format!("chunker sizes min {min} / avg {avg} / max {max} are outside FastCDC's bounds"));
        }
        Ok(())
    }
}

/// Finds FastCDC cut points with a secret gear table.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("params", &self.params).finish()
    }
}

impl Chunker {
    /// A chunker for `params`, with the gear table XOR-ed with `seed`.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker { params, mask_s, mask_l, gear, gear_ls }
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data`. When `data` is shorter than
    /// `max_size` the result may be `data.len()` without being a real cut.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, n) = fastcdc::v2020::cut_gear(
            data,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n.max(1).min(data.len())
    }

    /// Splits a complete in-memory buffer into chunks.
    pub fn split_all(&self, mut data: Bytes) -> Vec<Bytes> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(&data);
            out.push(data.split_to(n));
        }
        out
    }
}

/// Accumulates pushed bytes and yields complete chunks.
#[derive(Debug)]
pub struct StreamChunker {
    chunker: Chunker,
    buf: BytesMut,
}

impl StreamChunker {
    /// A stream chunker around `chunker`.
    pub fn new(chunker: Chunker) -> Self {
        StreamChunker { chunker, buf: BytesMut::new() }
    }

    /// Adds `data` and returns every chunk that is now complete, each
    /// copied out to a buffer of its own size (see [`Self::take_final`]).
    pub fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        self.append(data);
        let mut out = Vec::new();
        let _ = self.take_final(|chunk| {
            out.push(Bytes::copy_from_slice(chunk));
            Ok::<(), std::convert::Infallible>(())
        });
        out
    }

    /// Adds `data` to the window. [`Self::take_final`] then hands out the
    /// chunks it completes.
    pub fn append(&mut self, data: &[u8]) {
        // Reuses the window: the uncut tail moves to its front when that
        // makes room.
        self.buf.extend_from_slice(data);
    }

    /// Passes every chunk that is final to `each`, in order, as a slice of
    /// the window, and drops it from the window once `each` returns; stops
    /// at the first error, with that chunk still in the window.
    ///
    /// A cut found before the end of the buffered bytes is final (it does
    /// not depend on later bytes), and so is one at `max_size`; a shorter
    /// tail with no cut yet could still grow. Streams of up to twice the
    /// average chunk size (most files) are only buffered, and cut once at
    /// the end. Past that, chunks are cut as soon as they are final, so
    /// the window holds only the bytes not yet cut: at most `max_size` plus
    /// one appended piece.
    pub fn take_final<E>(&mut self, mut each: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let max = self.chunker.params.max_size as usize;
        if self.buf.len() <= 2 * self.chunker.params.avg_size as usize {
            return Ok(());
        }
        while !self.buf.is_empty() {
            let n = self.chunker.cut(&self.buf);
            if n >= self.buf.len() && n < max {
                break;
            }
            each(&self.buf[..n])?;
            self.buf.advance(n);
        }
        Ok(())
    }

    /// At the end of the stream: passes the remaining chunks to `each` as
    /// slices of the window, as [`Self::take_final`] does. The same chunks
    /// as [`Self::finish`], without a buffer of their own.
    pub fn take_rest<E>(&mut self, mut each: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while !self.buf.is_empty() {
            let n = self.chunker.cut(&self.buf);
            each(&self.buf[..n])?;
            self.buf.advance(n);
        }
        Ok(())
    }

    /// Returns the remaining chunks at the end of the stream. They share
    /// one buffer, which is not reused.
    pub fn finish(&mut self) -> Vec<Bytes> {
        let rest = self.buf.split().freeze();
        self.chunker.split_all(rest)
    }

    /// Bytes buffered and not yet returned as a chunk.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn streaming_matches_whole_buffer_for_any_piece_size() {
        let params = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let c = Chunker::new(params, 42);
        let data = pseudo_random(1_000_000, 7);
        let whole: Vec<usize> = c.split_all(Bytes::from(data.clone())).iter().map(|b| b.len()).collect();
        for piece in [1usize, 1000, 65536, 300_000] {
            let mut s = StreamChunker::new(c.clone());
            let mut got = Vec::new();
            for p in data.chunks(piece) {
                got.extend(s.push(p).iter().map(|b| b.len()));
            }
            got.extend(s.finish().iter().map(|b| b.len()));
            assert_eq!(got, whole, "piece size {piece}");
            // The same chunks as slices of the window, bytes and all.
            let mut s = StreamChunker::new(c.clone());
            let mut sliced: Vec<u8> = Vec::new();
            let mut lens = Vec::new();
            let mut take = |chunk: &[u8]| {
                lens.push(chunk.len());
                sliced.extend_from_slice(chunk);
                Ok::<(), ()>(())
            };
            for p in data.chunks(piece) {
                s.append(p);
                s.take_final(&mut take).unwrap();
            }
            s.take_rest(&mut take).unwrap();
            assert_eq!(lens, whole, "piece size {piece}, slices");
            assert_eq!(sliced, data);
        }
        assert!(whole.iter().all(|&n| n <= 65536));
        assert_eq!(whole.iter().sum::<usize>(), data.len());
    }

    /// Chunks cut from a big stream own their bytes, so a chunk waiting to
    /// be compressed does not keep the window alive; the window holds at
    /// most one piece more than the longest chunk.
    #[test]
    fn chunks_of_a_big_stream_do_not_hold_the_window() {
        let params = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let mut s = StreamChunker::new(Chunker::new(params, 9));
        let data = pseudo_random(2_000_000, 11);
        let mut cut = 0;
        for p in data.chunks(20_000) {
            for chunk in s.push(p) {
                cut += 1;
                assert!(chunk.try_into_mut().is_ok(), "chunk {cut} shares its buffer");
            }
            assert!(s.buffered() <= 65536 + 20_000, "{} bytes buffered", s.buffered());
        }
        assert!(cut > 50, "only {cut} chunks cut before the end");
    }

    #[test]
    fn seed_changes_boundaries() {
        let params = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let data = Bytes::from(pseudo_random(500_000, 3));
        let a: Vec<usize> = Chunker::new(params, 1).split_all(data.clone()).iter().map(|b| b.len()).collect();
        let b: Vec<usize> = Chunker::new(params, 2).split_all(data).iter().map(|b| b.len()).collect();
        assert_ne!(a, b);
    }
}
