//! Batch normalisation as one pass for the statistics and one for the output
//! (edgeseg patch, see `VENDORED.md` at the crate root).
//!
//! Burn's generic `batch_norm_train` and its backward build the per-channel
//! sums out of `swap_dims` + `reshape` (a full copy of the activation each
//! time) and five broadcast element-wise operations; these kernels read the
//! activation in place, one channel plane at a time.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape, bf16, f16};

use crate::{FlexTensor, Layout};

use super::conv_gemm::Scalar;
use super::module::{cast_from_f32, cast_to_f32};

/// Arithmetic and conversions the kernels need beyond [`Scalar`].
pub(crate) trait Float:
    Scalar
    + core::ops::Add<Output = Self>
    + core::ops::Sub<Output = Self>
    + core::ops::Mul<Output = Self>
{
    fn from_f64(v: f64) -> Self;
}

impl Float for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Float for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// `[batch, channels, spatial]` of a `[batch, channels, ...]` tensor.
fn dims(x: &FlexTensor) -> [usize; 3] {
    let s = x.layout().shape();
    let (n, c) = (s[0], s[1]);
    let spatial = s.iter().skip(2).product();
    [n, c, spatial]
}

/// `f(c)` for every channel, in parallel when rayon is on.
fn per_channel<R: Send>(channels: usize, f: impl Fn(usize) -> R + Send + Sync) -> Vec<R> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        (0..channels).map(f).collect()
    }
}

/// `f(c, plane)` for every `(n, c)` plane of `out`, in parallel.
fn per_plane<T: Send>(
    out: &mut [T],
    channels: usize,
    spatial: usize,
    f: impl Fn(usize, usize, &mut [T]) + Send + Sync,
) {
    if spatial == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(spatial)
            .enumerate()
            .for_each(|(p, plane)| f(p, p % channels, plane));
    }
    #[cfg(not(feature = "rayon"))]
    {
        for (p, plane) in out.chunks_mut(spatial).enumerate() {
            f(p, p % channels, plane);
        }
    }
}

/// Elements summed in `T` (in eight independent lanes, so the loop
/// vectorises) before the partial sum is added to the f64 total.
const CHUNK: usize = 1024;

/// `Σ f(a[i], b[i])` over a slice pair, accumulated as described at [`CHUNK`].
#[inline(always)]
fn reduce<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> f64 {
    let mut total = 0.0;
    for (a, b) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
        let mut lanes = [T::ZERO; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ar, br) = (a8.remainder(), b8.remainder());
        for (a, b) in a8.zip(b8) {
            for k in 0..8 {
                lanes[k] += f(a[k], b[k]);
            }
        }
        for (&a, &b) in ar.iter().zip(br) {
            lanes[0] += f(a, b);
        }
        total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    total
}

/// `Σ f(a, b)` over channel `ch` of two `[n, c, s]` arrays.
fn channel_reduce<T: Float>(
    a: &[T],
    b: &[T],
    [n, c, s]: [usize; 3],
    ch: usize,
    f: impl Fn(T, T) -> T + Copy,
) -> f64 {
    (0..n)
        .map(|batch| {
            let r = (batch * c + ch) * s..(batch * c + ch + 1) * s;
            reduce(&a[r.clone()], &b[r], f)
        })
        .sum()
}

fn tensor<T: Float>(data: Vec<T>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        T::dtype(),
    )
}

fn vector<T: Float>(values: impl IntoIterator<Item = f64>) -> FlexTensor {
    let data: Vec<T> = values.into_iter().map(T::from_f64).collect();
    let len = data.len();
    tensor(data, Shape::new([len]))
}

