//! Substrate / Polkadot-SDK node keystores, checked by derivation: a node's
//! `chains/<chain>/keystore/` holds one file per key, named hex(key type) +
//! hex(public key) and holding the secret as a JSON string; this module
//! derives the public key from that secret exactly as the node does (sp-core's
//! `Pair::from_string`, called by `LocalKeystore::key_pair_by_type`) and
//! compares it with the name. It also derives the libp2p peer id of a node key
//! (`chains/<chain>/network/secret_ed25519`).
//!
//! Pure functions over file names and bytes. A secret is never shown, logged
//! or put in an error (a derived public key may be), and seeds, phrases and
//! entropy are wiped from memory when dropped, where the crates allow it.

use std::fmt;

use bip39::{Language, Mnemonic};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use schnorrkel::derive::{ChainCode, Derivation};
use schnorrkel::{ExpansionMode, MiniSecretKey, SecretKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Substrate's public development phrase (`sp_core::crypto::DEV_PHRASE`): a
/// secret URI without a phrase or seed (`//Alice`) derives from it.
pub const DEV_PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

/// Length of a key type id in a file name: 4 bytes (8 hex digits).
const KEY_TYPE_LEN: usize = 4;

/// Length of a junction's chain code (sp-core's `JUNCTION_ID_LEN`, schnorrkel's
/// `CHAIN_CODE_LENGTH`).
const CHAIN_CODE_LEN: usize = 32;

/// A key type id: four bytes saying what a key is for (`babe`, `gran`, ...).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyType(pub [u8; 4]);

impl KeyType {
    /// BABE block production (sr25519).
    pub const BABE: KeyType = KeyType(*b"babe");
    /// Aura block production (sr25519, or ed25519 on some runtimes).
    pub const AURA: KeyType = KeyType(*b"aura");
    /// GRANDPA finality (ed25519).
    pub const GRANDPA: KeyType = KeyType(*b"gran");
    /// BEEFY (ECDSA secp256k1, compressed public keys).
    pub const BEEFY: KeyType = KeyType(*b"beef");
    /// I'm-online heartbeats (sr25519).
    pub const IM_ONLINE: KeyType = KeyType(*b"imon");
    /// Authority discovery (sr25519).
    pub const AUTHORITY_DISCOVERY: KeyType = KeyType(*b"audi");
    /// Polkadot parachain validation (sr25519).
    pub const PARA_VALIDATOR: KeyType = KeyType(*b"para");
    /// Polkadot approval assignments (sr25519).
    pub const ASSIGNMENT: KeyType = KeyType(*b"asgn");
    /// Sassafras block production (Bandersnatch, which this module does not derive).
    pub const SASSAFRAS: KeyType = KeyType(*b"sass");

    /// The scheme a node uses for keys of this type; sr25519 for a type this
    /// module does not know (as `file_for` assumes).
    pub fn default_scheme(self) -> Scheme {
        match self.known() {
            KnownType::Schemes(schemes) => schemes[0],
            KnownType::Unsupported | KnownType::Unknown => Scheme::Sr25519,
        }
    }

    fn known(self) -> KnownType {
        match &self.0 {
            b"gran" => KnownType::Schemes(&[Scheme::Ed25519]),
            b"beef" => KnownType::Schemes(&[Scheme::Ecdsa]),
            // sp-consensus-aura has both an sr25519 and an ed25519 flavour.
            b"aura" => KnownType::Schemes(&[Scheme::Sr25519, Scheme::Ed25519]),
            b"babe" | b"imon" | b"audi" | b"para" | b"asgn" | b"mixn" => KnownType::Schemes(&[Scheme::Sr25519]),
            b"sass" => KnownType::Unsupported,
            _ => KnownType::Unknown,
        }
    }
}

impl fmt::Display for KeyType {
    /// The four letters when they are printable ASCII (`babe`), else `0x` hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            self.0.iter().try_for_each(|&b| write!(f, "{}", b as char))
        } else {
            write!(f, "0x{}", hex::encode(self.0))
        }
    }
}

/// What this module knows of a key type.
enum KnownType {
    /// Keys of this type are of these schemes, the usual one first.
    Schemes(&'static [Scheme]),
    /// Keys of this type are of a scheme this module does not derive.
    Unsupported,
    /// A type this module does not know: the public key's length decides.
    Unknown,
}

/// A signature scheme of Substrate keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Scheme {
    /// Schnorr over Ristretto25519 (schnorrkel), 32-byte public keys.
    Sr25519,
    /// Ed25519, 32-byte public keys.
    Ed25519,
    /// ECDSA over secp256k1, 33-byte compressed public keys.
    Ecdsa,
}

impl Scheme {
    /// The name Substrate's tools use (`subkey --scheme`).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Sr25519 => "sr25519",
            Scheme::Ed25519 => "ed25519",
            Scheme::Ecdsa => "ecdsa",
        }
    }

    /// Length of a public key in bytes.
    pub fn public_key_len(self) -> usize {
        match self {
            Scheme::Sr25519 | Scheme::Ed25519 => 32,
            Scheme::Ecdsa => 33,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A keystore file name, parsed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyFileName {
    /// The first 4 bytes.
    pub key_type: KeyType,
    /// The rest: the public key of the secret the file holds.
    pub public_key: Vec<u8>,
}

/// A keystore file whose secret derives the public key in its name.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifiedKey {
    /// The file name.
    pub file: String,
    /// The key type from the name.
    pub key_type: KeyType,
    /// The scheme whose derivation matched.
    pub scheme: Scheme,
    /// The public key (from the name, and derived from the secret).
    pub public_key: Vec<u8>,
}

impl VerifiedKey {
    /// The public key as `0x` hex.
    pub fn public_key_hex(&self) -> String {
        format!("0x{}", hex::encode(&self.public_key))
    }
}

impl fmt::Display for VerifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} key {} ({}), derived from its secret",
            self.file,
            self.key_type,
            self.public_key_hex(),
            self.scheme
        )
    }
}

/// A libp2p node key and the peer id it gives the node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeKey {
    /// The file name.
    pub file: String,
    /// The ed25519 public key.
    pub public_key: [u8; 32],
    /// The peer id (`12D3KooW...`).
    pub peer_id: String,
    /// Whether the file held 64 hex digits (older nodes) rather than 32 raw bytes.
    pub hex_encoded: bool,
}

/// What is wrong with one keystore file or node key; names the file.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct KeyFileError {
    /// The file name.
    pub file: String,
    /// What is wrong with it.
    pub problem: KeyFileProblem,
}

