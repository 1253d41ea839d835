//! Ops against the scipy / scikit-image goldens in testdata/golden (made by make_golden.py).
//! Exact where the reference is exact (thresholds, labels, counts, boxes); stated tolerances for
//! floats.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use tessera::io::{Data, ReadLimits, read_image};
use tessera::ops::{Ctx, filters, label, measure, threshold};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(p)
}

fn load(p: &str) -> (Data, u8) {
    let img = read_image(&data(p), ReadLimits::default()).unwrap_or_else(|e| panic!("{p}: {e}"));
    (img.data, img.ndim)
}

fn otsu_golden(name: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("golden/otsu.json")).unwrap()).unwrap();
    v[name].as_f64().unwrap()
}

#[test]
fn otsu_equals_skimage_on_integer_and_float_images() {
    for name in ["nuclei2d", "nuclei3d", "neuron3d"] {
        let (d, _) = load(&format!("{name}.tif"));
        assert_eq!(threshold::otsu(&d, 256).unwrap(), otsu_golden(name), "{name}");
    }
}

#[test]
fn otsu_equals_skimage_on_scipy_smoothed_float32() {
    let (d, _) = load("golden/gaussian_nuclei3d_s1.npy");
    assert_eq!(threshold::otsu(&d, 256).unwrap(), otsu_golden("nuclei3d_gaussian_s1"));
}

fn as_f32(d: Data) -> Array3<f32> {
    match d {
        Data::F32(a) => a,
        other => panic!("expected f32, found {:?}", other.dtype()),
    }
}

#[test]
fn gaussian_matches_scipy_within_1e_3() {
    for (src, golden, sigma) in [
        ("nuclei3d.tif", "gaussian_nuclei3d_s1.npy", [1.0, 1.0, 1.0]),
        ("nuclei3d.tif", "gaussian_nuclei3d_s1-1.5-2.npy", [1.0, 1.5, 2.0]),
        ("nuclei2d.tif", "gaussian_nuclei2d_s2.npy", [2.0, 2.0, 2.0]),
    ] {
        let (d, ndim) = load(src);
        let got = filters::gaussian(filters::to_f32(&d).unwrap(), sigma, 4.0, ndim);
        let want = as_f32(load(&format!("golden/{golden}")).0);
        assert_eq!(got.shape(), want.shape());
        let worst = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Observed: a few float32 ulps; the contract is 1e-3 absolute on 0–400 data.
        assert!(worst <= 1e-3, "{golden}: max |diff| = {worst}");
    }
}

fn golden_labels(name: &str) -> Array3<u32> {
    match load(&format!("golden/{name}")).0 {
        Data::U16(a) => a.mapv(u32::from),
        other => panic!("labels golden is {:?}", other.dtype()),
    }
}

