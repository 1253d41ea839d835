//! `tessera report DIR`: one self-contained HTML file (inline CSS, SVG charts and PNG previews;
//! no scripts, no network) from an output folder: provenance and pipeline, per-sample status and
//! object counts, phenotype distributions per group, the within/between table with a chart of
//! the ratios, PCA and clusters when computed, and label previews (the middle plane of each
//! sample's image beside its labels). Everything comes from files in the folder, in manifest
//! order, so the same folder gives the same bytes.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::{plots, preview};
use crate::ops::Kind;
use crate::record::{SampleEntry, Status};
use crate::table::{Column, Table};
use crate::util::fmt_num;

/// Limits that keep reports of large studies readable and small.
const MAX_PREVIEWS: usize = 48;
/// Samples listed one per row (beyond it: the failed ones and the first done ones, this many
/// of each), and shown as one bar each (beyond it: a box plot of the counts).
const MAX_LISTED: usize = 1000;
const MAX_BARS: usize = 400;
const MAX_BOX_GROUPS: usize = 60;
const MAX_PHENOTYPE_PLOTS: usize = 8;
const PREVIEW_SIDE: usize = 256;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cell(c: &Column, i: usize) -> String {
    match c {
        Column::F64(v) => fmt_num(v[i]),
        other => crate::stats::cell(other, i),
    }
}

