//! Fabric's channel policies, as a peer evaluates `/Channel/Orderer/BlockValidation`
//! against the signatures of a block it receives from the orderer: the
//! policy tree of a channel config (signature policies and implicit meta
//! policies), the channel's X.509 MSPs and their principals (roles, NodeOUs,
//! organisational units, exact identities), and cauthdsl's rule that one
//! signature satisfies at most one `signed_by` of an evaluation.
//!
//! Written from Fabric's `common/policies.proto`, `msp/msp_principal.proto`,
//! `msp/msp_config.proto`, `common/configuration.proto`, and from
//! `common/cauthdsl/cauthdsl.go`, `common/policies/implicitmeta.go`,
//! `msp/mspimpl.go` and `msp/mspimplvalidate.go` (MSP version 1.4.3 and later,
//! the one of Fabric 2.x channels).
//!
//! Limits: an identity chains to a root directly or through one
//! intermediate CA (Fabric allows longer chains); Idemix MSPs, identity hash
//! functions other than SHA-256 and the older MSP versions' differences
//! (admins by certificate only, no orderer role) are not modelled.

use std::collections::{BTreeMap, HashMap};

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::proto;
use crate::verify::{issued_by, parse_cert, pem_certs};

// ---------------------------------------------------------------------------
// Protobuf messages (Fabric's field numbers; fields coffer never reads left out).

/// `common.ConfigEnvelope`, read again for the policies `proto::ConfigGroup`
/// leaves out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyConfigEnvelope {
    /// The channel config.
    #[prost(message, optional, tag = "1")]
    pub config: Option<PolicyConfig>,
}

/// `common.Config` with its policies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyConfig {
    /// The root group, `/Channel`.
    #[prost(message, optional, tag = "2")]
    pub channel_group: Option<PolicyConfigGroup>,
}

/// `common.ConfigGroup`: sub-groups, values and policies by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyConfigGroup {
    /// Sub-groups (`Orderer`, `Application`, one per organisation).
    #[prost(map = "string, message", tag = "2")]
    pub groups: HashMap<String, PolicyConfigGroup>,
    /// Values (`MSP`, `Orderers`, `Capabilities`, ...).
    #[prost(map = "string, message", tag = "3")]
    pub values: HashMap<String, proto::ConfigValue>,
    /// Policies (`Readers`, `Writers`, `Admins`, `BlockValidation`, ...).
    #[prost(map = "string, message", tag = "4")]
    pub policies: HashMap<String, ConfigPolicy>,
}

/// `common.ConfigPolicy`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigPolicy {
    /// Policy version.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// The policy.
    #[prost(message, optional, tag = "2")]
    pub policy: Option<PolicyProto>,
    /// Policy that governs modifications.
    #[prost(string, tag = "3")]
    pub mod_policy: String,
}

/// `common.Policy.PolicyType.SIGNATURE`: a `SignaturePolicyEnvelope`.
pub const POLICY_SIGNATURE: i32 = 1;
/// `common.Policy.PolicyType.IMPLICIT_META`: an `ImplicitMetaPolicy`.
pub const POLICY_IMPLICIT_META: i32 = 3;

/// `common.Policy`: a type and its marshalled value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyProto {
    /// A `PolicyType` (0 unknown, 1 signature, 2 MSP, 3 implicit meta).
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// The marshalled policy.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `common.SignaturePolicyEnvelope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignaturePolicyEnvelope {
    /// Fabric evaluates version 0 only.
    #[prost(int32, tag = "1")]
    pub version: i32,
    /// The rule.
    #[prost(message, optional, tag = "2")]
    pub rule: Option<SignaturePolicy>,
    /// The principals `signed_by` indexes.
    #[prost(message, repeated, tag = "3")]
    pub identities: Vec<MspPrincipal>,
}

/// `common.SignaturePolicy`: `signed_by` an identity, or `n_out_of` rules.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignaturePolicy {
    /// The `Type` oneof.
    #[prost(oneof = "SignaturePolicyType", tags = "1, 2")]
    pub r#type: Option<SignaturePolicyType>,
}

/// The `Type` oneof of `common.SignaturePolicy`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SignaturePolicyType {
    /// Index into the envelope's identities.
    #[prost(int32, tag = "1")]
    SignedBy(i32),
    /// At least `n` of the rules.
    #[prost(message, tag = "2")]
    NOutOf(NOutOf),
}

/// `common.SignaturePolicy.NOutOf`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NOutOf {
    /// How many rules must be satisfied.
    #[prost(int32, tag = "1")]
    pub n: i32,
    /// The rules.
    #[prost(message, repeated, tag = "2")]
    pub rules: Vec<SignaturePolicy>,
}

/// `common.ImplicitMetaPolicy.Rule`: ANY, ALL, MAJORITY.
pub mod implicit_rule {
    /// One sub-policy (none when there are no sub-groups).
    pub const ANY: i32 = 0;
    /// Every sub-policy.
    pub const ALL: i32 = 1;
    /// More than half of the sub-policies.
    pub const MAJORITY: i32 = 2;
}

/// `common.ImplicitMetaPolicy`: a rule over the policy named `sub_policy`
/// of each immediate sub-group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImplicitMetaPolicy {
    /// The sub-groups' policy name (`Writers`).
    #[prost(string, tag = "1")]
    pub sub_policy: String,
    /// An `implicit_rule`.
    #[prost(int32, tag = "2")]
    pub rule: i32,
}

/// `common.MSPPrincipal.Classification`.
pub mod classification {
    /// An `MSPRole`.
    pub const ROLE: i32 = 0;
    /// An `OrganizationUnit`.
    pub const ORGANIZATION_UNIT: i32 = 1;
    /// A `SerializedIdentity`.
    pub const IDENTITY: i32 = 2;
    /// An `MSPIdentityAnonymity`.
    pub const ANONYMITY: i32 = 3;
    /// A `CombinedPrincipal`.
    pub const COMBINED: i32 = 4;
}

/// `common.MSPPrincipal`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MspPrincipal {
    /// A `classification`.
    #[prost(int32, tag = "1")]
    pub principal_classification: i32,
    /// The marshalled principal of that classification.
    #[prost(bytes = "vec", tag = "2")]
    pub principal: Vec<u8>,
}

/// `common.MSPRole.MSPRoleType`.
pub mod role {
    /// A valid identity of the MSP.
    pub const MEMBER: i32 = 0;
    /// An admin (listed, or with the admin NodeOU).
    pub const ADMIN: i32 = 1;
    /// NodeOU client.
    pub const CLIENT: i32 = 2;
    /// NodeOU peer.
    pub const PEER: i32 = 3;
    /// NodeOU orderer.
    pub const ORDERER: i32 = 4;
}

/// `common.MSPRole`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MspRole {
    /// The MSP id.
    #[prost(string, tag = "1")]
    pub msp_identifier: String,
    /// A `role`.
    #[prost(int32, tag = "2")]
    pub role: i32,
}

/// `common.OrganizationUnit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrganizationUnit {
    /// The MSP id.
    #[prost(string, tag = "1")]
    pub msp_identifier: String,
    /// The OU.
    #[prost(string, tag = "2")]
    pub organizational_unit_identifier: String,
    /// Hash of the certification chain (without the identity's own certificate).
    #[prost(bytes = "vec", tag = "3")]
    pub certifiers_identifier: Vec<u8>,
}

/// `common.MSPIdentityAnonymity`: 0 nominal, 1 anonymous.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MspIdentityAnonymity {
    /// The anonymity type.
    #[prost(int32, tag = "1")]
    pub anonymity_type: i32,
}

/// `common.CombinedPrincipal`: all of them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CombinedPrincipal {
    /// The principals.
    #[prost(message, repeated, tag = "1")]
    pub principals: Vec<MspPrincipal>,
}

