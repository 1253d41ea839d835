//! Tiled equals whole: random images, random pipelines of local ops (fused and tiled) followed by
//! global ones, and random chains drawn from the op registry; random tile shapes (down to one
//! voxel thin) and thread counts; every stage's output must equal the whole-image run byte for
//! byte.

mod common;

use std::path::PathBuf;

use common::compile;
use ndarray::Array3;
use proptest::prelude::*;
use tessera::exec::{EvalOpts, TileSize, evaluate};
use tessera::io::{Data, Header, Spacing};
use tessera::ops::Value;
use tessera::plan::Plan;
use tessera::spec::manifest::SampleRow;

fn bind(plan: &Plan, image: &Data, ndim: u8) -> Option<tessera::plan::Bound> {
    let row = SampleRow { line: 0, id: "s".into(), image: PathBuf::from("s.tif"), meta: Vec::new(), problem: None };
    let header = Header { shape: image.shape(), dtype: image.dtype(), ndim, spacing: None };
    plan.bind(&row, &[header]).ok()
}

/// Every stage's value (all kept) for one tiling and thread count, or the failing stage and its
/// error.
fn run_all(
    plan: &Plan,
    image: &Data,
    ndim: u8,
    spacing: &Spacing,
    tile: TileSize,
    threads: usize,
) -> Result<Vec<Option<Value>>, (usize, String)> {
    let bound = bind(plan, image, ndim).expect("binds");
    let sources = vec![Value::Image(image.clone())];
    let opts = EvalOpts { tile, memory: u64::MAX, threads, keep_all: true };
    let mut out: Vec<Option<Value>> = vec![None; plan.stages.len()];
    let mut timings = Vec::new();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    pool.install(|| {
        evaluate(
            plan,
            &bound,
            &sources,
            spacing,
            ndim,
            "s",
            &opts,
            &mut |i, v| {
                out[i] = Some(Value::clone(v));
                Ok(())
            },
            &mut timings,
        )
    })?;
    Ok(out)
}

/// Byte-for-byte equality (NaN equals NaN when its bits do; tables compare by their exact
/// round-trip text, which is all of their bits).
fn same(a: &Option<Value>, b: &Option<Value>) -> bool {
    match (a, b) {
        (Some(Value::Image(Data::F32(x))), Some(Value::Image(Data::F32(y)))) => x.mapv(f32::to_bits) == y.mapv(f32::to_bits),
        (Some(Value::Table(x)), Some(Value::Table(y))) => format!("{x:?}") == format!("{y:?}"),
        _ => a == b,
    }
}

/// A local op on an image stage, as YAML flow-mapping text after `op:`.
fn image_op() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![Just("0.7"), Just("1.0"), Just("1.6"), Just("[1.0, 0.5, 2.0]"), Just("[0.0, 1.2, 0.8]")]
            .prop_map(|s| format!("gaussian, sigma: {s}")),
        Just("gaussian, sigma: 0.9, sigma_unit: physical".to_string()),
        (prop_oneof![Just("mean"), Just("median"), Just("minimum"), Just("maximum")], prop_oneof![Just("3"), Just("5"), Just("[3, 1, 5]")])
            .prop_map(|(op, size)| format!("{op}, size: {size}")),
        Just("invert".to_string()),
    ]
}

/// A local op on a mask stage.
fn mask_op() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("erosion"), Just("dilation"), Just("opening"), Just("closing")],
        prop_oneof![Just("1"), Just("2")],
        prop_oneof![Just("ball"), Just("cube")],
    )
        .prop_map(|(op, r, sh)| format!("{op}, radius: {r}, shape: {sh}"))
}

fn pipeline() -> impl Strategy<Value = String> {
    (prop::collection::vec(image_op(), 0..3), prop::collection::vec(mask_op(), 0..3), 0u8..3).prop_map(|(imgs, masks, tail)| {
        let mut y = String::from("version: 1\nname: t\nspacing: [2.0, 0.5, 0.7]\nstages:\n");
        let mut prev = "image".to_string();
        for (k, op) in imgs.iter().enumerate() {
            y += &format!("  i{k}: {{op: {op}, input: {prev}}}\n");
            prev = format!("i{k}");
        }
        y += &format!("  m: {{op: threshold, input: {prev}, method: fixed, value: 100}}\n");
        prev = "m".into();
        for (k, op) in masks.iter().enumerate() {
            y += &format!("  k{k}: {{op: {op}, input: {prev}}}\n");
            prev = format!("k{k}");
        }
        // Global stages after the fused run read its assembled outputs.
        if tail >= 1 {
            y += &format!("  l: {{op: label, input: {prev}}}\n");
        }
        if tail >= 2 {
            y += "  t: {op: measure, labels: l, intensity: {raw: image}}\n";
        }
        y
    })
}

