//! Transposed convolutions that exactly double height and width (stride 2,
//! `kernel - pads + output padding = 2`: the 2x2 and padded 3x3 ones our
//! models export), as a tract operator substituted into the typed graph at
//! load (see [`substitute`]).
//!
//! tract runs a transposed convolution as a matrix product into a buffer of
//! every kernel tap at every input pixel (`k² x outs` planes), then
//! `DeconvSum` adds the taps up into the output, a generic loop over the
//! kernel; with the packing of the activations in front, that is three passes
//! and on the demo model about three times onnxruntime's time.
//!
//! With stride 2, output row `2y + d` only takes kernel rows `ky` with
//! `d + pad - ky` even, from input row `y + (d + pad - ky) / 2`; likewise for
//! columns. [`Upsample2`] computes the taps for a block of input rows with one
//! product straight on the `NCHW` planes (no packing pass), then assembles
//! each output row from its few taps while the block is in cache, with the
//! bias and, when one alone follows, the ReLU.

use std::ops::Range;
use std::sync::Arc;

use tract_linalg::multithread::current_tract_executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Deconv, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blas::{matmul_strided, scratch, split_work};
use super::graph::{ConvConstants, eval_images, replace};

/// Elements of a block's taps and input rows worked through at once: about
/// 512 KiB, which stays in a core's L2.
const BLOCK_ELEMS: usize = 1 << 17;

/// A stride-2 transposed convolution of `[n, ins, h, w]` into
/// `[n, outs, 2h, 2w]` in f32, with its bias and optionally the ReLU after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsample2 {
    /// `(ky * k + kx) * outs + o` rows of `ins`: every tap's weights.
    taps: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    ins: usize,
    outs: usize,
    /// Kernel side.
    k: usize,
    /// Padding before the image, on both axes.
    pad: usize,
    /// For output row (or column) parity 0 and 1: the kernel rows (or
    /// columns) it takes, each with its input offset ([`parity_taps`]).
    parity_taps: [Vec<(usize, isize)>; 2],
    relu: bool,
}

impl Eq for Upsample2 {}

impl Upsample2 {
    /// The transposed convolution with `OIHW` `kernel` (`outs x ins x k x
    /// k`), `bias` (one per output channel) and `pad` before the image on
    /// both axes; its output padding is whatever makes the output exactly
    /// twice the input.
    pub fn new(
        kernel: &[f32],
        bias: &[f32],
        outs: usize,
        ins: usize,
        k: usize,
        pad: usize,
    ) -> Self {
        assert_eq!(
            kernel.len(),
            outs * ins * k * k,
            "kernel is outs x ins x k x k"
        );
        assert_eq!(bias.len(), outs, "one bias per output channel");
        assert!(pad < k, "padding {pad} with a {k}x{k} kernel");
        let mut taps = vec![0.0; kernel.len()];
        for o in 0..outs {
            for i in 0..ins {
                for t in 0..k * k {
                    taps[(t * outs + o) * ins + i] = kernel[(o * ins + i) * k * k + t];
                }
            }
        }
        Upsample2 {
            taps: Arc::new(taps),
            bias: Arc::new(bias.to_vec()),
            ins,
            outs,
            k,
            pad,
            parity_taps: [parity_taps(k, pad, 0), parity_taps(k, pad, 1)],
            relu: false,
        }
    }

