//! 3x3 stride-1 'same' convolutions with Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin and Gray 2016), as a tract operator substituted into the
//! typed graph at load (see [`substitute`]).
//!
//! tract runs every convolution as im2col plus a matrix product: 9 multiply-adds
//! per output pixel, input and output channel. Winograd computes each 2x2 block
//! of outputs (a *tile*) from the 4x4 block of input around it; after the
//! transform `V = Bᵀ d B` of the input block and `U = G g Gᵀ` of the kernel, the
//! convolution is 16 independent channel contractions, one per position `ξ` of
//! the 4x4 tile, then `Y = Aᵀ M A`:
//!
//! `M[ξ] (out x tiles) = U[ξ] (out x in) @ V[ξ] (in x tiles)`
//!
//! which is 4 multiply-adds per output instead of 9 (2.25x fewer). The
//! transforms only add, subtract and halve, so results agree with the direct
//! definition up to rounding. `U` is computed once, at load.
//!
//! The operator also folds the convolution's bias and, when the convolution
//! feeds only a ReLU, the ReLU into its output transform.

use std::ops::Range;
use std::sync::Arc;

use tract_linalg::multithread::current_tract_executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blas::{matmul, scratch, split_work, threads};
use super::graph::{ConvConstants, eval_images, replace};

/// Channels needed on both sides: each of the 16 products contracts over the
/// input channels, so fewer make them too short (and keep the RGB stem on
/// tract's path).
pub const MIN_CHANNELS: usize = 16;

/// Below this many tiles per image the transformed kernels (`16 x in x out`,
/// 1.8x the plain kernel) cost more to stream than the multiplications saved.
pub const MIN_TILES: usize = 16;

/// Elements of the transformed input and output blocks (`16 x (in + out) x
/// tiles`) worked through at once: about 512 KiB, which stays in a core's L2.
const BLOCK_ELEMS: usize = 1 << 17;

/// A 3x3 stride-1 convolution with padding 1, run with Winograd F(2x2, 3x3):
/// `NCHW` f32 input `[n, ins, h, w]` to `[n, outs, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Winograd {
    ins: usize,
    outs: usize,
    /// The transformed kernels, `[16, outs, ins]`.
    u: Arc<Vec<f32>>,
    /// One bias per output channel.
    bias: Arc<Vec<f32>>,
    /// Whether a ReLU follows (fused into the output transform).
    relu: bool,
}

impl Eq for Winograd {}

impl Winograd {
    /// The operator for `kernel` (`[outs, ins, 3, 3]`, row-major) and `bias`
    /// (`outs` values).
    pub fn new(kernel: &[f32], bias: &[f32], outs: usize, ins: usize) -> Winograd {
        assert_eq!(kernel.len(), outs * ins * 9, "kernel of {outs}x{ins}x3x3");
        assert_eq!(bias.len(), outs, "one bias per output channel");
        Winograd {
            ins,
            outs,
            u: Arc::new(transform_kernel(kernel, outs, ins)),
            bias: Arc::new(bias.to_vec()),
            relu: false,
        }
    }

    /// The same convolution followed by a ReLU.
    pub fn with_relu(mut self) -> Winograd {
        self.relu = true;
        self
    }

