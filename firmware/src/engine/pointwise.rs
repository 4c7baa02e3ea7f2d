//! 1x1 stride-1 convolutions as one matrix product straight on the `NCHW`
//! planes, as a tract operator substituted into the typed graph at load (see
//! [`substitute`]).
//!
//! tract declutters a 1x1 convolution into an `EinSum` whose activations it
//! packs into panels on every run (a full copy of the input, as long as the
//! product itself on the demo model's stem skip). In `NCHW` the input already
//! is the `ins x pixels` matrix, row-major, so `out = W @ x + bias` needs no
//! copy: [`Pointwise`] runs it through the `gemm` crate in column blocks that
//! stay in cache, with the bias as the product's starting value and the ReLU,
//! when one alone follows, applied while the block is hot.

use std::sync::Arc;

use tract_linalg::multithread::current_tract_executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blas::{matmul_strided, split_work, threads};
use super::graph::{ConvConstants, eval_images, replace, sole_relu_after};

/// Pixels per column block when the channels are few; blocks shrink so that
/// a block's input and output (`(ins + outs) x cols`) stay near
/// [`BLOCK_ELEMS`].
const MAX_COLS: usize = 2048;

/// Elements of a block's input and output columns: about 256 KiB.
const BLOCK_ELEMS: usize = 1 << 16;

/// A 1x1 stride-1 unpadded convolution `[n, ins, h, w]` to `[n, outs, h, w]`
/// in f32, with its bias and optionally the ReLU after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointwise {
    /// `outs x ins`, row-major.
    weights: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    outs: usize,
    ins: usize,
    /// Whether a ReLU follows (applied to each block after its product).
    relu: bool,
}

impl Eq for Pointwise {}

impl Pointwise {
    /// The convolution with `outs x ins` `weights` and `bias` (one per output
    /// channel).
    pub fn new(weights: &[f32], bias: &[f32], outs: usize, ins: usize) -> Pointwise {
        assert_eq!(weights.len(), outs * ins, "weights are outs x ins");
        assert_eq!(bias.len(), outs, "one bias per output channel");
        Pointwise {
            weights: Arc::new(weights.to_vec()),
            bias: Arc::new(bias.to_vec()),
            outs,
            ins,
            relu: false,
        }
    }

    /// The same convolution followed by a ReLU.
    pub fn with_relu(mut self) -> Pointwise {
        self.relu = true;
        self
    }

    /// Convolves one image, `input` (`ins` planes of `pixels`) into `out`
    /// (`outs` planes), column blocks split over the threads of tract's
    /// current executor.
    pub fn run(&self, input: &[f32], pixels: usize, out: &mut [f32]) {
        assert_eq!(input.len(), self.ins * pixels, "input is ins x pixels");
        assert_eq!(out.len(), self.outs * pixels, "output is outs x pixels");
        let executor = current_tract_executor();
        let threads = threads(&executor);
        let cols = (BLOCK_ELEMS / (self.ins + self.outs))
            .clamp(16, MAX_COLS)
            .min(pixels.div_ceil(threads).max(1));
        let blocks: Vec<_> = (0..pixels).step_by(cols).collect();
        // Each block writes its own columns of every output plane.
        let mut columns: Vec<Vec<&mut [f32]>> = (0..blocks.len()).map(|_| Vec::new()).collect();
        for plane in out.chunks_exact_mut(pixels) {
            for (b, chunk) in plane.chunks_mut(cols).enumerate() {
                columns[b].push(chunk);
            }
        }
        let work: Vec<_> = blocks.into_iter().zip(columns).collect();
        split_work(&executor, work, |(start, mut planes)| {
            self.block(input, pixels, start, &mut planes)
        });
    }

    /// Output columns `start..start + planes[0].len()` of every plane.
    fn block(&self, input: &[f32], pixels: usize, start: usize, planes: &mut [&mut [f32]]) {
        let n = planes[0].len();
        SCRATCH.with_borrow_mut(|c| {
            c.clear();
            for &b in self.bias.iter() {
                c.extend(std::iter::repeat_n(b, n));
            }
            matmul_strided(
                [self.outs, n, self.ins],
                c,
                n,
                &self.weights,
                self.ins,
                &input[start..],
                pixels,
                true,
            );
            for (plane, row) in planes.iter_mut().zip(c.chunks_exact(n)) {
                if self.relu {
                    for (o, &v) in plane.iter_mut().zip(row) {
                        *o = if v > 0.0 { v } else { 0.0 };
                    }
                } else {
                    plane.copy_from_slice(row);
                }
            }
        })
    }
}

