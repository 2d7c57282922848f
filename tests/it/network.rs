//! Network grants against a hostile plugin: TLS is the host's (server
//! checked, client key kept), name lookups answer only granted names, HTTP
//! goes only to granted authorities with a bearer token the plugin never
//! holds. Each attack must fail the plugin's own job, name the problem, and
//! leave nothing in the repository; each honest use must work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use coffer_repo::{FileKind, InitOptions, KdfParams, Repository};
use coffer_runtime::{
    GrantRules, GrantSet, JobError, JobOptions, LoadedPlugin, NameServers, Purpose, Runtime, RuntimeOptions,
    SnapshotRequest,
};
use serde_json::json;

use crate::pki::{Pki, TlsEcho, server_config};
use crate::support;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let cache = std::env::temp_dir().join(format!("coffer-test-net-cache-{}", std::process::id()));
        Runtime::new(RuntimeOptions { max_instances: 50, cache_dir: Some(cache) }).expect("runtime")
    })
}

/// The grants the hostile plugin's schema declares for `config`, with `+srv`
/// URLs looked up at `name_servers`.
pub(crate) async fn grants_with(
    config: &mut serde_json::Value,
    name_servers: &NameServers,
) -> Result<GrantSet, coffer_runtime::GrantError> {
    let (_, rules) = hostile().await;
    GrantSet::for_job_with(config, rules, Purpose::Read, name_servers)
}

async fn hostile() -> &'static (LoadedPlugin, GrantRules) {
    static P: tokio::sync::OnceCell<(LoadedPlugin, GrantRules)> = tokio::sync::OnceCell::const_new();
    P.get_or_init(|| async {
        let bytes = std::fs::read(support::hostile_wasm()).expect("fixture built by build.rs");
        let p = runtime().load("hostile.wasm", &bytes).expect("fixture loads");
        let schema = p.info(None, &JobOptions::default()).await.expect("info").config_schema;
        let rules = p.grant_rules(&schema).expect("its schema declares its grants");
        (p, rules)
    })
    .await
}

/// A fresh repository to back the hostile plugin up into (also used by
/// `dns.rs`).
pub(crate) struct Scene {
    _dir: tempfile::TempDir,
    repo: Repository,
}

impl Scene {
    pub(crate) async fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("repo").to_str().unwrap().to_string();
        let backend = coffer_repo::backend_for(&url, &[]).unwrap();
        let repo = Repository::init(
            backend,
            support::PASSWORD.as_bytes(),
            InitOptions { kdf: KdfParams::insecure_fast(), ..Default::default() },
        )
        .await
        .unwrap();
        Scene { _dir: dir, repo }
    }

    /// Runs a backup with the grants the plugin's schema declares.
    pub(crate) async fn run(&self, mut config: serde_json::Value) -> Result<(), JobError> {
        let (_, rules) = hostile().await;
        let grants = GrantSet::for_job(&mut config, rules, Purpose::Read).expect("grants");
        self.run_granted(config, grants).await
    }

    /// Runs a backup with grants already made (see [`grants_with`]).
    pub(crate) async fn run_granted(&self, config: serde_json::Value, grants: GrantSet) -> Result<(), JobError> {
        let (plugin, _) = hostile().await;
        let opts = JobOptions { grants, ..JobOptions::default() };
        plugin.snapshot(&self.repo, SnapshotRequest { config, ..Default::default() }, &opts).await.map(|_| ())
    }

    /// Runs a mode that must fail; returns the message, checked to name
    /// the plugin and leave the repository empty.
    pub(crate) async fn refused(&self, config: serde_json::Value) -> String {
        let e = self.run(config).await.expect_err("the job must fail");
        self.refusal(e).await
    }

    /// [`Scene::refused`] with grants already made.
    pub(crate) async fn refused_granted(&self, config: serde_json::Value, grants: GrantSet) -> String {
        let e = self.run_granted(config, grants).await.expect_err("the job must fail");
        self.refusal(e).await
    }

    async fn refusal(&self, e: JobError) -> String {
        let m = format!("{e:#}");
        assert!(m.contains("hostile"), "the message names the plugin: {m}");
        assert!(self.repo.backend().list(FileKind::Snapshot).await.unwrap().is_empty(), "a snapshot was left");
        m
    }

    /// The content of entry `name` of the only snapshot.
    pub(crate) async fn entry(&self, name: &str) -> String {
        let snaps = self.repo.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1);
        let snap = self.repo.open_snapshot(&snaps[0].0).await.unwrap();
        let e = snap.entry(name).unwrap_or_else(|| panic!("no entry {name}"));
        let mut out = Vec::new();
        let mut r = self.repo.entry_reader_owned(e);
        while let Some(piece) = r.next_chunk().await.unwrap() {
            out.extend_from_slice(&piece);
        }
        String::from_utf8(out).unwrap()
    }
}