    /// Convolves `input` (`[ins, h, w]`) into `out` (`[outs, h, w]`), on the
    /// threads of tract's current executor ([`crate::engine::Engine::set_threads`]):
    /// the tile rows are cut into blocks, and each thread works whole blocks
    /// (transforms and products), so threads meet only at the end.
    pub fn run(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let t = Tiles::new(h, w);
        let executor = current_tract_executor();
        let threads = threads(&executor);
        let step = t
            .block_rows(self.ins + self.outs)
            .min(t.rows.div_ceil(threads))
            .max(1);
        // Block b writes output rows 2 * step * b.. of every plane.
        let blocks = t.rows.div_ceil(step);
        let mut rows_out: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::new()).collect();
        for plane in out.chunks_exact_mut(t.plane()) {
            for (b, chunk) in plane.chunks_mut(2 * step * w).enumerate() {
                rows_out[b].push(chunk);
            }
        }
        let work: Vec<_> = rows_out
            .into_iter()
            .enumerate()
            .map(|(b, planes)| (b * step..((b + 1) * step).min(t.rows), planes))
            .collect();
        split_work(&executor, work, |(rows, mut planes)| {
            self.block(input, &t, rows, &mut planes)
        });
    }

    /// The outputs of tile rows `rows`: `planes` holds each output channel's
    /// rows from `2 * rows.start` on.
    fn block(&self, input: &[f32], t: &Tiles, rows: Range<usize>, planes: &mut [&mut [f32]]) {
        let (ins, outs) = (self.ins, self.outs);
        let len = rows.len() * t.cols;
        SCRATCH.with_borrow_mut(|buf| {
            let buf = scratch(buf, 16 * (ins + outs) * len + 16 * (t.cols + 1));
            // v is [16][ins][len], m is [16][outs][len]: each product reads
            // and writes contiguous rows.
            let (v, rest) = buf.split_at_mut(16 * ins * len);
            let (m, rest) = rest.split_at_mut(16 * outs * len);
            let row_buf = rest;
            for (c, plane) in input.chunks_exact(t.plane()).enumerate() {
                let mut runs = v.chunks_exact_mut(ins * len);
                let mut v_c: [&mut [f32]; 16] = core::array::from_fn(|_| {
                    let run = runs.next().expect("16 runs");
                    &mut run[c * len..(c + 1) * len]
                });
                transform_input(plane, t, rows.clone(), &mut v_c, row_buf);
            }
            for xi in 0..16 {
                let u = &self.u[xi * outs * ins..(xi + 1) * outs * ins];
                let v = &v[xi * ins * len..(xi + 1) * ins * len];
                let m = &mut m[xi * outs * len..(xi + 1) * outs * len];
                matmul([outs, len, ins], m, u, v);
            }
            let m = &*m;
            for (o, plane) in planes.iter_mut().enumerate() {
                let m_c: [&[f32]; 16] = core::array::from_fn(|xi| {
                    let at = (xi * outs + o) * len;
                    &m[at..at + len]
                });
                transform_output(
                    &m_c,
                    self.bias[o],
                    self.relu,
                    t,
                    rows.clone(),
                    plane,
                    row_buf,
                );
            }
        })
    }
}

thread_local! {
    /// The transformed blocks, kept from call to call (a few MiB at most).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for Winograd {
    fn name(&self) -> StaticName {
        "Winograd3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "F(2x2,3x3) {} -> {} channels{}",
            self.ins,
            self.outs,
            if self.relu { ", ReLU" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Winograd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out_dims = |h, w| Ok([self.outs, h, w]);
        eval_images(
            "Winograd3x3",
            args_1!(inputs),
            self.ins,
            out_dims,
            |x, [h, w], out| self.run(x, h, w, out),
        )
    }
}

impl TypedOp for Winograd {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "Winograd3x3 takes NCHW input");
        let mut out: TVec<TDim> = shape.iter().cloned().collect();
        out[1] = self.outs.into();
        Ok(tvec!(f32::fact(out)))
    }
}

/// Whether `conv` (with constant kernel and bias given) is one this operator
/// runs: float, NCHW, OIHW kernel, one group, 3x3, stride 1, dilation 1,
/// padding 1 on every side, at least [`MIN_CHANNELS`] on both sides.
fn fits(conv: &Conv, h: usize, w: usize) -> bool {
    let spec = &conv.pool_spec;
    let padded = match &spec.padding {
        PaddingSpec::Explicit(b, a) => b[..] == [1, 1] && a[..] == [1, 1],
        PaddingSpec::SameUpper | PaddingSpec::SameLower => true,
        _ => false,
    };
    conv.q_params.is_none()
        && conv.group == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape[..] == [3, 3]
        && spec.strides().iter().all(|&s| s == 1)
        && spec.dilations().iter().all(|&d| d == 1)
        && padded
        && spec.input_channels >= MIN_CHANNELS
        && spec.output_channels >= MIN_CHANNELS
        && h.div_ceil(2) * w.div_ceil(2) >= MIN_TILES
}

/// Replaces every convolution of the decluttered float graph `model` that
/// [`Winograd`] runs, with its ReLU when one alone follows; returns how many
/// were replaced. Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let (outs, ins) = (conv.output_channels(), conv.input_channels());
        let Some(ConvConstants {
            shape,
            kernel,
            bias,
        }) = ConvConstants::of(model, node, outs)?
        else {
            continue;
        };
        if !fits(conv, shape[2], shape[3]) {
            continue;
        }
        let op = Winograd::new(&kernel, &bias, outs, ins);
        replace(model, id, op, Some(Winograd::with_relu))?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Tile grid of an `h x w` plane.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    h: usize,
    w: usize,
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn new(h: usize, w: usize) -> Tiles {
        Tiles {
            h,
            w,
            rows: h.div_ceil(2),
            cols: w.div_ceil(2),
        }
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Tile rows per block, so that the transformed blocks of `channels`
    /// (input plus output) channels stay near [`BLOCK_ELEMS`].
    fn block_rows(&self, channels: usize) -> usize {
        (BLOCK_ELEMS / (16 * channels * self.cols).max(1)).clamp(1, self.rows.max(1))
    }
}

