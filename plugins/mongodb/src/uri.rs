//! MongoDB connection strings: `mongodb://[user[:password]@]host[:port][,host[:port]...][/[authdb]][?options]`
//! and `mongodb+srv://[user@]name/[authdb][?options]`, with the options a
//! backup needs: `authSource`, `authMechanism`, `replicaSet`,
//! `readPreference`, `directConnection`, `tls`/`ssl` and `compressors`.
//!
//! TLS files and checks are the host's (`ca_file`, `cert_file`,
//! `key_file`, `tls_verify`), so the URL options that name them are
//! refused with the field to use instead.

use coffer_sdk::{Error, host, net};
use percent_encoding::percent_decode_str;

use crate::scram::Mechanism;

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// `SCRAM-SHA-1` or `SCRAM-SHA-256`.
    Scram(Mechanism),
    /// `MONGODB-X509`: the client certificate the host presents.
    X509,
}

/// Who to authenticate as.
#[derive(Clone)]
pub struct Credentials {
    /// The user; `None` for X.509 (the certificate's subject).
    pub user: Option<String>,
    /// The password (from `password_file`/`password_env` through the host,
    /// or the URL).
    pub password: Option<String>,
    /// The database the user is defined on (`authSource`; the URL's path,
    /// or `admin`).
    pub source: String,
    /// `authMechanism`; `None`: negotiated.
    pub mechanism: Option<AuthMechanism>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user.as_deref().unwrap_or("(x509)"), self.source)
    }
}

/// `readPreference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPreference {
    /// `primary` (the default).
    Primary,
    /// `primaryPreferred`.
    PrimaryPreferred,
    /// `secondary`: back up from a secondary.
    Secondary,
    /// `secondaryPreferred`.
    SecondaryPreferred,
    /// `nearest`: the first member that answers.
    Nearest,
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct Uri {
    /// The seed list: `(host, port)`.
    pub hosts: Vec<(String, u16)>,
    /// Credentials, when a user or password is given.
    pub credentials: Option<Credentials>,
    /// `replicaSet`.
    pub replica_set: Option<String>,
    /// `readPreference`.
    pub read_preference: ReadPreference,
    /// `directConnection`.
    pub direct: Option<bool>,
    /// `tls`/`ssl` (on by default for `+srv`).
    pub tls: bool,
    /// Snappy offered (`compressors` names it, or is absent).
    pub snappy: bool,
    /// The URL as given, the password left out.
    pub display: String,
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!(
        "url: {why} (expected mongodb://[user@]host[:port][,host...]/[authdb][?options] or mongodb+srv://[user@]name/)"
    ))
}

fn decode(s: &str) -> Result<String, Error> {
    percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| bad("a %-escape that is not UTF-8"))
}

fn boolean(key: &str, v: &str) -> Result<bool, Error> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(format!("{key}={v} is not true or false"))),
    }
}

/// A host part: `name`, `name:port`, `[v6]`, `[v6]:port`.
fn host_port(part: &str) -> Result<(String, u16), Error> {
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad(format!("`{part}` has no closing ]")))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(bad(format!("`{part}` is not a host"))),
        }
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (part.to_string(), None),
        }
    };
    let host = decode(&host)?;
    if host.is_empty() {
        return Err(bad("an empty host"));
    }
    let port = match port {
        None => 27017,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad(format!("port `{p}` is not a port")))?,
    };
    Ok((host, port))
}

