//! What this machine's memory and page cache allow, for bench/profile.py's account of an
//! end-to-end run: the costs no implementation of the chain avoids. Prints one JSON object.
//!
//!     cargo run --release --example floor -- VOLUME.tif TOUCH_BYTES WRITE_BYTES SCRATCH_DIR
//!
//! - `read`: the volume's bytes from the page cache into fresh memory (`std::fs::read`);
//! - `touch`: TOUCH_BYTES of fresh memory, advised as huge pages and written by every thread
//!   (tessera's `util::zeroed`: the cheapest first touch here);
//! - `reuse`: the same bytes written again (memory already touched);
//! - `write`: WRITE_BYTES written to a new file in SCRATCH_DIR (page cache; no fsync), removed.

use std::io::Write;
use std::time::Instant;

fn main() {
    tessera::alloc::keep_freed_memory();
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 4 {
        eprintln!("usage: floor VOLUME.tif TOUCH_BYTES WRITE_BYTES SCRATCH_DIR");
        std::process::exit(2);
    }
    let (touch, write): (usize, usize) = (a[1].parse().expect("TOUCH_BYTES"), a[2].parse().expect("WRITE_BYTES"));
    let t = Instant::now();
    let bytes = std::fs::read(&a[0]).expect("read the volume");
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut mem: Vec<u8> = tessera::util::zeroed(touch);
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    {
        use rayon::prelude::*;
        mem.par_chunks_mut(1 << 20).for_each(|c| c.fill(1));
    }
    let reuse = t.elapsed().as_secs_f64();
    let path = std::path::Path::new(&a[3]).join(format!("floor-{}.bin", std::process::id()));
    let buf = vec![7u8; 4 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).expect("create the scratch file");
    let mut left = write;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write the scratch file");
        left -= n;
    }
    drop(f);
    let wrote = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    println!(
        "{}",
        serde_json::json!({"read": read, "read_bytes": bytes.len(), "touch": first, "reuse": reuse, "touch_bytes": touch,
                           "write": wrote, "write_bytes": write, "check": mem[touch / 2] as u64 + bytes.len() as u64 % 2})
    );
}