/// The OU fields of `msp.FabricMSPConfig` (`proto::FabricMspConfig` has the rest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FabricMspOus {
    /// OUs an identity must carry one of (when NodeOUs are off).
    #[prost(message, repeated, tag = "7")]
    pub organizational_unit_identifiers: Vec<FabricOuIdentifier>,
    /// Crypto parameters (the identity hash function).
    #[prost(message, optional, tag = "8")]
    pub crypto_config: Option<FabricCryptoConfig>,
    /// NodeOUs: client, peer, admin and orderer OUs.
    #[prost(message, optional, tag = "11")]
    pub fabric_node_ous: Option<FabricNodeOus>,
}

/// `msp.FabricCryptoConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FabricCryptoConfig {
    /// `SHA2` or `SHA3`.
    #[prost(string, tag = "1")]
    pub signature_hash_family: String,
    /// `SHA256` (the default), `SHA384`, `SHA3_256`, `SHA3_384`.
    #[prost(string, tag = "2")]
    pub identity_identifier_hash_function: String,
}

/// `msp.FabricOUIdentifier`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FabricOuIdentifier {
    /// A CA certificate (PEM) of the MSP the OU is bound to; empty: any.
    #[prost(bytes = "vec", tag = "1")]
    pub certificate: Vec<u8>,
    /// The OU.
    #[prost(string, tag = "2")]
    pub organizational_unit_identifier: String,
}

/// `msp.FabricNodeOUs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FabricNodeOus {
    /// NodeOUs on: an identity must carry exactly one of the OUs below.
    #[prost(bool, tag = "1")]
    pub enable: bool,
    /// Client OU.
    #[prost(message, optional, tag = "2")]
    pub client_ou_identifier: Option<FabricOuIdentifier>,
    /// Peer OU.
    #[prost(message, optional, tag = "3")]
    pub peer_ou_identifier: Option<FabricOuIdentifier>,
    /// Admin OU.
    #[prost(message, optional, tag = "4")]
    pub admin_ou_identifier: Option<FabricOuIdentifier>,
    /// Orderer OU.
    #[prost(message, optional, tag = "5")]
    pub orderer_ou_identifier: Option<FabricOuIdentifier>,
}

/// `common.IdentifierHeader` (Fabric 3 BFT): the signer named by consenter id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdentifierHeader {
    /// The consenter id (`Consenter.id`).
    #[prost(uint32, tag = "1")]
    pub identifier: u32,
    /// Replay protection.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
}

/// `common.Orderers`: the `Orderers` value of the `Orderer` group (Fabric 3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Orderers {
    /// The consenters.
    #[prost(message, repeated, tag = "1")]
    pub consenter_mapping: Vec<Consenter>,
}

/// `common.Consenter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Consenter {
    /// The id identifier headers name.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Port.
    #[prost(uint32, tag = "3")]
    pub port: u32,
    /// The consenter's MSP.
    #[prost(string, tag = "4")]
    pub msp_id: String,
    /// Its signing certificate (PEM).
    #[prost(bytes = "vec", tag = "5")]
    pub identity: Vec<u8>,
}

/// `common.Capabilities`: capability names (`V2_0`, `V3_0`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Capabilities {
    /// The capabilities by name (the value is an empty message).
    #[prost(map = "string, message", tag = "1")]
    pub capabilities: HashMap<String, Capability>,
}

/// `common.Capability` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Capability {}

// ---------------------------------------------------------------------------
// MSPs and identities.

/// A signer whose signature verified: its MSP id and certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The MSP id of its `SerializedIdentity`.
    pub msp_id: String,
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// Its subject, for reports.
    pub subject: String,
}

impl Identity {
    /// An identity from an MSP id and a certificate (DER).
    pub fn new(msp_id: &str, der: Vec<u8>) -> Result<Identity, String> {
        let cert = parse_cert(&der).ok_or("the certificate does not parse")?;
        let subject = cert.subject().to_string();
        Ok(Identity { msp_id: msp_id.to_string(), der, subject })
    }

    /// Fabric's identity key (MSP id and SHA-256 of the certificate): one
    /// signature per key counts.
    pub fn key(&self) -> (String, [u8; 32]) {
        (self.msp_id.clone(), Sha256::digest(&self.der).into())
    }
}

/// An OU and the certification chain it is bound to.
#[derive(Debug, Clone)]
struct OuIdentifier {
    ou: String,
    /// SHA-256 of the chain's certificates; empty: any chain.
    certifiers: Vec<u8>,
}

/// An X.509 MSP of the channel (`msp.FabricMSPConfig`).
#[derive(Debug, Clone)]
pub struct Msp {
    /// The MSP id.
    pub id: String,
    roots: Vec<Vec<u8>>,
    intermediates: Vec<Vec<u8>>,
    /// Admin certificates (DER).
    admins: Vec<Vec<u8>>,
    /// Certificate revocation lists (DER).
    crls: Vec<Vec<u8>>,
    ou_identifiers: Vec<OuIdentifier>,
    /// Client, peer, admin, orderer; `None` when NodeOUs are off.
    node_ous: Option<[Option<OuIdentifier>; 4]>,
}

/// Role names as Fabric's policy language writes them.
fn role_name(r: i32) -> &'static str {
    match r {
        role::MEMBER => "member",
        role::ADMIN => "admin",
        role::CLIENT => "client",
        role::PEER => "peer",
        role::ORDERER => "orderer",
        _ => "unknown role",
    }
}

