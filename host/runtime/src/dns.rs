//! Service records for `+srv` grants. When the operator grants a
//! `<scheme>+srv://host` URL, the host looks up the SRV record
//! `_<scheme>._tcp.host`, the TXT record of `host` and the addresses of the
//! SRV targets ([`lookup_service`], through hickory-resolver, with the
//! system's name servers or those of `COFFER_RESOLV_CONF`), and keeps what
//! it found in the grants. The `coffer:plugin/dns` interface answers a
//! plugin from what was kept, for exactly those names: a plugin never makes
//! a DNS query, since the query itself would carry the name out.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};

use crate::bindings::dns;
use crate::bindings::types::Error as WitError;
use crate::host::{PluginState, printable};

/// The operator setting naming the name servers `+srv` grants are looked
/// up with: the path of a file in resolv.conf's format (see
/// [`NameServers::ResolvConf`]). Unset or empty: the system's.
pub const RESOLV_CONF_ENV: &str = "COFFER_RESOLV_CONF";

/// Most targets one SRV record may list; a longer answer refuses the grant
/// (a replica set or sharded cluster has a handful).
const MAX_SRV_TARGETS: usize = 64;

/// Largest `COFFER_RESOLV_CONF` file read, in bytes.
const MAX_RESOLV_CONF: u64 = 64 << 10;

/// Longest name shown in a refusal.
const SHOWN_NAME: usize = 80;

/// Which name servers the host asks when it grants a `+srv` URL. Names the
/// operator typed without `+srv` are resolved by the system, as always.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NameServers {
    /// The system's (`/etc/resolv.conf`, with its options).
    #[default]
    System,
    /// The name servers a file lists, one `nameserver ADDRESS` line each,
    /// as in resolv.conf; coffer also takes a port after the address
    /// (`nameserver 127.0.0.1:5353`, `nameserver [::1]:5353`; 53 without
    /// one). Empty lines, comments (`#` or `;`) and every other line
    /// (`search`, `options`) are ignored; the resolver's own defaults
    /// apply (a 5 second timeout, 2 attempts).
    ResolvConf(PathBuf),
}

impl NameServers {
    /// `COFFER_RESOLV_CONF` when it is set and not empty, else the system's.
    /// Nothing is read until a `+srv` URL is granted.
    pub fn from_env() -> NameServers {
        match std::env::var_os(RESOLV_CONF_ENV) {
            Some(p) if !p.is_empty() => NameServers::ResolvConf(p.into()),
            _ => NameServers::System,
        }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let path = match self {
            NameServers::System => {
                return Resolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| format!("cannot read the system's DNS settings ({e}); set {RESOLV_CONF_ENV}"));
            }
            NameServers::ResolvConf(p) => p,
        };
        let err = |reason: String| format!("{RESOLV_CONF_ENV}={}: {reason}", path.display());
        let len = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.len();
        if len > MAX_RESOLV_CONF {
            return Err(err(format!("larger than {} KiB; is it a resolv.conf file?", MAX_RESOLV_CONF >> 10)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let servers = parse_resolv_conf(&text).map_err(err)?;
        let config = ResolverConfig::from_name_servers(
            servers
                .into_iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect(),
        );
        Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|e| err(format!("cannot set up a DNS client ({e})")))
    }
}

/// The name servers of a resolv.conf-format text (see
/// [`NameServers::ResolvConf`]).
fn parse_resolv_conf(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let addr = words.next().ok_or_else(|| format!("line {}: `nameserver` without an address", n + 1))?;
        let server = match addr.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => addr.parse::<SocketAddr>().map_err(|_| {
                format!("line {}: `{}` is not an IP address, with or without a :port", n + 1, printable(addr))
            })?,
        };
        out.push(server);
    }
    if out.is_empty() {
        return Err("it has no `nameserver ADDRESS` line".into());
    }
    Ok(out)
}

