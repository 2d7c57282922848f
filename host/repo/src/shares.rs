//! Shamir K-of-N shares of the master secret, for `coffer key split` and
//! `coffer key combine`.
//!
//! The arithmetic is `blahaj` (Shamir over GF(256), a maintained fork of
//! `sharks` with the RUSTSEC-2024-0398 fix). This module adds what makes a
//! share safe to hand to a custodian and type back in:
//!
//! ```text
//! payload  := version u8 (=1) || threshold u8 || count u8 || index u8
//!             || split id [4] || repository id prefix [8] || y [32]
//! share    := payload || checksum [4]     checksum = BLAKE3("coffer share v1" || payload)[..4]
//! text     := Crockford base32 of share, in groups of 4 joined by '-'
//! ```
//!
//! Crockford base32 has no letters that look alike (`I`/`L` read as `1`,
//! `O` as `0`, case is ignored), and the checksum catches a mistyped
//! character before any arithmetic. The split id ties the shares of one
//! split together; the repository id prefix ties them to a repository. A
//! recovered secret is only used after it authenticates the repository's
//! config, so even shares that pass every check cannot open it with a
//! wrong key.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use data_encoding::{Encoding, Specification};
use zeroize::Zeroizing;

use crate::crypto::{MasterSecret, random_bytes};
use crate::id::Id;

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 4 + 4 + 8 + 32;
const SHARE_LEN: usize = PAYLOAD_LEN + 4;

fn encoding() -> &'static Encoding {
    static ENC: OnceLock<Encoding> = OnceLock::new();
    ENC.get_or_init(|| {
        let mut spec = Specification::new();
        spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
        spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzIiLlOo");
        spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ111100");
        spec.encoding().expect("a valid base32 specification")
    })
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let mut h = blake3::Hasher::new();
    h.update(b"coffer share v1");
    h.update(payload);
    h.finalize().as_bytes()[..4].try_into().expect("4 bytes")
}

/// One decoded share.
#[derive(Clone)]
pub struct Share {
    /// Shares needed to recover the secret.
    pub threshold: u8,
    /// Shares made by the split.
    pub count: u8,
    /// This share's index (1..=count).
    pub index: u8,
    /// Random id shared by the shares of one split.
    pub split_id: [u8; 4],
    /// The first 8 bytes of the repository id.
    pub repo_prefix: [u8; 8],
    y: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({}/{} of split {}, <redacted>)", self.index, self.count, hex::encode(self.split_id))
    }
}

impl Share {
    /// The printable form: the code alone (what [`Share::parse`] needs).
    pub fn code(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
        raw.extend_from_slice(&[VERSION, self.threshold, self.count, self.index]);
        raw.extend_from_slice(&self.split_id);
        raw.extend_from_slice(&self.repo_prefix);
        raw.extend_from_slice(&self.y[..]);
        let sum = checksum(&raw);
        raw.extend_from_slice(&sum);
        let plain = Zeroizing::new(encoding().encode(&raw));
        let mut out = Zeroizing::new(String::with_capacity(plain.len() + plain.len() / 4));
        for (i, c) in plain.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }

    /// The line written for a custodian: what the share is, then the code.
    pub fn line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "coffer share {} of {} (any {} recover the key), repository {}: {}",
            self.index,
            self.count,
            self.threshold,
            hex::encode(self.repo_prefix),
            self.code().as_str()
        ))
    }

    /// Parses a share from its code, or from a whole [`Share::line`]
    /// (everything up to the last `:` is ignored). Dashes, spaces and case
    /// do not matter.
    pub fn parse(text: &str) -> Result<Share, String> {
        let code = text.rsplit(':').next().unwrap_or(text);
        let cleaned: Zeroizing<String> =
            Zeroizing::new(code.chars().filter(|c| !c.is_whitespace() && *c != '-').collect());
        if cleaned.is_empty() {
            return Err("it is empty".into());
        }
        if let Some(bad) = cleaned.chars().find(|c| !c.is_ascii_alphanumeric() || matches!(c, 'u' | 'U')) {
            return Err(format!("{bad:?} is not a character shares are written with (0-9, A-Z without U)"));
        }
        let raw = Zeroizing::new(encoding().decode(cleaned.as_bytes()).map_err(|_| {
            format!("it has {} characters where a share has {}: one is missing or extra", cleaned.len(), encoded_len())
        })?);
        if raw.len() != SHARE_LEN {
            return Err(format!(
                "it has {} characters where a share has {}: one is missing or extra",
                cleaned.len(),
                encoded_len()
            ));
        }
        let (payload, sum) = raw.split_at(PAYLOAD_LEN);
        if checksum(payload) != sum {
            return Err("its checksum does not match: a character was mistyped or changed".into());
        }
        if payload[0] != VERSION {
            return Err(format!("share format version {} is not supported by this coffer", payload[0]));
        }
        let (threshold, count, index) = (payload[1], payload[2], payload[3]);
        if threshold < 2 || count < threshold || index == 0 || index > count {
            return Err(format!(
                "it claims to be share {index} of {count} with threshold {threshold}, which is impossible"
            ));
        }
        let mut y = Zeroizing::new([0u8; 32]);
        y.copy_from_slice(&payload[16..48]);
        Ok(Share {
            threshold,
            count,
            index,
            split_id: payload[4..8].try_into().expect("4 bytes"),
            repo_prefix: payload[8..16].try_into().expect("8 bytes"),
            y,
        })
    }
}