impl Msp {
    /// An MSP from an `MSP` config value (`msp.MSPConfig`).
    pub fn from_config(bytes: &[u8]) -> Result<Msp, String> {
        let msp = proto::MspConfig::decode(bytes).map_err(|e| format!("the MSP config does not decode: {e}"))?;
        if msp.r#type != 0 {
            return Err(format!("MSP type {} is not an X.509 MSP", msp.r#type));
        }
        let fabric = proto::FabricMspConfig::decode(msp.config.as_slice())
            .map_err(|e| format!("the Fabric MSP config does not decode: {e}"))?;
        let ous = FabricMspOus::decode(msp.config.as_slice())
            .map_err(|e| format!("the Fabric MSP config does not decode: {e}"))?;
        if let Some(c) = &ous.crypto_config
            && !matches!(c.identity_identifier_hash_function.as_str(), "" | "SHA256")
        {
            return Err(format!(
                "MSP {}: identity hash function {} is not supported (only SHA256)",
                fabric.name, c.identity_identifier_hash_function
            ));
        }
        let mut m = Msp {
            id: fabric.name,
            roots: fabric.root_certs.iter().flat_map(|c| pem_certs(c)).collect(),
            intermediates: fabric.intermediate_certs.iter().flat_map(|c| pem_certs(c)).collect(),
            admins: fabric.admins.iter().flat_map(|c| pem_certs(c)).collect(),
            crls: fabric.revocation_list.iter().flat_map(|c| pem_blocks(c)).collect(),
            ou_identifiers: Vec::new(),
            node_ous: None,
        };
        m.ou_identifiers = ous.organizational_unit_identifiers.iter().map(|o| m.ou_identifier(o)).collect();
        if let Some(n) = ous.fabric_node_ous
            && n.enable
        {
            let f = |o: &Option<FabricOuIdentifier>| o.as_ref().map(|o| m.ou_identifier(o));
            m.node_ous = Some([
                f(&n.client_ou_identifier),
                f(&n.peer_ou_identifier),
                f(&n.admin_ou_identifier),
                f(&n.orderer_ou_identifier),
            ]);
        }
        Ok(m)
    }

    /// An OU identifier with its certifiers identifier: the SHA-256 of the
    /// named CA certificate's chain (itself, then up to its root).
    fn ou_identifier(&self, o: &FabricOuIdentifier) -> OuIdentifier {
        let certifiers = match pem_certs(&o.certificate).into_iter().next() {
            None => Vec::new(),
            Some(der) => {
                let mut chain = der.clone();
                if !self.roots.contains(&der)
                    && let Some(cert) = parse_cert(&der)
                    && let Some(root) = self
                        .roots
                        .iter()
                        .find(|r| parse_cert(r).is_some_and(|root| issued_by(&cert, &root).unwrap_or(false)))
                {
                    chain.extend_from_slice(root);
                }
                Sha256::digest(&chain).to_vec()
            }
        };
        OuIdentifier { ou: o.organizational_unit_identifier.clone(), certifiers }
    }

    /// Fabric's `Validate`: the certificate is not a CA, chains to a root of
    /// this MSP (directly or through one intermediate, and from a leaf of the
    /// certification tree), and carries the OUs the MSP requires. Returns
    /// the certifiers identifier (SHA-256 of the chain above the identity).
    fn validate(&self, cert: &X509Certificate) -> Result<Vec<u8>, String> {
        if let Ok(Some(bc)) = cert.basic_constraints()
            && bc.value.ca
        {
            return Err("a CA certificate cannot be an identity".into());
        }
        let chain = self.chain(cert)?;
        self.not_revoked(cert, &chain[0])?;
        let certifiers = Sha256::digest(chain.concat()).to_vec();
        let ous: Vec<&str> = cert.subject().iter_organizational_unit().filter_map(|a| a.as_str().ok()).collect();
        if let Some(node_ous) = &self.node_ous {
            let mut count = 0;
            for ou in &ous {
                if let Some(n) = node_ous.iter().flatten().find(|n| n.ou == *ou) {
                    if !n.certifiers.is_empty() && n.certifiers != certifiers {
                        return Err(format!(
                            "its OU {ou:?} is bound to another CA of MSP {} than the one that issued it",
                            self.id
                        ));
                    }
                    count += 1;
                }
            }
            if count != 1 {
                return Err(format!(
                    "with NodeOUs on, an identity of MSP {} must carry exactly one of the client, peer, admin and \
                     orderer OUs; its OUs are {ous:?}",
                    self.id
                ));
            }
        } else if !self.ou_identifiers.is_empty()
            && !self.ou_identifiers.iter().any(|o| ous.contains(&o.ou.as_str()) && o.certifiers == certifiers)
        {
            return Err(format!("none of its OUs {ous:?} is one MSP {} recognises", self.id));
        }
        Ok(certifiers)
    }

    /// Fabric's revocation check: a CRL of this MSP whose authority key
    /// identifier is the issuing CA's subject key identifier, that lists the
    /// certificate's serial number and that the issuing CA signed.
    fn not_revoked(&self, cert: &X509Certificate, issuer_der: &[u8]) -> Result<(), String> {
        if self.crls.is_empty() {
            return Ok(());
        }
        let issuer = parse_cert(issuer_der).ok_or("the issuing CA's certificate does not parse")?;
        let ski = issuer.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
        let Some(ski) = ski else {
            return Err(format!(
                "the issuing CA {} has no subject key identifier to match CRLs with",
                issuer.subject()
            ));
        };
        for der in &self.crls {
            let Ok((_, crl)) = x509_parser::parse_x509_crl(der) else { continue };
            let aki = crl.extensions().iter().find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
                _ => None,
            });
            if aki != Some(ski) || !crl.iter_revoked_certificates().any(|r| *r.serial() == cert.serial) {
                continue;
            }
            // Fabric skips a CRL the issuing CA did not sign.
            let signed = VerifyingKey::from_sec1_bytes(issuer.public_key().subject_public_key.as_ref())
                .ok()
                .zip(Signature::from_der(crl.signature_value.as_ref()).ok())
                .is_some_and(|(k, sig)| k.verify(crl.tbs_cert_list.as_ref(), &sig).is_ok());
            if signed {
                return Err(format!(
                    "its certificate (serial {}) has been revoked by MSP {}",
                    cert.raw_serial_as_string(),
                    self.id
                ));
            }
        }
        Ok(())
    }

    /// The certificates above `cert` (DER), up to a root.
    fn chain(&self, cert: &X509Certificate) -> Result<Vec<Vec<u8>>, String> {
        let roots: Vec<(&Vec<u8>, X509Certificate)> =
            self.roots.iter().filter_map(|d| Some((d, parse_cert(d)?))).collect();
        let mids: Vec<(&Vec<u8>, X509Certificate)> =
            self.intermediates.iter().filter_map(|d| Some((d, parse_cert(d)?))).collect();
        for (der, root) in &roots {
            if issued_by(cert, root)? {
                // Fabric: the issuer must be a leaf of the certification tree.
                for (_, mid) in &mids {
                    if issued_by(mid, root)? {
                        return Err(format!(
                            "it was issued by root CA {} of MSP {}, which has intermediate CAs (Fabric accepts \
                             identities from the leaves of the certification tree only)",
                            root.subject(),
                            self.id
                        ));
                    }
                }
                return Ok(vec![(*der).clone()]);
            }
        }
        for (mid_der, mid) in &mids {
            if issued_by(cert, mid)? {
                for (root_der, root) in &roots {
                    if issued_by(mid, root)? {
                        return Ok(vec![(*mid_der).clone(), (*root_der).clone()]);
                    }
                }
            }
        }
        Err(format!("it was not issued by a CA of MSP {}", self.id))
    }

    /// Whether the certificate carries the NodeOU of `role` (name only, as
    /// Fabric's `hasOURole`).
    fn has_node_ou(&self, cert: &X509Certificate, r: i32) -> Result<(), String> {
        let Some(node_ous) = &self.node_ous else {
            return Err(format!("NodeOUs are not enabled in MSP {}, so it has no {} role", self.id, role_name(r)));
        };
        let slot = match r {
            role::CLIENT => 0,
            role::PEER => 1,
            role::ADMIN => 2,
            role::ORDERER => 3,
            _ => return Err(format!("role {r} has no NodeOU")),
        };
        let Some(ou) = &node_ous[slot] else {
            return Err(format!("MSP {} defines no {} OU", self.id, role_name(r)));
        };
        if cert.subject().iter_organizational_unit().any(|a| a.as_str() == Ok(ou.ou.as_str())) {
            Ok(())
        } else {
            Err(format!("the certificate does not carry the {} OU {:?} of MSP {}", role_name(r), ou.ou, self.id))
        }
    }

    /// Fabric's `SatisfiesPrincipal` for an identity of this MSP.
    fn satisfies(&self, id: &Identity, principal: &MspPrincipal) -> Result<(), String> {
        self.satisfies_nested(id, principal, 0)
    }

    /// [`Self::satisfies`] for a principal `depth` combined principals
    /// down (each level is decoded from bytes, out of prost's own nesting
    /// limit, so a crafted config is cut off here instead of overflowing
    /// the stack).
    fn satisfies_nested(&self, id: &Identity, principal: &MspPrincipal, depth: usize) -> Result<(), String> {
        let cert = parse_cert(&id.der).ok_or("the certificate does not parse")?;
        let p = &principal.principal;
        match principal.principal_classification {
            classification::COMBINED => {
                if depth >= MAX_COMBINED_DEPTH {
                    return Err(format!("combined principals nest deeper than {MAX_COMBINED_DEPTH} levels"));
                }
                let c = CombinedPrincipal::decode(p.as_slice())
                    .map_err(|e| format!("the combined principal does not decode: {e}"))?;
                if c.principals.is_empty() {
                    return Err("the combined principal is empty".into());
                }
                c.principals.iter().try_for_each(|p| self.satisfies_nested(id, p, depth + 1))
            }
            classification::ROLE => {
                let r =
                    MspRole::decode(p.as_slice()).map_err(|e| format!("the role principal does not decode: {e}"))?;
                if r.msp_identifier != self.id {
                    return Err(format!(
                        "the principal names MSP {}, the signer is of MSP {}",
                        r.msp_identifier, self.id
                    ));
                }
                match r.role {
                    role::MEMBER => self.validate(&cert).map(drop),
                    role::ADMIN => {
                        if self.admins.contains(&id.der) {
                            return Ok(());
                        }
                        if self.node_ous.is_none() {
                            return Err(format!("the certificate is not one of MSP {}'s admin certificates", self.id));
                        }
                        self.validate(&cert)?;
                        self.has_node_ou(&cert, role::ADMIN)
                    }
                    role::CLIENT | role::PEER | role::ORDERER => {
                        if r.role == role::ORDERER && self.node_ous.is_none() {
                            return Err(format!(
                                "NodeOUs are not enabled in MSP {}, so it has no orderer role",
                                self.id
                            ));
                        }
                        self.validate(&cert)?;
                        self.has_node_ou(&cert, r.role)
                    }
                    other => Err(format!("invalid MSP role {other}")),
                }
            }
            classification::IDENTITY => {
                let s = proto::SerializedIdentity::decode(p.as_slice())
                    .map_err(|e| format!("the identity principal does not decode: {e}"))?;
                if s.mspid != self.id {
                    return Err(format!("the principal names MSP {}, the signer is of MSP {}", s.mspid, self.id));
                }
                let der = pem_certs(&s.id_bytes).into_iter().next().ok_or("the identity principal is not PEM")?;
                if der != id.der {
                    return Err("the signer is not the identity the principal names".into());
                }
                self.validate(&cert).map(drop)
            }
            classification::ORGANIZATION_UNIT => {
                let ou = OrganizationUnit::decode(p.as_slice())
                    .map_err(|e| format!("the OU principal does not decode: {e}"))?;
                if ou.msp_identifier != self.id {
                    return Err(format!(
                        "the principal names MSP {}, the signer is of MSP {}",
                        ou.msp_identifier, self.id
                    ));
                }
                let certifiers = self.validate(&cert)?;
                let has = cert
                    .subject()
                    .iter_organizational_unit()
                    .any(|a| a.as_str() == Ok(ou.organizational_unit_identifier.as_str()));
                if has && certifiers == ou.certifiers_identifier {
                    Ok(())
                } else {
                    Err(format!(
                        "the certificate does not carry OU {:?} from the CA chain the principal names",
                        ou.organizational_unit_identifier
                    ))
                }
            }
            classification::ANONYMITY => {
                let a = MspIdentityAnonymity::decode(p.as_slice())
                    .map_err(|e| format!("the anonymity principal does not decode: {e}"))?;
                match a.anonymity_type {
                    0 => Ok(()),
                    1 => Err("the principal requires an anonymous identity, which an X.509 MSP has not".into()),
                    t => Err(format!("unknown anonymity type {t}")),
                }
            }
            other => Err(format!("invalid principal type {other}")),
        }
    }
}

