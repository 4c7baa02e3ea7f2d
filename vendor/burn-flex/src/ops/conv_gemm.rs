//! 2D convolution, its two gradients and the transposed convolution as
//! im2col/col2im plus one large GEMM per block of output rows (edgeseg patch,
//! see `VENDORED.md` at the crate root).
//!
//! All four operations share one geometry: an *image* side `[channels, in_h,
//! in_w]` and a *column* side `[out_h, out_w]`, linked by
//! `image_row = out_row * stride + kernel_row * dilation - pad_begin`.
//!
//! | operation | image side | column side | GEMM |
//! | --- | --- | --- | --- |
//! | conv2d forward | input | output | `out = W @ cols(input)` |
//! | conv2d weight gradient | input | output gradient | `dW += dOut @ cols(input)^T` |
//! | conv2d input gradient | input gradient | output gradient | `dInput = col2im(W^T @ dOut)` |
//! | conv_transpose2d forward | output | input | `out = col2im(W^T @ input)` |
//! | conv_transpose2d weight gradient | output gradient | input | `dW += input @ cols(dOut)^T` |
//!
//! Upstream burn-flex 0.22.1 computes the weight gradient as a convolution
//! with batch and channels swapped, the output gradient serving as a kernel
//! the size of the whole image; with a batch of 4 and 16 channels that lands
//! in its small-channel direct path and took more than half of a U-Net
//! training step. Here every operation is one GEMM with the reduction over
//! the large dimension, as PyTorch does on CPU.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::ops::conv::calculate_conv_output_size_asymmetric;
use burn_backend::ops::{ConvOptions, ConvTransposeOptions};
use burn_backend::{DType, Element};
use burn_std::{Bytes, Shape, bf16, f16};
use core::ops::{Add, AddAssign, Mul, Range, Sub};

use crate::{FlexTensor, Layout};

use super::module::{cast_from_f32, cast_to_f32};
use super::winograd;

/// Element types the kernels run on natively (`gemm` dispatches on them).
pub(crate) trait Scalar:
    Element
    + bytemuck::Pod
    + Send
    + Sync
    + AddAssign
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + PartialEq
    + core::fmt::Debug
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}

impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}

/// Elements of one im2col block (columns x rows); bounds the scratch memory
/// per worker to a few MiB while keeping the GEMMs large.
const BLOCK_ELEMS: usize = 1 << 19;

#[cfg(feature = "std")]
std::thread_local! {
    /// The im2col scratch of the kernels running on this thread (8-byte
    /// words, so it can be viewed as `f32` or `f64`).
    static SCRATCH: core::cell::Cell<Vec<u64>> = const { core::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements that is reused from call to
/// call on the same thread, so the im2col blocks are neither allocated (and
/// faulted in) nor zeroed per convolution: every user overwrites all of it.
/// A nested call (a rayon worker stealing another kernel's job while it waits)
/// finds the slot empty and allocates its own.
pub(crate) fn with_scratch<T: Scalar, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    const { assert!(core::mem::align_of::<T>() <= 8 && 8 % core::mem::size_of::<T>() == 0) };
    let words = (len * core::mem::size_of::<T>()).div_ceil(8);
    #[cfg(feature = "std")]
    let mut buf = SCRATCH.with(|slot| slot.take());
    #[cfg(not(feature = "std"))]
    let mut buf = Vec::new();
    if buf.len() < words {
        buf.resize(words, 0);
    }
    let out = f(&mut bytemuck::cast_slice_mut::<u64, T>(&mut buf[..words])[..len]);
    #[cfg(feature = "std")]
    SCRATCH.with(|slot| {
        let other = slot.take();
        slot.set(if other.len() > buf.len() { other } else { buf });
    });
    out
}

/// How the image side and the column side of a convolution line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Image-side height.
    pub in_h: usize,
    /// Image-side width.
    pub in_w: usize,
    /// Column-side height.
    pub out_h: usize,
    /// Column-side width.
    pub out_w: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (column side to image side).
    pub stride: [usize; 2],
    /// Padding before the first image row and column.
    pub pad: [usize; 2],
    /// Kernel dilation.
    pub dilation: [usize; 2],
}

