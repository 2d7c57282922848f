//! One module per repository verb; [`crate::Repository`] delegates here.

pub mod check;
pub mod diff;
pub mod dir;
mod entry_list;
pub mod epoch;
pub mod forget;
pub mod key;
pub mod lease;
pub mod prune;
pub mod read;
pub mod repair;
pub mod session;
pub mod snapshot;
pub mod stream;
pub mod wal;
