//! Outgoing `wasi:http` for plugins: requests go only to the authorities
//! (scheme, host, port) the operator granted, over TLS checked as
//! [`crate::tls`] checks it, within size caps and the job's deadline. A
//! bearer token from a granted secret file is added here, after the plugin
//! handed the request over, so the plugin never holds it. Redirects are not
//! followed: a plugin that follows one sends a new request, checked anew.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};
use zeroize::Zeroizing;

use crate::grants::GrantSet;
use crate::host::{Refusals, printable};

/// Largest request body a plugin may send.
pub const MAX_REQUEST_BODY: u64 = 64 << 20;
/// Largest response body a plugin may receive (per response).
pub const MAX_RESPONSE_BODY: u64 = 1 << 30;
/// Longest a connection or a response's first byte may take, unless the
/// plugin asks for less (and never past the job's deadline).
const DEFAULT_WAIT: Duration = Duration::from_secs(120);
/// Most HTTP connections one job holds open at once (each is a socket of
/// the host's).
pub const MAX_CONNECTIONS: usize = 32;

/// coffer's `wasi:http` hooks for one job.
pub(crate) struct CofferHttp {
    grants: Arc<GrantSet>,
    tls: Result<Arc<ClientConfig>, String>,
    ca_given: bool,
    bearer: Option<Arc<Zeroizing<String>>>,
    deadline: Instant,
    plugin: String,
    refusals: Arc<Refusals>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
}

impl CofferHttp {
    pub(crate) fn new(plugin: &str, grants: Arc<GrantSet>, deadline: Instant, refusals: Arc<Refusals>) -> Self {
        let tls = if grants.has_network() { grants.tls().client_config() } else { Err("no network".into()) };
        CofferHttp {
            ca_given: !grants.tls().extra_roots.is_empty(),
            bearer: grants.bearer(),
            tls,
            grants,
            deadline,
            plugin: plugin.to_string(),
            refusals,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One open connection of a job, counted until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type SendFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>>
        + Send,
>;

impl WasiHttpHooks for CofferHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let plugin = self.plugin.clone();
        let refusals = Arc::clone(&self.refusals);
        let checked = (|| {
            // TRACE echoes the request, headers included, back to the plugin.
            if request.method() == http::Method::TRACE || request.method() == http::Method::CONNECT {
                refusals.warn(&plugin, &format!("HTTP {} refused: coffer sends no such request", request.method()));
                return Err(Error::HttpRequestMethodInvalid);
            }
            let uri = request.uri();
            let url = url::Url::parse(&uri.to_string()).map_err(|_| Error::HttpRequestUriInvalid)?;
            let authority = crate::grants::http_authority(&url).map_err(|_| Error::HttpRequestUriInvalid)?;
            let Some(addrs) = self.grants.http_addrs(&authority) else {
                refusals.warn(
                    &plugin,
                    &format!("HTTP request to {} refused: that authority was not granted", printable(&authority)),
                );
                return Err(Error::HttpRequestDenied);
            };
            let was = self.open.fetch_add(1, Ordering::Relaxed);
            let open = Open(Arc::clone(&self.open));
            if was >= MAX_CONNECTIONS {
                refusals.warn(&plugin, &format!("more than {MAX_CONNECTIONS} HTTP connections open at once; refused"));
                return Err(Error::ConnectionLimitReached);
            }
            Ok((url, authority, addrs.to_vec(), open))
        })();
        let tls = self.tls.clone();
        let ca_given = self.ca_given;
        let bearer = self.bearer.clone();
        let deadline = self.deadline;
        Box::new(async move {
            let (url, authority, addrs, open) = checked?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait = |asked: Option<Duration>| asked.unwrap_or(DEFAULT_WAIT).min(remaining);
            let connect_wait = wait(options.and_then(|o| o.connect_timeout));
            let first_byte_wait = wait(options.and_then(|o| o.first_byte_timeout));
            let between_bytes =
                options.and_then(|o| o.between_bytes_timeout).unwrap_or(DEFAULT_WAIT).max(Duration::from_millis(1));

            let host = url
                .host_str()
                .ok_or(Error::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = url.port_or_known_default().ok_or(Error::HttpRequestUriInvalid)?;
            debug_assert!(addrs.iter().all(|a| a.port() == port));
            // The addresses resolved when the authority was granted, not a
            // new lookup that could answer otherwise.
            let tcp = tokio::time::timeout(connect_wait, tokio::net::TcpStream::connect(&addrs[..]))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                    _ => Error::Connect(e),
                })?;
            let _ = tcp.set_nodelay(true);

            let (mut parts, body) = request.into_parts();
            // The path only: scheme and authority go on the wire only to a proxy.
            parts.uri = http::Uri::builder()
                .path_and_query(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .build()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            if let Some(token) = &bearer {
                let line = Zeroizing::new(format!("Bearer {}", token.as_str()));
                let mut v = HeaderValue::from_str(&line)
                    .map_err(|_| Error::InternalError(Some("the bearer token is not a valid header value".into())))?;
                v.set_sensitive(true);
                parts.headers.insert(AUTHORIZATION, v);
            }
            let body = http_body_util::Limited::new(body, MAX_REQUEST_BODY as usize).map_err(|e| {
                match e.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(_) => Error::HttpRequestBodySize(Some(MAX_REQUEST_BODY)),
                }
            });
            let request = http::Request::from_parts(parts, body);

            let io: Box<dyn wasmtime_wasi_tls::TlsTransport> = if url.scheme() == "https" {
                let config = tls.map_err(|m| Error::InternalError(Some(m)))?;
                let name = ServerName::try_from(host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
                let s = tokio::time::timeout(connect_wait, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(|e| {
                        let m = crate::tls::explain_io(&printable(&host), &e, ca_given);
                        refusals.warn(&plugin, &m);
                        Error::InternalError(Some(m))
                    })?;
                Box::new(s)
            } else {
                Box::new(tcp)
            };
            let (mut sender, conn) = tokio::time::timeout(
                connect_wait,
                hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)),
            )
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
            let driver = tokio::spawn(conn);
            let response = tokio::time::timeout(first_byte_wait, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)??;
            tracing::debug!("plugin {}: {} answered {}", printable(&plugin), authority, response.status());
            let response = response.map(|incoming| {
                Capped { inner: incoming, read: 0, between: between_bytes, timer: None, deadline }.boxed_unsync()
            });
            // The connection counts as open until hyper is done with it or
            // the response is dropped.
            let done: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
                let _open = open;
                match driver.await {
                    Ok(r) => r.map_err(Error::from),
                    Err(_) => Ok(()),
                }
            });
            Ok((response, done))
        })
    }
}

/// A response body with a size cap, a wait limit between pieces and the
/// job's deadline.
struct Capped {
    inner: hyper::body::Incoming,
    read: u64,
    between: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer = None;
                if let Some(d) = frame.data_ref() {
                    self.read += d.len() as u64;
                    if self.read > MAX_RESPONSE_BODY {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(MAX_RESPONSE_BODY)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let until = (Instant::now() + self.between).min(self.deadline);
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
