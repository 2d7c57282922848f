//! `coffer stream follow fabric`: appends each channel's newly committed
//! blocks to the stream `blocks-<channel>`, so that a ledger restored from
//! a base backup can be rolled forward to any height the stream reaches.
//!
//! An item holds a run of whole block records exactly as the block files
//! hold them (varint length, then Fabric's block serialization), so rolling
//! forward is appending items' records to the channel's last block file.
//! Its key is `<first>-<last>` (block numbers) and its position the last
//! block's number, so retention keeps every item that holds a block at or
//! above the height a snapshot needs. Every block read is checked against
//! the one before it (consecutive numbers, `previous_hash` equal to the
//! previous header's hash): a ledger that was replaced or rolled back
//! stops the follower instead of mixing two chains in one stream.
//!
//! The checkpoint records the next block, the block file and byte offset
//! where it starts, and the hash of the last header stored
//! (`next=N;file=blockfile_NNNNNN;offset=O;hash=HEX`). A restarted
//! follower resumes there; when the offset no longer holds that block (the
//! ledger was restored, which writes the files in another layout) it finds
//! the block by its number and checks that it chains to the stored one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use coffer_sdk::{EntryKind, Error, StreamReader, StreamSink, host};
use sha2::{Digest, Sha256};

use crate::{Until, blockfile};

/// How often the channels' directories are listed again for new channels.
const RESCAN: Duration = Duration::from_secs(30);
/// Bytes read per call when no item size says otherwise.
const MIN_READ: usize = 1 << 20;
/// How deep below `ledger_dir` channel directories are looked for: a
/// peer's are at `chains/chains/<channel>`, an orderer's at
/// `chains/<channel>`.
const MAX_DEPTH: usize = 4;