    /// The same convolution followed by a ReLU.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// Convolves one image `input` (`ins` planes of `h x w`) into `out`
    /// (`outs` planes of `2h x 2w`), blocks of input rows split over the
    /// threads of tract's current executor.
    pub fn run(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        assert_eq!(input.len(), self.ins * h * w, "input is ins x h x w");
        assert_eq!(out.len(), self.outs * 4 * h * w, "output is outs x 2h x 2w");
        if h == 0 || w == 0 {
            return;
        }
        let executor = current_tract_executor();
        let threads = super::blas::threads(&executor);
        let per_row = (self.k * self.k * self.outs + self.ins) * w;
        let step = (BLOCK_ELEMS / per_row).clamp(1, h).min(h.div_ceil(threads));
        let blocks = h.div_ceil(step);
        // Block b writes output rows 2 * step * b.. of every plane.
        let mut rows_out: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::new()).collect();
        for plane in out.chunks_exact_mut(4 * h * w) {
            for (b, chunk) in plane.chunks_mut(4 * step * w).enumerate() {
                rows_out[b].push(chunk);
            }
        }
        let work: Vec<_> = rows_out
            .into_iter()
            .enumerate()
            .map(|(b, planes)| (b * step..((b + 1) * step).min(h), planes))
            .collect();
        split_work(&executor, work, |(rows, mut planes)| {
            self.block(input, [h, w], rows, &mut planes)
        });
    }

    /// Output rows `2 * rows.start..2 * rows.end` of every plane.
    fn block(
        &self,
        input: &[f32],
        [h, w]: [usize; 2],
        rows: Range<usize>,
        planes: &mut [&mut [f32]],
    ) {
        let taps = &self.parity_taps;
        let offsets = taps.iter().flatten().map(|t| t.1);
        let (low, high) = offsets.fold((0, 0), |(l, h), o| (o.min(l), o.max(h)));
        let first = (rows.start as isize + low).max(0) as usize;
        let last = ((rows.end as isize + high) as usize).min(h);
        let n = (last - first) * w;
        let kk = self.k * self.k;
        SCRATCH.with_borrow_mut(|buf| {
            let buf = scratch(buf, kk * self.outs * n + 2 * w);
            let (c, rest) = buf.split_at_mut(kk * self.outs * n);
            let (even, odd) = rest.split_at_mut(w);
            matmul_strided(
                [kk * self.outs, n, self.ins],
                c,
                n,
                &self.taps,
                self.ins,
                &input[first * w..],
                h * w,
                false,
            );
            let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
            for (o, plane) in planes.iter_mut().enumerate() {
                for (local, row) in plane.chunks_exact_mut(2 * w).enumerate() {
                    let (y, dy) = (rows.start + local / 2, local % 2);
                    for (dx, dst) in [&mut *even, &mut *odd].into_iter().enumerate() {
                        dst.fill(self.bias[o]);
                        for &(ky, oy) in &taps[dy] {
                            let iy = y as isize + oy;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let at = (iy as usize - first) * w;
                            for &(kx, ox) in &taps[dx] {
                                let run = ((ky * self.k + kx) * self.outs + o) * n + at;
                                let src = &c[run..run + w];
                                // dst[x] += src[x + ox] where x + ox is in the row.
                                let (d, s) = if ox >= 0 {
                                    let ox = ox as usize;
                                    (&mut dst[..w - ox.min(w)], &src[ox.min(w)..])
                                } else {
                                    let ox = (-ox) as usize;
                                    (&mut dst[ox.min(w)..], &src[..w - ox.min(w)])
                                };
                                for (d, &s) in d.iter_mut().zip(s) {
                                    *d += s;
                                }
                            }
                        }
                    }
                    let mut pairs = row.chunks_exact_mut(2);
                    for ((pair, &e), &od) in (&mut pairs).zip(&*even).zip(&*odd) {
                        pair[0] = if e > floor { e } else { floor };
                        pair[1] = if od > floor { od } else { floor };
                    }
                }
            }
        })
    }
}

/// The kernel rows (or columns) of a `k`-tap kernel with `pad` before the
/// image that output row (or column) parity `d` takes, each with the offset
/// of its input row from `y` for output `2y + d`.
fn parity_taps(k: usize, pad: usize, d: usize) -> Vec<(usize, isize)> {
    (0..k)
        .filter_map(|ky| {
            let t = (d + pad) as isize - ky as isize;
            (t.rem_euclid(2) == 0).then_some((ky, t.div_euclid(2)))
        })
        .collect()
}

thread_local! {
    /// One block's taps and row buffers, kept from call to call.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for Upsample2 {
    fn name(&self) -> StaticName {
        "Upsample2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{k}x{k} stride 2 pad {} {} -> {} channels{}",
            self.pad,
            self.ins,
            self.outs,
            if self.relu { ", ReLU" } else { "" },
            k = self.k,
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Upsample2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out_dims = |h: usize, w: usize| Ok([self.outs, 2 * h, 2 * w]);
        eval_images(
            "Upsample2",
            args_1!(inputs),
            self.ins,
            out_dims,
            |x, [h, w], out| self.run(x, h, w, out),
        )
    }
}

impl TypedOp for Upsample2 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "Upsample2 takes NCHW input");
        let out = tvec![
            shape[0].clone(),
            self.outs.into(),
            shape[2].clone() * 2,
            shape[3].clone() * 2
        ];
        Ok(tvec!(f32::fact(out)))
    }
}

