//! Connections to the servers an operator granted: TCP through
//! `wasi:sockets`, names looked up through the host (which answers only for
//! the names it granted), and TLS through the host's `wasi:tls`, which
//! checks the server's certificate and holds any client key itself. The
//! SRV and TXT records of a granted `+srv` URL come from the host too
//! ([`resolve_srv`], [`resolve_txt`]): a plugin makes no DNS query.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use wasip2::clocks::monotonic_clock;
use wasip2::io::poll;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Network};
use wasip2::sockets::network::{Ipv4SocketAddress, Ipv6SocketAddress};
use wasip2::sockets::tcp::{ShutdownType, TcpSocket};

use super::Error;

mod tls_bindings {
    //! Generated bindings of `wasi:tls/types@0.2.0-draft` (`sdk/wit/tls.wit`),
    //! whose streams and errors are the `wasip2` crate's own `wasi:io`
    //! types: the TLS streams are the same imports as the sockets' streams.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "wit",
        world: "wasi:tls/imports@0.2.0-draft",
        features: ["tls"],
        with: {
            "wasi:io/error@0.2.4": wasip2::io::error,
            "wasi:io/poll@0.2.4": wasip2::io::poll,
            "wasi:io/streams@0.2.4": wasip2::io::streams,
        },
    });
}

use tls_bindings::wasi::tls::types as tls;

/// The most bytes one read asks the host for; a larger buffer is filled by
/// several reads.
const READ_LIMIT: usize = 1 << 20;

/// `host:port` as grants and messages write it (an IPv6 address in brackets).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The address `host` spells, without asking anyone: an IP address (IPv6
/// with or without brackets) or `localhost` (127.0.0.1). `None` for a host
/// name, which [`lookup`] resolves.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// The addresses of `name`, as the host resolved them. An IP address or
/// `localhost` is answered without asking. The host answers only for names
/// the operator granted to the plugin; any other name is
/// [`Error::AccessDenied`].
pub fn lookup(name: &str) -> Result<Vec<IpAddr>, Error> {
    if let Some(ip) = ip_literal(name) {
        return Ok(vec![ip]);
    }
    if name.is_empty() {
        return Err(Error::InvalidConfig("an empty host name".into()));
    }
    let refused = |code: ErrorCode| match code {
        ErrorCode::AccessDenied => Error::AccessDenied(format!(
            "looking up {name}: the host name was not granted to this plugin (give it in the config field that names \
             the server, such as --set url=...)"
        )),
        ErrorCode::InvalidArgument => Error::InvalidConfig(format!("`{name}` is not a valid host name")),
        code => Error::Unavailable(format!("cannot look up {name}: {}", describe_code(code))),
    };
    let network = instance_network();
    let stream = wasip2::sockets::ip_name_lookup::resolve_addresses(&network, name).map_err(refused)?;
    let mut found = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(ip)) => found.push(from_wasi_ip(ip)),
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(code) => return Err(refused(code)),
        }
    }
    if found.is_empty() {
        return Err(Error::Unavailable(format!("cannot look up {name}: the host knows no address for it")));
    }
    Ok(found)
}

/// One server an SRV record lists ([`resolve_srv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is tried first.
    pub priority: u16,
    /// Among targets of the same priority, the share of connections.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The server's host name (lowercase, without a trailing dot), granted
    /// to the plugin: [`connect`] to it at `port`.
    pub target: String,
}

/// What refusing a DNS question means to the operator.
fn dns_error(e: Error, kind: &str, name: &str) -> Error {
    match e {
        Error::AccessDenied(_) => Error::AccessDenied(format!(
            "the {kind} record of {name}: the name was not granted to this plugin (give a `+srv` URL in the config \
             field that names the server, such as --set url=mongodb+srv://cluster0.example.net/)"
        )),
        e => e.context(format_args!("the {kind} record of {name}")),
    }
}