fn encoded_len() -> usize {
    encoding().encode_len(SHARE_LEN)
}

/// The first 8 bytes of a repository id, as shares carry it.
pub fn repo_prefix(repo_id: &Id) -> [u8; 8] {
    repo_id.0[..8].try_into().expect("8 bytes")
}

/// Splits `secret` into `count` shares, any `threshold` of which recover it.
pub fn split(secret: &MasterSecret, repo_id: &Id, threshold: u8, count: u8) -> Result<Vec<Share>, String> {
    if threshold < 2 {
        return Err("the threshold must be at least 2 (a threshold of 1 would make every share the key itself)".into());
    }
    if count < threshold {
        return Err(format!("cannot make {count} shares with a threshold of {threshold}: need at least {threshold}"));
    }
    let split_id: [u8; 4] = random_bytes();
    let dealer = blahaj::Sharks(threshold).dealer(secret.expose());
    let mut out = Vec::with_capacity(count as usize);
    for s in dealer.take(count as usize) {
        let bytes = Zeroizing::new(Vec::from(&s));
        let mut y = Zeroizing::new([0u8; 32]);
        y.copy_from_slice(&bytes[1..]);
        out.push(Share { threshold, count, index: bytes[0], split_id, repo_prefix: repo_prefix(repo_id), y });
    }
    Ok(out)
}

