//! `+srv` grants against the hostile plugin and a DNS server of the test's
//! own: the host looks up the SRV and TXT records of the name the operator
//! typed and the plugin reads them from the host; a plugin asking about any
//! other name is refused and no query leaves for it; an SRV record naming a
//! server outside the domain refuses the grant. The DNS server answers
//! over UDP on a free loopback port and counts every query it sees.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use coffer_runtime::{NameServers, Permission};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;

use crate::network::{Scene, grants_with};
use crate::support::{TestRepo, hostile_wasm, stderr};

/// The host name of the test's `+srv` URLs, and its parent domain.
const HOST: &str = "cluster0.coffer.test";
/// The SRV record of [`HOST`].
const SRV_NAME: &str = "_mongodb._tcp.cluster0.coffer.test";
/// Connection options in [`HOST`]'s TXT record, in two strings.
const TXT_PARTS: [&str; 2] = ["replicaSet=rs0&", "authSource=admin"];

/// A DNS server for the test's zone, on a free UDP port of 127.0.0.1, with
/// a resolv.conf naming it; stopped on drop.
pub(crate) struct DnsServer {
    _dir: tempfile::TempDir,
    pub(crate) resolv_conf: PathBuf,
    /// Every query seen: (lowercase name without the trailing dot, type).
    seen: Arc<Mutex<Vec<(String, RecordType)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `zone`: records by lowercase name (no trailing dot). A name
    /// with no record of the type asked is answered with no records; a
    /// name not in the zone with NXDOMAIN.
    pub(crate) fn start(zone: Vec<(&str, RData)>) -> DnsServer {
        let mut records: BTreeMap<String, Vec<RData>> = BTreeMap::new();
        for (name, data) in zone {
            records.entry(name.to_string()).or_default().push(data);
        }
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = socket.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(&resolv_conf, format!("# the test's DNS server\nnameserver {addr}\n")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                if let Some(reply) = answer(&query, &records, &log) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer { _dir: dir, resolv_conf, seen, stop, thread: Some(thread) }
    }

    /// The name servers to grant with: this server.
    fn name_servers(&self) -> NameServers {
        NameServers::ResolvConf(self.resolv_conf.clone())
    }

    /// Queries seen for `name`, of any type.
    fn queries_for(&self, name: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|(n, _)| n == name).count()
    }

    /// Queries seen in all.
    fn queries(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query, recorded in `log`.
fn answer(
    query: &Message,
    records: &BTreeMap<String, Vec<RData>>,
    log: &Mutex<Vec<(String, RecordType)>>,
) -> Option<Vec<u8>> {
    let q = query.queries.first()?;
    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    log.lock().unwrap().push((name.clone(), q.query_type));
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    match records.get(&name) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(data) => {
            for d in data.iter().filter(|d| d.record_type() == q.query_type) {
                reply.add_answer(Record::from_rdata(q.name.clone(), 60, d.clone()));
            }
        }
    }
    reply.to_vec().ok()
}

pub(crate) fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

/// The test's zone: [`SRV_NAME`] names `db1` (priority 0) and `db2` in the
/// parent domain at `port`, or `target` alone when given; the TXT record of
/// [`HOST`]; `db1` at 127.0.0.1, `db2` at 127.0.0.2, `db.evil.test` at
/// 127.0.0.1.
fn zone(port: u16, target: Option<&str>) -> Vec<(&'static str, RData)> {
    let mut z = Vec::new();
    match target {
        Some(t) => z.push((SRV_NAME, RData::SRV(SRV::new(0, 5, port, name(t))))),
        None => {
            z.push((SRV_NAME, RData::SRV(SRV::new(1, 5, port, name("db2.coffer.test.")))));
            z.push((SRV_NAME, RData::SRV(SRV::new(0, 5, port, name("db1.coffer.test.")))));
        }
    }
    z.push((HOST, RData::TXT(TXT::new(TXT_PARTS.iter().map(|s| s.to_string()).collect()))));
    z.push(("db1.coffer.test", RData::A(A(Ipv4Addr::LOCALHOST))));
    z.push(("db2.coffer.test", RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))));
    z.push(("db.evil.test", RData::A(A(Ipv4Addr::LOCALHOST))));
    z
}

/// A "database server": answers one connection's first line with
/// `reply to: <line>` and closes it.
fn server() -> (u16, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut line = String::new();
        let _ = BufReader::new(&mut s).read_line(&mut line);
        let _ = s.write_all(format!("reply to: {line}").as_bytes());
    });
    (port, t)
}