#[test]
fn labels_equal_scipy_ndimage_label() {
    for (name, conn) in [("nuclei2d", 4u8), ("nuclei2d", 8), ("nuclei3d", 6), ("nuclei3d", 26), ("neuron3d", 18)] {
        let (d, _) = load(&format!("{name}.tif"));
        let mask = threshold::apply(&d, threshold::otsu(&d, 256).unwrap(), false).unwrap();
        let (got, n) = label::label(&mask, conn).unwrap();
        let want = golden_labels(&format!("labels_{name}_c{conn}.npy"));
        assert_eq!(n, want.iter().copied().max().unwrap(), "{name} c{conn}: object count");
        assert!(got == want, "{name} c{conn}: labels differ from scipy");
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

#[test]
fn measure_equals_regionprops_with_spacing() {
    for (name, conn) in [("nuclei2d", 4u8), ("nuclei2d", 8), ("nuclei3d", 6), ("nuclei3d", 26), ("neuron3d", 18)] {
        let stem = format!("{name}_c{conn}");
        let labels = golden_labels(&format!("labels_{stem}.npy"));
        let (raw, ndim) = load(&format!("{name}.tif"));
        check_props(&stem, &labels, Some(&raw), None, ndim);
    }
}

/// Objects that break naive code: one voxel, touching the border, a cavity, a tunnel, face,
/// edge and corner contacts; anisotropic spacing; territories in 3D.
#[test]
fn measure_shapes_equal_skimage_and_cc3d_on_awkward_objects() {
    let (l3, nd3) = load("golden/shapes3d_labels.npy");
    let terr = golden_labels("territories_shapes3d.npy");
    check_props("shapes3d", &to_u32(l3), None, Some(&terr), nd3);
    let (l2, nd2) = load("golden/shapes2d_labels.npy");
    assert_eq!(nd2, 2);
    check_props("shapes2d", &to_u32(l2), None, None, nd2);
}

/// `n_territory_neighbors` against cc3d's contact graph of the territories.
#[test]
fn territory_neighbors_equal_cc3d_contacts() {
    let labels = golden_labels("labels_nuclei3d_c26.npy");
    let terr = golden_labels("territories_nuclei3d_c26.npy");
    let ctx = Ctx { sample: "t", spacing: [2.0, 0.5, 0.5], unit: "um", ndim: 3 };
    let t = measure::measure_with(&labels.clone().into(), &[], Some(&terr), &ctx);
    let mut rdr = csv::Reader::from_path(data("golden/territory_neighbors_nuclei3d_c26.csv")).unwrap();
    let want: Vec<(u32, u64)> = rdr.records().map(|r| r.unwrap()).map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap())).collect();
    let got: Vec<(u32, u64)> = t.u32("label").into_iter().zip(t.u64("n_territory_neighbors")).collect();
    assert_eq!(got, want);
}

fn to_u32(d: Data) -> Array3<u32> {
    match d {
        Data::U16(a) => a.mapv(u32::from),
        Data::U32(a) => a,
        other => panic!("labels golden is {:?}", other.dtype()),
    }
}

/// The spacing (z, y, x; z = 1 in 2D) the goldens of `stem` were made with (props_<stem>.spacing).
fn golden_spacing(stem: &str) -> [f64; 3] {
    let sp: Vec<f64> = std::fs::read_to_string(data(&format!("golden/props_{stem}.spacing")))
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    if sp.len() == 2 { [1.0, sp[0], sp[1]] } else { [sp[0], sp[1], sp[2]] }
}

/// Compares `measure` with the golden props_<stem>.csv, column by column, with stated tolerances.
fn check_props(stem: &str, labels: &Array3<u32>, raw: Option<&Data>, terr: Option<&Array3<u32>>, ndim: u8) {
    let ctx = Ctx { sample: stem, spacing: golden_spacing(stem), unit: "um", ndim };
    let images: Vec<(&str, &Data)> = raw.iter().map(|d| ("raw", *d)).collect();
    let t = measure::measure_with(&labels.clone().into(), &images, terr, &ctx);
    // Labels held as u16 give the same table, to the bit.
    let narrow = tessera::ops::Labels::from(labels.clone()).narrowest(labels.iter().copied().max().unwrap_or(0));
    assert!(matches!(narrow, tessera::ops::Labels::U16(_)), "{stem}: the golden labels fit u16");
    let bits = tessera::store::encode_table;
    assert!(bits(&measure::measure_with(&narrow, &images, terr, &ctx)) == bits(&t), "{stem}: u16 labels give another table");
    let mut rdr = csv::Reader::from_path(data(&format!("golden/props_{stem}.csv"))).unwrap();
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(t.rows(), rows.len(), "{stem}: rows");
    let col = |h: &str| -> Vec<f64> {
        match t.get(h).unwrap_or_else(|| panic!("{stem}: no column {h}")) {
            tessera::table::Column::F64(v) => v.clone(),
            tessera::table::Column::U64(v) => v.iter().map(|&x| x as f64).collect(),
            tessera::table::Column::I64(v) => v.iter().map(|&x| x as f64).collect(),
            tessera::table::Column::U32(v) => v.iter().map(|&x| x as f64).collect(),
            tessera::table::Column::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
            other => panic!("{h}: {other:?}"),
        }
    };
    let want_col = |h: &str| -> Vec<f64> {
        let ci = headers.iter().position(|x| x == h).unwrap();
        rows.iter().map(|r| r[ci].parse().unwrap()).collect()
    };
    let maybe = |h: &str| if headers.iter().any(|x| x == h) { want_col(h) } else { Vec::new() };
    let (eig0, major) = (maybe("inertia_eig_0"), maybe("major_axis_length"));
    let float_raw = matches!(raw, Some(Data::F32(_)));
    for h in &headers {
        let (got, want) = (col(h), want_col(h));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ok = match h.as_str() {
                "label" | "nn_label" | "touches_border" | "euler_number" | "n_neighbors" | "n_territory_neighbors" => g == w,
                h if h.starts_with("bbox") || h.ends_with("_min") || h.ends_with("_max") => g == w,
                // Eigenvalues: relative to the object's largest one (a flat object's smallest is
                // 0 here and ~1e-17 in LAPACK).
                h if h.starts_with("inertia_eig") => (g - w).abs() <= 1e-9 * eig0[i].max(f64::MIN_POSITIVE),
                // Axis lengths are square roots of eigenvalue sums: compare their squares.
                "major_axis_length" | "minor_axis_length" => (g * g - w * w).abs() <= 1e-9 * (major[i] * major[i]).max(f64::MIN_POSITIVE),
                // 1 − minor/major inherits the square-root conditioning of a vanishing minor axis.
                "anisotropy" => (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6,
                // skimage sums float32 intensities in float32 (tessera in float64): 1e-6 there.
                h if h.starts_with("raw_") && float_raw => close(*g, *w, 1e-6),
                // A single pixel has no perimeter: no sphericity.
                "sphericity" => (g.is_nan() && w.is_nan()) || close(*g, *w, 1e-9),
                _ => close(*g, *w, 1e-9),
            };
            assert!(ok, "{stem} row {i} {h}: tessera {g} vs reference {w}");
        }
    }
}

