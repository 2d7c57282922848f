//! TLS for plugins, done by the host: a plugin upgrades a granted TCP
//! connection through `wasi:tls`, and coffer's [`TlsProvider`] runs the
//! handshake with rustls. The server is verified against the system's roots
//! plus any CA file the operator granted, a client certificate is presented
//! from files only the host reads, and how strictly the server is checked
//! is the operator's choice alone ([`Verify`]): nothing the plugin sends can
//! loosen it.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport};
use zeroize::Zeroizing;

use crate::grants::GrantSet;

/// How strictly a server's certificate is checked. Only a value the
/// operator typed into a field the plugin declared `tls-verify` makes it
/// anything but [`Verify::Full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// The chain leads to a trusted root and the certificate names the server.
    #[default]
    Full,
    /// The chain leads to a trusted root; the name is not checked
    /// (libpq's `verify-ca`).
    Chain,
    /// Nothing is checked but the handshake's own signatures: encryption
    /// against eavesdroppers, no protection against an impostor (libpq's
    /// `require`, a Redis client's `--insecure`).
    Off,
}

impl Verify {
    /// Parses a `tls-verify` value: `true`/`false`, `full`, `chain`, `off`,
    /// or libpq's `sslmode` words (`require` does not verify, `verify-ca`
    /// checks the chain, `verify-full`, `prefer` and `allow` everything;
    /// `disable` means no TLS). `require` with a granted CA checks the
    /// chain, as libpq does (decided where the CA is known).
    pub fn parse(value: &serde_json::Value) -> Option<Verify> {
        match value {
            serde_json::Value::Bool(true) => Some(Verify::Full),
            serde_json::Value::Bool(false) => Some(Verify::Off),
            serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
                // libpq's `prefer` and `allow` promise nothing; coffer
                // checks what it gets and the plugin falls back to plain
                // TCP when the check fails, as it does when none is typed.
                "full" | "verify-full" | "true" | "yes" | "on" | "prefer" | "allow" => Some(Verify::Full),
                "chain" | "ca" | "verify-ca" => Some(Verify::Chain),
                "off" | "none" | "false" | "no" | "insecure" | "disable" | "require" => Some(Verify::Off),
                _ => None,
            },
            _ => None,
        }
    }

    /// A description for `plugin inspect` and warnings.
    pub fn describe(self) -> &'static str {
        match self {
            Verify::Full => "servers' certificates checked, chain and name",
            Verify::Chain => "servers' certificate chains checked, their names NOT checked",
            Verify::Off => "servers' certificates NOT checked (encryption only, no protection against an impostor)",
        }
    }
}

/// The TLS settings an operator granted one job.
#[derive(Clone, Default)]
pub struct TlsGrants {
    /// CA certificates trusted besides the system's.
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    /// The config fields the CA certificates came from (for messages).
    pub(crate) ca_fields: Vec<String>,
    /// The client certificate chain, PEM as read.
    pub(crate) client_chain: Option<Vec<CertificateDer<'static>>>,
    /// The client key, PEM as read (only the host ever reads it).
    pub(crate) client_key: Option<Arc<Zeroizing<Vec<u8>>>>,
    pub(crate) verify: Verify,
}

impl std::fmt::Debug for TlsGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsGrants")
            .field("extra_roots", &self.extra_roots.len())
            .field("client_certificate", &self.client_chain.is_some())
            .field("verify", &self.verify)
            .finish()
    }
}

/// Reads the certificates of a PEM file.
pub(crate) fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path} is not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"));
    }
    Ok(certs)
}

/// Reads a PEM private key file, checking that it holds a key.
pub(crate) fn read_key(path: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?);
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1) ({e})"))?;
    Ok(bytes)
}

/// The process's crypto provider (aws-lc-rs, as the storage backends use).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    Arc::clone(&PROVIDER)
}

/// The system's trusted roots, read once (Debian: /etc/ssl/certs).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in found.errors.iter().take(3) {
            tracing::debug!("reading the system's CA certificates: {e}");
        }
        found.certs
    });
    &ROOTS
}