/// The padding before the image when `deconv` is one [`Upsample2`] runs:
/// float, NCHW, OIHW kernel, one group, square `k x k`, stride 2, dilation 1,
/// the same padding on both axes, and an output exactly twice the input.
fn fits(deconv: &Deconv) -> Option<usize> {
    let spec = &deconv.pool_spec;
    let k = match spec.kernel_shape[..] {
        [kh, kw] if kh == kw => kh,
        _ => return None,
    };
    let (before, after) = match &spec.padding {
        PaddingSpec::Valid => ([0, 0], [0, 0]),
        PaddingSpec::Explicit(b, a) if b.len() == 2 && a.len() == 2 => ([b[0], b[1]], [a[0], a[1]]),
        _ => return None,
    };
    let adjust = &deconv.adjustments;
    let doubles = (0..2).all(|ax| k + adjust[ax] == 2 + before[ax] + after[ax]);
    (deconv.group == 1
        && deconv.kernel_format == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.strides().iter().all(|&s| s == 2)
        && spec.dilations().iter().all(|&d| d == 1)
        && before[0] == before[1]
        && before[0] < k
        && adjust.len() == 2
        && doubles)
        .then_some(before[0])
}

/// Replaces every transposed convolution of the decluttered float graph
/// `model` that [`Upsample2`] runs, with its ReLU when one alone follows;
/// returns how many were replaced. Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(deconv) = node.op_as::<Deconv>() else {
            continue;
        };
        let spec = &deconv.pool_spec;
        let (outs, ins, k) = (
            spec.output_channels,
            spec.input_channels,
            spec.kernel_shape[0],
        );
        let Some(constants) = ConvConstants::of(model, node, outs)? else {
            continue;
        };
        let Some(pad) = fits(deconv) else {
            continue;
        };
        if constants.kernel.len() != outs * ins * k * k {
            continue;
        }
        let op = Upsample2::new(&constants.kernel, &constants.bias, outs, ins, k, pad);
        replace(model, id, op, Some(Upsample2::with_relu))?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The definition: every input pixel scatters its kernel into the output
    /// at twice its position minus the padding.
    fn direct(
        x: &[f32],
        kernel: &[f32],
        bias: &[f32],
        [ins, h, w, k, pad]: [usize; 5],
    ) -> Vec<f32> {
        let outs = bias.len();
        let (ho, wo) = (2 * h, 2 * w);
        let mut out: Vec<f64> = (0..outs * ho * wo)
            .map(|i| bias[i / (ho * wo)] as f64)
            .collect();
        for o in 0..outs {
            for i in 0..ins {
                for y in 0..h {
                    for xx in 0..w {
                        let v = x[(i * h + y) * w + xx] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let oy = (2 * y + ky) as isize - pad as isize;
                                let ox = (2 * xx + kx) as isize - pad as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                let kv = kernel[((o * ins + i) * k + ky) * k + kx] as f64;
                                out[(o * ho + oy as usize) * wo + ox as usize] += v * kv;
                            }
                        }
                    }
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn upsample_matches_the_definition_at_odd_sizes_on_threads() {
        let mut rng = Rng::new(11);
        // (ins, outs, h, w, k, pad): the 2x2 and padded 3x3 of our models,
        // and a 4x4 with padding 1.
        for (ins, outs, h, w, k, pad) in [
            (16, 11, 7, 9),
            (5, 3, 1, 1),
            (32, 16, 12, 13),
            (8, 4, 33, 5),
        ]
        .into_iter()
        .flat_map(|(i, o, h, w)| [(i, o, h, w, 2, 0), (i, o, h, w, 3, 1), (i, o, h, w, 4, 1)])
        {
            let x: Vec<f32> = (0..ins * h * w).map(|_| rng.range(-1.0, 1.0)).collect();
            let kernel: Vec<f32> = (0..outs * ins * k * k)
                .map(|_| rng.range(-0.5, 0.5))
                .collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected = direct(&x, &kernel, &bias, [ins, h, w, k, pad]);
            let op = Upsample2::new(&kernel, &bias, outs, ins, k, pad);
            let relu = op.clone().with_relu();
            let pool = tract_linalg::multithread::Executor::multithread(3);
            for threads in [false, true] {
                let mut out = vec![f32::NAN; expected.len()];
                let mut out_relu = vec![f32::NAN; expected.len()];
                let mut run = || {
                    op.run(&x, h, w, &mut out);
                    relu.run(&x, h, w, &mut out_relu);
                };
                if threads {
                    tract_linalg::multithread::multithread_tract_scope(pool.clone(), run);
                } else {
                    run();
                }
                let what = format!("{ins}->{outs} {k}x{k} pad {pad} at {h}x{w}");
                for (i, ((a, r), e)) in out.iter().zip(&out_relu).zip(&expected).enumerate() {
                    assert!((a - e).abs() <= 1e-5, "{what}, value {i}: {a} against {e}");
                    assert_eq!(*r, a.max(0.0), "{what}: ReLU of value {i}");
                }
            }
        }
    }
}
