//! Integration tests of coffer-repo: one test binary, one module per concern.
//! Tests that need a storage server start a real one (see `servers`).

mod backends;
mod crash;
mod damage;
mod faults;
mod keys;
mod maintenance;
mod retention;
mod roundtrip;
mod servers;
mod streams;
mod support;
mod wal;
