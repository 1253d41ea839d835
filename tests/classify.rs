//! `tessera train` / `tessera predict`: the forest against scikit-learn on its bundled digits
//! (testdata/make_digits.py wrote the table and scikit-learn's accuracies), the same model bytes
//! whatever the threads, stratified evaluation on imbalanced classes, missing values, and clear
//! errors for tables and model files that do not fit.

mod common;

use std::path::{Path, PathBuf};

use common::{root, run_samples, tessera, text};

fn digits() -> PathBuf {
    root().join("testdata/classify/digits.csv")
}

fn sklearn() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root().join("testdata/classify/digits_sklearn.json")).unwrap()).unwrap()
}

fn train(args: &[&str]) -> (serde_json::Value, String) {
    let o = tessera(&[&["train"], args, &["--json"]].concat());
    assert!(o.status.success(), "train {args:?}: {}", text(&o.stderr));
    (serde_json::from_slice(&o.stdout).unwrap(), text(&o.stderr))
}

fn model_path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn digits_accuracy_is_within_two_points_of_scikit_learn() {
    let d = tempfile::tempdir().unwrap();
    let (digits, m) = (digits().display().to_string(), model_path(d.path(), "m.json"));
    let sk = sklearn();
    // Hold-out: the mean over five seeds, as make_digits.py took scikit-learn's.
    let mut acc = Vec::new();
    for seed in 0..5 {
        let (e, _) = train(&[&digits, "--label", "class", "--model", &m, "--seed", &seed.to_string()]);
        assert_eq!(e["method"], "holdout");
        assert_eq!(e["rows_tested"], 359);
        acc.push(e["accuracy"].as_f64().unwrap());
    }
    let mean = acc.iter().sum::<f64>() / acc.len() as f64;
    let want = sk["holdout_accuracy_mean"].as_f64().unwrap();
    assert!((mean - want).abs() <= 0.02, "tessera {mean:.4} ({acc:?}), scikit-learn {want:.4}");
    let (e, _) = train(&[&digits, "--label", "class", "--model", &m, "--folds", "5"]);
    assert_eq!(e["method"], "kfold");
    assert_eq!(e["rows_tested"], 1797);
    let (got, want) = (e["accuracy"].as_f64().unwrap(), sk["kfold5_accuracy"].as_f64().unwrap());
    assert!((got - want).abs() <= 0.02, "5-fold: tessera {got:.4}, scikit-learn {want:.4}");
    // The confusion matrix accounts for every tested row, and recall per class matches it.
    let conf: Vec<Vec<u64>> = serde_json::from_value(e["confusion"].clone()).unwrap();
    assert_eq!(conf.iter().flatten().sum::<u64>(), 1797);
    for (k, c) in e["per_class"].as_array().unwrap().iter().enumerate() {
        let support: u64 = conf[k].iter().sum();
        assert_eq!(c["support"].as_u64().unwrap(), support);
        assert!((c["recall"].as_f64().unwrap() - conf[k][k] as f64 / support as f64).abs() < 1e-12);
    }
}

#[test]
fn the_same_seed_gives_the_same_model_bytes_whatever_the_threads() {
    let d = tempfile::tempdir().unwrap();
    let digits = digits().display().to_string();
    let mut bytes = Vec::new();
    for (threads, seed) in [("1", "7"), ("2", "7"), ("3", "7"), ("2", "8")] {
        let m = model_path(d.path(), &format!("m{threads}-{seed}.json"));
        train(&[&digits, "--label", "class", "--model", &m, "--trees", "20", "--seed", seed, "--threads", threads]);
        bytes.push(std::fs::read(&m).unwrap());
    }
    assert!(bytes[0] == bytes[1] && bytes[1] == bytes[2], "models differ between thread counts");
    assert!(bytes[0] != bytes[3], "another seed gave the same model");
}

