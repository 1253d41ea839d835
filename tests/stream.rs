//! Streamed (out-of-core) equals whole: random volumes on disk, pipelines drawn from the op
//! registry (every op with each of its examples, and random chains of them), random slab
//! thicknesses; every output file and every table must equal the in-memory run's bytes. An op
//! added to the registry is covered here without editing this file.

mod common;

use std::path::{Path, PathBuf};

use common::compile;
use proptest::prelude::*;
use tessera::exec::stream::{Streamed, evaluate_streamed, not_streamable};
use tessera::exec::{EvalOpts, TileSize, evaluate};
use tessera::io::{Compression, Data, Spacing};
use tessera::ops::Value;
use tessera::plan::Plan;
use tessera::spec::manifest::SampleRow;

/// What a stage value looks like in its file (masks 0/255, labels u16 when they fit).
fn as_file(v: &Value) -> Option<Data> {
    match v {
        Value::Image(d) => Some(d.clone()),
        Value::Mask(m) => Some(Data::U8(m.mapv(|x| if x != 0 { 255 } else { 0 }))),
        Value::Labels(l) if l.max() <= u16::MAX as u32 => Some(Data::U16(l.u32().mapv(|x| x as u16))),
        Value::Labels(l) => Some(Data::U32(l.u32().into_owned())),
        Value::Table(_) => None,
    }
}

fn bits(d: &Data) -> Vec<u32> {
    match d {
        Data::U8(a) => a.iter().map(|&v| v as u32).collect(),
        Data::U16(a) => a.iter().map(|&v| v as u32).collect(),
        Data::U32(a) => a.iter().copied().collect(),
        Data::F32(a) => a.iter().map(|v| v.to_bits()).collect(),
        _ => Vec::new(),
    }
}

/// Runs `plan` on `img` whole and streamed (slabs of `thick` planes) and compares everything.
/// Returns false when the plan is not streamable (then the streamed run must say why).
fn check(plan: &Plan, img: &Data, source: &Path, thick: usize, dir: &Path) -> Result<bool, TestCaseError> {
    check_with(plan, img, source, thick, dir, [2.0, 0.5, 0.75], 2)
}