/// What is wrong with a keystore file or node key.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The name is not hex(key type) + hex(public key).
    #[error("the name is not hex(key type) + hex(public key) as a node writes it: {0}")]
    BadName(&'static str),
    /// The key type is known and the public key's length is not its scheme's.
    #[error("{key_type} keys are {expected} keys, but the name holds a {len}-byte public key")]
    WrongKeyLength {
        /// The key type from the name.
        key_type: KeyType,
        /// The scheme(s) of that key type, joined with " or ".
        expected: String,
        /// Length of the public key in the name.
        len: usize,
    },
    /// A key of a scheme this module does not derive (Bandersnatch, BLS12-381,
    /// ECDSA+BLS12-381): not checked.
    #[error(
        "a {len}-byte {key_type} public key is of a scheme this check does not derive (such as Bandersnatch or \
         BLS12-381), so it was not checked"
    )]
    Unsupported {
        /// The key type from the name.
        key_type: KeyType,
        /// Length of the public key in the name.
        len: usize,
    },
    /// The content is not a JSON string.
    #[error("the content is not a JSON string, which is how a node writes a secret URI: {0}")]
    NotJsonString(String),
    /// The secret URI is malformed, in a way that is the same for every scheme.
    #[error("{0}")]
    Secret(SecretProblem),
    /// No scheme derives the public key in the name.
    #[error("the secret derives {}, not the public key in the file name", describe_attempts(.0))]
    Mismatch(Vec<SchemeAttempt>),
    /// The URI's own `///password` derives the key, but the node's keystore
    /// password replaces it.
    #[error(
        "the secret URI's own ///password derives the public key in the file name ({0}), but the node's keystore \
         password takes its place (sp-core's Pair::from_string), so the node cannot use this key"
    )]
    PasswordOverridden(Scheme),
    /// A 64-byte sr25519 secret key, which a node's keystore does not read.
    #[error(
        "the file holds a 64-byte sr25519 secret key ({}), but a node's keystore reads only 32-byte `0x` seeds, \
         phrases and secret URIs (Pair::from_string refuses it), so the node cannot use this key",
        if *.matches { "it derives the public key in the file name".to_owned() }
        else { format!("it derives public key 0x{}, not the one in the file name", hex::encode(.derived)) }
    )]
    SecretKeyNotSeed {
        /// The sr25519 public key it derives.
        derived: Vec<u8>,
        /// Whether that is the public key in the name.
        matches: bool,
    },
    /// A node key file a node cannot read.
    #[error("not a node key a node reads: {0}")]
    BadNodeKey(String),
}

/// One scheme's derivation from a secret, for a mismatch report.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SchemeAttempt {
    /// The scheme.
    pub scheme: Scheme,
    /// The public key the secret derives with it, or why it derives none.
    pub result: Result<Vec<u8>, SecretProblem>,
}

fn describe_attempts(attempts: &[SchemeAttempt]) -> String {
    let described: Vec<String> = attempts
        .iter()
        .map(|a| match &a.result {
            Ok(public) => format!("public key 0x{} as {}", hex::encode(public), a.scheme),
            Err(problem) => format!("no {} key ({problem})", a.scheme),
        })
        .collect();
    described.join(", and ")
}

/// What is wrong with a secret URI, a seed or a phrase. Never quotes them.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretProblem {
    /// A character outside `[a-zA-Z0-9 ]` before the first `/`.
    #[error("the secret URI's phrase or seed has a character other than ASCII letters, digits and spaces")]
    UriPhraseCharacter,
    /// A line break in the `///password`.
    #[error("the secret URI's password has a line break in it")]
    UriPasswordCharacter,
    /// `//` with nothing after it.
    #[error("the secret URI ends with an empty hard junction (`//` and nothing after it)")]
    EmptyHardJunction,
    /// `/` followed by `/` or nothing.
    #[error("the secret URI has an empty soft junction (`/` and nothing after it)")]
    EmptySoftJunction,
    /// Not 12, 15, 18, 21 or 24 words.
    #[error("the phrase has {0} words; a BIP-39 phrase has 12, 15, 18, 21 or 24")]
    PhraseWordCount(usize),
    /// A word not in the English BIP-39 list (1-based).
    #[error("word {0} of the phrase is not in the English BIP-39 word list")]
    PhraseUnknownWord(usize),
    /// The BIP-39 checksum does not match.
    #[error("the phrase's BIP-39 checksum is wrong (a word is mistyped or out of place)")]
    PhraseChecksum,
    /// Any other BIP-39 failure.
    #[error("the phrase is not a BIP-39 phrase")]
    PhraseInvalid,
    /// `0x` followed by something other than an even number of hex digits.
    #[error("the `0x` seed is not an even number of hex digits")]
    SeedNotHex,
    /// A `0x` seed of another length than 32 bytes.
    #[error("the `0x` seed is {0} bytes; a seed is 32 bytes")]
    SeedLength(usize),
    /// A 64-byte secret where an ed25519 or ecdsa seed was expected.
    #[error("64 bytes is an sr25519 secret key, not an {0} seed")]
    SecretKeyForScheme(Scheme),
    /// A 64-byte sr25519 secret key whose scalar is not canonical.
    #[error("the 64-byte sr25519 secret key is malformed (its scalar is not canonical)")]
    InvalidSr25519SecretKey,
    /// A seed that is zero or not below secp256k1's group order.
    #[error("the seed is not a secp256k1 secret key (it is zero or not below the group order)")]
    InvalidEcdsaSeed,
    /// A soft junction for a scheme that has no soft derivation.
    #[error("{0} has no soft derivation and the secret URI has a soft junction (`/name`); Substrate refuses it")]
    SoftJunction(Scheme),
}

/// Parses a keystore file name into key type and public key. A node writes
/// lower-case hex and looks keys up by that name, so an upper-case name is
/// reported: the node never reads that file.
pub fn parse_key_file_name(file_name: &str) -> Result<KeyFileName, KeyFileError> {
    let bad = |why| KeyFileError { file: file_name.to_owned(), problem: KeyFileProblem::BadName(why) };
    if !file_name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("it has characters other than hex digits"));
    }
    if file_name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "it has upper-case hex digits; a node looks its keys up by lower-case names, so it never reads this file",
        ));
    }
    if !file_name.len().is_multiple_of(2) {
        return Err(bad("it has an odd number of hex digits"));
    }
    if file_name.len() <= 2 * KEY_TYPE_LEN {
        return Err(bad("it is too short for a 4-byte key type and a public key"));
    }
    let bytes = hex::decode(file_name).map_err(|_| bad("it is not hex"))?;
    let (key_type, public_key) = bytes.split_at(KEY_TYPE_LEN);
    let mut id = [0u8; KEY_TYPE_LEN];
    id.copy_from_slice(key_type);
    Ok(KeyFileName { key_type: KeyType(id), public_key: public_key.to_vec() })
}

