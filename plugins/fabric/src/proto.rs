//! Fabric's protobuf messages that a ledger check needs, written from
//! Fabric's `.proto` definitions (`common/common.proto`,
//! `common/configtx.proto`, `msp/msp_config.proto`, `msp/identities.proto`)
//! with the `prost` derive: no protoc, no generated files. Fields coffer
//! never reads are left out; `prost` skips them when decoding.

use std::collections::HashMap;

/// `common.HeaderType.CONFIG`: a channel header of a config transaction.
pub const HEADER_TYPE_CONFIG: i32 = 1;

/// `common.BlockMetadataIndex`: where each metadata entry sits in a block.
pub mod metadata_index {
    /// Orderer signatures; in 2.x its value is an `OrdererBlockMetadata`.
    pub const SIGNATURES: usize = 0;
    /// 1.x: a `Metadata` whose value is a `LastConfig` (deprecated in 2.x).
    pub const LAST_CONFIG: usize = 1;
}

/// `common.Envelope`: a signed payload (one transaction of a block).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// A marshalled `Payload`.
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// The creator's signature over `payload`.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// `common.Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Channel and signature headers.
    #[prost(message, optional, tag = "1")]
    pub header: Option<Header>,
    /// Type-specific data (a `ConfigEnvelope` for a config transaction).
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `common.Header`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    /// A marshalled `ChannelHeader`.
    #[prost(bytes = "vec", tag = "1")]
    pub channel_header: Vec<u8>,
    /// A marshalled `SignatureHeader`.
    #[prost(bytes = "vec", tag = "2")]
    pub signature_header: Vec<u8>,
}

/// `common.ChannelHeader` (timestamp, epoch, extension and TLS hash left out).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChannelHeader {
    /// A `HeaderType`.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// Message protocol version.
    #[prost(int32, tag = "2")]
    pub version: i32,
    /// The channel this message is for.
    #[prost(string, tag = "4")]
    pub channel_id: String,
    /// Transaction id.
    #[prost(string, tag = "5")]
    pub tx_id: String,
}

/// `common.SignatureHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignatureHeader {
    /// A marshalled `msp.SerializedIdentity`.
    #[prost(bytes = "vec", tag = "1")]
    pub creator: Vec<u8>,
    /// Replay protection.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
}

/// `common.Metadata`: one entry of a block's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    /// Entry-specific value.
    #[prost(bytes = "vec", tag = "1")]
    pub value: Vec<u8>,
    /// Signatures over value, signature header and block header.
    #[prost(message, repeated, tag = "2")]
    pub signatures: Vec<MetadataSignature>,
}

/// `common.MetadataSignature`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataSignature {
    /// A marshalled `SignatureHeader`.
    #[prost(bytes = "vec", tag = "1")]
    pub signature_header: Vec<u8>,
    /// ECDSA signature (DER) over value || signature_header || header DER.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    /// 2.5 BFT: a marshalled `IdentifierHeader` used instead of the
    /// signature header.
    #[prost(bytes = "vec", tag = "3")]
    pub identifier_header: Vec<u8>,
}

/// `common.LastConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LastConfig {
    /// Number of the last config block.
    #[prost(uint64, tag = "1")]
    pub index: u64,
}

/// `common.OrdererBlockMetadata` (2.x): the value of the signatures entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrdererBlockMetadata {
    /// The last config block.
    #[prost(message, optional, tag = "1")]
    pub last_config: Option<LastConfig>,
    /// Consensus-specific metadata.
    #[prost(bytes = "vec", tag = "2")]
    pub consenter_metadata: Vec<u8>,
}

/// `common.ConfigEnvelope`: the data of a config transaction's payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigEnvelope {
    /// The channel config in force from this block on.
    #[prost(message, optional, tag = "1")]
    pub config: Option<Config>,
    /// The update that produced it.
    #[prost(message, optional, tag = "2")]
    pub last_update: Option<Envelope>,
}

/// `common.Config`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Config {
    /// Increments with each config update.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The channel's root group.
    #[prost(message, optional, tag = "2")]
    pub channel_group: Option<ConfigGroup>,
}

/// `common.ConfigGroup` (policies left out).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigGroup {
    /// Group version.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Sub-groups by name (`Orderer`, `Application`, one per organisation).
    #[prost(map = "string, message", tag = "2")]
    pub groups: HashMap<String, ConfigGroup>,
    /// Values by name (`MSP`, ...).
    #[prost(map = "string, message", tag = "3")]
    pub values: HashMap<String, ConfigValue>,
    /// Policy that governs modifications.
    #[prost(string, tag = "5")]
    pub mod_policy: String,
}

/// `common.ConfigValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigValue {
    /// Value version.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// The marshalled value (an `msp.MSPConfig` for `MSP`).
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Policy that governs modifications.
    #[prost(string, tag = "3")]
    pub mod_policy: String,
}

/// `msp.MSPConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MspConfig {
    /// 0: a Fabric (X.509) MSP; 1: Idemix.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// A marshalled `FabricMSPConfig` for type 0.
    #[prost(bytes = "vec", tag = "2")]
    pub config: Vec<u8>,
}

/// `msp.FabricMSPConfig` (the fields a signature check needs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FabricMspConfig {
    /// The MSP id (`OrdererMSP`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Root CA certificates (PEM).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub root_certs: Vec<Vec<u8>>,
    /// Intermediate CA certificates (PEM).
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub intermediate_certs: Vec<Vec<u8>>,
    /// Admin certificates (PEM).
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub admins: Vec<Vec<u8>>,
    /// Certificate revocation lists (PEM).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub revocation_list: Vec<Vec<u8>>,
    /// TLS root CA certificates (PEM).
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub tls_root_certs: Vec<Vec<u8>>,
    /// TLS intermediate CA certificates (PEM).
    #[prost(bytes = "vec", repeated, tag = "10")]
    pub tls_intermediate_certs: Vec<Vec<u8>>,
}

/// `msp.SerializedIdentity`: who signed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SerializedIdentity {
    /// The MSP the identity belongs to.
    #[prost(string, tag = "1")]
    pub mspid: String,
    /// The certificate (PEM).
    #[prost(bytes = "vec", tag = "2")]
    pub id_bytes: Vec<u8>,
}