/// [`check`] with a spacing and a thread count.
fn check_with(
    plan: &Plan,
    img: &Data,
    source: &Path,
    thick: usize,
    dir: &Path,
    zyx: [f64; 3],
    threads: usize,
) -> Result<bool, TestCaseError> {
    let row = SampleRow { line: 0, id: "s".into(), image: source.to_path_buf(), meta: Vec::new(), problem: None };
    let header = tessera::io::read_header(source).expect("header");
    let bound = match plan.bind(&row, std::slice::from_ref(&header)) {
        Ok(b) => b,
        Err(_) => return Ok(false),
    };
    let spacing = Spacing { zyx, unit: "um".into() };
    // Whole.
    let mut whole: Vec<Option<Value>> = vec![None; plan.stages.len()];
    let opts = EvalOpts { tile: TileSize::Auto, memory: u64::MAX, threads, keep_all: true };
    evaluate(
        plan,
        &bound,
        &[Value::Image(img.clone())],
        &spacing,
        3,
        "s",
        &opts,
        &mut |i, v| {
            whole[i] = Some(Value::clone(v));
            Ok(())
        },
        &mut Vec::new(),
    )
    .map_err(|(i, e)| TestCaseError::fail(format!("whole run failed at {i}: {e}")))?;
    // Streamed.
    let sample_dir = dir.join(format!("out{thick}"));
    let paths = vec![source.to_path_buf()];
    let header_shape = header.shape;
    let headers = vec![header];
    let keys = vec![String::new(); plan.stages.len()];
    let valid = vec![false; plan.stages.len()];
    let s = Streamed {
        plan,
        bound: &bound,
        paths: &paths,
        headers: &headers,
        spacing: &spacing,
        ndim: 3,
        sample: "s",
        // Slabs are `thick` planes whatever the budget; the budget still decides how ops that
        // cut their data another way do it: `distance` takes blocks of about `thick` rows.
        memory: 32 * (header_shape[0] * header_shape[2] * thick) as u64,
        threads,
        spill_dir: dir.join("spill"),
        sample_dir: sample_dir.clone(),
        compression: Compression::None,
        slab: Some(thick),
        checkpoints: None,
        keys: &keys,
        valid: &valid,
        force: false,
        on_stage: &|_| {},
        targets: None,
    };
    if let Some((i, why)) = not_streamable(&s) {
        // Only ops that say they have no out-of-core form may refuse, and with a message that
        // names the stage.
        let st = &plan.stages[i];
        let ins: Vec<tessera::ops::Meta> = st
            .inputs
            .iter()
            .map(|(_, r)| match r {
                tessera::plan::Ref::Stage(j) => bound.metas[*j].clone(),
                tessera::plan::Ref::Source(_) => tessera::ops::Meta {
                    kind: tessera::ops::Kind::Image,
                    dtype: Some(headers[0].dtype),
                    shape: headers[0].shape,
                    ndim: 3,
                    scale: [1.0; 3],
                },
            })
            .collect();
        prop_assert!(bound.ops[i].streams(&ins).is_err(), "{} refused although its op streams: {why}", st.id);
        prop_assert!(why.contains(&format!("stage '{}'", st.id)), "{why}");
        return Ok(false);
    }
    let mut tables: Vec<Option<Value>> = vec![None; plan.stages.len()];
    let mut objects = Vec::new();
    evaluate_streamed(
        &s,
        &mut |i, v| {
            tables[i] = Some(v.clone());
            Ok(())
        },
        &mut objects,
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .map_err(|(i, e)| TestCaseError::fail(format!("streamed run failed at {}: {e}", plan.stages[i].id)))?;
    prop_assert!(!dir.join("spill").exists(), "spill files left behind");
    for (i, st) in plan.stages.iter().enumerate() {
        let w = whole[i].as_ref().expect("whole value");
        match w {
            Value::Table(t) => {
                let Some(Value::Table(u)) = &tables[i] else { return Err(TestCaseError::fail(format!("no table for {}", st.id))) };
                prop_assert_eq!(format!("{t:?}"), format!("{u:?}"), "table {} differs with slabs of {}", st.id, thick);
            }
            _ => {
                let f = sample_dir.join(format!("{}.npy", st.id));
                let got = tessera::io::read_image(&f, Default::default()).map_err(|e| TestCaseError::fail(e.to_string()))?.data;
                let want = as_file(w).expect("voxel data");
                prop_assert_eq!(got.dtype(), want.dtype(), "dtype of {}", st.id);
                prop_assert!(bits(&got) == bits(&want), "stage {} differs with slabs of {}", st.id, thick);
                if let Value::Labels(l) = w {
                    let n = l.max() as u64;
                    prop_assert!(objects.contains(&(st.id.clone(), n)), "object count of {}: {:?} vs {}", st.id, objects, n);
                }
            }
        }
    }
    Ok(true)
}

fn pipeline() -> impl Strategy<Value = String> {
    let image_op = prop_oneof![
        Just("gaussian, sigma: 1.0".to_string()),
        Just("gaussian, sigma: [0.6, 1.2, 0.8]".to_string()),
        Just("median, size: 3".to_string()),
        Just("maximum, size: [3, 1, 3]".to_string()),
        Just("invert".to_string()),
    ];
    let mask_op = prop_oneof![
        Just("opening, radius: 1".to_string()),
        Just("closing, radius: 1, shape: cube".to_string()),
        Just("dilation, radius: 1".to_string()),
        Just("erosion, radius: 1, shape: cube".to_string()),
    ];
    let method = prop_oneof![Just("otsu"), Just("li"), Just("triangle"), Just("fixed, value: 120")];
    (
        prop::collection::vec(image_op, 0..3),
        method,
        any::<bool>(),
        prop::collection::vec(mask_op, 0..2),
        prop_oneof![Just(6u8), Just(18), Just(26)],
        0u64..4,
    )
        .prop_map(|(imgs, method, invert, masks, conn, min_size)| {
            let mut y = String::from("version: 1\nname: t\nstages:\n");
            let mut prev = "image".to_string();
            for (k, op) in imgs.iter().enumerate() {
                y += &format!("  i{k}: {{op: {op}, input: {prev}}}\n");
                prev = format!("i{k}");
            }
            let last_image = prev.clone();
            y += &format!("  m: {{op: threshold, input: {prev}, method: {method}, invert: {invert}}}\n");
            prev = "m".into();
            for (k, op) in masks.iter().enumerate() {
                y += &format!("  k{k}: {{op: {op}, input: {prev}}}\n");
                prev = format!("k{k}");
            }
            y += &format!("  l: {{op: label, input: {prev}, connectivity: {conn}, min_size: {}}}\n", min_size + 1);
            let extra = if last_image != "image" { format!(", last: {last_image}") } else { String::new() };
            y += &format!("  t: {{op: measure, labels: l, intensity: {{raw: image{extra}}}}}\n");
            // Every voxel stage written as .npy, so the streamed files can be compared.
            y += "outputs:\n";
            for (k, _) in imgs.iter().enumerate() {
                y += &format!("  i{k}: npy\n");
            }
            y += "  m: npy\n";
            for (k, _) in masks.iter().enumerate() {
                y += &format!("  k{k}: npy\n");
            }
            y += "  l: npy\n  t: parquet\n";
            y
        })
}

fn volume() -> impl Strategy<Value = Data> {
    (1usize..9, 1usize..10, 1usize..10, 0u8..3, any::<u64>()).prop_map(|(z, y, x, dt, seed)| {
        let base = common::wave(z, y, x, seed);
        match dt {
            0 => Data::U8(base.mapv(|v| v as u8)),
            1 => Data::U16(base.mapv(|v| (v * 7.0) as u16)),
            _ => Data::F32(base.mapv(|v| v as f32 * 0.25)),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn streamed_equals_whole(img in volume(), yaml in pipeline(), thick in 1usize..4, tiff in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let src: PathBuf = if tiff { dir.path().join("v.tif") } else { dir.path().join("v.npy") };
        if tiff {
            tessera::io::write_tiff(&src, &img, 3, &Spacing::default(), Compression::Lzw).unwrap();
        } else {
            tessera::io::write_npy(&src, &img, 3).unwrap();
        }
        let plan = compile(&yaml);
        check(&plan, &img, &src, thick, dir.path())?;
    }
}

#[test]
fn streamed_chain_on_real_data_at_every_slab_thickness() {
    let plan = compile(&std::fs::read_to_string("testdata/stream/chain.yaml").unwrap().replace(
        "outputs:\n  mask: tiff\n  objects: [tiff, npy]\n  shape: [parquet, csv]\n",
        "outputs:\n  smooth: npy\n  mask: npy\n  clean: npy\n  objects: npy\n  shape: parquet\n",
    ));
    let src = Path::new("testdata/nuclei3d.tif");
    let img = tessera::io::read_image(src, Default::default()).unwrap().data;
    let dir = tempfile::tempdir().unwrap();
    for thick in [1, 2, 5, 64] {
        assert!(check(&plan, &img, src, thick, dir.path()).unwrap(), "slabs of {thick}");
    }
}

/// Random chains of registry ops.
fn registry_pipeline() -> impl Strategy<Value = String> {
    prop::collection::vec((0usize..64, 0usize..8), 1..6).prop_filter_map("compiles", |steps| common::registry_chain(&steps))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn streamed_registry_chains_equal_whole(img in volume(), yaml in registry_pipeline(), thick in 1usize..4) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("v.tif");
        tessera::io::write_tiff(&src, &img, 3, &Spacing::default(), Compression::Lzw).unwrap();
        check(&compile(&yaml), &img, &src, thick, dir.path())?;
    }
}

/// Every registry op with every one of its examples, on each voxel type, streamed at several slab
/// thicknesses: equal to the whole run, or refused by an op that has no out-of-core form. Every
/// op that streams must have been run streamed at least once.
#[test]
fn every_registry_op_streams_as_in_memory() {
    use tessera::ops::REGISTRY;
    let base = common::wave(9, 11, 12, 7);
    let volumes =
        [Data::U8(base.mapv(|v| v as u8)), Data::U16(base.mapv(|v| (v * 7.0) as u16)), Data::F32(base.mapv(|v| v as f32 * 0.25 + 0.1))];
    let dir = tempfile::tempdir().unwrap();
    let mut streamed = std::collections::BTreeSet::new();
    for (op, info) in REGISTRY.iter().enumerate() {
        for ex in 0..info.examples.len() {
            let yaml = common::registry_chain(&[(op, ex)]).unwrap_or_else(|| panic!("{} example {ex} does not compile", info.name));
            let plan = compile(&yaml);
            for (v, img) in volumes.iter().enumerate() {
                let src = dir.path().join(format!("v{v}.tif"));
                tessera::io::write_tiff(&src, img, 3, &Spacing::default(), Compression::None).unwrap();
                for thick in [1, 4] {
                    let ok = check(&plan, img, &src, thick, dir.path()).unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", info.name));
                    if ok {
                        streamed.insert(info.name);
                    }
                }
            }
        }
    }
    let ctx_meta = tessera::ops::Meta { kind: tessera::ops::Kind::Mask, dtype: None, shape: [9, 11, 12], ndim: 3, scale: [1.0; 3] };
    for info in REGISTRY {
        let body = info.examples[0].replace("{image}", "image").replace("{mask}", "m0").replace("{labels}", "l0").replace("{table}", "t0");
        let op = (info.build)(tessera::ops::Params::parse(&format!("{{{body}}}")).unwrap()).unwrap();
        let global = matches!(op.halo(), tessera::ops::Halo::Global);
        let refuses = global && op.streams(&[ctx_meta.clone(), ctx_meta.clone()]).is_err();
        assert!(refuses || streamed.contains(info.name), "op {} streams but was never run streamed", info.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 80, ..ProptestConfig::default() })]

    /// Distance maps and territories out of core: random volumes, anisotropic spacings, slabs down
    /// to one plane, blocks of rows down to one row, 1–3 threads (in a pool of that size).
    #[test]
    fn streamed_distance_and_voronoi_equal_whole(
        img in volume(),
        which in 0usize..4,
        spacing in prop_oneof![Just([1.0, 1.0, 1.0]), Just([2.0, 0.5, 0.75]), Just([0.7, 0.7, 0.7]), Just([3.0, 1.0, 0.3])],
        thick in 1usize..5,
        threads in 1usize..4,
    ) {
        // A single plane is read back as a 2D image, which is not streamed.
        prop_assume!(img.shape()[0] > 1);
        let stage = [
            "d: {op: distance, input: m}",
            "d: {op: distance, input: m, invert: true}",
            "d: {op: distance, input: l, invert: true}",
            "d: {op: voronoi, labels: l, mask: b}",
        ][which];
        let yaml = format!(
            "version: 1\nname: t\nstages:\n  m: {{op: threshold, input: image, method: otsu}}\n  b: {{op: invert, input: m}}\n  \
             l: {{op: label, input: m, connectivity: 6}}\n  {stage}\noutputs:\n  m: npy\n  b: npy\n  l: npy\n  d: npy\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("v.tif");
        tessera::io::write_tiff(&src, &img, 3, &Spacing::default(), Compression::None).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let plan = compile(&yaml);
        let ran = pool.install(|| check_with(&plan, &img, &src, thick, dir.path(), spacing, threads))?;
        prop_assert!(ran, "distance and voronoi stream");
    }
}
