//! 3x3 stride-1 "same" convolutions and both their gradients with Winograd's
//! minimal filtering F(2x2, 3x3) (Lavin and Gray 2016; edgeseg patch, see
//! `VENDORED.md` at the crate root).
//!
//! Every 2x2 block of outputs (a *tile*) is computed from the 4x4 block of
//! input around it. In the transformed domain a 3x3 convolution becomes 16
//! independent channel contractions, one per position `ξ` of the 4x4 tile, so
//! a layer costs 16 GEMMs with 16 multiply-adds per tile and channel pair
//! instead of 36: 2.25x fewer multiplications than im2col + GEMM.
//!
//! | operation | per tile | contraction per `ξ` |
//! | --- | --- | --- |
//! | forward | `V = Bᵀ d B`, `Y = Aᵀ M A` | `M[ξ] (out x tiles) = U[ξ] (out x in) @ V[ξ] (in x tiles)` |
//! | input gradient | the forward with the flipped, transposed kernel | as forward |
//! | weight gradient | `V = Bᵀ d B`, `dM = A dY Aᵀ` | `dU[ξ] (out x in) += dM[ξ] (out x tiles) @ V[ξ]ᵀ` |
//!
//! with `U = G g Gᵀ` the transformed kernel and `dg = Gᵀ dU G`. The weight
//! gradient is the exact chain rule through the forward formula, so all three
//! agree with the direct definition up to rounding (the transforms only add,
//! subtract and halve).

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use super::conv_gemm::{Channels, Geometry, Scalar, for_each_item, gemm, with_scratch};

/// Channels needed on both sides. Each of the 16 GEMMs contracts over the
/// input channels, so fewer make them too short to run near peak; 16 (U-Net's
/// first level) measured 1.5x faster than im2col, fewer is not measured and
/// stays on im2col (which also keeps the 3-channel RGB layer there).
const MIN_CHANNELS: usize = 16;

/// Below this many 2x2 tiles per image (a 16x16 plane) the transformed
/// kernels (16 x in x out) outweigh the multiplications saved: at 8x8 with
/// 512 channels Winograd took twice as long as im2col, at 16x16 it was about
/// even, from 32x32 on 1.6x faster (`host/examples/conv_bench.rs`).
const MIN_TILES: usize = 64;

/// Elements of the transformed blocks (`16 x (in + out) x tiles`) per worker.
const BLOCK_ELEMS: usize = 1 << 19;

/// Whether a convolution with this geometry runs here: 3x3, stride 1,
/// dilation 1, one group, padding 1 on every side (output as large as the
/// input), at least [`MIN_CHANNELS`] channels on both sides and
/// [`MIN_TILES`] tiles per image.
pub(crate) fn applies(ch: &Channels, g: &Geometry) -> bool {
    enabled()
        && ch.groups == 1
        && ch.image >= MIN_CHANNELS
        && ch.column >= MIN_CHANNELS
        && g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.pad == [1, 1]
        && g.in_h == g.out_h
        && g.in_w == g.out_w
        && g.in_h.div_ceil(2) * g.in_w.div_ceil(2) >= MIN_TILES
}

/// `BURN_FLEX_WINOGRAD=0` turns the Winograd kernels off (for side-by-side
/// benchmarks against im2col in one build).
#[cfg(feature = "std")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("BURN_FLEX_WINOGRAD").map_or(true, |v| v != "0"))
}

