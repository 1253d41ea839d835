//! The real binary on the bundled pipelines and data: output folder, determinism, diagnostics,
//! exit codes, and failures that stay with their sample.

mod common;

use std::path::PathBuf;

use common::{assert_same, files, root, run_example, run_samples, tessera, text};

#[test]
fn example_pipeline_writes_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run_example(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("3 of 3 samples done"), "{}", text(&o.stdout));
    for s in ["nuclei2d", "neuron3d", "nuclei3d"] {
        for f in ["nuclei.tif", "mask.tif", "shape.parquet", "shape.csv"] {
            assert!(out.join("samples").join(s).join(f).is_file(), "missing samples/{s}/{f}");
        }
    }
    for f in
        ["tables/shape.parquet", "tables/shape.csv", "stats/shape_within_between.csv", "stats/shape_within_between.parquet", "run.json"]
    {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    assert!(!out.join("errors.csv").exists());
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["samples_failed"], 0);
    assert_eq!(run["samples"].as_array().unwrap().len(), 3);
    assert_eq!(run["pipeline"]["name"], "nuclei");
    assert_eq!(run["samples"][0]["input_hashes"][0].as_str().unwrap().len(), 64);
    // The merged table: sample, label, metadata, then features; rows of all samples.
    let csv = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("sample,label,source,dims,voxels,volume,"), "{header}");
    let per_sample: usize = ["nuclei2d", "neuron3d", "nuclei3d"]
        .iter()
        .map(|s| std::fs::read_to_string(out.join("samples").join(s).join("shape.csv")).unwrap().lines().count() - 1)
        .sum();
    assert_eq!(csv.lines().count() - 1, per_sample);
    let stats = std::fs::read_to_string(out.join("stats/shape_within_between.csv")).unwrap();
    assert!(
        stats.starts_with(
            "phenotype,n_groups,n_objects,within_cv_pct,between_cv_pct,ratio_pct,icc,anova_f,anova_p,within_cv_pct_lo,\
             within_cv_pct_hi,between_cv_pct_lo,between_cv_pct_hi,ratio_pct_lo,ratio_pct_hi,n_missing,note\nvolume,3,"
        ),
        "{stats}"
    );
}

#[test]
fn outputs_do_not_depend_on_threads_or_reruns() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_eq!(run_example(&a, &["--threads", "1"]).status.code(), Some(0));
    // (--durable only adds fsyncs: the same bytes.)
    assert_eq!(run_example(&b, &["--threads", "2", "--durable"]).status.code(), Some(0));
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), fb.len());
    for ((pa, ba), (pb, bb)) in fa.iter().zip(&fb) {
        assert_eq!(pa, pb);
        assert!(ba == bb, "{} differs between --threads 1 and 2", pa.display());
    }
    assert_eq!(run_example(&a, &["--threads", "2"]).status.code(), Some(0));
    assert!(files(&a) == fb, "a re-run changed the outputs");
}

#[test]
fn outputs_do_not_depend_on_tiles() {
    // Both example pipelines, whole images against thin and odd tiles (the fused local stages —
    // gaussian; invert + opening — run per tile, global stages on the assembled result).
    let tmp = tempfile::tempdir().unwrap();
    for pipeline in ["pipelines/nuclei.yaml", "pipelines/bone-lacunae.yaml"] {
        let mut reference: Option<Vec<(PathBuf, Vec<u8>)>> = None;
        for (k, tile) in ["auto", "1x512x512", "5x17x23", "64x8x64"].iter().enumerate() {
            let out = tmp.path().join(format!("{}-{k}", pipeline.replace('/', "_")));
            let o = tessera(&["run", pipeline, "--out", out.to_str().unwrap(), "--progress", "never", "--tile", tile]);
            assert_eq!(o.status.code(), Some(0), "{pipeline} --tile {tile}: {}", text(&o.stderr));
            let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
            assert_eq!(run["tile"], *tile);
            let f = files(&out);
            match &reference {
                None => reference = Some(f),
                Some(r) => {
                    assert_eq!(r.len(), f.len());
                    for ((pa, ba), (pb, bb)) in r.iter().zip(&f) {
                        assert_eq!(pa, pb);
                        assert!(ba == bb, "{pipeline}: {} differs with --tile {tile}", pa.display());
                    }
                }
            }
        }
    }
    // A bad tile size is a command-line error.
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--tile", "0x4x4", "--out", tmp.path().join("x").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("is not a tile size"), "{}", text(&o.stderr));
}

