//! The stand-in's own tests: what pymongo cannot reach (the fault switches,
//! OP_COMPRESSED with snappy, TLS, seeding from a mongodump directory),
//! over a minimal OP_MSG client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use coffer_mongo_standin::{Options, Standin};

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A one-connection OP_MSG client.
struct Client {
    stream: Box<dyn Stream>,
    next_id: i32,
}

impl Client {
    fn connect(port: u16) -> Client {
        Client { stream: Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap()), next_id: 1 }
    }

    fn message(body: &Document) -> Vec<u8> {
        let mut payload = 0u32.to_le_bytes().to_vec();
        payload.push(0);
        body.to_writer(&mut payload).unwrap();
        payload
    }

    fn send(&mut self, op: i32, payload: &[u8]) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = ((16 + payload.len()) as i32).to_le_bytes().to_vec();
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&op.to_le_bytes());
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg).unwrap();
        id
    }

    /// The reply's opcode and payload, or `None` when the server closed.
    fn receive(&mut self) -> Option<(i32, i32, Vec<u8>)> {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).ok()?;
        let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let response_to = i32::from_le_bytes(header[8..12].try_into().unwrap());
        let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
        let mut payload = vec![0u8; len - 16];
        self.stream.read_exact(&mut payload).ok()?;
        Some((response_to, op, payload))
    }

    fn try_command(&mut self, db: &str, mut body: Document) -> Option<Document> {
        body.insert("$db", db);
        let id = self.send(2013, &Self::message(&body));
        let (response_to, op, payload) = self.receive()?;
        assert_eq!((response_to, op), (id, 2013));
        Some(Document::from_reader(&payload[5..]).unwrap())
    }

    fn command(&mut self, db: &str, body: Document) -> Document {
        self.try_command(db, body).expect("the server closed the connection")
    }
}

fn cursor(reply: &Document) -> (i64, usize) {
    let c = reply.get_document("cursor").unwrap_or_else(|_| panic!("no cursor in {reply}"));
    let batch = c.get_array("firstBatch").or_else(|_| c.get_array("nextBatch")).unwrap();
    (c.get_i64("id").unwrap(), batch.len())
}

fn seeded() -> Standin {
    let s = Standin::start(Options::default()).unwrap();
    s.insert("shop", "orders", (0..300).map(|i| doc! { "_id": i, "n": i }).collect()).unwrap();
    s
}

#[test]
fn close_after_batches_closes_instead_of_answering_the_nth_get_more() {
    let s = seeded();
    let mut c = Client::connect(s.port());
    let (id, n) = cursor(&c.command("shop", doc! { "find": "orders", "batchSize": 100 }));
    assert_eq!(n, 100);
    s.faults().close_after_batches(2);
    let (_, n) = cursor(&c.command("shop", doc! { "getMore": id, "collection": "orders", "batchSize": 100 }));
    assert_eq!(n, 100);
    assert!(c.try_command("shop", doc! { "getMore": id, "collection": "orders" }).is_none());
    // Other connections go on.
    let mut c2 = Client::connect(s.port());
    assert_eq!(c2.command("shop", doc! { "count": "orders" }).get_i32("n").unwrap(), 300);
}

#[test]
fn drop_collection_on_get_more_fails_the_cursor_like_mongodb() {
    let s = seeded();
    let mut c = Client::connect(s.port());
    let (id, _) = cursor(&c.command("shop", doc! { "find": "orders", "batchSize": 10 }));
    s.faults().drop_collection_on_getmore("shop.orders");
    let r = c.command("shop", doc! { "getMore": id, "collection": "orders" });
    assert_eq!(r.get_f64("ok").unwrap(), 0.0);
    assert_eq!(r.get_i32("code").unwrap(), 175, "{r}");
    assert_eq!(r.get_str("codeName").unwrap(), "QueryPlanKilled");
    assert!(s.documents("shop", "orders").is_empty());
    let r = c.command("shop", doc! { "getMore": id, "collection": "orders" });
    assert_eq!(r.get_i32("code").unwrap(), 43, "{r}");
}

#[test]
fn fail_command_fails_the_named_command_so_many_times() {
    let s = seeded();
    s.faults().fail_command("find", 91, "The server is in quiesce mode and will shut down", 1);
    let mut c = Client::connect(s.port());
    let r = c.command("shop", doc! { "find": "orders" });
    assert_eq!((r.get_i32("code").unwrap(), r.get_str("codeName").unwrap()), (91, "ShutdownInProgress"));
    assert_eq!(cursor(&c.command("shop", doc! { "find": "orders" })).1, 101);
}