#[tokio::test]
async fn tls_is_verified_by_the_host_against_the_granted_ca() {
    let pki = Pki::new();
    let server = TlsEcho::start(server_config(&pki.path("server.pem"), &pki.path("server.key"), None));
    let s = Scene::new().await;
    let url = format!("tcp://localhost:{}/", server.port);
    s.run(json!({"mode": "tls", "url": url, "ca_file": pki.path_str("ca.pem")})).await.unwrap();
    assert_eq!(s.entry("reply").await, "reply to: hello over TLS\n");

    // Without the CA the server is unknown, and the message says so and
    // what to do.
    let s = Scene::new().await;
    let m = s.refused(json!({"mode": "tls", "url": url})).await;
    assert!(m.contains("not signed by a trusted CA") && m.contains("ca_file"), "{m}");
}

#[tokio::test]
async fn a_server_of_another_ca_or_an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let other = TlsEcho::start(server_config(&pki.path("other-server.pem"), &pki.path("other-server.key"), None));
    let s = Scene::new().await;
    let m = s
        .refused(json!({"mode": "tls", "url": format!("tcp://localhost:{}/", other.port), "ca_file": pki.path_str("ca.pem")}))
        .await;
    assert!(m.contains("unknown issuer") && m.contains("granted ca_file"), "{m}");

    let expired = TlsEcho::start(server_config(&pki.path("expired.pem"), &pki.path("expired.key"), None));
    let m = s
        .refused(json!({"mode": "tls", "url": format!("tcp://localhost:{}/", expired.port), "ca_file": pki.path_str("ca.pem")}))
        .await;
    assert!(m.contains("expired at 2021-01-01"), "{m}");
}

#[tokio::test]
async fn only_the_operator_relaxes_verification() {
    let pki = Pki::new();
    let other = TlsEcho::start(server_config(&pki.path("other-server.pem"), &pki.path("other-server.key"), None));
    let url = format!("tcp://localhost:{}/", other.port);
    // The operator typed it: encryption without checking the server.
    let s = Scene::new().await;
    s.run(json!({"mode": "tls", "url": url, "tls_verify": "off"})).await.unwrap();
    assert_eq!(s.entry("reply").await, "reply to: hello over TLS\n");
    // A plugin cannot claim another name to get another check: a name the
    // operator did not type is refused before any handshake.
    let s = Scene::new().await;
    let m = s.refused(json!({"mode": "tls-name", "url": url, "victim": "example.org", "tls_verify": "off"})).await;
    assert!(m.contains("`example.org`") && m.contains("not granted"), "{m}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_and_its_key_stays_with_the_host() {
    let pki = Pki::new();
    let server =
        TlsEcho::start(server_config(&pki.path("server.pem"), &pki.path("server.key"), Some(&pki.path("ca.pem"))));
    let url = format!("tcp://127.0.0.1:{}/", server.port);
    let granted = json!({
        "mode": "tls", "url": url, "ca_file": pki.path_str("ca.pem"),
        "cert_file": pki.path_str("client.pem"), "key_file": pki.path_str("client.key"),
    });
    let s = Scene::new().await;
    s.run(granted.clone()).await.unwrap();
    assert_eq!(s.entry("reply").await, "reply to: hello over TLS\n");

    // Without it the server refuses, and the message says what it wants.
    let s = Scene::new().await;
    let m = s.refused(json!({"mode": "tls", "url": url, "ca_file": pki.path_str("ca.pem")})).await;
    assert!(m.contains("client certificate"), "{m}");

    // The plugin cannot read the key whose path it was given.
    let key = std::fs::read_to_string(pki.path("client.key")).unwrap();
    let mut steal = granted;
    steal["mode"] = json!("read-key");
    steal["victim"] = json!(pki.path_str("client.key"));
    let m = s.refused(steal).await;
    assert!(!m.contains(key.lines().nth(1).unwrap()), "{m}");
}

#[tokio::test]
async fn names_are_looked_up_only_when_granted_and_only_to_their_addresses() {
    let s = Scene::new().await;
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // A name the operator did not type: refused, no query made.
    let m = s
        .refused(
            json!({"mode": "lookup", "url": format!("tcp://127.0.0.1:{port}/"), "victim": "secret-data.leak.invalid"}),
        )
        .await;
    assert!(m.contains("secret-data.leak.invalid") && m.contains("not granted"), "{m}");
    // The granted name resolves to what the host resolved; an address it
    // did not resolve to is refused even on the same port.
    let m = s
        .refused(json!({"mode": "connect-ungranted", "url": format!("tcp://localhost:{port}/"), "victim": format!("127.0.0.2:{port}")}))
        .await;
    assert!(m.contains("127.0.0.2"), "{m}");
}

/// What an [`Http`] server was asked: the path and the `Authorization`
/// header.
type Request = (String, Option<String>);

/// An HTTP/1.1 server that records what it was asked (path and
/// `Authorization`): `/ok` answers `granted data`, `/redirect` sends the
/// client to `location`.
struct Http {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Http {
    fn start(tls: Option<Arc<rustls::ServerConfig>>, location: String) -> Http {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(tcp) = s else { continue };
                let log = Arc::clone(&log);
                let location = location.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    Some(c) => {
                        let Ok(conn) = rustls::ServerConnection::new(c) else { return };
                        serve(rustls::StreamOwned::new(conn, tcp), &log, &location);
                    }
                    None => serve(tcp, &log, &location),
                });
            }
        });
        Http { port, seen }
    }
}

