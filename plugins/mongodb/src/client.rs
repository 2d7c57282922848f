//! Choosing the server to talk to: the seed list's members are asked
//! `hello` in turn, and the one the read preference names is kept
//! (`primary` by default, `secondary` to back up from a secondary). Only
//! the addresses the operator typed are granted, so a member that the set
//! names but the URL does not is reported with what to add.

use coffer_sdk::{Error, host};

use crate::uri::{ReadPreference, Uri};
use crate::wire::Conn;

/// Connects to the member `uri` asks for.
pub fn connect(uri: &Uri) -> Result<Conn, Error> {
    let creds = uri.credentials.as_ref();
    let direct = uri.direct.unwrap_or(uri.hosts.len() == 1 && uri.replica_set.is_none());
    let mut failures: Vec<String> = Vec::new();
    let mut candidates: Vec<Conn> = Vec::new();
    for (h, p) in &uri.hosts {
        match Conn::open(h, *p, uri.tls, creds, uri.snappy) {
            Ok(c) => {
                if let (Some(want), Some(got)) = (&uri.replica_set, &c.hello.set_name)
                    && want != got
                {
                    failures.push(format!("{} is a member of replica set {got}, not {want}", c.addr()));
                    continue;
                }
                if uri.replica_set.is_some() && c.hello.set_name.is_none() && !c.hello.mongos {
                    failures.push(format!(
                        "{} is not a replica-set member (its hello has no setName); drop replicaSet= to use it",
                        c.addr()
                    ));
                    continue;
                }
                if c.hello.arbiter {
                    failures.push(format!("{} is an arbiter, which holds no data", c.addr()));
                    continue;
                }
                if direct {
                    let mut c = c;
                    if !c.hello.writable_primary {
                        c.allow_secondary();
                    }
                    return Ok(c);
                }
                let fits = match uri.read_preference {
                    ReadPreference::Primary | ReadPreference::PrimaryPreferred => c.hello.writable_primary,
                    ReadPreference::Secondary | ReadPreference::SecondaryPreferred => c.hello.secondary,
                    ReadPreference::Nearest => true,
                };
                if fits || c.hello.mongos || c.hello.set_name.is_none() {
                    let mut c = c;
                    if !c.hello.writable_primary {
                        c.allow_secondary();
                    }
                    return Ok(c);
                }
                candidates.push(c);
            }
            // A wrong password is the same on every member: say it now.
            Err(e @ Error::AccessDenied(_)) if !e.to_string().contains("not granted") => return Err(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // The preferred kind is not among the seeds that answered: fall back
    // where the read preference allows it.
    let fallback = match uri.read_preference {
        ReadPreference::PrimaryPreferred => candidates.into_iter().find(|c| c.hello.secondary),
        ReadPreference::SecondaryPreferred => candidates.into_iter().find(|c| c.hello.writable_primary),
        _ => {
            if let Some(c) = candidates.first() {
                let want = if uri.read_preference == ReadPreference::Primary { "the primary" } else { "a secondary" };
                let members: Vec<&String> = c.hello.hosts.iter().collect();
                let missing: Vec<&&String> =
                    members.iter().filter(|m| !uri.hosts.iter().any(|(h, p)| **m == &format!("{h}:{p}"))).collect();
                let hint = match (&c.hello.primary, missing.is_empty()) {
                    (Some(p), _)
                        if want == "the primary" && !uri.hosts.iter().any(|(h, q)| *p == format!("{h}:{q}")) =>
                    {
                        format!(
                            "; the set's primary is {p}, which the url does not name: add it to the url's hosts \
                             (the plugin may connect only to the addresses given)"
                        )
                    }
                    (_, false) => format!(
                        "; members the url does not name: {}",
                        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    _ => String::new(),
                };
                return Err(Error::Unavailable(format!(
                    "no seed of {} is {want} (readPreference); {}{hint}{}",
                    uri.display,
                    candidates.iter().map(|c| format!("{}: {}", c.addr(), role(c))).collect::<Vec<_>>().join(", "),
                    if failures.is_empty() { String::new() } else { format!("; {}", failures.join("; ")) }
                )));
            }
            None
        }
    };
    if let Some(mut c) = fallback {
        if !c.hello.writable_primary {
            c.allow_secondary();
        }
        host::info(format!("using {} ({}) as the read preference allows", c.addr(), role(&c)));
        return Ok(c);
    }
    Err(match failures.as_slice() {
        [one] => Error::Unavailable(one.clone()),
        many => Error::Unavailable(format!("no member of {} could be used: {}", uri.display, many.join("; "))),
    })
}

/// A member's role, in words.
pub fn role(c: &Conn) -> &'static str {
    if c.hello.mongos {
        "mongos"
    } else if c.hello.writable_primary && c.hello.set_name.is_some() {
        "primary"
    } else if c.hello.writable_primary {
        "standalone"
    } else if c.hello.secondary {
        "secondary"
    } else {
        "not primary or secondary"
    }
}
