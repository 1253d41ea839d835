//! `tessera plan` output: the compiled graph as text, Graphviz DOT or JSON.

use super::{Plan, Ref};

fn ref_name(plan: &Plan, r: Ref) -> &str {
    match r {
        Ref::Source(i) => &plan.sources[i],
        Ref::Stage(i) => &plan.stages[i].id,
    }
}

pub fn text(plan: &Plan) -> String {
    let mut s = format!("pipeline {} ({})\n", plan.spec.name, plan.spec.file.display());
    if let Some(d) = &plan.spec.description {
        s.push_str(&format!("  {d}\n"));
    }
    s.push_str(&format!("hash {}\n", &plan.hash[..16]));
    s.push_str(&format!("sources: {}\n", plan.sources.join(", ")));
    s.push_str("stages (in execution order):\n");
    for (i, st) in plan.stages.iter().enumerate() {
        let ins: Vec<String> = st.inputs.iter().map(|(inp, r)| format!("{}={}", inp.role, ref_name(plan, *r))).collect();
        s.push_str(&format!(
            "  {:>2}. {:<14} {:<10} v{} -> {:<6} halo {:<8} [{}]\n",
            i + 1,
            st.id,
            st.op.info().name,
            st.op.info().version,
            st.kind.name(),
            st.halo.to_string(),
            ins.join(", ")
        ));
        s.push_str(&format!("      params {}\n", st.op.params_json()));
    }
    let groups = fused_runs(plan);
    if !groups.is_empty() {
        s.push_str("tiled together (fused runs of local stages; global stages run on whole images):\n");
        for (ids, halo) in groups {
            s.push_str(&format!(
                "  {:<40} halo {}x{}x{} (physical units resolved per sample)\n",
                ids.join(" + "),
                halo[0],
                halo[1],
                halo[2]
            ));
        }
    }
    s.push_str("outputs:\n");
    for (i, fs) in &plan.outputs {
        let names: Vec<&str> = fs.iter().map(|f| f.ext()).collect();
        s.push_str(&format!("  samples/<sample>/{}.{{{}}}\n", plan.stages[*i].id, names.join(",")));
    }
    if let Some(st) = &plan.stats {
        let r = &st.request;
        s.push_str(&format!("stats: within/between of '{}' by {}", plan.stages[st.table].id, r.by));
        if r.pca > 0 {
            s.push_str(&format!(", PCA ({} components)", r.pca));
        }
        if r.kmeans > 0 {
            s.push_str(&format!(", k-means (k = {}, seed {})", r.kmeans, r.seed));
        }
        s.push('\n');
    }
    s
}

pub fn dot(plan: &Plan) -> String {
    let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n", plan.spec.name);
    for src in &plan.sources {
        s.push_str(&format!("  \"{src}\" [shape=folder, label=\"{src}\\n(source)\"];\n"));
    }
    for st in &plan.stages {
        let shape = match st.kind {
            crate::ops::Kind::Table => "note",
            _ => "box",
        };
        s.push_str(&format!(
            "  \"{}\" [shape={shape}, label=\"{}\\n{} → {}\\nhalo {}\"];\n",
            st.id,
            st.id,
            st.op.info().name,
            st.kind,
            st.halo
        ));
    }
    for st in &plan.stages {
        for (inp, r) in &st.inputs {
            s.push_str(&format!("  \"{}\" -> \"{}\" [label=\"{}\"];\n", ref_name(plan, *r), st.id, inp.role));
        }
    }
    s.push_str("}\n");
    s
}

pub fn json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "name": plan.spec.name,
        "file": plan.spec.file.display().to_string(),
        "hash": plan.hash,
        "sources": plan.sources,
        "stages": plan.stages.iter().map(|st| serde_json::json!({
            "id": st.id,
            "op": st.op.info().name,
            "version": st.op.info().version,
            "kind": st.kind,
            "halo": st.halo.to_string(),
            "inputs": st.inputs.iter().map(|(inp, r)| serde_json::json!({"role": inp.role, "from": ref_name(plan, *r)})).collect::<Vec<_>>(),
            "params": st.op.params_json(),
        })).collect::<Vec<_>>(),
        "outputs": plan.outputs.iter().map(|(i, fs)| serde_json::json!({"stage": plan.stages[*i].id, "formats": fs})).collect::<Vec<_>>(),
        "stats": plan.stats.as_ref().map(|s| serde_json::json!({"table": plan.stages[s.table].id, "by": s.request.by, "phenotypes": s.request.phenotypes, "pca": s.request.pca, "kmeans": s.request.kmeans, "seed": s.request.seed})),
    })
}

/// Runs of consecutive local stages (what the executor fuses per tile, by the executor's own
/// rule, [`crate::exec::tiled::group_from`]), with the context a tile of the run needs (voxel
/// halos as declared; physical-unit ones are resolved per sample). Shapes are not known
/// without a sample: stages share one when each keeps its first input's ([`Op::keeps_shape`]).
///
/// [`Op::keeps_shape`]: crate::ops::Op::keeps_shape
pub fn fused_runs(plan: &Plan) -> Vec<(Vec<String>, [usize; 3])> {
    use crate::ops::{Halo, Kind};
    let n = plan.stages.len();
    // Shape classes: sources share 0 (a run's inputs are checked per sample), a stage that
    // changes the shape starts a new class.
    let mut class = vec![0usize; n];
    for (i, st) in plan.stages.iter().enumerate() {
        class[i] = match (st.op.keeps_shape(), st.inputs.first().map(|(_, r)| *r)) {
            (true, Some(Ref::Stage(j))) => class[j],
            (true, _) => 0,
            (false, _) => i + 1,
        };
    }
    let local = |k: usize| {
        let st = &plan.stages[k];
        let ins_ok = !st.inputs.is_empty()
            && st.inputs.iter().all(|(_, r)| !matches!(r, Ref::Stage(j) if plan.stages[*j].kind == Kind::Table || class[*j] != class[k]));
        match st.halo {
            Halo::Local(h) if st.kind != Kind::Table && ins_ok => Some(h),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let g = crate::exec::tiled::group_from(i, n, &local, &|a, b| class[a] == class[b]);
        if g.stages.is_empty() {
            i += 1;
            continue;
        }
        i = g.stages[g.stages.len() - 1] + 1;
        let reads = |k: usize| plan.stage_inputs(k);
        let down = g.downstream(&reads);
        let halo = g.total_halo(&down);
        out.push((g.stages.iter().map(|&k| plan.stages[k].id.clone()).collect(), halo));
    }
    out
}
