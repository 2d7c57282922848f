//! The ledger check, per channel, with Fabric's rules: every record
//! decodes; numbers run from 0 without gaps; each `previous_hash` is the
//! SHA-256 of the previous header's DER; each `data_hash` is the SHA-256 of
//! the envelopes and every transaction is a well-formed envelope (config
//! blocks excepted); transactions are for this channel; the last-config
//! index names a config block; and every block after the genesis block
//! carries orderer signatures (ECDSA P-256/SHA-256 over metadata value ||
//! signature header, or Fabric 3 BFT identifier header, || header DER) that
//! satisfy the channel's `/Channel/Orderer/BlockValidation` policy, as a
//! peer checks the blocks it receives ([`crate::policy`]), per the channel
//! config in force (block 0's, replaced by each later config block from the
//! next block on). A config without that policy falls back to: every
//! signature by a certificate that an orderer organisation's MSP CA issued,
//! and it verifies.

use std::collections::BTreeSet;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256;

use crate::blockfile::{self, StoredBlock};
use crate::policy::{self, ChannelPolicies};
use crate::proto;

/// A block file of a channel: its name (for reports) and bytes.
pub struct ChannelFile<'a> {
    /// The file's path as reports name it.
    pub name: String,
    /// Its content.
    pub bytes: &'a [u8],
}

/// An orderer organisation from a channel config.
#[derive(Debug, Clone)]
pub struct OrdererOrg {
    /// The MSP id.
    pub msp_id: String,
    /// Root CA certificates (DER).
    pub roots: Vec<Vec<u8>>,
    /// Intermediate CA certificates (DER).
    pub intermediates: Vec<Vec<u8>>,
}

/// What is wrong with one block.
#[derive(Debug, Clone)]
pub struct BlockProblem {
    /// The block number (as recorded, or the expected one when the record
    /// does not decode).
    pub number: u64,
    /// The block file.
    pub file: String,
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// What is wrong, in Fabric's words where Fabric has them.
    pub errors: Vec<String>,
}

impl std::fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "block {} ({} at byte {}): {}", self.number, self.file, self.offset, self.errors.join("; "))
    }
}

/// The result of checking one channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelReport {
    /// Complete blocks.
    pub height: u64,
    /// The last config block (the newest block that is one).
    pub last_config: Option<u64>,
    /// The orderer organisations of the newest config.
    pub orderer_orgs: Vec<String>,
    /// Bad blocks, in order.
    pub problems: Vec<BlockProblem>,
    /// A partly written last record: (file, bytes).
    pub partial: Option<(String, u64)>,
    /// Blocks after the genesis block that carry signatures.
    pub signed_blocks: u64,
    /// Transactions whose channel header names another channel. Fabric's
    /// committer marks such a transaction invalid; its block stays part of
    /// the ledger (the hash chain covers it), so this is a note, not damage.
    pub foreign_transactions: u64,
    /// The first of them: (block, channel named).
    pub foreign_example: Option<(u64, String)>,
    /// The newest config's `/Channel/Orderer/BlockValidation` policy in
    /// Fabric's words (`ImplicitMeta ANY Writers`); `None` when it has none.
    pub block_validation: Option<String>,
    /// Signed blocks whose config in force had no BlockValidation policy,
    /// checked with the rule coffer falls back to: at least one signature,
    /// and every signature by a certificate of an orderer organisation's CA
    /// that verifies.
    pub fallback_blocks: u64,
}

impl ChannelReport {
    /// How orderer signatures were checked, as a sentence for the report.
    pub fn signature_rule(&self) -> String {
        let mut s = match &self.block_validation {
            Some(p) => format!(
                "orderer signatures checked against the channel's /Channel/Orderer/BlockValidation policy ({p}), \
                 as a peer checks the blocks it receives"
            ),
            None => "the channel config has no /Channel/Orderer/BlockValidation policy; orderer signatures checked \
                     with coffer's fallback rule (every signature by a certificate of an orderer organisation's CA, \
                     and it verifies)"
                .to_string(),
        };
        if self.block_validation.is_some() && self.fallback_blocks > 0 {
            s.push_str(&format!(
                "; {} blocks under an older config without that policy checked with coffer's fallback rule",
                self.fallback_blocks
            ));
        }
        s
    }
}