/// The servers the SRV record `name` lists (`_mongodb._tcp.cluster0.example.net`
/// for the URL `mongodb+srv://cluster0.example.net/`), in the record's
/// order. The host looked the record up when the operator granted the
/// `+srv` URL, and answers only for that record, without a new query;
/// any other name is [`Error::AccessDenied`]. Each target is granted to the
/// plugin as if the operator had typed it: [`connect`] to `target` at `port`.
pub fn resolve_srv(name: &str) -> Result<Vec<SrvTarget>, Error> {
    let found = super::wit2::dns::resolve_srv(name).map_err(|e| dns_error(Error::from_wit(e), "SRV", name))?;
    Ok(found
        .into_iter()
        .map(|t| SrvTarget { priority: t.priority, weight: t.weight, port: t.port, target: t.target })
        .collect())
}

/// The TXT records of `name`, the host of a granted `+srv` URL
/// (`cluster0.example.net`): one string per record, such as MongoDB's
/// connection options `replicaSet=rs0&authSource=admin`; empty when it has
/// none. Answered from what the host found when it granted the URL; any
/// other name is [`Error::AccessDenied`].
pub fn resolve_txt(name: &str) -> Result<Vec<String>, Error> {
    super::wit2::dns::resolve_txt(name).map_err(|e| dns_error(Error::from_wit(e), "TXT", name))
}

/// Opens a TCP connection to `service` (a name for messages, such as
/// `Redis`) at `host:port`. `host` is an IP address, `localhost` or a host
/// name ([`lookup`]); each of a name's addresses is tried in turn. An
/// address the host did not grant is `access-denied`; one that does not
/// answer is `unavailable`. (WASI's TCP has no switch for Nagle's delay;
/// the host's sockets decide it.)
pub fn connect(service: &str, host: &str, port: u16) -> Result<Conn, Error> {
    let addr = host_port(host, port);
    let ips = match ip_literal(host) {
        Some(ip) => vec![ip],
        None => lookup(host).map_err(|e| e.context(format_args!("connecting to {service} at {addr}")))?,
    };
    let network = instance_network();
    let mut failures = Vec::new();
    for ip in &ips {
        match connect_to(&network, *ip, port) {
            Ok((socket, input, output)) => {
                return Ok(Conn {
                    link: Some(Link { input, output, tls: None, socket }),
                    peer: addr,
                    read_timeout: None,
                });
            }
            Err(code) => failures.push((*ip, code)),
        }
    }
    if failures.iter().all(|(_, code)| *code == ErrorCode::AccessDenied) {
        return Err(Error::AccessDenied(format!(
            "connecting to {service} at {addr}: the address was not granted to this plugin (give it as --set url=...)"
        )));
    }
    let why = match failures.as_slice() {
        [(_, code)] => describe_code(*code),
        many => many.iter().map(|(ip, code)| format!("{ip}: {}", describe_code(*code))).collect::<Vec<_>>().join("; "),
    };
    Err(Error::Unavailable(format!("cannot connect to {service} at {addr}: {why}")))
}

/// One TCP connection attempt, waiting until it is made or refused.
fn connect_to(network: &Network, ip: IpAddr, port: u16) -> Result<(TcpSocket, InputStream, OutputStream), ErrorCode> {
    let (family, remote) = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (o[0], o[1], o[2], o[3]) }),
            )
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port,
                    flow_info: 0,
                    address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                    scope_id: 0,
                }),
            )
        }
    };
    let socket = wasip2::sockets::tcp_create_socket::create_tcp_socket(family)?;
    socket.start_connect(network, remote)?;
    loop {
        match socket.finish_connect() {
            Ok((input, output)) => return Ok((socket, input, output)),
            Err(ErrorCode::WouldBlock) => socket.subscribe().block(),
            Err(code) => return Err(code),
        }
    }
}

fn from_wasi_ip(ip: IpAddress) -> IpAddr {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
    }
}

