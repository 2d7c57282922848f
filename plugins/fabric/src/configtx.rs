//! Channel config export: a channel's newest config block as the
//! `common.Block` protobuf that `peer channel fetch config` writes, and that
//! block's config as the JSON `configtxlator proto_decode --type
//! common.Config` prints, so that an operator can inspect or edit a
//! restored channel's config with Fabric's usual tools and `jq`.
//!
//! The JSON follows configtxlator's rules (its `protolator` package, in
//! `hyperledger/fabric-config`, formerly `common/tools/protolator`):
//!
//! - every message is marshalled by protobuf's JSON mapping with the
//!   original (snake_case) field names and every field emitted: unset
//!   messages as `null`, empty lists as `[]`, empty maps as `{}`, empty
//!   strings as `""`; 64-bit integers as strings, 32-bit ones as numbers,
//!   bytes as padded standard base64, enums by name (by number when the
//!   number has no name), a oneof only by the member that is set;
//! - bytes fields that hold a marshalled message are replaced by that
//!   message's JSON, chosen by context: a `ConfigValue.value` by its key and
//!   the group it sits in (`/Channel`, `/Channel/Orderer`, an orderer or
//!   application organisation, ...), a `Policy.value` by the policy type,
//!   an `MSPPrincipal.principal` by its classification, an
//!   `MSPConfig.config` by the MSP type, a `ConsensusType.metadata` by the
//!   consensus type. Such a field that is empty is `null`;
//! - Go's `encoding/json` writes the result: keys sorted, a tab per level,
//!   `<`, `>` and `&` escaped ([`configtxlator_text`]).
//!
//! That is configtxlator on Go's current protobuf library (`protojson`,
//! Fabric 3's). Builds on the old `golang/protobuf` 1.3 `jsonpb` (Fabric
//! 2.2 and before) printed an empty plain bytes field as `null` where this
//! prints `""`; everything else reads the same.
//!
//! Where configtxlator refuses to decode (a value key or policy type it
//! does not know), coffer keeps the bytes as base64 instead, so that an
//! export never fails on a newer Fabric's config.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use serde_json::{Map, Value};

use crate::blockfile::{self, StoredBlock};
use crate::policy::{
    ConfigPolicy, FabricCryptoConfig, FabricNodeOus, FabricOuIdentifier, ImplicitMetaPolicy, MspPrincipal, MspRole,
    OrganizationUnit, POLICY_IMPLICIT_META, POLICY_SIGNATURE, PolicyProto as Policy, SignaturePolicy,
    SignaturePolicyEnvelope, SignaturePolicyType,
};
use crate::proto;

// ---------------------------------------------------------------------------
// common.Block, as `peer channel fetch` writes it.

/// `common.Block`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    /// Number and hashes.
    #[prost(message, optional, tag = "1")]
    pub header: Option<BlockHeader>,
    /// The transactions.
    #[prost(message, optional, tag = "2")]
    pub data: Option<BlockData>,
    /// Metadata entries, by `BlockMetadataIndex`.
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<BlockMetadata>,
}

/// `common.BlockHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockHeader {
    /// Block number (0 for the genesis block, then omitted on the wire).
    #[prost(uint64, tag = "1")]
    pub number: u64,
    /// Hash of the previous block's header (empty for the genesis block).
    #[prost(bytes = "vec", tag = "2")]
    pub previous_hash: Vec<u8>,
    /// SHA-256 of the concatenated envelopes.
    #[prost(bytes = "vec", tag = "3")]
    pub data_hash: Vec<u8>,
}

/// `common.BlockData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockData {
    /// Marshalled `common.Envelope`s.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub data: Vec<Vec<u8>>,
}

/// `common.BlockMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockMetadata {
    /// Marshalled `common.Metadata`s (an entry may be empty).
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub metadata: Vec<Vec<u8>>,
}

/// The `common.Block` protobuf of a stored block: what `peer channel fetch`
/// writes (Go's `proto.Marshal`: fields in tag order, zero scalars left
/// out, header, data and metadata always present, every envelope and
/// metadata entry kept, empty ones included).
pub fn block_protobuf(block: &StoredBlock) -> Vec<u8> {
    Block {
        header: Some(BlockHeader {
            number: block.number,
            previous_hash: block.previous_hash.to_vec(),
            data_hash: block.data_hash.to_vec(),
        }),
        data: Some(BlockData { data: block.envelopes.iter().map(|e| e.to_vec()).collect() }),
        metadata: Some(BlockMetadata { metadata: block.metadata.iter().map(|m| m.to_vec()).collect() }),
    }
    .encode_to_vec()
}

// ---------------------------------------------------------------------------
// The newest config block of a channel.

/// A channel's newest config block, as its block-file record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRecord {
    /// The block number.
    pub number: u64,
    /// The record's bytes (Fabric's block serialization, see [`blockfile`]).
    pub record: Vec<u8>,
}

impl ConfigRecord {
    /// The block.
    pub fn block(&self) -> Result<StoredBlock<'_>, String> {
        blockfile::decode_block(&self.record).map_err(|e| format!("config block {}: {e}", self.number))
    }
}

/// True when `block` is a config block: a single transaction whose
/// channel header has type `CONFIG`.
pub fn is_config_block(block: &StoredBlock) -> bool {
    if block.envelopes.len() != 1 {
        return false;
    }
    let Ok(env) = proto::Envelope::decode(block.envelopes[0]) else { return false };
    let Ok(payload) = proto::Payload::decode(env.payload.as_slice()) else { return false };
    let Some(header) = payload.header else { return false };
    proto::ChannelHeader::decode(header.channel_header.as_slice())
        .is_ok_and(|ch| ch.r#type == proto::HEADER_TYPE_CONFIG)
}

/// Finds a channel's newest config block, fed its block files in order one
/// at a time; only the newest config block found so far is kept. Records
/// that do not decode and a partly written last record are skipped (the
/// ledger check reports them).
#[derive(Debug, Default)]
pub struct LatestConfig {
    found: Option<ConfigRecord>,
}

impl LatestConfig {
    /// Nothing found yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks through the next block file.
    pub fn add_file(&mut self, file: &[u8]) {
        for rec in blockfile::scan(file).records {
            if let Ok(block) = blockfile::decode_block(rec.bytes)
                && is_config_block(&block)
                && self.found.as_ref().is_none_or(|f| block.number >= f.number)
            {
                self.found = Some(ConfigRecord { number: block.number, record: rec.bytes.to_vec() });
            }
        }
    }

    /// The newest config block, if any.
    pub fn finish(self) -> Option<ConfigRecord> {
        self.found
    }
}

/// The newest config block among a channel's block files, in order. Pass
/// an iterator that reads each file when asked for it: one file is held at
/// a time.
pub fn latest_config<F: AsRef<[u8]>>(files: impl IntoIterator<Item = F>) -> Option<ConfigRecord> {
    let mut latest = LatestConfig::new();
    for file in files {
        latest.add_file(file.as_ref());
    }
    latest.finish()
}

// ---------------------------------------------------------------------------
// Messages of a channel config (from fabric-protos' common/configtx.proto,
// common/configuration.proto, common/policies.proto, msp/*.proto,
// orderer/*.proto, peer/configuration.proto), complete: configtxlator
// prints every field.

/// `common.ConfigEnvelope` with a complete config.
#[derive(Clone, PartialEq, prost::Message)]
struct ConfigEnvelope {
    #[prost(message, optional, tag = "1")]
    config: Option<Config>,
}

/// `common.Config`.
#[derive(Clone, PartialEq, prost::Message)]
struct Config {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(message, optional, tag = "2")]
    channel_group: Option<ConfigGroup>,
}