/// `U[ξ][o][i] = (G g Gᵀ)[ξ]` for each 3x3 kernel `g = w[o, i]`.
fn transform_kernel(w: &[f32], outs: usize, ins: usize) -> Vec<f32> {
    let pairs = outs * ins;
    let mut u = vec![0.0; 16 * pairs];
    for (at, g) in w.chunks_exact(9).enumerate() {
        // G g (4x3), column by column; then (G g) Gᵀ row by row.
        let mut gg = [[0.0; 3]; 4];
        for c in 0..3 {
            for (r, v) in g_rows([g[c], g[3 + c], g[6 + c]]).into_iter().enumerate() {
                gg[r][c] = v;
            }
        }
        for (r, row) in gg.iter().enumerate() {
            for (c, v) in g_rows(*row).into_iter().enumerate() {
                u[(r * 4 + c) * pairs + at] = v;
            }
        }
    }
    u
}

/// `G x` for a 3-vector `x`: `[x0, (x0+x1+x2)/2, (x0-x1+x2)/2, x2]`.
#[inline(always)]
fn g_rows([a, b, c]: [f32; 3]) -> [f32; 4] {
    [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c]
}

/// `dst[i] = f(a[i], b[i])` over the length of `dst` (a loop the compiler
/// vectorises).
#[inline(always)]
fn zip2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    let (a, b) = (&a[..dst.len()], &b[..dst.len()]);
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

/// Splits the image row `row` (zero when `None`) into the samples at odd and
/// even columns around the tiles: `odd[i] = row[2i - 1]`, `even[i] =
/// row[2i]`, zero outside the row; both hold `cols + 1` samples.
fn split_row(row: Option<&[f32]>, odd: &mut [f32], even: &mut [f32]) {
    odd.fill(0.0);
    even.fill(0.0);
    let Some(row) = row else { return };
    let pairs = row.chunks_exact(2);
    let rest = pairs.remainder();
    for (i, pair) in pairs.enumerate() {
        even[i] = pair[0];
        odd[i + 1] = pair[1];
    }
    if let [last] = rest {
        even[row.len() / 2] = *last;
    }
}

/// Writes `V[ξ][p] = (Bᵀ d B)[ξ]` for the tiles of tile rows `rows` of the
/// input plane `plane` (zero outside the image), `p` counting tiles within
/// the block, into the 16 runs `v`; `buf` holds `16 * (cols + 1)` values.
///
/// Works a tile row at a time on whole rows: the four input rows are split
/// into odd and even columns, combined by `Bᵀ` (rows), then by `B` (columns)
/// straight into the 16 output runs, every loop contiguous.
fn transform_input(
    plane: &[f32],
    t: &Tiles,
    rows: Range<usize>,
    v: &mut [&mut [f32]; 16],
    buf: &mut [f32],
) {
    let n1 = t.cols + 1;
    let (raw, tr) = buf.split_at_mut(8 * n1);
    for (local, ty) in rows.enumerate() {
        for (r, chunk) in raw.chunks_exact_mut(2 * n1).enumerate() {
            let y = (2 * ty + r) as isize - 1;
            let src = (0..t.h as isize)
                .contains(&y)
                .then(|| &plane[y as usize * t.w..(y as usize + 1) * t.w]);
            let (odd, even) = chunk.split_at_mut(n1);
            split_row(src, odd, even);
        }
        // Bᵀ over rows: [r0 - r2, r1 + r2, r2 - r1, r1 - r3].
        let row = |r: usize| &raw[r * 2 * n1..(r + 1) * 2 * n1];
        let (t0, rest) = tr.split_at_mut(2 * n1);
        let (t1, rest) = rest.split_at_mut(2 * n1);
        let (t2, t3) = rest.split_at_mut(2 * n1);
        zip2(t0, row(0), row(2), |a, b| a - b);
        zip2(t1, row(1), row(2), |a, b| a + b);
        zip2(t2, row(2), row(1), |a, b| a - b);
        zip2(t3, row(1), row(3), |a, b| a - b);
        // B over columns, per tile: [o[i] - o[i+1], e[i] + o[i+1],
        // o[i+1] - e[i], e[i] - e[i+1]] with o = odd (x = 2i - 1) and
        // e = even (x = 2i).
        let at = local * t.cols..(local + 1) * t.cols;
        for (r, tr_r) in tr.chunks_exact(2 * n1).enumerate() {
            let (o, e) = tr_r.split_at(n1);
            zip2(&mut v[r * 4][at.clone()], o, &o[1..], |a, b| a - b);
            zip2(&mut v[r * 4 + 1][at.clone()], e, &o[1..], |a, b| a + b);
            zip2(&mut v[r * 4 + 2][at.clone()], &o[1..], e, |a, b| a - b);
            zip2(&mut v[r * 4 + 3][at.clone()], e, &e[1..], |a, b| a - b);
        }
    }
}