/// A socket error code in words.
fn describe_code(code: ErrorCode) -> String {
    match code {
        ErrorCode::AccessDenied => "the address was not granted to this plugin".into(),
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionReset => "connection reset".into(),
        ErrorCode::ConnectionAborted => "connection aborted".into(),
        ErrorCode::RemoteUnreachable => "the address cannot be reached".into(),
        ErrorCode::Timeout => "timed out".into(),
        ErrorCode::NameUnresolvable => "no such host name".into(),
        ErrorCode::TemporaryResolverFailure => "the name service did not answer; try again".into(),
        ErrorCode::PermanentResolverFailure => "the name service failed".into(),
        other => other.name().replace('-', " "),
    }
}

/// The text of an error the host reports through `wasi:io` (a stream's or
/// a TLS handshake's), on one line: the message and its causes, without a
/// backtrace the host may have attached to it.
pub(crate) fn host_error_text(e: &wasip2::io::error::Error) -> String {
    one_line(&e.to_debug_string())
}

/// An error's debug text on one line, its backtrace left out.
fn one_line(text: &str) -> String {
    let text = text.split("Stack backtrace:").next().unwrap_or_default();
    text.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "Caused by:").collect::<Vec<_>>().join(": ")
}

/// A stream error as an I/O error. The host's text is kept as it is; a
/// failed stream means the connection is gone.
fn stream_error(e: StreamError, peer: &str) -> io::Error {
    match e {
        StreamError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, format!("{peer} closed the connection")),
        StreamError::LastOperationFailed(e) => {
            io::Error::new(io::ErrorKind::ConnectionAborted, format!("{peer}: {}", host_error_text(&e)))
        }
    }
}

/// The resources of one connection. Field order is drop order, which the
/// host requires: the streams, then the TLS session they belong to, then
/// the socket.
struct Link {
    /// What the plugin reads: the socket's stream, or TLS's plaintext.
    input: InputStream,
    /// What the plugin writes.
    output: OutputStream,
    /// The TLS session, once [`Conn::start_tls`] made one. It owns the
    /// socket's streams now.
    tls: Option<tls::ClientConnection>,
    /// The TCP socket.
    socket: TcpSocket,
}

/// A connection to a server, plain TCP or TLS ([`Conn::start_tls`]): a
/// blocking [`std::io::Read`] and [`std::io::Write`].
pub struct Conn {
    /// `None` only inside [`Conn::start_tls`], which moves it.
    link: Option<Link>,
    /// `host:port` as the plugin named it.
    peer: String,
    /// How long a read waits for data ([`Conn::set_read_timeout`]).
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = self.link.as_ref().is_some_and(|l| l.tls.is_some());
        write!(f, "Conn({}{})", self.peer, if tls { ", TLS" } else { "" })
    }
}

impl Conn {
    fn link(&self) -> &Link {
        self.link.as_ref().expect("a connection's link is only moved by start_tls")
    }

    /// `host:port` of the server, as the plugin named it, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// True once [`Conn::start_tls`] made this connection TLS.
    pub fn is_tls(&self) -> bool {
        self.link().tls.is_some()
    }

