//! `tessera report`: a self-contained HTML file, byte-identical for the same folder, rendered
//! by headless Chromium without errors into a screenshot that is not blank. The Chromium part
//! runs when `chromium` is installed (`.ci/run` installs Debian's package) and says it is
//! skipped otherwise.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tessera, text};

fn report(dir: &Path, out: &Path) -> String {
    let o = tessera(&["report", dir.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

/// The nuclei example with PCA and k-means switched on.
fn study(tmp: &Path) -> std::path::PathBuf {
    let yaml = std::fs::read_to_string(common::root().join("pipelines/nuclei.yaml"))
        .unwrap()
        .replace("phenotypes: [volume, raw_mean]", "phenotypes: [volume, raw_mean, major_axis_length, anisotropy]\n  pca: 2\n  kmeans: 3")
        .replace("../testdata/samples.csv", &common::root().join("testdata/samples.csv").display().to_string());
    let p = tmp.join("p.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = tmp.join("out");
    let o = tessera(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--progress", "never"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    out
}

#[test]
fn report_is_self_contained_complete_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = study(tmp.path());
    let a = report(&out, &tmp.path().join("a.html"));
    let b = report(&out, &tmp.path().join("b.html"));
    assert!(a == b, "two reports of one folder differ");
    for section in [
        "Provenance",
        "Pipeline",
        "Samples",
        "Phenotypes: shape",
        "Within/between statistics",
        "Principal components",
        "k-means clusters",
        "Label previews: nuclei",
    ] {
        assert!(a.contains(section), "no '{section}' section");
    }
    assert!(a.contains(env!("CARGO_PKG_VERSION")) && a.contains("git "), "no tessera version/commit");
    // The finish time as a reader reads it, and the samples table's count column named once.
    let finished = a.split("<th>finished</th><td>").nth(1).and_then(|r| r.split("</td>").next()).expect("a finished row");
    assert!(finished.len() == 23 && finished.ends_with(" UTC") && finished.starts_with("20"), "finished: {finished}");
    assert!(a.contains("<th><code>nuclei</code> count</th>") && !a.contains("objects objects"), "the samples table's count heading");
    // Three samples: an image and a label preview each, inline.
    assert_eq!(a.matches("src=\"data:image/png;base64,").count(), 6);
    assert!(a.matches("<svg").count() >= 7, "charts: objects, 4 phenotypes, ratios, PCA");
    // Nothing is fetched: no scripts, no external sources or links.
    assert!(!a.contains("<script"), "scripts in the report");
    for bad in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!a.contains(bad), "external reference {bad}");
    }
    // The default location is DIR/report.html.
    let o = tessera(&["report", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(std::fs::read_to_string(out.join("report.html")).unwrap() == a);
    // Not an output folder: exit 2 with the reason.
    let o = tessera(&["report", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no run.json"), "{}", text(&o.stderr));
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|c| Command::new(c).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| c.to_string()))
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: no chromium on PATH (bash .ci/run installs Debian's chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = study(tmp.path());
    let html = tmp.path().join("r.html");
    report(&out, &html);
    let url = format!("file://{}", html.display());
    let profile = tmp.path().join("profile");
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--hide-scrollbars",
        "--window-size=1200,3000",
        "--enable-logging=stderr",
        "--v=0",
    ];
    let shot = tmp.path().join("shot.png");
    let o = Command::new(&browser)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "chromium failed: {err}");
    // Console messages (script errors, failed loads) are logged as CONSOLE lines.
    for line in err.lines() {
        assert!(!line.contains("CONSOLE") && !line.contains("Failed to load resource") && !line.contains("Uncaught"), "page error: {line}");
    }
    let img = image::open(&shot).expect("a screenshot").to_luma8();
    assert_eq!((img.width(), img.height()), (1200, 3000));
    // Not blank: many gray levels and a good share of non-white pixels (text, charts, previews).
    let mut levels = [false; 256];
    let mut dark = 0usize;
    for p in img.pixels() {
        levels[p.0[0] as usize] = true;
        if p.0[0] < 200 {
            dark += 1;
        }
    }
    let distinct = levels.iter().filter(|&&x| x).count();
    assert!(distinct > 50, "screenshot has {distinct} gray levels");
    assert!(dark > img.pixels().len() / 100, "screenshot is nearly blank: {dark} dark pixels");
    // The page loaded completely: the DOM holds the last section.
    let o = Command::new(&browser)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success());
    let dom = text(&o.stdout);
    assert!(dom.contains("Label previews") && dom.contains("Written by"), "incomplete DOM");
}

/// A study of 1,200 samples (the 2D nuclei image under 1,199 names, and one missing file):
/// the report lists the failed sample and the first 1,000 done, says so, and plots the object
/// counts as a box plot instead of 1,200 bars; with 300 samples every one is listed and barred.
#[test]
fn a_large_study_report_lists_and_plots_a_readable_part() {
    let d = tempfile::tempdir().unwrap();
    for (n, listed) in [(300usize, 300usize), (1200, 1001)] {
        let image = common::root().join("testdata/nuclei2d.tif");
        let mut m = String::from("sample,image\n");
        for i in 0..n {
            let img = if i == n / 2 { d.path().join("missing.tif") } else { image.clone() };
            m += &format!("s{i:04},{}\n", img.display());
        }
        let manifest = d.path().join(format!("m{n}.csv"));
        std::fs::write(&manifest, m).unwrap();
        let out = d.path().join(format!("out{n}"));
        let o = common::run_samples("pipelines/nuclei.yaml", &manifest, &out, &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        let html = report(&out, &d.path().join(format!("r{n}.html")));
        let rows = html.matches("<tr><td>s").count();
        assert_eq!(rows, listed, "{n} samples");
        assert!(html.contains(&format!("<b>{} of {n} samples done.</b>", n - 1)));
        if n > 1000 {
            assert!(html.contains("1200 samples: listed are the first 1 of the 1 failed and the first 1000 of the 1199 done"));
            assert!(html.contains("objects per sample (nuclei), 1199 samples"), "a box plot of the counts");
        } else {
            assert!(html.matches("<rect").count() >= n, "a bar per sample");
            assert!(!html.contains("listed are the first"));
        }
    }
}
