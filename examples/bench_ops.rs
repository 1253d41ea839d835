//! Times tessera's ops in-process on one volume, for bench/bench.py (which times the Python
//! peers on the same file and prints ratios). Prints one JSON object: op → best seconds.
//!
//!     cargo run --release --example bench_ops -- VOLUME.tif REPEATS [OP,OP...]
//!
//! With a list of ops, only those are timed (the others run once, for their results).

use std::time::Instant;

use tessera::io::{Data, ReadLimits, read_image};
use tessera::ops::Ctx;
use tessera::ops::{Op, Value, contacts, distance, filters, label, measure, morphology, threshold, voronoi, watershed};

fn best<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = None;
    let mut t = f64::INFINITY;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let r = f();
        t = t.min(t0.elapsed().as_secs_f64());
        out = Some(r);
    }
    (t, out.expect("repeats > 0"))
}

fn main() {
    // The command's allocator settings, so that ops reuse freed pages as they do in `tessera run`.
    tessera::alloc::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: bench_ops VOLUME.tif REPEATS");
    let repeats: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let only: Option<Vec<String>> = args.next().map(|s| s.split(',').map(str::to_string).collect());
    let timed = |k: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == k));
    let img = read_image(std::path::Path::new(&path), ReadLimits::default()).expect("read volume");
    let ctx = Ctx { sample: "bench", spacing: [1.0; 3], unit: "um", ndim: 3 };
    let mut times = serde_json::Map::new();
    let mut put = |k: &str, t: f64| {
        if timed(k) {
            times.insert(k.to_string(), serde_json::json!(t));
        }
    };
    // Repeats for op `k`: once when it is not timed.
    let reps = |k: &str| if timed(k) { repeats } else { 1 };

    let (t, smooth) = best(reps("gaussian_s1"), || filters::smooth(&img.data, [1.0; 3], 4.0, 3, ([0; 3], img.data.shape())).unwrap());
    put("gaussian_s1", t);
    for (k, size) in [("median_3", 3), ("median_5", 5)] {
        if timed(k) {
            let (t, _) = best(repeats, || filters::window_filter(&img.data, [size; 3], filters::Rank::Median).unwrap());
            put(k, t);
        }
    }
    let smooth = Data::F32(smooth);
    let (t, thr) = best(reps("otsu"), || threshold::otsu(&smooth, 256).unwrap());
    put("otsu", t);
    let mask = threshold::apply(&smooth, thr, false).unwrap();
    let se = morphology::Element::new(1.0, morphology::Shape::Ball, morphology::RadiusUnit::Voxel, [1.0; 3], 3);
    let (t, opened) = best(reps("opening_ball1"), || morphology::morph(&mask, &se, morphology::Morph::Opening));
    put("opening_ball1", t);
    let (t, (labels, n)) = best(reps("label_26"), || label::label_narrow(&opened, 26).unwrap());
    put("label_26", t);
    let ops: [(&str, &dyn Fn()); 3] = [
        ("measure", &|| drop(measure::measure(&labels, &[("raw", &img.data)], &ctx))),
        ("distance", &|| drop(distance::edt(&opened, [1.0; 3], 3, false))),
        ("voronoi", &|| drop(voronoi::voronoi(&labels.u32(), &mask, [1.0; 3], 3).unwrap())),
    ];
    for (k, f) in ops {
        if timed(k) {
            put(k, best(repeats, f).0);
        }
    }
    // Shapes and declumping (issue 22): the contact graph of the objects; the distance map's
    // h-maxima labelled as markers, and the watershed of the inverted distance map in the mask.
    if timed("contacts") {
        let op = contacts::ContactsOp { labels: "l".into() };
        let l = Value::Labels(labels.clone());
        put("contacts", best(repeats, || drop(op.run(&[&l], &ctx).unwrap())).0);
    }
    if timed("h_maxima") || timed("watershed") {
        let dist = Data::F32(distance::edt(&opened, [1.0; 3], 3, false));
        let (t, hmax) = best(reps("h_maxima"), || watershed::h_maxima(&dist, 1.0, 26).unwrap());
        put("h_maxima", t);
        let (markers, seeds) = label::label(&hmax, 26).unwrap();
        let op = watershed::Watershed { input: "d".into(), markers: "m".into(), mask: Some("k".into()), connectivity: None, invert: true };
        let (d, m, k) = (Value::Image(dist), Value::Labels(markers.into()), Value::Mask(opened.clone()));
        put("watershed", best(reps("watershed"), || drop(op.run(&[&d, &m, &k], &ctx).unwrap())).0);
        times.insert("seeds".into(), serde_json::json!(seeds as f64));
    }
    times.insert("objects".into(), serde_json::json!(n as f64));
    println!("{}", serde_json::Value::Object(times));
}