/// Recovers the secret from shares, each given with a name to report it by
/// (a file name, or `stdin line 2`). Checks that they come from one split
/// of the repository `repo_id`, that no index is given twice with different
/// values and that there are enough of them. The caller must still check the
/// secret against the repository (see `Repository::open_with_secret`).
pub fn combine(shares: &[(String, Share)], repo_id: &Id) -> Result<MasterSecret, String> {
    let Some((first_name, first)) = shares.first() else {
        return Err("no shares were given".into());
    };
    let want_prefix = repo_prefix(repo_id);
    for (name, s) in shares {
        if s.repo_prefix != want_prefix {
            return Err(format!(
                "{name} is a share of repository {}..., not of this one ({}...)",
                hex::encode(s.repo_prefix),
                hex::encode(want_prefix)
            ));
        }
        if s.split_id != first.split_id || s.threshold != first.threshold || s.count != first.count {
            return Err(format!(
                "{name} (split {}, {} of {}) and {first_name} (split {}, {} of {}) come from different splits; \
                 shares of different splits cannot be combined",
                hex::encode(s.split_id),
                s.threshold,
                s.count,
                hex::encode(first.split_id),
                first.threshold,
                first.count
            ));
        }
    }
    let mut by_index: BTreeMap<u8, (&String, &Share)> = BTreeMap::new();
    for (name, s) in shares {
        if let Some((other, prev)) = by_index.get(&s.index) {
            if prev.y[..] != s.y[..] {
                return Err(format!("{name} and {other} both claim to be share {} but differ", s.index));
            }
            continue;
        }
        by_index.insert(s.index, (name, s));
    }
    let k = first.threshold as usize;
    if by_index.len() < k {
        let dup = if by_index.len() < shares.len() { " (a share given twice counts once)" } else { "" };
        return Err(format!(
            "{} distinct shares were given, but {k} of {} are needed{dup}",
            by_index.len(),
            first.count
        ));
    }
    let parsed: Vec<blahaj::Share> = by_index
        .values()
        .take(k)
        .map(|(_, s)| {
            let mut bytes = Zeroizing::new(Vec::with_capacity(33));
            bytes.push(s.index);
            bytes.extend_from_slice(&s.y[..]);
            blahaj::Share::try_from(&bytes[..]).expect("33 bytes make a share")
        })
        .collect();
    let secret = Zeroizing::new(blahaj::Sharks(first.threshold).recover(&parsed).map_err(|e| e.to_string())?);
    let bytes: Zeroizing<[u8; 32]> =
        Zeroizing::new(secret[..].try_into().map_err(|_| "the recovered secret is not 32 bytes".to_string())?);
    Ok(MasterSecret::from_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(v: &[Share]) -> Vec<(String, Share)> {
        v.iter().map(|s| (format!("share {}", s.index), s.clone())).collect()
    }

    #[test]
    fn every_three_of_five_recover_and_two_do_not() {
        let secret = MasterSecret::generate();
        let repo = Id(random_bytes());
        let shares = split(&secret, &repo, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let pick = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    let got = combine(&named(&pick), &repo).unwrap();
                    assert_eq!(got.expose(), secret.expose());
                }
                let err = combine(&named(&[shares[a].clone(), shares[b].clone()]), &repo).unwrap_err();
                assert!(err.contains("3 of 5 are needed"), "{err}");
            }
        }
    }

    #[test]
    fn text_round_trip_tolerates_case_dashes_and_lookalikes() {
        let secret = MasterSecret::generate();
        let repo = Id(random_bytes());
        let s = &split(&secret, &repo, 2, 3).unwrap()[1];
        let line = s.line();
        let back = Share::parse(&line).unwrap();
        assert_eq!((back.index, back.threshold, back.count), (s.index, 2, 3));
        assert_eq!(back.y[..], s.y[..]);
        let code = s.code();
        let typed: String = code.to_lowercase().replace('-', " ").replace('1', "l").replace('0', "o");
        assert_eq!(Share::parse(&typed).unwrap().y[..], s.y[..]);
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let secret = MasterSecret::generate();
        let repo = Id(random_bytes());
        let s = &split(&secret, &repo, 2, 2).unwrap()[0];
        let code: Vec<char> = s.code().chars().collect();
        let alphabet: Vec<char> = "0123456789ABCDEFGHJKMNPQRSTVWXYZ".chars().collect();
        for i in (0..code.len()).filter(|i| code[*i] != '-') {
            for &c in &alphabet {
                if c == code[i] {
                    continue;
                }
                let mut t = code.clone();
                t[i] = c;
                let text: String = t.into_iter().collect();
                assert!(Share::parse(&text).is_err(), "changing position {i} to {c} went unnoticed");
            }
        }
        let short: String = code[..code.len() - 1].iter().collect();
        assert!(Share::parse(&short).unwrap_err().contains("missing or extra"));
    }

    #[test]
    fn foreign_mixed_and_conflicting_shares_are_refused() {
        let secret = MasterSecret::generate();
        let a = Id(random_bytes());
        let b = Id(random_bytes());
        let s1 = split(&secret, &a, 2, 3).unwrap();
        let s2 = split(&secret, &a, 2, 3).unwrap();
        assert!(combine(&named(&s1[..2]), &b).unwrap_err().contains("not of this one"));
        let mixed = vec![("x".to_string(), s1[0].clone()), ("y".to_string(), s2[1].clone())];
        assert!(combine(&mixed, &a).unwrap_err().contains("different splits"));
        let mut forged = s1[1].clone();
        forged.index = s1[0].index;
        let conflict = vec![("x".to_string(), s1[0].clone()), ("y".to_string(), forged)];
        assert!(combine(&conflict, &a).unwrap_err().contains("both claim"));
        let twice = vec![("x".to_string(), s1[0].clone()), ("y".to_string(), s1[0].clone())];
        assert!(combine(&twice, &a).unwrap_err().contains("counts once"));
        assert!(split(&secret, &a, 1, 3).is_err());
        assert!(split(&secret, &a, 4, 3).is_err());
    }
}
