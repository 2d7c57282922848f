//! The format readers of the `redis`, `postgres` and `mongodb` plugins, the very
//! source files, compiled for the host as a plain library. The plugin
//! crates cannot be dependencies of the fuzz targets: they are also
//! `cdylib`s, whose component exports do not link as a host shared library.
//! The modules are plain Rust and name only each other (`crate::compact`,
//! `crate::lzf`), so they keep their names here.

#[path = "../../../plugins/redis/src/aof.rs"]
pub mod aof;
#[path = "../../../plugins/mongodb/src/archive.rs"]
pub mod archive;
#[path = "../../../plugins/mongodb/src/bsonfile.rs"]
pub mod bsonfile;
#[path = "../../../plugins/redis/src/compact.rs"]
pub mod compact;
#[path = "../../../plugins/mongodb/src/dump.rs"]
pub mod dump;
#[path = "../../../plugins/redis/src/lzf.rs"]
pub mod lzf;
#[path = "../../../plugins/postgres/src/manifest.rs"]
pub mod manifest;
#[path = "../../../plugins/redis/src/rdb.rs"]
pub mod rdb;
#[path = "../../../plugins/postgres/src/tar.rs"]
pub mod tar;
