//! 3x3 stride-1 'same' convolutions with Winograd's minimal filtering
//! F(2x2, 3x3) and F(4x4, 3x3) (Lavin and Gray 2016), as a tract operator
//! substituted into the typed graph at load (see [`substitute`]).
//!
//! tract runs every convolution as im2col plus a matrix product: 9 multiply-adds
//! per output pixel, input and output channel. Winograd computes each `m x m`
//! block of outputs (a *tile*, `m` = 2 or 4) from the `n x n` block of input
//! around it (`n = m + 2`); after the transform `V = Bᵀ d B` of the input block
//! and `U = G g Gᵀ` of the kernel, the convolution is `n²` independent channel
//! contractions, one per position `ξ` of the tile, then `Y = Aᵀ M A`:
//!
//! `M[ξ] (out x tiles) = U[ξ] (out x in) @ V[ξ] (in x tiles)`
//!
//! which is 16/4 = 4 multiply-adds per output with F(2x2, 3x3) and 36/16 =
//! 2.25 with F(4x4, 3x3), instead of 9. F(2x2, 3x3)'s transforms only add,
//! subtract and halve; F(4x4, 3x3)'s (interpolation points 0, ±1, ±2) scale by
//! up to 8, so its results carry a few more ulps of rounding, far inside the
//! 1e-4 the engine is held to. `U` is computed once, at load, in f64.
//!
//! The larger tile pays on large planes; on small ones its kernels (`36 x in x
//! out`, 4x the plain kernel) cost more to stream than the multiplications
//! saved and the tiles past the edge waste more, so [`Tile::for_plane`] picks
//! per layer.
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

/// Below this many F(2x2, 3x3) tiles per image the transformed kernels (`16 x
/// in x out`, 1.8x the plain kernel) cost more to stream than the
/// multiplications saved.
pub const MIN_TILES: usize = 16;

/// From this many F(4x4, 3x3) tiles per image on, the larger tile is used
/// (BENCHMARKS.md, "Winograd F(4x4, 3x3)").
pub const MIN_TILES_4X4: usize = 12;

/// Elements of the transformed input and output blocks (`n² x (in + out) x
/// tiles`) worked through at once: about 512 KiB, which stays in a core's L2.
const BLOCK_ELEMS: usize = 1 << 17;

/// The output tile: F(2x2, 3x3) or F(4x4, 3x3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 2x2 outputs from 4x4 inputs: 16 products.
    F2,
    /// 4x4 outputs from 6x6 inputs: 36 products.
    F4,
}

impl Tile {
    /// Outputs along each side of a tile.
    pub fn outputs(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// The tile for an `h x w` plane: F(4x4, 3x3) from [`MIN_TILES_4X4`]
    /// tiles on, else F(2x2, 3x3).
    pub fn for_plane(h: usize, w: usize) -> Tile {
        if h.div_ceil(4) * w.div_ceil(4) >= MIN_TILES_4X4 {
            Tile::F4
        } else {
            Tile::F2
        }
    }
}

/// A 3x3 stride-1 convolution with padding 1, run with Winograd F(2x2, 3x3)
/// or F(4x4, 3x3): `NCHW` f32 input `[n, ins, h, w]` to `[n, outs, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Winograd {
    ins: usize,
    outs: usize,
    tile: Tile,
    /// The transformed kernels, `[n², outs, ins]`.
    u: Arc<Vec<f32>>,
    /// One bias per output channel.
    bias: Arc<Vec<f32>>,
    /// Whether a ReLU follows (fused into the output transform).
    relu: bool,
}

impl Eq for Winograd {}

