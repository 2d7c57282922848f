//! The host side of contract 0.2.0's `streams` interface: a plugin's own
//! streams, written through a stream sink (`stream-push`, `follow`) and
//! read through stream readers (`restore`, `verify`, and the sink's own
//! reader). The owner of every stream a plugin touches is the host's
//! decision (the plugin's identity), never the plugin's.

use wasmtime::component::Resource;

use crate::bindings::stream_types::{Checkpoint, Item, ItemInfo};
use crate::bindings::streams;
use crate::bindings::types::Error as WitError;
use crate::host::{EntryReaderSlot, EntryWriterSlot, PluginState, ReaderSlot, SinkSlot};

/// Where a plugin appends to its own streams.
pub struct StreamSinkSlot;

/// Read access to one owner's streams.
pub struct StreamReaderSlot;

fn not_yet() -> WitError {
    WitError::Unsupported("streams are not stored by this build yet".into())
}

impl streams::Host for PluginState {
    async fn need_stream(
        &mut self,
        _sink: Resource<SinkSlot>,
        _stream: String,
        _from: u64,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(Err(not_yet()))
    }

    async fn open_streams(&mut self, _snapshot: Resource<ReaderSlot>) -> wasmtime::Result<Resource<StreamReaderSlot>> {
        Ok(self.table.push(StreamReaderSlot)?)
    }

    async fn needed_streams(&mut self, _snapshot: Resource<ReaderSlot>) -> wasmtime::Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }
}

impl streams::HostStreamReader for PluginState {
    async fn streams(&mut self, _this: Resource<StreamReaderSlot>) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn items(
        &mut self,
        _this: Resource<StreamReaderSlot>,
        _stream: String,
        _from: Option<u64>,
        _after: Option<Item>,
        _limit: u32,
    ) -> wasmtime::Result<Result<Vec<Item>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn stat(
        &mut self,
        _this: Resource<StreamReaderSlot>,
        _stream: String,
        _key: String,
    ) -> wasmtime::Result<Result<Option<ItemInfo>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn open(
        &mut self,
        _this: Resource<StreamReaderSlot>,
        _stream: String,
        _key: String,
    ) -> wasmtime::Result<Result<Resource<EntryReaderSlot>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn last_checkpoint(
        &mut self,
        _this: Resource<StreamReaderSlot>,
        _stream: String,
    ) -> wasmtime::Result<Result<Option<Checkpoint>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn drop(&mut self, rep: Resource<StreamReaderSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl streams::HostStreamSink for PluginState {
    async fn append(
        &mut self,
        _this: Resource<StreamSinkSlot>,
        _stream: String,
        _key: String,
        _position: u64,
        _pinned: bool,
    ) -> wasmtime::Result<Result<Resource<EntryWriterSlot>, WitError>> {
        Ok(Err(not_yet()))
    }

    async fn checkpoint(
        &mut self,
        _this: Resource<StreamSinkSlot>,
        _stream: String,
        _state: String,
        _source_position: Option<u64>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(Err(not_yet()))
    }

    async fn reader(&mut self, _this: Resource<StreamSinkSlot>) -> wasmtime::Result<Resource<StreamReaderSlot>> {
        Ok(self.table.push(StreamReaderSlot)?)
    }

    async fn drop(&mut self, rep: Resource<StreamSinkSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl crate::bindings::stream_types::Host for PluginState {}
