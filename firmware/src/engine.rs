//! Running an exported model with tract: load the ONNX file (or its NNEF
//! translation), read its [`ModelInfo`], optimise the graph for the fixed input
//! size, run frames without allocating per frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::plan::SimpleState;

use crate::model_info::{MetadataError, ModelInfo};

mod blas;
pub mod direct;
pub mod gemmconv;
mod graph;
pub use graph::ConvGeometry;
pub mod pointwise;
pub mod pool;
pub mod qconv;
pub mod quantize;
mod relu;
pub mod upsample;
pub mod winograd;

/// The arithmetic a model runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// 32-bit floats: the exported model as it is.
    F32,
    /// 16-bit floats: the float model translated at load (tract's `f32_to_f16`);
    /// fast only where the CPU has half-precision arithmetic (ARMv8.2 `asimdhp`).
    F16,
    /// 8-bit integers: the model `edgeseg quantize` wrote.
    Int8,
}

impl Precision {
    /// Every precision, in the order `auto` tries them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Int8];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}`; expected f32, f16 or int8"))
    }
}

/// How a model is prepared for running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Translate a float model to 16-bit floats before optimising.
    pub f16: bool,
    /// Run 3x3 stride-1 float convolutions with Winograd F(4x4, 3x3) or
    /// F(2x2, 3x3) ([`winograd`]) instead of tract's im2col and matrix
    /// product.
    pub winograd: bool,
    /// Run the float convolutions edgeseg has operators for with them
    /// instead of tract's im2col, packed products and `DeconvSum`: 1x1
    /// ([`pointwise`]), stride-2 transposed ([`upsample`]), those with few
    /// input channels or rows long enough ([`direct`]), and the rest
    /// ([`gemmconv`]); and in an int8 model, the quantised convolutions
    /// ([`qconv`]) and quantisations ([`quantize`]) where the CPU has 8-bit
    /// dot products.
    pub own_ops: bool,
}

impl Default for Options {
    /// f32 as exported; Winograd on unless `EDGESEG_WINOGRAD=0`, the other
    /// own operators unless `EDGESEG_OWN_OPS=0`.
    fn default() -> Options {
        let on = |var| std::env::var(var).map_or(true, |v| v != "0");
        Options {
            f16: false,
            winograd: on("EDGESEG_WINOGRAD"),
            own_ops: on("EDGESEG_OWN_OPS"),
        }
    }
}

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
    /// The name of tract's kernel, e.g. `avx512_mmm_f32_16x12` or
    /// `arm64simd_mmm_i32_8x8_dot` (empty if the description names none).
    pub kernel: String,
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
    /// The input tensor, reused: tract gets a reference-counted handle to it.
    input: Arc<Tensor>,
    /// The logits of the last run.
    logits: Vec<f32>,
    /// Threads for tract's matrix products.
    executor: Executor,
    /// The arithmetic the optimised graph runs in.
    precision: Precision,
    /// Convolutions replaced by [`winograd::Winograd`].
    winograd_convs: usize,
    /// Convolutions replaced by [`pointwise::Pointwise`],
    /// [`upsample::Upsample2`], [`direct::DirectConv`] and
    /// [`gemmconv::GemmConv`].
    own_convs: usize,
}

/// Prefix tract gives ONNX `metadata_props` among a model's properties (and
/// which NNEF files written by [`model_export`](https://docs.rs/) keep).
pub const PROPERTY_PREFIX: &str = "onnx.metadata_props.";

/// Whether `path` names an NNEF model (a `.nnef.tgz`/`.nnef.tar` archive or a
/// folder) rather than an ONNX file.
pub fn is_nnef(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    path.is_dir()
        || name.is_some_and(|n| n.ends_with(".tgz") || n.ends_with(".tar") || n.ends_with(".nnef"))
}

/// Reads the edgeseg metadata of a tract model (from ONNX or NNEF) out of its
/// properties.
pub fn typed_model_info(model: &TypedModel) -> Result<ModelInfo, MetadataError> {
    let props: Vec<(&str, String)> = model
        .properties
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(PROPERTY_PREFIX)?;
            let value = v.try_as_plain_ram().ok()?.to_scalar::<String>().ok()?;
            Some((key, value.clone()))
        })
        .collect();
    ModelInfo::from_props(props.iter().map(|(k, v)| (*k, v.as_str())))
}

