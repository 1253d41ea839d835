//! The fuzz corpus as an ordinary test: every input of `fuzz/corpus/<target>/` (the committed,
//! minimised corpus of `cargo fuzz`) and of `fuzz/regressions/<target>/` (each input that once
//! made a target fail, kept after its fix) goes through the same target function as under
//! libFuzzer (`fuzz/src/lib.rs`), here without sanitizers or a nightly toolchain. A panic is
//! reported with the input's file name.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

fn run_inputs(target: &str, f: fn(&[u8])) {
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
        if let Ok(rd) = std::fs::read_dir(&d) {
            inputs.extend(rd.flatten().map(|e| e.path()));
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            std::panic::catch_unwind(|| f(&bytes)).is_err().then(|| p.display().to_string())
        })
        .collect();
    let _ = std::fs::remove_dir_all(fuzz::scratch());
    assert!(failed.is_empty(), "{} of {} inputs of {target} failed: {failed:#?}", failed.len(), inputs.len());
    eprintln!("{target}: {} inputs", inputs.len());
}

macro_rules! corpus_tests {
    ($($t:ident),*) => {$(
        #[test]
        fn $t() {
            run_inputs(stringify!($t), fuzz::targets::$t);
        }
    )*};
}

corpus_tests!(tiff, raster, npy, zarr, pipeline, manifest, checkpoint, record);
