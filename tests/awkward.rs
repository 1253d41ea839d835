//! Awkward inputs through every op: empty and full images, objects on every face and corner,
//! single voxels, 2D images through 3D-capable ops, NaNs. Each has a defined, documented result.

use ndarray::Array3;
use tessera::io::Data;
use tessera::ops::morphology::{Element, Morph, RadiusUnit, Shape, fill_holes, morph};
use tessera::ops::{Ctx, distance, filters, label, measure, threshold, voronoi};
use tessera::table::Column;

fn ctx(ndim: u8) -> Ctx<'static> {
    Ctx { sample: "s", spacing: [1.0, 1.0, 1.0], unit: "um", ndim }
}

#[test]
fn empty_image() {
    let img = Data::U8(Array3::zeros((4, 5, 6)));
    let t = threshold::otsu(&img, 256).unwrap();
    let mask = threshold::apply(&img, t, false).unwrap();
    assert_eq!(mask.sum(), 0);
    assert_eq!(threshold::li(&img).unwrap(), 0.0);
    assert_eq!(threshold::triangle(&img, 256).unwrap(), 0.0);
    let (labels, n) = label::label(&mask, 26).unwrap();
    assert_eq!(n, 0);
    let table = measure::measure(&labels.clone().into(), &[("raw", &img)], &ctx(3));
    assert_eq!(table.rows(), 0);
    assert!(table.names().contains(&"nn_distance") && table.names().contains(&"raw_mean"));
    assert!(distance::edt(&mask, [1.0; 3], 3, false).iter().all(|&d| d == 0.0));
    assert!(voronoi::voronoi(&labels, &Array3::from_elem((4, 5, 6), 1), [1.0; 3], 3).unwrap().iter().all(|&l| l == 0));
    assert_eq!(fill_holes(&mask, 3).sum(), 0);
    let se = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 3);
    assert_eq!(morph(&mask, &se, Morph::Closing).sum(), 0);
    assert!(table.to_frame().unwrap().height() == 0);
}

#[test]
fn all_foreground() {
    let mask = Array3::from_elem((3, 4, 5), 1u8);
    let (labels, n) = label::label(&mask, 6).unwrap();
    assert_eq!(n, 1);
    let t = measure::measure(&labels.clone().into(), &[], &ctx(3));
    assert_eq!(t.get("touches_border"), Some(&Column::Bool(vec![true])));
    assert!(t.f64("nn_distance")[0].is_nan(), "a lone object has no neighbour");
    assert_eq!(t.u32("nn_label"), vec![0]);
    // No background: distances are undefined (documented as +inf).
    assert!(distance::edt(&mask, [1.0; 3], 3, false).iter().all(|d| d.is_infinite()));
    assert_eq!(fill_holes(&mask, 3).sum(), 60);
    // Outside counts as background: a ball erosion keeps only the interior.
    let se = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 3);
    assert_eq!(morph(&mask, &se, Morph::Erosion).sum(), 2 * 3, "the 1×2×3 interior");
}

#[test]
fn objects_on_every_corner_and_single_voxels() {
    let mut mask = Array3::<u8>::zeros((3, 3, 3));
    for z in [0, 2] {
        for y in [0, 2] {
            for x in [0, 2] {
                mask[[z, y, x]] = 1;
            }
        }
    }
    let (labels, n) = label::label(&mask, 26).unwrap();
    assert_eq!(n, 8);
    // Raster order of first voxels: (0,0,0)=1, (0,0,2)=2, (0,2,0)=3, ... (2,2,2)=8.
    assert_eq!(labels[[0, 0, 2]], 2);
    assert_eq!(labels[[2, 2, 2]], 8);
    let t = measure::measure(&labels.clone().into(), &[], &ctx(3));
    assert_eq!(t.u64("voxels"), vec![1; 8]);
    assert!(t.f64("inertia_eig_0").iter().all(|&e| e == 0.0));
    assert!(t.f64("major_axis_length").iter().all(|&e| e == 0.0));
    assert!(t.f64("anisotropy").iter().all(|a| a.is_nan()), "single voxels have no shape");
    assert_eq!(t.f64("nn_distance"), vec![2.0; 8]);
    // Equidistant neighbours: the lower label wins.
    assert_eq!(t.u32("nn_label"), vec![2, 1, 1, 2, 1, 2, 3, 4]);
    assert_eq!(t.get("touches_border"), Some(&Column::Bool(vec![true; 8])));
    // Voronoi of the corners over the whole cube: the centre ties eight ways and goes to label 1.
    let v = voronoi::voronoi(&labels, &Array3::from_elem((3, 3, 3), 1), [1.0; 3], 3).unwrap();
    assert_eq!(v[[1, 1, 1]], 1);
    assert_eq!(v[[2, 2, 1]], 7);
}

#[test]
fn two_d_images_through_3d_capable_ops() {
    // A 2D image is a stack of one slice with ndim 2: z is never smoothed, eroded or searched.
    let mut a = Array3::<f32>::zeros((1, 7, 7));
    a[[0, 3, 3]] = 100.0;
    let g = filters::gaussian(a.clone(), [5.0, 1.0, 1.0], 4.0, 2);
    assert!((g.sum() - 100.0).abs() < 1e-3, "mass is kept in the plane");
    let mask = a.mapv(|v| (v > 0.0) as u8);
    let se = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 2);
    assert_eq!(morph(&mask, &se, Morph::Dilation).sum(), 5, "a disk, not a ball");
    let d = distance::edt(&mask.mapv(|v| 1 - v), [1.0; 3], 2, false);
    assert_eq!(d[[0, 3, 4]], 1.0);
    assert_eq!(d[[0, 0, 0]], (18.0f32).sqrt());
    let w = filters::window_filter(&Data::F32(a), [3, 3, 3], filters::Rank::Maximum).unwrap();
    match w {
        Data::F32(w) => assert_eq!(w.iter().filter(|&&v| v == 100.0).count(), 9),
        _ => unreachable!(),
    }
}

#[test]
fn nans_in_float_input() {
    let mut a = Array3::<f32>::from_shape_fn((1, 5, 5), |(_, y, x)| (y * 5 + x) as f32);
    a[[0, 0, 0]] = f32::NAN;
    let d = Data::F32(a.clone());
    // Thresholds ignore NaN; NaN voxels are never foreground.
    let t = threshold::otsu(&d, 256).unwrap();
    assert!(t.is_finite());
    let m = threshold::apply(&d, t, false).unwrap();
    assert_eq!(m[[0, 0, 0]], 0);
    assert_eq!(threshold::apply(&d, t, true).unwrap()[[0, 0, 0]], 0);
    // Smoothing spreads NaN to every voxel whose kernel reaches it.
    let g = filters::gaussian(a.clone(), [1.0; 3], 4.0, 2);
    assert!(g.iter().all(|v| v.is_nan()));
    // Intensity statistics of an object containing a NaN are NaN.
    let labels = Array3::from_elem((1, 5, 5), 1u32);
    let tab = measure::measure(&labels.clone().into(), &[("raw", &d)], &ctx(2));
    assert!(tab.f64("raw_mean")[0].is_nan() && tab.f64("raw_min")[0].is_nan());
}
