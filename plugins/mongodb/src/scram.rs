//! SCRAM-SHA-1 and SCRAM-SHA-256 as MongoDB runs them (RFC 5802 and RFC
//! 7677 over `saslStart`/`saslContinue`): the client's side, sans-IO.
//!
//! MongoDB's two twists: SCRAM-SHA-1 hashes the hex MD5 digest of
//! `user:mongo:password` instead of the password, and SCRAM-SHA-256 runs
//! the password through SASLprep first. The server's signature is checked
//! in constant time before the conversation counts as done, so a server
//! that does not know the password cannot pretend it does.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use md5::Digest;

/// The least iteration count accepted from a server (RFC 7677's and the
/// MongoDB drivers' floor): fewer would make a stolen exchange cheap to
/// crack.
const MIN_ITERATIONS: u32 = 4096;

/// Which SCRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `SCRAM-SHA-1`.
    Sha1,
    /// `SCRAM-SHA-256`.
    Sha256,
}

impl Mechanism {
    /// The name `saslStart` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha1 => "SCRAM-SHA-1",
            Mechanism::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism `name` spells, if it is one of these.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-1" => Some(Mechanism::Sha1),
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            _ => None,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => {
                let mut m = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha256 => {
                let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Mechanism::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// `Hi()` of RFC 5802: PBKDF2 with HMAC, one block as long as the hash.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut u = self.hmac(password, &first);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            for (o, x) in out.iter_mut().zip(&u) {
                *o ^= x;
            }
        }
        out
    }
}

/// The password as the mechanism hashes it: MongoDB's MD5 digest for
/// SHA-1, SASLprep for SHA-256.
fn prepared_password(mech: Mechanism, user: &str, password: &str) -> Result<Vec<u8>, String> {
    match mech {
        Mechanism::Sha1 => {
            let digest = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
            Ok(digest.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes())
        }
        Mechanism::Sha256 => stringprep::saslprep(password)
            .map(|p| p.into_owned().into_bytes())
            .map_err(|_| "the password has characters SASLprep does not allow (RFC 4013)".to_string()),
    }
}

/// A user name as SCRAM writes it: `=` and `,` escaped.
fn escape_user(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One authentication conversation.
pub struct Scram {
    mech: Mechanism,
    password: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    /// The signature the server must send back, once computed.
    server_signature: Option<Vec<u8>>,
}

impl Drop for Scram {
    fn drop(&mut self) {
        // Best effort: the prepared password is key material.
        self.password.iter_mut().for_each(|b| *b = 0);
    }
}

impl Scram {
    /// Starts a conversation for `user` with a fresh random nonce.
    pub fn new(mech: Mechanism, user: &str, password: &str) -> Result<Scram, String> {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| format!("no random numbers for the SCRAM nonce: {e}"))?;
        Self::with_nonce(mech, user, password, &B64.encode(raw))
    }

    /// [`Scram::new`] with a given nonce (tests).
    pub fn with_nonce(mech: Mechanism, user: &str, password: &str, nonce: &str) -> Result<Scram, String> {
        let password = prepared_password(mech, user, password)?;
        let client_first_bare = format!("n={},r={nonce}", escape_user(user));
        Ok(Scram { mech, password, nonce: nonce.to_string(), client_first_bare, server_signature: None })
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    /// The first message (`saslStart`'s payload).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server's first message with the proof (`saslContinue`'s
    /// payload).
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "the server's SCRAM message is not UTF-8")?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => return Err("the server asks for a SCRAM extension coffer does not know".into()),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(format!("the server's first SCRAM message lacks its nonce, salt or iteration count: {text:?}"));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's SCRAM nonce does not extend coffer's: not a genuine exchange".into());
        }
        let salt = B64.decode(salt).map_err(|_| "the server's SCRAM salt is not base64")?;
        let iterations: u32 = iterations.parse().map_err(|_| "the server's SCRAM iteration count is not a number")?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "the server asks for {iterations} SCRAM iterations, fewer than the {MIN_ITERATIONS} coffer accepts"
            ));
        }
        let m = self.mech;
        let salted = m.hi(&self.password, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let server_key = m.hmac(&salted, b"Server Key");
        self.server_signature = Some(m.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: its signature proves it knows
    /// the password's keys.
    pub fn check_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|_| "the server's last SCRAM message is not UTF-8")?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("the server refused the proof: {e}"));
        }
        let Some(v) = text.split(',').find_map(|p| p.strip_prefix("v=")) else {
            return Err("the server's last SCRAM message has no signature".into());
        };
        let got = B64.decode(v).map_err(|_| "the server's SCRAM signature is not base64")?;
        let want = self.server_signature.as_deref().ok_or("the server signed before coffer sent its proof")?;
        if !constant_time_eq(&got, want) {
            return Err("the server's SCRAM signature is wrong: it does not know this user's keys".into());
        }
        Ok(())
    }
}

/// Equality that takes as long whatever the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_exchange_in_mongodb_auth_spec() {
        // The SCRAM-SHA-1 conversation of the drivers' authentication
        // specification: user "user", password "pencil".
        let mut s = Scram::with_nonce(Mechanism::Sha1, "user", "pencil", "fyko+d2lbbFgONRv9qkxdawL").unwrap();
        assert_eq!(s.client_first(), b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first =
            b"r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,s=rQ9ZY3MntBeuP3E1TDVC4w==,i=10000";
        let fin = s.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,p=MC2T8BvbmWRckDw8oWl5IVghwCY="
        );
        s.check_server_final(b"v=UMWeI25JD1yNYZRMpZ4VHvhZ9e0=").unwrap();
        assert!(s.check_server_final(b"v=UMWeI25JD1yNYZRMpZ4VHvhZ9e1=").is_err());
    }

    #[test]
    fn sha256_matches_rfc_7677() {
        let mut s = Scram::with_nonce(Mechanism::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.check_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
    }

    #[test]
    fn a_server_that_does_not_extend_the_nonce_or_skimps_on_iterations_is_refused() {
        let mut s = Scram::with_nonce(Mechanism::Sha256, "u", "p", "abc").unwrap();
        assert!(s.client_final(b"r=xyz123,s=AAAA,i=4096").unwrap_err().contains("nonce"));
        let mut s = Scram::with_nonce(Mechanism::Sha256, "u", "p", "abc").unwrap();
        assert!(s.client_final(b"r=abcdef,s=AAAA,i=10").unwrap_err().contains("iterations"));
        let s = Scram::with_nonce(Mechanism::Sha256, "u", "p", "abc").unwrap();
        assert!(s.check_server_final(b"e=invalid-proof").unwrap_err().contains("invalid-proof"));
    }

    #[test]
    fn user_names_are_escaped() {
        let s = Scram::with_nonce(Mechanism::Sha256, "a=b,c", "p", "n").unwrap();
        assert_eq!(s.client_first(), b"n,,n=a=3Db=2Cc,r=n");
    }
}