fn f64s<T: Float>(t: &FlexTensor) -> Vec<f64> {
    t.to_contiguous()
        .storage::<T>()
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

/// `1 / sqrt(var + eps)` per channel.
fn inv_std(var: &[f64], eps: f64) -> Vec<f64> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

/// Normalises with given statistics: `(x - mean) / sqrt(var + eps) * gamma + beta`.
fn apply<T: Float>(
    x: &[T],
    d: [usize; 3],
    shape: Shape,
    mean: &[f64],
    inv_std: &[f64],
    gamma: &[f64],
    beta: &[f64],
) -> FlexTensor {
    let [_, c, s] = d;
    let mut out = vec![T::ZERO; x.len()];
    per_plane(&mut out, c, s, |p, ch, plane| {
        let scale = gamma[ch] * inv_std[ch];
        let shift = beta[ch] - mean[ch] * scale;
        let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
        for (o, &v) in plane.iter_mut().zip(&x[p * s..(p + 1) * s]) {
            *o = v * scale + shift;
        }
    });
    tensor(out, shape)
}

fn inference_typed<T: Float>(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    eps: f64,
) -> FlexTensor {
    let x = x.to_contiguous();
    let d = dims(&x);
    apply(
        x.storage::<T>(),
        d,
        x.layout().shape().clone(),
        &f64s::<T>(&mean),
        &inv_std(&f64s::<T>(&var), eps),
        &f64s::<T>(&gamma),
        &f64s::<T>(&beta),
    )
}

fn train_typed<T: Float>(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    eps: f64,
) -> [FlexTensor; 3] {
    let x = x.to_contiguous();
    let d = dims(&x);
    let [n, c, s] = d;
    let count = (n * s).max(1) as f64;
    let data = x.storage::<T>();
    let stats = per_channel(c, |ch| {
        let mean = channel_reduce(data, data, d, ch, |v, _| v) / count;
        let m = T::from_f64(mean);
        // Two passes: the variance of the centred values, as Burn does.
        let var = channel_reduce(data, data, d, ch, |v, _| (v - m) * (v - m)) / count;
        (mean, var)
    });
    let mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
    let var: Vec<f64> = stats.iter().map(|s| s.1).collect();
    let out = apply(
        data,
        d,
        x.layout().shape().clone(),
        &mean,
        &inv_std(&var, eps),
        &f64s::<T>(&gamma),
        &f64s::<T>(&beta),
    );
    [out, vector::<T>(mean), vector::<T>(var)]
}

fn train_backward_typed<T: Float>(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    eps: f64,
    grad: FlexTensor,
) -> [FlexTensor; 3] {
    let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
    let d = dims(&x);
    let [n, c, s] = d;
    let count = (n * s).max(1) as f64;
    let (xs, gs) = (x.storage::<T>(), grad.storage::<T>());
    let mean = f64s::<T>(&mean);
    let inv_std = inv_std(&f64s::<T>(&var), eps);
    let gamma = f64s::<T>(&gamma);
    // Per channel: Σ dy and Σ dy · x̂.
    let sums = per_channel(c, |ch| {
        let sum_dy = channel_reduce(gs, gs, d, ch, |g, _| g);
        let m = T::from_f64(mean[ch]);
        let sum_dy_centred = channel_reduce(gs, xs, d, ch, |g, v| g * (v - m));
        (sum_dy, sum_dy_centred * inv_std[ch])
    });
    // dx = γ·σ⁻¹·(dy − Σdy/M − x̂·Σ(dy·x̂)/M), as  a·dy + b·x + k  per channel.
    let mut dx = vec![T::ZERO; xs.len()];
    per_plane(&mut dx, c, s, |p, ch, plane| {
        let (sum_dy, sum_dy_xhat) = sums[ch];
        let a = gamma[ch] * inv_std[ch];
        let b = -a * inv_std[ch] * sum_dy_xhat / count;
        let k = -a * sum_dy / count - b * mean[ch];
        let (a, b, k) = (T::from_f64(a), T::from_f64(b), T::from_f64(k));
        let range = p * s..(p + 1) * s;
        for ((o, &g), &v) in plane.iter_mut().zip(&gs[range.clone()]).zip(&xs[range]) {
            *o = a * g + b * v + k;
        }
    });
    [
        tensor(dx, x.layout().shape().clone()),
        vector::<T>(sums.iter().map(|s| s.1)),
        vector::<T>(sums.iter().map(|s| s.0)),
    ]
}

fn channel_sum_typed<T: Float>(x: FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let d = dims(&x);
    let data = x.storage::<T>();
    vector::<T>(per_channel(d[1], |ch| {
        channel_reduce(data, data, d, ch, |v, _| v)
    }))
}

/// Runs `on_f32` or `on_f64` on `inputs` by the first input's type; the half
/// types go through `on_f32`, converted in and the outputs converted back.
fn dispatch<const I: usize, const O: usize>(
    op: &str,
    inputs: [FlexTensor; I],
    on_f32: impl FnOnce([FlexTensor; I]) -> [FlexTensor; O],
    on_f64: impl FnOnce([FlexTensor; I]) -> [FlexTensor; O],
) -> [FlexTensor; O] {
    match inputs[0].dtype() {
        DType::F32 => on_f32(inputs),
        DType::F64 => on_f64(inputs),
        DType::F16 => on_f32(inputs.map(|t| cast_to_f32(t, f16::to_f32)))
            .map(|t| cast_from_f32(t, f16::from_f32)),
        DType::BF16 => on_f32(inputs.map(|t| cast_to_f32(t, bf16::to_f32)))
            .map(|t| cast_from_f32(t, bf16::from_f32)),
        dtype => panic!("{op}: unsupported dtype {dtype:?}"),
    }
}

/// The sum of a `[batch, channels, ...]` tensor over every axis but the
/// channels: the gradient of a per-channel bias. Burn's generic version
/// copies the tensor into `[channels, rest]` first.
pub fn channel_sum(x: FlexTensor) -> FlexTensor {
    let [sum] = dispatch(
        "channel_sum",
        [x],
        |[x]| [channel_sum_typed::<f32>(x)],
        |[x]| [channel_sum_typed::<f64>(x)],
    );
    sum
}

/// Batch normalisation with given statistics (inference).
pub fn batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    eps: f64,
) -> FlexTensor {
    let [out] = dispatch(
        "batch_norm",
        [x, gamma, beta, mean, var],
        |[x, g, b, m, v]| [inference_typed::<f32>(x, g, b, m, v, eps)],
        |[x, g, b, m, v]| [inference_typed::<f64>(x, g, b, m, v, eps)],
    );
    out
}

/// Batch normalisation with the batch's statistics: `[output, mean, variance]`.
pub fn batch_norm_train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    eps: f64,
) -> [FlexTensor; 3] {
    dispatch(
        "batch_norm_train",
        [x, gamma, beta],
        |[x, g, b]| train_typed::<f32>(x, g, b, eps),
        |[x, g, b]| train_typed::<f64>(x, g, b, eps),
    )
}

/// Gradients of [`batch_norm_train`]: `[x_grad, gamma_grad, beta_grad]`.
pub fn batch_norm_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    eps: f64,
    grad: FlexTensor,
) -> [FlexTensor; 3] {
    dispatch(
        "batch_norm_train_backward",
        [x, gamma, mean, var, grad],
        |[x, g, m, v, dy]| train_backward_typed::<f32>(x, g, m, v, eps, dy),
        |[x, g, m, v, dy]| train_backward_typed::<f64>(x, g, m, v, eps, dy),
    )
}
