//! The one `bindgen!` of the `coffer:plugin` contract. Host functions are
//! async and trappable: the outer `wasmtime::Result` is a host-side fault
//! that ends the plugin instance, the inner `Result` is the plugin's
//! business and reaches it as the contract's `error` variant.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "coffer:plugin/sink.entry-writer": crate::host::EntryWriterSlot,
        "coffer:plugin/sink.snapshot-sink": crate::host::SinkSlot,
        "coffer:plugin/reader.snapshot-reader": crate::host::ReaderSlot,
        "coffer:plugin/reader.entry-reader": crate::host::EntryReaderSlot,
    },
});

pub use coffer::plugin::types;
