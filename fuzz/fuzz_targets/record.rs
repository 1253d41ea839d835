//! See [`tessera_fuzz::targets::record`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_fuzz::targets::record(data));