/// A principal as Fabric's policy language writes it (`'OrdererMSP.member'`).
fn describe_principal(p: &MspPrincipal) -> String {
    describe_nested(p, 0)
}

/// Combined principals nested deeper than this are refused.
const MAX_COMBINED_DEPTH: usize = 32;

fn describe_nested(p: &MspPrincipal, depth: usize) -> String {
    match p.principal_classification {
        classification::ROLE => match MspRole::decode(p.principal.as_slice()) {
            Ok(r) => format!("'{}.{}'", r.msp_identifier, role_name(r.role)),
            Err(_) => "an undecodable role".into(),
        },
        classification::ORGANIZATION_UNIT => match OrganizationUnit::decode(p.principal.as_slice()) {
            Ok(o) => format!("'{}' OU {:?}", o.msp_identifier, o.organizational_unit_identifier),
            Err(_) => "an undecodable OU".into(),
        },
        classification::IDENTITY => match proto::SerializedIdentity::decode(p.principal.as_slice()) {
            Ok(s) => {
                let subject = pem_certs(&s.id_bytes)
                    .first()
                    .and_then(|d| parse_cert(d).map(|c| c.subject().to_string()))
                    .unwrap_or_else(|| "?".into());
                format!("identity {subject} of {}", s.mspid)
            }
            Err(_) => "an undecodable identity".into(),
        },
        classification::ANONYMITY => "an anonymity principal".into(),
        classification::COMBINED if depth >= MAX_COMBINED_DEPTH => "a combined principal nested too deep".into(),
        classification::COMBINED => match CombinedPrincipal::decode(p.principal.as_slice()) {
            Ok(c) => format!(
                "all of ({})",
                c.principals.iter().map(|p| describe_nested(p, depth + 1)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => "an undecodable combined principal".into(),
        },
        other => format!("a principal of type {other}"),
    }
}

/// The contents of every PEM block in `bytes` (certificates or CRLs).
fn pem_blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(bytes).filter_map(|p| p.ok()).map(|p| p.contents).collect()
}

// ---------------------------------------------------------------------------
// The policy tree.

/// A decoded policy.
#[derive(Debug, Clone)]
pub enum Policy {
    /// `SIGNATURE`.
    Signature(SignaturePolicyEnvelope),
    /// `IMPLICIT_META`.
    ImplicitMeta(ImplicitMetaPolicy),
    /// A type coffer cannot evaluate, or bytes that do not decode: why.
    Unsupported(String),
}

impl Policy {
    fn from_proto(p: &ConfigPolicy) -> Policy {
        let Some(p) = &p.policy else { return Policy::Unsupported("the config policy holds no policy".into()) };
        match p.r#type {
            POLICY_SIGNATURE => match SignaturePolicyEnvelope::decode(p.value.as_slice()) {
                Ok(e) if e.version != 0 => {
                    Policy::Unsupported(format!("signature policy version {} (Fabric evaluates version 0)", e.version))
                }
                Ok(e) => Policy::Signature(e),
                Err(e) => Policy::Unsupported(format!("the signature policy does not decode: {e}")),
            },
            POLICY_IMPLICIT_META => match ImplicitMetaPolicy::decode(p.value.as_slice()) {
                Ok(m) => Policy::ImplicitMeta(m),
                Err(e) => Policy::Unsupported(format!("the implicit meta policy does not decode: {e}")),
            },
            t => Policy::Unsupported(format!(
                "policy type {t} is not one coffer evaluates (1 signature, 3 implicit meta)"
            )),
        }
    }

    /// The policy in Fabric's words: `ImplicitMeta ANY Writers`, `OR('OrdererMSP.member')`.
    pub fn describe(&self) -> String {
        match self {
            Policy::Signature(e) => match &e.rule {
                Some(r) => describe_rule(r, &e.identities),
                None => "an empty signature policy".into(),
            },
            Policy::ImplicitMeta(m) => {
                let rule = match m.rule {
                    implicit_rule::ANY => "ANY",
                    implicit_rule::ALL => "ALL",
                    implicit_rule::MAJORITY => "MAJORITY",
                    _ => "UNKNOWN",
                };
                format!("ImplicitMeta {rule} {}", m.sub_policy)
            }
            Policy::Unsupported(why) => format!("unsupported ({why})"),
        }
    }
}

fn describe_rule(r: &SignaturePolicy, ids: &[MspPrincipal]) -> String {
    match &r.r#type {
        Some(SignaturePolicyType::SignedBy(i)) => match usize::try_from(*i).ok().and_then(|i| ids.get(i)) {
            Some(p) => describe_principal(p),
            None => format!("signed_by({i}) out of range"),
        },
        Some(SignaturePolicyType::NOutOf(n)) => {
            let parts: Vec<String> = n.rules.iter().map(|r| describe_rule(r, ids)).collect();
            let list = parts.join(", ");
            if n.n == 1 {
                format!("OR({list})")
            } else if n.n as usize == parts.len() {
                format!("AND({list})")
            } else {
                format!("OutOf({}, {list})", n.n)
            }
        }
        None => "an empty rule".into(),
    }
}