impl TlsGrants {
    /// The rustls client configuration these grants make.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for (i, c) in self.extra_roots.iter().enumerate() {
            roots.add(c.clone()).map_err(|e| {
                let field = self.ca_fields.first().map(String::as_str).unwrap_or("ca_file");
                format!("`{field}`: certificate {} is not a usable CA certificate ({e})", i + 1)
            })?;
        }
        let p = provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&p))
            .build()
            .map_err(|e| format!("no CA certificate to check servers with ({e}); give one with ca_file"))?;
        let verifier = Arc::new(Checked { inner: webpki, mode: self.verify, provider: Arc::clone(&p) });
        let builder = ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.client_chain, &self.client_key) {
            (Some(chain), Some(key)) => {
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain.clone(), key)
                    .map_err(|e| format!("the client certificate and key do not go together ({e})"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The server check: rustls's own, relaxed only as far as the operator said.
#[derive(Debug)]
struct Checked {
    inner: Arc<WebPkiServerVerifier>,
    mode: Verify,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.mode {
            Verify::Off => Ok(ServerCertVerified::assertion()),
            Verify::Full => self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            // webpki checks the chain before the name, so a name error
            // means the chain was good.
            Verify::Chain => {
                match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    r => r,
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A time for messages.
fn when(t: UnixTime) -> String {
    chrono::DateTime::from_timestamp(t.as_secs() as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{} s after 1970", t.as_secs()))
}

/// What a failed handshake means and what to do, in an operator's words.
pub(crate) fn explain(server: &str, e: &rustls::Error, ca_given: bool) -> String {
    use rustls::AlertDescription as A;
    let tried = if ca_given { "the system's CAs and the granted ca_file" } else { "the system's CAs" };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "{server}'s certificate is not signed by a trusted CA (unknown issuer; tried {tried}): give the \
                 certificate of the CA that signed it in the plugin's CA field (such as --set ca_file=ca.pem)"
            ),
            CertificateError::BadSignature => {
                format!("{server}'s certificate has a bad signature (not really signed by the CA it names)")
            }
            CertificateError::Expired => format!("{server}'s certificate has expired: renew it on the server"),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "{server}'s certificate expired at {} (it is now {}): renew it on the server",
                when(*not_after),
                when(*time)
            ),
            CertificateError::NotValidYet => {
                format!("{server}'s certificate is not valid yet: check the clocks of this host and the server")
            }
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "{server}'s certificate is valid only from {} (it is now {}): check the clocks",
                when(*not_before),
                when(*time)
            ),
            CertificateError::NotValidForName => {
                format!("{server}'s certificate is not for the name `{server}`: connect by a name it lists")
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "{server}'s certificate is not for the name `{server}` (it is for {}): connect by a name it lists",
                presented.join(", ")
            ),
            CertificateError::Revoked => format!("{server}'s certificate has been revoked"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!("{server}'s certificate is not a TLS server certificate")
            }
            CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                format!("{server} presents a CA certificate as its own: give it a server certificate signed by that CA")
            }
            other => format!("{server}'s certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(
            a @ (A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::AccessDenied),
        ) => {
            format!(
                "{server} refused the handshake ({a:?}): it wants a client certificate it trusts; give the plugin's \
                 cert_file and key_file"
            )
        }
        rustls::Error::AlertReceived(a) => format!("{server} ended the TLS handshake ({a:?})"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{server} did not answer with TLS ({e}): is TLS enabled on that port?")
        }
        other => format!("TLS with {server} failed: {other}"),
    }
}

/// [`explain`] for the I/O error a TLS stream returns (rustls's error
/// inside), or the error as it is.
pub(crate) fn explain_io(server: &str, e: &std::io::Error, ca_given: bool) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => explain(server, r, ca_given),
        None => format!("TLS with {server} failed: {e}"),
    }
}

/// coffer's [`TlsProvider`] for one job.
pub(crate) struct CofferTls {
    config: Result<Arc<ClientConfig>, String>,
    grants: Arc<GrantSet>,
    ca_given: bool,
    plugin: String,
    refusals: Arc<crate::host::Refusals>,
}

impl CofferTls {
    pub(crate) fn new(plugin: &str, grants: Arc<GrantSet>, refusals: Arc<crate::host::Refusals>) -> Self {
        let tls = grants.tls();
        let config = if grants.has_network() { tls.client_config() } else { Err("no network was granted".into()) };
        CofferTls { config, ca_given: !tls.extra_roots.is_empty(), grants, plugin: plugin.to_string(), refusals }
    }
}

type Handshake = Pin<Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>>;

impl TlsProvider for CofferTls {
    fn connect(&self, server_name: String, transport: Box<dyn TlsTransport>) -> Handshake {
        let config = self.config.clone();
        let allowed = self.grants.allows_server_name(&server_name);
        let ca_given = self.ca_given;
        let plugin = self.plugin.clone();
        let refusals = Arc::clone(&self.refusals);
        Box::pin(async move {
            let fail = |m: String| {
                refusals.warn(&plugin, &m);
                wasmtime_wasi_tls::Error::msg(m)
            };
            let shown = crate::host::printable(&server_name);
            if !allowed {
                return Err(fail(format!(
                    "TLS to `{shown}` refused: that name was not granted (a plugin verifies a server only by a name \
                     the operator typed)"
                )));
            }
            let config = config.map_err(fail)?;
            let name = ServerName::try_from(server_name.clone())
                .map_err(|_| fail(format!("`{shown}` is not a server name or IP address")))?;
            match tokio_rustls::TlsConnector::from(config).connect(name, transport).await {
                Ok(s) => Ok(Box::new(Tls { inner: s, server: shown, ca_given }) as Box<dyn TlsStream>),
                Err(e) => Err(fail(explain_io(&shown, &e, ca_given))),
            }
        })
    }
}

/// An established TLS connection. A TLS error after the handshake (with
/// TLS 1.3 a server refuses a client certificate only then) is explained
/// as a handshake error is.
struct Tls {
    inner: tokio_rustls::client::TlsStream<Box<dyn TlsTransport>>,
    server: String,
    ca_given: bool,
}

impl Tls {
    fn explained<T>(&self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) => {
                let m = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map(|r| explain(&self.server, r, self.ca_given));
                Poll::Ready(Err(match m {
                    Some(m) => std::io::Error::new(e.kind(), m),
                    None => e,
                }))
            }
            r => r,
        }
    }
}

impl TlsStream for Tls {}

impl AsyncRead for Tls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.explained(r)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.explained(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.explained(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_typed_values_relax_verification() {
        assert_eq!(Verify::parse(&serde_json::json!("verify-full")), Some(Verify::Full));
        assert_eq!(Verify::parse(&serde_json::json!("verify-ca")), Some(Verify::Chain));
        assert_eq!(Verify::parse(&serde_json::json!("require")), Some(Verify::Off));
        assert_eq!(Verify::parse(&serde_json::json!("prefer")), Some(Verify::Full));
        assert_eq!(Verify::parse(&serde_json::json!(false)), Some(Verify::Off));
        assert_eq!(Verify::parse(&serde_json::json!("maybe")), None);
        assert_eq!(Verify::default(), Verify::Full);
    }
}
