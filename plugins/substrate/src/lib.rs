//! coffer's `substrate` plugin: Substrate / Polkadot-SDK nodes.

pub mod keystore;
pub mod paritydb;
