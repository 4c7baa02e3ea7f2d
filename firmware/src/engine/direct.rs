//! Convolutions of images with few channels (the RGB stem), computed directly
//! with the output channels in vector registers, as a tract operator
//! substituted into the typed graph at load (see [`substitute`]).
//!
//! tract runs every convolution as im2col plus a matrix product. With 3
//! input channels the im2col panel is built from 147 scattered samples per
//! output pixel (a 7x7 stem), which costs as much as the product. Here each
//! block of [`PIXELS`] output pixels of a row keeps [`LANES`] output channels
//! of each pixel in registers: every kernel tap loads [`LANES`] weights once
//! and multiplies them by each pixel's input sample, with fused
//! multiply-adds. That is how onnxruntime runs its stem (MLAS's `NCHW` to
//! `NCHWc` kernel). The bias and, when one alone follows, the ReLU are
//! applied on the way out.
//!
//! The kernel needs fused multiply-add: it runs on aarch64 and on x86-64 CPUs
//! with AVX2 and FMA ([`available`]); elsewhere tract keeps the convolution.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

use super::blas::{scratch, split_rows};
use super::graph::{ConvConstants, ConvGeometry, eval_images, replace};

/// Input channels up to which convolutions run here whatever their plane:
/// beyond, they do only when their output rows fill the pixel blocks
/// ([`MIN_FILL`]).
pub const MAX_INS: usize = 4;

/// Fraction of the pixel blocks along an output row that must hold pixels
/// for a convolution with more than [`MAX_INS`] input channels to run here
/// rather than as [`GemmConv`](super::gemmconv::GemmConv): rows of 8 pixels
/// (8 of 12 block places used) ran slower than the product, rows of 16 and 32
/// (16 of 18, 32 of 36) faster (BENCHMARKS.md, "GemmConv and DirectConv").
pub const MIN_FILL: f32 = 0.85;

/// Horizontal strides up to which convolutions run here (each has its own
/// compiled kernel).
pub const MAX_STRIDE: usize = 4;

/// Output channels per block, kept in registers (two AVX2 vectors, four NEON
/// vectors).
const LANES: usize = 16;

/// Output pixels per block.
const PIXELS: usize = 6;

/// A convolution `[n, ins, h, w]` to `[n, outs, ho, wo]` in f32 with few
/// input channels, any kernel, stride and padding, its bias and optionally
/// the ReLU after it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectConv {
    /// `[group][ci][ky][kx][LANES]`: the weights of each group of [`LANES`]
    /// output channels (zero past `outs`), tap by tap.
    weights: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    geometry: ConvGeometry,
    relu: bool,
}

impl Eq for DirectConv {}