#[tokio::test]
async fn a_srv_grant_gives_the_plugin_the_records_and_the_servers_they_name() {
    let (port, server) = server();
    let dns = DnsServer::start(zone(port, None));
    let mut config = json!({"mode": "srv", "url": format!("mongodb+srv://u:pw@{HOST}/admin")});
    let grants = grants_with(&mut config, &dns.name_servers()).await.unwrap();
    // Each target is granted as if the operator had typed `target:port`.
    let mut connects: Vec<(String, Vec<SocketAddr>)> = grants
        .permissions()
        .iter()
        .filter_map(|p| match p {
            Permission::Connect(n, a) => Some((n.clone(), a.clone())),
            _ => None,
        })
        .collect();
    connects.sort();
    assert_eq!(
        connects,
        vec![
            (format!("db1.coffer.test:{port}"), vec![SocketAddr::from(([127, 0, 0, 1], port))]),
            (format!("db2.coffer.test:{port}"), vec![SocketAddr::from(([127, 0, 0, 2], port))]),
        ]
    );
    assert_eq!(dns.queries_for(SRV_NAME), 1);
    assert_eq!(dns.queries_for(HOST), 1, "the TXT record");
    let granted = dns.queries();

    let s = Scene::new().await;
    s.run_granted(config, grants).await.unwrap();
    server.join().unwrap();
    assert_eq!(
        s.entry("srv").await,
        format!(
            "srv 0 5 {port} db1.coffer.test\nsrv 1 5 {port} db2.coffer.test\ntxt replicaSet=rs0&authSource=admin\n\
             reply reply to: hello over SRV\n"
        )
    );
    assert_eq!(dns.queries(), granted, "the plugin's questions were answered without a query");
}

#[tokio::test]
async fn records_of_names_not_granted_are_refused_without_a_query() {
    let (port, _server) = server();
    let dns = DnsServer::start(zone(port, None));
    let url = format!("mongodb+srv://{HOST}/");
    for (mode, victim, kind) in [
        ("srv-ungranted", "_mongodb._tcp.secret-data.coffer.test", "SRV"),
        ("txt-ungranted", "secret-data.coffer.test", "TXT"),
        // The SRV record's name has no TXT record to give, nor the host an
        // SRV record: only the pair the URL names is answered.
        ("txt-ungranted", SRV_NAME, "TXT"),
        ("srv-ungranted", HOST, "SRV"),
    ] {
        let mut config = json!({"mode": mode, "url": url, "victim": victim});
        let grants = grants_with(&mut config, &dns.name_servers()).await.unwrap();
        let before = dns.queries();
        let s = Scene::new().await;
        let m = s.refused_granted(config, grants).await;
        assert!(m.contains(&format!("{kind} record of {victim}")) && m.contains("not granted"), "{m}");
        assert_eq!(dns.queries(), before, "{mode} {victim}: a query left for the plugin");
    }
    assert_eq!(dns.queries_for("secret-data.coffer.test"), 0);
    assert_eq!(dns.queries_for("_mongodb._tcp.secret-data.coffer.test"), 0);
}

#[tokio::test]
async fn an_srv_record_naming_a_server_outside_the_domain_refuses_the_grant() {
    let dns = DnsServer::start(zone(27017, Some("db.evil.test.")));
    let mut config = json!({"mode": "srv", "url": format!("mongodb+srv://u:hunter2@{HOST}/")});
    let e = grants_with(&mut config, &dns.name_servers()).await.unwrap_err().to_string();
    assert!(
        e.contains("`url`") && e.contains("db.evil.test") && e.contains("not inside coffer.test"),
        "the message names the field, the server and the domain: {e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    assert_eq!(dns.queries_for("db.evil.test"), 0, "the outside server was not even looked up");

    // A name without an SRV record refuses the grant too.
    let mut config = json!({"mode": "srv", "url": "mongodb+srv://nothing.coffer.test/"});
    let e = grants_with(&mut config, &dns.name_servers()).await.unwrap_err().to_string();
    assert!(e.contains("`url`") && e.contains("no SRV record _mongodb._tcp.nothing.coffer.test"), "{e}");
}

#[test]
fn the_operator_names_the_name_servers_with_coffer_resolv_conf() {
    let (port, server) = server();
    let dns = DnsServer::start(zone(port, None));
    let t = TestRepo::new();
    let backup = |url: &str| {
        t.cmd()
            .env("COFFER_RESOLV_CONF", &dns.resolv_conf)
            .args(["backup", hostile_wasm(), "--set", "mode=srv", "--set", &format!("url={url}")])
            .output()
            .unwrap()
    };
    let out = backup(&format!("mongodb+srv://{HOST}/"));
    assert!(out.status.success(), "{}", stderr(&out));
    server.join().unwrap();
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), 1);
    assert!(dns.queries_for(SRV_NAME) >= 1);

    // With a port, the grant is refused before any lookup, naming the field.
    let before = dns.queries();
    let out = backup(&format!("mongodb+srv://{HOST}:27017/"));
    let e = stderr(&out);
    assert!(!out.status.success() && e.contains("`url`") && e.contains("no port"), "{e}");
    assert_eq!(dns.queries(), before);
}