thread_local! {
    /// One block's output, kept from call to call.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "Pointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "1x1 {} -> {} channels{}",
            self.ins,
            self.outs,
            if self.relu { ", ReLU" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out_dims = |h, w| Ok([self.outs, h, w]);
        eval_images(
            "Pointwise",
            args_1!(inputs),
            self.ins,
            out_dims,
            |x, [h, w], out| self.run(x, h * w, out),
        )
    }
}

impl TypedOp for Pointwise {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "Pointwise takes NCHW input");
        let mut out: TVec<TDim> = shape.iter().cloned().collect();
        out[1] = self.outs.into();
        Ok(tvec!(f32::fact(out)))
    }
}

/// Whether `conv` is one [`Pointwise`] runs: float, NCHW, OIHW kernel, one
/// group, 1x1, stride 1, dilation 1, no padding.
fn fits(conv: &Conv) -> bool {
    let spec = &conv.pool_spec;
    let unpadded = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(b, a) => b.iter().chain(a.iter()).all(|&p| p == 0),
        _ => false,
    };
    conv.q_params.is_none()
        && conv.group == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape[..] == [1, 1]
        && spec.strides().iter().all(|&s| s == 1)
        && spec.dilations().iter().all(|&d| d == 1)
        && unpadded
}

/// Replaces every 1x1 convolution of the typed float graph `model` that
/// [`Pointwise`] runs; returns how many were replaced. Runs before tract's
/// decluttering, which would turn them into `EinSum`s; [`fuse_relus`] then
/// takes in the ReLUs that follow. Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let (outs, ins) = (conv.output_channels(), conv.input_channels());
        let Some(constants) = ConvConstants::of(model, node, outs)? else {
            continue;
        };
        if !fits(conv) {
            continue;
        }
        let op = Pointwise::new(&constants.kernel, &constants.bias, outs, ins);
        // Before decluttering, the ReLU is not yet in the form `replace`
        // fuses: `fuse_relus` takes it in afterwards.
        replace(model, id, op, None)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Folds into each [`Pointwise`] of the decluttered `model` the ReLU that
/// alone follows it.
pub fn fuse_relus(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let Some(op) = model.node(id).op_as::<Pointwise>() else {
            continue;
        };
        if !op.relu && sole_relu_after(model, id)?.is_some() {
            replace(model, id, op.clone(), Some(Pointwise::with_relu))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn pointwise_matches_the_definition_on_threads() {
        let mut rng = Rng::new(9);
        for (ins, outs, pixels) in [(32, 16, 12288), (3, 5, 7), (17, 40, 4099), (64, 1, 33)] {
            let input: Vec<f32> = (0..ins * pixels).map(|_| rng.range(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..outs * ins).map(|_| rng.range(-0.5, 0.5)).collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected: Vec<f32> = (0..outs * pixels)
                .map(|at| {
                    let (o, p) = (at / pixels, at % pixels);
                    let sum: f64 = (0..ins)
                        .map(|i| w[o * ins + i] as f64 * input[i * pixels + p] as f64)
                        .sum();
                    (sum + bias[o] as f64) as f32
                })
                .collect();
            let op = Pointwise::new(&w, &bias, outs, ins);
            let relu = op.clone().with_relu();
            let pool = tract_linalg::multithread::Executor::multithread(3);
            for threads in [false, true] {
                let mut out = vec![f32::NAN; outs * pixels];
                let mut out_relu = vec![f32::NAN; outs * pixels];
                let mut run = || {
                    op.run(&input, pixels, &mut out);
                    relu.run(&input, pixels, &mut out_relu);
                };
                if threads {
                    tract_linalg::multithread::multithread_tract_scope(pool.clone(), run);
                } else {
                    run();
                }
                for (i, ((a, r), e)) in out.iter().zip(&out_relu).zip(&expected).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-5,
                        "{ins}->{outs}, value {i}: {a} against {e}"
                    );
                    assert_eq!(*r, a.max(0.0), "ReLU of value {i}");
                }
            }
        }
    }
}
