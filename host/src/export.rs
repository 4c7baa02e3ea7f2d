//! From a trained Burn model to the layer graph of `model-export`, and from a
//! run folder to a verified ONNX file.
//!
//! Each module has an `export` method next to its `forward` that mirrors it
//! step by step (with the helpers of [`crate::model::onnx`]); the tests and
//! [`export_run`] check that tract's output on the written file matches
//! Burn's.

use std::path::Path;

use burn::prelude::*;
use firmware::Size;
use firmware::engine::Engine;
use model_export::ModelInfo;

use crate::data::{BatchPlan, Source, batches};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::onnx::values;
use crate::run::RunDir;

/// Share of pixels on which tract's masks from an exported file must equal
/// Burn's for the export to count as right.
pub const MIN_AGREEMENT: f64 = 0.999;

/// How an exported file compares with the Burn model it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Images compared.
    pub images: usize,
    /// Largest absolute difference of any logit.
    pub max_abs_diff: f32,
    /// Share of pixels whose argmax class is the same.
    pub argmax_agreement: f64,
}

impl Agreement {
    /// An error unless tract's masks equal Burn's on at least
    /// [`MIN_AGREEMENT`] of the pixels compared (none compared passes).
    pub fn check(&self) -> Result<()> {
        if self.images > 0 && self.argmax_agreement < MIN_AGREEMENT {
            return Err(Error::Disagreement {
                agreement: self.argmax_agreement,
            });
        }
        Ok(())
    }
}

/// Compares tract's logits on the ONNX model `onnx` with Burn's `model` on the
/// same normalised planar inputs.
pub fn compare(model: &Model, onnx: &[u8], inputs: &[Vec<f32>], size: Size) -> Result<Agreement> {
    let device = Device::flex();
    let mut engine = Engine::from_bytes(onnx, "the exported model")?;
    let classes = engine.info().num_classes();
    let (h, w) = (size.height as usize, size.width as usize);
    let (mut max_abs_diff, mut agree, mut total) = (0.0f32, 0usize, 0usize);
    for input in inputs {
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, h, w]), &device);
        let burn = values(model.forward(x));
        let tract = engine.run(input)?;
        for (a, b) in burn.iter().zip(tract) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
        }
        let (burn_mask, tract_mask) = (
            crate::inference::argmax(&burn, classes),
            crate::inference::argmax(tract, classes),
        );
        agree += burn_mask
            .iter()
            .zip(&tract_mask)
            .filter(|(a, b)| a == b)
            .count();
        total += burn_mask.len();
    }
    Ok(Agreement {
        images: inputs.len(),
        max_abs_diff,
        argmax_agreement: agree as f64 / total.max(1) as f64,
    })
}

/// What [`export_run`] did.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// Metadata written into the file.
    pub info: ModelInfo,
    /// Bytes written.
    pub bytes: usize,
    /// Operators in the file.
    pub ops: Vec<(&'static str, usize)>,
    /// Batch norms folded into convolutions.
    pub folded: usize,
    /// Multiply-accumulates per frame.
    pub macs: u64,
    /// tract against Burn on validation images.
    pub agreement: Agreement,
}

impl ExportReport {
    /// What `edgeseg export` prints about the file written to `out`.
    pub fn summary(&self, out: &Path) -> String {
        let ops: Vec<String> = self.ops.iter().map(|(op, n)| format!("{n} {op}")).collect();
        let a = &self.agreement;
        format!(
            "wrote {} ({:.2} MB): {} at {}, {} classes, {:.2} GMAC per frame\n  \
             ops: {} ({} batch norms folded)\n  \
             tract vs Burn on {} validation images: max |diff| {:.2e}, argmax agreement {:.4}%",
            out.display(),
            self.bytes as f64 / 1e6,
            self.info.architecture,
            self.info.input_size,
            self.info.num_classes(),
            self.macs as f64 / 1e9,
            ops.join(", "),
            self.folded,
            a.images,
            a.max_abs_diff,
            100.0 * a.argmax_agreement
        )
    }
}