/// One target of an SRV record, as the host found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is tried first.
    pub priority: u16,
    /// Share of connections among targets of the same priority.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The server's host name, lowercase, without a trailing dot.
    pub target: String,
}

/// What the lookups for one `+srv` URL found.
#[derive(Debug, Clone)]
pub(crate) struct ServiceAnswer {
    /// The SRV record's name (`_mongodb._tcp.cluster0.example.net`).
    pub(crate) srv_name: String,
    /// Its targets, in the record's order, each with the addresses it
    /// resolved to.
    pub(crate) targets: Vec<(SrvTarget, Vec<SocketAddr>)>,
    /// The TXT records of the host, each one's strings joined.
    pub(crate) txt: Vec<String>,
}

/// The domain an SRV target of `host` must be inside: the host minus its
/// first label when it has three labels or more (`cluster0.example.net`:
/// `example.net`), else the host itself, as MongoDB's seed-list discovery
/// requires, so that whoever answers for the name cannot send the plugin
/// to another domain.
pub(crate) fn target_domain(host: &str) -> &str {
    match host.split_once('.') {
        Some((_, parent)) if parent.contains('.') => parent,
        _ => host,
    }
}

/// True if `target` is strictly inside `domain`.
fn inside(target: &str, domain: &str) -> bool {
    target.len() > domain.len() + 1
        && target.ends_with(domain)
        && target.as_bytes()[target.len() - domain.len() - 1] == b'.'
}

/// A name as the records name it: lowercase, without the trailing dot.
fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Looks up the SRV record `_<service>._tcp.<host>`, the TXT record of
/// `host` and each target's addresses, with `name_servers`. Refused (the
/// message says why) when the SRV record has no target, lists more than
/// [`MAX_SRV_TARGETS`], or names a target outside [`target_domain`], or a
/// target has no address. Blocks the calling thread: the lookups run on a
/// helper thread with its own single-threaded tokio runtime, so this may be
/// called from any thread, inside a runtime or not (grants are made before
/// a job starts).
pub(crate) fn lookup_service(name_servers: &NameServers, service: &str, host: &str) -> Result<ServiceAnswer, String> {
    std::thread::scope(|s| {
        let looked_up = s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the DNS client ({e})"))?;
            rt.block_on(lookup_service_async(name_servers, service, host))
        });
        looked_up.join().unwrap_or_else(|_| Err("the DNS lookup failed unexpectedly".into()))
    })
}

async fn lookup_service_async(name_servers: &NameServers, service: &str, host: &str) -> Result<ServiceAnswer, String> {
    let resolver = name_servers.resolver()?;
    let srv_name = format!("_{service}._tcp.{host}");
    // Fully qualified (a trailing dot): no search domain is tried.
    let fq = |n: &str| Name::from_ascii(format!("{n}.")).map_err(|e| format!("`{n}` is not a DNS name ({e})"));
    let answer = match resolver.srv_lookup(fq(&srv_name)?).await {
        Ok(a) => a,
        Err(e) if e.is_no_records_found() => {
            return Err(format!("the DNS has no SRV record {srv_name}; check the host name, or list the servers"));
        }
        Err(e) => return Err(format!("cannot look up the SRV record {srv_name} ({e})")),
    };
    let domain = target_domain(host);
    let mut targets: Vec<(SrvTarget, Vec<SocketAddr>)> = Vec::new();
    for record in answer.answers() {
        let RData::SRV(srv) = &record.data else { continue };
        let target = plain(&srv.target);
        if target.is_empty() {
            return Err(format!("the SRV record {srv_name} says the service is not offered there"));
        }
        if !inside(&target, domain) {
            return Err(format!(
                "the SRV record {srv_name} names the server {}, which is not inside {domain}; coffer follows an SRV \
                 record only to servers inside the domain of the name typed (list the servers instead)",
                printable(&target)
            ));
        }
        let t = SrvTarget { priority: srv.priority, weight: srv.weight, port: srv.port, target };
        if !targets.iter().any(|(u, _)| u.target == t.target && u.port == t.port) {
            targets.push((t, Vec::new()));
        }
        if targets.len() > MAX_SRV_TARGETS {
            return Err(format!("the SRV record {srv_name} lists more than {MAX_SRV_TARGETS} servers"));
        }
    }
    if targets.is_empty() {
        return Err(format!("the DNS has no SRV record {srv_name}; check the host name, or list the servers"));
    }
    for (t, addrs) in &mut targets {
        let found = resolver
            .lookup_ip(fq(&t.target)?)
            .await
            .map_err(|e| format!("cannot resolve {}, a server the SRV record {srv_name} names ({e})", t.target))?;
        for ip in found.iter() {
            let a = SocketAddr::new(ip, t.port);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(format!("{}, a server the SRV record {srv_name} names, resolved to no address", t.target));
        }
    }
    let txt = match resolver.txt_lookup(fq(host)?).await {
        Ok(a) => a
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(format!("cannot look up the TXT record of {host} ({e})")),
    };
    Ok(ServiceAnswer { srv_name, targets, txt })
}