/// `common.ConfigGroup`, policies included.
#[derive(Clone, PartialEq, prost::Message)]
struct ConfigGroup {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(map = "string, message", tag = "2")]
    groups: HashMap<String, ConfigGroup>,
    #[prost(map = "string, message", tag = "3")]
    values: HashMap<String, proto::ConfigValue>,
    #[prost(map = "string, message", tag = "4")]
    policies: HashMap<String, ConfigPolicy>,
    #[prost(string, tag = "5")]
    mod_policy: String,
}

/// `common.HashingAlgorithm`.
#[derive(Clone, PartialEq, prost::Message)]
struct HashingAlgorithm {
    #[prost(string, tag = "1")]
    name: String,
}

/// `common.BlockDataHashingStructure`.
#[derive(Clone, PartialEq, prost::Message)]
struct BlockDataHashingStructure {
    #[prost(uint32, tag = "1")]
    width: u32,
}

/// `common.OrdererAddresses` (also an orderer organisation's `Endpoints`).
#[derive(Clone, PartialEq, prost::Message)]
struct OrdererAddresses {
    #[prost(string, repeated, tag = "1")]
    addresses: Vec<String>,
}

/// `common.Consortium`.
#[derive(Clone, PartialEq, prost::Message)]
struct ConsortiumValue {
    #[prost(string, tag = "1")]
    name: String,
}

/// `common.Capabilities`.
#[derive(Clone, PartialEq, prost::Message)]
struct Capabilities {
    #[prost(map = "string, message", tag = "1")]
    capabilities: HashMap<String, Empty>,
}

/// `common.Capability` and `google.protobuf.Empty`: no fields.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// `common.Orderers` (Fabric 3 BFT: the consenters and their identities).
#[derive(Clone, PartialEq, prost::Message)]
struct Orderers {
    #[prost(message, repeated, tag = "1")]
    consenter_mapping: Vec<BftConsenter>,
}

/// `common.Consenter`.
#[derive(Clone, PartialEq, prost::Message)]
struct BftConsenter {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(string, tag = "2")]
    host: String,
    #[prost(uint32, tag = "3")]
    port: u32,
    #[prost(string, tag = "4")]
    msp_id: String,
    #[prost(bytes = "vec", tag = "5")]
    identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    client_tls_cert: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    server_tls_cert: Vec<u8>,
}

/// `msp.FabricMSPConfig`, complete.
#[derive(Clone, PartialEq, prost::Message)]
struct FabricMspConfig {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", repeated, tag = "2")]
    root_certs: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    intermediate_certs: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    admins: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "5")]
    revocation_list: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "6")]
    signing_identity: Option<SigningIdentityInfo>,
    #[prost(message, repeated, tag = "7")]
    organizational_unit_identifiers: Vec<FabricOuIdentifier>,
    #[prost(message, optional, tag = "8")]
    crypto_config: Option<FabricCryptoConfig>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    tls_root_certs: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "10")]
    tls_intermediate_certs: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "11")]
    fabric_node_ous: Option<FabricNodeOus>,
}

/// `msp.SigningIdentityInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct SigningIdentityInfo {
    #[prost(bytes = "vec", tag = "1")]
    public_signer: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    private_signer: Option<KeyInfo>,
}

/// `msp.KeyInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyInfo {
    #[prost(string, tag = "1")]
    key_identifier: String,
    #[prost(bytes = "vec", tag = "2")]
    key_material: Vec<u8>,
}

/// `msp.IdemixMSPConfig`.
#[derive(Clone, PartialEq, prost::Message)]
struct IdemixMspConfig {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    ipk: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    signer: Option<IdemixMspSignerConfig>,
    #[prost(bytes = "vec", tag = "4")]
    revocation_pk: Vec<u8>,
    #[prost(int64, tag = "5")]
    epoch: i64,
}

/// `msp.IdemixMSPSignerConfig`.
#[derive(Clone, PartialEq, prost::Message)]
struct IdemixMspSignerConfig {
    #[prost(bytes = "vec", tag = "1")]
    cred: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    sk: Vec<u8>,
    #[prost(string, tag = "3")]
    organizational_unit_identifier: String,
    #[prost(int32, tag = "4")]
    role: i32,
    #[prost(string, tag = "5")]
    enrollment_id: String,
    #[prost(bytes = "vec", tag = "6")]
    credential_revocation_information: Vec<u8>,
}

/// `orderer.ConsensusType`.
#[derive(Clone, PartialEq, prost::Message)]
struct ConsensusType {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(bytes = "vec", tag = "2")]
    metadata: Vec<u8>,
    #[prost(int32, tag = "3")]
    state: i32,
}

/// `orderer.BatchSize`.
#[derive(Clone, PartialEq, prost::Message)]
struct BatchSize {
    #[prost(uint32, tag = "1")]
    max_message_count: u32,
    #[prost(uint32, tag = "2")]
    absolute_max_bytes: u32,
    #[prost(uint32, tag = "3")]
    preferred_max_bytes: u32,
}

/// `orderer.BatchTimeout`.
#[derive(Clone, PartialEq, prost::Message)]
struct BatchTimeout {
    #[prost(string, tag = "1")]
    timeout: String,
}

/// `orderer.KafkaBrokers`.
#[derive(Clone, PartialEq, prost::Message)]
struct KafkaBrokers {
    #[prost(string, repeated, tag = "1")]
    brokers: Vec<String>,
}

/// `orderer.ChannelRestrictions`.
#[derive(Clone, PartialEq, prost::Message)]
struct ChannelRestrictions {
    #[prost(uint64, tag = "1")]
    max_count: u64,
}

/// `etcdraft.ConfigMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftConfigMetadata {
    #[prost(message, repeated, tag = "1")]
    consenters: Vec<RaftConsenter>,
    #[prost(message, optional, tag = "2")]
    options: Option<RaftOptions>,
}

/// `etcdraft.Consenter`.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftConsenter {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(uint32, tag = "2")]
    port: u32,
    #[prost(bytes = "vec", tag = "3")]
    client_tls_cert: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    server_tls_cert: Vec<u8>,
}

/// `etcdraft.Options`.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftOptions {
    #[prost(string, tag = "1")]
    tick_interval: String,
    #[prost(uint32, tag = "2")]
    election_tick: u32,
    #[prost(uint32, tag = "3")]
    heartbeat_tick: u32,
    #[prost(uint32, tag = "4")]
    max_inflight_blocks: u32,
    #[prost(uint32, tag = "5")]
    snapshot_interval_size: u32,
}