fn golden_mask(name: &str) -> Array3<u8> {
    match load(&format!("golden/{name}")).0 {
        Data::U8(a) => a,
        other => panic!("mask golden is {:?}", other.dtype()),
    }
}

fn otsu_mask(name: &str) -> (Array3<u8>, u8) {
    let (d, ndim) = load(&format!("{name}.tif"));
    (threshold::apply(&d, threshold::otsu(&d, 256).unwrap(), false).unwrap(), ndim)
}

#[test]
fn morphology_equals_scipy_binary_ops() {
    use tessera::ops::morphology::{Element, Morph, RadiusUnit, Shape, morph};
    let cases = [
        ("nuclei3d", Shape::Ball, 1.0, [1.0, 1.0, 1.0], "nuclei3d_ball1"),
        ("nuclei3d", Shape::Ball, 2.0, [1.0, 1.0, 1.0], "nuclei3d_ball2"),
        ("nuclei3d", Shape::Cube, 1.0, [1.0, 1.0, 1.0], "nuclei3d_cube1"),
        ("nuclei3d", Shape::Ball, 1.0, [2.0, 0.5, 0.5], "nuclei3d_ball1_phys"),
        ("nuclei2d", Shape::Ball, 2.0, [1.0, 1.0, 1.0], "nuclei2d_ball2"),
    ];
    for (name, shape, r, spacing, tag) in cases {
        let (mask, ndim) = otsu_mask(name);
        let unit = if spacing == [1.0; 3] { RadiusUnit::Voxel } else { RadiusUnit::Physical };
        let se = Element::new(r, shape, unit, spacing, ndim);
        for (op, kind) in
            [("erosion", Morph::Erosion), ("dilation", Morph::Dilation), ("opening", Morph::Opening), ("closing", Morph::Closing)]
        {
            let want = golden_mask(&format!("morph_{op}_{tag}.npy"));
            let got = morph(&mask, &se, kind);
            let diff = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{op} {tag}: {diff} voxels differ from scipy");
        }
    }
}

#[test]
fn fill_holes_equals_scipy() {
    use tessera::ops::morphology::fill_holes;
    for name in ["nuclei3d", "nuclei2d"] {
        let (mask, ndim) = otsu_mask(name);
        assert!(fill_holes(&mask, ndim) == golden_mask(&format!("morph_fill_holes_{name}.npy")), "{name}");
        let inv = mask.mapv(|v| 1 - v);
        assert!(fill_holes(&inv, ndim) == golden_mask(&format!("morph_fill_holes_{name}_inverted.npy")), "{name} inverted");
    }
}

