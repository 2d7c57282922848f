//! Substrate keystores.
