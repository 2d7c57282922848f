//! `wasi:sockets/ip-name-lookup` as coffer provides it: a plugin may look up
//! only the host names the operator granted, and gets the addresses the host
//! resolved when it granted them. No query leaves the host for a plugin: a
//! DNS query is itself a message, and a name a plugin chose could carry
//! anything it read out to whoever answers for that domain.
//!
//! wasmtime-wasi's own implementation resolves any name or none; this one
//! replaces its four definitions in the linker (the function, the stream
//! resource and the stream's two methods) under the same interface name.

use std::net::IpAddr;

use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Ipv4Address, Ipv6Address};
use wasmtime_wasi::p2::{DynPollable, Network, Pollable, subscribe};

use crate::host::{PluginState, printable};

/// The interface this replaces, as wasmtime-wasi 48 names it; components
/// importing any 0.2.x version are linked to it.
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// Longest name shown in a refusal.
const SHOWN_NAME: usize = 80;

/// The answer to one lookup: the addresses not yet returned.
pub struct Resolved(std::vec::IntoIter<IpAddr>);

#[wasmtime_wasi_io::async_trait]
impl Pollable for Resolved {
    async fn ready(&mut self) {}
}

fn wire(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddress::Ipv4((o[0], o[1], o[2], o[3]) as Ipv4Address)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]) as Ipv6Address)
        }
    }
}

/// Replaces wasmtime-wasi's name lookup in `linker` with coffer's.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut inst = linker.instance(INTERFACE)?;
    inst.resource("resolve-address-stream", ResourceType::host::<Resolved>(), |mut store, rep| {
        store.data_mut().table.delete(Resource::<Resolved>::new_own(rep))?;
        Ok(())
    })?;
    inst.func_wrap(
        "resolve-addresses",
        |mut store,
         (network, name): (Resource<Network>, String)|
         -> wasmtime::Result<(Result<Resource<Resolved>, ErrorCode>,)> {
            let state: &mut PluginState = store.data_mut();
            // The network handle is the capability to ask at all.
            state.table.get(&network)?;
            let Some(addrs) = state.job.grants.lookup(&name) else {
                let mut shown: String = printable(&name).chars().take(SHOWN_NAME).collect();
                if name.chars().count() > SHOWN_NAME {
                    shown.push('…');
                }
                state.job.refusals.warn(
                    &state.job.plugin,
                    &format!("looked up `{shown}`, a name that was not granted; refused, and no query was made"),
                );
                return Ok((Err(ErrorCode::AccessDenied),));
            };
            let r = state.table.push(Resolved(addrs.into_iter()))?;
            Ok((Ok(r),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (r,): (Resource<Resolved>,)| -> wasmtime::Result<(Result<Option<IpAddress>, ErrorCode>,)> {
            let s = store.data_mut().table.get_mut(&r)?;
            Ok((Ok(s.0.next().map(wire)),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (r,): (Resource<Resolved>,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            let p = subscribe(&mut store.data_mut().table, r)?;
            Ok((p,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