/// A config group's policies and sub-groups.
#[derive(Debug, Clone, Default)]
pub struct PolicyGroup {
    /// Policies by name.
    pub policies: BTreeMap<String, Policy>,
    /// Sub-groups by name.
    pub groups: BTreeMap<String, PolicyGroup>,
}

impl PolicyGroup {
    fn from_proto(g: &PolicyConfigGroup) -> PolicyGroup {
        PolicyGroup {
            policies: g.policies.iter().map(|(k, v)| (k.clone(), Policy::from_proto(v))).collect(),
            groups: g.groups.iter().map(|(k, v)| (k.clone(), PolicyGroup::from_proto(v))).collect(),
        }
    }
}

/// The outcome of evaluating a policy against a signature set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Whether the policy is satisfied.
    pub satisfied: bool,
    /// Why not (empty when satisfied): the unmet rule, then why signers
    /// did not satisfy the principals of their MSP.
    pub reason: String,
}

/// What the channel config in force says about block signatures.
#[derive(Debug, Clone)]
pub struct ChannelPolicies {
    /// `/Channel`.
    root: PolicyGroup,
    /// Every MSP of the config (orderer and application organisations), or
    /// why it cannot be used.
    msps: BTreeMap<String, Result<Msp, String>>,
    /// The channel has the `V3_0` capability: signatures may name their
    /// signer by consenter id (`IdentifierHeader`).
    pub bft: bool,
    /// The `Orderers` value of the `Orderer` group (Fabric 3).
    pub consenters: Vec<Consenter>,
}

/// Collects every `MSP` value of a group tree.
fn collect_msps(g: &PolicyConfigGroup, out: &mut BTreeMap<String, Result<Msp, String>>) {
    for sub in g.groups.values() {
        collect_msps(sub, out);
    }
    if let Some(v) = g.values.get("MSP") {
        match Msp::from_config(&v.value) {
            Ok(m) => {
                out.insert(m.id.clone(), Ok(m));
            }
            Err(e) => {
                // The MSP id, if the outer layers decode, to say which one.
                let name = proto::MspConfig::decode(v.value.as_slice())
                    .ok()
                    .and_then(|m| proto::FabricMspConfig::decode(m.config.as_slice()).ok())
                    .map(|f| f.name)
                    .unwrap_or_default();
                out.entry(name).or_insert(Err(e));
            }
        }
    }
}

impl ChannelPolicies {
    /// The policies of a config transaction's `ConfigEnvelope` (the payload
    /// data of a config block's one envelope).
    pub fn from_config_envelope(bytes: &[u8]) -> Result<ChannelPolicies, String> {
        let env = PolicyConfigEnvelope::decode(bytes).map_err(|e| format!("the config does not decode: {e}"))?;
        let root = env.config.and_then(|c| c.channel_group).ok_or("the config has no channel group")?;
        let mut msps = BTreeMap::new();
        collect_msps(&root, &mut msps);
        let bft = root
            .values
            .get("Capabilities")
            .and_then(|v| Capabilities::decode(v.value.as_slice()).ok())
            .is_some_and(|c| c.capabilities.contains_key("V3_0"));
        let consenters = root
            .groups
            .get("Orderer")
            .and_then(|o| o.values.get("Orderers"))
            .and_then(|v| Orderers::decode(v.value.as_slice()).ok())
            .map(|o| o.consenter_mapping)
            .unwrap_or_default();
        Ok(ChannelPolicies { root: PolicyGroup::from_proto(&root), msps, bft, consenters })
    }

    /// `/Channel/Orderer/BlockValidation`, if the config has one.
    pub fn block_validation(&self) -> Option<&Policy> {
        self.root.groups.get("Orderer")?.policies.get("BlockValidation")
    }

    /// Whether the channel has an MSP of this id (Fabric drops signatures
    /// by identities no MSP of the channel can deserialize).
    pub fn msp(&self, id: &str) -> Option<&Result<Msp, String>> {
        self.msps.get(id)
    }

    /// The consenter a BFT identifier header names.
    pub fn consenter(&self, id: u32) -> Option<&Consenter> {
        self.consenters.iter().find(|c| c.id == id)
    }

    /// Evaluates `/Channel/Orderer/BlockValidation` against the signers of
    /// verified signatures; an identity that signed twice counts once (as in
    /// Fabric's `SignatureSetToValidIdentities`). `None` when the config has
    /// no such policy.
    pub fn evaluate_block_validation(&self, signers: &[Identity]) -> Option<Evaluation> {
        let orderer = self.root.groups.get("Orderer")?;
        let policy = orderer.policies.get("BlockValidation")?;
        let mut seen = std::collections::BTreeSet::new();
        let signers: Vec<Identity> = signers.iter().filter(|s| seen.insert(s.key())).cloned().collect();
        let signers = signers.as_slice();
        let mut notes = Vec::new();
        let result = self.evaluate(policy, orderer, "Orderer", signers, &mut notes);
        Some(match result {
            Ok(()) => Evaluation { satisfied: true, reason: String::new() },
            Err(why) => {
                let mut reason = format!("the BlockValidation policy ({}) is not satisfied: {why}", policy.describe());
                if signers.is_empty() {
                    reason.push_str("; no signature both verifies and comes from an MSP of the channel");
                }
                for n in notes {
                    reason.push_str("; ");
                    reason.push_str(&n);
                }
                Evaluation { satisfied: false, reason }
            }
        })
    }

    /// Evaluates `policy`, defined in `group` (at `path`), against `signers`.
    pub fn evaluate(
        &self,
        policy: &Policy,
        group: &PolicyGroup,
        path: &str,
        signers: &[Identity],
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        match policy {
            Policy::Unsupported(why) => Err(format!("the policy cannot be evaluated: {why}")),
            Policy::Signature(env) => {
                let Some(rule) = &env.rule else { return Err("the signature policy has no rule".into()) };
                let mut used = vec![false; signers.len()];
                if self.eval_rule(rule, &env.identities, signers, &mut used, notes)? {
                    Ok(())
                } else {
                    Err(format!("{} is not satisfied", describe_rule(rule, &env.identities)))
                }
            }
            Policy::ImplicitMeta(m) => {
                let n = group.groups.len();
                let threshold = match (n, m.rule) {
                    (0, _) => 0,
                    (_, implicit_rule::ANY) => 1,
                    (_, implicit_rule::ALL) => n,
                    (_, implicit_rule::MAJORITY) => n / 2 + 1,
                    (_, r) => return Err(format!("implicit meta rule {r} is unknown")),
                };
                let mut satisfied = 0;
                let mut failed = Vec::new();
                for (name, sub) in &group.groups {
                    let sub_path = format!("{path}/{name}");
                    let r = match sub.policies.get(&m.sub_policy) {
                        // Fabric: a missing sub-policy is a reject-all policy.
                        None => Err(format!("{sub_path} has no {} policy", m.sub_policy)),
                        Some(p) => self.evaluate(p, sub, &sub_path, signers, notes).map_err(|e| format!("{name}: {e}")),
                    };
                    match r {
                        Ok(()) => satisfied += 1,
                        Err(e) => failed.push(e),
                    }
                }
                if satisfied >= threshold {
                    return Ok(());
                }
                let what = if path == "Orderer" {
                    "orderer organisations'".to_string()
                } else {
                    format!("sub-groups of {path}:")
                };
                Err(format!(
                    "{satisfied} of the {n} {what} {} policies are satisfied, {threshold} needed ({})",
                    m.sub_policy,
                    failed.join("; ")
                ))
            }
        }
    }

