//! LZF decompression, for RDB strings that Redis stored compressed
//! (`rdbcompression yes`, strings longer than 20 bytes).
//!
//! The stream is a sequence of runs, each starting with a control byte:
//! below 32 it is a literal run of `ctrl + 1` bytes; otherwise a back
//! reference of `(ctrl >> 5) + 2` bytes (a 3-bit length of 7 continues in
//! the next byte), `((ctrl & 31) << 8) + next + 1` bytes behind the output.

/// Most output bytes per input byte: a back reference of 3 bytes (a control
/// byte with length 7, a length byte of 255, an offset byte) copies 264.
const MAX_RATIO: usize = 88;

/// Decompresses `input` into exactly `expected` bytes.
pub fn decompress(input: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    // A damaged length must not size the output buffer: refuse what the
    // input cannot expand to before allocating it.
    if expected > input.len().saturating_mul(MAX_RATIO) {
        return Err(format!("{} bytes of LZF data cannot decompress to the {expected} bytes announced", input.len()));
    }
    let mut out: Vec<u8> = Vec::with_capacity(expected);
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input.get(i..i + run).ok_or_else(|| format!("LZF literal run of {run} bytes past the end"))?;
            if out.len() + run > expected {
                return Err(format!("LZF data decompresses to more than the {expected} bytes announced"));
            }
            out.extend_from_slice(lit);
            i += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(i).ok_or("LZF back reference cut short")? as usize;
                i += 1;
            }
            len += 2;
            let low = *input.get(i).ok_or("LZF back reference cut short")? as usize;
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + low + 1;
            if back > out.len() {
                return Err(format!("LZF back reference {back} bytes behind an output of {}", out.len()));
            }
            if out.len() + len > expected {
                return Err(format!("LZF data decompresses to more than the {expected} bytes announced"));
            }
            let start = out.len() - back;
            if back >= len {
                out.extend_from_within(start..start + len);
            } else {
                // Overlapping copy: each byte may be one just written.
                for k in 0..len {
                    let b = out[start + k];
                    out.push(b);
                }
            }
        }
    }
    if out.len() != expected {
        return Err(format!("LZF data decompresses to {} bytes, {expected} announced", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_back_references() {
        // "abcabcabcabc": literal "abc", then a 9-byte reference 3 back.
        let data = [2, b'a', b'b', b'c', (7 << 5) as u8, 0, 2];
        assert_eq!(decompress(&data, 12).unwrap(), b"abcabcabcabc");
        // A short reference: "aaaa" = literal "a", reference of 3, 1 back.
        assert_eq!(decompress(&[0, b'a', 1 << 5, 0], 4).unwrap(), b"aaaa");
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        assert!(decompress(&[5, b'a'], 6).is_err());
        assert!(decompress(&[1 << 5, 9], 3).is_err());
        assert!(decompress(&[0, b'a'], 2).is_err());
        assert!(decompress(&[0xe0], 9).is_err());
        // A length the data cannot reach is refused before it sizes a buffer.
        assert!(decompress(&[0, b'a'], 1 << 31).unwrap_err().contains("cannot decompress"));
        let longest = [0xe0, 255, 0];
        assert!(decompress(&[&[0, b'a'][..], &longest].concat(), 265).is_ok());
        for n in 0..=255u8 {
            let _ = decompress(&[n, n, n, n], 64);
        }
    }
}