/// A config transaction's decoded config and its `ConfigEnvelope` bytes
/// (for the policies), if `block` is a config block.
fn config_of(block: &StoredBlock) -> Option<(proto::Config, Vec<u8>)> {
    if block.envelopes.len() != 1 {
        return None;
    }
    let env = proto::Envelope::decode(block.envelopes[0]).ok()?;
    let payload = proto::Payload::decode(env.payload.as_slice()).ok()?;
    let ch = proto::ChannelHeader::decode(payload.header?.channel_header.as_slice()).ok()?;
    if ch.r#type != proto::HEADER_TYPE_CONFIG {
        return None;
    }
    let config = proto::ConfigEnvelope::decode(payload.data.as_slice()).ok()?.config?;
    Some((config, payload.data))
}

/// PEM blocks in `bytes`, decoded (a field may hold several).
pub(crate) fn pem_certs(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok((r, pem)) = x509_parser::pem::parse_x509_pem(rest) {
        out.push(pem.contents);
        if r.len() >= rest.len() {
            break;
        }
        rest = r;
    }
    out
}

/// The orderer organisations of a config: `Orderer` group, one sub-group
/// per organisation, each with an `MSP` value.
pub fn orderer_orgs(config: &proto::Config) -> Result<Vec<OrdererOrg>, String> {
    let root = config.channel_group.as_ref().ok_or("the config has no channel group")?;
    let Some(orderer) = root.groups.get("Orderer") else { return Ok(Vec::new()) };
    let mut names: Vec<&String> = orderer.groups.keys().collect();
    names.sort();
    let mut orgs = Vec::new();
    for name in names {
        let group = &orderer.groups[name];
        let value = group.values.get("MSP").ok_or_else(|| format!("orderer organisation {name} has no MSP"))?;
        let msp = proto::MspConfig::decode(value.value.as_slice())
            .map_err(|e| format!("orderer organisation {name}: MSP config does not decode: {e}"))?;
        if msp.r#type != 0 {
            return Err(format!("orderer organisation {name}: MSP type {} is not an X.509 MSP", msp.r#type));
        }
        let fabric = proto::FabricMspConfig::decode(msp.config.as_slice())
            .map_err(|e| format!("orderer organisation {name}: Fabric MSP config does not decode: {e}"))?;
        let roots: Vec<Vec<u8>> = fabric.root_certs.iter().flat_map(|c| pem_certs(c)).collect();
        if roots.is_empty() {
            return Err(format!("orderer organisation {name}: its MSP has no root certificate"));
        }
        orgs.push(OrdererOrg {
            msp_id: fabric.name,
            roots,
            intermediates: fabric.intermediate_certs.iter().flat_map(|c| pem_certs(c)).collect(),
        });
    }
    Ok(orgs)
}

/// The P-256 key of a certificate.
fn key_of(cert: &X509Certificate) -> Result<VerifyingKey, String> {
    VerifyingKey::from_sec1_bytes(cert.public_key().subject_public_key.as_ref())
        .map_err(|_| "the certificate's key is not a P-256 key".to_string())
}

/// True when `issuer` signed `cert` (ECDSA P-256 with SHA-256, the only
/// algorithm Fabric's default MSP issues with; others are reported).
pub(crate) fn issued_by(cert: &X509Certificate, issuer: &X509Certificate) -> Result<bool, String> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Ok(false);
    }
    if cert.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(format!(
            "certificate signature algorithm {} is not supported (only ecdsa-with-SHA256)",
            cert.signature_algorithm.algorithm
        ));
    }
    let Ok(key) = key_of(issuer) else { return Ok(false) };
    let Ok(sig) = Signature::from_der(cert.signature_value.as_ref()) else { return Ok(false) };
    Ok(key.verify(cert.tbs_certificate.as_ref(), &sig).is_ok())
}

pub(crate) fn parse_cert(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c)
}