/// Whether this CPU runs [`DirectConv`]'s kernel (fused multiply-add).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl DirectConv {
    /// The convolution `geometry` with `OIHW` `kernel` (`outs x ins x kh x
    /// kw`) and `bias`.
    pub fn new(kernel: &[f32], bias: &[f32], geometry: ConvGeometry) -> DirectConv {
        let taps = geometry.taps();
        let outs = geometry.outs;
        assert_eq!(kernel.len(), outs * taps, "kernel is outs x ins x kh x kw");
        assert_eq!(bias.len(), outs, "one bias per output channel");
        let groups = outs.div_ceil(LANES);
        let mut weights = vec![0.0; groups * taps * LANES];
        for o in 0..outs {
            let (g, lane) = (o / LANES, o % LANES);
            for t in 0..taps {
                weights[(g * taps + t) * LANES + lane] = kernel[o * taps + t];
            }
        }
        DirectConv {
            weights: Arc::new(weights),
            bias: Arc::new(bias.to_vec()),
            geometry,
            relu: false,
        }
    }

    /// The same convolution followed by a ReLU.
    pub fn with_relu(mut self) -> DirectConv {
        self.relu = true;
        self
    }

    /// Width of the zero-padded copy of an input row: every window inside,
    /// and those of a last partial block of [`PIXELS`].
    fn padded_width(&self) -> usize {
        let span = (self.geometry.output[1] - 1 + PIXELS) * self.geometry.stride[1]
            + self.geometry.kernel[1];
        span.max(self.geometry.pad[1] + self.geometry.input[1])
    }

    /// Convolves one image, `input` (`ins` planes) into `out` (`outs`
    /// planes), output rows split over the threads of tract's current
    /// executor.
    pub fn run(&self, input: &[f32], out: &mut [f32]) {
        let ([h, w], [ho, wo]) = (self.geometry.input, self.geometry.output);
        assert_eq!(
            input.len(),
            self.geometry.ins * h * w,
            "input is ins x h x w"
        );
        assert_eq!(
            out.len(),
            self.geometry.outs * ho * wo,
            "output is outs x ho x wo"
        );
        if ho == 0 || wo == 0 {
            return;
        }
        // Blocks of consecutive output rows, one per thread.
        split_rows(out, [ho, wo], |first, planes| {
            SCRATCH.with_borrow_mut(|buf| {
                let window = self.geometry.ins * self.geometry.kernel[0] * self.padded_width();
                let buf = scratch(buf, window + LANES * wo);
                let (window, acc) = buf.split_at_mut(window);
                let rows = planes[0].len() / wo;
                for local in 0..rows {
                    self.row(input, first + local, local, window, acc, planes);
                }
            })
        });
    }

    /// Output row `y` of every plane, row `local` of `planes`; `window`
    /// holds the padded input rows under it, `acc` one group's outputs along
    /// the row.
    fn row(
        &self,
        input: &[f32],
        y: usize,
        local: usize,
        window: &mut [f32],
        acc: &mut [f32],
        planes: &mut [&mut [f32]],
    ) {
        let g = &self.geometry;
        let ([h, w], [_, wo], kh) = (g.input, g.output, g.kernel[0]);
        let pw = self.padded_width();
        // The kh input rows under output row y, zero-padded, per channel.
        window.fill(0.0);
        for c in 0..self.geometry.ins {
            for ky in 0..kh {
                let Some(iy) = self.geometry.input_row(y, ky) else {
                    continue;
                };
                let src = &input[(c * h + iy) * w..][..w];
                let at = (c * kh + ky) * pw + self.geometry.pad[1];
                window[at..at + w].copy_from_slice(src);
            }
        }
        let taps = self.geometry.taps();
        for (g, group) in self.weights.chunks_exact(taps * LANES).enumerate() {
            let lanes = LANES.min(self.geometry.outs - g * LANES);
            let acc = &mut acc[..LANES * wo];
            match self.geometry.stride[1] {
                1 => self.fma_row::<1>(window, group, acc),
                2 => self.fma_row::<2>(window, group, acc),
                3 => self.fma_row::<3>(window, group, acc),
                _ => self.fma_row::<4>(window, group, acc),
            }
            let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
            for lane in 0..lanes {
                let o = g * LANES + lane;
                let bias = self.bias[o];
                for (x, dst) in planes[o][local * wo..][..wo].iter_mut().enumerate() {
                    let v = acc[x * LANES + lane] + bias;
                    *dst = if v > floor { v } else { floor };
                }
            }
        }
    }

    /// [`Self::group_row`] compiled with fused multiply-add (AVX2 and FMA on
    /// x86-64; part of aarch64's baseline), which [`substitute`] made sure
    /// the CPU has. `group_row` is inlined into a function compiled for
    /// them, not called through a closure: a closure the optimiser chose
    /// not to inline (as at `opt-level = 2`) ran `mul_add` as calls to
    /// libm's `fmaf`, 15x slower.
    #[inline(always)]
    fn fma_row<const SX: usize>(&self, window: &[f32], weights: &[f32], acc: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            fn fma<const SX: usize>(
                op: &DirectConv,
                window: &[f32],
                weights: &[f32],
                acc: &mut [f32],
            ) {
                op.group_row::<SX>(window, weights, acc)
            }
            // SAFETY: `DirectConv` only runs where `available()` found AVX2
            // and FMA (checked by `substitute` before it puts one in a graph,
            // and asserted here in debug builds).
            debug_assert!(available());
            #[allow(unsafe_code)]
            unsafe {
                fma::<SX>(self, window, weights, acc)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.group_row::<SX>(window, weights, acc)
    }

    /// `acc[x][lane]`: the convolution without bias of one group of output
    /// channels along the output row over `window`, [`PIXELS`] pixels at a
    /// time with their [`LANES`] channels in registers; `SX` is the
    /// horizontal stride (a constant, so that no sample read needs a bounds
    /// check of its own).
    #[inline(always)]
    fn group_row<const SX: usize>(&self, window: &[f32], weights: &[f32], acc: &mut [f32]) {
        let kw = self.geometry.kernel[1];
        let pw = self.padded_width();
        let wo = self.geometry.output[1];
        let mut x0 = 0;
        while x0 < wo {
            let n = PIXELS.min(wo - x0);
            let mut sums = [[0.0f32; LANES]; PIXELS];
            // One window row per (channel, kernel row), with its kw taps.
            for (row, taps) in window
                .chunks_exact(pw)
                .zip(weights.chunks_exact(kw * LANES))
            {
                for (kx, wv) in taps.chunks_exact(LANES).enumerate() {
                    let wv: &[f32; LANES] = wv.try_into().expect("LANES weights");
                    // Past the row's end (a partial block), reads stay in the
                    // padding; their sums are dropped.
                    let xs = &row[x0 * SX + kx..][..(PIXELS - 1) * SX + 1];
                    for (p, sum) in sums.iter_mut().enumerate() {
                        let xv = xs[p * SX];
                        for (s, &wl) in sum.iter_mut().zip(wv) {
                            *s = wl.mul_add(xv, *s);
                        }
                    }
                }
            }
            for (p, sum) in sums.iter().enumerate().take(n) {
                acc[(x0 + p) * LANES..][..LANES].copy_from_slice(sum);
            }
            x0 += n;
        }
    }
}