/// `orderer.smartbft.Options` (the `BFT` consensus type's metadata).
#[derive(Clone, PartialEq, prost::Message)]
struct BftOptions {
    #[prost(uint64, tag = "1")]
    request_batch_max_count: u64,
    #[prost(uint64, tag = "2")]
    request_batch_max_bytes: u64,
    #[prost(string, tag = "3")]
    request_batch_max_interval: String,
    #[prost(uint64, tag = "4")]
    incoming_message_buffer_size: u64,
    #[prost(uint64, tag = "5")]
    request_pool_size: u64,
    #[prost(string, tag = "6")]
    request_forward_timeout: String,
    #[prost(string, tag = "7")]
    request_complain_timeout: String,
    #[prost(string, tag = "8")]
    request_auto_remove_timeout: String,
    #[prost(uint64, tag = "9")]
    request_max_bytes: u64,
    #[prost(string, tag = "10")]
    view_change_resend_interval: String,
    #[prost(string, tag = "11")]
    view_change_timeout: String,
    #[prost(string, tag = "12")]
    leader_heartbeat_timeout: String,
    #[prost(uint64, tag = "13")]
    leader_heartbeat_count: u64,
    #[prost(string, tag = "14")]
    collect_timeout: String,
    #[prost(bool, tag = "15")]
    sync_on_start: bool,
    #[prost(bool, tag = "16")]
    speed_up_view_change: bool,
    #[prost(int32, tag = "17")]
    leader_rotation: i32,
    #[prost(uint64, tag = "18")]
    decisions_per_leader: u64,
}

/// `protos.AnchorPeers`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnchorPeers {
    #[prost(message, repeated, tag = "1")]
    anchor_peers: Vec<AnchorPeer>,
}

/// `protos.AnchorPeer`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnchorPeer {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(int32, tag = "2")]
    port: i32,
}

/// `protos.ACLs`.
#[derive(Clone, PartialEq, prost::Message)]
struct Acls {
    #[prost(map = "string, message", tag = "1")]
    acls: HashMap<String, ApiResource>,
}

/// `protos.APIResource`.
#[derive(Clone, PartialEq, prost::Message)]
struct ApiResource {
    #[prost(string, tag = "1")]
    policy_ref: String,
}

// Enum value names, indexed by value.
const IMPLICIT_META_RULES: &[&str] = &["ANY", "ALL", "MAJORITY"];
const PRINCIPAL_CLASSIFICATIONS: &[&str] = &["ROLE", "ORGANIZATION_UNIT", "IDENTITY", "ANONYMITY", "COMBINED"];
const MSP_ROLES: &[&str] = &["MEMBER", "ADMIN", "CLIENT", "PEER", "ORDERER"];
const CONSENSUS_STATES: &[&str] = &["STATE_NORMAL", "STATE_MAINTENANCE"];
const BFT_ROTATIONS: &[&str] = &["ROTATION_UNSPECIFIED", "ROTATION_OFF", "ROTATION_ON"];

// ---------------------------------------------------------------------------
// Protobuf's JSON mapping, as configtxlator configures it.

/// A JSON object from (field name, value) pairs.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `bytes`: padded standard base64.
fn b64(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

/// `repeated bytes`.
fn b64_list(list: &[Vec<u8>]) -> Value {
    Value::Array(list.iter().map(|b| b64(b)).collect())
}

/// `string`.
fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// `repeated string`.
fn strings(list: &[String]) -> Value {
    Value::Array(list.iter().map(|s| string(s)).collect())
}

/// 64-bit integers are JSON strings.
fn int64(n: impl ToString) -> Value {
    Value::String(n.to_string())
}

/// 32-bit integers are JSON numbers.
fn int32(n: impl Into<serde_json::Number>) -> Value {
    Value::Number(n.into())
}

/// An enum by name, by number when the number has none.
fn enumeration(n: i32, names: &[&str]) -> Value {
    match usize::try_from(n).ok().and_then(|i| names.get(i)) {
        Some(name) => string(name),
        None => int32(n),
    }
}

/// A message field: `null` when unset.
fn optional<T>(m: &Option<T>, json: impl FnOnce(&T) -> Value) -> Value {
    m.as_ref().map_or(Value::Null, json)
}

/// A map of messages.
fn map_of<T>(m: &HashMap<String, T>, mut json: impl FnMut(&str, &T) -> Result<Value, String>) -> Result<Value, String> {
    let mut out = Map::new();
    for (k, v) in m {
        out.insert(k.clone(), json(k, v)?);
    }
    Ok(Value::Object(out))
}

/// Decodes a bytes field that holds a marshalled `T`: `null` when empty
/// (protolator writes an unset opaque field so), an error naming `what`
/// when it does not decode.
fn opaque<T: Message + Default>(
    bytes: &[u8],
    what: &str,
    json: impl FnOnce(&T) -> Result<Value, String>,
) -> Result<Value, String> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let m = T::decode(bytes).map_err(|e| format!("{what} does not decode: {e}"))?;
    json(&m)
}

/// [`opaque`] for a message whose JSON cannot fail.
fn opaque_plain<T: Message + Default>(
    bytes: &[u8],
    what: &str,
    json: impl FnOnce(&T) -> Value,
) -> Result<Value, String> {
    opaque(bytes, what, |m: &T| Ok(json(m)))
}

fn fabric_ou_json(o: &FabricOuIdentifier) -> Value {
    object([
        ("certificate", b64(&o.certificate)),
        ("organizational_unit_identifier", string(&o.organizational_unit_identifier)),
    ])
}

fn fabric_msp_json(c: &FabricMspConfig) -> Value {
    object([
        ("admins", b64_list(&c.admins)),
        (
            "crypto_config",
            optional(&c.crypto_config, |cc| {
                object([
                    ("identity_identifier_hash_function", string(&cc.identity_identifier_hash_function)),
                    ("signature_hash_family", string(&cc.signature_hash_family)),
                ])
            }),
        ),
        (
            "fabric_node_ous",
            optional(&c.fabric_node_ous, |n| {
                object([
                    ("admin_ou_identifier", optional(&n.admin_ou_identifier, fabric_ou_json)),
                    ("client_ou_identifier", optional(&n.client_ou_identifier, fabric_ou_json)),
                    ("enable", Value::Bool(n.enable)),
                    ("orderer_ou_identifier", optional(&n.orderer_ou_identifier, fabric_ou_json)),
                    ("peer_ou_identifier", optional(&n.peer_ou_identifier, fabric_ou_json)),
                ])
            }),
        ),
        ("intermediate_certs", b64_list(&c.intermediate_certs)),
        ("name", string(&c.name)),
        (
            "organizational_unit_identifiers",
            Value::Array(c.organizational_unit_identifiers.iter().map(fabric_ou_json).collect()),
        ),
        ("revocation_list", b64_list(&c.revocation_list)),
        ("root_certs", b64_list(&c.root_certs)),
        (
            "signing_identity",
            optional(&c.signing_identity, |s| {
                object([
                    (
                        "private_signer",
                        optional(&s.private_signer, |k| {
                            object([
                                ("key_identifier", string(&k.key_identifier)),
                                ("key_material", b64(&k.key_material)),
                            ])
                        }),
                    ),
                    ("public_signer", b64(&s.public_signer)),
                ])
            }),
        ),
        ("tls_intermediate_certs", b64_list(&c.tls_intermediate_certs)),
        ("tls_root_certs", b64_list(&c.tls_root_certs)),
    ])
}

fn idemix_msp_json(c: &IdemixMspConfig) -> Value {
    object([
        ("epoch", int64(c.epoch)),
        ("ipk", b64(&c.ipk)),
        ("name", string(&c.name)),
        ("revocation_pk", b64(&c.revocation_pk)),
        (
            "signer",
            optional(&c.signer, |s| {
                object([
                    ("cred", b64(&s.cred)),
                    ("credential_revocation_information", b64(&s.credential_revocation_information)),
                    ("enrollment_id", string(&s.enrollment_id)),
                    ("organizational_unit_identifier", string(&s.organizational_unit_identifier)),
                    ("role", int32(s.role)),
                    ("sk", b64(&s.sk)),
                ])
            }),
        ),
    ])
}