/// Checks one keystore file: its secret (a JSON string holding a secret URI)
/// must derive, as the node derives it, the public key in its name.
/// `node_password` is the node's keystore password (`--password`), which
/// sp-core applies in place of a `///password` in the URI.
pub fn check_key_file(
    file_name: &str,
    content: &[u8],
    node_password: Option<&str>,
) -> Result<VerifiedKey, KeyFileError> {
    let fail = |problem| KeyFileError { file: file_name.to_owned(), problem };
    let name = parse_key_file_name(file_name)?;
    let len = name.public_key.len();
    let schemes: Vec<Scheme> = match name.key_type.known() {
        _ if len != 32 && len != 33 => {
            return Err(fail(KeyFileProblem::Unsupported { key_type: name.key_type, len }));
        }
        KnownType::Unsupported => return Err(fail(KeyFileProblem::Unsupported { key_type: name.key_type, len })),
        KnownType::Schemes(schemes) => {
            let fitting: Vec<Scheme> = schemes.iter().copied().filter(|s| s.public_key_len() == len).collect();
            if fitting.is_empty() {
                let expected = schemes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" or ");
                return Err(fail(KeyFileProblem::WrongKeyLength { key_type: name.key_type, expected, len }));
            }
            fitting
        }
        KnownType::Unknown if len == 33 => vec![Scheme::Ecdsa],
        KnownType::Unknown => vec![Scheme::Sr25519, Scheme::Ed25519],
    };

    let suri = read_suri(content).map_err(fail)?;
    let uri = SecretUri::parse(&suri).map_err(|p| fail(KeyFileProblem::Secret(p)))?;
    let root =
        RootSecret::new(uri.phrase, node_password.or(uri.password)).map_err(|p| fail(KeyFileProblem::Secret(p)))?;

    if let RootSecret::Sr25519SecretKey(_) = root {
        if !schemes.contains(&Scheme::Sr25519) {
            return Err(fail(KeyFileProblem::Secret(SecretProblem::SeedLength(64))));
        }
        let derived =
            derive_public(Scheme::Sr25519, &root, &uri.junctions).map_err(|p| fail(KeyFileProblem::Secret(p)))?;
        let matches = derived == name.public_key;
        return Err(fail(KeyFileProblem::SecretKeyNotSeed { derived, matches }));
    }

    let mut attempts = Vec::with_capacity(schemes.len());
    for &scheme in &schemes {
        match derive_public(scheme, &root, &uri.junctions) {
            Ok(public) if public == name.public_key => {
                return Ok(VerifiedKey {
                    file: file_name.to_owned(),
                    key_type: name.key_type,
                    scheme,
                    public_key: name.public_key,
                });
            }
            result => attempts.push(SchemeAttempt { scheme, result }),
        }
    }

    // Nothing matched. If the node's password replaced one in the URI, say
    // whether the URI's own would have derived the key: the usual cause.
    if let (Some(node), Some(own)) = (node_password, uri.password)
        && node != own
        && let Ok(own_root) = RootSecret::new(uri.phrase, Some(own))
    {
        for &scheme in &schemes {
            if derive_public(scheme, &own_root, &uri.junctions).is_ok_and(|public| public == name.public_key) {
                return Err(fail(KeyFileProblem::PasswordOverridden(scheme)));
            }
        }
    }

    if let [SchemeAttempt { result: Err(problem), .. }] = attempts.as_slice() {
        return Err(fail(KeyFileProblem::Secret(problem.clone())));
    }
    Err(fail(KeyFileProblem::Mismatch(attempts)))
}

/// The public key a secret URI derives with `scheme`, as sp-core's
/// `Pair::from_string(suri, password)` derives it: `password`, when given,
/// replaces the URI's own `///password`.
pub fn public_key(scheme: Scheme, suri: &str, password: Option<&str>) -> Result<Vec<u8>, SecretProblem> {
    let uri = SecretUri::parse(suri)?;
    let root = RootSecret::new(uri.phrase, password.or(uri.password))?;
    if let RootSecret::Sr25519SecretKey(_) = root {
        return Err(SecretProblem::SeedLength(64));
    }
    derive_public(scheme, &root, &uri.junctions)
}

/// A keystore file as a node writes it (`LocalKeystore::insert`): the name
/// hex(key type) + hex(public key) and the secret URI as a JSON string. The
/// scheme is the key type's usual one (sr25519 for types not known here);
/// `password` is the node's keystore password the key is to be used with.
pub fn file_for(key_type: [u8; 4], suri: &str, password: Option<&str>) -> Result<(String, Vec<u8>), SecretProblem> {
    file_for_scheme(key_type, KeyType(key_type).default_scheme(), suri, password)
}

/// As [`file_for`], with the scheme given (an ed25519 `aura` key, say).
pub fn file_for_scheme(
    key_type: [u8; 4],
    scheme: Scheme,
    suri: &str,
    password: Option<&str>,
) -> Result<(String, Vec<u8>), SecretProblem> {
    let public = public_key(scheme, suri, password)?;
    let name = format!("{}{}", hex::encode(key_type), hex::encode(public));
    // `serde_json::to_writer(&file, &suri)`, as the node writes it.
    let content = serde_json::Value::String(suri.to_owned()).to_string().into_bytes();
    Ok((name, content))
}

/// Checks a libp2p node key file (`network/secret_ed25519`) the way a node
/// reads it (sc-network's `NodeKeyConfig::into_keypair`): 64 bytes that are
/// hex digits are the hex of the secret, otherwise the file must be the 32 raw
/// bytes of the ed25519 secret. Derives the node's peer id.
pub fn check_node_key(file_name: &str, content: &[u8]) -> Result<NodeKey, KeyFileError> {
    let fail = |why: String| KeyFileError { file: file_name.to_owned(), problem: KeyFileProblem::BadNodeKey(why) };
    let mut secret = Zeroizing::new([0u8; 32]);
    let hex_encoded = if content.len() == 64 && hex::decode_to_slice(content, &mut secret[..]).is_ok() {
        true
    } else if content.len() == 32 {
        secret.copy_from_slice(content);
        false
    } else if content.len() > 64 && content[..64].iter().all(u8::is_ascii_hexdigit) {
        return Err(fail(format!(
            "64 hex digits followed by {} more bytes (a line break?); a node reads exactly 64 hex digits or 32 raw \
             bytes, so it would refuse to start with this file",
            content.len() - 64
        )));
    } else {
        return Err(fail(format!(
            "{} bytes; a node key is 32 raw bytes (or 64 hex digits), so the node would refuse to start with this \
             file",
            content.len()
        )));
    };
    let public_key = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes();
    Ok(NodeKey { file: file_name.to_owned(), public_key, peer_id: peer_id(&public_key), hex_encoded })
}

/// The libp2p peer id of an ed25519 public key, base58btc (`12D3KooW...`).
pub fn peer_id(public_key: &[u8; 32]) -> String {
    let mut id = Vec::with_capacity(38);
    // Multihash header: code 0x00 (identity: the protobuf below is at most
    // 42 bytes, so libp2p inlines it instead of hashing it), length 36.
    id.extend_from_slice(&[0x00, 0x24]);
    // Protobuf `PublicKey`: field 1 `Type` (varint) = 1 (Ed25519); field 2
    // `Data` (length-delimited), 32 bytes.
    id.extend_from_slice(&[0x08, 0x01, 0x12, 0x20]);
    id.extend_from_slice(public_key);
    bs58::encode(id).into_string()
}