/// The stream of `channel`.
pub fn stream_name(channel: &str) -> String {
    let clean: String =
        channel.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    // Stream names are at most 200 characters, Fabric's channel names up
    // to 249: a long one keeps its start and a hash of the whole name.
    if clean.len() > 180 {
        let hash: String = Sha256::digest(channel.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
        return format!("blocks-{}-{hash}", &clean[..160]);
    }
    format!("blocks-{clean}")
}

/// An item's key: `<first>-<last>` block numbers.
pub fn item_key(first: u64, last: u64) -> String {
    format!("{first}-{last}")
}

/// The first and last block an item key names.
pub fn parse_key(key: &str) -> Option<(u64, u64)> {
    let (a, b) = key.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The number in a block file's name (`blockfile_000003` → 3).
pub fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("blockfile_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// SHA-256 of a block's header DER: what the next block's
/// `previous_hash` must be.
pub fn header_hash(block: &blockfile::StoredBlock) -> [u8; 32] {
    Sha256::digest(block.header_der()).into()
}

/// Channels under `root`: channel name → its directory (absolute), for
/// every directory that holds block files.
pub fn channel_dirs(root: &str) -> Result<BTreeMap<String, String>, Error> {
    fn walk(dir: &str, depth: usize, out: &mut BTreeMap<String, String>) -> Result<(), Error> {
        let listing = host::list_dir(dir)?;
        let mut has_blocks = false;
        for item in &listing.items {
            match item.kind {
                EntryKind::File if file_number(&item.name).is_some() => has_blocks = true,
                EntryKind::Dir if depth < MAX_DEPTH => walk(&format!("{dir}/{}", item.name), depth + 1, out)?,
                _ => {}
            }
        }
        if has_blocks {
            let name = dir.rsplit('/').next().unwrap_or(dir).to_string();
            if let Some(other) = out.insert(name.clone(), dir.to_string()) {
                return Err(Error::Other(format!(
                    "two directories hold block files of a channel named {name} ({other} and {dir}); name a \
                     ledger_dir that holds one ledger"
                )));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root.trim_end_matches('/'), 0, &mut out)?;
    Ok(out)
}

/// The block files of a channel directory, in order: (number, name).
pub fn block_files(dir: &str) -> Result<Vec<(u64, String)>, Error> {
    let mut files: Vec<(u64, String)> = host::list_dir(dir)?
        .items
        .into_iter()
        .filter(|i| i.kind == EntryKind::File)
        .filter_map(|i| file_number(&i.name).map(|n| (n, i.name)))
        .collect();
    files.sort();
    Ok(files)
}

/// Up to `max` bytes of `path` from `offset`.
fn read_at(path: &str, offset: u64, max: usize) -> Result<Vec<u8>, Error> {
    let mut f = File::open(path).map_err(|e| Error::from(e).context(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::from(e).context(path))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).map_err(|e| Error::from(e).context(path))?;
    Ok(buf)
}

/// Where a channel's follower stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The next block to store.
    pub next: u64,
    /// The block file it is in (or will be in), by name.
    pub file: String,
    /// Its byte offset there.
    pub offset: u64,
    /// The hash of block `next - 1`'s header; `None` before block 0.
    pub hash: Option<[u8; 32]>,
}

impl Cursor {
    /// The checkpoint text.
    pub fn state(&self) -> String {
        let hash = self.hash.map(hex).unwrap_or_default();
        format!("next={};file={};offset={};hash={hash}", self.next, self.file, self.offset)
    }

    /// Parses a checkpoint's text.
    pub fn parse(state: &str) -> Option<Cursor> {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for part in state.split(';') {
            let (k, v) = part.split_once('=')?;
            fields.insert(k, v);
        }
        let hash = match *fields.get("hash")? {
            "" => None,
            h => Some(unhex(h)?),
        };
        Some(Cursor {
            next: fields.get("next")?.parse().ok()?,
            file: fields.get("file")?.to_string(),
            offset: fields.get("offset")?.parse().ok()?,
            hash,
        })
    }
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// When items are cut, and where a first follow starts.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// An item is finished once it holds this many bytes.
    pub max_bytes: usize,
    /// ... or once its first block waited this long.
    pub max_age: Duration,
    /// How often the block files are looked at.
    pub poll: Duration,
    /// A first follow starts at block 0 (`true`) or at the channel's
    /// height when it starts.
    pub from_oldest: bool,
}

/// The newest block the stream holds at or above `from`, with its header
/// hash.
fn newest_item(reader: &StreamReader, stream: &str, from: u64) -> Result<Option<(u64, [u8; 32])>, Error> {
    let mut newest: Option<(u64, String)> = None;
    for item in reader.items(stream, Some(from)) {
        let item = item?;
        if let Some((_, last)) = parse_key(&item.key)
            && newest.as_ref().is_none_or(|(n, _)| last > *n)
        {
            newest = Some((last, item.key));
        }
    }
    let Some((last, key)) = newest else { return Ok(None) };
    let what = format!("{stream}/{key}");
    let mut bytes = Vec::new();
    reader.open(stream, &key)?.read_to_end(&mut bytes).map_err(|e| Error::from(e).context(&what))?;
    let scan = blockfile::scan(&bytes);
    let block = scan
        .records
        .last()
        .and_then(|r| blockfile::decode_block(r.bytes).ok())
        .filter(|b| b.number == last)
        .ok_or_else(|| Error::Corrupt(format!("{what} does not end with block {last}")))?;
    Ok(Some((last, header_hash(&block))))
}

/// Blocks read but not stored yet.
struct Pending {
    bytes: Vec<u8>,
    first: u64,
    last: u64,
    since: Instant,
}

/// One channel's follower.
struct Channel {
    name: String,
    dir: String,
    stream: String,
    /// Where the next block is read from.
    read: Cursor,
    pending: Option<Pending>,
}

/// What [`newest_block`] finds.
struct Newest {
    path: String,
    number: u64,
    hash: [u8; 32],
    end: u64,
}

/// The newest whole block in `paths` (block files, in order): its file,
/// number, header hash and where the whole records of its file end. The
/// last file may hold none (the peer just moved to it): then the newest
/// block is in one before.
fn newest_block(paths: &[String]) -> Result<Option<Newest>, Error> {
    for path in paths.iter().rev() {
        let bytes = std::fs::read(path).map_err(|e| Error::from(e).context(path))?;
        let scan = blockfile::scan(&bytes);
        if let Some(rec) = scan.records.last() {
            let b = blockfile::decode_block(rec.bytes)
                .map_err(|e| Error::Corrupt(format!("{path}: the block at byte {}: {e}", rec.offset)))?;
            return Ok(Some(Newest {
                path: path.clone(),
                number: b.number,
                hash: header_hash(&b),
                end: scan.complete_len,
            }));
        }
    }
    Ok(None)
}

/// A cursor after the last complete block of a channel's files (the
/// channel's height now).
fn cursor_at_end(dir: &str) -> Result<Cursor, Error> {
    let files = block_files(dir)?;
    let Some((_, name)) = files.last() else {
        return Ok(Cursor { next: 0, file: "blockfile_000000".into(), offset: 0, hash: None });
    };
    let paths: Vec<String> = files.iter().map(|(_, f)| format!("{dir}/{f}")).collect();
    Ok(match newest_block(&paths)? {
        Some(n) => {
            let offset = if n.path == paths[paths.len() - 1] { n.end } else { 0 };
            Cursor { next: n.number + 1, file: name.clone(), offset, hash: Some(n.hash) }
        }
        None => Cursor { next: 0, file: files[0].1.clone(), offset: 0, hash: None },
    })
}

/// Longest block record believed: Fabric cuts blocks far below this
/// (`AbsoluteMaxBytes`, 10 MiB by default, at most 100 MiB).
const MAX_RECORD: u64 = 1 << 30;

/// The number of the block whose record starts at `offset` of `path`, if
/// a whole record that decodes starts there.
fn block_at(path: &str, offset: u64) -> Result<Option<u64>, Error> {
    let head = read_at(path, offset, 10)?;
    let mut used = 0usize;
    let Ok(Some(len)) = blockfile::varint(&head, &mut used) else { return Ok(None) };
    if len > MAX_RECORD {
        return Ok(None);
    }
    let bytes = read_at(path, offset, used + len as usize)?;
    Ok(blockfile::scan(&bytes).records.first().and_then(|r| blockfile::decode_block(r.bytes).ok()).map(|b| b.number))
}

/// Whether block `c.next` starts at `c.file` byte `c.offset`, or that file
/// ends there (the block is not written yet).
fn holds_next(dir: &str, c: &Cursor) -> Result<bool, Error> {
    let path = format!("{dir}/{}", c.file);
    let Ok(md) = std::fs::metadata(&path) else { return Ok(false) };
    if md.len() == c.offset {
        return Ok(true);
    }
    Ok(md.len() > c.offset && block_at(&path, c.offset)? == Some(c.next))
}

/// Finds block `want.next` by its number when the checkpoint's file and
/// offset do not hold it: the file whose first block is the highest at or
/// below it, then the record.
fn locate(dir: &str, want: &Cursor) -> Result<Option<Cursor>, Error> {
    let files = block_files(dir)?;
    let mut candidate: Option<&String> = None;
    for (_, name) in &files {
        match block_at(&format!("{dir}/{name}"), 0)? {
            Some(n) if n <= want.next => candidate = Some(name),
            Some(_) => break,
            None => {}
        }
    }
    let Some(name) = candidate else {
        return Ok(files.first().filter(|_| want.next == 0).map(|(_, n)| Cursor {
            next: 0,
            file: n.clone(),
            offset: 0,
            hash: None,
        }));
    };
    let path = format!("{dir}/{name}");
    let bytes = std::fs::read(&path).map_err(|e| Error::from(e).context(&path))?;
    let scan = blockfile::scan(&bytes);
    for rec in &scan.records {
        let Ok(b) = blockfile::decode_block(rec.bytes) else { continue };
        if b.number == want.next {
            return Ok(Some(Cursor { next: want.next, file: name.clone(), offset: rec.offset, hash: want.hash }));
        }
    }
    // The block after the file's last one starts the next file.
    if let Some(last) = scan.records.last().and_then(|r| blockfile::decode_block(r.bytes).ok())
        && last.number + 1 == want.next
    {
        return Ok(Some(Cursor { next: want.next, file: name.clone(), offset: scan.complete_len, hash: want.hash }));
    }
    Ok(None)
}

impl Channel {
    fn start(name: &str, dir: &str, sink: &StreamSink, s: &Settings) -> Result<Channel, Error> {
        let stream = stream_name(name);
        let read = match sink.reader().last_checkpoint(&stream)? {
            Some(c) => {
                let cur = Cursor::parse(&c.state).ok_or_else(|| {
                    Error::Other(format!(
                        "stream {stream}: its last checkpoint ({:?}) is not one this plugin wrote",
                        c.state
                    ))
                })?;
                host::info(format!("channel {name}: resuming stream {stream} at block {}", cur.next));
                cur
            }
            None if s.from_oldest => {
                let first = block_files(dir)?.first().map(|(_, n)| n.clone()).unwrap_or("blockfile_000000".into());
                host::info(format!("channel {name}: starting stream {stream} at block 0"));
                Cursor { next: 0, file: first, offset: 0, hash: None }
            }
            None => {
                let cur = cursor_at_end(dir)?;
                host::info(format!("channel {name}: starting stream {stream} at its height, block {}", cur.next));
                cur
            }
        };
        let read = match newest_item(&sink.reader(), &stream, read.next)? {
            // An item stored after the checkpoint (the follower stopped
            // between the two): go on after it, finding its place by number.
            Some((last, hash)) if last >= read.next => {
                host::info(format!("channel {name}: the stream holds blocks up to {last}; going on after it"));
                Cursor { next: last + 1, hash: Some(hash), ..read }
            }
            _ => read,
        };
        // The ledger may have been written anew since (a restore writes
        // the files in another layout): the saved offset must hold the
        // block, or the block is found by its number.
        let read = match holds_next(dir, &read)? {
            true => read,
            false => match locate(dir, &read)? {
                Some(c) => {
                    host::info(format!("channel {name}: block {} is at {} byte {} now", c.next, c.file, c.offset));
                    c
                }
                None => read,
            },
        };
        Ok(Channel { name: name.to_string(), dir: dir.to_string(), stream, read, pending: None })
    }

    /// Checks `block` against the cursor: the next number, chained to the
    /// last block stored.
    fn check(&self, block: &blockfile::StoredBlock, at: &str) -> Result<(), Error> {
        if block.number != self.read.next {
            return Err(Error::Other(format!(
                "channel {}: {at} holds block {} where block {} was expected; the ledger was replaced or rolled \
                 back since the stream stopped. Stop following, take a new base backup (coffer backup fabric) and \
                 follow into a repository whose stream {} is new",
                self.name, block.number, self.read.next, self.stream
            )));
        }
        if let Some(h) = self.read.hash
            && block.previous_hash != h
        {
            return Err(Error::Other(format!(
                "channel {}: block {} at {at} does not chain to block {} that stream {} holds (its previous_hash \
                 differs); the ledger was replaced since. Take a new base backup and follow into a repository whose \
                 stream {} is new",
                self.name,
                block.number,
                block.number.wrapping_sub(1),
                self.stream,
                self.stream
            )));
        }
        Ok(())
    }

    /// Stores the pending blocks and saves the checkpoint after them.
    fn store(&mut self, sink: &StreamSink) -> Result<(), Error> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        let key = item_key(p.first, p.last);
        let mut w = sink.append(&self.stream, &key, p.last, false)?;
        std::io::Write::write_all(&mut w, &p.bytes)?;
        w.finish()?;
        sink.checkpoint(&self.stream, &self.read.state(), Some(self.read.next.saturating_sub(1)))?;
        host::debug(format!("stored {}/{key} ({} bytes)", self.stream, p.bytes.len()));
        Ok(())
    }

    /// Reads what was committed since the last poll; stores items that are
    /// full or old enough. Returns the number of blocks read.
    fn poll(&mut self, sink: &StreamSink, s: &Settings) -> Result<u64, Error> {
        let mut read = 0u64;
        let mut relocated = false;
        loop {
            host::check_cancelled()?;
            let path = format!("{}/{}", self.dir, self.read.file);
            let len = std::fs::metadata(&path).ok().map(|m| m.len());
            // The file is gone or shorter than the checkpoint says: the
            // ledger was written anew (restored); find the block.
            let exists = len.is_some_and(|l| l >= self.read.offset);
            let mut want = s.max_bytes.max(MIN_READ);
            let mut buf = if exists { read_at(&path, self.read.offset, want)? } else { Vec::new() };

            let mut scan = blockfile::scan(&buf);
            // A block larger than the read: read until it is whole or the
            // file ends.
            while scan.records.is_empty() && buf.len() == want {
                want *= 2;
                buf = read_at(&path, self.read.offset, want)?;
                scan = blockfile::scan(&buf);
            }
            let at_eof = buf.len() < want;
            if let Some(first) = scan.records.first() {
                let decoded = blockfile::decode_block(first.bytes);
                let number = decoded.as_ref().ok().map(|b| b.number);
                if number != Some(self.read.next) && !relocated {
                    relocated = true;
                    match locate(&self.dir, &self.read)? {
                        Some(c) if c != self.read => {
                            host::info(format!(
                                "channel {}: block {} is at {} byte {} now",
                                self.name, c.next, c.file, c.offset
                            ));
                            self.read = c;
                            continue;
                        }
                        _ => {}
                    }
                }
                if let Err(e) = decoded {
                    return Err(Error::Corrupt(format!(
                        "channel {}: {path}: the record at byte {} where block {} should start does not decode ({e}), \
                         and no block file holds block {} whole",
                        self.name, self.read.offset, self.read.next, self.read.next
                    )));
                }
            } else if !exists {
                if !relocated {
                    relocated = true;
                    if let Some(c) = locate(&self.dir, &self.read)? {
                        host::info(format!(
                            "channel {}: block {} is at {} byte {} now",
                            self.name, c.next, c.file, c.offset
                        ));
                        self.read = c;
                        continue;
                    }
                }
                if len.is_some() {
                    return Err(Error::Other(format!(
                        "channel {}: {path} is shorter than the offset where block {} was, and no block file holds                          that block now; the ledger was replaced. Take a new base backup and follow into a                          repository whose stream {} is new",
                        self.name, self.read.next, self.stream
                    )));
                }
            }
            let base = self.read.offset;
            for rec in &scan.records {
                let at = format!("{path} byte {}", base + rec.offset);
                let b = blockfile::decode_block(rec.bytes)
                    .map_err(|e| Error::Other(format!("channel {}: the block at {at}: {e}", self.name)))?;
                self.check(&b, &at)?;
                let p = self.pending.get_or_insert_with(|| Pending {
                    bytes: Vec::new(),
                    first: b.number,
                    last: b.number,
                    since: Instant::now(),
                });
                p.bytes.extend_from_slice(&buf[rec.offset as usize..rec.end as usize]);
                p.last = b.number;
                self.read.next = b.number + 1;
                self.read.hash = Some(header_hash(&b));
                self.read.offset = base + rec.end;
                read += 1;
                if p.bytes.len() >= s.max_bytes {
                    self.store(sink)?;
                }
            }
            self.read.offset = base + scan.complete_len;
            if !at_eof {
                continue;
            }
            // The file ends here for now. The peer moves on to the next
            // file only once this one is complete.
            let files = block_files(&self.dir)?;
            let current = file_number(&self.read.file);
            let later = files.iter().find(|(n, _)| Some(*n) > current).map(|(_, f)| f.clone());
            match later {
                Some(f) => {
                    if scan.partial_tail > 0 {
                        host::warn(format!(
                            "channel {}: {path} ends with {} bytes that are not a whole block, and the peer writes \
                             {f} now; going on there",
                            self.name, scan.partial_tail
                        ));
                    }
                    self.read.file = f;
                    self.read.offset = 0;
                }
                None => break,
            }
        }
        if let Some(p) = &self.pending
            && (p.bytes.len() >= s.max_bytes || p.since.elapsed() >= s.max_age)
        {
            self.store(sink)?;
        }
        Ok(read)
    }
}

/// Follows every channel under `root` until cancelled.
pub fn follow(root: &str, s: Settings, sink: &StreamSink) -> Result<(), Error> {
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut scanned: Option<Instant> = None;
    loop {
        host::check_cancelled()?;
        if scanned.is_none_or(|t| t.elapsed() >= RESCAN) {
            for (name, dir) in channel_dirs(root)? {
                if let std::collections::btree_map::Entry::Vacant(slot) = channels.entry(name) {
                    let c = Channel::start(slot.key(), &dir, sink, &s)?;
                    slot.insert(c);
                }
            }
            if channels.is_empty() && scanned.is_none() {
                host::warn(format!("{root} holds no block files yet; waiting for channels"));
            }
            scanned = Some(Instant::now());
        }
        for c in channels.values_mut() {
            c.poll(sink, &s)?;
        }
        let until = Instant::now() + s.poll;
        while Instant::now() < until {
            host::check_cancelled()?;
            std::thread::sleep(Duration::from_millis(50).min(s.poll));
        }
    }
}

/// Rolls a restored channel forward: appends the blocks of its stream
/// from `height` (the snapshot's) to `until` to the last of the channel's
/// block files `files` (restored, in order), checking that each block is
/// the next one and chains to the one before. Returns the new height.
pub fn roll_forward(
    reader: &StreamReader,
    channel: &str,
    files: &[String],
    height: u64,
    until: Until,
) -> Result<u64, Error> {
    let stream = stream_name(channel);
    let last_file = files.last().ok_or_else(|| Error::Other(format!("channel {channel} has no block files")))?;
    let mut prev: Option<[u8; 32]> = None;
    if height > 0 {
        // The newest block: in the last file, or in the one before when
        // the backup caught the peer just after it started a new file.
        let n = newest_block(files)?
            .ok_or_else(|| Error::Other(format!("channel {channel}: no whole block to roll forward from")))?;
        if n.number + 1 != height {
            return Err(Error::Other(format!(
                "{} ends with block {}, but the snapshot recorded height {height} for channel {channel}",
                n.path, n.number
            )));
        }
        prev = Some(n.hash);
    }
    if let Until::Height(h) = until
        && h <= height
    {
        if h < height {
            return Err(Error::Other(format!(
                "channel {channel}: this snapshot is at height {height}, above {h}; restore an older snapshot and \
                 roll it forward"
            )));
        }
        return Ok(height);
    }
    let mut out =
        std::fs::OpenOptions::new().append(true).open(last_file).map_err(|e| Error::from(e).context(last_file))?;
    let mut next = height;
    'items: for item in reader.items(&stream, Some(height)) {
        let item = item?;
        host::check_cancelled()?;
        let Some((first, last)) = parse_key(&item.key) else {
            host::warn(format!("stream {stream}: item {} is not named as this plugin names items; skipped", item.key));
            continue;
        };
        if last < next {
            continue;
        }
        if first > next {
            return Err(Error::Other(format!(
                "stream {stream} has no blocks from {next} to {}: the follower was not running then; channel \
                 {channel} reached height {next}",
                first - 1
            )));
        }
        let what = format!("{stream}/{}", item.key);
        let mut bytes = Vec::new();
        reader.open(&stream, &item.key)?.read_to_end(&mut bytes).map_err(|e| Error::from(e).context(&what))?;
        let scan = blockfile::scan(&bytes);
        if scan.partial_tail > 0 {
            return Err(Error::Corrupt(format!(
                "{what}: {} bytes at its end are not a whole block",
                scan.partial_tail
            )));
        }
        for rec in &scan.records {
            let b = blockfile::decode_block(rec.bytes)
                .map_err(|e| Error::Corrupt(format!("{what}: the block at byte {}: {e}", rec.offset)))?;
            if b.number < next {
                continue;
            }
            if matches!(until, Until::Height(h) if b.number >= h) {
                break 'items;
            }
            if b.number != next {
                return Err(Error::Corrupt(format!("{what} holds block {} where block {next} was expected", b.number)));
            }
            if let Some(h) = prev
                && b.previous_hash != h
            {
                return Err(Error::Corrupt(format!(
                    "{what}: block {next} does not chain to block {} of the restored ledger (another ledger's \
                     stream?)",
                    next.wrapping_sub(1)
                )));
            }
            out.write_all(&bytes[rec.offset as usize..rec.end as usize])
                .map_err(|e| Error::from(e).context(last_file))?;
            prev = Some(header_hash(&b));
            next += 1;
        }
    }
    out.sync_all().map_err(|e| Error::from(e).context(last_file))?;
    if let Until::Height(h) = until
        && next < h
    {
        return Err(Error::Other(format!(
            "stream {stream} holds blocks up to {} only: channel {channel} was rolled forward to height {next} of \
             the {h} asked for",
            next.wrapping_sub(1)
        )));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_checkpoints_round_trip() {
        assert_eq!(parse_key(&item_key(8, 12)), Some((8, 12)));
        assert_eq!(parse_key("8"), None);
        let c = Cursor { next: 9, file: "blockfile_000001".into(), offset: 4242, hash: Some([7u8; 32]) };
        assert_eq!(Cursor::parse(&c.state()), Some(c));
        let c = Cursor { next: 0, file: "blockfile_000000".into(), offset: 0, hash: None };
        assert_eq!(Cursor::parse(&c.state()), Some(c));
        assert_eq!(Cursor::parse("ts=1:2"), None);
        assert_eq!(stream_name("my.channel"), "blocks-my_channel");
        let long = format!("c{}", "a".repeat(248));
        let name = stream_name(&long);
        assert!(name.len() <= 200 && name.starts_with("blocks-caaa"), "{name}");
        assert_ne!(name, stream_name(&format!("c{}b", "a".repeat(247))));
        assert_eq!(file_number("blockfile_000012"), Some(12));
        assert_eq!(file_number("blockfile_"), None);
    }
}
