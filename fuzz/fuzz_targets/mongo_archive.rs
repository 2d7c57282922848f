//! libFuzzer entry for the `mongo_archive` target (see `coffer_fuzz_targets::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_targets::run("mongo_archive", data));
