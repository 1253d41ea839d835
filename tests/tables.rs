//! `tessera merge` and `tessera stats` on real output folders: merged outputs byte-identical to
//! the run's, failed samples reported, statistics on files equal to the run's statistics.

mod common;

use common::{files, run_example, tessera, text};

/// The study-level files of an output folder (tables/ and stats/), path → bytes.
fn study(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files(dir).into_iter().filter(|(p, _)| p.starts_with("tables") || p.starts_with("stats")).collect()
}

#[test]
fn merge_rewrites_the_study_outputs_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert_eq!(run_example(&out, &[]).status.code(), Some(0));
    let before = study(&out);
    assert!(before.len() >= 4, "{:?}", before.iter().map(|f| &f.0).collect::<Vec<_>>());
    for from_parquet in [false, true] {
        std::fs::remove_dir_all(out.join("tables")).unwrap();
        std::fs::remove_dir_all(out.join("stats")).unwrap();
        if from_parquet {
            // Without the checkpoint store, tables come from the samples' Parquet files.
            std::fs::remove_dir_all(out.join(".tessera")).unwrap();
        }
        // From another folder: run.json records absolute paths.
        let o = common::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).args(["merge", out.to_str().unwrap()]).current_dir(tmp.path()),
            common::PATIENCE,
        );
        assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
        assert!(text(&o.stdout).contains("3 of 3 samples done"), "{}", text(&o.stdout));
        assert!(study(&out) == before, "merge (from parquet: {from_parquet}) wrote other bytes");
    }
}

#[test]
fn merge_lists_failed_samples_and_writes_nothing_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = common::root();
    std::fs::write(tmp.path().join("broken.tif"), b"II*\0 this is not a TIFF").unwrap();
    let manifest = tmp.path().join("m.csv");
    std::fs::write(
        &manifest,
        format!(
            "sample,image,source,dims\nnuclei2d,{r}/testdata/nuclei2d.tif,real,2d\nbroken,broken.tif,real,2d\nnuclei3d,{r}/testdata/nuclei3d.tif,synthetic,3d\n",
            r = root.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run_example(&out, &["--samples", manifest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let run_study = study(&out);
    std::fs::remove_dir_all(out.join("tables")).unwrap();
    std::fs::remove_dir_all(out.join("stats")).unwrap();
    let o = tessera(&["merge", out.to_str().unwrap()]);
    let so = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{so}");
    assert!(so.contains("2 of 3 samples done") && so.contains("broken") && so.contains("FAILED at stage 'input'"), "{so}");
    assert!(so.contains("nothing merged"), "{so}");
    assert!(study(&out).is_empty(), "merge wrote tables although a sample failed");
    let o = tessera(&["merge", out.to_str().unwrap(), "--allow-missing", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["done"], 2);
    assert_eq!(j["not_done"][0]["sample"], "broken");
    assert_eq!(j["not_done"][0]["status"], "failed");
    assert!(study(&out) == run_study, "--allow-missing merges what the unsharded run merged");
}

#[test]
fn stats_on_files_equals_the_runs_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert_eq!(run_example(&out, &[]).status.code(), Some(0));
    let want = std::fs::read(out.join("stats/shape_within_between.csv")).unwrap();
    // Per-sample Parquet files in manifest order are the run's rows in the run's order.
    for (i, tables) in [
        vec![
            out.join("samples/nuclei2d/shape.parquet"),
            out.join("samples/neuron3d/shape.parquet"),
            out.join("samples/nuclei3d/shape.parquet"),
        ],
        vec![out.join("tables/shape.parquet")],
        vec![out.join("tables/shape.csv")],
    ]
    .into_iter()
    .enumerate()
    {
        let dest = tmp.path().join(format!("s{i}.csv"));
        let mut args: Vec<String> = vec!["stats".into()];
        args.extend(tables.iter().map(|p| p.display().to_string()));
        args.extend(["--phenotypes".into(), "volume,raw_mean".into(), "--out".into(), dest.display().to_string()]);
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains("within_cv_pct"), "{}", text(&o.stdout));
        assert!(std::fs::read(&dest).unwrap() == want, "case {i}: stats differ from the run's");
    }
    // Grouped by a metadata column, all numeric phenotypes, patterns unexpanded by a shell.
    let pat = out.join("samples/*/shape.csv").display().to_string();
    let o = tessera(&["stats", &pat, "--by", "dims", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["files"], 3);
    let vol = j["within_between"].as_array().unwrap().iter().find(|r| r["phenotype"] == "volume").unwrap();
    assert_eq!(vol["n_groups"], 2);
}

#[test]
fn pca_and_kmeans_from_the_pipeline_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(common::root().join("pipelines/nuclei.yaml"))
        .unwrap()
        .replace(
            "phenotypes: [volume, raw_mean]",
            "phenotypes: [volume, raw_mean, major_axis_length, anisotropy]\n  pca: 2\n  kmeans: 3\n  seed: 7",
        )
        .replace("../testdata/samples.csv", &common::root().join("testdata/samples.csv").display().to_string());
    let p = tmp.path().join("p.yaml");
    std::fs::write(&p, yaml).unwrap();
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("o{threads}"));
        let o = tessera(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", threads, "--progress", "never"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        outs.push(study(&out));
    }
    assert!(outs[0] == outs[1], "statistics depend on the thread count");
    let names: Vec<String> = outs[0].iter().map(|(p, _)| p.display().to_string()).collect();
    for f in ["stats/shape_pca.csv", "stats/shape_clusters.csv", "stats/shape_centers.csv", "stats/shape_scores.parquet"] {
        assert!(names.contains(&f.to_string()), "{f} missing: {names:?}");
    }
    let wb = String::from_utf8(outs[0].iter().find(|(p, _)| p.ends_with("shape_within_between.csv")).unwrap().1.clone()).unwrap();
    assert!(wb.contains("\npc1,") && wb.contains("\npc2,"), "{wb}");
    let clusters = String::from_utf8(outs[0].iter().find(|(p, _)| p.ends_with("shape_clusters.csv")).unwrap().1.clone()).unwrap();
    assert!(clusters.starts_with("sample,cluster,n_objects,fraction\n"), "{clusters}");
}

#[test]
fn bad_tables_and_folders_are_clear_errors() {
    let o = tessera(&["stats", "no/such.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no/such.csv: no such file"), "{}", text(&o.stderr));
    let o = tessera(&["stats", "testdata/golden/stats/table.csv", "--phenotypes", "volum"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("did you mean 'volume'"), "{}", text(&o.stderr));
    let o = tessera(&["stats", "testdata/golden/stats/table.csv", "--by", "animl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no column `animl` (did you mean 'animal'?)"), "{}", text(&o.stderr));
    let o = tessera(&["stats", "testdata/golden/stats/table.csv", "--out", "x.txt"]);
    assert_eq!(o.status.code(), Some(2));
    let tmp = tempfile::tempdir().unwrap();
    let o = tessera(&["merge", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no run.json"), "{}", text(&o.stderr));
    // A by-animal table with a missing-value column and a constant column says why numbers are missing.
    let o = tessera(&["stats", "testdata/golden/stats/table.csv", "--by", "animal"]);
    assert_eq!(o.status.code(), Some(0));
    let so = text(&o.stdout);
    assert!(so.contains("constant: the ratio is undefined") && so.contains("missing values left out"), "{so}");
}
