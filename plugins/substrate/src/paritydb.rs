//! ParityDB directories.