/// Reads the edgeseg metadata of a model file (ONNX or NNEF, see [`is_nnef`])
/// without optimising it.
pub fn file_info(path: &Path) -> Result<ModelInfo, EngineError> {
    let what = path.display().to_string();
    let metadata = |source| EngineError::Metadata {
        what: what.clone(),
        source,
    };
    if is_nnef(path) {
        use tract_onnx::WithOnnx;
        let model = tract_nnef::nnef()
            .with_onnx()
            .model_for_path(path)
            .map_err(|e| tract_error(&what, e))?;
        return typed_model_info(&model).map_err(metadata);
    }
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| tract_error(&what, e))?;
    model_info(&proto).map_err(metadata)
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

/// The `1x3xHxW` input shape for `info`'s input size.
fn input_shape(info: &ModelInfo) -> [usize; 4] {
    let size = info.input_size;
    [1, 3, size.height as usize, size.width as usize]
}

impl Engine {
    /// Loads an ONNX file written by `edgeseg export` or `edgeseg quantize`, or
    /// its NNEF translation (see [`is_nnef`]).
    pub fn load(path: &Path) -> Result<Engine, EngineError> {
        Engine::load_with(path, Options::default())
    }

    /// [`Engine::load`] with `options`.
    pub fn load_with(path: &Path, options: Options) -> Result<Engine, EngineError> {
        if is_nnef(path) {
            return Engine::load_nnef(path, options);
        }
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Engine::from_bytes_with(&bytes, &path.display().to_string(), options)
    }