    /// cauthdsl: `n_out_of` counts the rules satisfied, each with its own
    /// copy of the used flags kept only when the rule is satisfied;
    /// `signed_by` takes the first unused signer that satisfies the principal.
    fn eval_rule(
        &self,
        rule: &SignaturePolicy,
        principals: &[MspPrincipal],
        signers: &[Identity],
        used: &mut [bool],
        notes: &mut Vec<String>,
    ) -> Result<bool, String> {
        match &rule.r#type {
            None => Err("a signature policy rule is empty".into()),
            Some(SignaturePolicyType::NOutOf(n)) => {
                let mut verified = 0;
                let mut trial = used.to_vec();
                for r in &n.rules {
                    trial.copy_from_slice(used);
                    if self.eval_rule(r, principals, signers, &mut trial, notes)? {
                        verified += 1;
                        used.copy_from_slice(&trial);
                    }
                }
                Ok(verified >= n.n)
            }
            Some(SignaturePolicyType::SignedBy(i)) => {
                let principal = usize::try_from(*i)
                    .ok()
                    .and_then(|i| principals.get(i))
                    .ok_or_else(|| format!("signed_by index {i} is out of range ({} identities)", principals.len()))?;
                for (k, s) in signers.iter().enumerate() {
                    if used[k] {
                        continue;
                    }
                    let r = match self.msps.get(&s.msp_id) {
                        Some(Ok(msp)) => msp.satisfies(s, principal),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(format!("MSP {} is not in the channel config", s.msp_id)),
                    };
                    match r {
                        Ok(()) => {
                            used[k] = true;
                            return Ok(true);
                        }
                        Err(e) => {
                            // Only the principals of the signer's own MSP say
                            // something useful about it.
                            if principal_msp(principal).as_deref() == Some(s.msp_id.as_str()) {
                                let note = format!(
                                    "signature by {} ({}) is not {}: {e}",
                                    s.subject,
                                    s.msp_id,
                                    describe_principal(principal)
                                );
                                if !notes.contains(&note) {
                                    notes.push(note);
                                }
                            }
                        }
                    }
                }
                Ok(false)
            }
        }
    }
}

/// The MSP a principal names, if it names one.
fn principal_msp(p: &MspPrincipal) -> Option<String> {
    principal_msp_nested(p, 0)
}

fn principal_msp_nested(p: &MspPrincipal, depth: usize) -> Option<String> {
    match p.principal_classification {
        classification::COMBINED if depth >= MAX_COMBINED_DEPTH => None,
        classification::ROLE => MspRole::decode(p.principal.as_slice()).ok().map(|r| r.msp_identifier),
        classification::ORGANIZATION_UNIT => {
            OrganizationUnit::decode(p.principal.as_slice()).ok().map(|o| o.msp_identifier)
        }
        classification::IDENTITY => proto::SerializedIdentity::decode(p.principal.as_slice()).ok().map(|s| s.mspid),
        classification::COMBINED => CombinedPrincipal::decode(p.principal.as_slice())
            .ok()
            .and_then(|c| c.principals.first().and_then(|p| principal_msp_nested(p, depth + 1))),
        _ => None,
    }
}