/// Adds up `M` (16 runs of `len`) of one output channel into its 2x2 outputs
/// `Aᵀ M A` plus `bias` (then the ReLU if `relu`) in tile rows `rows` of
/// `plane`, whose first row is image row `2 * rows.start`, dropping the row or
/// column past an odd edge; `buf` holds `10 * cols` values.
fn transform_output(
    m: &[&[f32]; 16],
    bias: f32,
    relu: bool,
    t: &Tiles,
    rows: Range<usize>,
    plane: &mut [f32],
    buf: &mut [f32],
) {
    let cols = t.cols;
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let y0 = 2 * rows.start;
    for (local, ty) in rows.enumerate() {
        let base = local * cols;
        let run = |xi: usize| &m[xi][base..base + cols];
        let (s, eo) = buf.split_at_mut(8 * cols);
        // Aᵀ over rows: [m0 + m1 + m2, m1 - m2 - m3] for each column k.
        for k in 0..4 {
            let (m0, m1, m2, m3) = (run(k), run(4 + k), run(8 + k), run(12 + k));
            for (i, d) in s[k * cols..(k + 1) * cols].iter_mut().enumerate() {
                *d = m0[i] + m1[i] + m2[i];
            }
            for (i, d) in s[(4 + k) * cols..(5 + k) * cols].iter_mut().enumerate() {
                *d = m1[i] - m2[i] - m3[i];
            }
        }
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= t.h {
                break;
            }
            let sr = &s[r * 4 * cols..(r + 1) * 4 * cols];
            let (s0, s1, s2, s3) = (
                &sr[..cols],
                &sr[cols..2 * cols],
                &sr[2 * cols..3 * cols],
                &sr[3 * cols..],
            );
            // A over columns: even x = s0 + s1 + s2, odd x = s1 - s2 - s3.
            let (even, odd) = eo.split_at_mut(cols);
            for i in 0..cols {
                even[i] = (s0[i] + s1[i] + s2[i] + bias).max(floor);
                odd[i] = (s1[i] - s2[i] - s3[i] + bias).max(floor);
            }
            let row = &mut plane[(y - y0) * t.w..(y - y0 + 1) * t.w];
            let mut pairs = row.chunks_exact_mut(2);
            for ((pair, &e), &o) in (&mut pairs).zip(&*even).zip(&*odd) {
                pair[0] = e;
                pair[1] = o;
            }
            if let [last] = pairs.into_remainder() {
                *last = even[cols - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The direct definition: 'same' 3x3 convolution with zero padding.
    fn direct(input: &[f32], k: &[f32], bias: &[f32], ins: usize, h: usize, w: usize) -> Vec<f32> {
        let outs = bias.len();
        let mut out = vec![0.0f32; outs * h * w];
        for o in 0..outs {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = bias[o] as f64;
                    for i in 0..ins {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) = (y as isize + ky - 1, x as isize + kx - 1);
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                let v = input[(i * h + yy as usize) * w + xx as usize] as f64;
                                let kv = k[((o * ins + i) * 3 + ky as usize) * 3 + kx as usize];
                                acc += v * kv as f64;
                            }
                        }
                    }
                    out[(o * h + y) * w + x] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn winograd_matches_the_direct_convolution_at_odd_sizes() {
        let mut rng = Rng::new(5);
        for (ins, outs, h, w) in [
            (16, 24, 7, 9),
            (17, 16, 12, 13),
            (32, 20, 5, 40),
            (16, 16, 1, 3),
        ] {
            let input: Vec<f32> = (0..ins * h * w).map(|_| rng.range(-1.0, 1.0)).collect();
            let k: Vec<f32> = (0..outs * ins * 9).map(|_| rng.range(-0.5, 0.5)).collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected = direct(&input, &k, &bias, ins, h, w);
            let op = Winograd::new(&k, &bias, outs, ins);
            let mut out = vec![f32::NAN; outs * h * w];
            op.run(&input, h, w, &mut out);
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (a, e)) in out.iter().zip(&expected).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-5 * scale,
                    "{ins}->{outs} at {h}x{w}, value {i}: {a} against {e}"
                );
            }
            // On three threads, with the ReLU.
            let relu = op.with_relu();
            out.fill(f32::NAN);
            let pool = tract_linalg::multithread::Executor::multithread(3);
            tract_linalg::multithread::multithread_tract_scope(pool, || {
                relu.run(&input, h, w, &mut out)
            });
            for (a, e) in out.iter().zip(&expected) {
                assert!((a - e.max(0.0)).abs() <= 1e-5 * scale, "{a} against {e}");
            }
        }
    }
}
