//! Convolutions as an explicit im2col block and one matrix product, as a
//! tract operator substituted into the typed graph at load (see
//! [`substitute`]): those the other operators leave, chiefly the deep
//! stages' 3x3 convolutions on small planes and the stride-2 ones.
//!
//! tract runs a float convolution as a product of its packed kernel with
//! im2col panels it packs lazily, inside the product. On a small plane with
//! many channels (stage 4 of a ResNet-18 encoder at 256x192: 6x8 pixels, 256
//! channels, a 2.4 MB kernel) that product ran at about two thirds of what
//! the `gemm` crate reaches on the same shape. Here the im2col matrix (`ins x
//! kh x kw` rows, one column per output pixel) is written out in blocks of
//! columns that stay in cache, and each block is multiplied by the kernel
//! as stored (`OIHW` is already `outs x taps`, row-major) straight into the
//! output planes, which start at the bias; the ReLU, when one alone follows,
//! is applied to each block while it is hot. The output channels are split
//! over the threads, so each streams only its part of the kernel.

use std::sync::Arc;

use tract_linalg::multithread::current_tract_executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

use super::blas::{matmul_strided, scratch, split_work, threads};
use super::graph::{ConvConstants, ConvGeometry, eval_images, replace};

/// Elements of an im2col block: 1 MiB, which stays in a core's L2 while the
/// kernel streams past it.
const BLOCK_ELEMS: usize = 1 << 18;

/// Fewest columns (output pixels) in a block, so that the product is not
/// dominated by streaming the kernel once per block.
const MIN_COLS: usize = 64;

/// A float convolution `[n, ins, h, w]` to `[n, outs, ho, wo]` of any
/// kernel, stride and padding, one group, undilated, with its bias and
/// optionally the ReLU after it.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmConv {
    /// `outs x taps`, row-major: the `OIHW` kernel as it is.
    weights: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    geometry: ConvGeometry,
    relu: bool,
}

impl Eq for GemmConv {}

impl GemmConv {
    /// The convolution `geometry` with `OIHW` `kernel` and `bias`.
    pub fn new(kernel: &[f32], bias: &[f32], geometry: ConvGeometry) -> GemmConv {
        assert_eq!(
            kernel.len(),
            geometry.outs * geometry.taps(),
            "kernel is outs x ins x kh x kw"
        );
        assert_eq!(bias.len(), geometry.outs, "one bias per output channel");
        GemmConv {
            weights: Arc::new(kernel.to_vec()),
            bias: Arc::new(bias.to_vec()),
            geometry,
            relu: false,
        }
    }

    /// The same convolution followed by a ReLU.
    pub fn with_relu(mut self) -> GemmConv {
        self.relu = true;
        self
    }

    /// Convolves one image, `input` (`ins` planes) into `out` (`outs`
    /// planes), on the threads of tract's current executor.
    pub fn run(&self, input: &[f32], out: &mut [f32]) {
        let g = &self.geometry;
        let ([h, w], [ho, wo]) = (g.input, g.output);
        let (taps, pixels) = (g.taps(), ho * wo);
        assert_eq!(input.len(), g.ins * h * w, "input is ins x h x w");
        assert_eq!(out.len(), g.outs * pixels, "output is outs x ho x wo");
        if pixels == 0 {
            return;
        }
        for (plane, &b) in out.chunks_exact_mut(pixels).zip(self.bias.iter()) {
            plane.fill(b);
        }
        let executor = current_tract_executor();
        let threads = threads(&executor);
        let cols = (BLOCK_ELEMS / taps.max(1)).max(MIN_COLS).min(pixels);
        // Output channels per thread, and im2col rows per thread.
        let outs_per = g.outs.div_ceil(threads).max(1);
        let rows_per = taps.div_ceil(threads).max(1);
        BLOCK.with_borrow_mut(|buf| {
            let buf = scratch(buf, taps * cols);
            for c0 in (0..pixels).step_by(cols) {
                let n = cols.min(pixels - c0);
                let block = &mut buf[..taps * n];
                let rows: Vec<_> = block.chunks_mut(rows_per * n).enumerate().collect();
                split_work(&executor, rows, |(part, rows)| {
                    for (i, dst) in rows.chunks_exact_mut(n).enumerate() {
                        self.im2col_row(input, part * rows_per + i, c0, dst);
                    }
                });
                let block = &*block;
                let parts: Vec<_> = out
                    .chunks_mut(outs_per * pixels)
                    .zip(self.weights.chunks(outs_per * taps))
                    .collect();
                split_work(&executor, parts, |(planes, weights)| {
                    let outs = weights.len() / taps.max(1);
                    matmul_strided(
                        [outs, n, taps],
                        &mut planes[c0..],
                        pixels,
                        weights,
                        taps,
                        block,
                        n,
                        true,
                    );
                    if self.relu {
                        for plane in planes.chunks_exact_mut(pixels) {
                            for v in &mut plane[c0..c0 + n] {
                                *v = v.max(0.0);
                            }
                        }
                    }
                });
            }
        })
    }

