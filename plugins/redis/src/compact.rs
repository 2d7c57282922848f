//! The compact encodings Redis stores inside RDB strings: listpack (7.0+),
//! ziplist (before 7.0), intset and zipmap (before 2.6). Each function
//! walks the whole structure, checks every length and terminator against
//! the blob's size, and returns the number of elements; damage is a
//! sentence saying what and where (byte offsets are within the blob).

/// One element of a listpack or ziplist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element<'a> {
    /// A string element.
    Bytes(&'a [u8]),
    /// An integer element.
    Int(i64),
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn int_le(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    let mut v: i64 = 0;
    for (k, byte) in s.iter().enumerate() {
        v |= (*byte as i64) << (8 * k);
    }
    // Sign-extend from n bytes.
    let shift = 64 - 8 * n as u32;
    Some((v << shift) >> shift)
}

/// Bytes a listpack back-length takes for an entry of `len` bytes.
fn backlen_size(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

/// Decodes the back-length that ends at `end` (exclusive), reading
/// backwards: 7 bits a byte, the high bit set on every byte but the first.
fn read_backlen(b: &[u8], end: usize) -> Option<usize> {
    let mut v: usize = 0;
    let mut shift = 0;
    let mut p = end;
    loop {
        p = p.checked_sub(1)?;
        let byte = b[p];
        v |= ((byte & 127) as usize) << shift;
        if byte & 128 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Walks a listpack, calling `each` for every element. Returns the count.
pub fn listpack<'a>(b: &'a [u8], mut each: impl FnMut(Element<'a>)) -> Result<usize, String> {
    // The 6-byte header (total bytes, element count) and the terminator.
    if b.len() < 7 {
        return Err(format!("listpack of {} bytes is shorter than an empty one", b.len()));
    }
    let total = u32_le(b, 0).expect("length checked") as usize;
    if total != b.len() {
        return Err(format!("listpack header says {total} bytes, the string holds {}", b.len()));
    }
    let declared = u16_le(b, 4).expect("length checked") as usize;
    let mut p = 6;
    let mut count = 0usize;
    loop {
        let enc = *b.get(p).ok_or_else(|| format!("listpack ends at byte {p} without its 0xFF terminator"))?;
        if enc == 0xff {
            if p + 1 != b.len() {
                return Err(format!("listpack terminator at byte {p}, but the listpack is {} bytes", b.len()));
            }
            break;
        }
        let start = p;
        let cut = || format!("listpack entry at byte {start} runs past the end");
        let (header, data_len, elem): (usize, usize, Option<Element>) = match enc {
            0x00..=0x7f => (1, 0, Some(Element::Int(enc as i64))),
            0x80..=0xbf => {
                let n = (enc & 0x3f) as usize;
                (1, n, None)
            }
            0xc0..=0xdf => {
                let lo = *b.get(p + 1).ok_or_else(cut)? as i64;
                let v = (((enc & 0x1f) as i64) << 8) | lo;
                // 13-bit two's complement.
                let v = if v >= 1 << 12 { v - (1 << 13) } else { v };
                (2, 0, Some(Element::Int(v)))
            }
            0xe0..=0xef => {
                let lo = *b.get(p + 1).ok_or_else(cut)? as usize;
                (2, (((enc & 0x0f) as usize) << 8) | lo, None)
            }
            0xf0 => (5, u32_le(b, p + 1).ok_or_else(cut)? as usize, None),
            0xf1 => (3, 0, Some(Element::Int(int_le(b, p + 1, 2).ok_or_else(cut)?))),
            0xf2 => (4, 0, Some(Element::Int(int_le(b, p + 1, 3).ok_or_else(cut)?))),
            0xf3 => (5, 0, Some(Element::Int(int_le(b, p + 1, 4).ok_or_else(cut)?))),
            0xf4 => (9, 0, Some(Element::Int(int_le(b, p + 1, 8).ok_or_else(cut)?))),
            other => return Err(format!("listpack entry at byte {start} has unknown encoding 0x{other:02x}")),
        };
        let entry_len = header + data_len;
        let body_end = p.checked_add(entry_len).filter(|e| *e <= b.len()).ok_or_else(cut)?;
        let end = body_end + backlen_size(entry_len);
        if end > b.len() {
            return Err(cut());
        }
        if read_backlen(b, end) != Some(entry_len) {
            return Err(format!("listpack entry at byte {start}: its back-length does not match its size {entry_len}"));
        }
        each(elem.unwrap_or(Element::Bytes(&b[p + header..body_end])));
        count += 1;
        p = end;
    }
    if declared != 0xffff && declared != count {
        return Err(format!("listpack header says {declared} elements, it holds {count}"));
    }
    Ok(count)
}

/// Walks a ziplist (Redis before 7.0), calling `each` for every element.
pub fn ziplist<'a>(b: &'a [u8], mut each: impl FnMut(Element<'a>)) -> Result<usize, String> {
    if b.len() < 11 {
        return Err(format!("ziplist of {} bytes is shorter than an empty one", b.len()));
    }
    let total = u32_le(b, 0).expect("length checked") as usize;
    if total != b.len() {
        return Err(format!("ziplist header says {total} bytes, the string holds {}", b.len()));
    }
    let tail = u32_le(b, 4).expect("length checked") as usize;
    let declared = u16_le(b, 8).expect("length checked") as usize;
    let mut p = 10;
    let mut prev_len = 0usize;
    let mut last_start = 10;
    let mut count = 0usize;
    loop {
        let first = *b.get(p).ok_or_else(|| format!("ziplist ends at byte {p} without its 0xFF terminator"))?;
        if first == 0xff {
            if p + 1 != b.len() {
                return Err(format!("ziplist terminator at byte {p}, but the ziplist is {} bytes", b.len()));
            }
            break;
        }
        let start = p;
        let cut = || format!("ziplist entry at byte {start} runs past the end");
        let (prevlen, plen) = if first < 254 {
            (first as usize, 1)
        } else if first == 254 {
            (u32_le(b, p + 1).ok_or_else(cut)? as usize, 5)
        } else {
            unreachable!("0xff handled above")
        };
        if prevlen != prev_len {
            return Err(format!(
                "ziplist entry at byte {start} says the previous entry is {prevlen} bytes, it is {prev_len}"
            ));
        }
        let e = p + plen;
        let enc = *b.get(e).ok_or_else(cut)?;
        let (header, data_len, elem): (usize, usize, Option<Element>) = match enc >> 6 {
            0 => (1, (enc & 0x3f) as usize, None),
            1 => (2, (((enc & 0x3f) as usize) << 8) | *b.get(e + 1).ok_or_else(cut)? as usize, None),
            2 => {
                let s = b.get(e + 1..e + 5).ok_or_else(cut)?;
                (5, u32::from_be_bytes(s.try_into().expect("4 bytes")) as usize, None)
            }
            _ => match enc {
                0xc0 => (3, 0, Some(Element::Int(int_le(b, e + 1, 2).ok_or_else(cut)?))),
                0xd0 => (5, 0, Some(Element::Int(int_le(b, e + 1, 4).ok_or_else(cut)?))),
                0xe0 => (9, 0, Some(Element::Int(int_le(b, e + 1, 8).ok_or_else(cut)?))),
                0xf0 => (4, 0, Some(Element::Int(int_le(b, e + 1, 3).ok_or_else(cut)?))),
                0xfe => (2, 0, Some(Element::Int(int_le(b, e + 1, 1).ok_or_else(cut)?))),
                0xf1..=0xfd => (1, 0, Some(Element::Int((enc & 0x0f) as i64 - 1))),
                other => return Err(format!("ziplist entry at byte {start} has unknown encoding 0x{other:02x}")),
            },
        };
        let end = (e + header).checked_add(data_len).filter(|x| *x < b.len()).ok_or_else(cut)?;
        each(elem.unwrap_or(Element::Bytes(&b[e + header..end])));
        prev_len = end - p;
        last_start = p;
        count += 1;
        p = end;
    }
    if count > 0 && tail != last_start {
        return Err(format!("ziplist tail offset {tail} does not point at its last entry (byte {last_start})"));
    }
    if declared != 0xffff && declared != count {
        return Err(format!("ziplist header says {declared} elements, it holds {count}"));
    }
    Ok(count)
}

/// Checks an intset: encoding 2, 4 or 8, a length, then that many
/// little-endian integers in strictly ascending order.
pub fn intset(b: &[u8]) -> Result<usize, String> {
    let width = u32_le(b, 0).ok_or("intset shorter than its 8-byte header")? as usize;
    let len = u32_le(b, 4).ok_or("intset shorter than its 8-byte header")? as usize;
    if !matches!(width, 2 | 4 | 8) {
        return Err(format!("intset encoding {width} (only 2, 4 and 8 exist)"));
    }
    if len.checked_mul(width).and_then(|n| n.checked_add(8)) != Some(b.len()) {
        return Err(format!("intset of {len} {width}-byte integers cannot be {} bytes", b.len()));
    }
    let mut prev: Option<i64> = None;
    for k in 0..len {
        let v = int_le(b, 8 + k * width, width).expect("length checked");
        if prev.is_some_and(|p| p >= v) {
            return Err(format!("intset element {k} ({v}) is not above the one before it"));
        }
        prev = Some(v);
    }
    Ok(len)
}

/// Walks a zipmap (hashes of Redis before 2.6): pairs of length-prefixed
/// key and value (the value followed by unused bytes), then 0xFF. Returns
/// the number of pairs.
pub fn zipmap(b: &[u8]) -> Result<usize, String> {
    let mut p = 1;
    let mut pairs = 0;
    let len_at = |p: usize| -> Result<(usize, usize), String> {
        let first = *b.get(p).ok_or_else(|| format!("zipmap ends at byte {p} without its 0xFF terminator"))?;
        match first {
            0..=253 => Ok((first as usize, 1)),
            254 => Ok((u32_le(b, p + 1).ok_or("zipmap length cut short")? as usize, 5)),
            255 => Ok((usize::MAX, 1)),
        }
    };
    loop {
        let (klen, n) = len_at(p)?;
        if klen == usize::MAX {
            if p + 1 != b.len() {
                return Err(format!("zipmap terminator at byte {p}, but the zipmap is {} bytes", b.len()));
            }
            break;
        }
        p += n + klen;
        let (vlen, n) = len_at(p)?;
        if vlen == usize::MAX {
            return Err(format!("zipmap key without a value at byte {p}"));
        }
        let free = *b.get(p + n).ok_or("zipmap value cut short")? as usize;
        p += n + 1 + vlen + free;
        if p > b.len() {
            return Err("zipmap value runs past the end".into());
        }
        pairs += 1;
    }
    Ok(pairs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes a listpack the way Redis does (for tests of the walkers).
    pub fn make_listpack(items: &[Element]) -> Vec<u8> {
        let mut body = Vec::new();
        for it in items {
            let mut e = Vec::new();
            match it {
                Element::Int(v) if (0..=127).contains(v) => e.push(*v as u8),
                Element::Int(v) if (-4096..=4095).contains(v) => {
                    let u = (*v as i16 as u16) & 0x1fff;
                    e.push(0xc0 | (u >> 8) as u8);
                    e.push(u as u8);
                }
                Element::Int(v) => {
                    e.push(0xf4);
                    e.extend_from_slice(&v.to_le_bytes());
                }
                Element::Bytes(s) if s.len() < 64 => {
                    e.push(0x80 | s.len() as u8);
                    e.extend_from_slice(s);
                }
                Element::Bytes(s) if s.len() < 4096 => {
                    e.push(0xe0 | (s.len() >> 8) as u8);
                    e.push(s.len() as u8);
                    e.extend_from_slice(s);
                }
                Element::Bytes(s) => {
                    e.push(0xf0);
                    e.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    e.extend_from_slice(s);
                }
            }
            let l = e.len();
            let n = backlen_size(l);
            let mut back = vec![0u8; n];
            for (k, slot) in back.iter_mut().enumerate() {
                // Most significant group first; all but the first byte flagged.
                let group = (l >> (7 * (n - 1 - k))) & 127;
                *slot = group as u8 | if k == 0 { 0 } else { 128 };
            }
            e.extend_from_slice(&back);
            body.extend_from_slice(&e);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((6 + body.len() + 1) as u32).to_le_bytes());
        out.extend_from_slice(&(items.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(0xff);
        out
    }

    /// Encodes a ziplist of strings and small integers (for tests).
    pub fn make_ziplist(items: &[Element]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut prev = 0usize;
        let mut tail = 10;
        for it in items {
            let mut e = Vec::new();
            if prev < 254 {
                e.push(prev as u8);
            } else {
                e.push(254);
                e.extend_from_slice(&(prev as u32).to_le_bytes());
            }
            match it {
                Element::Int(v) if (0..=12).contains(v) => e.push(0xf1 + *v as u8),
                Element::Int(v) => {
                    e.push(0xe0);
                    e.extend_from_slice(&v.to_le_bytes());
                }
                Element::Bytes(s) if s.len() < 64 => {
                    e.push(s.len() as u8);
                    e.extend_from_slice(s);
                }
                Element::Bytes(s) => {
                    e.push(0x40 | (s.len() >> 8) as u8);
                    e.push(s.len() as u8);
                    e.extend_from_slice(s);
                }
            }
            tail = 10 + body.len();
            prev = e.len();
            body.extend_from_slice(&e);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((10 + body.len() + 1) as u32).to_le_bytes());
        out.extend_from_slice(&(tail as u32).to_le_bytes());
        out.extend_from_slice(&(items.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(0xff);
        out
    }

    #[test]
    fn listpack_round_trip_every_encoding() {
        let long = vec![b'x'; 5000];
        let mid = vec![b'y'; 300];
        let items = [
            Element::Int(5),
            Element::Int(-3),
            Element::Int(4000),
            Element::Int(1 << 40),
            Element::Bytes(b"field"),
            Element::Bytes(&mid),
            Element::Bytes(&long),
        ];
        let lp = make_listpack(&items);
        let mut seen = Vec::new();
        assert_eq!(listpack(&lp, |e| seen.push(e)).unwrap(), items.len());
        assert_eq!(seen, items);
        // Every truncation and every single flipped byte of the header is
        // found (or at worst parses), never panics.
        for n in 0..lp.len() {
            assert!(listpack(&lp[..n], |_| {}).is_err());
        }
        for k in 0..lp.len() {
            let mut bad = lp.clone();
            bad[k] ^= 0x5a;
            let _ = listpack(&bad, |_| {});
        }
        let mut wrong_count = lp.clone();
        wrong_count[4] = 9;
        assert!(listpack(&wrong_count, |_| {}).unwrap_err().contains("9 elements"));
    }

    #[test]
    fn ziplist_round_trip() {
        let big = vec![b'z'; 300];
        let items =
            [Element::Int(7), Element::Bytes(b"a"), Element::Int(-99999), Element::Bytes(&big), Element::Int(0)];
        let zl = make_ziplist(&items);
        let mut seen = Vec::new();
        assert_eq!(ziplist(&zl, |e| seen.push(e)).unwrap(), 5);
        assert_eq!(seen, items);
        for n in 0..zl.len() {
            assert!(ziplist(&zl[..n], |_| {}).is_err());
        }
        for k in 0..zl.len() {
            let mut bad = zl.clone();
            bad[k] ^= 0xff;
            let _ = ziplist(&bad, |_| {});
        }
    }

    #[test]
    fn intset_checks_order_and_size() {
        let mut b = vec![];
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        for v in [-5i16, 1, 300] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(intset(&b).unwrap(), 3);
        let mut unsorted = b.clone();
        unsorted.swap(8, 10);
        unsorted.swap(9, 11);
        assert!(intset(&unsorted).unwrap_err().contains("not above"));
        assert!(intset(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn zipmap_pairs() {
        // {"a": "bc"} with one free byte.
        let zm = [1, 1, b'a', 2, 1, b'b', b'c', 0, 0xff];
        assert_eq!(zipmap(&zm).unwrap(), 1);
        assert!(zipmap(&zm[..6]).is_err());
    }
}
