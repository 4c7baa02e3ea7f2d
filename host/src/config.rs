//! The training configuration: model, data, loss, optimiser, schedule and
//! budget, as `config.json` of a run stores it.

use std::path::PathBuf;

use firmware::Size;
use serde::{Deserialize, Serialize};

use crate::data::{Augment, DataSpec, Normalize, Source};
use crate::error::{Error, ParseError, Result};
use crate::labels::LabelSpace;
use crate::loss::LossConfig;
use crate::model::ModelConfig;

/// Optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// SGD with Nesterov momentum 0.9.
    Sgd,
}

/// The defaults of a training run: [`TrainConfig::new`] and `edgeseg train`'s
/// flags both read them, so they are written once.
pub mod defaults {
    use firmware::Size;

    /// Model input and training size.
    pub const SIZE: Size = Size::new(256, 192);
    /// Epochs when neither `--epochs` nor a time budget is given.
    pub const EPOCHS: usize = 10;
    /// Images per step.
    pub const BATCH: usize = 8;
    /// Base learning rate.
    pub const LR: f64 = 2e-3;
    /// Weight decay.
    pub const WEIGHT_DECAY: f64 = 1e-4;
    /// Share of a plain images/ + masks/ folder held out for validation.
    pub const VAL_FRACTION: f32 = 0.2;
    /// Synthetic training scenes.
    pub const SYNTHETIC_TRAIN: usize = 400;
    /// Synthetic validation scenes.
    pub const SYNTHETIC_VAL: usize = 50;
    /// Loader threads.
    pub const WORKERS: usize = 2;
    /// U-Net: channels of the first level.
    pub const UNET_BASE_WIDTH: usize = 16;
    /// LinkNet: multiplier of every channel count.
    pub const LINKNET_WIDTH: f32 = 0.5;
}

/// Learning-rate schedule over all iterations of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the base rate to 1 percent of it.
    Cosine,
    /// `(1 - t)^0.9`, as in DeepLab.
    Poly,
    /// Divide by 10 at 60 and 85 percent of the run.
    Step,
    /// Keep the base rate.
    Constant,
}

impl Schedule {
    /// Learning rate at progress `t` in `[0, 1]`, after a linear warm-up over the
    /// first `warmup` fraction.
    pub fn rate(self, base: f64, t: f64, warmup: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        let scale = match self {
            Schedule::Cosine => 0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Schedule::Poly => (1.0 - t).powf(0.9).max(0.001),
            Schedule::Step => {
                if t < 0.6 {
                    1.0
                } else if t < 0.85 {
                    0.1
                } else {
                    0.01
                }
            }
            Schedule::Constant => 1.0,
        };
        let warm = if warmup > 0.0 {
            ((t + 1e-9) / warmup).min(1.0)
        } else {
            1.0
        };
        base * scale * warm
    }
}

/// How classes are weighted in cross-entropy and focal loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// All classes weigh 1.
    None,
    /// Median-frequency balancing computed from the training labels.
    Median,
    /// Square roots of the median-frequency weights: rare classes still count
    /// more, but a class 1/20 as frequent weighs about 4.5, not 20, so the
    /// network does not paint it over its neighbours early in training.
    #[serde(rename = "sqrt-median")]
    SqrtMedian,
    /// Weights given by the user, one per class.
    Given(Vec<f32>),
}

impl std::str::FromStr for ClassWeights {
    type Err = ParseError;