#[test]
fn distance_equals_scipy_edt_within_1e_5() {
    use tessera::ops::distance::edt;
    for (name, spacing) in [("nuclei3d", [2.0, 0.5, 0.5]), ("nuclei2d", [1.0, 0.5, 0.25])] {
        let (mask, ndim) = otsu_mask(name);
        for (tag, invert) in [("", false), ("_inverted", true)] {
            let want = as_f32(load(&format!("golden/distance_{name}{tag}.npy")).0);
            let got = edt(&mask, spacing, ndim, invert);
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-3), "{name}{tag}: {g} vs scipy {w}");
            }
        }
    }
}

#[test]
fn window_filters_equal_scipy_exactly() {
    use tessera::ops::filters::{Rank, window_filter};
    let nuclei3d = load("nuclei3d.tif").0;
    let u8 = match &nuclei3d {
        Data::U16(a) => Data::U8(a.mapv(|v| (v / 2) as u8)),
        _ => unreachable!(),
    };
    let neuron = match load("neuron3d.tif").0 {
        Data::F32(a) => Data::F32(a.slice(ndarray::s![10..30, 32..96, 32..96]).to_owned()),
        _ => unreachable!(),
    };
    let cases = [
        ("nuclei3d", nuclei3d, [3, 3, 3]),
        ("nuclei3d_u8", u8.clone(), [1, 3, 5]),
        ("nuclei2d", load("nuclei2d.tif").0, [1, 5, 5]),
        ("neuron3d_crop", neuron, [3, 3, 3]),
        ("nuclei3d_u8_c3", u8.clone(), [3, 3, 3]),
        ("nuclei3d_u8_c5", u8, [5, 5, 5]),
    ];
    for (name, img, size) in &cases {
        for (op, rank) in [("mean", Rank::Mean), ("median", Rank::Median), ("minimum", Rank::Minimum), ("maximum", Rank::Maximum)] {
            // The 8-bit cubes check the sliding-histogram median only.
            if (name.ends_with("_c3") || name.ends_with("_c5")) && rank != Rank::Median {
                continue;
            }
            let want = load(&format!("golden/window_{op}_{name}.npy")).0;
            let got = window_filter(img, *size, rank).unwrap();
            assert!(got == want, "{op} {name} differs from scipy");
        }
    }
}

#[test]
fn li_and_triangle_equal_skimage() {
    let nuclei3d = load("nuclei3d.tif").0;
    let u8 = match &nuclei3d {
        Data::U16(a) => Data::U8(a.mapv(|v| (v / 2) as u8)),
        _ => unreachable!(),
    };
    let cases = [("nuclei2d", load("nuclei2d.tif").0), ("nuclei3d", nuclei3d), ("nuclei3d_u8", u8), ("neuron3d", load("neuron3d.tif").0)];
    for (name, d) in &cases {
        let tri = threshold::triangle(d, 256).unwrap();
        assert_eq!(tri, otsu_golden(&format!("triangle_{name}")), "triangle {name}");
        let li = threshold::li(d).unwrap();
        let want = otsu_golden(&format!("li_{name}"));
        if matches!(d, Data::F32(_)) {
            // skimage iterates float images in float32 (tessera in float64): 1e-6 relative, same mask.
            assert!((li - want).abs() <= 1e-6 * want.abs(), "li {name}: {li} vs {want}");
            let (a, b) = (threshold::apply(d, li, false).unwrap(), threshold::apply(d, want, false).unwrap());
            assert!(a == b, "li {name}: masks differ");
        } else {
            assert_eq!(li, want, "li {name}");
        }
    }
}

#[test]
fn grayscale_equals_pil_convert_l() {
    use tessera::ops::transform::grayscale;
    let rgb = load("formats/rgb8.png").0;
    let want = match load("formats/rgb8_gray_pil.npy").0 {
        Data::U8(a) => a.into_shape_with_order((1, 64, 96)).unwrap(),
        other => panic!("{:?}", other.dtype()),
    };
    assert_eq!(grayscale(&rgb), Data::U8(want));
}