/// A table as HTML (numbers right-aligned).
fn html_table(t: &Table, columns: Option<&[&str]>, max_rows: usize) -> String {
    let names: Vec<&str> = columns.map(|c| c.to_vec()).unwrap_or_else(|| t.names());
    let cols: Vec<(&str, &Column)> = names.iter().filter_map(|n| t.get(n).map(|c| (*n, c))).collect();
    let mut s = String::from("<table><thead><tr>");
    for (n, _) in &cols {
        let _ = write!(s, "<th>{}</th>", esc(n));
    }
    s.push_str("</tr></thead><tbody>");
    for i in 0..t.rows().min(max_rows) {
        s.push_str("<tr>");
        for (_, c) in &cols {
            let num = !matches!(c, Column::Str(_) | Column::Bool(_));
            let _ = write!(s, "<td{}>{}</td>", if num { " class=n" } else { "" }, esc(&cell(c, i)));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    if t.rows() > max_rows {
        let _ = write!(s, "<p class=note>{} more rows not shown.</p>", t.rows() - max_rows);
    }
    s
}

fn kv_table(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=kv>");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table>");
    s
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Done => "done",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

fn strs(c: &Column) -> Vec<String> {
    (0..c.len()).map(|i| crate::stats::cell(c, i)).collect()
}

/// Reads a table the folder holds, if it is there: text columns as text (`text`, plus those of
/// tessera's own that are text), numbers as f64 (missing values NaN), units from the metadata.
fn table(out: &Path, rel: &str, text: &[String]) -> Option<Table> {
    let p = out.join(rel);
    if !p.is_file() {
        return None;
    }
    let mut keep: Vec<String> = ["sample", "phenotype", "component", "note"].iter().map(|s| s.to_string()).collect();
    keep.extend(text.iter().cloned());
    let want = crate::table::read::Want { text: &[], numeric: None, text_if_present: &keep, numeric_optional: true, keep_all: false };
    let mut t = crate::table::read::read_any(&p, &want).ok()?;
    if rel.ends_with(".parquet") {
        let units = crate::table::read::units(&p);
        for (n, _, u) in &mut t.columns {
            *u = units.get(n).cloned();
        }
    }
    Some(t)
}

fn middle_plane(path: &Path) -> Result<crate::io::Data, String> {
    let h = crate::io::read_header(path).map_err(|e| e.to_string())?;
    let z = h.shape[0] / 2;
    crate::io::read_planes(path, z, z + 1, crate::io::ReadLimits { max_bytes: u64::MAX }).map_err(|e| e.to_string())
}

fn img(png: &[u8], alt: &str) -> String {
    format!("<img alt=\"{}\" src=\"data:image/png;base64,{}\">", esc(alt), preview::base64(png))
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;\
color:#222;padding:0 1em}h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;\
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}table.kv th{background:#f5f5f5;font-weight:600}\
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.8em;overflow-x:auto;font-size:.85em}.note{color:#666;font-size:.9em}\
.failed{color:#b00}.grid{display:flex;flex-wrap:wrap;gap:1em}.preview{border:1px solid #ddd;padding:.5em}.preview img{\
image-rendering:pixelated;width:256px;margin-right:.3em;background:#000}.charts{display:flex;flex-wrap:wrap;gap:.5em}";

/// A table of counts as a heat map: each cell shaded by its share of its row (for a confusion
/// matrix, the recall of the row's class), the count written in it.
fn heat_table(corner: &str, rows: &[String], cols: &[String], counts: &[Vec<u64>]) -> String {
    let mut s = format!("<table class=heat><thead><tr><th>{}</th>", esc(corner));
    for c in cols {
        let _ = write!(s, "<th>{}</th>", esc(c));
    }
    s.push_str("<th>total</th></tr></thead><tbody>");
    for (name, row) in rows.iter().zip(counts) {
        let total: u64 = row.iter().sum();
        let _ = write!(s, "<tr><th>{}</th>", esc(name));
        for &n in row {
            let f = if total > 0 { n as f64 / total as f64 } else { 0.0 };
            // From white to the palette's blue.
            let mix = |hi: u8| (255.0 - f * (255.0 - hi as f64)).round() as u8;
            let (r, g, b) = plots::PALETTE[0];
            let ink = if f > 0.55 { "#fff" } else { "#222" };
            let _ = write!(
                s,
                "<td class=n style=\"background:rgb({},{},{});color:{ink}\" title=\"{:.1} % of the row\">{n}</td>",
                mix(r),
                mix(g),
                mix(b),
                100.0 * f
            );
        }
        let _ = write!(s, "<td class=n>{total}</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// Rows of `pairs` (row name, column name) counted into a table over `cols` (in that order;
/// rows in order of first appearance, or `row_order` when given).
fn count_pairs(pairs: &[(String, String)], cols: &[String], row_order: Option<&[String]>) -> (Vec<String>, Vec<Vec<u64>>) {
    let mut rows: Vec<String> = row_order.map(|r| r.to_vec()).unwrap_or_default();
    let mut counts: Vec<Vec<u64>> = vec![vec![0; cols.len()]; rows.len()];
    for (r, c) in pairs {
        let Some(j) = cols.iter().position(|x| x == c) else { continue };
        let i = match rows.iter().position(|x| x == r) {
            Some(i) => i,
            None if row_order.is_none() => {
                rows.push(r.clone());
                counts.push(vec![0; cols.len()]);
                rows.len() - 1
            }
            None => continue,
        };
        counts[i][j] += 1;
    }
    (rows, counts)
}

/// The classification section of a `classify` stage's table: the model the run applied (kept in
/// `models/<stage>.model.json`) with its evaluation, the classes counted per sample and per
/// group, and, when the table also holds the class column the model was trained on, the
/// predictions against it.
fn classification(out: &Path, stage: &str, column: &str, by: &str) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(h, "<h3 id=\"classes-{0}\">Classification: <code>{1}</code></h3>", esc(stage), esc(column));
    let model_rel = format!("models/{stage}.model.json");
    let model = match std::fs::read(out.join(&model_rel))
        .map_err(|e| e.to_string())
        .and_then(|b| crate::classify::parse_model(&b, Path::new(&model_rel)))
    {
        Ok(m) => Some(m),
        Err(e) => {
            let _ = write!(h, "<p class=note>The model is not in the output folder ({}).</p>", esc(&e));
            None
        }
    };
    if let Some(m) = &model {
        let e = &m.evaluation;
        let split = match &e.split {
            crate::classify::Split::Holdout { fraction } => {
                format!("stratified hold-out of {:.0} % ({} rows)", fraction * 100.0, e.rows_tested)
            }
            crate::classify::Split::Kfold { folds } => format!("stratified {folds}-fold cross-validation ({} rows)", e.rows_tested),
        };
        h.push_str(&kv_table(&[
            ("model", format!("{model_rel} (tessera {})", m.tessera_version)),
            (
                "trained on",
                format!(
                    "column `{}` of {} rows from {} file(s); data hash {}",
                    m.label,
                    m.training.rows,
                    m.training.files.len(),
                    &m.training.hash[..m.training.hash.len().min(12)]
                ),
            ),
            ("classes", m.classes.join(", ")),
            ("features", m.features.join(", ")),
            ("forest", format!("{} trees, seed {}", m.forest.trees.len(), m.params.seed)),
            ("evaluated by", split),
            ("accuracy", format!("{:.4} (balanced {:.4})", e.accuracy, e.balanced_accuracy)),
        ]));
        h.push_str("<p class=note>The model's evaluation on rows it was not grown on (rows: true class; shade: share of the row).</p>");
        h.push_str(&heat_table("true \\ predicted", &m.classes, &m.classes, &e.confusion));
        let mut t = Table::default();
        t.push("class", Column::Str(e.per_class.iter().map(|c| c.class.clone()).collect()), None);
        t.push("precision", Column::F64(e.per_class.iter().map(|c| c.precision).collect()), None);
        t.push("recall", Column::F64(e.per_class.iter().map(|c| c.recall).collect()), None);
        t.push("f1", Column::F64(e.per_class.iter().map(|c| c.f1).collect()), None);
        t.push("support", Column::U64(e.per_class.iter().map(|c| c.support).collect()), None);
        h.push_str(&html_table(&t, None, 200));
    }
    let mut text = vec![column.to_string(), by.to_string()];
    if let Some(m) = &model {
        text.push(m.label.clone());
    }
    let Some(t) = table(out, &format!("tables/{stage}.parquet"), &text) else { return Ok(h) };
    let Some(predicted) = t.get(column).map(strs) else { return Ok(h) };
    let classes: Vec<String> = match &model {
        Some(m) => m.classes.clone(),
        None => {
            let mut c: Vec<String> = predicted.clone();
            c.sort();
            c.dedup();
            c
        }
    };
    let mut groupings = vec!["sample".to_string()];
    if by != "sample" && by != column {
        groupings.push(by.to_string());
    }
    for g in &groupings {
        let Some(gv) = t.get(g).map(strs) else { continue };
        let pairs: Vec<(String, String)> = gv.into_iter().zip(predicted.iter().cloned()).collect();
        let (rows, counts) = count_pairs(&pairs, &classes, None);
        let _ = write!(h, "<p>Predicted classes per {}:</p>", esc(g));
        let shown = rows.len().min(MAX_BOX_GROUPS);
        h.push_str(&heat_table(g, &rows[..shown], &classes, &counts[..shown]));
        if rows.len() > shown {
            let _ = write!(h, "<p class=note>{} more rows in <code>tables/{}.parquet</code>.</p>", rows.len() - shown, esc(stage));
        }
    }
    if let Some(m) = &model
        && m.label != column
        && let Some(truth) = t.get(&m.label).map(strs)
    {
        let pairs: Vec<(String, String)> = truth.into_iter().zip(predicted).filter(|(a, _)| !a.is_empty()).collect();
        let right = pairs.iter().filter(|(a, b)| a == b).count();
        let (rows, counts) = count_pairs(&pairs, &classes, Some(&classes));
        let _ = write!(
            h,
            "<p>This run's rows against their column <code>{}</code>: {right} of {} agree ({:.2} %).</p>",
            esc(&m.label),
            pairs.len(),
            if pairs.is_empty() { 0.0 } else { 100.0 * right as f64 / pairs.len() as f64 }
        );
        h.push_str(&heat_table("true \\ predicted", &rows, &classes, &counts));
    }
    Ok(h)
}

/// Renders the report of an output folder.
pub fn render(out: &Path) -> Result<String, String> {
    // The records are read entry by entry, twice (a folder may hold a million samples): first
    // counts, the objects' stages and the samples listed and previewed, then the counts plotted.
    let (mut total, mut done) = (0usize, 0usize);
    let mut labels_stages: Vec<String> = Vec::new();
    let (mut failed_listed, mut done_listed): (Vec<SampleEntry>, Vec<SampleEntry>) = (Vec::new(), Vec::new());
    // Every sample while there are at most MAX_LISTED, in record order.
    let mut all: Vec<SampleEntry> = Vec::new();
    let (file, run) = crate::record::each_latest(out, &mut |s| {
        total += 1;
        if total <= MAX_LISTED {
            all.push(s.clone());
        } else {
            all.clear();
        }
        for (k, _) in &s.objects {
            if !labels_stages.contains(k) {
                labels_stages.push(k.clone());
            }
        }
        if s.status == Status::Done {
            done += 1;
            if done_listed.len() < MAX_LISTED.max(MAX_PREVIEWS) {
                done_listed.push(s);
            }
        } else if failed_listed.len() < MAX_LISTED {
            failed_listed.push(s);
        }
        Ok(())
    })?;
    let run = &run;
    let plan = run.plan(None, &file).ok();
    let records: Vec<String> = crate::record::files(out)?.iter().map(|p| p.strip_prefix(out).unwrap_or(p).display().to_string()).collect();
    let name = run.pipeline.name.as_str();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>tessera report: {}</title><style>{STYLE}</style></head><body>\n",
        esc(name)
    );
    let _ = write!(h, "<h1>{}</h1>", esc(name));
    if let Some(d) = plan.as_ref().and_then(|p| p.spec.description.clone()) {
        let _ = write!(h, "<p>{}</p>", esc(d.trim()));
    }
    let _ = write!(h, "<p><b>{done} of {total} samples done.</b> Output folder: <code>{}</code></p>", esc(&out.display().to_string()));

    // Provenance.
    h.push_str("<h2 id=provenance>Provenance</h2>");
    let finished = Some(run.finished_unix).filter(|&t| t > 0).map(crate::util::utc_time).unwrap_or_else(|| "—".into());
    let or_dash = |v: &str| if v.is_empty() { "—".to_string() } else { v.to_string() };
    h.push_str(&kv_table(&[
        ("tessera", format!("{} (git {})", or_dash(&run.tessera.version), or_dash(&run.tessera.git_commit))),
        ("pipeline file", or_dash(&run.pipeline.file)),
        ("pipeline hash (blake3)", or_dash(&run.pipeline.hash)),
        ("manifest", run.manifest.file.clone().unwrap_or_else(|| "—".into())),
        ("manifest hash (blake3)", or_dash(&run.manifest.hash)),
        ("host", or_dash(&run.host)),
        ("threads", run.threads.to_string()),
        ("memory budget", Some(run.memory_budget_bytes).filter(|&b| b > 0).map(crate::util::human_bytes).unwrap_or_else(|| "—".into())),
        ("tile", or_dash(&run.tile)),
        ("finished", finished),
        ("command", if run.command_line.is_empty() { "—".into() } else { run.command_line.join(" ") }),
        ("records", records.join(", ")),
    ]));
    let _ = write!(h, "<h3>Pipeline</h3><pre>{}</pre>", esc(&run.pipeline.text));

    // Samples.
    h.push_str("<h2 id=samples>Samples</h2>");
    // Every sample for a study of up to MAX_LISTED; beyond, the failed ones and the first done
    // ones (each in manifest order).
    let listed: Vec<&SampleEntry> =
        if total <= MAX_LISTED { all.iter().collect() } else { failed_listed.iter().chain(done_listed.iter().take(MAX_LISTED)).collect() };
    if total > listed.len() {
        let _ = write!(
            h,
            "<p class=note>{total} samples: listed are the first {} of the {} failed and the first {} of the {done} done \
             (<code>tessera status</code> and <code>run.json</code> have every one).</p>",
            failed_listed.len(),
            total - done,
            listed.len() - failed_listed.len()
        );
    }
    let mut st = String::from("<table><thead><tr><th>sample</th><th>status</th>");
    for l in &labels_stages {
        let _ = write!(st, "<th><code>{}</code> count</th>", esc(l));
    }
    st.push_str("<th>seconds</th><th>input hash</th><th>error</th></tr></thead><tbody>");
    let count = |s: &SampleEntry, l: &str| s.objects.iter().find(|(k, _)| k == l).map(|(_, n)| *n);
    for s in &listed {
        let status = status_name(s.status);
        let _ = write!(
            st,
            "<tr><td>{}</td><td{}>{}</td>",
            esc(&s.sample),
            if s.status == Status::Done { "" } else { " class=failed" },
            esc(status)
        );
        for l in &labels_stages {
            let _ = write!(st, "<td class=n>{}</td>", count(s, l).map(|n| n.to_string()).unwrap_or_default());
        }
        let secs: f64 = s.stage_seconds.iter().map(|(_, v)| v).sum();
        let hash = s.input_hashes.first().map(|x| x[..x.len().min(12)].to_string()).unwrap_or_default();
        let err = match (&s.failed_stage, &s.error) {
            (Some(stg), Some(e)) => format!("stage '{stg}': {e}"),
            _ => String::new(),
        };
        let _ = write!(st, "<td class=n>{secs:.2}</td><td><code>{}</code></td><td class=failed>{}</td></tr>", esc(&hash), esc(&err));
    }
    st.push_str("</tbody></table>");
    h.push_str(&st);
    if let Some(l) = labels_stages.first() {
        // One bar per sample, or for a large study a box plot of the counts of its samples.
        let (mut names, mut counts) = (Vec::new(), Vec::new());
        crate::record::each_latest(out, &mut |s| {
            if total <= MAX_BARS {
                names.push(s.sample.clone());
            }
            counts.push(count(&s, l).map(|n| n as f64).unwrap_or(f64::NAN));
            Ok(())
        })?;
        if total <= MAX_BARS {
            h.push_str(&plots::bars(&format!("objects per sample ({l})"), &names, &counts, "objects", None)?);
        } else {
            counts.retain(|c| !c.is_nan());
            h.push_str(&plots::boxes(
                &format!("objects per sample ({l}), {} samples", counts.len()),
                &[("all samples".into(), counts)],
                "objects",
            )?);
        }
    }

    // Phenotypes, statistics, PCA and clusters, per table stage.
    if let Some(plan) = &plan {
        let stats_stage = plan.stats.as_ref().map(|s| plan.stages[s.table].id.clone());
        for (i, _) in plan.outputs.iter().filter(|(i, _)| plan.stages[*i].kind == Kind::Table) {
            let stage = &plan.stages[*i].id;
            let request = plan.stats.as_ref().filter(|_| stats_stage.as_deref() == Some(stage)).map(|s| s.request.clone());
            let by = request.as_ref().map(|r| r.by.clone()).unwrap_or_else(|| "sample".into());
            let by_cols = vec![by.clone()];
            let Some(t) = table(out, &format!("tables/{stage}.parquet"), &by_cols) else { continue };
            let _ = write!(h, "<h2 id=\"table-{0}\">Phenotypes: {0}</h2>", esc(stage));
            let _ = write!(h, "<p>{} objects in <code>tables/{}.parquet</code>, by <code>{}</code>.</p>", t.rows(), esc(stage), esc(&by));
            let phenotypes: Vec<String> = request
                .as_ref()
                .and_then(|r| r.phenotypes.clone())
                .unwrap_or_else(|| crate::stats::default_phenotypes(&t, &by))
                .into_iter()
                .filter(|p| t.get(p).is_some())
                .collect();
            if let Some(g) = t.get(&by) {
                let groups = strs(g);
                let mut order: Vec<String> = Vec::new();
                for x in &groups {
                    if !order.contains(x) {
                        order.push(x.clone());
                    }
                }
                if order.len() > MAX_BOX_GROUPS {
                    let _ = write!(h, "<p class=note>{} groups: box plots show the first {MAX_BOX_GROUPS}.</p>", order.len());
                    order.truncate(MAX_BOX_GROUPS);
                }
                h.push_str("<div class=charts>");
                for p in phenotypes.iter().take(MAX_PHENOTYPE_PLOTS) {
                    let Some(vals) = t.get(p).and_then(crate::stats::numeric) else { continue };
                    let per: Vec<(String, Vec<f64>)> = order
                        .iter()
                        .map(|o| (o.clone(), groups.iter().zip(&vals).filter(|(g, _)| *g == o).map(|(_, v)| *v).collect()))
                        .collect();
                    let unit = t.columns.iter().find(|c| &c.0 == p).and_then(|c| c.2.clone()).unwrap_or_default();
                    h.push_str(&plots::boxes(p, &per, &unit)?);
                }
                h.push_str("</div>");
                if phenotypes.len() > MAX_PHENOTYPE_PLOTS {
                    let _ =
                        write!(h, "<p class=note>Distributions of the first {MAX_PHENOTYPE_PLOTS} of {} phenotypes.</p>", phenotypes.len());
                }
            }
            let class_column = plan.stages[*i].op.group_columns().into_iter().next();
            if let Some(column) = class_column {
                h.push_str(&classification(out, stage, &column, &by)?);
            }
            if request.is_none() {
                continue;
            }
            if let Some(wb) = table(out, &format!("stats/{stage}_within_between.parquet"), &[]) {
                let _ = write!(h, "<h3>Within/between statistics ({})</h3>", esc(&by));
                h.push_str("<p class=note>ratio = 100 · within-group CV / between-group CV: far above 100, a phenotype varies more inside groups than between them. ICC(1) and the one-way ANOVA say how well it separates groups. The <code>_lo</code>/<code>_hi</code> columns are confidence limits from a seeded bootstrap that resamples the groups with replacement (percentile intervals).</p>");
                h.push_str(&html_table(&wb, None, 200));
                if let (Some(Column::Str(names)), Some(Column::F64(r))) = (wb.get("phenotype"), wb.get("ratio_pct")) {
                    let limits = match (wb.get("ratio_pct_lo"), wb.get("ratio_pct_hi")) {
                        (Some(Column::F64(lo)), Some(Column::F64(hi))) => Some((lo.as_slice(), hi.as_slice())),
                        _ => None,
                    };
                    let title = if limits.is_some() {
                        "within/between ratio (bars: bootstrap confidence interval)"
                    } else {
                        "within/between ratio"
                    };
                    h.push_str(&plots::bars_with(title, names, r, limits, "ratio %", Some(100.0))?);
                }
            }
            if let Some(p) = table(out, &format!("stats/{stage}_pca.csv"), &[]) {
                h.push_str("<h3>Principal components</h3>");
                h.push_str(&html_table(&p, None, 50));
                if let Some(scores) = table(out, &format!("stats/{stage}_scores.parquet"), std::slice::from_ref(&by))
                    && let (Some(Column::F64(x)), Some(Column::F64(y)), Some(g)) = (scores.get("pc1"), scores.get("pc2"), scores.get(&by))
                {
                    let groups = strs(g);
                    let mut names: Vec<String> = Vec::new();
                    let pts: Vec<(f64, f64, usize)> = x
                        .iter()
                        .zip(y)
                        .zip(&groups)
                        .map(|((a, b), gname)| {
                            let k = names.iter().position(|n| n == gname).unwrap_or_else(|| {
                                names.push(gname.clone());
                                names.len() - 1
                            });
                            (*a, *b, k)
                        })
                        .collect();
                    h.push_str(&plots::scatter(&format!("PCA scores by {by}"), &pts, &names, ("pc1", "pc2"), 5000)?);
                }
            }
            if let Some(c) = table(out, &format!("stats/{stage}_centers.csv"), &[]) {
                h.push_str("<h3>k-means clusters</h3><p class=note>Centres in each phenotype's units.</p>");
                h.push_str(&html_table(&c, None, 100));
                if let Some(cl) = table(out, &format!("stats/{stage}_clusters.csv"), std::slice::from_ref(&by)) {
                    h.push_str(&html_table(&cl, None, 300));
                }
            }
        }
    }

    // Label previews.
    if let Some(plan) = &plan
        && let Some((li, f)) = plan
            .outputs
            .iter()
            .filter(|(i, _)| plan.stages[*i].kind == Kind::Labels)
            .find_map(|(i, fs)| fs.iter().find(|f| f.holds_voxels()).map(|f| (*i, *f)))
    {
        let stage = &plan.stages[li].id;
        let _ = write!(
            h,
            "<h2 id=previews>Label previews: {}</h2><p class=note>Middle plane of each sample's image (contrast stretched) beside its labels.</p><div class=grid>",
            esc(stage)
        );
        let shown: Vec<&SampleEntry> = done_listed.iter().take(MAX_PREVIEWS).collect();
        for s in &shown {
            let id = s.sample.clone();
            let lab = crate::io::output_voxels(&out.join("samples").join(&id).join(format!("{stage}.{}", f.ext())));
            let mut raw = PathBuf::from(&s.image);
            if raw.is_relative() && !run.working_directory.is_empty() {
                raw = Path::new(&run.working_directory).join(raw);
            }
            let _ = write!(h, "<div class=preview><b>{}</b><br>", esc(&id));
            match middle_plane(&raw).and_then(|d| preview::gray(&d, 0, PREVIEW_SIDE)) {
                Ok(png) => h.push_str(&img(&png, &format!("{id} image"))),
                Err(e) => {
                    let _ = write!(h, "<span class=note>image: {}</span>", esc(&e));
                }
            }
            match middle_plane(&lab).and_then(|d| preview::labels(&d, 0, PREVIEW_SIDE)) {
                Ok(png) => h.push_str(&img(&png, &format!("{id} labels"))),
                Err(e) => {
                    let _ = write!(h, "<span class=note>labels: {}</span>", esc(&e));
                }
            }
            h.push_str("</div>");
        }
        h.push_str("</div>");
        if done > shown.len() {
            let _ = write!(h, "<p class=note>{} more samples not shown.</p>", done - shown.len());
        }
    }
    h.push_str("\n<p class=note>Written by <code>tessera report</code>.</p></body></html>\n");
    Ok(h)
}