/// The file's JSON string, in memory that is wiped when dropped.
fn read_suri(content: &[u8]) -> Result<Zeroizing<String>, KeyFileProblem> {
    serde_json::from_slice::<String>(content).map(Zeroizing::new).map_err(|e| {
        // serde_json's messages may quote the content: describe the error
        // by its class and position only.
        let what = match e.classify() {
            serde_json::error::Category::Data => "JSON, but not a string",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "malformed JSON",
        };
        KeyFileProblem::NotJsonString(format!("{what} at line {}, column {}", e.line(), e.column()))
    })
}

/// A secret URI, split as sp-core's `AddressUri::parse` splits it:
/// `<phrase or 0xseed>` (ASCII letters, digits, spaces; absent means
/// [`DEV_PHRASE`]), then junctions `//hard` and `/soft`, then `///password`
/// (up to a line break). Borrows from the URI; holds no copy of the secret.
struct SecretUri<'a> {
    phrase: Option<&'a str>,
    junctions: Vec<Junction>,
    password: Option<&'a str>,
}

impl<'a> SecretUri<'a> {
    fn parse(uri: &'a str) -> Result<Self, SecretProblem> {
        let phrase_end = uri.find(|c: char| !(c.is_ascii_alphanumeric() || c == ' ')).unwrap_or(uri.len());
        let phrase = (phrase_end > 0).then(|| &uri[..phrase_end]);
        let mut rest = &uri[phrase_end..];
        let mut junctions = Vec::new();
        let mut password = None;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("///") {
                let end = after.find('\n').unwrap_or(after.len());
                password = Some(&after[..end]);
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix("//") {
                let end = after.find('/').unwrap_or(after.len());
                if end == 0 {
                    return Err(SecretProblem::EmptyHardJunction);
                }
                junctions.push(Junction::new(&after[..end], true));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('/') {
                let end = after.find('/').unwrap_or(after.len());
                if end == 0 {
                    return Err(SecretProblem::EmptySoftJunction);
                }
                junctions.push(Junction::new(&after[..end], false));
                rest = &after[end..];
            } else if password.is_some() {
                return Err(SecretProblem::UriPasswordCharacter);
            } else {
                return Err(SecretProblem::UriPhraseCharacter);
            }
        }
        Ok(SecretUri { phrase, junctions, password })
    }
}

/// One derivation step, as sp-core's `DeriveJunction::from(&str)` makes it.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Junction {
    hard: bool,
    /// Text that parses as a u64 (Rust's `str::parse`, so leading zeros and a
    /// `+` are accepted): its 8 little-endian bytes; other text: its SCALE
    /// encoding (compact length, then the bytes). Either zero-padded to 32
    /// bytes, or, when longer than 32 bytes, hashed with BLAKE2b-256.
    chain_code: [u8; CHAIN_CODE_LEN],
}

impl Junction {
    fn new(text: &str, hard: bool) -> Self {
        let mut encoded = Zeroizing::new(Vec::with_capacity(text.len() + 5));
        match text.parse::<u64>() {
            Ok(n) => encoded.extend_from_slice(&n.to_le_bytes()),
            Err(_) => {
                push_compact_len(&mut encoded, text.len());
                encoded.extend_from_slice(text.as_bytes());
            }
        }
        let mut chain_code = [0u8; CHAIN_CODE_LEN];
        if encoded.len() > CHAIN_CODE_LEN {
            chain_code = blake2_256(&encoded);
        } else {
            chain_code[..encoded.len()].copy_from_slice(&encoded);
        }
        Junction { hard, chain_code }
    }
}

/// SCALE's compact encoding of a length: 1, 2 or 4 bytes little-endian with
/// the mode in the low two bits (00, 01, 10), or 0b11 with (byte count - 4)
/// in the upper six bits followed by the value's bytes.
fn push_compact_len(out: &mut Vec<u8>, len: usize) {
    let n = len as u64;
    if n < 1 << 6 {
        out.push((n as u8) << 2);
    } else if n < 1 << 14 {
        out.extend_from_slice(&(((n as u16) << 2) | 0b01).to_le_bytes());
    } else if n < 1 << 30 {
        out.extend_from_slice(&(((n as u32) << 2) | 0b10).to_le_bytes());
    } else {
        let bytes = 8 - (n.leading_zeros() / 8) as usize;
        out.push((((bytes - 4) as u8) << 2) | 0b11);
        out.extend_from_slice(&n.to_le_bytes()[..bytes]);
    }
}

fn blake2_256(data: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(data).into()
}

/// What a URI's phrase or seed stands for, before its junctions.
enum RootSecret {
    /// A `0x` seed, or the first 32 bytes of a phrase's BIP-39 seed (Substrate
    /// uses them as the ed25519 seed, the secp256k1 secret and the sr25519
    /// mini secret key alike).
    Seed(Zeroizing<[u8; 32]>),
    /// `0x` and 128 hex digits: an sr25519 secret key (scalar and nonce),
    /// which sp-core's `Pair::from_string` refuses (it takes only seeds).
    Sr25519SecretKey(Zeroizing<[u8; 64]>),
}

impl RootSecret {
    fn new(phrase: Option<&str>, password: Option<&str>) -> Result<Self, SecretProblem> {
        let phrase = phrase.unwrap_or(DEV_PHRASE);
        if let Some(digits) = phrase.strip_prefix("0x") {
            if !digits.len().is_multiple_of(2) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SecretProblem::SeedNotHex);
            }
            return match digits.len() / 2 {
                32 => {
                    let mut seed = Zeroizing::new([0u8; 32]);
                    hex::decode_to_slice(digits, &mut seed[..]).map_err(|_| SecretProblem::SeedNotHex)?;
                    Ok(RootSecret::Seed(seed))
                }
                64 => {
                    let mut key = Zeroizing::new([0u8; 64]);
                    hex::decode_to_slice(digits, &mut key[..]).map_err(|_| SecretProblem::SeedNotHex)?;
                    Ok(RootSecret::Sr25519SecretKey(key))
                }
                n => Err(SecretProblem::SeedLength(n)),
            };
        }
        // sp-core's `Mnemonic::parse_in(English, ..)`; the phrase is ASCII, so
        // Unicode normalization would change nothing.
        let mnemonic = Mnemonic::parse_in_normalized(Language::English, phrase).map_err(|e| match e {
            bip39::Error::BadWordCount(n) => SecretProblem::PhraseWordCount(n),
            bip39::Error::UnknownWord(i) => SecretProblem::PhraseUnknownWord(i + 1),
            bip39::Error::InvalidChecksum => SecretProblem::PhraseChecksum,
            _ => SecretProblem::PhraseInvalid,
        })?;
        let (entropy, entropy_len) = mnemonic.to_entropy_array();
        let entropy = Zeroizing::new(entropy);
        // PBKDF2-HMAC-SHA512 keyed by the entropy (not by the phrase, as
        // plain BIP-39 is), salt "mnemonic" + password, 2048 rounds.
        let big_seed = Zeroizing::new(
            substrate_bip39::seed_from_entropy(&entropy[..entropy_len], password.unwrap_or(""))
                .map_err(|_| SecretProblem::PhraseInvalid)?,
        );
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&big_seed[..32]);
        Ok(RootSecret::Seed(seed))
    }
}