/// Checks that `leaf` chains to one of `org`'s root CAs (directly or
/// through one intermediate).
fn chains_to(leaf: &X509Certificate, org: &OrdererOrg) -> Result<bool, String> {
    let roots: Vec<X509Certificate> = org.roots.iter().filter_map(|d| parse_cert(d)).collect();
    for root in &roots {
        if issued_by(leaf, root)? {
            return Ok(true);
        }
    }
    for der in &org.intermediates {
        let Some(mid) = parse_cert(der) else { continue };
        if issued_by(leaf, &mid)? {
            for root in &roots {
                if issued_by(&mid, root)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// A signature's signer and the bytes it signed.
struct Signer {
    /// The MSP id.
    msp_id: String,
    /// The signer's certificate (PEM, as the header or consenter has it).
    pem: Vec<u8>,
    /// metadata value || signature header (or identifier header) || header DER.
    signed: Vec<u8>,
}

/// Who made `sig` and over what: the creator of its signature header, or
/// (Fabric 3 BFT) the consenter its identifier header names, as Fabric's
/// `BlockSignatureVerifier` resolves them.
fn signer_of(
    value: &[u8],
    sig: &proto::MetadataSignature,
    header: &[u8],
    policies: Option<&ChannelPolicies>,
) -> Result<Signer, String> {
    let concat = |middle: &[u8]| [value, middle, header].concat();
    if sig.signature_header.is_empty() {
        if sig.identifier_header.is_empty() {
            return Err("the signature carries no signature header".into());
        }
        let Some(p) = policies.filter(|p| p.bft) else {
            return Err("the signature names its signer by consenter id (a BFT identifier header), but the channel \
                        config in force does not have the V3_0 capability that enables BFT"
                .into());
        };
        let ih = policy::IdentifierHeader::decode(sig.identifier_header.as_slice())
            .map_err(|e| format!("the identifier header does not decode: {e}"))?;
        let c = p.consenter(ih.identifier).ok_or_else(|| {
            format!("consenter id {} is not one of the Orderers of the channel config in force", ih.identifier)
        })?;
        return Ok(Signer {
            msp_id: c.msp_id.clone(),
            pem: c.identity.clone(),
            signed: concat(&sig.identifier_header),
        });
    }
    let sh = proto::SignatureHeader::decode(sig.signature_header.as_slice())
        .map_err(|e| format!("the signature header does not decode: {e}"))?;
    let id = proto::SerializedIdentity::decode(sh.creator.as_slice())
        .map_err(|e| format!("the signer's identity does not decode: {e}"))?;
    Ok(Signer { msp_id: id.mspid, pem: id.id_bytes, signed: concat(&sig.signature_header) })
}

/// The signer's certificate (DER).
fn signer_cert(pem: &[u8]) -> Result<Vec<u8>, String> {
    let der = pem_certs(pem).into_iter().next().ok_or("the signer's certificate is not PEM")?;
    x509_parser::parse_x509_certificate(&der).map_err(|e| format!("the signer's certificate does not parse: {e}"))?;
    Ok(der)
}

/// Verifies the ECDSA signature (low-S, as Fabric requires) of `der`'s key.
fn verify_ecdsa(der: &[u8], signed: &[u8], signature: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the signer's certificate does not parse: {e}"))?;
    let key = key_of(&cert)?;
    let signature = Signature::from_der(signature).map_err(|_| "the signature is not a DER ECDSA signature")?;
    if signature.normalize_s().is_some() {
        return Err("the signature is not in the low-S form Fabric requires".into());
    }
    key.verify(signed, &signature).map_err(|_| format!("the orderer signature by {} does not verify", cert.subject()))
}

/// Checks one orderer signature with the rule of configs without a
/// BlockValidation policy: by a certificate of an orderer organisation's CA,
/// and it verifies; `Err` says what is wrong.
fn check_signature(
    value: &[u8],
    sig: &proto::MetadataSignature,
    header: &[u8],
    orgs: &[OrdererOrg],
    policies: Option<&ChannelPolicies>,
) -> Result<String, String> {
    let signer = signer_of(value, sig, header, policies)?;
    let org = orgs.iter().find(|o| o.msp_id == signer.msp_id).ok_or_else(|| {
        format!(
            "signed by MSP {:?}, which is not an orderer organisation of the channel config in force",
            signer.msp_id
        )
    })?;
    let der = signer_cert(&signer.pem)?;
    let cert = parse_cert(&der).ok_or("the signer's certificate does not parse")?;
    if !chains_to(&cert, org)? {
        return Err(format!(
            "the signer's certificate ({}) was not issued by a root CA of orderer organisation {}",
            cert.subject(),
            org.msp_id
        ));
    }
    verify_ecdsa(&der, &signer.signed, &sig.signature)?;
    Ok(org.msp_id.clone())
}

/// A signature that does not count towards the BlockValidation policy.
struct Rejected {
    /// Which signature (index in the metadata) and why.
    reason: String,
    /// The stored bytes are damaged (do not decode or do not verify), as
    /// opposed to a signer the channel does not know.
    damage: bool,
}

/// Checks a block's signatures against the BlockValidation policy of the
/// config in force: the valid signers (each identity once, as Fabric's
/// `SignatureSetToValidIdentities`), then the policy; the errors to report.
fn check_policy(md: &proto::Metadata, header: &[u8], policies: &ChannelPolicies) -> Option<Vec<String>> {
    let mut signers: Vec<policy::Identity> = Vec::new();
    let mut rejected = Vec::new();
    for (i, sig) in md.signatures.iter().enumerate() {
        let r = (|| {
            let signer = signer_of(&md.value, sig, header, Some(policies)).map_err(|e| (e, true))?;
            if policies.msp(&signer.msp_id).is_none() {
                return Err((
                    format!("signed by MSP {:?}, which is not an MSP of the channel config in force", signer.msp_id),
                    false,
                ));
            }
            let der = signer_cert(&signer.pem).map_err(|e| (e, true))?;
            verify_ecdsa(&der, &signer.signed, &sig.signature).map_err(|e| (e, true))?;
            policy::Identity::new(&signer.msp_id, der).map_err(|e| (e, true))
        })();
        match r {
            // The evaluator counts one signature per identity.
            Ok(id) => signers.push(id),
            Err((e, damage)) => rejected.push(Rejected { reason: format!("signature {i}: {e}"), damage }),
        }
    }
    let eval = policies.evaluate_block_validation(&signers)?;
    Some(if eval.satisfied {
        rejected.into_iter().filter(|r| r.damage).map(|r| r.reason).collect()
    } else {
        let mut reason = eval.reason;
        for r in rejected {
            reason.push_str("; ");
            reason.push_str(&r.reason);
        }
        vec![reason]
    })
}

/// The last-config index a block's metadata records, if any.
fn last_config_index(block: &StoredBlock) -> Option<u64> {
    if let Some(md) = block.metadata.get(proto::metadata_index::SIGNATURES)
        && let Ok(md) = proto::Metadata::decode(*md)
        && let Ok(obm) = proto::OrdererBlockMetadata::decode(md.value.as_slice())
        && let Some(lc) = obm.last_config
    {
        return Some(lc.index);
    }
    let md = proto::Metadata::decode(*block.metadata.get(proto::metadata_index::LAST_CONFIG)?).ok()?;
    if md.value.is_empty() {
        return None;
    }
    Some(proto::LastConfig::decode(md.value.as_slice()).ok()?.index)
}

/// Fabric's well-formed-envelope rule for one transaction.
fn well_formed(i: usize, raw: &[u8]) -> Result<(), String> {
    let env = proto::Envelope::decode(raw).map_err(|e| format!("transaction {i} is invalid: {e}"))?;
    if env.payload.is_empty() {
        return Err(format!("transaction {i} has no payload"));
    }
    if env.signature.is_empty() {
        return Err(format!("transaction {i} has no signature"));
    }
    let again = env.encode_to_vec();
    if again.len() < raw.len() {
        return Err(format!("transaction {i} has {} trailing bytes", raw.len() - again.len()));
    }
    if again != raw {
        return Err(format!("transaction {i} does not match its raw form"));
    }
    Ok(())
}

/// The channel id of a transaction, if it decodes that far.
fn channel_of(raw: &[u8]) -> Option<String> {
    let env = proto::Envelope::decode(raw).ok()?;
    let payload = proto::Payload::decode(env.payload.as_slice()).ok()?;
    Some(proto::ChannelHeader::decode(payload.header?.channel_header.as_slice()).ok()?.channel_id)
}

/// Checks one channel's block files, fed in file order one at a time (a
/// channel's ledger can be far larger than memory; one block file is at
/// most what Fabric's `maxBlockfileSize` allows, 64 MiB by default).
pub struct ChannelChecker {
    channel: String,
    report: ChannelReport,
    /// Hash of the previous header's DER.
    prev_header: Option<[u8; 32]>,
    /// Orderer organisations of the config in force.
    orgs: Vec<OrdererOrg>,
    /// Policies and MSPs of the config in force.
    policies: Option<ChannelPolicies>,
    config_blocks: BTreeSet<u64>,
    /// The next block number.
    expected: u64,
    /// Blocks after the genesis block without signatures.
    unsigned: Vec<BlockProblem>,
}

impl ChannelChecker {
    /// A checker for `channel`.
    pub fn new(channel: &str) -> Self {
        ChannelChecker {
            channel: channel.to_string(),
            report: ChannelReport::default(),
            prev_header: None,
            orgs: Vec::new(),
            policies: None,
            config_blocks: BTreeSet::new(),
            expected: 0,
            unsigned: Vec::new(),
        }
    }

    /// Checks the next block file; `last` when it is the channel's last
    /// (only that one may end in a partly written block).
    pub fn add_file(&mut self, file: &ChannelFile, last: bool) {
        let Self { channel, report, prev_header, orgs, policies, config_blocks, expected, unsigned } = self;
        let channel = channel.as_str();
        let scan = blockfile::scan(file.bytes);
        if scan.partial_tail > 0 {
            if last {
                report.partial = Some((file.name.clone(), scan.partial_tail));
            } else {
                report.problems.push(BlockProblem {
                    number: *expected,
                    file: file.name.clone(),
                    offset: scan.complete_len,
                    errors: vec![format!(
                        "{} bytes at the end of a block file that is not the channel's last do not form a block",
                        scan.partial_tail
                    )],
                });
            }
        }
        for rec in &scan.records {
            report.height += 1;
            let mut errors = Vec::new();
            let block = match blockfile::decode_block(rec.bytes) {
                Ok(b) => b,
                Err(e) => {
                    report.problems.push(BlockProblem {
                        number: *expected,
                        file: file.name.clone(),
                        offset: rec.offset,
                        errors: vec![format!("the record does not decode: {e}")],
                    });
                    *prev_header = None;
                    *expected += 1;
                    continue;
                }
            };
            if block.number != *expected {
                errors.push(format!("block number {} where {} was expected", block.number, *expected));
            }
            *expected = block.number + 1;
            let header = block.header_der();
            if let Some(prev) = *prev_header
                && block.previous_hash != prev
            {
                errors.push("PreviousHash mismatch".into());
            }
            *prev_header = Some(Sha256::digest(&header).into());

            // Data hash, with Fabric's well-formed-envelope rule.
            let config = config_of(&block);
            let (config, config_bytes) = match config {
                Some((c, b)) => (Some(c), Some(b)),
                None => (None, None),
            };
            let mut data_ok = true;
            if config.is_none() {
                for (i, raw) in block.envelopes.iter().enumerate() {
                    if let Err(e) = well_formed(i, raw) {
                        errors.push(e);
                        data_ok = false;
                        break;
                    }
                }
            }
            let mut h = Sha256::new();
            for raw in &block.envelopes {
                h.update(raw);
            }
            if h.finalize().as_slice() != block.data_hash {
                data_ok = false;
            }
            if !data_ok {
                errors.push("DataHash mismatch".into());
            }
            for raw in &block.envelopes {
                if let Some(ch) = channel_of(raw)
                    && ch != channel
                {
                    report.foreign_transactions += 1;
                    if report.foreign_example.is_none() {
                        report.foreign_example = Some((block.number, ch));
                    }
                }
            }
            if block.number == 0 && config.is_none() {
                errors.push("block 0 is not a config block".into());
            }

            // Orderer signatures, under the config in force before this block.
            let has_policy = policies.as_ref().is_some_and(|p| p.block_validation().is_some());
            if block.number > 0 && (!orgs.is_empty() || has_policy) {
                let md = block.metadata.get(proto::metadata_index::SIGNATURES).map(|m| proto::Metadata::decode(*m));
                match md {
                    Some(Ok(md)) if !md.signatures.is_empty() => {
                        report.signed_blocks += 1;
                        match policies.as_ref().and_then(|p| check_policy(&md, &header, p)) {
                            Some(why) => errors.extend(why),
                            None => {
                                // No BlockValidation policy: every signature
                                // must be by an orderer organisation and verify.
                                report.fallback_blocks += 1;
                                for sig in &md.signatures {
                                    if let Err(e) = check_signature(&md.value, sig, &header, orgs, policies.as_ref()) {
                                        errors.push(e);
                                    }
                                }
                            }
                        }
                    }
                    Some(Err(e)) => errors.push(format!("the signatures metadata does not decode: {e}")),
                    _ => unsigned.push(BlockProblem {
                        number: block.number,
                        file: file.name.clone(),
                        offset: rec.offset,
                        errors: vec!["the block carries no orderer signature".into()],
                    }),
                }
            }

            // Config: this block's config governs from the next block on.
            if let Some(cfg) = &config {
                config_blocks.insert(block.number);
                report.last_config = Some(block.number);
                match orderer_orgs(cfg) {
                    Ok(o) => *orgs = o,
                    Err(e) => errors.push(format!("config: {e}")),
                }
                match ChannelPolicies::from_config_envelope(config_bytes.as_deref().unwrap_or_default()) {
                    Ok(p) => *policies = Some(p),
                    Err(e) => errors.push(format!("config policies: {e}")),
                }
            }
            if let Some(idx) = last_config_index(&block)
                && !config_blocks.contains(&idx)
            {
                errors.push(format!("the last config index {idx} does not name a config block"));
            }
            if !errors.is_empty() {
                report.problems.push(BlockProblem {
                    number: block.number,
                    file: file.name.clone(),
                    offset: rec.offset,
                    errors,
                });
            }
        }
    }

    /// The report.
    pub fn finish(mut self) -> ChannelReport {
        // Unsigned blocks are damage only in a ledger whose other blocks
        // are signed (ledgers written by Fabric's own test tools carry none).
        if self.report.signed_blocks > 0 {
            self.report.problems.extend(self.unsigned);
            self.report.problems.sort_by_key(|p| (p.number, p.offset));
        }
        self.report.orderer_orgs = self.orgs.iter().map(|o| o.msp_id.clone()).collect();
        self.report.block_validation = self.policies.as_ref().and_then(|p| p.block_validation()).map(|p| p.describe());
        self.report
    }
}

/// Checks one channel's block files (in file order).
pub fn check_channel(channel: &str, files: &[ChannelFile]) -> ChannelReport {
    let mut checker = ChannelChecker::new(channel);
    for (i, file) in files.iter().enumerate() {
        checker.add_file(file, i + 1 == files.len());
    }
    checker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{SAMPLE, fixture};
    const GLUED: &str = "v2/glued_together/ledgersData/chains/chains/mychannel/blockfile_000000";

    fn check(bytes: &[u8]) -> ChannelReport {
        check_channel("mychannel", &[ChannelFile { name: "blockfile_000000".into(), bytes }])
    }

    /// Record offsets of a file.
    fn offsets(bytes: &[u8]) -> Vec<u64> {
        blockfile::scan(bytes).records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn the_sample_ledger_is_clean_and_signed_by_its_orderer() {
        let bytes = fixture(SAMPLE);
        let r = check(&bytes);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(r.height, 8);
        assert_eq!(r.partial, None);
        assert_eq!(r.orderer_orgs, vec!["SampleOrg".to_string()]);
        assert_eq!(r.signed_blocks, 7);
        assert!(r.last_config.is_some());
        // Checked as a peer checks them: Fabric's default orderer policy.
        assert_eq!(r.block_validation.as_deref(), Some("ImplicitMeta ANY Writers"));
        assert_eq!(r.fallback_blocks, 0);
        assert!(
            r.signature_rule().contains("BlockValidation policy (ImplicitMeta ANY Writers)"),
            "{}",
            r.signature_rule()
        );
    }

    #[test]
    fn the_glued_ledger_is_reported_at_block_8_as_fabric_reports_it() {
        let bytes = fixture(GLUED);
        let r = check(&bytes);
        assert_eq!(r.height, 9);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        let p = &r.problems[0];
        assert_eq!(p.number, 8);
        assert_eq!(p.offset, offsets(&bytes)[8]);
        // Fabric's own words first; Fabric's `ledgerutil verify` checks no
        // signatures, coffer does: the block's header is not what its
        // orderer signed.
        assert_eq!(p.errors[..2], ["transaction 0 has 3183 trailing bytes".to_string(), "DataHash mismatch".into()]);
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        assert!(p.errors[2].contains("does not verify"), "{:?}", p.errors);
    }

    #[test]
    fn a_cut_last_block_is_partial_not_damage() {
        let bytes = fixture(SAMPLE);
        let cut = &bytes[..bytes.len() - 100];
        let r = check(cut);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(r.height, 7);
        assert_eq!(r.partial, Some(("blockfile_000000".into(), bytes.len() as u64 - 100 - offsets(&bytes)[7])));
    }

    #[test]
    fn flipped_bytes_are_reported_at_their_block() {
        let bytes = fixture(SAMPLE);
        let scan = blockfile::scan(&bytes);
        let rec5 = scan.records[5].bytes;
        let block5 = blockfile::decode_block(rec5).unwrap();
        let start = |s: &[u8]| s.as_ptr() as usize - bytes.as_ptr() as usize;
        // In a transaction of block 5.
        let mut b = bytes.clone();
        b[start(block5.envelopes[0]) + 40] ^= 1;
        let r = check(&b);
        assert_eq!(r.problems[0].number, 5, "{:#?}", r.problems);
        assert!(r.problems[0].errors.contains(&"DataHash mismatch".to_string()), "{:#?}", r.problems);
        // In block 5's header (its data hash): block 5 and block 6's link.
        let mut b = bytes.clone();
        b[start(block5.data_hash)] ^= 1;
        let r = check(&b);
        assert_eq!(r.problems[0].number, 5, "{:#?}", r.problems);
        assert_eq!(r.problems[1].number, 6, "{:#?}", r.problems);
        assert!(r.problems[1].errors.contains(&"PreviousHash mismatch".to_string()));
        // In block 5's orderer signature.
        let md = proto::Metadata::decode(block5.metadata[0]).unwrap();
        let sig = &md.signatures[0].signature;
        let at = start(block5.metadata[0]) + block5.metadata[0].windows(sig.len()).position(|w| w == sig).unwrap();
        let mut b = bytes.clone();
        b[at + sig.len() - 3] ^= 1;
        let r = check(&b);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        assert_eq!(r.problems[0].number, 5);
        assert!(r.problems[0].errors[0].contains("does not verify"), "{:#?}", r.problems);
    }

    /// Block 0's `ConfigEnvelope` of the sample ledger.
    fn sample_config_envelope(bytes: &[u8]) -> Vec<u8> {
        let scan = blockfile::scan(bytes);
        config_of(&blockfile::decode_block(scan.records[0].bytes).unwrap()).unwrap().1
    }

    #[test]
    fn a_stricter_block_validation_policy_rejects_the_sample_blocks_with_fabrics_reason() {
        use crate::policy::testing::*;
        use crate::policy::{PolicyConfigEnvelope, role};
        let bytes = fixture(SAMPLE);
        // The sample's own config, its BlockValidation policy replaced by
        // two signatures of SampleOrg members (its blocks carry one).
        let mut env = PolicyConfigEnvelope::decode(sample_config_envelope(&bytes).as_slice()).unwrap();
        let orderer = env.config.as_mut().unwrap().channel_group.as_mut().unwrap().groups.get_mut("Orderer").unwrap();
        let two = n_out_of(2, vec![signed_by(0), signed_by(0)]);
        orderer
            .policies
            .insert("BlockValidation".into(), signature_policy(two, vec![role_principal("SampleOrg", role::MEMBER)]));
        let policies = ChannelPolicies::from_config_envelope(&env.encode_to_vec()).unwrap();
        let scan = blockfile::scan(&bytes);
        let block = blockfile::decode_block(scan.records[5].bytes).unwrap();
        let md = proto::Metadata::decode(block.metadata[0]).unwrap();
        let errors = check_policy(&md, &block.header_der(), &policies).unwrap();
        assert_eq!(
            errors,
            ["the BlockValidation policy (AND('SampleOrg.member', 'SampleOrg.member')) is not satisfied: \
              AND('SampleOrg.member', 'SampleOrg.member') is not satisfied"]
        );
        // The sample's own policy is satisfied by the same signature.
        let own = ChannelPolicies::from_config_envelope(&sample_config_envelope(&bytes)).unwrap();
        assert_eq!(check_policy(&md, &block.header_der(), &own), Some(vec![]));
    }

    /// A signature over `value || middle || header` with `signer`'s key.
    fn sign(signer: &crate::policy::testing::Signer, value: &[u8], middle: &[u8], header: &[u8]) -> Vec<u8> {
        use p256::ecdsa::SigningKey;
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::DecodePrivateKey;
        let key = SigningKey::from_pkcs8_der(&signer.key_der).unwrap();
        let sig: Signature = key.sign(&[value, middle, header].concat());
        sig.normalize_s().unwrap_or(sig).to_der().as_bytes().to_vec()
    }

    #[test]
    fn bft_identifier_headers_name_consenters_and_duplicates_count_once() {
        use crate::policy::testing::*;
        use crate::policy::{Capabilities, Capability, Consenter, IdentifierHeader, Orderers, implicit_rule, role};
        let ca = Ca::root("ord");
        let (o1, o2) =
            (ca.issue("OrdererMSP", "orderer1", &["orderer"]), ca.issue("OrdererMSP", "orderer2", &["orderer"]));
        let consenters = Orderers {
            consenter_mapping: [(1, &o1), (2, &o2)]
                .into_iter()
                .map(|(id, s)| Consenter {
                    id,
                    host: format!("orderer{id}"),
                    port: 7050,
                    msp_id: s.msp_id.clone(),
                    identity: s.pem.clone().into_bytes(),
                })
                .collect(),
        };
        let value = |v: Vec<u8>| proto::ConfigValue { version: 0, value: v, mod_policy: String::new() };
        // Writers: two orderers of OrdererMSP (a BFT quorum of two).
        let writers = signature_policy(
            n_out_of(2, vec![signed_by(0), signed_by(0)]),
            vec![role_principal("OrdererMSP", role::ORDERER)],
        );
        let config = |v3: bool| {
            let caps = Capabilities {
                capabilities: if v3 { [("V3_0".to_string(), Capability {})].into() } else { Default::default() },
            };
            let env = config_envelope(
                vec![("OrdererOrg", org_group(msp_value("OrdererMSP", &ca, true), writers.clone()))],
                Some(implicit_meta(implicit_rule::ANY, "Writers")),
                vec![("Orderers", value(consenters.encode_to_vec()))],
                vec![("Capabilities", value(caps.encode_to_vec()))],
            );
            ChannelPolicies::from_config_envelope(&env).unwrap()
        };
        let (header, obm) = (b"header DER".to_vec(), b"orderer block metadata".to_vec());
        let by_id = |id: u32, s: &Signer| {
            let ih = IdentifierHeader { identifier: id, nonce: vec![id as u8] }.encode_to_vec();
            proto::MetadataSignature {
                signature_header: Vec::new(),
                signature: sign(s, &obm, &ih, &header),
                identifier_header: ih,
            }
        };
        let md = |sigs| proto::Metadata { value: obm.clone(), signatures: sigs };

        let bft = config(true);
        assert_eq!(check_policy(&md(vec![by_id(1, &o1), by_id(2, &o2)]), &header, &bft), Some(vec![]));
        // One consenter signing twice is one signature.
        let e = check_policy(&md(vec![by_id(1, &o1), by_id(1, &o1)]), &header, &bft).unwrap();
        assert!(e[0].starts_with("the BlockValidation policy (ImplicitMeta ANY Writers) is not satisfied"), "{e:?}");
        // A consenter id the config does not have.
        let e = check_policy(&md(vec![by_id(1, &o1), by_id(9, &o2)]), &header, &bft).unwrap();
        assert!(
            e[0].ends_with("signature 1: consenter id 9 is not one of the Orderers of the channel config in force"),
            "{e:?}"
        );
        // The signature by consenter 2 made by consenter 1's key.
        let mut forged = by_id(2, &o2);
        forged.signature = sign(&o1, &obm, &forged.identifier_header, &header);
        let e = check_policy(&md(vec![by_id(1, &o1), forged]), &header, &bft).unwrap();
        assert!(
            e[0].ends_with("signature 1: the orderer signature by CN=orderer2, OU=orderer does not verify"),
            "{e:?}"
        );
        // Without the V3_0 capability Fabric resolves no identifier header.
        let e = check_policy(&md(vec![by_id(1, &o1), by_id(2, &o2)]), &header, &config(false)).unwrap();
        assert!(e[0].contains("does not have the V3_0 capability"), "{e:?}");
    }

    #[test]
    fn a_config_without_block_validation_falls_back_to_one_orderer_signature_and_says_so() {
        use crate::policy::PolicyConfigEnvelope;
        let bytes = fixture(SAMPLE);
        let mut env = PolicyConfigEnvelope::decode(sample_config_envelope(&bytes).as_slice()).unwrap();
        let root = env.config.as_mut().unwrap().channel_group.as_mut().unwrap();
        root.groups.get_mut("Orderer").unwrap().policies.remove("BlockValidation");
        // The checker as block 0 of such a config leaves it, fed blocks 1 to 7.
        let scan = blockfile::scan(&bytes);
        let block0 = blockfile::decode_block(scan.records[0].bytes).unwrap();
        let mut checker = ChannelChecker::new("mychannel");
        checker.orgs = orderer_orgs(&config_of(&block0).unwrap().0).unwrap();
        checker.policies = Some(ChannelPolicies::from_config_envelope(&env.encode_to_vec()).unwrap());
        checker.config_blocks.insert(0);
        checker.expected = 1;
        checker.report.height = 1;
        let rest = &bytes[offsets(&bytes)[1] as usize..];
        checker.add_file(&ChannelFile { name: "blockfile_000000".into(), bytes: rest }, true);
        let r = checker.finish();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!((r.signed_blocks, r.fallback_blocks), (7, 7));
        assert_eq!(r.block_validation, None);
        assert!(r.signature_rule().starts_with("the channel config has no /Channel/Orderer/BlockValidation policy"));
    }
}
