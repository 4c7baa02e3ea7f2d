//! Running an exported model with tract: load the ONNX file, read its
//! [`ModelInfo`], optimise the graph for the fixed input size, run frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::plan::SimpleState;

use crate::model_info::{MetadataError, ModelInfo};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The model file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not an ONNX model tract can run.
    #[error("{what}: {message}")]
    Model {
        /// The model file, or "the model".
        what: String,
        /// tract's explanation, with its causes.
        message: String,
    },
    /// The model's metadata is missing or malformed.
    #[error("{what}: {source}")]
    Metadata {
        /// The model file, or "the model".
        what: String,
        /// The key at fault.
        source: MetadataError,
    },
    /// An input of the wrong length.
    #[error("the model takes {expected} input values, got {actual}")]
    Input {
        /// Values the model takes.
        expected: usize,
        /// Values given.
        actual: usize,
    },
}

fn tract_error(what: &str, e: TractError) -> EngineError {
    EngineError::Model {
        what: what.into(),
        message: format!("{e:#}"),
    }
}

/// One matrix-multiply kernel of an optimised graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The node's name in tract's graph (derived from the ONNX node's).
    pub node: String,
    /// Whether it multiplies int8 operands (accumulating in i32).
    pub integer: bool,
    /// Whether it writes 8-bit results directly (requantisation fused into the kernel).
    pub fused_requantization: bool,
    /// tract's description: shapes, kernel, fused operations.
    pub description: String,
}

/// A model ready to run frames of its fixed input size.
#[derive(Debug)]
pub struct Engine {
    info: ModelInfo,
    plan: Arc<TypedRunnableModel>,
    state: SimpleState<TypedFact, Box<dyn TypedOp>>,
    output_shape: Vec<usize>,
}

/// Reads the edgeseg metadata of a parsed ONNX file.
pub fn model_info(proto: &ModelProto) -> Result<ModelInfo, MetadataError> {
    ModelInfo::from_props(
        proto
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str())),
    )
}

impl Engine {
    /// Loads an ONNX file written by `edgeseg export` or `edgeseg quantize`.
    pub fn load(path: &Path) -> Result<Engine, EngineError> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Engine::from_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a model from the bytes of an ONNX file; `what` names it in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Engine, EngineError> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| tract_error(what, e))?;
        let info = model_info(&proto).map_err(|source| EngineError::Metadata {
            what: what.into(),
            source,
        })?;
        Engine::from_proto(&proto, info, what)
    }

    /// Builds the engine for a parsed model whose metadata is `info`.
    pub fn from_proto(
        proto: &ModelProto,
        info: ModelInfo,
        what: &str,
    ) -> Result<Engine, EngineError> {
        let size = info.input_size;
        let shape = [1, 3, size.height as usize, size.width as usize];
        // Knobs the benchmarks show help (BENCHMARKS.md), unless the user set
        // them: im2col + matrix product beat tract's direct spatial
        // convolution on every model measured here.
        let knobs: Vec<(&str, &str)> = [("TRACT_DISABLE_DIRECT_SPATIAL", "true")]
            .into_iter()
            .filter(|(k, _)| std::env::var_os(k).is_none())
            .collect();
        let scope = KnobScope::new(knobs).map_err(|e| tract_error(what, e))?;
        let plan = scope
            .enter(|| {
                tract_onnx::onnx()
                    .model_for_proto_model(proto)
                    .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
                    .and_then(|m| m.into_optimized())
                    .and_then(|m| m.into_runnable())
            })
            .map_err(|e| tract_error(what, e))?;
        let output_shape = plan
            .model()
            .output_fact(0)
            .map_err(|e| tract_error(what, e))?;
        let output_shape = output_shape
            .shape
            .as_concrete()
            .map(|s| s.to_vec())
            .ok_or_else(|| EngineError::Model {
                what: what.into(),
                message: "the output shape is not fixed by the input size".into(),
            })?;
        let expected = [1, info.num_classes(), shape[2], shape[3]];
        if output_shape != expected {
            return Err(EngineError::Model {
                what: what.into(),
                message: format!(
                    "output shape {output_shape:?}; expected {expected:?} for {} classes",
                    info.num_classes()
                ),
            });
        }
        let state = plan.spawn().map_err(|e| tract_error(what, e))?;
        Ok(Engine {
            info,
            plan,
            state,
            output_shape,
        })
    }

    /// The model's metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The optimised graph tract runs.
    pub fn optimized(&self) -> &TypedModel {
        self.plan.model()
    }

    /// Counts the optimised graph's operators by name, largest count first.
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for node in self.plan.model().nodes() {
            *counts.entry(node.op.name().to_string()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
    }

    /// The matrix-multiply kernels of the optimised graph (the convolutions), with
    /// the operand types tract packed for them.
    pub fn matmul_kernels(&self) -> Vec<Kernel> {
        let model = self.plan.model();
        model
            .nodes()
            .iter()
            .filter(|n| n.op.name() == "OptMatMul")
            .map(|n| {
                let description = n.op.info().unwrap_or_default().join("; ");
                Kernel {
                    node: n.name.clone(),
                    integer: description.contains("PackedI8"),
                    fused_requantization: description.contains(",U8")
                        || description.contains(",I8"),
                    description,
                }
            })
            .collect()
    }

    /// Runs `input` once and returns the time each node of the optimised graph
    /// took, slowest first: `(node name, operator, seconds)`.
    pub fn profile(&mut self, input: &[f32]) -> Result<Vec<(String, String, f64)>, EngineError> {
        let tensor = self.input_tensor(input)?;
        let mut times = Vec::new();
        self.state
            .run_plan_with_eval(tvec!(tensor.into()), |ctx, state, node, inputs| {
                let started = std::time::Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                times.push((
                    node.name.clone(),
                    node.op.name().to_string(),
                    started.elapsed().as_secs_f64(),
                ));
                out
            })
            .map_err(|e| tract_error("running the model", e))?;
        times.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(times)
    }

    /// `input` as the model's `1x3xHxW` input tensor, after checking its length.
    fn input_tensor(&self, input: &[f32]) -> Result<Tensor, EngineError> {
        let size = self.info.input_size;
        let (h, w) = (size.height as usize, size.width as usize);
        if input.len() != 3 * h * w {
            return Err(EngineError::Input {
                expected: 3 * h * w,
                actual: input.len(),
            });
        }
        Tensor::from_shape(&[1, 3, h, w], input).map_err(|e| tract_error("input", e))
    }

    /// Runs one normalised planar image (`3 * height * width` values, channels
    /// first) and returns planar logits (`classes * height * width`).
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, EngineError> {
        let tensor = self.input_tensor(input)?;
        let outputs = self
            .state
            .run(tvec!(tensor.into()))
            .map_err(|e| tract_error("running the model", e))?;
        let logits = outputs[0]
            .cast_to::<f32>()
            .map_err(|e| tract_error("reading the logits", e))?;
        let values = logits
            .to_plain_array_view::<f32>()
            .map_err(|e| tract_error("reading the logits", e))?;
        debug_assert_eq!(values.len(), self.output_shape.iter().product::<usize>());
        Ok(values.iter().copied().collect())
    }
}
