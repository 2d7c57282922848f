//! Certificates for the TLS tests, made fresh by each test with rcgen: a
//! CA, a server certificate for `localhost` and 127.0.0.1 signed by it, a
//! client certificate, a second CA that coffer does not trust, and an
//! expired server certificate. [`TlsEcho`] is a TLS server (rustls) that
//! answers one line and can require a client certificate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA that signs certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`; `server` picks the purpose.
    /// `expired` makes one that ran out in 2021.
    pub fn leaf(&self, cn: &str, names: &[&str], server: bool, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The files one TLS test uses, in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub other_ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let p =
            Pki { dir: tempfile::tempdir().unwrap(), ca: Ca::new("coffer test CA"), other_ca: Ca::new("another CA") };
        p.write("ca.pem", &p.ca.pem());
        p.write("other-ca.pem", &p.other_ca.pem());
        let (c, k) = p.ca.leaf("localhost", &["localhost", "127.0.0.1"], true, false);
        p.write("server.pem", &c);
        p.write("server.key", &k);
        let (c, k) = p.other_ca.leaf("localhost", &["localhost", "127.0.0.1"], true, false);
        p.write("other-server.pem", &c);
        p.write("other-server.key", &k);
        let (c, k) = p.ca.leaf("localhost", &["localhost", "127.0.0.1"], true, true);
        p.write("expired.pem", &c);
        p.write("expired.key", &k);
        let (c, k) = p.ca.leaf("coffer", &[], false, false);
        p.write("client.pem", &c);
        p.write("client.key", &k);
        p
    }

    /// A client certificate for `cn` (PostgreSQL's `cert` authentication
    /// maps the name to the role), as `<cn>.pem` and `<cn>.key`.
    pub fn client(&self, cn: &str) {
        let (c, k) = self.ca.leaf(cn, &[], false, false);
        self.write(&format!("{cn}.pem"), &c);
        self.write(&format!("{cn}.key"), &k);
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    /// The path of one of the files (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn path_str(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls server config with `cert`/`key`; with `client_ca`, client
/// certificates signed by it are required.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(chain, key).unwrap())
}

/// A TLS server on 0.0.0.0 that reads one line and answers
/// `reply to: <line>`, on a thread, until the test ends.
pub struct TlsEcho {
    pub port: u16,
}

impl TlsEcho {
    pub fn start(config: Arc<rustls::ServerConfig>) -> TlsEcho {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(tcp) = s else { continue };
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut line = String::new();
                    if BufReader::new(&mut tls).read_line(&mut line).is_err() {
                        return;
                    }
                    let _ = write!(tls, "reply to: {line}");
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    let mut rest = Vec::new();
                    let _ = tls.read_to_end(&mut rest);
                });
            }
        });
        TlsEcho { port }
    }
}
