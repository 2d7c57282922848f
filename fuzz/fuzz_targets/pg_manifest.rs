//! libFuzzer entry for the `pg_manifest` target (see `coffer_fuzz_targets::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_targets::run("pg_manifest", data));
