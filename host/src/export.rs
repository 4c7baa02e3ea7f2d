//! From a trained Burn model to the layer graph of `model-export`, and from a
//! run folder to a verified ONNX file.
//!
//! Each module has an `export` method next to its `forward` that mirrors it
//! step by step; the tests and [`export_run`] check that tract's output on the
//! written file matches Burn's.

use std::path::Path;

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::interpolate::{Interpolate2d, InterpolateMode};
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::prelude::*;
use firmware::Size;
use firmware::engine::Engine;
use model_export::ModelInfo;
use model_export::graph::{self, Graph, Op, ResizeMode, Value, Weights};

use crate::data::{BatchPlan, Source, batches};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::run::RunDir;

/// Result of the graph-building helpers.
pub type GraphResult<T> = model_export::Result<T>;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float tensor")
}

fn pads(padding: &PaddingConfig2d, kernel: [usize; 2]) -> [usize; 4] {
    match *padding {
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Valid => [0; 4],
        // "Same" padding at stride 1 with an odd kernel, as Burn computes it.
        PaddingConfig2d::Same => {
            let [kh, kw] = kernel;
            [kh / 2, kw / 2, (kh - 1) / 2, (kw - 1) / 2]
        }
    }
}

/// Adds `conv` reading `x`.
pub fn conv(g: &mut Graph, name: &str, conv: &Conv2d, x: Value) -> GraphResult<Value> {
    let w = conv.weight.val();
    let shape = w.dims();
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return Err(model_export::Error::Graph(format!(
            "{name}: grouped or dilated convolutions are not exported"
        )));
    }
    let op = Op::Conv(graph::Conv {
        weights: Weights::new(shape, values(w))?,
        bias: conv.bias.as_ref().map(|b| values(b.val())),
        stride: conv.stride,
        pads: pads(&conv.padding, conv.kernel_size),
    });
    g.add(name, op, &[x])
}

/// Adds `conv` reading `x`.
pub fn conv_transpose(
    g: &mut Graph,
    name: &str,
    conv: &ConvTranspose2d,
    x: Value,
) -> GraphResult<Value> {
    let w = conv.weight.val();
    let shape = w.dims();
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return Err(model_export::Error::Graph(format!(
            "{name}: grouped or dilated transposed convolutions are not exported"
        )));
    }
    let [ph, pw] = conv.padding;
    let op = Op::ConvTranspose(graph::ConvTranspose {
        weights: Weights::new(shape, values(w))?,
        bias: conv.bias.as_ref().map(|b| values(b.val())),
        stride: conv.stride,
        pads: [ph, pw, ph, pw],
        output_padding: conv.padding_out,
    });
    g.add(name, op, &[x])
}

/// Adds `bn` (with its running statistics) reading `x`.
pub fn batch_norm(g: &mut Graph, name: &str, bn: &BatchNorm, x: Value) -> GraphResult<Value> {
    let op = Op::BatchNorm(graph::BatchNorm {
        gamma: values(bn.gamma.val()),
        beta: values(bn.beta.val()),
        mean: values(bn.running_mean.value()),
        var: values(bn.running_var.value()),
        epsilon: bn.epsilon as f32,
    });
    g.add(name, op, &[x])
}

/// Adds a ReLU reading `x`.
pub fn relu(g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
    g.add(name, Op::Relu, &[x])
}

/// Adds `pool` reading `x`.
pub fn max_pool(g: &mut Graph, name: &str, pool: &MaxPool2d, x: Value) -> GraphResult<Value> {
    if pool.dilation != [1, 1] || pool.ceil_mode {
        return Err(model_export::Error::Graph(format!(
            "{name}: dilated or ceil-mode pooling is not exported"
        )));
    }
    let op = Op::MaxPool {
        kernel: pool.kernel_size,
        stride: pool.stride,
        pads: pads(&pool.padding, pool.kernel_size),
    };
    g.add(name, op, &[x])
}

