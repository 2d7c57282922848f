//! Seeding from a mongodump directory: `<db>/<coll>.bson` (concatenated
//! BSON documents) and `<coll>.metadata.json` (extended JSON with
//! `options`, `indexes`, `uuid`, `type`).

use std::io;
use std::path::Path;

use crate::server::{Shared, State};

pub(crate) fn load(_shared: &Shared, _st: &mut State, dir: &Path) -> io::Result<()> {
    Err(io::Error::other(format!("{}: loading a dump is not implemented yet", dir.display())))
}
