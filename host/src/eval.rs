//! Scoring a trained run: the per-class table and the JSON report.

use std::path::Path;

use burn::prelude::*;
use firmware::metrics::ConfusionMatrix;
use serde_json::{Value, json};

use crate::data::Source;
use crate::error::Result;
use crate::inference::{EvalPlan, Tta, evaluate};
use crate::run::RunDir;

/// Scores of one model on one split.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Class names by id.
    pub classes: Vec<String>,
    /// The confusion matrix (void ignored).
    pub matrix: ConfusionMatrix,
    /// Images scored.
    pub images: usize,
    /// What was scored: the split and the data (`val of data/camvid`).
    pub scored: String,
    /// The sequences (drives, cities) scored with their frame counts; empty
    /// for synthetic scenes.
    pub sequences: Vec<(String, usize)>,
}

impl EvalReport {
    /// A per-class table with the summary metrics, for the terminal.
    pub fn table(&self) -> String {
        let m = &self.matrix;
        let (iou, dice, recall, precision) = (m.iou(), m.dice(), m.recall(), m.precision());
        let pct = |v: Option<f64>| v.map_or("    -".to_string(), |v| format!("{:5.1}", 100.0 * v));
        let mut out = format!(
            "{:<12} {:>6} {:>6} {:>6} {:>6}\n",
            "class", "IoU", "Dice", "recall", "prec"
        );
        for (c, name) in self.classes.iter().enumerate() {
            out += &format!(
                "{name:<12} {:>6} {:>6} {:>6} {:>6}\n",
                pct(iou[c]),
                pct(dice[c]),
                pct(recall[c]),
                pct(precision[c])
            );
        }
        out += &format!(
            "mIoU {:.1}  pixel accuracy {:.1}  class accuracy {:.1}  mean Dice {:.1}  ({} images)\n",
            100.0 * m.mean_iou(),
            100.0 * m.pixel_accuracy(),
            100.0 * m.class_accuracy(),
            100.0 * m.mean_dice(),
            self.images
        );
        out += &format!("scored {} frames: {}", self.images, self.scored);
        if !self.sequences.is_empty() {
            let list: Vec<String> = self
                .sequences
                .iter()
                .map(|(s, n)| format!("{s} ({n})"))
                .collect();
            out += &format!("; sequences {}", list.join(", "));
        }
        out += "\n";
        out
    }

    /// The report as JSON with the keys `miou`, `pixel_accuracy`, `class_accuracy`,
    /// `mean_dice`, `per_class_iou`, `per_class_dice`, `precision`, `recall`,
    /// `confusion` and `images`.
    pub fn to_json(&self) -> Value {
        let m = &self.matrix;
        let by_class = |values: Vec<Option<f64>>| -> Value {
            self.classes
                .iter()
                .cloned()
                .zip(values.into_iter().map(|v| json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        json!({
            "miou": m.mean_iou(),
            "pixel_accuracy": m.pixel_accuracy(),
            "class_accuracy": m.class_accuracy(),
            "mean_dice": m.mean_dice(),
            "per_class_iou": by_class(m.iou()),
            "per_class_dice": by_class(m.dice()),
            "precision": by_class(m.precision()),
            "recall": by_class(m.recall()),
            "confusion": m.rows(),
            "classes": self.classes,
            "images": self.images,
            "scored": self.scored,
            "sequences": self.sequences.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Scores weights `weights` of the run in `run` on `split` of `data` (or the run's own data).
pub fn evaluate_run(
    run: &Path,
    data: Option<&Path>,
    split: &str,
    weights: &str,
    tta: Tta,
    quiet: bool,
) -> Result<EvalReport> {
    let run = RunDir::new(run);
    let config = run.config()?;
    let device = Device::flex();
    let model = run.load_model(weights, &device)?;
    let mut spec = config.data.clone();
    if let Some(root) = data {
        spec.root = Some(root.to_path_buf());
    }
    let source = Source::open(&spec, split, config.size)?;
    if source.labels() != config.labels {
        return Err(crate::error::Error::Invalid(format!(
            "{} has other classes than the run was trained on",
            spec.root
                .as_ref()
                .map_or("the data".into(), |r| r.display().to_string())
        )));
    }
    let plan = EvalPlan {
        size: config.size,
        normalize: config.normalize.clone(),
        labels: config.labels.clone(),
        batch: 4,
        workers: 2,
        tta,
    };
    let bar = crate::progress::bar(source.len() as u64, quiet, "eval", "images");
    let matrix = evaluate(&model, &source, &plan, &device, |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    let classes = config.labels.names.clone();
    let data = spec
        .root
        .as_ref()
        .map_or("synthetic scenes".into(), |r| r.display().to_string());
    let mut scored = if spec.val_sequences.is_empty() || spec.root.is_none() {
        format!("the {split} split of {data}")
    } else {
        format!(
            "the {split} split of {data} cut by sequence (held out for validation: {})",
            spec.val_sequences.join(", ")
        )
    };
    if spec.train_on_val && spec.root == config.data.root && split != "train" {
        scored += ", which the run trained on (--train-on-val): not a measure of unseen frames";
    }
    if tta == Tta::Flip {
        scored += ", each picture averaged with its mirror image (--tta flip)";
    }
    Ok(EvalReport {
        classes,
        matrix,
        images: source.len(),
        scored,
        sequences: source.sequences(),
    })
}