impl Uri {
    /// Parses `url`; `user` and `password` (from the config) win over the
    /// URL's. A `+srv` URL is looked up through the host, which answers
    /// only for the name the operator granted.
    pub fn parse(url: &str, user: Option<&str>, password: Option<&str>) -> Result<Uri, Error> {
        let (srv, rest) = if let Some(r) = url.strip_prefix("mongodb+srv://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mongodb://") {
            (false, r)
        } else {
            return Err(bad("the scheme is not mongodb:// or mongodb+srv://"));
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        // The authority ends at the first `/` after the user info.
        let (userinfo, after_at) = match before_query.rfind('@') {
            Some(i) => (Some(&before_query[..i]), &before_query[i + 1..]),
            None => (None, before_query),
        };
        let (authority, path) = match after_at.split_once('/') {
            Some((a, p)) => (a, p),
            None => (after_at, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (url_user, url_password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (Some(decode(u)?), Some(decode(p)?)),
                None => (Some(decode(ui)?), None),
            },
        };
        let auth_db = (!path.is_empty()).then(|| decode(path)).transpose()?;
        if auth_db.as_deref().is_some_and(|d| d.contains(['/', '\\', ' ', '"', '$', '.'])) {
            return Err(bad(format!("`{path}` is not a database name")));
        }
        let mut display = format!("mongodb{}://", if srv { "+srv" } else { "" });
        if let Some(u) = &url_user {
            display.push_str(u);
            display.push('@');
        }
        display.push_str(authority);
        display.push('/');
        if let Some(d) = &auth_db {
            display.push_str(d);
        }

        let mut options: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("option `{pair}` has no value")))?;
                options.push((k.to_string(), decode(v)?));
            }
        }
        let hosts = if srv {
            if authority.contains([',', ':']) {
                return Err(bad("a mongodb+srv:// URL names one host, without a port"));
            }
            let name = decode(authority)?;
            let targets = net::resolve_srv(&format!("_mongodb._tcp.{name}"))
                .map_err(|e| e.context(format!("looking up the SRV record of {name}")))?;
            if targets.is_empty() {
                return Err(Error::Unavailable(format!("{name} has no _mongodb._tcp SRV record")));
            }
            // TXT options come first; the URL's own override them.
            let txt = net::resolve_txt(&name).unwrap_or_default();
            if txt.len() > 1 {
                return Err(bad(format!("{name} has {} TXT records; a +srv name may have one", txt.len())));
            }
            let mut from_txt = Vec::new();
            for pair in txt.iter().flat_map(|t| t.split('&')).filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("TXT option `{pair}` has no value")))?;
                if !matches!(k.to_ascii_lowercase().as_str(), "authsource" | "replicaset" | "loadbalanced") {
                    return Err(bad(format!("the TXT record of {name} sets `{k}`, which only the URL may set")));
                }
                from_txt.push((k.to_string(), decode(v)?));
            }
            from_txt.extend(options);
            options = from_txt;
            targets.into_iter().map(|t| (t.target, t.port)).collect()
        } else {
            authority.split(',').map(host_port).collect::<Result<Vec<_>, _>>()?
        };

        let mut uri = Uri {
            hosts,
            credentials: None,
            replica_set: None,
            read_preference: ReadPreference::Primary,
            direct: None,
            tls: srv,
            snappy: true,
            display,
        };
        let mut auth_source = None;
        let mut mechanism = None;
        for (k, v) in &options {
            match k.to_ascii_lowercase().as_str() {
                "authsource" => auth_source = Some(v.clone()),
                "authmechanism" => {
                    mechanism = Some(match v.as_str() {
                        "MONGODB-X509" => AuthMechanism::X509,
                        other => AuthMechanism::Scram(Mechanism::from_name(other).ok_or_else(|| {
                            Error::Unsupported(format!(
                                "url: authMechanism={other} is not supported; use SCRAM-SHA-256, SCRAM-SHA-1 or \
                                 MONGODB-X509"
                            ))
                        })?),
                    })
                }
                "replicaset" => uri.replica_set = Some(v.clone()),
                "readpreference" => {
                    uri.read_preference = match v.as_str() {
                        "primary" => ReadPreference::Primary,
                        "primaryPreferred" => ReadPreference::PrimaryPreferred,
                        "secondary" => ReadPreference::Secondary,
                        "secondaryPreferred" => ReadPreference::SecondaryPreferred,
                        "nearest" => ReadPreference::Nearest,
                        other => return Err(bad(format!("readPreference={other} is not a read preference"))),
                    }
                }
                "directconnection" => uri.direct = Some(boolean(k, v)?),
                "tls" | "ssl" => uri.tls = boolean(k, v)?,
                "compressors" => uri.snappy = v.split(',').any(|c| c == "snappy"),
                "tlscafile" => return Err(bad("give the CA file as ca_file=, which the host reads")),
                "tlscertificatekeyfile" => {
                    return Err(bad("give the client certificate as cert_file= and its key as key_file="));
                }
                "tlsinsecure" | "tlsallowinvalidcertificates" => {
                    return Err(bad(format!("{k}: set tls_verify=off instead, which the host applies")));
                }
                "tlsallowinvalidhostnames" => {
                    return Err(bad(format!("{k}: set tls_verify=chain instead, which the host applies")));
                }
                "loadbalanced" if boolean(k, v)? => {
                    return Err(Error::Unsupported("url: loadBalanced=true is not supported".into()));
                }
                "appname"
                | "connecttimeoutms"
                | "sockettimeoutms"
                | "serverselectiontimeoutms"
                | "retrywrites"
                | "retryreads"
                | "w"
                | "journal"
                | "wtimeoutms"
                | "maxpoolsize"
                | "minpoolsize"
                | "maxidletimems"
                | "zlibcompressionlevel"
                | "loadbalanced"
                | "heartbeatfrequencyms"
                | "localthresholdms"
                | "readconcernlevel"
                | "authmechanismproperties"
                | "maxstalenessseconds"
                | "readpreferencetags"
                | "srvmaxhosts"
                | "srvservicename" => {
                    host::debug(format!("url option {k} is not used by backups"));
                }
                _ => host::warn(format!("url option `{k}` is not known; it is ignored")),
            }
        }
        if uri.direct == Some(true) && uri.hosts.len() > 1 {
            return Err(bad("directConnection=true names one host"));
        }
        if srv && uri.direct == Some(true) {
            return Err(bad("directConnection=true cannot be used with mongodb+srv://"));
        }
        let user = user.map(str::to_string).or(url_user);
        let password = password.map(str::to_string).or(url_password);
        if user.is_none() && password.is_some() && mechanism != Some(AuthMechanism::X509) {
            // A password kept from another config (a backup's
            // password_file, say) with a URL that names no user.
            host::warn(
                "a password is set but the url names no user: connecting without authentication (write \
                 mongodb://USER@host/ or set user= to log in)",
            );
        }
        if user.is_some() || mechanism == Some(AuthMechanism::X509) {
            let source = match (auth_source, mechanism) {
                (Some(s), _) => s,
                (None, Some(AuthMechanism::X509)) => "$external".into(),
                (None, _) => auth_db.unwrap_or_else(|| "admin".into()),
            };
            if mechanism == Some(AuthMechanism::X509) && password.is_some() {
                return Err(bad("MONGODB-X509 takes no password: the host presents cert_file"));
            }
            uri.credentials = Some(Credentials { user, password, source, mechanism });
        }
        Ok(uri)
    }

    /// The hosts as the source string names them.
    pub fn hosts_text(&self) -> String {
        self.hosts.iter().map(|(h, p)| net::host_port(h, *p)).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_with_options_parses() {
        let u = Uri::parse(
            "mongodb://backup:s%40cret@db1.example.net:27018,[::1],db3/admin?replicaSet=rs0&readPreference=secondary&authSource=users",
            None,
            None,
        )
        .unwrap();
        assert_eq!(u.hosts, vec![("db1.example.net".into(), 27018), ("::1".into(), 27017), ("db3".into(), 27017)]);
        let c = u.credentials.unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.source, "users");
        assert_eq!(u.replica_set.as_deref(), Some("rs0"));
        assert_eq!(u.read_preference, ReadPreference::Secondary);
        assert!(!u.display.contains("cret"), "{}", u.display);
    }

    #[test]
    fn the_config_password_wins_and_the_path_is_the_auth_source() {
        let u = Uri::parse("mongodb://backup:old@h/app", None, Some("new")).unwrap();
        let c = u.credentials.unwrap();
        assert_eq!(c.password.as_deref(), Some("new"));
        assert_eq!(c.source, "app");
        assert!(Uri::parse("mongodb://h/", None, None).unwrap().credentials.is_none());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = |u: &str| Uri::parse(u, None, None).unwrap_err().to_string();
        assert!(e("postgres://h/").contains("scheme"));
        assert!(e("mongodb://h:99999/").contains("port"));
        assert!(e("mongodb:///").contains("no host"));
        assert!(e("mongodb://h/?tlsCAFile=/x").contains("ca_file"));
        assert!(e("mongodb://h/?authMechanism=PLAIN").contains("PLAIN"));
        assert!(e("mongodb://a,b/?directConnection=true").contains("one host"));
        assert!(e("mongodb://h/?readPreference=fastest").contains("fastest"));
    }

    #[test]
    fn x509_authenticates_on_external() {
        let u = Uri::parse("mongodb://h/?authMechanism=MONGODB-X509&tls=true", None, None).unwrap();
        let c = u.credentials.unwrap();
        assert_eq!(c.source, "$external");
        assert_eq!(c.mechanism, Some(AuthMechanism::X509));
        assert!(u.tls);
    }
}
