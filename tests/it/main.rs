//! coffer's end-to-end tests: the CLI as a user runs it, the plugin
//! runtime, and the hostile-plugin suite. One test binary; fixtures are
//! built by `build.rs`.

mod cli;
mod contract;
mod dns;
mod fabric;
mod guide;
mod hostile;
mod keys;
mod live_trees;
mod maintenance;
mod mongo_standin;
mod mongodb;
mod mongodb_live;
mod network;
mod pki;
mod postgres;
mod redis;
mod redis_follow;
mod repo_v3;
mod streams;
mod substrate;
mod support;
mod wal;
