//! SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802 / 7677) as MongoDB runs them:
//! credentials as `admin.system.users` stores them, and the server side of
//! the `saslStart`/`saslContinue` conversation with real proof checking.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bson::{Bson, Document, doc};
use hmac::{KeyInit, Mac};
use sha2::Digest;

/// Iteration counts of a 7.0 server's defaults
/// (scramIterationCount, scramSHA256IterationCount).
pub const SHA1_ITERATIONS: u32 = 10_000;
/// See [`SHA1_ITERATIONS`].
pub const SHA256_ITERATIONS: u32 = 15_000;

/// Which SCRAM variant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    Sha1,
    Sha256,
}

impl Mechanism {
    pub fn parse(s: &str) -> Option<Mechanism> {
        match s {
            "SCRAM-SHA-1" => Some(Mechanism::Sha1),
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            _ => None,
        }
    }
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => {
                let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha256 => {
                let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
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
    /// PBKDF2 with this HMAC, one output block (the hash's length).
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

/// The stored form of one mechanism's credentials.
#[derive(Clone, Debug)]
pub struct Credential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// Derives credentials for `user` from `password` with a fresh salt.
    pub fn derive(mech: Mechanism, user: &str, password: &str) -> Result<Credential, String> {
        let (secret, salt_len, iterations) = match mech {
            // MongoDB's SCRAM-SHA-1 "password" is the legacy digest.
            Mechanism::Sha1 => {
                (crate::query::hex(&md5::Md5::digest(format!("{user}:mongo:{password}"))), 16, SHA1_ITERATIONS)
            }
            Mechanism::Sha256 => (saslprep(password)?, 28, SHA256_ITERATIONS),
        };
        let salt: Vec<u8> = (0..salt_len).map(|_| rand::random::<u8>()).collect();
        let salted = mech.hi(secret.as_bytes(), &salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        Ok(Credential {
            iterations,
            salt,
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(&salted, b"Server Key"),
        })
    }

    /// Reads `{iterationCount, salt, storedKey, serverKey}`.
    pub fn from_doc(d: &Document) -> Option<Credential> {
        let iterations = match d.get("iterationCount")? {
            Bson::Int32(i) => u32::try_from(*i).ok()?,
            Bson::Int64(i) => u32::try_from(*i).ok()?,
            _ => return None,
        };
        let b64 = |k: &str| B64.decode(d.get_str(k).ok()?).ok();
        Some(Credential {
            iterations,
            salt: b64("salt")?,
            stored_key: b64("storedKey")?,
            server_key: b64("serverKey")?,
        })
    }

    /// `{iterationCount, salt, storedKey, serverKey}` (base64 strings).
    pub fn to_doc(&self) -> Document {
        doc! {
            "iterationCount": self.iterations as i32,
            "salt": B64.encode(&self.salt),
            "storedKey": B64.encode(&self.stored_key),
            "serverKey": B64.encode(&self.server_key),
        }
    }
}

/// SASLprep for ASCII passwords: printable ASCII passes unchanged; anything
/// else is refused rather than normalized wrongly.
pub fn saslprep(s: &str) -> Result<String, String> {
    if s.chars().all(|c| (' '..='~').contains(&c)) {
        Ok(s.to_string())
    } else {
        Err("this MongoDB stand-in implements SASLprep for printable ASCII passwords only".into())
    }
}

/// A conversation in progress on one connection.
pub struct Conversation {
    pub id: i32,
    pub mech: Mechanism,
    pub db: String,
    pub user: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    pub done: bool,
    pub skip_empty_exchange: bool,
}

fn attrs(s: &str) -> Vec<(char, &str)> {
    s.split(',')
        .filter_map(|p| p.split_at_checked(1).map(|(k, v)| (k.chars().next().unwrap_or(' '), v)))
        .map(|(k, v)| (k, v.strip_prefix('=').unwrap_or(v)))
        .collect()
}

fn unescape_user(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

/// The first client message: returns the user name and the parsed state.
pub fn start(
    id: i32,
    mech: Mechanism,
    db: &str,
    payload: &[u8],
    lookup: impl Fn(&str) -> Option<Credential>,
    skip_empty_exchange: bool,
) -> Result<(Conversation, Vec<u8>), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    // gs2 header "n,," (no channel binding, no authzid).
    let bare = text.strip_prefix("n,,").ok_or_else(|| "expected a gs2 header of n,,".to_string())?;
    let mut user = None;
    let mut client_nonce = None;
    for (k, v) in attrs(bare) {
        match k {
            'n' => user = Some(unescape_user(v)),
            'r' => client_nonce = Some(v.to_string()),
            _ => {}
        }
    }
    let user = user.ok_or_else(|| "no user name".to_string())?;
    let client_nonce = client_nonce.ok_or_else(|| "no nonce".to_string())?;
    let cred = lookup(&user).ok_or_else(|| format!("Could not find user \"{user}\" for db \"{db}\""))?;
    let server_nonce: Vec<u8> = (0..24).map(|_| rand::random::<u8>()).collect();
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&cred.salt), cred.iterations);
    let conv = Conversation {
        id,
        mech,
        db: db.to_string(),
        user,
        client_first_bare: bare.to_string(),
        server_first: server_first.clone(),
        nonce,
        done: false,
        skip_empty_exchange,
    };
    Ok((conv, server_first.into_bytes()))
}

impl Conversation {
    /// The client's final message: checks the proof, returns the server's
    /// signature message.
    pub fn finish(&mut self, payload: &[u8], cred: &Credential) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
        let (without_proof, proof) =
            text.rsplit_once(",p=").ok_or_else(|| "client final message has no proof".to_string())?;
        let mut nonce = None;
        for (k, v) in attrs(without_proof) {
            if k == 'r' {
                nonce = Some(v);
            }
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err("nonce mismatch".into());
        }
        let proof = B64.decode(proof).map_err(|_| "proof is not base64".to_string())?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = self.mech.hmac(&cred.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err("proof has the wrong length".into());
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        if self.mech.hash(&client_key) != cred.stored_key {
            return Err("proof does not match".into());
        }
        let server_signature = self.mech.hmac(&cred.server_key, auth_message.as_bytes());
        self.done = true;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// A generic binary value (subtype 0), as SASL payloads are sent.
pub fn binary(bytes: Vec<u8>) -> Bson {
    Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes })
}