/// Adds `resize` (an integer upscaling) reading `x`.
pub fn interpolate(
    g: &mut Graph,
    name: &str,
    resize: &Interpolate2d,
    x: Value,
) -> GraphResult<Value> {
    let scale = match resize.scale_factor {
        Some([a, b]) if a == b && a.fract() == 0.0 && a >= 1.0 => a as usize,
        other => {
            return Err(model_export::Error::Graph(format!(
                "{name}: scale {other:?}; only equal integer factors are exported"
            )));
        }
    };
    let mode = match (&resize.mode, resize.align_corners) {
        (InterpolateMode::Nearest, _) => ResizeMode::Nearest,
        (InterpolateMode::Linear, true) => ResizeMode::LinearAlignCorners,
        (InterpolateMode::Linear, false) => ResizeMode::LinearHalfPixel,
        (other, _) => {
            return Err(model_export::Error::Graph(format!(
                "{name}: {other:?} interpolation is not exported"
            )));
        }
    };
    g.add(name, Op::Resize { scale, mode }, &[x])
}

/// Pads the input at the bottom and right to a multiple of `stride`, as
/// `pad_to_multiple` does in the forward pass; returns the padded value and the
/// original height and width.
pub fn pad_input(g: &mut Graph, stride: usize) -> GraphResult<(Value, [usize; 2])> {
    let [_, h, w] = g.input_shape();
    let (bottom, right) = (
        h.next_multiple_of(stride) - h,
        w.next_multiple_of(stride) - w,
    );
    if bottom == 0 && right == 0 {
        return Ok((Graph::INPUT, [h, w]));
    }
    let v = g.add("pad", Op::Pad { bottom, right }, &[Graph::INPUT])?;
    Ok((v, [h, w]))
}

/// Crops `x` back to `[h, w]` when padding was added.
pub fn crop_output(g: &mut Graph, x: Value, [h, w]: [usize; 2]) -> GraphResult<Value> {
    let [_, xh, xw] = g.shape(x);
    if (xh, xw) == (h, w) {
        return Ok(x);
    }
    g.add(
        "crop",
        Op::Crop {
            height: h,
            width: w,
        },
        &[x],
    )
}

impl Model {
    /// The layer graph of this network for one `size` input, batch norms still
    /// separate (see [`Graph::fold_batchnorm`]).
    pub fn to_graph(&self, size: Size) -> GraphResult<Graph> {
        let mut g = Graph::new([3, size.height as usize, size.width as usize]);
        match self {
            Model::Unet(m) => m.export(&mut g)?,
            Model::Linknet(m) => m.export(&mut g)?,
        };
        Ok(g)
    }
}

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

/// Compares tract's logits on the ONNX model `onnx` with Burn's `model` on the
/// same normalised planar inputs.
pub fn compare(model: &Model, onnx: &[u8], inputs: &[Vec<f32>], size: Size) -> Result<Agreement> {
    let device = Device::flex();
    let mut engine = Engine::from_bytes(onnx, "the exported model")
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let classes = engine.info().num_classes();
    let (h, w) = (size.height as usize, size.width as usize);
    let (mut max_abs_diff, mut agree, mut total) = (0.0f32, 0usize, 0usize);
    for input in inputs {
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, h, w]), &device);
        let burn = values(model.forward(x));
        let tract = engine
            .run(input)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        for (a, b) in burn.iter().zip(tract) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
        }
        let (burn_mask, tract_mask) = (
            crate::quantize::argmax(&burn, classes),
            crate::quantize::argmax(tract, classes),
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
    let graph_error = |e: model_export::Error| Error::Invalid(format!("exporting: {e}"));
    let mut graph = model.to_graph(size).map_err(graph_error)?;
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
            state.history.last().map_or(f64::NAN, |r| r.val_miou)
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
    config: &crate::train::TrainConfig,
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
                agreement.max_abs_diff < 2e-3 && agreement.argmax_agreement > 0.999,
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