/// The public key `scheme` derives from `root` along `junctions`.
fn derive_public(scheme: Scheme, root: &RootSecret, junctions: &[Junction]) -> Result<Vec<u8>, SecretProblem> {
    match scheme {
        Scheme::Sr25519 => {
            let mut secret = match root {
                RootSecret::Seed(seed) => MiniSecretKey::from_bytes(&seed[..])
                    .map_err(|_| SecretProblem::SeedLength(seed.len()))?
                    .expand(ExpansionMode::Ed25519),
                RootSecret::Sr25519SecretKey(key) => {
                    SecretKey::from_bytes(&key[..]).map_err(|_| SecretProblem::InvalidSr25519SecretKey)?
                }
            };
            for junction in junctions {
                let code = ChainCode(junction.chain_code);
                secret = if junction.hard {
                    secret.hard_derive_mini_secret_key(Some(code), b"").0.expand(ExpansionMode::Ed25519)
                } else {
                    secret.derived_key_simple_rng(code, b"", NoSigningNonce).0
                };
            }
            Ok(secret.to_public().to_bytes().to_vec())
        }
        Scheme::Ed25519 => {
            let seed = derive_hard_seed(scheme, root, junctions, b"Ed25519HDKD")?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes().to_vec())
        }
        Scheme::Ecdsa => {
            let secret_key = |seed: &[u8; 32]| {
                k256::SecretKey::from_bytes(&(*seed).into()).map_err(|_| SecretProblem::InvalidEcdsaSeed)
            };
            // sp-core makes a key pair of the root seed before deriving.
            if let RootSecret::Seed(seed) = root {
                secret_key(seed)?;
            }
            let seed = derive_hard_seed(scheme, root, junctions, b"Secp256k1HDKD")?;
            Ok(secret_key(&seed)?.public_key().to_encoded_point(true).as_bytes().to_vec())
        }
    }
}

/// ed25519 and ecdsa derivation: hard junctions only, each seed =
/// BLAKE2b-256(SCALE((tag, seed, chain code))), that is compact length of the
/// tag, the tag, the 32-byte seed, the 32-byte chain code.
fn derive_hard_seed(
    scheme: Scheme,
    root: &RootSecret,
    junctions: &[Junction],
    tag: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SecretProblem> {
    let RootSecret::Seed(root) = root else {
        return Err(SecretProblem::SecretKeyForScheme(scheme));
    };
    let mut seed = root.clone();
    for junction in junctions {
        if !junction.hard {
            return Err(SecretProblem::SoftJunction(scheme));
        }
        let mut encoded = Zeroizing::new(Vec::with_capacity(1 + tag.len() + 64));
        push_compact_len(&mut encoded, tag.len());
        encoded.extend_from_slice(tag);
        encoded.extend_from_slice(&seed[..]);
        encoded.extend_from_slice(&junction.chain_code);
        *seed = blake2_256(&encoded);
    }
    Ok(seed)
}

/// The "randomness" schnorrkel's soft derivation mixes into the derived key's
/// signing nonce: all zeros. Sound here because a key derived for checking
/// never signs: the nonce enters neither its public key nor any later
/// derivation (hard derivation hashes the scalar alone, soft derivation
/// starts from the public key), so checking needs no entropy source, and the
/// plugin none at run time.
struct NoSigningNonce;

impl rand_core::RngCore for NoSigningNonce {
    fn next_u32(&mut self) -> u32 {
        0
    }

    fn next_u64(&mut self) -> u64 {
        0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0);
        Ok(())
    }
}

