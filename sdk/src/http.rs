//! A small blocking HTTP client over `wasi:http/outgoing-handler`: the host
//! makes the request (TLS included) and only to the authorities the
//! operator granted.
//!
//! Redirects are not followed: a `3xx` response is returned as it is. A
//! plugin that wants to follow one sends a new request to the `Location`,
//! which the host checks against the grants again.

use std::io;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, HeaderError, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use super::Error;

/// Bytes of a request body handed to the host per write.
const WRITE_PIECE: usize = 64 << 10;

/// Bytes of a response body asked of the host per read.
const READ_PIECE: u64 = 64 << 10;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `GET`, `PUT`, `POST`, ... (any token; the common ones in upper case).
    pub method: String,
    /// `http://` or `https://` URL: the host connects to its authority
    /// (`host[:port]`) if that was granted. No user or password in it:
    /// send credentials as a header.
    pub url: String,
    /// Header names and values, in order. The host refuses the ones it
    /// sets itself (such as `Host` and `Connection`).
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
}

impl Request {
    /// A `GET` of `url` without headers.
    pub fn get(url: impl Into<String>) -> Self {
        Request { method: "GET".into(), url: url.into(), headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The status code (`200`, `404`, `301`, ...).
    pub status: u16,
    /// Header names (lower case, as the host gives them) and values (not
    /// UTF-8 bytes replaced).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Sends `req` and reads the whole response, whose body may hold at most
/// `max_body` bytes (a longer one is an error naming the limit). A
/// redirect is returned, not followed. An authority the operator did not
/// grant is [`Error::AccessDenied`]; a server that cannot be reached is
/// [`Error::Unavailable`].
pub fn send(req: &Request, max_body: usize) -> Result<Response, Error> {
    let mut r = send_streaming(req)?;
    let mut body = Vec::new();
    let mut piece = vec![0u8; READ_PIECE as usize];
    loop {
        let n = io::Read::read(&mut r, &mut piece).map_err(Error::from)?;
        if n == 0 {
            break;
        }
        if body.len() + n > max_body {
            return Err(Error::Other(format!(
                "{} {}: the response body is larger than {max_body} bytes, the most this plugin reads",
                req.method, req.url
            )));
        }
        body.extend_from_slice(&piece[..n]);
    }
    Ok(Response { status: r.status, headers: std::mem::take(&mut r.headers), body })
}

/// Sends `req` and returns the response's status and headers with a
/// reader of its body, for bodies too large to hold. As [`send`], a
/// redirect is returned, not followed.
pub fn send_streaming(req: &Request) -> Result<StreamingResponse, Error> {
    let what = format!("{} {}", req.method, req.url);
    let url = url::Url::parse(&req.url).map_err(|e| Error::Other(format!("{what}: not a URL: {e}")))?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(Error::Unsupported(format!("{what}: the scheme is `{other}`; give http:// or https://"))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Other(format!("{what}: a URL with a user or password; send credentials as a header")));
    }
    let host = url.host_str().ok_or_else(|| Error::Other(format!("{what}: the URL names no host")))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }

    let fields: Vec<(String, Vec<u8>)> = req.headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())).collect();
    let headers = Fields::from_list(&fields).map_err(|e| {
        let why = match e {
            HeaderError::Forbidden => "a header the host sets itself",
            HeaderError::InvalidSyntax => "a header name or value that is not valid",
            HeaderError::Immutable => "headers that cannot be changed",
        };
        Error::Other(format!("{what}: {why} (among {})", names(&req.headers)))
    })?;
    let request = OutgoingRequest::new(headers);
    let refused = |field: &str| Error::Other(format!("{what}: the host refused the request's {field}"));
    request.set_method(&method(&req.method)).map_err(|()| refused("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| refused("scheme"))?;
    request.set_authority(Some(&authority)).map_err(|()| refused("authority"))?;
    request.set_path_with_query(Some(&path)).map_err(|()| refused("path"))?;
    let body = request.body().map_err(|()| refused("body"))?;

    let failed = |code: ErrorCode| failure(&what, &authority, code);
    // The request goes out first and its body after, so a body larger than
    // the host's buffers streams instead of waiting for a reader.
    let future = outgoing_handler::handle(request, None).map_err(failed)?;
    write_body(&body, &req.body).map_err(|e| Error::Unavailable(format!("{what}: sending the body: {e}")))?;
    OutgoingBody::finish(body, None).map_err(failed)?;

    let response = loop {
        match future.get() {
            Some(Ok(Ok(r))) => break r,
            Some(Ok(Err(code))) => return Err(failed(code)),
            Some(Err(())) => return Err(Error::Other(format!("{what}: the host gave the response once already"))),
            None => future.subscribe().block(),
        }
    };
    drop(future);
    let status = response.status();
    let headers =
        response.headers().entries().into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect();
    let incoming = response.consume().map_err(|()| Error::Other(format!("{what}: the body was taken already")))?;
    let stream = incoming.stream().map_err(|()| Error::Other(format!("{what}: the body was taken already")))?;
    Ok(StreamingResponse { status, headers, what, authority, stream, _body: incoming, _response: response })
}

/// Writes a request body into its stream and closes the stream.
fn write_body(body: &OutgoingBody, data: &[u8]) -> Result<(), String> {
    let out = body.write().map_err(|()| "the body was taken already".to_string())?;
    for piece in data.chunks(WRITE_PIECE) {
        let mut rest = piece;
        while !rest.is_empty() {
            let room = match out.check_write() {
                Ok(0) => {
                    out.subscribe().block();
                    continue;
                }
                Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(rest.len()),
                Err(e) => return Err(stream_text(e)),
            };
            out.write(&rest[..room]).map_err(stream_text)?;
            rest = &rest[room..];
        }
    }
    out.blocking_flush().map_err(stream_text)
}

fn stream_text(e: StreamError) -> String {
    match e {
        StreamError::Closed => "the server closed the connection".into(),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => describe(&code),
            None => super::net::host_error_text(&e),
        },
    }
}