fn image() -> impl Strategy<Value = (Data, u8)> {
    let dims = prop_oneof![(Just(1usize), 1usize..14, 1usize..14, Just(2u8)), (1usize..7, 1usize..10, 1usize..10, Just(3u8))];
    (dims, 0u8..3, any::<u64>()).prop_map(|((z, y, x, ndim), dt, seed)| {
        // A cheap deterministic generator: smooth-ish blobs plus noise, so masks have objects.
        let mut next = common::xorshift(seed);
        let base = Array3::from_shape_fn((z, y, x), |(a, b, c)| {
            let wave = ((a as f64 * 1.3).sin() + (b as f64 * 0.7).cos() + (c as f64 * 0.9).sin()) * 60.0 + 128.0;
            (wave + (next() % 60) as f64 - 30.0).clamp(0.0, 255.0)
        });
        let data = match dt {
            0 => Data::U8(base.mapv(|v| v as u8)),
            1 => Data::U16(base.mapv(|v| (v * 3.0) as u16)),
            _ => Data::F32(base.mapv(|v| v as f32 * 0.75)),
        };
        (data, ndim)
    })
}

/// Runs `yaml` on `img` whole and over tiles of a shape drawn from `seed` with `threads`
/// threads; every stage must be the same bytes. Plans that do not bind (windows larger than
/// the image: a user error) are rejected as cases.
fn tiled_matches_whole(yaml: &str, img: &Data, ndim: u8, seed: u64, threads: usize) -> Result<(), TestCaseError> {
    let plan = compile(yaml);
    prop_assume!(bind(&plan, img, ndim).is_some());
    let spacing = Spacing { zyx: [2.0, 0.5, 0.7], unit: "um".into() };
    let shape = img.shape();
    let whole = run_all(&plan, img, ndim, &spacing, TileSize::Fixed(shape), 1);
    // A tile shape drawn from the seed, so it can depend on the image's shape (thin tiles often).
    let core: [usize; 3] = [0, 1, 2].map(|k| {
        let r = (seed >> (k * 16)) & 0xffff;
        if r.is_multiple_of(3) { 1 } else { 1 + (r as usize) % shape[k] }
    });
    let tiled = run_all(&plan, img, ndim, &spacing, TileSize::Fixed(core), threads);
    // A chain a sample cannot run (random ops can leave no finite value for a threshold to
    // find) must fail the same way, at the same stage, however it is tiled.
    let (whole, tiled) = match (whole, tiled) {
        (Ok(w), Ok(t)) => (w, t),
        (Err(w), t) => {
            prop_assert_eq!(t.err(), Some(w), "tile {:?}, {} threads", core, threads);
            return Ok(());
        }
        (Ok(_), Err(e)) => return Err(TestCaseError::fail(format!("tiled run failed but not whole: {e:?}"))),
    };
    for (i, (a, b)) in whole.iter().zip(&tiled).enumerate() {
        prop_assert!(
            same(a, b),
            "stage {} differs with tile {:?}, {} threads, shape {:?}\n{}",
            plan.stages[i].id,
            core,
            threads,
            shape,
            yaml
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tiled_equals_whole((img, ndim) in image(), yaml in pipeline(), seed in any::<u64>(), threads in 1usize..4) {
        tiled_matches_whole(&yaml, &img, ndim, seed, threads)?;
    }
}

/// Random chains of registry ops (so a new op is covered without editing this file).
fn registry_pipeline() -> impl Strategy<Value = String> {
    prop::collection::vec((0usize..64, 0usize..8), 1..6).prop_filter_map("compiles", |steps| common::registry_chain(&steps))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn tiled_registry_chains_equal_whole((img, ndim) in image(), yaml in registry_pipeline(), seed in any::<u64>(), threads in 1usize..4) {
        tiled_matches_whole(&yaml, &img, ndim, seed, threads)?;
    }
}

#[test]
fn one_voxel_tiles_on_a_fixed_chain() {
    let plan = compile(
        "version: 1\nname: t\nstages:\n  g: {op: gaussian, input: image, sigma: 1.0}\n  m: {op: threshold, input: g, method: fixed, value: 90}\n  o: {op: opening, input: m, radius: 1}\n  l: {op: label, input: o, connectivity: 26}\n",
    );
    let img = Data::U8(Array3::from_shape_fn((6, 9, 11), |(z, y, x)| ((z * 37 + y * 11 + x * 5) % 200) as u8 + 20));
    let spacing = Spacing::default();
    let whole = run_all(&plan, &img, 3, &spacing, TileSize::Fixed([6, 9, 11]), 1).expect("runs");
    for core in [[1, 1, 1], [1, 9, 11], [6, 1, 11], [6, 9, 1], [2, 3, 4]] {
        let tiled = run_all(&plan, &img, 3, &spacing, TileSize::Fixed(core), 2).expect("runs");
        assert!(whole.iter().zip(&tiled).all(|(a, b)| same(a, b)), "tile {core:?}");
    }
    // Something was actually computed.
    assert!(matches!(&whole[3], Some(Value::Labels(l)) if l.max() > 0));
}