/// `msp.MSPConfig`: `config` by MSP type (0 X.509, 1 Idemix).
fn msp_json(m: &proto::MspConfig, what: &str) -> Result<Value, String> {
    let what = format!("{what} (MSP type {})", m.r#type);
    let config = match m.r#type {
        0 => opaque_plain(&m.config, &what, fabric_msp_json)?,
        1 => opaque_plain(&m.config, &what, idemix_msp_json)?,
        _ if m.config.is_empty() => Value::Null,
        _ => b64(&m.config),
    };
    Ok(object([("config", config), ("type", int32(m.r#type))]))
}

/// `common.MSPPrincipal`: `principal` by classification.
fn principal_json(p: &MspPrincipal, what: &str) -> Result<Value, String> {
    let principal = match p.principal_classification {
        0 => opaque_plain(&p.principal, what, |r: &MspRole| {
            object([("msp_identifier", string(&r.msp_identifier)), ("role", enumeration(r.role, MSP_ROLES))])
        })?,
        1 => opaque_plain(&p.principal, what, |u: &OrganizationUnit| {
            object([
                ("certifiers_identifier", b64(&u.certifiers_identifier)),
                ("msp_identifier", string(&u.msp_identifier)),
                ("organizational_unit_identifier", string(&u.organizational_unit_identifier)),
            ])
        })?,
        2 => opaque_plain(&p.principal, what, |i: &proto::SerializedIdentity| {
            object([("id_bytes", b64(&i.id_bytes)), ("mspid", string(&i.mspid))])
        })?,
        _ if p.principal.is_empty() => Value::Null,
        _ => b64(&p.principal),
    };
    Ok(object([
        ("principal", principal),
        ("principal_classification", enumeration(p.principal_classification, PRINCIPAL_CLASSIFICATIONS)),
    ]))
}

/// `common.SignaturePolicy`: only the oneof member that is set.
fn signature_rule_json(r: &SignaturePolicy) -> Value {
    match &r.r#type {
        Some(SignaturePolicyType::SignedBy(i)) => object([("signed_by", int32(*i))]),
        Some(SignaturePolicyType::NOutOf(n)) => object([(
            "n_out_of",
            object([("n", int32(n.n)), ("rules", Value::Array(n.rules.iter().map(signature_rule_json).collect()))]),
        )]),
        None => Value::Object(Map::new()),
    }
}

/// `common.Policy`: `value` by policy type.
fn policy_json(p: &Policy, what: &str) -> Result<Value, String> {
    let value = match p.r#type {
        POLICY_SIGNATURE => opaque(&p.value, what, |e: &SignaturePolicyEnvelope| {
            let identities = e.identities.iter().map(|i| principal_json(i, what)).collect::<Result<Vec<_>, _>>()?;
            Ok(object([
                ("identities", Value::Array(identities)),
                ("rule", optional(&e.rule, signature_rule_json)),
                ("version", int32(e.version)),
            ]))
        })?,
        POLICY_IMPLICIT_META => opaque_plain(&p.value, what, |m: &ImplicitMetaPolicy| {
            object([("rule", enumeration(m.rule, IMPLICIT_META_RULES)), ("sub_policy", string(&m.sub_policy))])
        })?,
        _ if p.value.is_empty() => Value::Null,
        _ => b64(&p.value),
    };
    Ok(object([("type", int32(p.r#type)), ("value", value)]))
}

/// `orderer.ConsensusType`: `metadata` by consensus type.
fn consensus_type_json(c: &ConsensusType, what: &str) -> Result<Value, String> {
    let metadata = match c.r#type.as_str() {
        "etcdraft" => opaque_plain(&c.metadata, what, |m: &RaftConfigMetadata| {
            object([
                (
                    "consenters",
                    Value::Array(
                        m.consenters
                            .iter()
                            .map(|c| {
                                object([
                                    ("client_tls_cert", b64(&c.client_tls_cert)),
                                    ("host", string(&c.host)),
                                    ("port", int32(c.port)),
                                    ("server_tls_cert", b64(&c.server_tls_cert)),
                                ])
                            })
                            .collect(),
                    ),
                ),
                (
                    "options",
                    optional(&m.options, |o| {
                        object([
                            ("election_tick", int32(o.election_tick)),
                            ("heartbeat_tick", int32(o.heartbeat_tick)),
                            ("max_inflight_blocks", int32(o.max_inflight_blocks)),
                            ("snapshot_interval_size", int32(o.snapshot_interval_size)),
                            ("tick_interval", string(&o.tick_interval)),
                        ])
                    }),
                ),
            ])
        })?,
        "BFT" => opaque_plain(&c.metadata, what, |o: &BftOptions| {
            object([
                ("collect_timeout", string(&o.collect_timeout)),
                ("decisions_per_leader", int64(o.decisions_per_leader)),
                ("incoming_message_buffer_size", int64(o.incoming_message_buffer_size)),
                ("leader_heartbeat_count", int64(o.leader_heartbeat_count)),
                ("leader_heartbeat_timeout", string(&o.leader_heartbeat_timeout)),
                ("leader_rotation", enumeration(o.leader_rotation, BFT_ROTATIONS)),
                ("request_auto_remove_timeout", string(&o.request_auto_remove_timeout)),
                ("request_batch_max_bytes", int64(o.request_batch_max_bytes)),
                ("request_batch_max_count", int64(o.request_batch_max_count)),
                ("request_batch_max_interval", string(&o.request_batch_max_interval)),
                ("request_complain_timeout", string(&o.request_complain_timeout)),
                ("request_forward_timeout", string(&o.request_forward_timeout)),
                ("request_max_bytes", int64(o.request_max_bytes)),
                ("request_pool_size", int64(o.request_pool_size)),
                ("speed_up_view_change", Value::Bool(o.speed_up_view_change)),
                ("sync_on_start", Value::Bool(o.sync_on_start)),
                ("view_change_resend_interval", string(&o.view_change_resend_interval)),
                ("view_change_timeout", string(&o.view_change_timeout)),
            ])
        })?,
        // Solo and Kafka: configtxlator decodes the metadata as
        // `google.protobuf.Empty`.
        _ => opaque_plain(&c.metadata, what, |_: &Empty| Value::Object(Map::new()))?,
    };
    Ok(object([("metadata", metadata), ("state", enumeration(c.state, CONSENSUS_STATES)), ("type", string(&c.r#type))]))
}

/// Where a config group sits: it decides which values it may hold and how
/// they decode (configtxlator's `Dynamic*Group` types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    /// `/Channel`.
    Channel,
    /// `/Channel/Orderer`.
    Orderer,
    /// `/Channel/Orderer/<org>`.
    OrdererOrg,
    /// `/Channel/Application`.
    Application,
    /// `/Channel/Application/<org>`.
    ApplicationOrg,
    /// `/Channel/Consortiums` (a system channel).
    Consortiums,
    /// `/Channel/Consortiums/<consortium>`.
    Consortium,
    /// `/Channel/Consortiums/<consortium>/<org>`.
    ConsortiumOrg,
    /// A group configtxlator does not know: its values stay base64.
    Unknown,
}

impl GroupKind {
    fn child(self, name: &str) -> GroupKind {
        use GroupKind::*;
        match (self, name) {
            (Channel, "Orderer") => Orderer,
            (Channel, "Application") => Application,
            (Channel, "Consortiums") => Consortiums,
            (Orderer, _) => OrdererOrg,
            (Application, _) => ApplicationOrg,
            (Consortiums, _) => Consortium,
            (Consortium, _) => ConsortiumOrg,
            _ => Unknown,
        }
    }
}

/// A `ConfigValue.value`, decoded by the value's key in its group.
fn value_json(kind: GroupKind, key: &str, bytes: &[u8], what: &str) -> Result<Value, String> {
    use GroupKind::*;
    match (kind, key) {
        (Channel, "HashingAlgorithm") => {
            opaque_plain(bytes, what, |m: &HashingAlgorithm| object([("name", string(&m.name))]))
        }
        (Channel, "BlockDataHashingStructure") => {
            opaque_plain(bytes, what, |m: &BlockDataHashingStructure| object([("width", int32(m.width))]))
        }
        (Channel, "OrdererAddresses") | (OrdererOrg, "Endpoints") => {
            opaque_plain(bytes, what, |m: &OrdererAddresses| object([("addresses", strings(&m.addresses))]))
        }
        (Channel, "Consortium") => opaque_plain(bytes, what, |m: &ConsortiumValue| object([("name", string(&m.name))])),
        (Channel | Orderer | Application, "Capabilities") => opaque(bytes, what, |m: &Capabilities| {
            Ok(object([("capabilities", map_of(&m.capabilities, |_, _| Ok(Value::Object(Map::new())))?)]))
        }),
        (Orderer, "ConsensusType") => opaque(bytes, what, |m: &ConsensusType| consensus_type_json(m, what)),
        (Orderer, "BatchSize") => opaque_plain(bytes, what, |m: &BatchSize| {
            object([
                ("absolute_max_bytes", int32(m.absolute_max_bytes)),
                ("max_message_count", int32(m.max_message_count)),
                ("preferred_max_bytes", int32(m.preferred_max_bytes)),
            ])
        }),
        (Orderer, "BatchTimeout") => {
            opaque_plain(bytes, what, |m: &BatchTimeout| object([("timeout", string(&m.timeout))]))
        }
        (Orderer, "KafkaBrokers") => {
            opaque_plain(bytes, what, |m: &KafkaBrokers| object([("brokers", strings(&m.brokers))]))
        }
        (Orderer, "ChannelRestrictions") => {
            opaque_plain(bytes, what, |m: &ChannelRestrictions| object([("max_count", int64(m.max_count))]))
        }
        (Orderer, "Orderers") => opaque_plain(bytes, what, |m: &Orderers| {
            let list = m.consenter_mapping.iter().map(|c| {
                object([
                    ("client_tls_cert", b64(&c.client_tls_cert)),
                    ("host", string(&c.host)),
                    ("id", int32(c.id)),
                    ("identity", b64(&c.identity)),
                    ("msp_id", string(&c.msp_id)),
                    ("port", int32(c.port)),
                    ("server_tls_cert", b64(&c.server_tls_cert)),
                ])
            });
            object([("consenter_mapping", Value::Array(list.collect()))])
        }),
        (OrdererOrg | ApplicationOrg | ConsortiumOrg, "MSP") => {
            opaque(bytes, what, |m: &proto::MspConfig| msp_json(m, what))
        }
        (Application, "ACLs") => opaque(bytes, what, |m: &Acls| {
            let acls = map_of(&m.acls, |_, r| Ok(object([("policy_ref", string(&r.policy_ref))])))?;
            Ok(object([("acls", acls)]))
        }),
        (ApplicationOrg, "AnchorPeers") => opaque_plain(bytes, what, |m: &AnchorPeers| {
            let list = m.anchor_peers.iter().map(|p| object([("host", string(&p.host)), ("port", int32(p.port))]));
            object([("anchor_peers", Value::Array(list.collect()))])
        }),
        (Consortium, "ChannelCreationPolicy") => opaque(bytes, what, |p: &Policy| policy_json(p, what)),
        // configtxlator refuses other keys; coffer keeps their bytes.
        _ if bytes.is_empty() => Ok(Value::Null),
        _ => Ok(b64(bytes)),
    }
}

fn group_json(g: &ConfigGroup, kind: GroupKind, path: &str) -> Result<Value, String> {
    let groups = map_of(&g.groups, |name, sub| group_json(sub, kind.child(name), &format!("{path}/{name}")))?;
    let values = map_of(&g.values, |key, v| {
        let what = format!("config value {path}/{key}");
        Ok(object([
            ("mod_policy", string(&v.mod_policy)),
            ("value", value_json(kind, key, &v.value, &what)?),
            ("version", int64(v.version)),
        ]))
    })?;
    let policies = map_of(&g.policies, |name, p| {
        let what = format!("policy {path}/{name}");
        Ok(object([
            ("mod_policy", string(&p.mod_policy)),
            ("policy", p.policy.as_ref().map_or(Ok(Value::Null), |p| policy_json(p, &what))?),
            ("version", int64(p.version)),
        ]))
    })?;
    Ok(object([
        ("groups", groups),
        ("mod_policy", string(&g.mod_policy)),
        ("policies", policies),
        ("values", values),
        ("version", int64(g.version)),
    ]))
}

fn config_to_json(config: &Config) -> Result<Value, String> {
    let root =
        config.channel_group.as_ref().map_or(Ok(Value::Null), |g| group_json(g, GroupKind::Channel, "/Channel"))?;
    Ok(object([("channel_group", root), ("sequence", int64(config.sequence))]))
}

/// The JSON configtxlator prints for a marshalled `common.Config`
/// (`configtxlator proto_decode --type common.Config`).
pub fn config_protobuf_json(config: &[u8]) -> Result<Value, String> {
    let config = Config::decode(config).map_err(|e| format!("the config does not decode: {e}"))?;
    config_to_json(&config)
}

/// The JSON of a config block's config: what `configtxlator proto_decode
/// --type common.Block` prints under `data.data[0].payload.data.config`,
/// the same as `proto_decode --type common.Config` of that config.
pub fn config_json(block: &StoredBlock) -> Result<Value, String> {
    let number = block.number;
    if !is_config_block(block) {
        return Err(format!("block {number} is not a config block"));
    }
    // is_config_block decoded these already.
    let env = proto::Envelope::decode(block.envelopes[0]).map_err(|e| format!("block {number}: {e}"))?;
    let payload = proto::Payload::decode(env.payload.as_slice()).map_err(|e| format!("block {number}: {e}"))?;
    let envelope = ConfigEnvelope::decode(payload.data.as_slice())
        .map_err(|e| format!("block {number}: the config envelope does not decode: {e}"))?;
    let config = envelope.config.ok_or_else(|| format!("block {number}: the config envelope holds no config"))?;
    config_to_json(&config).map_err(|e| format!("block {number}: {e}"))
}

// ---------------------------------------------------------------------------
// Go's encoding/json, as protolator's DeepMarshalJSON uses it.

/// `value` as configtxlator writes it: Go's `json.Encoder` with a tab
/// indent (object keys sorted, `": "` after a key, `{}` and `[]` for empty
/// ones, `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c` ...) and a
/// final newline.
pub fn configtxlator_text(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(&mut out, value, 0);
    out.push('\n');
    out
}

fn write_go_json(out: &mut String, v: &Value, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n('\t', depth));
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_go_string(out, s),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_go_json(out, item, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_go_string(out, k);
                out.push_str(": ");
                write_go_json(out, &o[k], depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn write_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22 on; earlier releases wrote \u0008 and \u000c.
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::policy::NOutOf;

    use crate::fixtures::{SAMPLE, fixture};

    /// Appends a protobuf varint.
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Appends a length-delimited field.
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// `common.Block` written out by hand the way Go's proto.Marshal
    /// orders it.
    fn go_marshal(b: &StoredBlock) -> Vec<u8> {
        let mut header = Vec::new();
        if b.number != 0 {
            header.push(1 << 3);
            varint(&mut header, b.number);
        }
        if !b.previous_hash.is_empty() {
            field(&mut header, 2, b.previous_hash);
        }
        if !b.data_hash.is_empty() {
            field(&mut header, 3, b.data_hash);
        }
        let mut data = Vec::new();
        for e in &b.envelopes {
            field(&mut data, 1, e);
        }
        let mut metadata = Vec::new();
        for m in &b.metadata {
            field(&mut metadata, 1, m);
        }
        let mut out = Vec::new();
        field(&mut out, 1, &header);
        field(&mut out, 2, &data);
        field(&mut out, 3, &metadata);
        out
    }

    fn sample_config() -> Value {
        let bytes = fixture(SAMPLE);
        let found = latest_config([&bytes]).expect("a config block");
        config_json(&found.block().unwrap()).unwrap()
    }

    #[test]
    fn the_block_protobuf_is_the_stored_block_in_go_order() {
        let bytes = fixture(SAMPLE);
        for rec in blockfile::scan(&bytes).records {
            let stored = blockfile::decode_block(rec.bytes).unwrap();
            let pb = block_protobuf(&stored);
            assert_eq!(pb, go_marshal(&stored), "block {}", stored.number);
            let back = Block::decode(pb.as_slice()).unwrap();
            let header = back.header.unwrap();
            assert_eq!(header.number, stored.number);
            assert_eq!(header.previous_hash, stored.previous_hash);
            assert_eq!(header.data_hash, stored.data_hash);
            let data = back.data.unwrap().data;
            assert_eq!(data, stored.envelopes.iter().map(|e| e.to_vec()).collect::<Vec<_>>());
            assert_eq!(Sha256::digest(data.concat()).as_slice(), stored.data_hash);
            // Empty metadata entries are kept: the peer's five entries, of
            // which only the transaction filter (index 2) is set in block 0.
            let metadata = back.metadata.unwrap().metadata;
            assert_eq!(metadata, stored.metadata.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
            assert_eq!(metadata.len(), 5);
        }
        // Block 0: number 0 and the empty previous hash are not written.
        let block0 = blockfile::decode_block(blockfile::scan(&bytes).records[0].bytes).unwrap();
        let pb = block_protobuf(&block0);
        assert_eq!(&pb[..4], &[0x0a, 34, 0x1a, 32]);
    }

    #[test]
    fn the_latest_config_block_is_the_newest_one_across_files() {
        let bytes = fixture(SAMPLE);
        let scan = blockfile::scan(&bytes);
        // The sample channel's only config block is its genesis block.
        let found = latest_config([&bytes]).unwrap();
        assert_eq!(found.number, 0);
        assert_eq!(found.record, scan.records[0].bytes);
        // Split over two files, block 0 in the first.
        let cut = scan.records[3].offset as usize;
        assert_eq!(latest_config([&bytes[..cut], &bytes[cut..]]).unwrap().number, 0);
        // A later config block (block 0's record renumbered 8) in a second
        // file that ends in a partly written record wins.
        let mut rec8 = scan.records[0].bytes.to_vec();
        assert_eq!(rec8[0], 0);
        rec8[0] = 8;
        let mut second = Vec::new();
        varint(&mut second, rec8.len() as u64);
        second.extend_from_slice(&rec8);
        second.extend_from_slice(&[0x90, 0x03, 1, 2, 3]);
        let found = latest_config([bytes.clone(), second]).unwrap();
        assert_eq!((found.number, found.block().unwrap().number), (8, 8));
        // No config block at all.
        assert_eq!(latest_config([&bytes[scan.records[1].offset as usize..]]), None);
    }

    #[test]
    fn a_block_that_is_not_a_config_block_has_no_config_json() {
        let bytes = fixture(SAMPLE);
        let block5 = blockfile::decode_block(blockfile::scan(&bytes).records[5].bytes).unwrap();
        assert!(!is_config_block(&block5));
        assert_eq!(config_json(&block5).unwrap_err(), "block 5 is not a config block");
    }

    #[test]
    fn the_sample_config_decodes_as_configtxlator_prints_it() {
        let c = sample_config();
        // 64-bit integers are strings: the channel was created from the
        // system channel, so its first config already has sequence 1.
        assert_eq!(c["sequence"], "1");
        let root = &c["channel_group"];
        assert_eq!(root["version"], "0");
        assert_eq!(root["mod_policy"], "Admins");
        let groups: Vec<&String> = root["groups"].as_object().unwrap().keys().collect();
        assert_eq!(groups, ["Application", "Orderer"]);

        // /Channel values, each by its key.
        let v = &root["values"];
        assert_eq!(v["HashingAlgorithm"]["value"], serde_json::json!({"name": "SHA256"}));
        // uint32: a number, here MAX_UINT32 (flat hashing).
        assert_eq!(v["BlockDataHashingStructure"]["value"]["width"], 4294967295u32);
        assert_eq!(v["Consortium"]["value"]["name"], "SampleConsortium");
        assert_eq!(v["Capabilities"]["value"], serde_json::json!({"capabilities": {"V2_0": {}}}));
        assert_eq!(v["Capabilities"]["mod_policy"], "Admins");
        assert_eq!(v["Capabilities"]["version"], "0");

        // /Channel policies: implicit meta, rules by name.
        let admins = &root["policies"]["Admins"];
        assert_eq!(
            admins,
            &serde_json::json!({
                "mod_policy": "Admins",
                "policy": {"type": 3, "value": {"rule": "MAJORITY", "sub_policy": "Admins"}},
                "version": "0"
            })
        );
        assert_eq!(root["policies"]["Readers"]["policy"]["value"]["rule"], "ANY");

        // /Channel/Orderer.
        let orderer = &root["groups"]["Orderer"];
        let ov = &orderer["values"];
        assert_eq!(
            ov["BatchSize"]["value"],
            serde_json::json!({"absolute_max_bytes": 10485760, "max_message_count": 500, "preferred_max_bytes": 2097152})
        );
        assert_eq!(ov["BatchTimeout"]["value"], serde_json::json!({"timeout": "2s"}));
        // Solo: no metadata, printed as null like an unset message; the
        // state enum by name.
        assert_eq!(
            ov["ConsensusType"]["value"],
            serde_json::json!({"metadata": null, "state": "STATE_NORMAL", "type": "solo"})
        );
        // An empty value is null (configtxlator does not decode nil bytes).
        assert_eq!(ov["ChannelRestrictions"]["value"], Value::Null);
        assert_eq!(orderer["policies"]["BlockValidation"]["policy"]["value"]["sub_policy"], "Writers");
        let org = &orderer["groups"]["SampleOrg"];
        assert_eq!(org["groups"], serde_json::json!({}));
        assert_eq!(org["values"]["Endpoints"]["value"], serde_json::json!({"addresses": ["127.0.0.1:7050"]}));

        // The organisation's MSP: MSPConfig, its config decoded as a
        // FabricMSPConfig, every field present.
        let msp = &org["values"]["MSP"]["value"];
        assert_eq!(msp["type"], 0);
        let fabric = &msp["config"];
        assert_eq!(fabric["name"], "SampleOrg");
        assert_eq!(
            fabric["crypto_config"],
            serde_json::json!({"identity_identifier_hash_function": "SHA256", "signature_hash_family": "SHA2"})
        );
        assert_eq!(fabric["fabric_node_ous"], Value::Null);
        assert_eq!(fabric["signing_identity"], Value::Null);
        assert_eq!(fabric["intermediate_certs"], serde_json::json!([]));
        assert_eq!(fabric["revocation_list"], serde_json::json!([]));
        assert_eq!(fabric["organizational_unit_identifiers"][0]["organizational_unit_identifier"], "COP");
        assert_eq!(fabric["organizational_unit_identifiers"][0]["certificate"], fabric["root_certs"][0]);
        let keys: Vec<&String> = fabric.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "admins",
                "crypto_config",
                "fabric_node_ous",
                "intermediate_certs",
                "name",
                "organizational_unit_identifiers",
                "revocation_list",
                "root_certs",
                "signing_identity",
                "tls_intermediate_certs",
                "tls_root_certs"
            ]
        );
        // Certificates: base64 of the PEM, the same root CA the ledger
        // check takes from the config.
        let root_pem = STANDARD.decode(fabric["root_certs"][0].as_str().unwrap()).unwrap();
        assert!(root_pem.starts_with(b"-----BEGIN CERTIFICATE-----\nMIICYjCCAgigAwIBAgIRAL1fEAnz5zp4moJ8"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&root_pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "C=US, ST=California, L=San Francisco, O=org1.example.com, OU=COP, CN=ca.org1.example.com"
        );
        let bytes = fixture(SAMPLE);
        let block0 = blockfile::decode_block(blockfile::scan(&bytes).records[0].bytes).unwrap();
        let proto_config = {
            let env = proto::Envelope::decode(block0.envelopes[0]).unwrap();
            let payload = proto::Payload::decode(env.payload.as_slice()).unwrap();
            proto::ConfigEnvelope::decode(payload.data.as_slice()).unwrap().config.unwrap()
        };
        let orgs = crate::verify::orderer_orgs(&proto_config).unwrap();
        assert_eq!(orgs[0].roots[0], pem.contents);
        let admin_pem = STANDARD.decode(fabric["admins"][0].as_str().unwrap()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&admin_pem).unwrap();
        assert!(pem.parse_x509().unwrap().subject().to_string().ends_with("CN=peer0.org1.example.com"));
        assert_eq!(fabric["tls_root_certs"].as_array().unwrap().len(), 1);
        assert_eq!(fabric["tls_intermediate_certs"].as_array().unwrap().len(), 1);

        // Signature policies: envelope, principals decoded by
        // classification, the rule tree with only the oneof member set.
        let sig = &org["policies"]["Admins"]["policy"];
        assert_eq!(
            sig,
            &serde_json::json!({
                "type": 1,
                "value": {
                    "identities": [{"principal": {"msp_identifier": "SampleOrg", "role": "ADMIN"}, "principal_classification": "ROLE"}],
                    "rule": {"n_out_of": {"n": 1, "rules": [{"signed_by": 0}]}},
                    "version": 0
                }
            })
        );
        assert_eq!(org["policies"]["Writers"]["policy"]["value"]["identities"][0]["principal"]["role"], "MEMBER");

        // /Channel/Application: ACLs, capabilities, the same organisation.
        let app = &root["groups"]["Application"];
        assert_eq!(
            app["values"]["ACLs"]["value"]["acls"]["peer/Propose"]["policy_ref"],
            "/Channel/Application/Writers"
        );
        assert_eq!(
            app["values"]["ACLs"]["value"]["acls"]["cscc/GetConfigBlock"]["policy_ref"],
            "/Channel/Application/Readers"
        );
        assert_eq!(app["values"]["Capabilities"]["value"]["capabilities"], serde_json::json!({"V2_0": {}}));
        assert_eq!(
            app["policies"]["LifecycleEndorsement"]["policy"]["value"],
            serde_json::json!({"rule": "MAJORITY", "sub_policy": "Endorsement"})
        );
        assert_eq!(app["groups"]["SampleOrg"]["values"]["MSP"]["value"], *msp);
        assert_eq!(
            app["groups"]["SampleOrg"]["policies"]["Endorsement"]["policy"]["value"]["identities"][0]["principal"]["role"],
            "MEMBER"
        );
    }

    /// A config with the values the sample network lacks, built with the
    /// messages above and encoded by prost.
    fn synthetic_config() -> Vec<u8> {
        fn value(bytes: Vec<u8>) -> proto::ConfigValue {
            proto::ConfigValue { version: 2, value: bytes, mod_policy: "Admins".into() }
        }
        fn group(values: Vec<(&str, Vec<u8>)>, groups: Vec<(&str, ConfigGroup)>) -> ConfigGroup {
            ConfigGroup {
                version: 1,
                groups: groups.into_iter().map(|(k, g)| (k.to_string(), g)).collect(),
                values: values.into_iter().map(|(k, v)| (k.to_string(), value(v))).collect(),
                policies: HashMap::new(),
                mod_policy: String::new(),
            }
        }
        let raft = RaftConfigMetadata {
            consenters: vec![RaftConsenter {
                host: "orderer0".into(),
                port: 7050,
                client_tls_cert: b"client".to_vec(),
                server_tls_cert: b"server".to_vec(),
            }],
            options: Some(RaftOptions {
                tick_interval: "500ms".into(),
                election_tick: 10,
                heartbeat_tick: 1,
                max_inflight_blocks: 5,
                snapshot_interval_size: 16777216,
            }),
        };
        let consensus =
            ConsensusType { r#type: "etcdraft".into(), metadata: raft.encode_to_vec(), state: 1 }.encode_to_vec();
        let ou = MspPrincipal {
            principal_classification: 1,
            principal: OrganizationUnit {
                msp_identifier: "Org1MSP".into(),
                organizational_unit_identifier: "peer".into(),
                certifiers_identifier: vec![1, 2, 3],
            }
            .encode_to_vec(),
        };
        let role = MspPrincipal {
            principal_classification: 0,
            principal: MspRole { msp_identifier: "Org1MSP".into(), role: 3 }.encode_to_vec(),
        };
        let policy = SignaturePolicyEnvelope {
            version: 0,
            rule: Some(SignaturePolicy {
                r#type: Some(SignaturePolicyType::NOutOf(NOutOf {
                    n: 2,
                    rules: vec![
                        SignaturePolicy { r#type: Some(SignaturePolicyType::SignedBy(0)) },
                        SignaturePolicy { r#type: Some(SignaturePolicyType::SignedBy(1)) },
                    ],
                })),
            }),
            identities: vec![ou, role],
        };
        let msp = proto::MspConfig {
            r#type: 0,
            config: FabricMspConfig {
                name: "Org1MSP".into(),
                fabric_node_ous: Some(FabricNodeOus {
                    enable: true,
                    peer_ou_identifier: Some(FabricOuIdentifier {
                        certificate: Vec::new(),
                        organizational_unit_identifier: "peer".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let idemix = proto::MspConfig {
            r#type: 1,
            config: IdemixMspConfig { name: "IdemixMSP".into(), ipk: vec![9], epoch: 3, ..Default::default() }
                .encode_to_vec(),
        };
        let anchors = AnchorPeers { anchor_peers: vec![AnchorPeer { host: "peer0.org1".into(), port: 7051 }] };
        let bft = Orderers {
            consenter_mapping: vec![BftConsenter {
                id: 1,
                host: "orderer1".into(),
                port: 7050,
                msp_id: "OrdererMSP".into(),
                identity: b"id".to_vec(),
                ..Default::default()
            }],
        };
        let mut org1 = group(vec![("MSP", msp.encode_to_vec()), ("AnchorPeers", anchors.encode_to_vec())], vec![]);
        org1.policies.insert(
            "Endorsement".into(),
            ConfigPolicy {
                version: 0,
                policy: Some(Policy { r#type: 1, value: policy.encode_to_vec() }),
                mod_policy: "Admins".into(),
            },
        );
        // A policy type configtxlator does not decode, and an unset policy.
        org1.policies.insert(
            "Custom".into(),
            ConfigPolicy {
                version: 0,
                policy: Some(Policy { r#type: 7, value: vec![0xff] }),
                mod_policy: String::new(),
            },
        );
        org1.policies.insert("Unset".into(), ConfigPolicy::default());
        let idemix_org = group(vec![("MSP", idemix.encode_to_vec())], vec![]);
        let app = group(vec![("Future", vec![1, 2, 3])], vec![("Org1", org1), ("Idemix", idemix_org)]);
        let orderer = group(
            vec![
                ("ConsensusType", consensus),
                ("Orderers", bft.encode_to_vec()),
                ("ChannelRestrictions", ChannelRestrictions { max_count: 7 }.encode_to_vec()),
                ("KafkaBrokers", KafkaBrokers { brokers: vec!["kafka0:9092".into()] }.encode_to_vec()),
            ],
            vec![],
        );
        Config {
            sequence: 12,
            channel_group: Some(group(
                vec![(
                    "OrdererAddresses",
                    OrdererAddresses { addresses: vec!["orderer0:7050".into()] }.encode_to_vec(),
                )],
                vec![("Application", app), ("Orderer", orderer)],
            )),
        }
        .encode_to_vec()
    }

    #[test]
    fn values_decode_by_key_and_context() {
        let c = config_protobuf_json(&synthetic_config()).unwrap();
        assert_eq!(c["sequence"], "12");
        let root = &c["channel_group"];
        assert_eq!(root["mod_policy"], "");
        assert_eq!(root["policies"], serde_json::json!({}));
        assert_eq!(root["values"]["OrdererAddresses"]["value"]["addresses"][0], "orderer0:7050");
        assert_eq!(root["values"]["OrdererAddresses"]["version"], "2");

        let ov = &root["groups"]["Orderer"]["values"];
        // etcdraft metadata decoded as etcdraft.ConfigMetadata.
        assert_eq!(
            ov["ConsensusType"]["value"],
            serde_json::json!({
                "metadata": {
                    "consenters": [{
                        "client_tls_cert": "Y2xpZW50",
                        "host": "orderer0",
                        "port": 7050,
                        "server_tls_cert": "c2VydmVy"
                    }],
                    "options": {
                        "election_tick": 10,
                        "heartbeat_tick": 1,
                        "max_inflight_blocks": 5,
                        "snapshot_interval_size": 16777216,
                        "tick_interval": "500ms"
                    }
                },
                "state": "STATE_MAINTENANCE",
                "type": "etcdraft"
            })
        );
        assert_eq!(
            ov["Orderers"]["value"]["consenter_mapping"][0],
            serde_json::json!({
                "client_tls_cert": "",
                "host": "orderer1",
                "id": 1,
                "identity": "aWQ=",
                "msp_id": "OrdererMSP",
                "port": 7050,
                "server_tls_cert": ""
            })
        );
        assert_eq!(ov["ChannelRestrictions"]["value"], serde_json::json!({"max_count": "7"}));
        assert_eq!(ov["KafkaBrokers"]["value"], serde_json::json!({"brokers": ["kafka0:9092"]}));

        let app = &root["groups"]["Application"];
        // A key configtxlator does not know: the bytes, as base64.
        assert_eq!(app["values"]["Future"]["value"], "AQID");
        let org1 = &app["groups"]["Org1"];
        assert_eq!(
            org1["values"]["AnchorPeers"]["value"],
            serde_json::json!({"anchor_peers": [{"host": "peer0.org1", "port": 7051}]})
        );
        let fabric = &org1["values"]["MSP"]["value"]["config"];
        assert_eq!(
            fabric["fabric_node_ous"],
            serde_json::json!({
                "admin_ou_identifier": null,
                "client_ou_identifier": null,
                "enable": true,
                "orderer_ou_identifier": null,
                "peer_ou_identifier": {"certificate": "", "organizational_unit_identifier": "peer"}
            })
        );
        assert_eq!(fabric["crypto_config"], Value::Null);
        assert_eq!(fabric["root_certs"], serde_json::json!([]));
        assert_eq!(
            org1["policies"]["Endorsement"]["policy"]["value"],
            serde_json::json!({
                "identities": [
                    {
                        "principal": {"certifiers_identifier": "AQID", "msp_identifier": "Org1MSP", "organizational_unit_identifier": "peer"},
                        "principal_classification": "ORGANIZATION_UNIT"
                    },
                    {"principal": {"msp_identifier": "Org1MSP", "role": "PEER"}, "principal_classification": "ROLE"}
                ],
                "rule": {"n_out_of": {"n": 2, "rules": [{"signed_by": 0}, {"signed_by": 1}]}},
                "version": 0
            })
        );
        assert_eq!(org1["policies"]["Custom"]["policy"], serde_json::json!({"type": 7, "value": "/w=="}));
        assert_eq!(org1["policies"]["Unset"], serde_json::json!({"mod_policy": "", "policy": null, "version": "0"}));
        assert_eq!(
            app["groups"]["Idemix"]["values"]["MSP"]["value"],
            serde_json::json!({
                "config": {"epoch": "3", "ipk": "CQ==", "name": "IdemixMSP", "revocation_pk": "", "signer": null},
                "type": 1
            })
        );
    }

    #[test]
    fn a_value_that_does_not_decode_is_an_error_naming_it() {
        let mut config = Config::decode(synthetic_config().as_slice()).unwrap();
        let root = config.channel_group.as_mut().unwrap();
        root.values.get_mut("OrdererAddresses").unwrap().value = vec![0x0a, 0x05, b'x'];
        let err = config_protobuf_json(&config.encode_to_vec()).unwrap_err();
        assert!(err.starts_with("config value /Channel/OrdererAddresses does not decode"), "{err}");
    }

    #[test]
    fn the_text_is_what_go_encoding_json_writes() {
        let v = serde_json::json!({"b": [], "a": {"x": "<&>\u{2028}\u{8}\"\\\n\u{1}", "e": {}, "n": [1, "2"]}});
        assert_eq!(
            configtxlator_text(&v),
            "{\n\t\"a\": {\n\t\t\"e\": {},\n\t\t\"n\": [\n\t\t\t1,\n\t\t\t\"2\"\n\t\t],\n\t\t\"x\": \
             \"\\u003c\\u0026\\u003e\\u2028\\b\\\"\\\\\\n\\u0001\"\n\t},\n\t\"b\": []\n}\n"
        );
        let text = configtxlator_text(&sample_config());
        assert!(text.starts_with("{\n\t\"channel_group\": {\n\t\t\"groups\": {\n\t\t\t\"Application\": {\n"), "{text}");
        assert!(text.ends_with("\t\"sequence\": \"1\"\n}\n"));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), sample_config());
    }
}
