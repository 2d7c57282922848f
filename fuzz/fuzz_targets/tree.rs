//! libFuzzer entry for the `tree` target (see `coffer_fuzz_targets::TARGETS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_targets::run("tree", data));