#[test]
fn predict_adds_a_class_and_a_probability_per_class_and_keeps_every_column() {
    let d = tempfile::tempdir().unwrap();
    let (digits, m) = (digits().display().to_string(), model_path(d.path(), "m.json"));
    train(&[&digits, "--label", "class", "--model", &m, "--trees", "30"]);
    for out in ["p.csv", "p.parquet"] {
        let out = d.path().join(out);
        let o = tessera(&["predict", &m, &digits, "--out", &out.display().to_string()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("1797 rows classified into 10 classes"), "{}", text(&o.stderr));
        let t = tessera::table::read::read_all(&out).unwrap();
        assert_eq!(t.rows(), 1797);
        let names = t.names();
        assert_eq!(&names[..3], ["sample", "class", "p00"]);
        assert_eq!(names[66], "predicted");
        assert_eq!(names[67..].to_vec(), (0..10).map(|c| format!("probability_{c}")).collect::<Vec<_>>());
        // Probabilities sum to 1 and the predicted class is the most probable one.
        let probs: Vec<Vec<f64>> = (0..10).map(|c| tessera::stats::numeric(t.get(&format!("probability_{c}")).unwrap()).unwrap()).collect();
        // The class names are text ("0".."9"); a CSV reader takes them back as numbers.
        let pc = t.get("predicted").unwrap();
        let predicted: Vec<f64> = (0..1797).map(|i| tessera::stats::cell(pc, i).parse().unwrap()).collect();
        let truth = tessera::stats::numeric(t.get("class").unwrap()).unwrap();
        let mut right = 0;
        for i in 0..1797 {
            let s: f64 = (0..10).map(|c| probs[c][i]).sum();
            assert!((s - 1.0).abs() < 1e-9, "row {i}: probabilities sum to {s}");
            let best = (0..10).fold(0, |b, c| if probs[c][i] > probs[b][i] { c } else { b });
            assert_eq!(predicted[i] as usize, best, "row {i}");
            right += (predicted[i] == truth[i]) as usize;
        }
        // Mostly rows the forest was grown on: nearly all right.
        assert!(right > 1750, "{right} of 1797");
    }
    // Without --out: CSV on stdout.
    let o = tessera(&["predict", &m, &digits]);
    assert!(o.status.success());
    let stdout = text(&o.stdout);
    assert!(stdout.starts_with("sample,class,p00,"), "{}", &stdout[..80]);
    assert_eq!(stdout.lines().count(), 1798);
}

#[test]
fn tables_and_models_that_do_not_fit_are_clear_errors_naming_the_column() {
    let d = tempfile::tempdir().unwrap();
    let (digits, m) = (digits().display().to_string(), model_path(d.path(), "m.json"));
    train(&[&digits, "--label", "class", "--model", &m, "--trees", "5", "--features", "p10,p20,p30"]);
    let csv = d.path().join("t.csv");
    let fail = |table: &Path, model: &str| {
        let o = tessera(&["predict", model, &table.display().to_string()]);
        assert_eq!(o.status.code(), Some(2));
        text(&o.stderr)
    };
    std::fs::write(&csv, "sample,p10,p2O,p30\na,0.1,0.2,0.3\n").unwrap();
    let e = fail(&csv, &m);
    assert!(e.contains("no column `p20`") && e.contains("did you mean 'p2O'") && e.contains("t.csv"), "{e}");
    std::fs::write(&csv, "sample,p10,p20,p30\na,0.1,high,0.3\n").unwrap();
    let e = fail(&csv, &m);
    assert!(e.contains("column `p20` is text ('high')"), "{e}");
    std::fs::write(&csv, "sample,p10,p20,p30\na,0.1,,0.3\nb,0.1,0.2,0.3\n").unwrap();
    let e = fail(&csv, &m);
    assert!(e.contains("column `p20` has 1 missing value(s) of 2"), "{e}");
    // A model of another format version, a damaged one, not a model at all.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["format_version"] = 99.into();
    let other = model_path(d.path(), "v99.json");
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(&csv, "sample,p10,p20,p30\na,0.1,0.2,0.3\n").unwrap();
    let e = fail(&csv, &other);
    assert!(e.contains("model format 99") && e.contains("train the model again"), "{e}");
    v["format_version"] = 1.into();
    v["forest"]["trees"][0]["feature"][0] = 7.into();
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(fail(&csv, &other).contains("damaged model file"));
    for damage in [
        |v: &mut serde_json::Value| {
            v["forest"]["trees"][0] = serde_json::json!({"feature": [], "threshold": [], "left": [], "right": [], "leaf": [], "value": []})
        },
        |v: &mut serde_json::Value| v["classes"] = serde_json::json!([]),
        |v: &mut serde_json::Value| v["medians"] = serde_json::json!([1.0]),
        |v: &mut serde_json::Value| v["forest"]["trees"][0]["left"][0] = 0.into(),
    ] {
        let mut w: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        damage(&mut w);
        std::fs::write(&other, serde_json::to_vec(&w).unwrap()).unwrap();
        let e = fail(&csv, &other);
        assert!(e.contains("damaged model file"), "{e}");
    }
    std::fs::write(&other, "not json").unwrap();
    assert!(fail(&csv, &other).contains("not a tessera model file"));
    // Training: an unknown feature, a class column with one value.
    let o = tessera(&["train", &digits, "--label", "clas", "--model", &m]);
    assert!(text(&o.stderr).contains("no column `clas`") && text(&o.stderr).contains("did you mean 'class'"), "{}", text(&o.stderr));
    std::fs::write(&csv, "sample,kind,x\na,k,1\nb,k,2\nc,k,3\n").unwrap();
    let o = tessera(&["train", &csv.display().to_string(), "--label", "kind", "--model", &m]);
    assert!(text(&o.stderr).contains("`kind` has 1 distinct value(s)"), "{}", text(&o.stderr));
}

#[test]
fn missing_values_are_refused_dropped_or_filled_with_the_training_median() {
    let d = tempfile::tempdir().unwrap();
    let csv = d.path().join("t.csv");
    let mut s = String::from("sample,kind,a,b\n");
    for i in 0..60 {
        let kind = if i % 2 == 0 { "round" } else { "long" };
        let a = if i == 3 || i == 8 { String::new() } else { format!("{}", (i % 2) as f64 * 10.0 + (i % 7) as f64 * 0.1) };
        let b = if i == 5 { "NA".into() } else { format!("{}", i % 5) };
        s += &format!("s{i},{kind},{a},{b}\n");
    }
    std::fs::write(&csv, s).unwrap();
    let (c, m) = (csv.display().to_string(), model_path(d.path(), "m.json"));
    let o = tessera(&["train", &c, "--label", "kind", "--model", &m]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(e.contains("`a` (2 of 60 rows)") && e.contains("`b` (1 of 60 rows)") && e.contains("--missing drop"), "{e}");
    let o = tessera(&["train", &c, "--label", "kind", "--model", &m, "--missing", "drop"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("3 rows with missing values left out"), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(v["training"]["rows"], 57);
    let o = tessera(&["train", &c, "--label", "kind", "--model", &m, "--missing", "median"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(v["training"]["rows"], 60);
    assert_eq!(v["medians"].as_array().unwrap().len(), 2);
    // The model fills missing values when it predicts, too.
    let o = tessera(&["predict", &m, &c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 61);
}

#[test]
fn evaluation_is_stratified_on_imbalanced_classes() {
    // 190 rows of one class, 10 of another: the hold-out keeps 20 % of each (38 and 2), and every
    // fold of a 5-fold cross-validation tests both classes.
    let d = tempfile::tempdir().unwrap();
    let csv = d.path().join("t.csv");
    let mut s = String::from("sample,kind,x\n");
    for i in 0..200 {
        let (kind, x) = if i < 190 { ("common", i as f64 / 190.0) } else { ("rare", 2.0 + i as f64) };
        s += &format!("s{i},{kind},{x}\n");
    }
    std::fs::write(&csv, s).unwrap();
    let (c, m) = (csv.display().to_string(), model_path(d.path(), "m.json"));
    let (e, _) = train(&[&c, "--label", "kind", "--model", &m]);
    let support: Vec<u64> = e["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).collect();
    assert_eq!(support, [38, 2]);
    assert_eq!(e["accuracy"], 1.0);
    assert_eq!(e["balanced_accuracy"], 1.0);
    let (e, _) = train(&[&c, "--label", "kind", "--model", &m, "--folds", "5"]);
    let support: Vec<u64> = e["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).collect();
    assert_eq!(support, [190, 10]);
}

#[test]
fn digits_as_png_files_become_pixel_rows_that_train_as_well_as_the_table() {
    // pipelines/digits.yaml over the 1,797 PNG files: one row per image, `class` from the
    // manifest, pixels p00..p63 = round(255·g/16)/255 for the table's grey levels g/16.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = tessera(&[
        "run",
        &root().join("pipelines/digits.yaml").display().to_string(),
        "--out",
        &out.display().to_string(),
        "--progress",
        "never",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let px = tessera::table::read::read_all(&out.join("tables/pixels.parquet")).unwrap();
    let table = tessera::table::read::read_all(&digits()).unwrap();
    assert_eq!(px.rows(), 1797);
    let class = |t: &tessera::table::Table, i: usize| tessera::stats::cell(t.get("class").unwrap(), i).parse::<f64>().unwrap();
    for i in (0..1797).step_by(37) {
        assert_eq!(class(&px, i), class(&table, i), "row {i}");
        for p in ["p00", "p19", "p36", "p63"] {
            let g = tessera::stats::numeric(table.get(p).unwrap()).unwrap()[i];
            let v = tessera::stats::numeric(px.get(p).unwrap()).unwrap()[i];
            assert_eq!(v, (255.0 * g).round() / 255.0, "row {i} {p}");
        }
    }
    let m = model_path(d.path(), "m.json");
    let (e, _) = train(&[&out.join("tables/pixels.parquet").display().to_string(), "--label", "class", "--model", &m]);
    let want = sklearn()["holdout_accuracy_mean"].as_f64().unwrap();
    let got = e["accuracy"].as_f64().unwrap();
    assert!((got - want).abs() <= 0.02, "tessera {got:.4} on the PNG pixels, scikit-learn {want:.4}");
}

fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    common::output_within(std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(dir), common::PATIENCE)
}

fn class_counts(table: &Path) -> std::collections::BTreeMap<(String, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    let text = std::fs::read_to_string(table).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (s, c) = (head.iter().position(|h| *h == "sample").unwrap(), head.iter().position(|h| *h == "population").unwrap());
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        *counts.entry((f[s].to_string(), f[c].to_string())).or_insert(0) += 1;
    }
    counts
}

/// Objects measured by pipelines/objects.yaml train the committed model (the same bytes), and
/// pipelines/objects-classify.yaml applies it in a run — in memory and streamed, the same bytes
/// — finding each sample's round and long objects as testdata/make_objects.py placed them; the
/// run keeps the model, and the report has its classification section.
#[test]
fn a_pipeline_classifies_objects_with_a_trained_model_in_memory_and_streamed() {
    let d = tempfile::tempdir().unwrap();
    let pipelines = root().join("pipelines");
    let o = run_in(d.path(), &["run", pipelines.join("objects.yaml").to_str().unwrap(), "--progress", "never"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let features = "volume,major_axis_length,minor_axis_length,anisotropy";
    let args = [
        "train",
        "tessera-out/objects/tables/shape.parquet",
        "--label",
        "population",
        "--features",
        features,
        "--folds",
        "5",
        "--missing",
        "median",
    ];
    let o = run_in(d.path(), &[&args[..], &["--model", "m.json", "--json"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let committed = std::fs::read(root().join("testdata/classify/objects.model.json")).unwrap();
    assert!(std::fs::read(d.path().join("m.json")).unwrap() == committed, "the committed objects model is not what training gives");
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(e["accuracy"].as_f64().unwrap() >= 0.95, "{e}");

    let classify = pipelines.join("objects-classify.yaml");
    let run = |name: &str, extra: &[&str]| {
        let out = d.path().join(name);
        let o = run_in(
            d.path(),
            &[&["run", classify.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"], extra].concat(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        out
    };
    let mem = run("mem", &[]);
    let streamed = run("streamed", &["--memory", "150KiB"]);
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(streamed.join("run.json")).unwrap()).unwrap();
    assert!(record["samples"].as_array().unwrap().iter().all(|s| s["streamed"] == true), "not streamed");
    common::assert_same(&mem, &streamed, "in memory and streamed");
    assert!(std::fs::read(mem.join("models/kinds.model.json")).unwrap() == committed, "the run keeps the model it applied");

    let counts = class_counts(&mem.join("tables/kinds.csv"));
    let manifest = std::fs::read_to_string(root().join("testdata/classify/objects_mixed.csv")).unwrap();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        for (class, placed) in [("round", f[2]), ("long", f[3])] {
            let placed: usize = placed.parse().unwrap();
            let found = counts.get(&(f[0].to_string(), class.to_string())).copied().unwrap_or(0);
            assert!(found.abs_diff(placed) <= 2, "{}: {found} {class} objects found, {placed} placed ({counts:?})", f[0]);
        }
    }
    let wb = std::fs::read_to_string(mem.join("stats/kinds_within_between.csv")).unwrap();
    assert!(wb.lines().any(|l| l.starts_with("anisotropy,2,")), "statistics by predicted class: {wb}");

    let o = tessera(&["report", mem.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let html = std::fs::read_to_string(mem.join("report.html")).unwrap();
    for want in ["Classification: <code>population</code>", "stratified 5-fold cross-validation", "Predicted classes per sample", "mixed_3"]
    {
        assert!(html.contains(want), "report lacks {want:?}");
    }
}

/// A model file that is missing or damaged is a compile error at `model:`; `stats.by` may name
/// the class column and suggests it; a table without the model's features fails its sample
/// naming the column; a retrained model recomputes the stage (its bytes are in the key).
#[test]
fn classify_stages_check_their_model_and_follow_its_changes() {
    let d = tempfile::tempdir().unwrap();
    let image = root().join("testdata/classify/objects/mixed_1.tif");
    let pipeline = |model: &str, by: &str| {
        let p = d.path().join("p.yaml");
        std::fs::write(
            &p,
            format!(
                "version: 1\nname: p\nstages:\n  mask: {{op: threshold, input: image, method: otsu}}\n  objects: {{op: label, input: mask}}\n  shape: {{op: measure, labels: objects}}\n  \
                 kinds: {{op: classify, input: shape, model: {model}, column: kind}}\nstats: {{table: kinds, by: {by}}}\n"
            ),
        )
        .unwrap();
        p
    };
    let validate = |p: &Path| tessera(&["validate", p.to_str().unwrap()]);
    let o = validate(&pipeline("nowhere.json", "kind"));
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("p.yaml:7:") && err.contains("nowhere.json"), "{err}");
    std::fs::write(d.path().join("bad.json"), b"{\"format\": \"tessera-model\", \"format_version\": 1}").unwrap();
    let err = text(&validate(&pipeline("bad.json", "kind")).stderr);
    assert!(err.contains("bad.json: a damaged model file"), "{err}");
    std::fs::copy(root().join("testdata/classify/objects.model.json"), d.path().join("m.json")).unwrap();
    assert_eq!(validate(&pipeline("m.json", "kind")).status.code(), Some(0));
    let manifest = d.path().join("s.csv");
    std::fs::write(&manifest, format!("sample,image\na,{}\n", image.display())).unwrap();
    let o = tessera(&["validate", pipeline("m.json", "knd").to_str().unwrap(), "--samples", manifest.to_str().unwrap()]);
    assert!(text(&o.stderr).contains("did you mean 'kind'"), "{}", text(&o.stderr));

    // Features the table lacks: a model trained on the digits' pixels.
    let (digits, pixels) = (digits().display().to_string(), model_path(d.path(), "pixels.json"));
    train(&[&digits, "--label", "class", "--model", &pixels, "--trees", "5"]);
    let out = d.path().join("out");
    let run = |p: &Path| run_samples(p, &manifest, &out, &[]);
    let o = run(&pipeline("pixels.json", "kind"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert!(errors.contains("kinds") && errors.contains("no column `p00`"), "{errors}");

    // The same pipeline text, another model in the file: the stage is recomputed.
    let p = pipeline("m.json", "kind");
    assert_eq!(run(&p).status.code(), Some(0));
    let first = std::fs::read(out.join("tables/kinds.parquet")).unwrap();
    let other = model_path(d.path(), "m.json");
    let o = run_in(d.path(), &["run", root().join("pipelines/objects.yaml").to_str().unwrap(), "--progress", "never"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shape = d.path().join("tessera-out/objects/tables/shape.parquet").display().to_string();
    train(&[&shape, "--label", "population", "--features", "volume,voxels", "--trees", "3", "--model", &other]);
    assert_eq!(run(&p).status.code(), Some(0));
    let second = std::fs::read(out.join("tables/kinds.parquet")).unwrap();
    assert!(first != second, "a retrained model must recompute the stage");
    let fresh = d.path().join("fresh");
    let o = run_samples(&p, &manifest, &fresh, &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(std::fs::read(fresh.join("tables/kinds.parquet")).unwrap() == second, "the resumed run equals a fresh one");
}
