//! coffer's `postgres` plugin (in progress).
//!
//! The plugin will take physical base backups over the replication
//! protocol (`BASE_BACKUP` with a fast checkpoint, the WAL needed for
//! consistency and the backup manifest), restore them into a directory,
//! fully or to a point in time with the WAL archive coffer keeps, and
//! verify them against the backup manifest's checksums.
//!
//! What is here so far: [`backup`], the `BASE_BACKUP` stream (a copy written
//! from it to disk passes `pg_verifybackup`); [`conn`], the replication-mode
//! client with its
//! authentication (trust, password, md5, SCRAM-SHA-256) and the errors
//! that name what an operator has to change; [`tar`], the member headers of
//! the backup stream; [`manifest`], the backup manifest and its checksums;
//! [`wal`], LSNs and segment names. The entry points are
//! not exported yet, so `coffer` does not offer it.

pub mod backup;
pub mod conn;
pub mod manifest;
pub mod tar;
pub mod wal;