fn names(headers: &[(String, String)]) -> String {
    headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn method(m: &str) -> Method {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(m.to_string()),
    }
}

/// The error a failed request is, by the host's code.
fn failure(what: &str, authority: &str, code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => Error::AccessDenied(format!(
            "{what}: {authority} was not granted to this plugin (give it in the config field that names the server)"
        )),
        ErrorCode::DnsTimeout
        | ErrorCode::DnsError(_)
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_)
        | ErrorCode::HttpResponseIncomplete
        | ErrorCode::HttpResponseTimeout => Error::Unavailable(format!("{what}: {}", describe(&code))),
        code => Error::Other(format!("{what}: {}", describe(&code))),
    }
}

/// A host's HTTP error code in words.
fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::DnsTimeout => "looking the name up timed out".into(),
        ErrorCode::DnsError(p) => {
            format!("looking the name up failed{}", p.rcode.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
        }
        ErrorCode::DestinationNotFound => "no such host".into(),
        ErrorCode::DestinationUnavailable => "the server cannot be reached".into(),
        ErrorCode::DestinationIpUnroutable => "the server's address cannot be routed".into(),
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionTerminated => "the server closed the connection".into(),
        ErrorCode::ConnectionTimeout => "connecting timed out".into(),
        ErrorCode::ConnectionReadTimeout => "the server stopped sending".into(),
        ErrorCode::ConnectionWriteTimeout => "the server stopped reading".into(),
        ErrorCode::TlsProtocolError => "TLS failed".into(),
        ErrorCode::TlsCertificateError => "the server's certificate was refused".into(),
        ErrorCode::TlsAlertReceived(p) => {
            format!("the server ended TLS{}", p.alert_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())
        }
        ErrorCode::HttpResponseIncomplete => "the response ended early".into(),
        ErrorCode::HttpResponseTimeout => "the server did not answer in time".into(),
        ErrorCode::InternalError(Some(m)) => m.clone(),
        other => format!("{other:?}"),
    }
}

/// A response whose body is read as it arrives: a [`std::io::Read`].
pub struct StreamingResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// `METHOD url`, for messages.
    what: String,
    /// The server's `host[:port]`.
    authority: String,
    // Drop order is the host's: the body's stream, the body, the response.
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl StreamingResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamingResponse({}: {} from {})", self.what, self.status, self.authority)
    }
}

impl io::Read for StreamingResponse {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.stream.blocking_read((buf.len() as u64).min(READ_PIECE)) {
            Ok(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(StreamError::Closed) => Ok(0),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{}: reading the response body: {}", self.what, stream_text(e)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_headers() {
        assert!(matches!(method("get"), Method::Get));
        assert!(matches!(method("PROPFIND"), Method::Other(m) if m == "PROPFIND"));
        let r = Response { status: 200, headers: vec![("content-type".into(), "text/plain".into())], body: vec![] };
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.header("etag"), None);
    }
}