impl Winograd {
    /// The operator for `kernel` (`[outs, ins, 3, 3]`, row-major) and `bias`
    /// (`outs` values), with output tiles `tile`.
    pub fn new(kernel: &[f32], bias: &[f32], outs: usize, ins: usize, tile: Tile) -> Winograd {
        assert_eq!(kernel.len(), outs * ins * 9, "kernel of {outs}x{ins}x3x3");
        assert_eq!(bias.len(), outs, "one bias per output channel");
        Winograd {
            ins,
            outs,
            tile,
            u: Arc::new(transform_kernel(kernel, outs, ins, tile)),
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
        let t = Tiles::new(h, w, self.tile);
        let executor = current_tract_executor();
        let threads = threads(&executor);
        let step = t
            .block_rows(self.ins + self.outs)
            .min(t.rows.div_ceil(threads))
            .max(1);
        // Block b writes output rows m * step * b.. of every plane.
        let blocks = t.rows.div_ceil(step);
        let mut rows_out: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::new()).collect();
        for plane in out.chunks_exact_mut(t.plane()) {
            for (b, chunk) in plane.chunks_mut(t.m * step * w).enumerate() {
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
    /// rows from `m * rows.start` on.
    fn block(&self, input: &[f32], t: &Tiles, rows: Range<usize>, planes: &mut [&mut [f32]]) {
        match self.tile {
            Tile::F2 => {
                self.block_with::<16>(input, t, rows, planes, transform_input, transform_output)
            }
            Tile::F4 => {
                self.block_with::<36>(input, t, rows, planes, transform_input4, transform_output4)
            }
        }
    }

    /// [`Self::block`] with the `XI` (`n²`) transforms given.
    fn block_with<const XI: usize>(
        &self,
        input: &[f32],
        t: &Tiles,
        rows: Range<usize>,
        planes: &mut [&mut [f32]],
        transform_input: InputTransform<XI>,
        transform_output: OutputTransform<XI>,
    ) {
        let (ins, outs) = (self.ins, self.outs);
        let len = rows.len() * t.cols;
        SCRATCH.with_borrow_mut(|buf| {
            let buf = scratch(buf, XI * (ins + outs) * len + 48 * (t.cols + 1));
            // v is [n²][ins][len], m is [n²][outs][len]: each product reads
            // and writes contiguous rows.
            let (v, rest) = buf.split_at_mut(XI * ins * len);
            let (m, rest) = rest.split_at_mut(XI * outs * len);
            let row_buf = rest;
            for (c, plane) in input.chunks_exact(t.plane()).enumerate() {
                let mut runs = v.chunks_exact_mut(ins * len);
                let mut v_c: [&mut [f32]; XI] = core::array::from_fn(|_| {
                    let run = runs.next().expect("n² runs");
                    &mut run[c * len..(c + 1) * len]
                });
                transform_input(plane, t, rows.clone(), &mut v_c, row_buf);
            }
            for xi in 0..XI {
                let u = &self.u[xi * outs * ins..(xi + 1) * outs * ins];
                let v = &v[xi * ins * len..(xi + 1) * ins * len];
                let m = &mut m[xi * outs * len..(xi + 1) * outs * len];
                matmul([outs, len, ins], m, u, v);
            }
            let m = &*m;
            for (o, plane) in planes.iter_mut().enumerate() {
                let m_c: [&[f32]; XI] = core::array::from_fn(|xi| {
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

/// Writes the transformed input blocks of one channel (see [`transform_input`]).
type InputTransform<const XI: usize> =
    fn(&[f32], &Tiles, Range<usize>, &mut [&mut [f32]; XI], &mut [f32]);

/// Writes one output channel from its products (see [`transform_output`]).
type OutputTransform<const XI: usize> =
    fn(&[&[f32]; XI], f32, bool, &Tiles, Range<usize>, &mut [f32], &mut [f32]);

thread_local! {
    /// The transformed blocks, kept from call to call (a few MiB at most).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for Winograd {
    fn name(&self) -> StaticName {
        "Winograd3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let m = self.tile.outputs();
        Ok(vec![format!(
            "F({m}x{m},3x3) {} -> {} channels{}",
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
        let tile = Tile::for_plane(shape[2], shape[3]);
        let op = Winograd::new(&kernel, &bias, outs, ins, tile);
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
    /// Outputs along a tile's side.
    m: usize,
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn new(h: usize, w: usize, tile: Tile) -> Tiles {
        let m = tile.outputs();
        Tiles {
            h,
            w,
            m,
            rows: h.div_ceil(m),
            cols: w.div_ceil(m),
        }
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Tile rows per block, so that the transformed blocks of `channels`
    /// (input plus output) channels stay near [`BLOCK_ELEMS`].
    fn block_rows(&self, channels: usize) -> usize {
        // n² products a tile, n = m + 2 inputs along its side.
        let products = (self.m + 2) * (self.m + 2);
        (BLOCK_ELEMS / (products * channels * self.cols).max(1)).clamp(1, self.rows.max(1))
    }
}

/// `U[ξ][o][i] = (G g Gᵀ)[ξ]` for each 3x3 kernel `g = w[o, i]`, computed in
/// f64.
fn transform_kernel(w: &[f32], outs: usize, ins: usize, tile: Tile) -> Vec<f32> {
    let g: &[[f64; 3]] = match tile {
        Tile::F2 => &G2,
        Tile::F4 => &G4,
    };
    let n = g.len();
    let pairs = outs * ins;
    let mut u = vec![0.0; n * n * pairs];
    for (at, k) in w.chunks_exact(9).enumerate() {
        // G k (n x 3), then (G k) Gᵀ (n x n).
        let mut gk = vec![[0.0f64; 3]; n];
        for (r, row) in gk.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|j| g[r][j] * k[j * 3 + c] as f64).sum();
            }
        }
        for (r, row) in gk.iter().enumerate() {
            for (c, gc) in g.iter().enumerate() {
                let v: f64 = (0..3).map(|j| row[j] * gc[j]).sum();
                u[(r * n + c) * pairs + at] = v as f32;
            }
        }
    }
    u
}

/// F(2x2, 3x3)'s kernel transform `G` (4x3).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// F(4x4, 3x3)'s kernel transform `G` (6x3), interpolation points 0, 1, -1,
/// 2, -2 and infinity.
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

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
/// the block, into the 16 runs `v`; `buf` holds at least `16 * (cols + 1)`
/// values.
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
    let tr = &mut tr[..8 * n1];
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
/// column past an odd edge; `buf` holds at least `10 * cols` values.
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
        let eo = &mut eo[..2 * cols];
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

/// Splits the image row `row` (zero when `None`) into its four column phases
/// around F(4x4, 3x3)'s tiles: `phases[k * n1 + i] = row[4i - 1 + k]`, zero
/// outside the row, `n1 = cols + 1` samples a phase.
fn split_row4(row: Option<&[f32]>, phases: &mut [f32], n1: usize) {
    phases.fill(0.0);
    let Some(row) = row else { return };
    let (p0, rest) = phases.split_at_mut(n1);
    let (p1, rest) = rest.split_at_mut(n1);
    let (p2, p3) = rest.split_at_mut(n1);
    // Columns 0-2 are phases 1-3 of tile 0; then each group of four
    // columns 4i - 1 .. 4i + 2 is tile i's phases 0-3.
    let head = row.len().min(3);
    for (x, &value) in row[..head].iter().enumerate() {
        [&mut *p1, &mut *p2, &mut *p3][x][0] = value;
    }
    let quads = row[head..].chunks_exact(4);
    let rest = quads.remainder();
    let mut i = 1;
    for quad in quads {
        p0[i] = quad[0];
        p1[i] = quad[1];
        p2[i] = quad[2];
        p3[i] = quad[3];
        i += 1;
    }
    for (k, &value) in rest.iter().enumerate() {
        [&mut *p0, &mut *p1, &mut *p2][k][i] = value;
    }
}

/// F(4x4, 3x3)'s `Bᵀ x` for the six values of a column (or row) `x`.
#[inline(always)]
fn b4([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
    let (c, d) = (d4 - d2, 2.0 * (d3 - d1));
    [
        4.0 * d0 - 5.0 * d2 + d4,
        a + b,
        a - b,
        c + d,
        c - d,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// F(4x4, 3x3)'s `Aᵀ m` for the six values of a column (or row) `m`.
#[inline(always)]
fn a4([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (p, q) = (m1 + m2, m1 - m2);
    let (r, s) = (m3 + m4, m3 - m4);
    [m0 + p + r, q + 2.0 * s, p + 4.0 * r, q + 8.0 * s + m5]
}

/// [`transform_input`] for F(4x4, 3x3): the 36 runs `v` of the 6x6 blocks
/// `Bᵀ d B` whose first row and column are at `4 * tile - 1`; `buf` holds
/// `48 * (cols + 1)` values.
///
/// A tile row at a time: its six input rows are split into their four column
/// phases, combined by `Bᵀ` (rows) along whole rows, then by `B` (columns)
/// from the phases, every loop over tiles.
fn transform_input4(
    plane: &[f32],
    t: &Tiles,
    rows: Range<usize>,
    v: &mut [&mut [f32]; 36],
    buf: &mut [f32],
) {
    let n1 = t.cols + 1;
    let run = 4 * n1;
    let (raw, tr) = buf.split_at_mut(6 * run);
    let tr = &mut tr[..6 * run];
    for (local, ty) in rows.enumerate() {
        for (r, phases) in raw.chunks_exact_mut(run).enumerate() {
            let y = (4 * ty + r) as isize - 1;
            let src = (0..t.h as isize)
                .contains(&y)
                .then(|| &plane[y as usize * t.w..(y as usize + 1) * t.w]);
            split_row4(src, phases, n1);
        }
        // Bᵀ over rows, every phase at once.
        {
            let d = |r: usize| &raw[r * run..(r + 1) * run];
            let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
            let (t0, rest) = tr.split_at_mut(run);
            let (t1, rest) = rest.split_at_mut(run);
            let (t2, rest) = rest.split_at_mut(run);
            let (t3, rest) = rest.split_at_mut(run);
            let (t4, t5) = rest.split_at_mut(run);
            let t5 = &mut t5[..run];
            for i in 0..run {
                let x = b4([d0[i], d1[i], d2[i], d3[i], d4[i], d5[i]]);
                t0[i] = x[0];
                t1[i] = x[1];
                t2[i] = x[2];
                t3[i] = x[3];
                t4[i] = x[4];
                t5[i] = x[5];
            }
        }
        // B over columns: tile i's columns are phases 0-3 at i, then phases
        // 0 and 1 at i + 1.
        let (at, cols) = (local * t.cols, t.cols);
        for (r, tr_r) in tr.chunks_exact(run).enumerate() {
            let p = |k: usize, from: usize| &tr_r[k * n1 + from..k * n1 + from + cols];
            let (c0, c1, c2, c3, c4, c5) = (p(0, 0), p(1, 0), p(2, 0), p(3, 0), p(0, 1), p(1, 1));
            let [o0, o1, o2, o3, o4, o5] = &mut v[6 * r..6 * r + 6] else {
                unreachable!("six runs")
            };
            let (o0, o1, o2) = (
                &mut o0[at..at + cols],
                &mut o1[at..at + cols],
                &mut o2[at..at + cols],
            );
            let (o3, o4, o5) = (
                &mut o3[at..at + cols],
                &mut o4[at..at + cols],
                &mut o5[at..at + cols],
            );
            for i in 0..cols {
                let x = b4([c0[i], c1[i], c2[i], c3[i], c4[i], c5[i]]);
                o0[i] = x[0];
                o1[i] = x[1];
                o2[i] = x[2];
                o3[i] = x[3];
                o4[i] = x[4];
                o5[i] = x[5];
            }
        }
    }
}

/// [`transform_output`] for F(4x4, 3x3): `Aᵀ M A` plus `bias` (then the ReLU
/// if `relu`) from the 36 runs `m` of one output channel, into tile rows
/// `rows` of `plane` (whose first row is image row `4 * rows.start`), dropping
/// what lies past the edges; `buf` holds `28 * cols` values.
fn transform_output4(
    m: &[&[f32]; 36],
    bias: f32,
    relu: bool,
    t: &Tiles,
    rows: Range<usize>,
    plane: &mut [f32],
    buf: &mut [f32],
) {
    let cols = t.cols;
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let y0 = 4 * rows.start;
    let (s, o) = buf.split_at_mut(24 * cols);
    let o = &mut o[..4 * cols];
    for (local, ty) in rows.enumerate() {
        let base = local * cols;
        // Aᵀ over rows: s[r][k] for output row r and tile column k.
        for k in 0..6 {
            let mk = |j: usize| &m[6 * j + k][base..base + cols];
            let (m0, m1, m2, m3, m4, m5) = (mk(0), mk(1), mk(2), mk(3), mk(4), mk(5));
            let (s0, rest) = s[k * cols..].split_at_mut(cols);
            let (s1, rest) = rest[5 * cols..].split_at_mut(cols);
            let (s2, rest) = rest[5 * cols..].split_at_mut(cols);
            let s3 = &mut rest[5 * cols..6 * cols];
            for i in 0..cols {
                let y = a4([m0[i], m1[i], m2[i], m3[i], m4[i], m5[i]]);
                s0[i] = y[0];
                s1[i] = y[1];
                s2[i] = y[2];
                s3[i] = y[3];
            }
        }
        for r in 0..4 {
            let y = 4 * ty + r;
            if y >= t.h {
                break;
            }
            let sr = |k: usize| &s[(6 * r + k) * cols..(6 * r + k + 1) * cols];
            let (s0, s1, s2, s3, s4, s5) = (sr(0), sr(1), sr(2), sr(3), sr(4), sr(5));
            let (o0, rest) = o.split_at_mut(cols);
            let (o1, rest) = rest.split_at_mut(cols);
            let (o2, o3) = rest.split_at_mut(cols);
            let o3 = &mut o3[..cols];
            for i in 0..cols {
                let x = a4([s0[i], s1[i], s2[i], s3[i], s4[i], s5[i]]);
                o0[i] = (x[0] + bias).max(floor);
                o1[i] = (x[1] + bias).max(floor);
                o2[i] = (x[2] + bias).max(floor);
                o3[i] = (x[3] + bias).max(floor);
            }
            let row = &mut plane[(y - y0) * t.w..(y - y0 + 1) * t.w];
            let mut quads = row.chunks_exact_mut(4);
            for (i, quad) in (&mut quads).enumerate() {
                quad.copy_from_slice(&[o0[i], o1[i], o2[i], o3[i]]);
            }
            for (out, o) in quads.into_remainder().iter_mut().zip([&*o0, &*o1, &*o2]) {
                *out = o[cols - 1];
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
            (16, 16, 22, 27),
            (24, 16, 4, 8),
        ] {
            let input: Vec<f32> = (0..ins * h * w).map(|_| rng.range(-1.0, 1.0)).collect();
            let k: Vec<f32> = (0..outs * ins * 9).map(|_| rng.range(-0.5, 0.5)).collect();
            let bias: Vec<f32> = (0..outs).map(|_| rng.range(-0.5, 0.5)).collect();
            let expected = direct(&input, &k, &bias, ins, h, w);
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for tile in [Tile::F2, Tile::F4] {
                let op = Winograd::new(&k, &bias, outs, ins, tile);
                let mut out = vec![f32::NAN; outs * h * w];
                op.run(&input, h, w, &mut out);
                for (i, (a, e)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-5 * scale,
                        "{tile:?} {ins}->{outs} at {h}x{w}, value {i}: {a} against {e}"
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
                    assert!(
                        (a - e.max(0.0)).abs() <= 1e-5 * scale,
                        "{tile:?}: {a} against {e}"
                    );
                }
            }
        }
    }
}