#[test]
fn rescale_equals_skimage_rescale_intensity() {
    use tessera::ops::transform::{OutType, Range, RangeName, rescale};
    let neuron = match load("neuron3d.tif").0 {
        Data::F32(a) => Data::F32(a.slice(ndarray::s![10..30, 32..96, 32..96]).to_owned()),
        _ => unreachable!(),
    };
    let (n3, n2) = (load("nuclei3d.tif").0, load("nuclei2d.tif").0);
    let cases = [
        (&n3, Range::Named(RangeName::Image), OutType::U8, "0_nuclei3d"),
        (&n3, Range::Values([150.0, 300.0]), OutType::U8, "1_nuclei3d"),
        (&n2, Range::Named(RangeName::Dtype), OutType::U8, "2_nuclei2d"),
        (&n2, Range::Named(RangeName::Image), OutType::F32, "3_nuclei2d"),
        (&neuron, Range::Named(RangeName::Image), OutType::U16, "4_neuron3d_crop"),
        (&neuron, Range::Values([40.0, 120.0]), OutType::U8, "5_neuron3d_crop"),
    ];
    for (img, r, out, tag) in cases {
        let got = rescale(img, &r, out).unwrap();
        // 2D goldens are (y, x): our reader gives a 1-slice stack, as the op does.
        let want = load(&format!("golden/rescale_{tag}.npy")).0;
        assert!(got == want, "rescale {tag} differs from skimage");
    }
}

#[test]
fn downsample_equals_numpy_block_mean() {
    use tessera::ops::downsample::block_mean;
    let got = block_mean(&load("nuclei3d.tif").0, [1, 2, 3]).unwrap();
    assert!(Data::F32(got) == load("golden/downsample_nuclei3d_1-2-3.npy").0);
}

/// The `contacts` table against cc3d.contacts (face counts exact; areas to 1e-12, since cc3d
/// adds them face by face).
#[test]
fn contacts_equal_cc3d() {
    use tessera::ops::{Op, Value, contacts::ContactsOp};
    let cases = [
        ("nuclei2d_c4", "labels_nuclei2d_c4.npy"),
        ("nuclei2d_c8", "labels_nuclei2d_c8.npy"),
        ("nuclei3d_c6", "labels_nuclei3d_c6.npy"),
        ("nuclei3d_c26", "labels_nuclei3d_c26.npy"),
        ("neuron3d_c18", "labels_neuron3d_c18.npy"),
        ("shapes3d", "shapes3d_labels.npy"),
        ("shapes2d", "shapes2d_labels.npy"),
    ];
    for (stem, file) in cases {
        let (l, ndim) = load(&format!("golden/{file}"));
        let ctx = Ctx { sample: stem, spacing: golden_spacing(stem), unit: "um", ndim };
        let op = ContactsOp { labels: "l".into() };
        let Value::Table(t) = op.run(&[&Value::Labels(to_u32(l).into())], &ctx).unwrap() else { panic!("{stem}: not a table") };
        let mut rdr = csv::Reader::from_path(data(&format!("golden/contacts_{stem}.csv"))).unwrap();
        let want: Vec<(u32, u32, u64, f64)> = rdr
            .records()
            .map(|r| r.unwrap())
            .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap(), r[2].parse().unwrap(), r[3].parse().unwrap()))
            .collect();
        let (a, b, f, area) = (t.u32("label_a"), t.u32("label_b"), t.u64("faces"), t.f64("area"));
        assert_eq!(a.len(), want.len(), "{stem}: pairs");
        for (i, w) in want.iter().enumerate() {
            assert_eq!((a[i], b[i], f[i]), (w.0, w.1, w.2), "{stem} row {i}");
            assert!(close(area[i], w.3, 1e-12), "{stem} row {i}: area {} vs cc3d {}", area[i], w.3);
        }
    }
}