#[test]
fn snappy_compressed_requests_get_snappy_compressed_replies() {
    let s = Standin::start(Options { compressors: vec!["snappy".into()], ..Options::default() }).unwrap();
    s.insert("db", "c", (0..50).map(|i| doc! { "_id": i, "s": "x".repeat(100) }).collect()).unwrap();
    let mut c = Client::connect(s.port());
    let hello = c.command("admin", doc! { "hello": 1, "compression": ["zstd", "snappy"] });
    assert_eq!(hello.get_array("compression").unwrap(), &vec![Bson::from("snappy")]);
    let plain = Client::message(&doc! { "find": "c", "$db": "db" });
    let compressed = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
    let mut payload = 2013i32.to_le_bytes().to_vec();
    payload.extend_from_slice(&(plain.len() as i32).to_le_bytes());
    payload.push(1);
    payload.extend_from_slice(&compressed);
    let id = c.send(2012, &payload);
    let (response_to, op, reply) = c.receive().unwrap();
    assert_eq!((response_to, op), (id, 2012));
    assert_eq!(i32::from_le_bytes(reply[0..4].try_into().unwrap()), 2013);
    assert_eq!(reply[8], 1, "snappy");
    let inner = snap::raw::Decoder::new().decompress_vec(&reply[9..]).unwrap();
    assert_eq!(inner.len(), i32::from_le_bytes(reply[4..8].try_into().unwrap()) as usize);
    let doc = Document::from_reader(&inner[5..]).unwrap();
    assert_eq!(cursor(&doc).1, 50);
    // Uncompressed requests get uncompressed replies.
    assert_eq!(cursor(&c.command("db", doc! { "find": "c" })).1, 50);
}

#[test]
fn tls_serves_the_same_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let s = Standin::start(Options {
        tls: Some((dir.path().join("cert.pem"), dir.path().join("key.pem"))),
        ..Options::default()
    })
    .unwrap();
    assert!(s.url().ends_with("tls=true"), "{}", s.url());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let mut c = Client { stream: Box::new(rustls::StreamOwned::new(conn, tcp)), next_id: 1 };
    let hello = c.command("admin", doc! { "hello": 1 });
    assert!(hello.get_bool("isWritablePrimary").unwrap());
    // Plain TCP on the TLS port gets nothing useful.
    let mut plain = Client::connect(s.port());
    assert!(plain.try_command("admin", doc! { "ping": 1 }).is_none());
}

#[test]
fn a_mongodump_directory_seeds_collections_indexes_and_uuids() {
    let dump =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mongodb/mongorestore-testdata/collMod_ttl_index");
    let s =
        Standin::start(Options { load_dump: Some(dump.clone()), replset: Some("rs0".into()), ..Options::default() })
            .unwrap();
    let count = std::fs::read(dump.join("mongodump_test_db/coll1.bson")).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i < count.len() {
        i += i32::from_le_bytes(count[i..i + 4].try_into().unwrap()) as usize;
        n += 1;
    }
    assert_eq!(s.documents("mongodump_test_db", "coll1").len(), n);
    let mut c = Client::connect(s.port());
    let list = c.command("mongodump_test_db", doc! { "listCollections": 1 });
    let info = list.get_document("cursor").unwrap().get_array("firstBatch").unwrap()[0].as_document().unwrap().clone();
    let uuid = info.get_document("info").unwrap().get("uuid").unwrap();
    let Bson::Binary(b) = uuid else { panic!("{info}") };
    assert_eq!(u8::from(b.subtype), 4);
    assert_eq!(b.bytes.iter().map(|x| format!("{x:02x}")).collect::<String>(), "ffa7054f30dc422696fa9607e150cb53");
    let idx = c.command("mongodump_test_db", doc! { "listIndexes": "coll1" });
    let specs = idx.get_document("cursor").unwrap().get_array("firstBatch").unwrap().clone();
    assert_eq!(specs.len(), 2, "{idx}");
    assert_eq!(
        specs[1].as_document().unwrap(),
        &doc! { "v": 2, "key": { "a": 1 }, "name": "a_1", "expireAfterSeconds": 1000 }
    );
}

#[test]
fn a_message_over_max_message_size_closes_the_connection() {
    let s = Standin::start(Options::default()).unwrap();
    let mut c = Client::connect(s.port());
    let mut header = 48_000_001i32.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&2013i32.to_le_bytes());
    c.stream.write_all(&header).unwrap();
    assert!(c.receive().is_none());
}

#[test]
fn dropping_the_standin_stops_it() {
    let s = Standin::start(Options::default()).unwrap();
    let port = s.port();
    let mut c = Client::connect(port);
    assert_eq!(c.command("admin", doc! { "ping": 1 }).get_f64("ok").unwrap(), 1.0);
    drop(s);
    assert!(c.try_command("admin", doc! { "ping": 1 }).is_none());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
