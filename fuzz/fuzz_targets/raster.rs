//! See [`tessera_fuzz::targets::raster`].
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_fuzz::targets::raster(data));