fn golden_u8(name: &str) -> Array3<u8> {
    match load(&format!("golden/{name}")).0 {
        Data::U8(a) => a,
        other => panic!("{name}: {:?}", other.dtype()),
    }
}

/// `h_maxima` against skimage.morphology.h_maxima: float32 distance maps, integer images with
/// integral and fractional h, 2D; voxel for voxel.
#[test]
fn h_maxima_equals_skimage() {
    use tessera::ops::watershed::h_maxima;
    let (dist, _) = load("golden/distance_nuclei3d.npy");
    let (n3, _) = load("nuclei3d.tif");
    let (n2, _) = load("nuclei2d.tif");
    let cases: [(&str, &Data, f64, u8); 6] = [
        ("dist_h1", &dist, 1.0, 26),
        ("dist_h2.5", &dist, 2.5, 26),
        ("dist_c6_h1", &dist, 1.0, 6),
        ("nuclei3d_h20", &n3, 20.0, 26),
        ("nuclei3d_h7.5", &n3, 7.5, 26),
        ("nuclei2d_h30", &n2, 30.0, 8),
    ];
    for (name, img, h, conn) in cases {
        let got = h_maxima(img, h, conn).unwrap();
        let want = golden_u8(&format!("hmax_{name}.npy"));
        assert!(want.iter().any(|&v| v == 1), "{name}: the golden has maxima");
        let diff = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} voxels differ from skimage");
    }
}

/// `watershed` against skimage.segmentation.watershed, label for label: the declumping recipe
/// (inverted distance map, h-maxima markers, a mask), raw integer images with many ties, and flat
/// images where only the heap's order decides.
#[test]
fn watershed_equals_skimage() {
    use tessera::ops::{Op, Value, watershed::Watershed};
    let run = |img: &Data, markers: Array3<u32>, mask: Option<Array3<u8>>, conn: u8, invert: bool, ndim: u8| {
        let op =
            Watershed { input: "i".into(), markers: "m".into(), mask: mask.as_ref().map(|_| "k".into()), connectivity: Some(conn), invert };
        let ctx = Ctx { sample: "w", spacing: [1.0; 3], unit: "um", ndim };
        let (i, m) = (Value::Image(img.clone()), Value::Labels(markers.into()));
        let k = mask.map(Value::Mask);
        let mut inputs = vec![&i, &m];
        inputs.extend(k.as_ref());
        match op.run(&inputs, &ctx).unwrap() {
            Value::Labels(l) => l.into_u32(),
            _ => panic!("not labels"),
        }
    };
    let check = |name: &str, got: Array3<u32>| {
        let want = golden_labels(name);
        let diff = got.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} voxels differ from skimage");
    };
    // The declumping recipe on the distance map of the nuclei.
    let (dist, _) = load("golden/distance_nuclei3d.npy");
    let (mask, _) = otsu_mask("nuclei3d");
    let hmax = golden_u8("hmax_dist_h1.npy");
    let (markers, n) = label::label(&hmax, 26).unwrap();
    assert!(n > 20, "{n} markers");
    check("watershed_declump_nuclei3d.npy", run(&dist, markers, Some(mask), 6, true, 3));
    // Raw integer images flooded from the Otsu objects.
    let (n3, _) = load("nuclei3d.tif");
    let (n2, _) = load("nuclei2d.tif");
    check("watershed_nuclei3d_c26_conn1.npy", run(&n3, golden_labels("labels_nuclei3d_c26.npy"), None, 6, false, 3));
    check("watershed_nuclei3d_c26_conn3.npy", run(&n3, golden_labels("labels_nuclei3d_c26.npy"), None, 26, false, 3));
    check("watershed_nuclei2d_c8_conn2.npy", run(&n2, golden_labels("labels_nuclei2d_c8.npy"), None, 8, false, 2));
    // A flat image: all ties.
    let flat = Data::U8(Array3::zeros((9, 23, 31)));
    for (c, conn) in [(1, 6u8), (2, 18), (3, 26)] {
        check(&format!("watershed_flat_conn{c}.npy"), run(&flat, golden_labels("watershed_flat_markers.npy"), None, conn, false, 3));
    }
}