    /// How long a read waits for data: `None` waits forever. A read that
    /// waits longer fails with [`io::ErrorKind::TimedOut`] and the
    /// connection stays usable. A zero duration is refused, as std's
    /// sockets refuse it.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a read timeout of zero"));
        }
        self.read_timeout = timeout;
        Ok(())
    }

    /// The read timeout [`Conn::set_read_timeout`] set.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// Makes this connection TLS: hands its streams to the host's TLS
    /// client, which checks that the server's certificate is valid for
    /// `server_name` (and presents the client certificate the operator
    /// configured, if any), and returns the connection over the TLS
    /// streams. Call it when the protocol says so (PostgreSQL: after the
    /// server accepted `SSLRequest`; `rediss://`: right after
    /// [`connect`]), with nothing unread. A handshake the host or the
    /// server refuses is [`Error::Unavailable`] with the host's words (an
    /// unknown CA, an expired certificate, a wrong name).
    pub fn start_tls(mut self, server_name: &str) -> Result<Conn, Error> {
        if self.is_tls() {
            return Err(Error::Unsupported(format!("the connection to {} is TLS already", self.peer)));
        }
        let name = server_name.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(server_name);
        let Link { input, output, tls: _, socket } = self.link.take().expect("a connection's link is present");
        let handshake = tls::ClientHandshake::new(name, input, output);
        let future = tls::ClientHandshake::finish(handshake);
        let outcome = loop {
            match future.get() {
                Some(outcome) => break outcome,
                None => future.subscribe().block(),
            }
        };
        let failed =
            |why: String| Error::Unavailable(format!("the TLS handshake with {} (as {name}) failed: {why}", self.peer));
        let (connection, input, output) = match outcome {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(failed(host_error_text(&e))),
            Err(()) => return Err(failed("the host gave the handshake's outcome once already".into())),
        };
        drop(future);
        Ok(Conn {
            link: Some(Link { input, output, tls: Some(connection), socket }),
            peer: std::mem::take(&mut self.peer),
            read_timeout: self.read_timeout,
        })
    }

    /// Ends the connection in both directions: TLS's close notification
    /// first, if it is TLS, then the socket's shutdown. Reads after it see
    /// the end of the stream; dropping the connection closes it too.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let link = self.link();
        if let Some(session) = &link.tls {
            session.close_output();
            let _ = link.output.blocking_flush();
        }
        link.socket.shutdown(ShutdownType::Both).map_err(|code| {
            io::Error::new(io::ErrorKind::NotConnected, format!("{}: {}", self.peer, describe_code(code)))
        })
    }

    /// Waits until the input stream has data, the end, or an error: at
    /// most the read timeout.
    fn wait_readable(&self) -> io::Result<()> {
        let input = &self.link().input;
        let Some(timeout) = self.read_timeout else {
            input.subscribe().block();
            return Ok(());
        };
        let readable = input.subscribe();
        let timer = monotonic_clock::subscribe_duration(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        if poll::poll(&[&readable, &timer]).contains(&0) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} sent nothing for {:?} (the read timeout)", self.peer, timeout),
            ))
        }
    }
}

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(READ_LIMIT) as u64;
        loop {
            let input = &self.link().input;
            let got = if self.read_timeout.is_some() { input.read(want) } else { input.blocking_read(want) };
            match got {
                Ok(chunk) if chunk.is_empty() => self.wait_readable()?,
                Ok(chunk) => {
                    // The host never gives more than asked; a longer answer
                    // would be a host bug, and is cut rather than trusted.
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(StreamError::Closed) => return Ok(0),
                Err(e) => return Err(stream_error(e, &self.peer)),
            }
        }
    }
}

impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let output = &self.link().output;
        loop {
            match output.check_write() {
                Ok(0) => output.subscribe().block(),
                Ok(room) => {
                    let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                    output.write(&buf[..n]).map_err(|e| stream_error(e, &self.peer))?;
                    return Ok(n);
                }
                Err(e) => return Err(stream_error(e, &self.peer)),
            }
        }
    }

    /// Waits until everything written has been handed to the network (or
    /// to TLS).
    fn flush(&mut self) -> io::Result<()> {
        self.link().output.blocking_flush().map_err(|e| stream_error(e, &self.peer))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A TLS peer is told the session ends, so it does not see a
        // truncation; the resources then go in the order `Link` declares.
        if let Some(Link { tls: Some(session), .. }) = &self.link {
            session.close_output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(ip_literal("localhost"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ip_literal("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_literal("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_literal("cache.internal"), None);
        assert_eq!(lookup("[fe80::1]").unwrap(), vec!["fe80::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(host_port("::1", 5432), "[::1]:5432");
        assert_eq!(host_port("db.example", 5432), "db.example:5432");
    }

    #[test]
    fn host_errors_on_one_line() {
        let text = "vm's certificate was refused: UnknownIssuer\n\nCaused by:\n    invalid peer certificate\n\nStack \
                    backtrace:\n   0: wasmtime::capture\n             at src/backtrace.rs:24:9\n";
        assert_eq!(one_line(text), "vm's certificate was refused: UnknownIssuer: invalid peer certificate");
        assert_eq!(one_line("connection reset"), "connection reset");
    }
}