/// Channel configs, MSPs and certificates for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    /// A CA of an MSP, and what it issues.
    pub struct Ca {
        params: CertificateParams,
        key: KeyPair,
        /// The CA certificate (PEM).
        pub pem: String,
    }

    /// A signing identity: its MSP, certificate and key.
    pub struct Signer {
        /// The MSP id.
        pub msp_id: String,
        /// The certificate (PEM).
        pub pem: String,
        /// Its key (PKCS#8 DER).
        pub key_der: Vec<u8>,
    }

    impl Signer {
        /// The verified identity the evaluator sees.
        pub fn identity(&self) -> Identity {
            Identity::new(&self.msp_id, pem_certs(self.pem.as_bytes()).remove(0)).unwrap()
        }
    }

    impl Ca {
        /// A self-signed root CA.
        pub fn root(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, format!("ca.{name}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca { params, key, pem }
        }

        /// An identity of `msp_id` with these OUs.
        pub fn issue(&self, msp_id: &str, cn: &str, ous: &[&str]) -> Signer {
            self.issue_serial(msp_id, cn, ous, None)
        }

        /// An identity with this serial number.
        pub fn issue_serial(&self, msp_id: &str, cn: &str, ous: &[&str], serial: Option<u64>) -> Signer {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.serial_number = serial.map(rcgen::SerialNumber::from);
            params.distinguished_name.push(DnType::CommonName, cn);
            for ou in ous {
                params.distinguished_name.push(DnType::OrganizationalUnitName, *ou);
            }
            let issuer = Issuer::from_params(&self.params, &self.key);
            let pem = params.signed_by(&key, &issuer).unwrap().pem();
            Signer { msp_id: msp_id.into(), pem, key_der: key.serialize_der() }
        }

        /// A CRL (PEM) revoking these serial numbers.
        pub fn crl(&self, serials: &[u64]) -> String {
            let params = rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(2030, 1, 1),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(*s),
                        revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            };
            params.signed_by(&Issuer::from_params(&self.params, &self.key)).unwrap().pem().unwrap()
        }
    }

    /// An `MSP` config value: an X.509 MSP with one root CA, and NodeOUs
    /// (client, peer, admin, orderer) when `node_ous`.
    pub fn msp_value(msp_id: &str, ca: &Ca, node_ous: bool) -> proto::ConfigValue {
        msp_value_with_crls(msp_id, ca, node_ous, vec![])
    }

    /// The same with these CRLs (PEM).
    pub fn msp_value_with_crls(msp_id: &str, ca: &Ca, node_ous: bool, crls: Vec<String>) -> proto::ConfigValue {
        let fabric = proto::FabricMspConfig {
            name: msp_id.into(),
            root_certs: vec![ca.pem.clone().into_bytes()],
            revocation_list: crls.into_iter().map(String::into_bytes).collect(),
            ..Default::default()
        };
        let ou = |name: &str| {
            Some(FabricOuIdentifier { certificate: Vec::new(), organizational_unit_identifier: name.into() })
        };
        let ous = FabricMspOus {
            fabric_node_ous: node_ous.then(|| FabricNodeOus {
                enable: true,
                client_ou_identifier: ou("client"),
                peer_ou_identifier: ou("peer"),
                admin_ou_identifier: ou("admin"),
                orderer_ou_identifier: ou("orderer"),
            }),
            ..Default::default()
        };
        // Two encodings of the same message concatenated merge into one.
        let config = [fabric.encode_to_vec(), ous.encode_to_vec()].concat();
        let msp = proto::MspConfig { r#type: 0, config };
        proto::ConfigValue { version: 0, value: msp.encode_to_vec(), mod_policy: String::new() }
    }

    /// A `ROLE` principal.
    pub fn role_principal(msp_id: &str, r: i32) -> MspPrincipal {
        MspPrincipal {
            principal_classification: classification::ROLE,
            principal: MspRole { msp_identifier: msp_id.into(), role: r }.encode_to_vec(),
        }
    }

    /// `signed_by(i)`.
    pub fn signed_by(i: i32) -> SignaturePolicy {
        SignaturePolicy { r#type: Some(SignaturePolicyType::SignedBy(i)) }
    }

    /// `n_out_of(n, rules)`.
    pub fn n_out_of(n: i32, rules: Vec<SignaturePolicy>) -> SignaturePolicy {
        SignaturePolicy { r#type: Some(SignaturePolicyType::NOutOf(NOutOf { n, rules })) }
    }

    /// A config policy holding a signature policy.
    pub fn signature_policy(rule: SignaturePolicy, identities: Vec<MspPrincipal>) -> ConfigPolicy {
        let env = SignaturePolicyEnvelope { version: 0, rule: Some(rule), identities };
        ConfigPolicy {
            version: 0,
            policy: Some(PolicyProto { r#type: POLICY_SIGNATURE, value: env.encode_to_vec() }),
            mod_policy: String::new(),
        }
    }

    /// A config policy holding an implicit meta policy.
    pub fn implicit_meta(rule: i32, sub_policy: &str) -> ConfigPolicy {
        let m = ImplicitMetaPolicy { sub_policy: sub_policy.into(), rule };
        ConfigPolicy {
            version: 0,
            policy: Some(PolicyProto { r#type: POLICY_IMPLICIT_META, value: m.encode_to_vec() }),
            mod_policy: String::new(),
        }
    }

    /// An orderer organisation group: its MSP and a `Writers` policy.
    pub fn org_group(msp: proto::ConfigValue, writers: ConfigPolicy) -> PolicyConfigGroup {
        PolicyConfigGroup {
            values: [("MSP".to_string(), msp)].into(),
            policies: [("Writers".to_string(), writers)].into(),
            ..Default::default()
        }
    }

    /// A `ConfigEnvelope` (bytes) whose `Orderer` group has these
    /// organisations and `BlockValidation` policy, plus root values.
    pub fn config_envelope(
        orgs: Vec<(&str, PolicyConfigGroup)>,
        block_validation: Option<ConfigPolicy>,
        orderer_values: Vec<(&str, proto::ConfigValue)>,
        root_values: Vec<(&str, proto::ConfigValue)>,
    ) -> Vec<u8> {
        let orderer = PolicyConfigGroup {
            groups: orgs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            values: orderer_values.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            policies: block_validation.into_iter().map(|p| ("BlockValidation".to_string(), p)).collect(),
        };
        let root = PolicyConfigGroup {
            groups: [("Orderer".to_string(), orderer)].into(),
            values: root_values.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        };
        PolicyConfigEnvelope { config: Some(PolicyConfig { channel_group: Some(root) }) }.encode_to_vec()
    }

    /// Policies of `orgs` (each `(msp id, CA, NodeOUs)`, Writers: its
    /// members) under a BlockValidation policy.
    pub fn channel(orgs: &[(&str, &Ca, bool)], block_validation: ConfigPolicy) -> ChannelPolicies {
        let groups = orgs
            .iter()
            .map(|(id, ca, nous)| {
                let writers = signature_policy(n_out_of(1, vec![signed_by(0)]), vec![role_principal(id, role::MEMBER)]);
                (*id, org_group(msp_value(id, ca, *nous), writers))
            })
            .collect();
        ChannelPolicies::from_config_envelope(&config_envelope(groups, Some(block_validation), vec![], vec![])).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn eval(p: &ChannelPolicies, signers: &[&Signer]) -> Evaluation {
        let ids: Vec<Identity> = signers.iter().map(|s| s.identity()).collect();
        p.evaluate_block_validation(&ids).unwrap()
    }

    #[test]
    fn combined_principals_nested_beyond_the_limit_are_refused_without_overflowing_the_stack() {
        // 5,000 levels, each decoded from bytes: a crafted config.
        let mut p = role_principal("Org1MSP", role::MEMBER);
        for _ in 0..5_000 {
            let c = CombinedPrincipal { principals: vec![p] };
            p = MspPrincipal { principal_classification: classification::COMBINED, principal: c.encode_to_vec() };
        }
        assert!(describe_principal(&p).contains("a combined principal nested too deep"));
        let ca = Ca::root("org1");
        let bv = signature_policy(signed_by(0), vec![p]);
        let policies = channel(&[("Org1MSP", &ca, false)], bv);
        let e = eval(&policies, &[&ca.issue("Org1MSP", "orderer1", &[])]);
        assert!(!e.satisfied);
        assert!(e.reason.contains("a combined principal nested too deep"), "{}", e.reason);
    }

    #[test]
    fn two_of_two_organisations_with_one_signature_is_not_satisfied() {
        let (ca1, ca2) = (Ca::root("org1"), Ca::root("org2"));
        let rule = n_out_of(2, vec![signed_by(0), signed_by(1)]);
        let bv = signature_policy(
            rule,
            vec![role_principal("Org1MSP", role::MEMBER), role_principal("Org2MSP", role::MEMBER)],
        );
        let p = channel(&[("Org1MSP", &ca1, false), ("Org2MSP", &ca2, false)], bv);
        let (o1, o2) = (ca1.issue("Org1MSP", "orderer1", &[]), ca2.issue("Org2MSP", "orderer2", &[]));
        let e = eval(&p, &[&o1]);
        assert!(!e.satisfied);
        assert_eq!(
            e.reason,
            "the BlockValidation policy (AND('Org1MSP.member', 'Org2MSP.member')) is not satisfied: \
             AND('Org1MSP.member', 'Org2MSP.member') is not satisfied"
        );
        assert!(eval(&p, &[&o1, &o2]).satisfied);
        assert!(eval(&p, &[&o2, &o1]).satisfied);
    }

    #[test]
    fn implicit_meta_any_majority_and_all_count_organisations() {
        let cas = [Ca::root("a"), Ca::root("b"), Ca::root("c")];
        let ids = ["AMSP", "BMSP", "CMSP"];
        let orgs: Vec<(&str, &Ca, bool)> = ids.iter().zip(&cas).map(|(i, c)| (*i, c, false)).collect();
        let s: Vec<Signer> = ids.iter().zip(&cas).map(|(i, c)| c.issue(i, "orderer", &[])).collect();

        let any = channel(&orgs, implicit_meta(implicit_rule::ANY, "Writers"));
        assert!(eval(&any, &[&s[2]]).satisfied);
        let e = eval(&any, &[]);
        assert!(
            e.reason.starts_with(
                "the BlockValidation policy (ImplicitMeta ANY Writers) is not satisfied: 0 of the 3 orderer \
             organisations' Writers policies are satisfied, 1 needed (AMSP: OR('AMSP.member') is not satisfied;"
            ),
            "{}",
            e.reason
        );

        let majority = channel(&orgs, implicit_meta(implicit_rule::MAJORITY, "Writers"));
        let e = eval(&majority, &[&s[0]]);
        assert!(!e.satisfied);
        assert!(
            e.reason.contains("1 of the 3 orderer organisations' Writers policies are satisfied, 2 needed"),
            "{}",
            e.reason
        );
        assert!(eval(&majority, &[&s[0], &s[2]]).satisfied);

        let all = channel(&orgs, implicit_meta(implicit_rule::ALL, "Writers"));
        let e = eval(&all, &[&s[0], &s[1]]);
        assert!(
            e.reason.contains("2 of the 3 orderer organisations' Writers policies are satisfied, 3 needed (CMSP:"),
            "{}",
            e.reason
        );
        assert!(eval(&all, &[&s[0], &s[1], &s[2]]).satisfied);
    }

    #[test]
    fn an_organisation_without_the_sub_policy_counts_as_unsatisfied() {
        let (ca1, ca2) = (Ca::root("org1"), Ca::root("org2"));
        let mut groups = vec![];
        let w = signature_policy(n_out_of(1, vec![signed_by(0)]), vec![role_principal("Org1MSP", role::MEMBER)]);
        groups.push(("Org1", org_group(msp_value("Org1MSP", &ca1, false), w)));
        let mut g2 = org_group(msp_value("Org2MSP", &ca2, false), implicit_meta(0, "x"));
        g2.policies.clear();
        groups.push(("Org2", g2));
        let bytes = config_envelope(groups, Some(implicit_meta(implicit_rule::ALL, "Writers")), vec![], vec![]);
        let p = ChannelPolicies::from_config_envelope(&bytes).unwrap();
        let e = eval(&p, &[&ca1.issue("Org1MSP", "o", &[])]);
        assert!(e.reason.contains("Orderer/Org2 has no Writers policy"), "{}", e.reason);
    }

    #[test]
    fn one_identity_satisfies_one_signed_by_only() {
        let ca = Ca::root("org1");
        // Two signatures of Org1MSP members required.
        let rule = n_out_of(2, vec![signed_by(0), signed_by(0)]);
        let p =
            channel(&[("Org1MSP", &ca, false)], signature_policy(rule, vec![role_principal("Org1MSP", role::MEMBER)]));
        let (a, b) = (ca.issue("Org1MSP", "orderer1", &[]), ca.issue("Org1MSP", "orderer2", &[]));
        assert!(!eval(&p, &[&a]).satisfied);
        // The same identity twice counts once, as in Fabric.
        assert!(!eval(&p, &[&a, &a]).satisfied);
        assert!(eval(&p, &[&a, &b]).satisfied);
    }

    #[test]
    fn the_orderer_role_needs_the_orderer_node_ou() {
        let ca = Ca::root("ord");
        let bv = signature_policy(n_out_of(1, vec![signed_by(0)]), vec![role_principal("OrdererMSP", role::ORDERER)]);
        let p = channel(&[("OrdererMSP", &ca, true)], bv.clone());
        let orderer = ca.issue("OrdererMSP", "orderer0", &["orderer"]);
        let peer = ca.issue("OrdererMSP", "peer0", &["peer"]);
        let none = ca.issue("OrdererMSP", "nobody", &[]);
        assert!(eval(&p, &[&orderer]).satisfied);
        let e = eval(&p, &[&peer]);
        assert!(
            e.reason.contains("signature by CN=peer0, OU=peer (OrdererMSP) is not 'OrdererMSP.orderer': the certificate does not carry the orderer OU \"orderer\""),
            "{}",
            e.reason
        );
        // Without any NodeOU the identity is not even valid.
        let e = eval(&p, &[&none]);
        assert!(e.reason.contains("must carry exactly one of the client, peer, admin and orderer OUs"), "{}", e.reason);
        // Two NodeOUs at once are not valid either.
        assert!(!eval(&p, &[&ca.issue("OrdererMSP", "both", &["orderer", "peer"])]).satisfied);
        // An MSP without NodeOUs has no orderer role.
        let p = channel(&[("OrdererMSP", &ca, false)], bv);
        let e = eval(&p, &[&orderer]);
        assert!(e.reason.contains("NodeOUs are not enabled in MSP OrdererMSP"), "{}", e.reason);
    }

    #[test]
    fn admins_members_identities_and_foreign_certificates() {
        let (ca, other) = (Ca::root("org1"), Ca::root("evil"));
        let admin = ca.issue("Org1MSP", "admin", &["admin"]);
        let member = ca.issue("Org1MSP", "orderer", &["orderer"]);
        let forged = other.issue("Org1MSP", "orderer", &["orderer"]);
        let admin_principal = role_principal("Org1MSP", role::ADMIN);
        let p = channel(&[("Org1MSP", &ca, true)], signature_policy(signed_by(0), vec![admin_principal]));
        assert!(eval(&p, &[&admin]).satisfied);
        assert!(!eval(&p, &[&member]).satisfied);
        let p = channel(
            &[("Org1MSP", &ca, true)],
            signature_policy(signed_by(0), vec![role_principal("Org1MSP", role::MEMBER)]),
        );
        assert!(eval(&p, &[&member]).satisfied);
        let e = eval(&p, &[&forged]);
        assert!(e.reason.contains("it was not issued by a CA of MSP Org1MSP"), "{}", e.reason);
        // An IDENTITY principal: that certificate only.
        let principal = MspPrincipal {
            principal_classification: classification::IDENTITY,
            principal: proto::SerializedIdentity { mspid: "Org1MSP".into(), id_bytes: member.pem.clone().into_bytes() }
                .encode_to_vec(),
        };
        let p = channel(&[("Org1MSP", &ca, true)], signature_policy(signed_by(0), vec![principal]));
        assert!(eval(&p, &[&member]).satisfied);
        assert!(!eval(&p, &[&admin]).satisfied);
    }

    #[test]
    fn an_organization_unit_principal_binds_the_ou_to_its_ca_chain() {
        let ca = Ca::root("org1");
        let chain_id = Sha256::digest(&pem_certs(ca.pem.as_bytes())[0]).to_vec();
        let ou = |certifiers: Vec<u8>| MspPrincipal {
            principal_classification: classification::ORGANIZATION_UNIT,
            principal: OrganizationUnit {
                msp_identifier: "Org1MSP".into(),
                organizational_unit_identifier: "orderer".into(),
                certifiers_identifier: certifiers,
            }
            .encode_to_vec(),
        };
        let s = ca.issue("Org1MSP", "o", &["orderer"]);
        let p = channel(&[("Org1MSP", &ca, false)], signature_policy(signed_by(0), vec![ou(chain_id)]));
        assert!(eval(&p, &[&s]).satisfied);
        let p = channel(&[("Org1MSP", &ca, false)], signature_policy(signed_by(0), vec![ou(vec![1; 32])]));
        assert!(!eval(&p, &[&s]).satisfied);
    }

    #[test]
    fn policies_describe_themselves_in_fabrics_words() {
        let ids =
            vec![role_principal("A", role::MEMBER), role_principal("B", role::ADMIN), role_principal("C", role::PEER)];
        let p =
            |rule| Policy::Signature(SignaturePolicyEnvelope { version: 0, rule: Some(rule), identities: ids.clone() });
        assert_eq!(p(n_out_of(1, vec![signed_by(0)])).describe(), "OR('A.member')");
        assert_eq!(p(n_out_of(2, vec![signed_by(0), signed_by(1)])).describe(), "AND('A.member', 'B.admin')");
        assert_eq!(
            p(n_out_of(2, vec![signed_by(0), signed_by(1), signed_by(2)])).describe(),
            "OutOf(2, 'A.member', 'B.admin', 'C.peer')"
        );
        let m =
            Policy::ImplicitMeta(ImplicitMetaPolicy { sub_policy: "Writers".into(), rule: implicit_rule::MAJORITY });
        assert_eq!(m.describe(), "ImplicitMeta MAJORITY Writers");
    }

    #[test]
    fn a_certificate_its_ca_revoked_is_not_a_member() {
        let (ca, other) = (Ca::root("org1"), Ca::root("org2"));
        let (revoked, fine) =
            (ca.issue_serial("Org1MSP", "old", &[], Some(42)), ca.issue_serial("Org1MSP", "new", &[], Some(43)));
        let writers = signature_policy(signed_by(0), vec![role_principal("Org1MSP", role::MEMBER)]);
        // A CRL signed by another CA does not count, as in Fabric.
        for (crl, revokes) in [(ca.crl(&[42]), true), (other.crl(&[42]), false)] {
            let org = org_group(msp_value_with_crls("Org1MSP", &ca, false, vec![crl]), writers.clone());
            let bytes = config_envelope(
                vec![("Org1", org)],
                Some(implicit_meta(implicit_rule::ANY, "Writers")),
                vec![],
                vec![],
            );
            let p = ChannelPolicies::from_config_envelope(&bytes).unwrap();
            assert!(eval(&p, &[&fine]).satisfied);
            let e = eval(&p, &[&revoked]);
            assert_eq!(!e.satisfied, revokes, "{}", e.reason);
            if revokes {
                assert!(e.reason.contains("has been revoked by MSP Org1MSP"), "{}", e.reason);
            }
        }
    }
}
