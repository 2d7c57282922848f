//! The legacy WAL archive: `wal/<stream>/<name>` objects that coffer
//! wrote for PostgreSQL's `archive_command` before streams (repository
//! format 3). This build never writes one; it reads them generically, as
//! the built-in postgres plugin's stream items (`commands::stream`), counts
//! their chunks as used in prune and checks them in `check`. What a WAL
//! file is, is the postgres plugin's business.

use std::collections::{HashMap, HashSet};

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::aad;
use crate::repofile::wal::{WalObject, object_name, split_object_name, valid_stream};
use crate::repository::Repository;

/// One archived file as listed (read from the listing, not the object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalListing {
    /// The WAL file name.
    pub name: String,
    /// When the store last wrote the object.
    pub stored: chrono::DateTime<chrono::Utc>,
}

fn check_names(stream: &str, name: &str) -> Result<()> {
    valid_stream(stream).map_err(Error::Invalid)?;
    crate::repofile::stream::valid_key(name).map_err(Error::Invalid)
}

fn wal_path(stream: &str, name: &str) -> String {
    FileKind::Wal.path(&object_name(stream, name))
}

impl Repository {
    /// Reads the object describing an archived WAL file.
    pub async fn read_wal(&self, stream: &str, name: &str) -> Result<WalObject> {
        check_names(stream, name)?;
        let object = object_name(stream, name);
        let path = wal_path(stream, name);
        let Some(obj) = self.read_named_json::<WalObject>(FileKind::Wal, &object, aad::WAL).await? else {
            return Err(Error::WalNotFound { stream: stream.to_string(), name: name.to_string() });
        };
        if obj.version != 1 {
            return Err(Error::corrupt(&path, format!("unknown WAL object version {}", obj.version)));
        }
        if obj.stream != stream || obj.name != name {
            return Err(Error::corrupt(
                &path,
                format!("it describes {}/{} (the object was moved or replaced)", obj.stream, obj.name),
            ));
        }
        if !obj.places.is_empty() && obj.places.len() != obj.chunks.len() {
            return Err(Error::corrupt(&path, "its chunk places do not match its chunks"));
        }
        Ok(obj)
    }

    /// Every archived file: (stream, listing), sorted by stream and name.
    pub(crate) async fn wal_listings(&self) -> Result<Vec<(String, WalListing)>> {
        let mut out: Vec<(String, WalListing)> = Vec::new();
        for l in self.backend.list(FileKind::Wal).await? {
            let Some((stream, name)) = split_object_name(&l.name) else { continue };
            out.push((stream.to_string(), WalListing { name: name.to_string(), stored: l.modified }));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.name.cmp(&b.1.name)));
        Ok(out)
    }

    /// The chunk ids of every WAL object now listed, reading each object
    /// not already in `cache` (object name -> chunks). Objects deleted while
    /// listing are skipped; unreadable ones are errors.
    pub(crate) async fn wal_chunks(&self, cache: &mut HashMap<String, Vec<Id>>) -> Result<HashSet<Id>> {
        let mut used = HashSet::new();
        for (stream, l) in self.wal_listings().await? {
            let object = object_name(&stream, &l.name);
            if !cache.contains_key(&object) {
                match self.read_wal(&stream, &l.name).await {
                    Ok(obj) => {
                        cache.insert(object.clone(), obj.chunks);
                    }
                    Err(Error::WalNotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            used.extend(cache[&object].iter().copied());
        }
        Ok(used)
    }
}

#[cfg(feature = "test-support")]
mod legacy_writer {
    //! Writes `wal/` objects as coffer format 3 did, for tests of reading
    //! them: this build itself never writes one.
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::backend::PutMode;
    use crate::blob::BlobKind;
    use crate::commands::session::Session;
    use crate::packer::BlobSaver;
    use crate::repofile::index::{ChunkPlace, IndexFile};

    impl Repository {
        /// Stores `data` as the legacy object `wal/<stream>/<name>` (raising
        /// the repository to format 3), as `coffer wal push` did before
        /// streams. Test support.
        pub async fn legacy_wal_push(&self, stream: &str, name: &str, data: Bytes) -> Result<()> {
            check_names(stream, name)?;
            self.require_version(crate::repofile::config::WAL_FORMAT_VERSION).await?;
            let session = Session::start_for(self, "wal push", "").await?;
            let stored = self.legacy_wal_store(stream, name, data).await;
            session.end().await;
            stored
        }

        async fn legacy_wal_store(&self, stream: &str, name: &str, data: Bytes) -> Result<()> {
            let digest = blake3::hash(&data).to_hex().to_string();
            let size = data.len() as u64;
            let key = crate::commands::epoch::writable_key(&*self.load_keyring().await?)?;
            let index = self.load_index().await?;
            let saver =
                BlobSaver::new(key, self.config.compression, Arc::clone(&self.backend), self.config.pack_size as usize);
            let mut chunks = Vec::new();
            let mut pending: HashSet<Id> = HashSet::new();
            for piece in self.chunker.split_all(data) {
                let id = self.keys.chunk_id(&piece);
                chunks.push(id);
                if !index.contains_usable(&id) && pending.insert(id) {
                    saver.save(BlobKind::Data, id, piece).await?;
                }
            }
            let packs = saver.finish().await?;
            let mut places: BTreeMap<Id, ChunkPlace> = BTreeMap::new();
            for p in &packs {
                for b in &p.blobs {
                    places.insert(
                        b.id,
                        ChunkPlace {
                            pack: p.id,
                            offset: b.offset,
                            length: b.length,
                            raw_len: b.raw_len,
                            epoch: p.epoch,
                        },
                    );
                }
            }
            if !packs.is_empty() {
                self.write_index_file(&IndexFile { supersedes: vec![], packs: packs.clone() }).await?;
            }
            let obj = WalObject {
                version: 1,
                stream: stream.to_string(),
                name: name.to_string(),
                size,
                blake3: digest,
                places: chunks.iter().map(|c| places.get(c).copied()).collect(),
                chunks,
                pushed: chrono::Utc::now(),
                host: String::new(),
            };
            let body = serde_json::to_vec(&obj).expect("WAL object serializes");
            let sealed = Bytes::from(self.keys.seal(&body, aad::WAL));
            self.backend.put(FileKind::Wal, &object_name(stream, name), sealed, PutMode::CreateNew).await?;
            Ok(())
        }
    }
}