/// Exports weights `weights` (`best.bpk` or `last.bpk`) of the run in `run` as a
/// float ONNX file at `out`, for input `size` (the training size by default),
/// then loads the file in tract and compares it with Burn on `check_images`
/// validation images of the run's data.
pub fn export_run(
    run: &RunDir,
    weights: &str,
    size: Option<Size>,
    out: &Path,
    check_images: usize,
) -> Result<ExportReport> {
    let config = run.config()?;
    let state = run.state()?;
    let size = size.unwrap_or(config.size);
    let model = run.load_model(weights, &Device::flex())?;
    let mut graph = model.to_graph(size)?;
    let folded = graph.fold_batchnorm();
    let labels = &config.labels;
    let info = ModelInfo {
        class_names: labels.names.clone(),
        palette: labels.palette[..labels.num_classes()].to_vec(),
        void: Some(labels.void),
        input_size: size,
        mean: config.normalize.mean,
        std: config.normalize.std,
        architecture: config.model.name(),
        val_miou: if weights == "best.bpk" {
            state.best_miou
        } else {
            state
                .history
                .last()
                .and_then(|r| r.val_miou)
                .unwrap_or(f64::NAN)
        },
        precision: "float32".into(),
    };
    let proto = model_export::onnx::to_model(&graph, &info);
    let bytes = prost::Message::encode_to_vec(&proto);
    let inputs = validation_inputs(&config, size, check_images)?;
    let agreement = compare(&model, &bytes, &inputs, size)?;
    crate::io::write_atomic(out, &bytes)?;
    Ok(ExportReport {
        info,
        bytes: bytes.len(),
        ops: graph.op_counts(),
        folded,
        macs: graph.macs(),
        agreement,
    })
}

/// Up to `n` normalised validation images of the run's data at `size`.
pub fn validation_inputs(
    config: &crate::config::TrainConfig,
    size: Size,
    n: usize,
) -> Result<Vec<Vec<f32>>> {
    let source = Source::open(&config.data, "val", size)?;
    let plan = BatchPlan {
        batch: 1,
        size,
        augment: None,
        normalize: config.normalize.clone(),
        shuffle: None,
        void: config.labels.void,
        workers: 1,
        native_masks: false,
        crop: None,
    };
    batches(&source, &plan)
        .take(n)
        .map(|b| b.map(|b| b.images))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_below_the_bound_is_an_error_that_says_so() {
        let at = |argmax_agreement, images| Agreement {
            images,
            max_abs_diff: 0.0,
            argmax_agreement,
        };
        assert!(at(0.9995, 4).check().is_ok());
        assert!(at(0.5, 0).check().is_ok(), "nothing compared");
        let err = at(0.998, 4).check().unwrap_err().to_string();
        assert_eq!(
            err,
            "tract agrees with Burn on only 99.800% of pixels; the export is wrong"
        );
    }
    use crate::model::ModelConfig;

    /// A model with non-trivial batch-norm statistics: a few training-mode passes
    /// move the running mean and variance away from 0 and 1.
    fn warmed(config: &ModelConfig, size: Size) -> Model {
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = config.init(&device);
        for _ in 0..3 {
            let x = Tensor::<4>::random(
                [2, 3, size.height as usize, size.width as usize],
                burn::tensor::Distribution::Normal(0.5, 2.0),
                &device,
            );
            let _ = model.forward(x);
        }
        model.valid()
    }

    fn inputs(size: Size, n: usize) -> Vec<Vec<f32>> {
        let mut rng = firmware::rng::Rng::for_cell(9, 0, 0);
        (0..n)
            .map(|_| {
                (0..3 * size.area())
                    .map(|_| rng.f32() * 4.0 - 2.0)
                    .collect()
            })
            .collect()
    }

    fn check(config: ModelConfig, size: Size) {
        let model = warmed(&config, size);
        let mut graph = model.to_graph(size).unwrap();
        let unfolded = graph.clone();
        assert!(graph.fold_batchnorm() > 0);
        assert!(
            graph
                .op_counts()
                .iter()
                .all(|(op, _)| *op != "BatchNormalization")
        );
        let info = ModelInfo {
            class_names: (0..config.num_classes()).map(|i| format!("c{i}")).collect(),
            palette: vec![[1, 2, 3]; config.num_classes()],
            void: None,
            input_size: size,
            mean: [0.5; 3],
            std: [0.25; 3],
            architecture: config.name(),
            val_miou: f64::NAN,
            precision: "float32".into(),
        };
        for g in [&unfolded, &graph] {
            let bytes = prost::Message::encode_to_vec(&model_export::onnx::to_model(g, &info));
            let agreement = compare(&model, &bytes, &inputs(size, 2), size).unwrap();
            assert!(
                agreement.max_abs_diff < 2e-3 && agreement.argmax_agreement > MIN_AGREEMENT,
                "{}: {agreement:?}",
                config.name()
            );
        }
    }

    #[test]
    fn unet_exports_and_tract_agrees() {
        let unet = |bilinear| ModelConfig::Unet {
            num_classes: 5,
            base_width: 4,
            depth: 3,
            bilinear,
        };
        // 37x29 is padded to 40x32 inside the graph and cropped back.
        check(unet(false), Size::new(37, 29));
        check(unet(true), Size::new(32, 24));
    }

    #[test]
    fn linknet_exports_and_tract_agrees() {
        check(ModelConfig::linknet(11, 18, 0.125), Size::new(64, 48));
        check(ModelConfig::linknet(3, 34, 0.125), Size::new(45, 70));
        let skip = ModelConfig::linknet(11, 18, 0.125).with_stem_skip(true);
        check(skip, Size::new(45, 70));
    }
}
