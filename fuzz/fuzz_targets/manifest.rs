//! See [`tessera_fuzz::targets::manifest`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_fuzz::targets::manifest(data));