    /// Row `r` (input channel, kernel row, kernel column) of the im2col
    /// matrix, columns `c0..c0 + dst.len()` (output pixels in row-major
    /// order): the input sample under each pixel for that tap, or zero in
    /// the padding.
    fn im2col_row(&self, input: &[f32], r: usize, c0: usize, dst: &mut [f32]) {
        let g = &self.geometry;
        let ([h, w], [_, wo], [kh, kw]) = (g.input, g.output, g.kernel);
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let plane = &input[c * h * w..][..h * w];
        let (sx, left) = (g.stride[1], g.pad[1]);
        // Output columns whose sample `x * sx + kx - left` is inside the row.
        let x_lo = left.saturating_sub(kx).div_ceil(sx).min(wo);
        let x_hi = (w + left).saturating_sub(kx).div_ceil(sx).clamp(x_lo, wo);
        let (mut p, mut rest) = (c0, dst);
        // One piece per output row the columns cross.
        while !rest.is_empty() {
            let (y, x0) = (p / wo, p % wo);
            let seg = (wo - x0).min(rest.len());
            let (d, tail) = std::mem::take(&mut rest).split_at_mut(seg);
            rest = tail;
            p += d.len();
            let Some(iy) = g.input_row(y, ky) else {
                d.fill(0.0);
                continue;
            };
            let row = &plane[iy * w..][..w];
            let x1 = x0 + d.len();
            let (lo, hi) = (x_lo.clamp(x0, x1), x_hi.clamp(x0, x1));
            d[..lo - x0].fill(0.0);
            d[hi - x0..].fill(0.0);
            let inside = &mut d[lo - x0..hi - x0];
            if inside.is_empty() {
                continue;
            }
            let first = lo * sx + kx - left;
            if sx == 1 {
                inside.copy_from_slice(&row[first..first + inside.len()]);
            } else {
                for (v, &s) in inside.iter_mut().zip(row[first..].iter().step_by(sx)) {
                    *v = s;
                }
            }
        }
    }
}

thread_local! {
    /// The im2col block, kept from call to call.
    static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for GemmConv {
    fn name(&self) -> StaticName {
        "GemmConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} stride {:?} {} -> {} channels{}",
            g.kernel[0],
            g.kernel[1],
            g.stride,
            g.ins,
            g.outs,
            if self.relu { ", ReLU" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for GemmConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geometry;
        let out_dims = |h, w| {
            ensure!(
                [h, w] == g.input,
                "GemmConv: input {h}x{w}; expected {:?}",
                g.input
            );
            Ok([g.outs, g.output[0], g.output[1]])
        };
        eval_images("GemmConv", args_1!(inputs), g.ins, out_dims, |x, _, out| {
            self.run(x, out)
        })
    }
}

impl TypedOp for GemmConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() == 4, "GemmConv takes NCHW input");
        let g = &self.geometry;
        let out = tvec![
            inputs[0].shape[0].clone(),
            g.outs.into(),
            g.output[0].into(),
            g.output[1].into()
        ];
        Ok(tvec!(f32::fact(out)))
    }
}

/// Replaces every float convolution of the decluttered graph `model` that
/// is still a tract `Conv` (the other operators run first) and fits
/// [`ConvGeometry::of`] by a [`GemmConv`], with its ReLU when one alone
/// follows; returns how many were replaced. Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    substitute_where(model, |_| true, true)
}

/// Replaces the strided 1x1 convolutions (a ResNet's shortcuts) of the
/// typed graph `model` before decluttering, which would split them into a
/// subsampling and a product whose input tract packs on every run; returns
/// how many were replaced.
pub fn substitute_strided_pointwise(model: &mut TypedModel) -> TractResult<usize> {
    let strided_1x1 = |g: &ConvGeometry| g.kernel == [1, 1] && g.stride != [1, 1];
    // Before decluttering a ReLU is not yet in the form `replace` fuses; a
    // shortcut feeds an addition anyway.
    substitute_where(model, strided_1x1, false)
}

/// Replaces the convolutions whose geometry passes `keep`, with the ReLU
/// after each when `relus`.
fn substitute_where(
    model: &mut TypedModel,
    keep: impl Fn(&ConvGeometry) -> bool,
    relus: bool,
) -> TractResult<usize> {
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
        let Some(geometry) = ConvGeometry::of(conv, &shape).filter(&keep) else {
            continue;
        };
        let op = GemmConv::new(&kernel, &bias, geometry);
        replace(
            model,
            id,
            op,
            relus.then_some(GemmConv::with_relu as fn(_) -> _),
        )?;
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
    fn gemm_conv_matches_the_definition() {
        let mut rng = Rng::new(33);
        // (ins, outs, h, w, k, stride, pad): stage 4's 3x3 on a small plane,
        // a stride-2 3x3, the stride-2 1x1 shortcut, odd sizes and padding
        // wider than the kernel reaches, and a plane large enough for
        // several im2col blocks.
        for (ins, outs, h, w, k, s, pad) in [
            (24, 40, 6, 8, 3, 1, 1),
            (9, 20, 13, 11, 3, 2, 1),
            (16, 24, 13, 11, 1, 2, 0),
            (5, 7, 9, 10, 5, 3, 2),
            (3, 6, 5, 7, 3, 1, 2),
            (32, 33, 97, 61, 3, 1, 1),
        ] {
            let geometry = ConvGeometry::square(ins, outs, [h, w], k, s, pad);
            let x: Vec<f32> = (0..ins * h * w).map(|_| rng.range(-1.0, 1.0)).collect();
            let kernel: Vec<f32> = (0..outs * ins * k * k)
                .map(|_| rng.range(-0.5, 0.5))
                .collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected = geometry.reference(&x, &kernel, &bias);
            let op = GemmConv::new(&kernel, &bias, geometry);
            let relu = op.clone().with_relu();
            let what = format!("{ins}->{outs} {k}x{k}/{s} pad {pad} at {h}x{w}");
            assert_runs_match(&what, &expected, 1e-4, |with_relu, out| {
                if with_relu {
                    relu.run(&x, out)
                } else {
                    op.run(&x, out)
                }
            });
        }
    }
}