impl rand_core::CryptoRng for NoSigningNonce {}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn public(scheme: Scheme, suri: &str) -> String {
        hex::encode(public_key(scheme, suri, None).unwrap())
    }

    // Published values: sp-core's and subkey's own (`subkey inspect`), the
    // dev accounts in Substrate's chain specs.
    const ALICE_SR: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";
    const BOB_SR: &str = "8eaf04151687736326c9fea17e25fc5287613693c912909cb226aa4794f26a48";
    const ALICE_ED: &str = "88dc3417d5058ec4b4503e0c12ea1a0a89be200fe98922423d4334014fa6b0ee";
    const BOB_ED: &str = "d17c2d7823ebf260fd138f2d7e27d114c0145d968b5ff5006125f2414fadae69";
    const ALICE_ECDSA: &str = "020a1091341fe5664bfa1782d5e04779689068c916b04cb365ec3153755684d9a1";
    const BOB_ECDSA: &str = "0390084fdbf27d2b79d26a4f13f0ccd982cb755a661969143c37cbc49ef5b91f27";
    // `//Alice//stash` (hard): the dev chain's Alice stash account.
    const ALICE_STASH_SR: &str = "be5ddb1579b72e84524fc29e78609e3caf42e85aa118ebfe0b0ad404b5bdd25f";
    // `<DEV_PHRASE>/Alice` (soft): sp-core's `derive_soft_known_pair_should_work`.
    const DEV_SOFT_ALICE_SR: &str = "d6c71059dbbe9ad2b0ed3f289738b800836eb425544ce694825285b958ca755e";
    // Seeds `subkey inspect //Alice` prints.
    const ALICE_SR_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
    const ALICE_ED_SEED: &str = "0xabf8e5bdbe30c65656c0a3cbd181ff8a56294a69dfedd27982aace4a76909115";
    const ALICE_ECDSA_SEED: &str = "0xcb6df9de1efca7a3998a8ead4e02159d5fa99c3e0d4fd6432667390bb4726854";

    const OTHER_PHRASE: &str = "legal winner thank year wave sausage worth useful legal winner thank yellow";

    #[test]
    fn dev_accounts_derive_the_published_keys() {
        for prefix in ["", DEV_PHRASE] {
            assert_eq!(public(Scheme::Sr25519, &format!("{prefix}//Alice")), ALICE_SR);
            assert_eq!(public(Scheme::Sr25519, &format!("{prefix}//Bob")), BOB_SR);
            assert_eq!(public(Scheme::Ed25519, &format!("{prefix}//Alice")), ALICE_ED);
            assert_eq!(public(Scheme::Ed25519, &format!("{prefix}//Bob")), BOB_ED);
            assert_eq!(public(Scheme::Ecdsa, &format!("{prefix}//Alice")), ALICE_ECDSA);
            assert_eq!(public(Scheme::Ecdsa, &format!("{prefix}//Bob")), BOB_ECDSA);
        }
        assert_eq!(public(Scheme::Sr25519, "//Alice//stash"), ALICE_STASH_SR);
        assert_eq!(public(Scheme::Sr25519, &format!("{DEV_PHRASE}/Alice")), DEV_SOFT_ALICE_SR);
        assert_eq!(public(Scheme::Sr25519, "/Alice"), DEV_SOFT_ALICE_SR);
        // The published stash key is the hard `//stash`; the soft one differs.
        assert_ne!(public(Scheme::Sr25519, "//Alice/stash"), ALICE_STASH_SR);
    }

    #[test]
    fn soft_derivation_of_the_secret_matches_that_of_the_public_key() {
        // The fixed signing nonce must not reach the public key: deriving the
        // public key softly (no secret, no nonce) gives the same key.
        let alice = schnorrkel::PublicKey::from_bytes(&hex32(ALICE_SR)).unwrap();
        let mut expected = alice;
        for text in ["stash", "0", "a much longer junction text than thirty-two bytes"] {
            expected = expected.derived_key_simple(ChainCode(Junction::new(text, false).chain_code), b"").0;
        }
        let suri = "//Alice/stash/0/a much longer junction text than thirty-two bytes";
        assert_eq!(public_key(Scheme::Sr25519, suri, None).unwrap(), expected.to_bytes());
    }

    #[test]
    fn seeds_derive_the_published_keys() {
        assert_eq!(public(Scheme::Sr25519, ALICE_SR_SEED), ALICE_SR);
        assert_eq!(public(Scheme::Ed25519, ALICE_ED_SEED), ALICE_ED);
        assert_eq!(public(Scheme::Ecdsa, ALICE_ECDSA_SEED), ALICE_ECDSA);
        // sp-core's `seeded_pair_should_work` tests: the seed is the 32 ASCII
        // bytes "12345678901234567890123456789012".
        let seed = format!("0x{}", hex::encode(b"12345678901234567890123456789012"));
        assert_eq!(public(Scheme::Sr25519, &seed), "741c08a06f41c596608f6774259bd9043304adfa5d3eea62760bd9be97634d63");
        assert_eq!(public(Scheme::Ed25519, &seed), "2f8c6129d816cf51c374bc7f08c3e63ed156cf78aefb4a6550d97b87997977ee");
        assert_eq!(public(Scheme::Ecdsa, &seed), "035676109c54b9a16d271abeb4954316a40a32bcce023ac14c8e26e958aa68fba9");
        assert_eq!(
            public(Scheme::Sr25519, "0x9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
            "44a996beb1eef7bdcab976ab6d2ca26104834164ecf28fb375600576fcc6eb0f"
        );
        // A hex seed with junctions derives from the seed.
        assert_eq!(
            public(Scheme::Sr25519, &format!("{ALICE_SR_SEED}//stash")),
            public(Scheme::Sr25519, "//Alice//stash")
        );
    }

    #[test]
    fn a_phrase_password_salts_the_seed() {
        // substrate-bip39's published vector: this phrase with password
        // "Substrate" gives a seed starting 44e9d125...
        let seed = "0x44e9d125f037ac1d51f0a7d3649689d422c2af8b1ec8e00d71db4d7bf6d127e3";
        let phrase = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
        for scheme in [Scheme::Sr25519, Scheme::Ed25519, Scheme::Ecdsa] {
            assert_eq!(public(scheme, &format!("{phrase}///Substrate")), public(scheme, seed));
            assert_eq!(hex::encode(public_key(scheme, phrase, Some("Substrate")).unwrap()), public(scheme, seed));
            assert_ne!(public(scheme, phrase), public(scheme, seed));
        }
        // The node's password replaces the URI's (sp-core's
        // `password_override_should_work`).
        assert_eq!(
            public_key(Scheme::Sr25519, "//Alice///other", Some("password")),
            public_key(Scheme::Sr25519, "//Alice///password", None)
        );
        // A seed ignores passwords.
        assert_eq!(public_key(Scheme::Ed25519, ALICE_ED_SEED, Some("x")).unwrap(), hex32(ALICE_ED));
    }

    #[test]
    fn node_key_derives_the_published_peer_id() {
        // `--node-key 00..01`: Alice's node in Substrate's and Polkadot's
        // local testnet docs, peer id 12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp.
        let mut raw = [0u8; 32];
        raw[31] = 1;
        let key = check_node_key("secret_ed25519", &raw).unwrap();
        assert_eq!(key.peer_id, "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp");
        assert!(!key.hex_encoded);
        let hexed = check_node_key("secret_ed25519", hex::encode(raw).as_bytes()).unwrap();
        assert_eq!(hexed.peer_id, key.peer_id);
        assert!(hexed.hex_encoded);

        // By hand: identity multihash of the protobuf key, base58btc.
        let public = key.public_key;
        let mut expected = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        expected.extend_from_slice(&public);
        assert_eq!(bs58::decode(&key.peer_id).into_vec().unwrap(), expected);
        assert!(peer_id(&[0xff; 32]).starts_with("12D3KooW"));
        assert!(peer_id(&[0; 32]).starts_with("12D3KooW"));

        let mut with_newline = hex::encode(raw).into_bytes();
        with_newline.push(b'\n');
        let err = check_node_key("secret_ed25519", &with_newline).unwrap_err();
        assert!(err.to_string().starts_with("secret_ed25519: not a node key"), "{err}");
        assert!(err.to_string().contains("line break"), "{err}");
        assert!(check_node_key("secret_ed25519", &[1; 31]).is_err());
    }

    #[test]
    fn files_a_node_writes_check() {
        let cases: [(&[u8; 4], &str, Scheme, &str); 7] = [
            (b"babe", "//Alice", Scheme::Sr25519, ALICE_SR),
            (b"gran", "//Alice", Scheme::Ed25519, ALICE_ED),
            (b"beef", "//Alice", Scheme::Ecdsa, ALICE_ECDSA),
            (b"aura", "//Bob", Scheme::Sr25519, BOB_SR),
            (b"imon", "//Alice//stash", Scheme::Sr25519, ALICE_STASH_SR),
            (b"para", "/Alice", Scheme::Sr25519, DEV_SOFT_ALICE_SR),
            (b"gran", ALICE_ED_SEED, Scheme::Ed25519, ALICE_ED),
        ];
        for (key_type, suri, scheme, expected) in cases {
            let (name, content) = file_for(*key_type, suri, None).unwrap();
            assert_eq!(name, format!("{}{expected}", hex::encode(key_type)));
            assert_eq!(content, format!("\"{suri}\"").into_bytes());
            let key = check_key_file(&name, &content, None).unwrap();
            assert_eq!(
                (key.key_type, key.scheme, key.public_key_hex()),
                (KeyType(*key_type), scheme, format!("0x{expected}"))
            );
        }
        // `babe` is 62616265.
        assert!(file_for(*b"babe", "//Alice", None).unwrap().0.starts_with("62616265"));
    }

    #[test]
    fn a_phrase_with_a_password_checks() {
        let suri = format!("{OTHER_PHRASE}//validator///secret words");
        let (name, content) = file_for(*b"babe", &suri, None).unwrap();
        check_key_file(&name, &content, None).unwrap();

        // Generated under `--password`: the file holds the bare phrase.
        let (name, content) = file_for(*b"gran", OTHER_PHRASE, Some("node pw")).unwrap();
        check_key_file(&name, &content, Some("node pw")).unwrap();
        let err = check_key_file(&name, &content, None).unwrap_err();
        assert!(matches!(err.problem, KeyFileProblem::Mismatch(_)), "{err}");

        // The node's password replaces the URI's: the file derives the name's
        // key only without it, and the report says so.
        let (name, content) = file_for(*b"babe", &suri, None).unwrap();
        let err = check_key_file(&name, &content, Some("node pw")).unwrap_err();
        assert_eq!(err.problem, KeyFileProblem::PasswordOverridden(Scheme::Sr25519));
    }

    #[test]
    fn unknown_key_types_try_the_schemes_that_fit() {
        let (name, content) = file_for_scheme(*b"abcd", Scheme::Ed25519, "//Alice", None).unwrap();
        assert_eq!(check_key_file(&name, &content, None).unwrap().scheme, Scheme::Ed25519);
        let (name, content) = file_for(*b"abcd", "//Alice", None).unwrap();
        assert_eq!(check_key_file(&name, &content, None).unwrap().scheme, Scheme::Sr25519);
        let (name, content) = file_for_scheme(*b"abcd", Scheme::Ecdsa, "//Alice", None).unwrap();
        assert_eq!(check_key_file(&name, &content, None).unwrap().scheme, Scheme::Ecdsa);
        // An ed25519 Aura key.
        let (name, content) = file_for_scheme(*b"aura", Scheme::Ed25519, "//Alice", None).unwrap();
        assert_eq!(check_key_file(&name, &content, None).unwrap().scheme, Scheme::Ed25519);
    }

    #[test]
    fn a_renamed_file_is_reported_by_name() {
        let (_, content) = file_for(*b"babe", "//Alice", None).unwrap();
        let bob_name = format!("62616265{BOB_SR}");
        let err = check_key_file(&bob_name, &content, None).unwrap_err();
        assert_eq!(err.file, bob_name);
        assert_eq!(
            err.problem,
            KeyFileProblem::Mismatch(vec![SchemeAttempt { scheme: Scheme::Sr25519, result: Ok(hex32(ALICE_SR)) }])
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{bob_name}: the secret derives public key 0x{ALICE_SR} as sr25519, not the public key in the file name"
            )
        );

        // An unknown type lists every scheme it tried.
        let err = check_key_file(&format!("61626364{BOB_SR}"), &content, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("0x{ALICE_SR} as sr25519, and public key 0x{ALICE_ED} as ed25519")), "{text}");
    }

    #[test]
    fn bad_files_are_reported_not_panicked_on() {
        let alice = format!("62616265{ALICE_SR}");
        let problem = |name: &str, content: &[u8]| check_key_file(name, content, None).unwrap_err().problem;

        for content in
            [&b"//Alice"[..], b"\"//Alice", b"{\"suri\": \"//Alice\"}", b"42", b"", b"\"//Alice\" x", b"\xff\xfe"]
        {
            assert!(matches!(problem(&alice, content), KeyFileProblem::NotJsonString(_)), "{content:?}");
        }
        assert!(problem(&alice, b"\"//Alice").to_string().contains("truncated JSON at line 1"));

        // A swapped last word breaks the checksum.
        let bad_checksum = DEV_PHRASE.replace("walk", "wall");
        assert_eq!(
            problem(&alice, format!("\"{bad_checksum}//Alice\"").as_bytes()),
            KeyFileProblem::Secret(SecretProblem::PhraseChecksum)
        );
        assert_eq!(
            problem(&alice, b"\"bottom drive obey lake curtain smoke basket hold race lonely fit walkk//Alice\""),
            KeyFileProblem::Secret(SecretProblem::PhraseUnknownWord(12))
        );
        assert_eq!(
            problem(&alice, b"\"bottom drive//Alice\""),
            KeyFileProblem::Secret(SecretProblem::PhraseWordCount(2))
        );
        assert_eq!(problem(&alice, b"\"0x1234\""), KeyFileProblem::Secret(SecretProblem::SeedLength(2)));
        assert_eq!(problem(&alice, b"\"0x123\""), KeyFileProblem::Secret(SecretProblem::SeedNotHex));
        assert_eq!(problem(&alice, b"\"//Alice//\""), KeyFileProblem::Secret(SecretProblem::EmptyHardJunction));
        assert_eq!(problem(&alice, b"\"//Alice/\""), KeyFileProblem::Secret(SecretProblem::EmptySoftJunction));
        assert_eq!(problem(&alice, b"\"bottom.drive\""), KeyFileProblem::Secret(SecretProblem::UriPhraseCharacter));
        assert_eq!(
            problem(&alice, b"\"//Alice///pw\\nx\""),
            KeyFileProblem::Secret(SecretProblem::UriPasswordCharacter)
        );

        // A soft junction is an error for ed25519 and ecdsa.
        let gran = format!("6772616e{ALICE_ED}");
        assert_eq!(
            problem(&gran, b"\"//Alice/stash\""),
            KeyFileProblem::Secret(SecretProblem::SoftJunction(Scheme::Ed25519))
        );
        assert_eq!(public_key(Scheme::Ecdsa, "//Alice/0", None), Err(SecretProblem::SoftJunction(Scheme::Ecdsa)));
        assert!(file_for(*b"gran", "//Alice/stash", None).is_err());

        // A zero seed is no secp256k1 key.
        let beef = format!("62656566{ALICE_ECDSA}");
        let zero = format!("\"0x{}\"", "00".repeat(32));
        assert_eq!(problem(&beef, zero.as_bytes()), KeyFileProblem::Secret(SecretProblem::InvalidEcdsaSeed));

        // Names.
        for name in ["", "6261626", "62616265", "6261626g", "62616265.tmp", &alice.to_uppercase(), "README"] {
            assert!(matches!(problem(name, b"\"//Alice\""), KeyFileProblem::BadName(_)), "{name:?}");
        }
        assert_eq!(
            problem(&format!("6772616e{ALICE_ECDSA}"), b"\"//Alice\""),
            KeyFileProblem::WrongKeyLength { key_type: KeyType::GRANDPA, expected: "ed25519".into(), len: 33 }
        );
        assert!(matches!(
            problem(&format!("62656566{}", "11".repeat(177)), b"\"//Alice\""),
            KeyFileProblem::Unsupported { len: 177, .. }
        ));
        assert!(matches!(
            problem(&format!("73617373{ALICE_SR}"), b"\"//Alice\""),
            KeyFileProblem::Unsupported { len: 32, .. }
        ));
    }

    #[test]
    fn a_64_byte_sr25519_secret_key_is_derived_and_flagged() {
        let seed: [u8; 32] = hex32(&ALICE_SR_SEED[2..]).try_into().unwrap();
        let expanded = MiniSecretKey::from_bytes(&seed).unwrap().expand(ExpansionMode::Ed25519).to_bytes();
        let content = format!("\"0x{}\"", hex::encode(expanded));
        let err = check_key_file(&format!("62616265{ALICE_SR}"), content.as_bytes(), None).unwrap_err();
        assert_eq!(err.problem, KeyFileProblem::SecretKeyNotSeed { derived: hex32(ALICE_SR), matches: true });
        let err = check_key_file(&format!("62616265{BOB_SR}"), content.as_bytes(), None).unwrap_err();
        assert_eq!(err.problem, KeyFileProblem::SecretKeyNotSeed { derived: hex32(ALICE_SR), matches: false });
        let err = check_key_file(&format!("6772616e{ALICE_ED}"), content.as_bytes(), None).unwrap_err();
        assert_eq!(err.problem, KeyFileProblem::Secret(SecretProblem::SeedLength(64)));
        assert_eq!(
            public_key(Scheme::Sr25519, &content[1..content.len() - 1], None),
            Err(SecretProblem::SeedLength(64))
        );
    }

    #[test]
    fn no_report_quotes_a_secret() {
        let seed = "0x3d97c819d68f9bafa7d6e79cb991eebcd77d966c5334c0b94d9e1fa7ad0869dc";
        let password = "correct horse battery staple";
        let bad_phrase = OTHER_PHRASE.replace("yellow", "year");
        let secrets = [OTHER_PHRASE, &seed[2..], password, &bad_phrase, "validator", "Charlie"];
        let name = format!("62616265{BOB_SR}");
        let contents = [
            format!("\"{OTHER_PHRASE}//validator///{password}\""),
            format!("\"{seed}//Charlie\""),
            format!("\"{bad_phrase}//validator\""),
            format!("\"{OTHER_PHRASE}//Charlie///{password}\\n\""),
            format!("\"{OTHER_PHRASE}.//Charlie\""),
            format!("{{\"phrase\": \"{OTHER_PHRASE}\"}}"),
            format!("[\"{OTHER_PHRASE}\"]"),
            format!("\"{OTHER_PHRASE}\" \"{seed}\""),
            format!("\"0x{}\"", &seed[2..60]),
        ];
        let mut reports = Vec::new();
        for content in &contents {
            for node_password in [None, Some(password)] {
                for file in [name.clone(), format!("6772616e{BOB_ED}"), format!("61626364{BOB_SR}")] {
                    let err = check_key_file(&file, content.as_bytes(), node_password).unwrap_err();
                    reports.push(err.to_string());
                    reports.push(format!("{err:?}"));
                }
            }
        }
        let (_, content) = file_for(*b"babe", &format!("{OTHER_PHRASE}//validator"), None).unwrap();
        let ok = check_key_file(
            &format!(
                "62616265{}",
                hex::encode(public_key(Scheme::Sr25519, &format!("{OTHER_PHRASE}//validator"), None).unwrap())
            ),
            &content,
            None,
        )
        .unwrap();
        reports.push(ok.to_string());
        reports.push(format!("{ok:?}"));
        for report in &reports {
            for secret in secrets {
                assert!(!report.contains(secret), "{report:?} quotes {secret:?}");
            }
        }
    }

    #[test]
    fn junction_chain_codes_are_sp_cores() {
        let code = |text: &str| Junction::new(text, false).chain_code;
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(code("1"), one);
        assert_eq!(code("01"), one);
        assert_eq!(code("+1"), one);
        let mut dot = [0u8; 32];
        dot[..4].copy_from_slice(b"\x0cDOT");
        assert_eq!(code("DOT"), dot);
        // 31 bytes of text encode to 32: padded, not hashed; 32 bytes hash.
        let text31 = "a".repeat(31);
        let mut padded = [0u8; 32];
        padded[0] = 31 << 2;
        padded[1..].copy_from_slice(text31.as_bytes());
        assert_eq!(code(&text31), padded);
        let text32 = "a".repeat(32);
        let mut encoded = vec![32 << 2];
        encoded.extend_from_slice(text32.as_bytes());
        assert_eq!(code(&text32), blake2_256(&encoded));
        // u64::MAX + 1 is text, not a number.
        assert_ne!(code("18446744073709551616")[..8], [0u8; 8]);
        assert_eq!(code("18446744073709551615")[..8], [0xff; 8]);
    }

    #[test]
    fn compact_lengths_are_scale() {
        let compact = |n: usize| {
            let mut out = Vec::new();
            push_compact_len(&mut out, n);
            out
        };
        assert_eq!(compact(0), [0x00]);
        assert_eq!(compact(1), [0x04]);
        assert_eq!(compact(63), [0xfc]);
        assert_eq!(compact(64), [0x01, 0x01]);
        assert_eq!(compact(16383), [0xfd, 0xff]);
        assert_eq!(compact(16384), [0x02, 0x00, 0x01, 0x00]);
        assert_eq!(compact((1 << 30) - 1), [0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(compact(1 << 30), [0x03, 0x00, 0x00, 0x00, 0x40]);
    }

    #[test]
    fn secret_uris_split_as_sp_core_splits_them() {
        let uri = SecretUri::parse("hello world/s//h///pass").unwrap();
        assert_eq!(uri.phrase, Some("hello world"));
        assert_eq!(uri.password, Some("pass"));
        assert_eq!(uri.junctions.iter().map(|j| j.hard).collect::<Vec<_>>(), [false, true]);
        let uri = SecretUri::parse("////////").unwrap();
        assert_eq!((uri.phrase, uri.password, uri.junctions.len()), (None, Some("/////"), 0));
        let uri = SecretUri::parse("sdasd/asd.a").unwrap();
        assert_eq!(uri.junctions.len(), 1);
        assert!(matches!(SecretUri::parse("sd.asd/asd.a"), Err(SecretProblem::UriPhraseCharacter)));
        assert!(matches!(SecretUri::parse("///a\n"), Err(SecretProblem::UriPasswordCharacter)));
        let uri = SecretUri::parse("///").unwrap();
        assert_eq!((uri.phrase, uri.password), (None, Some("")));
    }

    #[test]
    fn key_types_print_as_text() {
        assert_eq!(KeyType::BABE.to_string(), "babe");
        assert_eq!(KeyType([0, 1, 2, 3]).to_string(), "0x00010203");
        assert_eq!(KeyType::BEEFY.default_scheme(), Scheme::Ecdsa);
        assert_eq!(KeyType(*b"zzzz").default_scheme(), Scheme::Sr25519);
    }
}