#[test]
fn validate_reports_all_three_mistakes_with_positions_and_suggestions() {
    let o = tessera(&["validate", "testdata/bad/pipelines/three_mistakes.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    let f = "testdata/bad/pipelines/three_mistakes.yaml";
    for (pos, msg, help) in [
        ("5:16", "unknown op 'gausian'", "did you mean 'gaussian'?"),
        ("6:41", "unknown parameter 'methd' for op `threshold`", "did you mean 'method'?"),
        ("8:33", "input 'cels' names no stage or image source", "did you mean 'cells'?"),
    ] {
        assert!(err.contains(&format!("{f}:{pos}: error: ")) && err.contains(msg) && err.contains(help), "missing {pos} {msg}\n{err}");
    }
    assert!(err.contains(" 5 |   smooth: {op: gausian, input: image, sigma: 1.0}\n   |                ^^^^^^^\n"), "{err}");
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn validate_catches_cycles_kinds_ranges_syntax_and_data_dimensionality() {
    let cases: &[(&str, &[&str])] = &[
        ("cycle.yaml", &["6:3: error: cycle: b → c → b"]),
        ("syntax.yaml", &["syntax.yaml:5:4: error: YAML syntax error"]),
        (
            "kinds_and_ranges.yaml",
            &[
                "3:1: error: unknown top-level key 'colour'",
                "5:47: error: `sigma` values must be ≥ 0",
                "6:30: error: stage 'cells': `input` needs a mask but 'smooth' is an image",
                "6:52: error: connectivity 5 is not one of",
                "7:33: error: stage 'shape': `labels` needs labels but 'smooth' is an image",
                "9:10: error: 'tiff' is not an output format for table stage 'shape'",
            ],
        ),
        ("conn2d.yaml", &["7:49: error: sample 'nuclei2d', stage 'cells': connectivity 6 is for 3D images, but this image is 2D"]),
    ];
    for (file, needles) in cases {
        let o = tessera(&["validate", &format!("testdata/bad/pipelines/{file}")]);
        assert_eq!(o.status.code(), Some(2), "{file}");
        let err = text(&o.stderr);
        for n in *needles {
            assert!(err.contains(n), "{file}: missing {n:?} in\n{err}");
        }
    }
    let o = tessera(&["validate", "pipelines/nuclei.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn bad_command_lines_and_manifests_exit_2_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--samples", "no/such.csv", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no/such.csv: cannot read manifest"), "{}", text(&o.stderr));
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tessera(&["run", "testdata/bad/pipelines/three_mistakes.yaml", "testdata/nuclei2d.tif", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let m = tmp.path().join("m.csv");
    std::fs::write(&m, "name,path\na,b.tif\n").unwrap();
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--samples", m.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no `sample` column"), "{}", text(&o.stderr));
    assert!(!out.exists(), "a failed start must not create the output folder");
}

#[test]
fn a_bad_sample_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("samples.csv");
    let d = root().join("testdata");
    std::fs::write(
        &m,
        format!(
            "sample,image,group\ngood2d,{0}/nuclei2d.tif,a\ncut,{0}/bad/truncated.tif,a\ngone,{0}/nope.tif,b\ngood3d,{0}/nuclei3d.tif,b\ngood2d,{0}/nuclei2d.tif,b\n",
            d.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run_samples("pipelines/nuclei.yaml", &m, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines[0], "sample,stage,error");
    assert_eq!(lines.len(), 4, "{errors}");
    assert!(lines.iter().any(|l| l.starts_with("cut,input,") && l.contains("truncated")), "{errors}");
    assert!(lines.iter().any(|l| l.starts_with("gone,input,") && l.contains("file not found")), "{errors}");
    assert!(lines.iter().any(|l| l.starts_with("good2d,manifest,") && l.contains("line 6: duplicate sample id 'good2d'")), "{errors}");
    assert!(out.join("samples/good3d/nuclei.tif").is_file());
    let merged = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    assert!(merged.lines().skip(1).all(|l| l.starts_with("good2d,") || l.starts_with("good3d,")));
    assert!(text(&o.stdout).contains("2 of 5 samples done"), "{}", text(&o.stdout));
    // --fail-fast stops starting samples after the first failure.
    let o = run_samples("pipelines/nuclei.yaml", &m, &out, &["--fail-fast", "--threads", "1", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(j["done"], 1);
    assert_eq!(j["skipped"], 3);
}

#[test]
fn positional_images_and_plan_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = tessera(&[
        "run",
        "pipelines/nuclei.yaml",
        "testdata/nuclei3d.tif",
        "testdata/formats/slices",
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--progress",
        "never",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(j["done"], 2);
    // The slice folder holds nuclei3d's slices: same labels.
    assert_eq!(std::fs::read(out.join("samples/slices/nuclei.npy")).ok(), None);
    let a = tessera::io::read_image(&out.join("samples/nuclei3d/nuclei.tif"), Default::default()).unwrap();
    let b = tessera::io::read_image(&out.join("samples/slices/nuclei.tif"), Default::default()).unwrap();
    assert_eq!(a.data, b.data);
    let o = tessera(&["plan", "pipelines/nuclei.yaml", "--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(j["stages"][1]["halo"], "global");
    assert_eq!(j["stages"][0]["halo"], "4x4x4");
    let o = tessera(&["plan", "pipelines/nuclei.yaml", "--format", "dot"]);
    assert!(text(&o.stdout).contains("\"filled\" -> \"nuclei\" [label=\"input\"];"));
    let o = tessera(&["plan", "pipelines/nuclei.yaml"]);
    assert!(text(&o.stdout).contains("stages (in execution order):"));
}

#[test]
fn ops_lists_and_documents_every_op() {
    let o = tessera(&["ops"]);
    for op in tessera::ops::REGISTRY {
        assert!(text(&o.stdout).contains(op.name));
        let d = tessera(&["ops", op.name]);
        assert_eq!(d.status.code(), Some(0));
        for p in op.params {
            assert!(text(&d.stdout).contains(p.name), "{} {}", op.name, p.name);
        }
    }
    let o = tessera(&["ops", "lable"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("did you mean 'label'?"));
}

#[test]
fn manifest_columns_fill_parameters_and_extra_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let d = root().join("testdata");
    let m = tmp.path().join("m.csv");
    // `cut` sets each sample's fixed threshold; `other` is a second image measured per object.
    std::fs::write(
        &m,
        format!(
            "sample,image,cut,other\nlow,{0}/nuclei3d.tif,200,{0}/formats/u8.tif\nhigh,{0}/nuclei3d.tif,300,{0}/formats/u8.tif\n",
            d.display()
        ),
    )
    .unwrap();
    let p = tmp.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: params\nsources: {second: other}\nstages:\n  mask: {op: threshold, input: image, method: fixed, value: '${cut}'}\n  \
         cells: {op: label, input: mask, connectivity: 6}\n  shape: {op: measure, labels: cells, intensity: {raw: image, half: second}}\n\
         outputs: {shape: csv}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run_samples(&p, &m, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let read = |s: &str| std::fs::read_to_string(out.join("samples").join(s).join("shape.csv")).unwrap();
    let (low, high) = (read("low"), read("high"));
    assert!(low.lines().next().unwrap().contains(",half_sum,half_mean,half_min,half_max,half_std,raw_sum,"), "{low}");
    // A higher threshold gives less foreground in total.
    let total = |t: &str| t.lines().skip(1).map(|l| l.split(',').nth(4).unwrap().parse::<u64>().unwrap()).sum::<u64>();
    assert!(total(&low) > total(&high), "{} vs {}", total(&low), total(&high));
    // `half` is the u8 copy holding value/2 of the raw image: its minimum is half the raw minimum.
    let row: Vec<&str> = low.lines().nth(1).unwrap().split(',').collect();
    let hdr: Vec<&str> = low.lines().next().unwrap().split(',').collect();
    let col = |n: &str| row[hdr.iter().position(|h| *h == n).unwrap()].parse::<f64>().unwrap();
    assert_eq!(col("half_min"), (col("raw_min") / 2.0).floor());
    // A manifest without the column named by `${cut}` is a pipeline error, positioned.
    std::fs::write(&m, format!("sample,image,other\na,{0}/nuclei3d.tif,{0}/nuclei3d.tif\n", d.display())).unwrap();
    let o = tessera(&["validate", p.to_str().unwrap(), "--samples", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains(":5:61: error: `${cut}` names no manifest column"), "{}", text(&o.stderr));
}

#[test]
fn bone_lacunae_pipeline_measures_territories_and_canal_distance() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bone");
    let o = tessera(&["run", "pipelines/bone-lacunae.yaml", "--out", out.to_str().unwrap(), "--progress", "never"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let csv = std::fs::read_to_string(out.join("tables/shape.csv")).unwrap();
    let hdr: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for c in ["volume", "inertia_eig_2", "anisotropy", "nn_distance", "nn_label", "territory_volume", "canal_mean", "touches_border"] {
        assert!(hdr.contains(&c), "missing column {c}: {hdr:?}");
    }
    let col = |name: &str| hdr.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert!(rows.len() > 50, "{} lacunae", rows.len());
    for r in &rows {
        let v: f64 = r[col("volume")].parse().unwrap();
        let t: f64 = r[col("territory_volume")].parse().unwrap();
        let d: f64 = r[col("canal_mean")].parse().unwrap();
        let a: f64 = r[col("anisotropy")].parse().unwrap();
        // Each lacuna (size-filtered, 20..4000 voxels of 0.343 um³) serves some bone, lies away from canals,
        // and is a flattened ellipsoid.
        assert!((20.0 * 0.343 - 1e-9..=4000.0 * 0.343 + 1e-9).contains(&v), "volume {v}");
        assert!(t > 0.0 && d > 0.0 && (0.0..1.0).contains(&a), "{r:?}");
    }
    // Territories partition the bone: their voxels sum to at most the bone mask inside each region.
    let terr = tessera::io::read_image(&out.join("samples/bone_upper/territory.tif"), Default::default()).unwrap();
    assert_eq!(terr.data.shape(), [32, 128, 128]);
    let s = terr.spacing.unwrap();
    assert_eq!((s.zyx, s.unit.as_str()), ([0.7, 0.7, 0.7], "um"));
    let stats = std::fs::read_to_string(out.join("stats/shape_within_between.csv")).unwrap();
    assert_eq!(stats.lines().count(), 8, "{stats}");
    // Lc.DN: lacunae whose territories touch, a handful each in a region's cut of bone.
    let dn: Vec<u64> = rows.iter().map(|r| r[col("n_territory_neighbors")].parse().unwrap()).collect();
    let mean = dn.iter().sum::<u64>() as f64 / dn.len() as f64;
    assert!((2.0..20.0).contains(&mean) && dn.iter().filter(|&&n| n == 0).count() < dn.len() / 10, "{dn:?}");
}

#[test]
fn downsampling_carries_the_voxel_size_into_tables_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ds.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: ds\nstages:\n  small: {op: downsample, input: image, factor: [1, 2, 2]}\n  mask: {op: threshold, input: small, method: otsu}\n  \
         cells: {op: label, input: mask}\n  shape: {op: measure, labels: cells}\noutputs: {cells: tiff, shape: csv}\n",
    )
    .unwrap();
    let out = tmp.path().join("o");
    let o = tessera(&["run", p.to_str().unwrap(), "testdata/nuclei3d.tif", "--out", out.to_str().unwrap(), "--progress", "never"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let img = tessera::io::read_image(&out.join("samples/nuclei3d/cells.tif"), Default::default()).unwrap();
    assert_eq!(img.data.shape(), [31, 30, 28]);
    assert_eq!(img.spacing.unwrap().zyx, [2.0, 1.0, 1.0], "0.5 µm pixels downsampled 2× are 1 µm");
    let csv = std::fs::read_to_string(out.join("samples/nuclei3d/shape.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let (voxels, volume): (f64, f64) = (row[2].parse().unwrap(), row[3].parse().unwrap());
    assert_eq!(volume, voxels * 2.0);
}

#[test]
fn samples_larger_than_memory_are_streamed_with_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &str, extra: &[&str]| {
        let out = tmp.path().join(dir);
        let mut args = vec![
            "run",
            "testdata/stream/chain.yaml",
            "testdata/nuclei3d.tif",
            "testdata/bone3d.tif",
            "testdata/formats/slices",
            "--out",
            out.to_str().unwrap(),
            "--progress",
            "never",
        ];
        args.extend_from_slice(extra);
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        out
    };
    let whole = run("whole", &[]);
    let reference = files(&whole);
    for (dir, memory) in [("tiny", "150KiB"), ("small", "3MiB")] {
        let out = run(dir, &["--memory", memory]);
        let f = files(&out);
        assert_eq!(reference.len(), f.len(), "{memory}");
        for ((pa, ba), (pb, bb)) in reference.iter().zip(&f) {
            assert_eq!(pa, pb);
            assert!(ba == bb, "{} differs when streamed with --memory {memory}", pa.display());
        }
        let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        let streamed: Vec<bool> = run["samples"].as_array().unwrap().iter().map(|s| s["streamed"] == true).collect();
        // 150 KiB: every sample streams; 3 MiB: only the bone volume (a mixed run).
        let expected = if dir == "tiny" { vec![true, true, true] } else { vec![false, true, false] };
        assert_eq!(streamed, expected, "--memory {memory}");
        assert!(!out.join(".tessera/spill").exists(), "spill files left behind");
    }
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("run.json")).unwrap()).unwrap();
    assert!(run["samples"].as_array().unwrap().iter().all(|s| s["streamed"] == false));
}

#[test]
fn a_sample_that_neither_fits_nor_streams_fails_alone_and_says_how_much_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    // Every op streams 3D volumes; 2D images are not streamed.
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never", "--memory", "20KiB"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.contains("nuclei2d,smooth,"), "{errors}");
    assert!(errors.contains("cannot be streamed from disk: 2D images are not streamed"), "{errors}");
    assert!(errors.contains("raise --memory to at least"), "{errors}");
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let neuron = run["samples"].as_array().unwrap().iter().find(|s| s["sample"] == "neuron3d").unwrap().clone();
    assert_eq!((neuron["status"].as_str(), neuron["streamed"].as_bool()), (Some("done"), Some(true)), "the 3D sample streams: {neuron}");
}

#[test]
fn the_bone_analysis_streams_under_a_tight_memory_budget_with_identical_outputs() {
    // The whole bone-lacunae analysis (crop first, so only the kept planes are read; labels,
    // territories, distance to canals, measurements), plus fill_holes, downsample and rescale
    // over the image's range, at 4 MiB and 100 KiB against the in-memory run.
    let tmp = tempfile::tempdir().unwrap();
    let manifest = root().join("testdata/bone.csv");
    let yaml = std::fs::read_to_string(root().join("pipelines/bone-lacunae.yaml"))
        .unwrap()
        .replace("../testdata/bone.csv", manifest.to_str().unwrap())
        .replace(
            "  to_canal:  {op: distance, input: canals, invert: true}\n",
            "  to_canal:  {op: distance, input: canals, invert: true}\n  filled:    {op: fill_holes, input: bone}\n  coarse:    {op: downsample, input: roi, factor: 2}\n  stretched: {op: rescale, input: coarse, out: u8}\n",
        )
        .replace("intensity: {canal: to_canal}", "intensity: {canal: to_canal, raw: roi, smooth: smooth}")
        .replace("  territory: tiff\n", "  territory: tiff\n  filled: tiff\n  canals: tiff\n  stretched: tiff\n  to_canal: tiff\n");
    assert!(yaml.contains("op: voronoi") && yaml.contains("op: fill_holes"), "{yaml}");
    let pipeline = tmp.path().join("bone-streams.yaml");
    std::fs::write(&pipeline, &yaml).unwrap();
    let run = |dir: &str, extra: &[&str]| {
        let out = tmp.path().join(dir);
        let mut args = vec!["run", pipeline.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"];
        args.extend_from_slice(extra);
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        out
    };
    let whole = run("whole", &[]);
    for memory in ["4MiB", "100KiB"] {
        let out = run(memory, &["--memory", memory]);
        assert_same(&whole, &out, &format!("--memory {memory}"));
        let rj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert!(rj["samples"].as_array().unwrap().iter().all(|s| s["streamed"] == true), "--memory {memory}: every sample streams");
        assert!(!out.join(".tessera/spill").exists(), "spill files left behind");
    }
}

#[test]
fn rows_that_share_scans_never_wait_for_each_other() {
    // Three regions of each of 24 scans, on two threads: the rows of a scan share its header,
    // hash and voxels, and the first row hashes it on the pool. A pool thread waiting for that
    // hash's parallel pieces runs another queued row meanwhile — often a row of the same scan,
    // which then asked for the hash being computed beneath it and waited for ever (two regions
    // of one scan hung in about one run in fifteen). Each run here has 24 such chances.
    use tessera::io::{Compression, Data, write_tiff};
    let tmp = tempfile::tempdir().unwrap();
    let spacing = tessera::io::Spacing { zyx: [1.0, 0.5, 0.5], unit: "um".into() };
    let mut manifest = String::from("sample,image,z0,z1\n");
    for i in 0..24u64 {
        let scan = tmp.path().join(format!("scan{i:02}.tif"));
        let a = common::wave(48, 96, 96, 500 + i).mapv(|v| v as u8);
        write_tiff(&scan, &Data::U8(a), 3, &spacing, Compression::None).unwrap();
        for (r, (z0, z1)) in [(0, 16), (16, 32), (32, 48)].into_iter().enumerate() {
            manifest.push_str(&format!("s{i:02}r{r},{},{z0},{z1}\n", scan.display()));
        }
    }
    let m = tmp.path().join("regions.csv");
    std::fs::write(&m, manifest).unwrap();
    let p = tmp.path().join("regions.yaml");
    std::fs::write(
        &p,
        "version: 1\nname: regions\nstages:\n  roi: {op: crop, input: image, box: ['${z0}', 0, 0, '${z1}', 96, 96]}\n  \
         mask: {op: threshold, input: roi, method: otsu}\n  objects: {op: label, input: mask}\n  \
         shape: {op: measure, labels: objects, intensity: {raw: roi}}\noutputs:\n  shape: parquet\n",
    )
    .unwrap();
    let mut first = None;
    for run in 0..4 {
        let out = tmp.path().join(format!("out{run}"));
        let o = common::run_samples_within(&p, &m, &out, &["--threads", "2"], std::time::Duration::from_secs(120));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        match &first {
            None => first = Some(out),
            Some(f) => assert_same(f, &out, &format!("run {run}")),
        }
    }
}

#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    // `tessera ops | head -0`: the reader is gone before tessera writes. Like other Unix tools it
    // must end by SIGPIPE, not panic with "failed printing to stdout".
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    for args in [vec!["ops"], vec!["completions", "bash"]] {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_tessera")).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = text(&o.stderr);
        assert!(!err.contains("panicked") && !err.contains("failed printing"), "{args:?}: {err}");
        assert!(o.status.success() || o.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?}", o.status);
    }
}

#[test]
fn progress_in_logs_is_plain_periodic_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // stderr is a pipe here, as in an array job's log: lines, never carriage returns, and every
    // TESSERA_PROGRESS_SECONDS a line with the stage each running sample has reached.
    let o = common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--threads", "1"])
            .current_dir(common::root())
            .env("TESSERA_PROGRESS_SECONDS", "0.002"),
        common::PATIENCE,
    );
    assert_eq!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(!err.contains('\r'), "carriage return in log output");
    assert!(err.lines().all(|l| l.starts_with("tessera: ")), "{err}");
    assert!(err.contains("[3/3]") && err.contains(" done in "), "{err}");
    assert!(err.contains("samples finished after") && err.contains("running: "), "no periodic line: {err}");
    // --progress never: nothing on stderr; --json: the summary on stdout.
    let o = tessera(&["run", "pipelines/nuclei.yaml", "--out", out.to_str().unwrap(), "--progress", "never", "--json", "--force"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["done"], 3);
}

#[test]
fn completions_for_every_shell_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = tessera(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let s = text(&o.stdout);
        for cmd in ["run", "validate", "plan", "ops", "status", "clean", "merge", "stats", "report", "submit"] {
            assert!(s.contains(cmd), "{shell} completions lack `{cmd}`");
        }
        assert!(s.contains("resubmit-failed") && s.contains("allow-missing"), "{shell}: flags missing");
    }
    // bash can load it.
    let o = tessera(&["completions", "bash"]);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.bash");
    std::fs::write(&f, &o.stdout).unwrap();
    let b = std::process::Command::new("bash").args(["-c", &format!("source {} && complete -p tessera", f.display())]).output().unwrap();
    assert!(b.status.success(), "{}", text(&b.stderr));
}

/// pipelines/nuclei-declump.yaml on the bundled nuclei: the watershed splits clumps, and the run
/// gives the same bytes whole and tiled; a --memory too small for the watershed fails the sample
/// with a message naming the memory it needs.
#[test]
fn declump_pipeline_splits_clumps_the_same_whole_tiled_and_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = root().join("pipelines/nuclei-declump.yaml");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["run", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"];
        args.extend_from_slice(extra);
        (tessera(&args), out)
    };
    let (o, whole) = run("whole", &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    for (sample, min_split) in [("nuclei2d", 10), ("nuclei3d", 3)] {
        let read = |f: &str| tessera::io::read_image(&whole.join("samples").join(sample).join(f), Default::default()).unwrap().data;
        let count = |d: tessera::io::Data| {
            let v: std::collections::BTreeSet<u32> = match d {
                tessera::io::Data::U16(a) => a.iter().map(|&x| x as u32).filter(|&x| x > 0).collect(),
                tessera::io::Data::U32(a) => a.iter().copied().filter(|&x| x > 0).collect(),
                other => panic!("labels as {:?}", other.dtype()),
            };
            v.len()
        };
        let (clumps, nuclei) = (count(read("clumps.tif")), count(read("nuclei.tif")));
        assert!(nuclei >= clumps + min_split, "{sample}: {clumps} clumps became {nuclei} nuclei");
    }
    let touching = std::fs::read_to_string(whole.join("tables/touching.csv")).unwrap();
    assert!(touching.starts_with("sample,source,dims,label_a,label_b,faces,area") && touching.lines().count() > 20, "{touching}");
    let (o, tiled) = run("tiled", &["--tile", "8x32x32"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_same(&whole, &tiled, "tiled");
    // (Streamed runs with the two ops in memory, against runs in memory: tests/stream.rs and
    // tests/split.rs, from the registry.)
    let (o, small) = run("small", &["--memory", "1MiB"]);
    assert_ne!(o.status.code(), Some(0));
    let errors = std::fs::read_to_string(small.join("errors.csv")).unwrap();
    assert!(errors.contains("nuclei3d") && errors.contains("more than --memory"), "{errors}");
}