fn serve<S: Read + Write>(mut s: S, log: &Mutex<Vec<Request>>, location: &str) {
    let mut head = Vec::new();
    {
        let mut r = BufReader::new(&mut s);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
    }
    let path = head.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_string();
    let auth = head.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.eq_ignore_ascii_case("authorization").then(|| v.trim().to_string())
    });
    log.lock().unwrap().push((path.clone(), auth));
    let reply = if path == "/redirect" {
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    } else {
        "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\ngranted data".to_string()
    };
    let _ = s.write_all(reply.as_bytes());
    let _ = s.flush();
}

#[tokio::test]
async fn http_goes_only_to_granted_authorities_even_through_a_redirect() {
    let victim = Http::start(None, String::new());
    let victim_url = format!("http://127.0.0.1:{}/ok", victim.port);
    let api = Http::start(None, victim_url.clone());
    let s = Scene::new().await;
    s.run(json!({"mode": "http", "api": format!("http://127.0.0.1:{}/ok", api.port)})).await.unwrap();
    assert_eq!(s.entry("reply").await, "200 granted data");

    let s = Scene::new().await;
    let m = s
        .refused(
            json!({"mode": "http-ungranted", "api": format!("http://127.0.0.1:{}/ok", api.port), "victim": victim_url}),
        )
        .await;
    assert!(m.contains(&format!("127.0.0.1:{}", victim.port)), "{m}");
    let m = s.refused(json!({"mode": "http-redirect", "api": format!("http://127.0.0.1:{}/redirect", api.port)})).await;
    assert!(m.contains(&format!("127.0.0.1:{}", victim.port)), "{m}");
    // TRACE would echo the request's headers (a bearer token) back.
    let m = s.refused(json!({"mode": "http-trace", "api": format!("http://127.0.0.1:{}/ok", api.port)})).await;
    assert!(m.contains("TRACE") || m.contains("method"), "{m}");
    assert!(victim.seen.lock().unwrap().is_empty(), "the ungranted server was reached");
    assert_eq!(api.seen.lock().unwrap().len(), 2, "the TRACE never reached the server");
}

#[tokio::test]
async fn the_bearer_token_is_sent_by_the_host_and_never_seen_by_the_plugin() {
    let pki = Pki::new();
    let api = Http::start(Some(server_config(&pki.path("server.pem"), &pki.path("server.key"), None)), String::new());
    let token = "coffer-test-token-5f1d9a";
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = json!({
        "mode": "http", "api": format!("https://localhost:{}/ok", api.port),
        "ca_file": pki.path_str("ca.pem"), "token_file": token_file.to_str().unwrap(),
    });
    let s = Scene::new().await;
    s.run(config.clone()).await.unwrap();
    assert_eq!(s.entry("reply").await, "200 granted data");
    assert_eq!(api.seen.lock().unwrap()[0], ("/ok".to_string(), Some(format!("Bearer {token}"))));

    let mut steal = config;
    steal["mode"] = json!("read-key");
    steal["victim"] = json!(token_file.to_str().unwrap());
    let s = Scene::new().await;
    let m = s.refused(steal).await;
    assert!(!m.contains(token), "{m}");
}