impl PluginState {
    /// Refuses a `dns` question about a name the grants do not hold.
    fn dns_refused(&self, kind: &str, name: &str) -> WitError {
        let mut shown: String = printable(name).chars().take(SHOWN_NAME).collect();
        if name.chars().count() > SHOWN_NAME {
            shown.push('…');
        }
        self.job.refusals.warn(
            &self.job.plugin,
            &format!(
                "asked for the {kind} record of `{shown}`, a name that was not granted; refused, and no query was made"
            ),
        );
        WitError::AccessDenied(format!(
            "the {kind} record of `{shown}`: not a name the operator granted (coffer answers only for the host of a \
             granted `+srv` URL, such as --set url=mongodb+srv://cluster0.example.net/)"
        ))
    }
}

impl dns::Host for PluginState {
    async fn resolve_srv(&mut self, name: String) -> wasmtime::Result<Result<Vec<dns::SrvTarget>, WitError>> {
        let Some(targets) = self.job.grants.srv_targets(&name) else {
            return Ok(Err(self.dns_refused("SRV", &name)));
        };
        Ok(Ok(targets
            .iter()
            .map(|t| dns::SrvTarget { priority: t.priority, weight: t.weight, port: t.port, target: t.target.clone() })
            .collect()))
    }

    async fn resolve_txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        match self.job.grants.txt_records(&name) {
            Some(txt) => Ok(Ok(txt.to_vec())),
            None => Ok(Err(self.dns_refused("TXT", &name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines_name_servers_with_optional_ports() {
        let text = "# test\nsearch example.net\nnameserver 127.0.0.1:5353 ; local\nnameserver ::1\n\
                    nameserver [::1]:54\noptions ndots:2\n";
        let s = parse_resolv_conf(text).unwrap();
        assert_eq!(
            s,
            vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap(), "[::1]:54".parse().unwrap()]
        );
        let e = parse_resolv_conf("nameserver dns.example.net\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("dns.example.net"), "{e}");
        assert!(parse_resolv_conf("search x\n").unwrap_err().contains("no `nameserver"));
    }

    #[test]
    fn targets_stay_inside_the_parent_domain() {
        assert_eq!(target_domain("cluster0.example.net"), "example.net");
        assert_eq!(target_domain("example.net"), "example.net");
        assert_eq!(target_domain("localhost"), "localhost");
        let d = target_domain("cluster0.example.net");
        assert!(inside("shard-00.example.net", d));
        assert!(inside("a.b.example.net", d));
        assert!(!inside("example.net", d));
        assert!(!inside("evilexample.net", d));
        assert!(!inside("shard.example.org", d));
        assert!(inside("a.example.net", target_domain("example.net")));
        assert!(!inside("other.net", target_domain("example.net")));
    }
}