    /// Loads a model from the bytes of an ONNX file; `what` names it in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Engine, EngineError> {
        Engine::from_bytes_with(bytes, what, Options::default())
    }

    /// [`Engine::from_bytes`] with `options`.
    pub fn from_bytes_with(
        bytes: &[u8],
        what: &str,
        options: Options,
    ) -> Result<Engine, EngineError> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| tract_error(what, e))?;
        let info = model_info(&proto).map_err(|source| EngineError::Metadata {
            what: what.into(),
            source,
        })?;
        Engine::from_proto(&proto, info, what, options)
    }

    /// Loads an NNEF model (archive or folder) translated from an edgeseg ONNX
    /// file, whose properties carry the metadata.
    pub fn load_nnef(path: &Path, options: Options) -> Result<Engine, EngineError> {
        use tract_onnx::WithOnnx;
        let what = path.display().to_string();
        let model = tract_nnef::nnef()
            .with_onnx()
            .model_for_path(path)
            .map_err(|e| tract_error(&what, e))?;
        let info = typed_model_info(&model).map_err(|source| EngineError::Metadata {
            what: what.clone(),
            source,
        })?;
        let shape = input_shape(&info);
        Engine::build(info, &what, options, move || {
            let mut model = model;
            model.set_input_fact(0, f32::fact(shape))?;
            Ok(model)
        })
    }

    /// Builds the engine for a parsed model whose metadata is `info`.
    pub fn from_proto(
        proto: &ModelProto,
        info: ModelInfo,
        what: &str,
        options: Options,
    ) -> Result<Engine, EngineError> {
        let shape = input_shape(&info);
        Engine::build(info, what, options, || {
            tract_onnx::onnx()
                .model_for_proto_model(proto)
                .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
                .and_then(|m| m.into_typed())
        })
    }

    /// Declutters and optimises the typed model `typed` makes under the runtime's knobs
    /// and `options`, and checks its output against `info`.
    fn build(
        info: ModelInfo,
        what: &str,
        options: Options,
        typed: impl FnOnce() -> TractResult<TypedModel>,
    ) -> Result<Engine, EngineError> {
        let shape = input_shape(&info);
        // Knobs the benchmarks show help (BENCHMARKS.md), unless the user set
        // them: im2col + matrix product beat tract's direct spatial
        // convolution on every model measured here.
        let knobs: Vec<(&str, &str)> = [("TRACT_DISABLE_DIRECT_SPATIAL", "true")]
            .into_iter()
            .filter(|(k, _)| std::env::var_os(k).is_none())
            .collect();
        let scope = KnobScope::new(knobs).map_err(|e| tract_error(what, e))?;
        let quantized = info.precision == "int8";
        if options.f16 && quantized {
            return Err(EngineError::Model {
                what: what.into(),
                message: "an int8 model cannot run in f16; give the float model".into(),
            });
        }
        let precision = match (quantized, options.f16) {
            (true, _) => Precision::Int8,
            (false, true) => Precision::F16,
            (false, false) => Precision::F32,
        };
        let (mut winograd_convs, mut own_convs) = (0, 0);
        let plan = scope
            .enter(|| {
                let mut model = typed()?;
                if precision != Precision::F16 && options.own_ops {
                    own_convs = pointwise::substitute(&mut model)?;
                    own_convs += gemmconv::substitute_strided_pointwise(&mut model)?;
                }
                model.declutter()?;
                if precision == Precision::F16 {
                    tract_onnx::tract_core::transform::get_transform("f32_to_f16")?
                        .ok_or_else(|| {
                            tract_onnx::tract_core::internal::format_err!(
                                "tract has no f32_to_f16 transform"
                            )
                        })?
                        .transform(&mut model)?;
                } else {
                    if options.winograd {
                        winograd_convs = winograd::substitute(&mut model)?;
                    }
                    if options.own_ops {
                        own_convs += qconv::substitute(&mut model)?;
                        quantize::substitute(&mut model)?;
                        own_convs += direct::substitute(&mut model)?;
                        own_convs += gemmconv::substitute(&mut model)?;
                    }
                    pointwise::fuse_relus(&mut model)?;
                    if options.own_ops {
                        own_convs += upsample::substitute(&mut model)?;
                    }
                    // Exact (a maximum is a maximum), so always.
                    pool::substitute(&mut model)?;
                }
                let mut model = model.into_optimized()?;
                // Exact (the same maximum, taken earlier), so always.
                relu::fuse_over_reshapes(&mut model)?;
                model.into_runnable()
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
        let input = match precision {
            Precision::F16 => Tensor::zero::<f16>(&shape),
            _ => Tensor::zero::<f32>(&shape),
        }
        .map_err(|e| tract_error(what, e))?;
        Ok(Engine {
            precision,
            winograd_convs,
            own_convs,
            logits: vec![0.0; output_shape.iter().product()],
            info,
            plan,
            state,
            output_shape,
            input: Arc::new(input),
            executor: Executor::SingleThread,
        })
    }

    /// A second engine running the same optimised graph (shared, not copied)
    /// with its own state and buffers, for segmenting another frame at the
    /// same time on another thread.
    pub fn fork(&self) -> Result<Engine, EngineError> {
        let state = self.plan.spawn().map_err(|e| tract_error("the model", e))?;
        Ok(Engine {
            info: self.info.clone(),
            plan: self.plan.clone(),
            state,
            output_shape: self.output_shape.clone(),
            input: Arc::new((*self.input).clone()),
            logits: vec![0.0; self.logits.len()],
            executor: self.executor.clone(),
            precision: self.precision,
            winograd_convs: self.winograd_convs,
            own_convs: self.own_convs,
        })
    }

    /// Runs tract's matrix products on `threads` threads (1, tract's default,
    /// runs them on the calling thread).
    pub fn set_threads(&mut self, threads: usize) {
        self.executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
    }

    /// The model's metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The arithmetic the optimised graph runs in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How many convolutions run with Winograd ([`Options::winograd`]).
    pub fn winograd_convs(&self) -> usize {
        self.winograd_convs
    }

    /// How many convolutions run as [`pointwise::Pointwise`],
    /// [`upsample::Upsample2`], [`direct::DirectConv`] or
    /// [`gemmconv::GemmConv`] ([`Options::own_ops`]).
    pub fn own_convs(&self) -> usize {
        self.own_convs
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
    /// the operand types tract packed for them, and edgeseg's own int8
    /// convolutions ([`qconv::QConv`], kernel [`qconv::KERNEL`]: integer,
    /// requantisation fused).
    pub fn matmul_kernels(&self) -> Vec<Kernel> {
        let model = self.plan.model();
        model
            .nodes()
            .iter()
            .filter(|n| ["OptMatMul", "QConv"].contains(&&*n.op.name()))
            .map(|n| {
                if n.op_as::<qconv::QConv>().is_some() {
                    return Kernel {
                        node: n.name.clone(),
                        integer: true,
                        fused_requantization: true,
                        kernel: qconv::KERNEL.into(),
                        description: n.op.info().unwrap_or_default().join("; "),
                    };
                }
                let description = n.op.info().unwrap_or_default().join("; ");
                let kernel = description
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .find(|w| w.contains("_mmm_") || w.starts_with("generic_"))
                    .unwrap_or_default()
                    .to_string();
                Kernel {
                    kernel,
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
        let tensor = self.input_value(input)?;
        let mut times = Vec::new();
        let state = &mut self.state;
        let executor = &self.executor;
        multithread_tract_scope(executor.clone(), || {
            blas::with_pool_awake(executor, || {
                state.run_plan_with_eval(tvec!(tensor), |ctx, state, node, inputs| {
                    let started = std::time::Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                    times.push((
                        node.name.clone(),
                        node.op.name().to_string(),
                        started.elapsed().as_secs_f64(),
                    ));
                    out
                })
            })
        })
        .map_err(|e| tract_error("running the model", e))?;
        times.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(times)
    }

    /// `input` as the model's `1x3xHxW` input, after checking its length:
    /// written into the engine's own tensor, which tract receives by reference
    /// count, so no frame allocates a new one.
    fn input_value(&mut self, input: &[f32]) -> Result<TValue, EngineError> {
        let expected = 3 * self.info.input_size.area();
        if input.len() != expected {
            return Err(EngineError::Input {
                expected,
                actual: input.len(),
            });
        }
        if Arc::get_mut(&mut self.input).is_none() {
            // tract still holds the last frame's input: make a fresh one.
            self.input = Arc::new((*self.input).clone());
        }
        let tensor = Arc::get_mut(&mut self.input).expect("unique after the check above");
        let half = self.precision == Precision::F16;
        tensor
            .try_as_plain_ram_mut()
            .and_then(|mut view| {
                if half {
                    let dst = view.as_slice_mut::<f16>()?;
                    for (d, &s) in dst.iter_mut().zip(input) {
                        *d = f16::from_f32(s);
                    }
                } else {
                    view.as_slice_mut::<f32>()?.copy_from_slice(input);
                }
                Ok(())
            })
            .map_err(|e| tract_error("input", e))?;
        Ok(TValue::from_const(self.input.clone()))
    }

    /// Runs one normalised planar image (`3 * height * width` values, channels
    /// first) and returns planar logits (`classes * height * width`), kept in
    /// the engine until the next run.
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32], EngineError> {
        let value = self.input_value(input)?;
        let state = &mut self.state;
        let executor = &self.executor;
        let outputs = multithread_tract_scope(executor.clone(), || {
            blas::with_pool_awake(executor, || state.run(tvec!(value)))
        })
        .map_err(|e| tract_error("running the model", e))?;
        let logits = outputs[0]
            .cast_to::<f32>()
            .map_err(|e| tract_error("reading the logits", e))?;
        let values = logits
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>())
            .map_err(|e| tract_error("reading the logits", e))?;
        if values.len() != self.logits.len() {
            return Err(EngineError::Model {
                what: "the logits".into(),
                message: format!(
                    "{} values; expected {} for shape {:?}",
                    values.len(),
                    self.logits.len(),
                    self.output_shape
                ),
            });
        }
        self.logits.copy_from_slice(values);
        Ok(&self.logits)
    }
}

/// tract 0.23.9's AMX int8 kernel (`avx512amx_mmm_i32_16x16`, on Xeons with
/// `amx_int8`) reads its tiles past the end of its packed operands on small
/// models: the README's 64x48 int8 model died of SIGSEGV in `tileloaddt1` as
/// soon as it ran on a pipeline thread, whose heap arena ends sooner than the
/// main thread's. Until that is fixed upstream, the binaries take `amx-int8`
/// out of tract's instruction set (`TRACT_CPU_ISA=-amx-int8`; int8 then runs
/// tract's AVX-512 VNNI kernels) unless the user set `TRACT_CPU_ISA`.
///
/// # Safety
///
/// Sets an environment variable: call it first thing in `main`, before any
/// other thread exists and before tract reads its instruction set.
#[allow(unsafe_code)]
pub unsafe fn avoid_broken_kernels() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("TRACT_CPU_ISA").is_none() {
        // SAFETY: the caller guarantees that no other thread runs yet.
        unsafe { std::env::set_var("TRACT_CPU_ISA", "-amx-int8") };
    }
}