thread_local! {
    /// The padded input rows and one group's outputs, kept from call to call.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} stride {:?} {} -> {} channels{}",
            self.geometry.kernel[0],
            self.geometry.kernel[1],
            self.geometry.stride,
            self.geometry.ins,
            self.geometry.outs,
            if self.relu { ", ReLU" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out_dims = |h, w| {
            ensure!(
                [h, w] == self.geometry.input,
                "DirectConv: input {h}x{w}; expected {:?}",
                self.geometry.input
            );
            Ok([
                self.geometry.outs,
                self.geometry.output[0],
                self.geometry.output[1],
            ])
        };
        eval_images(
            "DirectConv",
            args_1!(inputs),
            self.geometry.ins,
            out_dims,
            |x, _, out| self.run(x, out),
        )
    }
}

impl TypedOp for DirectConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() == 4, "DirectConv takes NCHW input");
        let out = tvec![
            inputs[0].shape[0].clone(),
            self.geometry.outs.into(),
            self.geometry.output[0].into(),
            self.geometry.output[1].into()
        ];
        Ok(tvec!(f32::fact(out)))
    }
}

/// Whether [`DirectConv`] runs `geometry`, and faster than the
/// alternatives: a horizontal stride up to [`MAX_STRIDE`], and at most
/// [`MAX_INS`] input channels or output rows that fill [`MIN_FILL`] of
/// their pixel blocks.
pub fn suits(geometry: &ConvGeometry) -> bool {
    let wo = geometry.output[1];
    let fill = wo as f32 / (wo.div_ceil(PIXELS) * PIXELS).max(1) as f32;
    (1..=MAX_STRIDE).contains(&geometry.stride[1]) && (geometry.ins <= MAX_INS || fill >= MIN_FILL)
}

/// Replaces every convolution of the decluttered float graph `model` that
/// [`DirectConv`] [`suits`] by one, with its ReLU when one alone follows, if
/// this CPU runs it ([`available`]); returns how many were replaced. Runs
/// after Winograd has taken the 3x3 stride-1 convolutions it speeds up.
/// Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(ConvConstants {
            shape,
            kernel,
            bias,
        }) = ConvConstants::of(model, node, conv.output_channels())?
        else {
            continue;
        };
        let Some(geometry) = ConvGeometry::of(conv, &shape) else {
            continue;
        };
        if !suits(&geometry) {
            continue;
        }
        let op = DirectConv::new(&kernel, &bias, geometry);
        replace(model, id, op, Some(DirectConv::with_relu))?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::graph::assert_runs_match;
    use crate::rng::Rng;

    #[test]
    fn direct_conv_matches_the_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no fused multiply-add for DirectConv");
            return;
        }
        let mut rng = Rng::new(21);
        // (ins, outs, h, w, k, stride, pad): the 7x7/2 stem, odd sizes,
        // channel counts that are not multiples of the lanes, a stride-2
        // 3x3 of a deeper stage.
        for (ins, outs, h, w, k, s, pad) in [
            (3, 32, 37, 29, 7, 2, 3),
            (3, 5, 8, 13, 3, 1, 1),
            (1, 17, 9, 7, 5, 2, 0),
            (4, 40, 16, 15, 3, 2, 1),
            (21, 24, 13, 35, 3, 2, 1),
        ] {
            let geometry = ConvGeometry::square(ins, outs, [h, w], k, s, pad);
            let x: Vec<f32> = (0..ins * h * w).map(|_| rng.range(-1.0, 1.0)).collect();
            let kernel: Vec<f32> = (0..outs * ins * k * k)
                .map(|_| rng.range(-0.5, 0.5))
                .collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected = geometry.reference(&x, &kernel, &bias);
            let op = DirectConv::new(&kernel, &bias, geometry);
            let relu = op.clone().with_relu();
            let what = format!("{ins}->{outs} {k}x{k}/{s} pad {pad} at {h}x{w}");
            assert_runs_match(&what, &expected, 1e-5, |with_relu, out| {
                if with_relu {
                    relu.run(&x, out)
                } else {
                    op.run(&x, out)
                }
            });
        }
    }
}
