//! `classify`: a model from `tessera train` applied to a table stage (a `measure` table, a
//! `pixels` row): the table with each row's predicted class, so `stats.by` and the report can
//! group objects by class. The forest and the model file live in [`crate::classify`]; the
//! compiler reads the file ([`Op::file`]) and this op holds the parsed model.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};
use crate::classify::Model;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Classify {
    /// The table stage.
    pub input: String,
    /// The model file, as written in the pipeline.
    pub model: String,
    /// Name of the class column added.
    #[serde(default = "default_column")]
    pub column: String,
    /// Whether to add `probability_<class>` columns too.
    #[serde(default = "yes")]
    pub probabilities: bool,
    #[serde(skip)]
    loaded: Option<Arc<Loaded>>,
}

/// A parsed model and the BLAKE3 of its file's bytes.
struct Loaded {
    model: Model,
    blake3: String,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model {} ({} classes, blake3 {})", self.model.label, self.model.classes.len(), &self.blake3[..12])
    }
}

fn default_column() -> String {
    "predicted".to_string()
}

fn yes() -> bool {
    true
}

pub static CLASSIFY: OpInfo = OpInfo {
    name: "classify",
    family: "features",
    version: 1,
    output: Kind::Table,
    same_kind: false,
    summary: "Table → table: a model from `tessera train` predicts each row's class (objects by phenotype, images by pixels).",
    doc: "Applies a random forest saved by `tessera train --model FILE` to each row of a table stage and adds \
          the predicted class as a text column (`column`, default `predicted`) and, unless \
          `probabilities: false`, one `probability_<class>` column per class (the mean of the trees' \
          leaf class fractions), exactly as `tessera predict` does. The class column can be \
          `stats.by`, and the report counts classes per sample. `model` is a path relative to the \
          pipeline file; it is read and checked when the pipeline compiles, its BLAKE3 is part of the \
          stage's checkpoint key (a retrained model recomputes the stage), and a run keeps a copy in \
          `models/<stage>.model.json` of the output folder. The table must have every feature the \
          model was trained on, as numbers; a missing one fails the sample with the column named. \
          Missing values are filled with the model's training medians when it was trained with \
          `--missing median`, else they fail the sample.",
    params: &[
        ParamDoc { name: "input", ty: "stage (table)", default: None, doc: "The table to classify (e.g. a `measure` stage)." },
        ParamDoc {
            name: "model",
            ty: "path",
            default: None,
            doc: "A model file written by `tessera train` (relative to the pipeline file).",
        },
        ParamDoc { name: "column", ty: "name", default: Some("predicted"), doc: "Name of the class column added." },
        ParamDoc { name: "probabilities", ty: "bool", default: Some("true"), doc: "Add a `probability_<class>` column per class." },
    ],
    build: build::<Classify>,
    fields: fields_of::<Classify>,
    examples: &["input: {table}, model: testdata/classify/objects.model.json, column: shape_class"],
};

impl Classify {
    fn loaded(&self) -> Result<&Loaded, String> {
        self.loaded.as_deref().ok_or_else(|| format!("internal: the model {} was not loaded by the compiler", self.model))
    }
}

impl Op for Classify {
    fn info(&self) -> &'static OpInfo {
        &CLASSIFY
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Table] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if self.model.trim().is_empty() {
            v.push(ParamIssue::new("model", "names no file"));
        }
        if self.column.trim().is_empty() || self.column.starts_with("probability_") {
            v.push(ParamIssue::new("column", format!("'{}' cannot name the class column", self.column)).help("e.g. `column: predicted`"));
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        if inputs[0].kind != Kind::Table {
            return Err(ParamIssue::new("input", format!("`classify` needs a table but its input is {}", inputs[0].kind.with_article())));
        }
        Ok(inputs[0].clone())
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Table(t) = inputs[0] else { return Err("classify: input is not a table".into()) };
        let what = format!("the table '{}' of sample '{}'", self.input, ctx.sample);
        let m = &self.loaded()?.model;
        crate::classify::predict_columns(m, t, &what, &self.column, self.probabilities).map(Value::Table)
    }
    /// Tables are small and in memory in every run: the executor runs [`Op::run`] on them.
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    fn keeps_shape(&self) -> bool {
        false
    }
    fn params_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let (Some(o), Some(l)) = (v.as_object_mut(), &self.loaded) {
            o.insert("model_blake3".into(), l.blake3.clone().into());
        }
        v
    }
    fn file(&self) -> Option<(&'static str, &str)> {
        Some(("model", &self.model))
    }
    fn with_file(&self, bytes: &[u8], path: &Path) -> Result<Box<dyn Op>, String> {
        let model = crate::classify::parse_model(bytes, path)?;
        let blake3 = blake3::hash(bytes).to_hex().to_string();
        Ok(Box::new(Classify { loaded: Some(Arc::new(Loaded { model, blake3 })), ..self.clone() }))
    }
    fn group_columns(&self) -> Vec<String> {
        vec![self.column.clone()]
    }
}