    /// `none`, `median`, `sqrt-median`, or a comma list of one weight per class.
    fn from_str(s: &str) -> std::result::Result<ClassWeights, ParseError> {
        Ok(match s {
            "none" => ClassWeights::None,
            "median" => ClassWeights::Median,
            "sqrt-median" => ClassWeights::SqrtMedian,
            list => ClassWeights::Given(
                list.split(',')
                    .map(|w| w.trim().parse::<f32>().ok().filter(|w| w.is_finite() && *w >= 0.0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ParseError {
                        expected: "none, median, sqrt-median or a comma list of non-negative numbers",
                        given: s.into(),
                    })?,
            ),
        })
    }
}

/// Everything a training run needs; saved as `config.json` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data: a dataset folder, or synthetic scenes.
    pub data: DataSpec,
    /// The classes of the data and the model.
    pub labels: LabelSpace,
    /// Architecture and its hyper-parameters.
    pub model: ModelConfig,
    /// Training (and model input) size.
    pub size: Size,
    /// Passes over the training set; `None`: as many as
    /// [`TrainConfig::time_limit`] allows (which must then be given).
    pub epochs: Option<usize>,
    /// Images per step.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Fraction of the run spent warming the learning rate up linearly.
    pub warmup: f64,
    /// Loss terms.
    pub loss: LossConfig,
    /// Class weighting.
    pub class_weights: ClassWeights,
    /// Augmentation of training samples (`None`: none).
    pub augment: Option<Augment>,
    /// Input normalisation.
    pub normalize: Normalize,
    /// Seed of initialisation, shuffling, augmentation and synthetic scenes.
    pub seed: u64,
    /// Stop after this many epochs without a better validation mIoU.
    pub patience: Option<usize>,
    /// Loader threads.
    pub workers: usize,
    /// Wall-clock budget in seconds (training and validation, over resumes).
    /// When set, the schedule runs on elapsed time and the run ends with the
    /// epoch in which the budget ran out; `epochs` is then an upper bound.
    #[serde(default)]
    pub time_limit: Option<f64>,
    /// ImageNet ResNet weights (torchvision `.pth` or safetensors) that start
    /// LinkNet's encoder; read once when the run starts.
    #[serde(default)]
    pub encoder_weights: Option<PathBuf>,
    /// Train on random windows of this size cut from the `size` samples;
    /// validation and the exported model still see whole `size` images.
    #[serde(default)]
    pub crop: Option<Size>,
    /// Progressive resizing: epochs that start within this fraction of the run
    /// (of the time budget when one is set, else of the steps) train on
    /// samples at half `size` on each side, four times cheaper per step, so
    /// the early, coarse learning takes less of the budget. Validation always
    /// runs at `size`. 0 trains at `size` throughout.
    #[serde(default)]
    pub progressive: f64,
    /// Validate after every `val_every`-th epoch, and after the run's last
    /// one; the best checkpoint is chosen among the validated epochs. 1
    /// validates every epoch; larger values save the validation's time when
    /// the validation set is large against the training set (a held-out
    /// drive, Cityscapes' 500 pictures).
    #[serde(default = "one")]
    pub val_every: usize,
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// Defaults for `model` at `size`: the settings that work on synthetic scenes.
    pub fn new(model: ModelConfig, size: Size) -> TrainConfig {
        TrainConfig {
            data: DataSpec {
                root: None,
                val_fraction: defaults::VAL_FRACTION,
                synthetic_train: defaults::SYNTHETIC_TRAIN,
                synthetic_val: defaults::SYNTHETIC_VAL,
                seed: 0,
                val_sequences: Vec::new(),
                train_on_val: false,
            },
            labels: LabelSpace::camvid(),
            model,
            size,
            epochs: Some(defaults::EPOCHS),
            batch: defaults::BATCH,
            lr: defaults::LR,
            weight_decay: defaults::WEIGHT_DECAY,
            optimizer: OptimizerKind::Adamw,
            schedule: Schedule::Cosine,
            warmup: 0.03,
            loss: LossConfig::default(),
            class_weights: ClassWeights::None,
            augment: Some(Augment::default()),
            normalize: Normalize::default(),
            seed: 0,
            patience: None,
            workers: defaults::WORKERS,
            time_limit: None,
            encoder_weights: None,
            crop: None,
            progressive: 0.0,
            val_every: 1,
        }
    }

    /// One line on what a run of this configuration trains: model, size,
    /// data, length and batch.
    pub fn describe(&self) -> String {
        let length = match (self.epochs, self.time_limit) {
            (Some(epochs), None) => format!("{epochs} epochs"),
            (Some(epochs), Some(limit)) => {
                format!("{:.1} minutes (at most {epochs} epochs)", limit / 60.0)
            }
            (None, limit) => format!("{:.1} minutes", limit.unwrap_or_default() / 60.0),
        };
        let data = match &self.data.root {
            None => "synthetic scenes".to_string(),
            Some(root) if self.data.train_on_val => {
                format!("{} (train and val pooled)", root.display())
            }
            Some(root) if self.data.val_sequences.is_empty() => root.display().to_string(),
            Some(root) => format!(
                "{} (holding out {})",
                root.display(),
                self.data.val_sequences.join(", ")
            ),
        };
        format!(
            "training {} at {} on {data} for {length}, batch {}",
            self.model.name(),
            self.size,
            self.batch
        )
    }

    pub(crate) fn sources(&self) -> Result<(Source, Source)> {
        let train = Source::open(&self.data, "train", self.size)?;
        let val = Source::open(&self.data, "val", self.size)?;
        for source in [&train, &val] {
            if source.labels() != self.labels {
                return Err(Error::Invalid(format!(
                    "the data's classes ({}) differ from the run's ({})",
                    source.labels().names.join(", "),
                    self.labels.names.join(", ")
                )));
            }
        }
        if self.model.num_classes() != self.labels.num_classes() {
            return Err(Error::Invalid(format!(
                "the model has {} outputs but the data has {} classes",
                self.model.num_classes(),
                self.labels.num_classes()
            )));
        }
        Ok((train, val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_start_at_base_and_decay() {
        for s in [Schedule::Cosine, Schedule::Poly, Schedule::Step] {
            assert!((s.rate(1.0, 0.0, 0.0) - 1.0).abs() < 1e-9, "{s:?}");
            assert!(s.rate(1.0, 1.0, 0.0) < 0.02, "{s:?}");
            assert!(s.rate(1.0, 0.5, 0.0) <= 1.0);
        }
        assert_eq!(Schedule::Constant.rate(0.1, 0.7, 0.0), 0.1);
        assert!(Schedule::Cosine.rate(1.0, 0.01, 0.1) < 0.2, "warm-up");
    }
}
