//! The `bindgen!`s of the `coffer:plugin` contract. Host functions are
//! async and trappable: the outer `wasmtime::Result` is a host-side fault
//! that ends the plugin instance, the inner `Result` is the plugin's
//! business and reaches it as the contract's `error` variant.
//!
//! Contract 0.2.0 imports the interfaces of 0.1.0 unchanged and adds
//! `streams` and `dns`; the host implements each imported interface once
//! ([`v2`]).
//! [`v1`] only adds the way to call a component that exports 0.1.0's
//! `source`: its imports are mapped onto [`v2`]'s.

#![allow(missing_docs)]

/// The 0.2.0 world: every import the host provides, and 0.2.0's exports.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "coffer:plugin/plugin@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "coffer:plugin/sink@0.1.0.entry-writer": crate::host::EntryWriterSlot,
            "coffer:plugin/sink@0.1.0.snapshot-sink": crate::host::SinkSlot,
            "coffer:plugin/reader@0.1.0.snapshot-reader": crate::host::ReaderSlot,
            "coffer:plugin/reader@0.1.0.entry-reader": crate::host::EntryReaderSlot,
            "coffer:plugin/streams@0.2.0.stream-sink": crate::streams::StreamSinkSlot,
            "coffer:plugin/streams@0.2.0.stream-reader": crate::streams::StreamReaderSlot,
        },
    });
}

/// The 0.1.0 world's exports, over [`v2`]'s imports.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "coffer:plugin/plugin@0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "coffer:plugin/types@0.1.0": crate::bindings::v2::coffer::plugin0_1_0::types,
            "coffer:plugin/host@0.1.0": crate::bindings::v2::coffer::plugin0_1_0::host,
            "coffer:plugin/sink@0.1.0": crate::bindings::v2::coffer::plugin0_1_0::sink,
            "coffer:plugin/reader@0.1.0": crate::bindings::v2::coffer::plugin0_1_0::reader,
        },
    });
}

pub use v2::coffer::plugin0_1_0::{host, reader, sink, types};
pub use v2::coffer::plugin0_2_0::{dns, locks, stream_types, streams};