#[cfg(not(feature = "std"))]
fn enabled() -> bool {
    true
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
    fn new(h: usize, w: usize) -> Self {
        Self {
            h,
            w,
            rows: h.div_ceil(2),
            cols: w.div_ceil(2),
        }
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Tile rows per block so that the transformed blocks of `channels`
    /// (input plus output) channels stay near [`BLOCK_ELEMS`].
    fn block_rows(&self, channels: usize) -> usize {
        (BLOCK_ELEMS / (16 * channels * self.cols).max(1)).clamp(1, self.rows.max(1))
    }

    /// Scratch elements for the transformed blocks of `channels` channels.
    fn scratch_len(&self, channels: usize) -> usize {
        16 * channels * self.block_rows(channels) * self.cols
    }

    /// The blocks of tile rows a plane is worked through.
    fn blocks(&self, channels: usize) -> impl Iterator<Item = Range<usize>> + use<> {
        let (step, rows) = (self.block_rows(channels), self.rows);
        (0..rows).step_by(step).map(move |ty| ty..(ty + step).min(rows))
    }
}

/// `dst[i] = -src[i]`.
#[inline(always)]
fn negate<T: Scalar>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::ZERO - s;
    }
}

/// `U[ξ][o][i] = (G g Gᵀ)[ξ]` for the kernel `g = w[o, i]` (`w` is `[out,
/// in, 3, 3]`), or with `flip` for the kernel `w[i, o]` rotated by 180
/// degrees (`w` is `[in, out, 3, 3]`): the input gradient's kernel.
///
/// Output channels are split into chunks, one task each (in parallel with
/// `rayon`); a task writes its rows of all 16 planes of `U`.
fn transform_kernel<T: Scalar>(w: &[T], outs: usize, ins: usize, flip: bool) -> Vec<T> {
    let pairs = outs * ins;
    let mut u = vec![T::ZERO; 16 * pairs];
    #[cfg(feature = "rayon")]
    let threads = rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    let threads = 1;
    let chunk = outs.div_ceil(4 * threads).max(1);
    // tasks[t][ξ] = rows chunk*t.. of plane ξ.
    let mut planes: Vec<_> = u.chunks_mut(pairs).map(|p| p.chunks_mut(chunk * ins)).collect();
    let tasks: Vec<Vec<&mut [T]>> = (0..outs.div_ceil(chunk))
        .map(|_| planes.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    let run = |(t, mut dst): (usize, Vec<&mut [T]>)| {
        let first = t * chunk;
        for o in first..(first + chunk).min(outs) {
            for i in 0..ins {
                // Kernel (o, i): `w[o, i]`, or `w[i, o]` rotated by 180 degrees.
                let g: [T; 9] = if flip {
                    let k = &w[(i * outs + o) * 9..][..9];
                    core::array::from_fn(|j| k[8 - j])
                } else {
                    let k = &w[(o * ins + i) * 9..][..9];
                    core::array::from_fn(|j| k[j])
                };
                // G g (4x3), column by column; then (G g) Gᵀ row by row.
                let mut gg = [[T::ZERO; 3]; 4];
                for c in 0..3 {
                    for (r, v) in g_rows([g[c], g[3 + c], g[6 + c]]).into_iter().enumerate() {
                        gg[r][c] = v;
                    }
                }
                let at = (o - first) * ins + i;
                for (r, row) in gg.iter().enumerate() {
                    for (c, v) in g_rows(*row).into_iter().enumerate() {
                        dst[r * 4 + c][at] = v;
                    }
                }
            }
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        tasks.into_par_iter().enumerate().for_each(run);
    }
    #[cfg(not(feature = "rayon"))]
    tasks.into_iter().enumerate().for_each(run);
    u
}

/// `G x` for a 3-vector `x`: `[x0, (x0+x1+x2)/2, (x0-x1+x2)/2, x2]`.
#[inline(always)]
fn g_rows<T: Scalar>([a, b, c]: [T; 3]) -> [T; 4] {
    [a, (a + b + c) * T::HALF, (a - b + c) * T::HALF, c]
}

/// `Gᵀ x` for a 4-vector `x`: `[x0 + (x1+x2)/2, (x1-x2)/2, (x1+x2)/2 + x3]`.
#[inline(always)]
fn gt_rows<T: Scalar>([a, b, c, d]: [T; 4]) -> [T; 3] {
    let s = (b + c) * T::HALF;
    [a + s, (b - c) * T::HALF, s + d]
}

/// `dst[i] = f(a[i], b[i])` over the length of `dst` (a loop the compiler
/// vectorises).
#[inline(always)]
fn zip2<T: Scalar>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    let (a, b) = (&a[..dst.len()], &b[..dst.len()]);
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

/// Splits the image row `row` (zero when `None`) into the samples at odd
/// and even columns around the tiles: `odd[i] = row[2i - 1]`, `even[i] =
/// row[2i]`, zero outside the row; both hold `cols + 1` samples.
fn split_row<T: Scalar>(row: Option<&[T]>, odd: &mut [T], even: &mut [T]) {
    odd.fill(T::ZERO);
    even.fill(T::ZERO);
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

/// Writes `V[ξ][c][p] = (Bᵀ d B)[ξ]` for the tiles of tile rows `rows` of
/// the `channels` planes of `img` (zero outside the image), `p` counting
/// tiles within the block; `v` is `[16, channels, len]`.
///
/// Works a tile row at a time on whole rows: the four input rows are split
/// into odd and even columns, combined by `Bᵀ` (rows), then by `B`
/// (columns) straight into the 16 output runs, every loop contiguous.
fn transform_input<T: Scalar>(
    img: &[T],
    channels: usize,
    t: &Tiles,
    rows: Range<usize>,
    v: &mut [T],
) {
    let len = rows.len() * t.cols;
    let stride = channels * len;
    let n1 = t.cols + 1;
    // raw[r] = (odd, even) of input row r; tr[r] = the same after Bᵀ.
    let mut buf = vec![T::ZERO; 16 * n1];
    let (raw, tr) = buf.split_at_mut(8 * n1);
    for c in 0..channels {
        let plane = &img[c * t.plane()..(c + 1) * t.plane()];
        for (local, ty) in rows.clone().enumerate() {
            for (r, chunk) in raw.chunks_exact_mut(2 * n1).enumerate() {
                let y = (2 * ty + r) as isize - 1;
                let src = (0..t.h as isize)
                    .contains(&y)
                    .then(|| &plane[y as usize * t.w..(y as usize + 1) * t.w]);
                let (odd, even) = chunk.split_at_mut(n1);
                split_row(src, odd, even);
            }
            // Bᵀ over rows: [r0 - r2, r1 + r2, r2 - r1, r1 - r3], for the odd
            // and the even halves alike (each row chunk is odd ++ even).
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
            let base = c * len + local * t.cols;
            for (r, tr_r) in tr.chunks_exact(2 * n1).enumerate() {
                let (o, e) = tr_r.split_at(n1);
                let at = |k: usize| (r * 4 + k) * stride + base;
                zip2(&mut v[at(0)..at(0) + t.cols], o, &o[1..], |a, b| a - b);
                zip2(&mut v[at(1)..at(1) + t.cols], e, &o[1..], |a, b| a + b);
                zip2(&mut v[at(2)..at(2) + t.cols], &o[1..], e, |a, b| a - b);
                zip2(&mut v[at(3)..at(3) + t.cols], e, &e[1..], |a, b| a - b);
            }
        }
    }
}

/// Adds up `M` (`[16, channels, len]`) into the 2x2 outputs `Aᵀ M A` of tile
/// rows `rows` of the `channels` planes of `out` (dropping the row or column
/// past an odd edge).
fn transform_output<T: Scalar>(
    m: &[T],
    channels: usize,
    t: &Tiles,
    rows: Range<usize>,
    out: &mut [T],
) {
    let len = rows.len() * t.cols;
    let stride = channels * len;
    let cols = t.cols;
    // s[r][k] = row r of Aᵀ M (r < 2, k < 4); then the even and odd outputs.
    let mut buf = vec![T::ZERO; 10 * cols];
    for c in 0..channels {
        let plane = &mut out[c * t.plane()..(c + 1) * t.plane()];
        for (local, ty) in rows.clone().enumerate() {
            let base = c * len + local * cols;
            let run = |xi: usize| &m[xi * stride + base..xi * stride + base + cols];
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
                    even[i] = s0[i] + s1[i] + s2[i];
                    odd[i] = s1[i] - s2[i] - s3[i];
                }
                let row = &mut plane[y * t.w..(y + 1) * t.w];
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
}

/// Writes `dM[ξ][c][p] = (A dY Aᵀ)[ξ]` for the tiles of tile rows `rows` of
/// the `channels` planes of the output gradient `dy` (zero past an odd edge);
/// `dm` is `[16, channels, len]`.
fn transform_output_grad<T: Scalar>(
    dy: &[T],
    channels: usize,
    t: &Tiles,
    rows: Range<usize>,
    dm: &mut [T],
) {
    let len = rows.len() * t.cols;
    let stride = channels * len;
    let cols = t.cols;
    // Rows 2ty and 2ty + 1 split into even and odd columns, then A over rows.
    let mut buf = vec![T::ZERO; 12 * cols];
    for c in 0..channels {
        let plane = &dy[c * t.plane()..(c + 1) * t.plane()];
        for (local, ty) in rows.clone().enumerate() {
            let (raw, a) = buf.split_at_mut(4 * cols);
            raw.fill(T::ZERO);
            for r in 0..2 {
                let y = 2 * ty + r;
                if y >= t.h {
                    continue;
                }
                let row = &plane[y * t.w..(y + 1) * t.w];
                let (even, odd) = raw[2 * r * cols..(2 * r + 2) * cols].split_at_mut(cols);
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    even[cols - 1] = *last;
                }
                for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            // A over rows: [y0, y0 + y1, y0 - y1, -y1] (even and odd halves).
            let (y0, y1) = raw.split_at(2 * cols);
            let (a0, rest) = a.split_at_mut(2 * cols);
            let (a1, rest) = rest.split_at_mut(2 * cols);
            let (a2, a3) = rest.split_at_mut(2 * cols);
            a0.copy_from_slice(y0);
            zip2(a1, y0, y1, |p, q| p + q);
            zip2(a2, y0, y1, |p, q| p - q);
            negate(a3, y1);
            // Aᵀ over columns: [e, e + o, e - o, -o].
            let base = c * len + local * cols;
            for (r, ar) in a.chunks_exact(2 * cols).enumerate() {
                let (e, o) = ar.split_at(cols);
                let at = |k: usize| (r * 4 + k) * stride + base;
                dm[at(0)..at(0) + cols].copy_from_slice(e);
                zip2(&mut dm[at(1)..at(1) + cols], e, o, |p, q| p + q);
                zip2(&mut dm[at(2)..at(2) + cols], e, o, |p, q| p - q);
                negate(&mut dm[at(3)..at(3) + cols], o);
            }
        }
    }
}

/// `out[n, o] = Σ_i conv3x3(img[n, i], kernel)` for transformed kernels `u`
/// (`[16, outs, ins]`), 'same' padding.
fn convolve<T: Scalar>(img: &[T], u: &[T], batch: usize, ins: usize, outs: usize, t: Tiles) -> Vec<T> {
    let mut out = vec![T::ZERO; batch * outs * t.plane()];
    for_each_item(&mut out, batch, |n, out_n, parallel| {
        with_scratch(t.scratch_len(ins + outs), |buf: &mut [T]| {
            let img_n = &img[n * ins * t.plane()..(n + 1) * ins * t.plane()];
            for rows in t.blocks(ins + outs) {
                let len = rows.len() * t.cols;
                let (v, m) = buf.split_at_mut(16 * ins * len);
                let m = &mut m[..16 * outs * len];
                transform_input(img_n, ins, &t, rows.clone(), v);
                for xi in 0..16 {
                    gemm(
                        [outs, len, ins],
                        (m[xi * outs * len..].as_mut_ptr(), len as isize, 1),
                        false,
                        (u[xi * outs * ins..].as_ptr(), ins as isize, 1),
                        (v[xi * ins * len..].as_ptr(), len as isize, 1),
                        parallel,
                    );
                }
                transform_output(m, outs, &t, rows, out_n);
            }
        })
    });
    out
}

/// The forward convolution (see [`applies`]): `img [batch, image, h, w]`,
/// `weight [column, image, 3, 3]`; returns `[batch, column, h, w]`.
pub(crate) fn forward<T: Scalar>(img: &[T], weight: &[T], ch: Channels, g: &Geometry) -> Vec<T> {
    let u = transform_kernel(weight, ch.column, ch.image, false);
    convolve(img, &u, ch.batch, ch.image, ch.column, Tiles::new(g.in_h, g.in_w))
}

/// The input gradient: `col [batch, column, h, w]` is the output gradient,
/// `weight [column, image, 3, 3]`; returns `[batch, image, h, w]`.
pub(crate) fn backward_image<T: Scalar>(
    col: &[T],
    weight: &[T],
    ch: Channels,
    g: &Geometry,
) -> Vec<T> {
    let u = transform_kernel(weight, ch.image, ch.column, true);
    convolve(col, &u, ch.batch, ch.column, ch.image, Tiles::new(g.in_h, g.in_w))
}

/// The weight gradient: `img [batch, image, h, w]`, `col [batch, column, h,
/// w]` the output gradient; returns `[column, image, 3, 3]`.
pub(crate) fn backward_weight<T: Scalar>(
    img: &[T],
    col: &[T],
    ch: Channels,
    g: &Geometry,
) -> Vec<T> {
    let (ins, outs) = (ch.image, ch.column);
    let t = Tiles::new(g.in_h, g.in_w);
    let size = 16 * outs * ins;
    // dU[ξ] += dM[ξ] @ V[ξ]ᵀ over the tiles of item n.
    let accumulate_item = |n: usize, du: &mut [T], parallel: bool| {
        with_scratch(t.scratch_len(ins + outs), |buf: &mut [T]| {
            let img_n = &img[n * ins * t.plane()..(n + 1) * ins * t.plane()];
            let col_n = &col[n * outs * t.plane()..(n + 1) * outs * t.plane()];
            for rows in t.blocks(ins + outs) {
                let len = rows.len() * t.cols;
                let (v, dm) = buf.split_at_mut(16 * ins * len);
                let dm = &mut dm[..16 * outs * len];
                transform_input(img_n, ins, &t, rows.clone(), v);
                transform_output_grad(col_n, outs, &t, rows, dm);
                for xi in 0..16 {
                    gemm(
                        [outs, ins, len],
                        (du[xi * outs * ins..].as_mut_ptr(), ins as isize, 1),
                        true,
                        (dm[xi * outs * len..].as_ptr(), len as isize, 1),
                        (v[xi * ins * len..].as_ptr(), 1, len as isize),
                        parallel,
                    );
                }
            }
        })
    };
    let du = super::conv_gemm::sum_over_batch(ch.batch, size, accumulate_item);
    // dg = Gᵀ dU G for every (o, i).
    let mut dw = vec![T::ZERO; outs * ins * 9];
    for o in 0..outs {
        for i in 0..ins {
            let x: [[T; 4]; 4] = core::array::from_fn(|r| {
                core::array::from_fn(|k| du[((r * 4 + k) * outs + o) * ins + i])
            });
            // Gᵀ over rows (per column), then over columns.
            let mut t = [[T::ZERO; 4]; 3];
            for k in 0..4 {
                let col = gt_rows([x[0][k], x[1][k], x[2][k], x[3][k]]);
                for r in 0..3 {
                    t[r][k] = col[r];
                }
            }
            for (r, row) in t.iter().enumerate() {
                for (k, v) in gt_rows(*row).into_iter().enumerate() {
                    dw[(o * ins + i) * 9 + r * 3 + k] = v;
                }
            }
        }
    }
    dw
}