impl Geometry {
    fn kernel_area(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Column-side indices `o` for which `o * stride + k * dilation - pad`
    /// falls inside `0..size` on axis `axis`.
    fn valid(&self, axis: usize, k: usize, size: usize, out: usize) -> Range<usize> {
        let shift = (k * self.dilation[axis]) as isize - self.pad[axis] as isize;
        let s = self.stride[axis] as isize;
        // smallest o >= 0 with o * s + shift >= 0
        let lo = if shift >= 0 {
            0
        } else {
            ((-shift) + s - 1) / s
        };
        // smallest o with o * s + shift >= size
        let hi = (size as isize - shift + s - 1).div_euclid(s).max(0);
        let lo = (lo as usize).min(out);
        let hi = (hi as usize).min(out);
        lo..hi.max(lo)
    }

    /// Output rows per block so that one block of columns stays near
    /// [`BLOCK_ELEMS`].
    fn block_rows(&self, col_rows: usize) -> usize {
        (BLOCK_ELEMS / (col_rows * self.out_w).max(1)).clamp(1, self.out_h.max(1))
    }

    /// Elements of the im2col scratch for blocks of `block_rows(col_rows)`
    /// output rows; none for a 1x1 stride-1 convolution, which reads the image
    /// in place.
    fn scratch_len(&self, col_rows: usize) -> usize {
        if self.is_identity() {
            0
        } else {
            col_rows * self.block_rows(col_rows) * self.out_w
        }
    }

    fn is_identity(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.in_h == self.out_h
            && self.in_w == self.out_w
    }
}

/// Copies the patches of `channels` image planes that output rows `rows`
/// read into `cols`, laid out `[channels * kh * kw, rows.len() * out_w]`.
fn im2col<T: Scalar>(img: &[T], channels: usize, g: &Geometry, rows: Range<usize>, cols: &mut [T]) {
    let len = rows.len() * g.out_w;
    let [kh, kw] = g.kernel;
    let mut r = 0;
    for c in 0..channels {
        let plane = &img[c * g.in_plane()..(c + 1) * g.in_plane()];
        for i in 0..kh {
            let valid_rows = g.valid(0, i, g.in_h, g.out_h);
            for j in 0..kw {
                let dst = &mut cols[r * len..(r + 1) * len];
                r += 1;
                let valid = g.valid(1, j, g.in_w, g.out_w);
                let shift = (j * g.dilation[1]) as isize - g.pad[1] as isize;
                for (local, oh) in rows.clone().enumerate() {
                    let d = &mut dst[local * g.out_w..(local + 1) * g.out_w];
                    if !valid_rows.contains(&oh) || valid.is_empty() {
                        d.fill(T::ZERO);
                        continue;
                    }
                    let ih = oh * g.stride[0] + i * g.dilation[0] - g.pad[0];
                    let src = &plane[ih * g.in_w..(ih + 1) * g.in_w];
                    d[..valid.start].fill(T::ZERO);
                    d[valid.end..].fill(T::ZERO);
                    let first = (valid.start as isize * g.stride[1] as isize + shift) as usize;
                    if g.stride[1] == 1 {
                        d[valid.clone()].copy_from_slice(&src[first..first + valid.len()]);
                    } else {
                        for (k, v) in d[valid.clone()].iter_mut().enumerate() {
                            *v = src[first + k * g.stride[1]];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the image
/// pixel it was read from.
fn col2im<T: Scalar>(cols: &[T], channels: usize, g: &Geometry, rows: Range<usize>, img: &mut [T]) {
    let len = rows.len() * g.out_w;
    let [kh, kw] = g.kernel;
    let mut r = 0;
    for c in 0..channels {
        let plane = &mut img[c * g.in_plane()..(c + 1) * g.in_plane()];
        for i in 0..kh {
            let valid_rows = g.valid(0, i, g.in_h, g.out_h);
            for j in 0..kw {
                let src = &cols[r * len..(r + 1) * len];
                r += 1;
                let valid = g.valid(1, j, g.in_w, g.out_w);
                if valid.is_empty() {
                    continue;
                }
                let shift = (j * g.dilation[1]) as isize - g.pad[1] as isize;
                for (local, oh) in rows.clone().enumerate() {
                    if !valid_rows.contains(&oh) {
                        continue;
                    }
                    let s = &src[local * g.out_w..(local + 1) * g.out_w];
                    let ih = oh * g.stride[0] + i * g.dilation[0] - g.pad[0];
                    let dst = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                    let first = (valid.start as isize * g.stride[1] as isize + shift) as usize;
                    if g.stride[1] == 1 {
                        let d = &mut dst[first..first + valid.len()];
                        for (d, &v) in d.iter_mut().zip(&s[valid.clone()]) {
                            *d += v;
                        }
                    } else {
                        for (k, &v) in s[valid.clone()].iter().enumerate() {
                            dst[first + k * g.stride[1]] += v;
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) @ rhs (k x n)`, every operand given by
/// pointer and (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Scalar>(
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    parallel: bool,
) {
    let parallelism = if parallel {
        #[cfg(feature = "rayon")]
        {
            gemm::Parallelism::Rayon(0)
        }
        #[cfg(not(feature = "rayon"))]
        {
            gemm::Parallelism::None
        }
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every caller passes pointers into live slices whose extents
    // cover `m x n`, `m x k` and `k x n` elements at the given strides (the
    // callers index the same slices safely when building them), and `dst`
    // does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `f(n, chunk)` over the batch, in parallel across batch items when
/// the batch can keep every thread busy; otherwise batch items run one after
/// the other and `f` is told to let its GEMMs use the threads.
pub(crate) fn for_each_item<T: Scalar>(
    out: &mut [T],
    batch: usize,
    f: impl Fn(usize, &mut [T], bool) + Send + Sync,
) {
    if out.is_empty() {
        return;
    }
    let item = out.len() / batch;
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        if batch >= rayon::current_num_threads() {
            out.par_chunks_mut(item)
                .enumerate()
                .for_each(|(n, chunk)| f(n, chunk, false));
            return;
        }
    }
    for (n, chunk) in out.chunks_mut(item).enumerate() {
        f(n, chunk, true);
    }
}

/// Shapes of a grouped convolution seen from its image side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channels {
    /// Batch size.
    pub batch: usize,
    /// Image-side channels (all groups).
    pub image: usize,
    /// Column-side channels (all groups).
    pub column: usize,
    /// Groups.
    pub groups: usize,
}

impl Channels {
    fn image_per_group(&self) -> usize {
        self.image / self.groups
    }

    fn column_per_group(&self) -> usize {
        self.column / self.groups
    }
}

/// Column-side values from the image side: `col[n, o, ...] = Σ W[o, c, i, j]
/// · img[n, c, ...]` (the forward convolution). `weight` is `[column,
/// image/groups, kh, kw]`; returns `[batch, column, out_h, out_w]`.
pub(crate) fn forward<T: Scalar>(img: &[T], weight: &[T], ch: Channels, g: &Geometry) -> Vec<T> {
    let cig = ch.image_per_group();
    let cog = ch.column_per_group();
    let ckk = cig * g.kernel_area();
    let mut out = vec![T::ZERO; ch.batch * ch.column * g.out_plane()];
    let rows_per_block = g.block_rows(ckk);
    let scratch = g.scratch_len(ckk);
    for_each_item(&mut out, ch.batch, |n, out_n, parallel| {
        with_scratch(scratch, |cols: &mut [T]| {
            let img_n = &img[n * ch.image * g.in_plane()..(n + 1) * ch.image * g.in_plane()];
            for grp in 0..ch.groups {
                let img_g = &img_n[grp * cig * g.in_plane()..(grp + 1) * cig * g.in_plane()];
                let w_g = &weight[grp * cog * ckk..(grp + 1) * cog * ckk];
                let out_g = &mut out_n[grp * cog * g.out_plane()..(grp + 1) * cog * g.out_plane()];
                let mut oh = 0;
                while oh < g.out_h {
                    let rows = oh..(oh + rows_per_block).min(g.out_h);
                    let len = rows.len() * g.out_w;
                    let src: &[T] = if g.is_identity() {
                        &img_g[rows.start * g.out_w..]
                    } else {
                        im2col(img_g, cig, g, rows.clone(), &mut cols[..ckk * len]);
                        cols
                    };
                    let src_rs = if g.is_identity() { g.in_plane() } else { len };
                    gemm(
                        [cog, len, ckk],
                        (
                            out_g[rows.start * g.out_w..].as_mut_ptr(),
                            g.out_plane() as isize,
                            1,
                        ),
                        false,
                        (w_g.as_ptr(), ckk as isize, 1),
                        (src.as_ptr(), src_rs as isize, 1),
                        parallel,
                    );
                    oh = rows.end;
                }
            }
        })
    });
    out
}

/// Image-side values from the column side, the adjoint of [`forward`]: the
/// input gradient of a convolution, or a transposed convolution. `weight`
/// is `[column, image/groups, kh, kw]`; `col` is `[batch, column, out_h,
/// out_w]`; returns `[batch, image, in_h, in_w]`.
pub(crate) fn backward_image<T: Scalar>(
    col: &[T],
    weight: &[T],
    ch: Channels,
    g: &Geometry,
) -> Vec<T> {
    let cig = ch.image_per_group();
    let cog = ch.column_per_group();
    let ckk = cig * g.kernel_area();
    let mut out = vec![T::ZERO; ch.batch * ch.image * g.in_plane()];
    let rows_per_block = g.block_rows(ckk);
    let identity = g.is_identity();
    let scratch = g.scratch_len(ckk);
    for_each_item(&mut out, ch.batch, |n, img_n, parallel| {
        with_scratch(scratch, |cols: &mut [T]| {
            let col_n = &col[n * ch.column * g.out_plane()..(n + 1) * ch.column * g.out_plane()];
            for grp in 0..ch.groups {
                let img_g = &mut img_n[grp * cig * g.in_plane()..(grp + 1) * cig * g.in_plane()];
                let w_g = &weight[grp * cog * ckk..(grp + 1) * cog * ckk];
                let col_g = &col_n[grp * cog * g.out_plane()..(grp + 1) * cog * g.out_plane()];
                if identity {
                    // 1x1, stride 1: the GEMM writes the image directly.
                    gemm(
                        [ckk, g.out_plane(), cog],
                        (img_g.as_mut_ptr(), g.in_plane() as isize, 1),
                        false,
                        (w_g.as_ptr(), 1, ckk as isize),
                        (col_g.as_ptr(), g.out_plane() as isize, 1),
                        parallel,
                    );
                    continue;
                }
                let mut oh = 0;
                while oh < g.out_h {
                    let rows = oh..(oh + rows_per_block).min(g.out_h);
                    let len = rows.len() * g.out_w;
                    let cols = &mut cols[..ckk * len];
                    gemm(
                        [ckk, len, cog],
                        (cols.as_mut_ptr(), len as isize, 1),
                        false,
                        (w_g.as_ptr(), 1, ckk as isize),
                        (
                            col_g[rows.start * g.out_w..].as_ptr(),
                            g.out_plane() as isize,
                            1,
                        ),
                        parallel,
                    );
                    col2im(cols, cig, g, rows.clone(), img_g);
                    oh = rows.end;
                }
            }
        })
    });
    out
}

/// The weight gradient: `dW[o, c, i, j] = Σ_n Σ_(y,x) col[n, o, y, x] ·
/// img[n, c, y·s + i·d − p, x·s + j·d − p]`. Returns `[column, image/groups,
/// kh, kw]`.
pub(crate) fn backward_weight<T: Scalar>(
    img: &[T],
    col: &[T],
    ch: Channels,
    g: &Geometry,
) -> Vec<T> {
    let cig = ch.image_per_group();
    let cog = ch.column_per_group();
    let ckk = cig * g.kernel_area();
    let rows_per_block = g.block_rows(ckk);
    let size = ch.column * ckk;
    let scratch = g.scratch_len(ckk);
    let accumulate_item = |n: usize, acc: &mut [T], parallel: bool| {
        with_scratch(scratch, |cols: &mut [T]| {
            let img_n = &img[n * ch.image * g.in_plane()..(n + 1) * ch.image * g.in_plane()];
            let col_n = &col[n * ch.column * g.out_plane()..(n + 1) * ch.column * g.out_plane()];
            for grp in 0..ch.groups {
                let img_g = &img_n[grp * cig * g.in_plane()..(grp + 1) * cig * g.in_plane()];
                let col_g = &col_n[grp * cog * g.out_plane()..(grp + 1) * cog * g.out_plane()];
                let acc_g = &mut acc[grp * cog * ckk..(grp + 1) * cog * ckk];
                let mut oh = 0;
                while oh < g.out_h {
                    let rows = oh..(oh + rows_per_block).min(g.out_h);
                    let len = rows.len() * g.out_w;
                    let (src, src_rs): (&[T], usize) = if g.is_identity() {
                        (&img_g[rows.start * g.out_w..], g.in_plane())
                    } else {
                        im2col(img_g, cig, g, rows.clone(), &mut cols[..ckk * len]);
                        (&*cols, len)
                    };
                    gemm(
                        [cog, ckk, len],
                        (acc_g.as_mut_ptr(), ckk as isize, 1),
                        true,
                        (
                            col_g[rows.start * g.out_w..].as_ptr(),
                            g.out_plane() as isize,
                            1,
                        ),
                        (src.as_ptr(), 1, src_rs as isize),
                        parallel,
                    );
                    oh = rows.end;
                }
            }
        })
    };
    sum_over_batch(ch.batch, size, accumulate_item)
}

/// `Σ_n acc_n` where `accumulate(n, acc, parallel)` adds item `n`'s share
/// into `acc` (`size` elements): one accumulator per worker when the batch
/// can keep every thread busy, otherwise one accumulator and parallel GEMMs.
pub(crate) fn sum_over_batch<T: Scalar>(
    batch: usize,
    size: usize,
    accumulate: impl Fn(usize, &mut [T], bool) + Send + Sync,
) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        if batch >= rayon::current_num_threads() {
            return (0..batch)
                .into_par_iter()
                .fold(
                    || vec![T::ZERO; size],
                    |mut acc, n| {
                        accumulate(n, &mut acc, false);
                        acc
                    },
                )
                .reduce_with(|mut a, b| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                    a
                })
                .unwrap_or_else(|| vec![T::ZERO; size]);
        }
    }
    let mut acc = vec![T::ZERO; size];
    for n in 0..batch {
        accumulate(n, &mut acc, true);
    }
    acc
}

/// Which of the three kernels to run.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    /// [`forward`]: `a` image, `b` weight.
    Forward,
    /// [`backward_image`]: `a` column side, `b` weight.
    Image,
    /// [`backward_weight`]: `a` image, `b` column side.
    Weight,
}

fn run_typed<T: Scalar>(
    kernel: Kernel,
    a: FlexTensor,
    b: FlexTensor,
    ch: Channels,
    g: &Geometry,
    shape: Shape,
) -> FlexTensor {
    let (a, b) = (a.to_contiguous(), b.to_contiguous());
    let (a, b): (&[T], &[T]) = (a.storage(), b.storage());
    let winograd = winograd::applies(&ch, g);
    let out = match kernel {
        Kernel::Forward if winograd => winograd::forward(a, b, ch, g),
        Kernel::Image if winograd => winograd::backward_image(a, b, ch, g),
        Kernel::Weight if winograd => winograd::backward_weight(a, b, ch, g),
        Kernel::Forward => forward(a, b, ch, g),
        Kernel::Image => backward_image(a, b, ch, g),
        Kernel::Weight => backward_weight(a, b, ch, g),
    };
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        T::dtype(),
    )
}

/// Runs `kernel` in the tensors' own precision (f32, f64) or through f32
/// (f16, bf16).
fn run(
    kernel: Kernel,
    a: FlexTensor,
    b: FlexTensor,
    ch: Channels,
    g: &Geometry,
    shape: [usize; 4],
) -> FlexTensor {
    let shape = Shape::from(shape.to_vec());
    match a.dtype() {
        DType::F32 => run_typed::<f32>(kernel, a, b, ch, g, shape),
        DType::F64 => run_typed::<f64>(kernel, a, b, ch, g, shape),
        DType::F16 => cast_from_f32(
            run_typed::<f32>(
                kernel,
                cast_to_f32(a, f16::to_f32),
                cast_to_f32(b, f16::to_f32),
                ch,
                g,
                shape,
            ),
            f16::from_f32,
        ),
        DType::BF16 => cast_from_f32(
            run_typed::<f32>(
                kernel,
                cast_to_f32(a, bf16::to_f32),
                cast_to_f32(b, bf16::to_f32),
                ch,
                g,
                shape,
            ),
            bf16::from_f32,
        ),
        dtype => panic!("conv2d: unsupported dtype {dtype:?}"),
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

fn conv_geometry(
    img: [usize; 4],
    weight: [usize; 4],
    col_hw: [usize; 2],
    options: &ConvOptions<2>,
) -> Geometry {
    Geometry {
        in_h: img[2],
        in_w: img[3],
        out_h: col_hw[0],
        out_w: col_hw[1],
        kernel: [weight[2], weight[3]],
        stride: options.stride,
        pad: options.padding_begin(),
        dilation: options.dilation,
    }
}

/// Output height and width of a convolution (padding may be asymmetric).
fn conv_output_hw(x: [usize; 4], w: [usize; 4], options: &ConvOptions<2>) -> [usize; 2] {
    core::array::from_fn(|a| {
        calculate_conv_output_size_asymmetric(
            w[2 + a],
            options.stride[a],
            options.padding[a],
            options.dilation[a],
            x[2 + a],
        )
    })
}

/// 2D convolution without bias: `x [n, c_in, h, w]`, `weight [c_out,
/// c_in/groups, kh, kw]`.
pub fn conv2d(x: FlexTensor, weight: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
    let (xd, wd) = (dims4(&x), dims4(&weight));
    let out_hw = conv_output_hw(xd, wd, options);
    let ch = Channels {
        batch: xd[0],
        image: xd[1],
        column: wd[0],
        groups: options.groups,
    };
    let g = conv_geometry(xd, wd, out_hw, options);
    run(
        Kernel::Forward,
        x,
        weight,
        ch,
        &g,
        [xd[0], wd[0], out_hw[0], out_hw[1]],
    )
}

/// Gradient of [`conv2d`] with respect to `x`.
pub fn conv2d_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (xd, wd, od) = (dims4(&x), dims4(&weight), dims4(&output_grad));
    let ch = Channels {
        batch: xd[0],
        image: xd[1],
        column: wd[0],
        groups: options.groups,
    };
    let g = conv_geometry(xd, wd, [od[2], od[3]], options);
    run(Kernel::Image, output_grad, weight, ch, &g, xd)
}

/// Gradient of [`conv2d`] with respect to `weight`.
pub fn conv2d_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (xd, wd, od) = (dims4(&x), dims4(&weight), dims4(&output_grad));
    let ch = Channels {
        batch: xd[0],
        image: xd[1],
        column: wd[0],
        groups: options.groups,
    };
    let g = conv_geometry(xd, wd, [od[2], od[3]], options);
    run(Kernel::Weight, x, output_grad, ch, &g, wd)
}

fn transposed_geometry(
    img_hw: [usize; 2],
    x: [usize; 4],
    w: [usize; 4],
    options: &ConvTransposeOptions<2>,
) -> Geometry {
    Geometry {
        in_h: img_hw[0],
        in_w: img_hw[1],
        out_h: x[2],
        out_w: x[3],
        kernel: [w[2], w[3]],
        stride: options.stride,
        pad: options.padding,
        dilation: options.dilation,
    }
}

/// 2D transposed convolution without bias: `x [n, c_in, h, w]`, `weight
/// [c_in, c_out/groups, kh, kw]`.
pub fn conv_transpose2d(
    x: FlexTensor,
    weight: FlexTensor,
    options: &ConvTransposeOptions<2>,
) -> FlexTensor {
    let (xd, wd) = (dims4(&x), dims4(&weight));
    let out_hw: [usize; 2] = core::array::from_fn(|a| {
        (xd[2 + a] - 1) * options.stride[a]
            + options.dilation[a] * (wd[2 + a] - 1)
            + options.padding_out[a]
            + 1
            - 2 * options.padding[a]
    });
    let c_out = wd[1] * options.groups;
    let ch = Channels {
        batch: xd[0],
        image: c_out,
        column: xd[1],
        groups: options.groups,
    };
    let g = transposed_geometry(out_hw, xd, wd, options);
    run(
        Kernel::Image,
        x,
        weight,
        ch,
        &g,
        [xd[0], c_out, out_hw[0], out_hw[1]],
    )
}

/// Gradient of [`conv_transpose2d`] with respect to `weight`.
pub fn conv_transpose2d_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvTransposeOptions<2>,
) -> FlexTensor {
    let (xd, wd, od) = (dims4(&x), dims4(&weight), dims4(&output_grad));
    let ch = Channels {
        batch: xd[0],
        image: od[1],
        column: xd[1],
        groups: options.groups,
    };
    let g = transposed_geometry([od[2], od[3]], xd, wd, options);
    run(Kernel::Weight, output_grad, x, ch, &g, wd)
}
