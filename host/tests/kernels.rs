//! The kernels training runs on (the patched burn-flex in `vendor/burn-flex`)
//! against their definitions, forward and gradients, through Burn's autodiff
//! exactly as a training step calls them: convolutions as im2col/col2im + GEMM
//! and the fused batch normalisation.
//!
//! Convolutions: Shapes cover what the models use (3x3 same
//! padding, the 7x7/2 LinkNet stem, 1x1, 2x2/2 and 3x3/2 transposed) and the
//! awkward cases (groups, dilation, odd sizes, asymmetric padding, batch 1
//! and batches larger than the thread count).

use burn::prelude::*;
use burn::tensor::module::{batch_norm, batch_norm_train, conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}

/// One convolution case: `x [n, c_in, h, w]`, weight `[c_out, c_in/groups,
/// kh, kw]`, padding `(begin, end)` per axis.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
}

impl Case {
    fn out_hw(&self) -> [usize; 2] {
        std::array::from_fn(|a| {
            (self.hw[a] + self.padding[a].0 + self.padding[a].1
                - self.dilation[a] * (self.kernel[a] - 1)
                - 1)
                / self.stride[a]
                + 1
        })
    }

    /// Calls `f(n, o, c, oy, ox, iy, ix, i, j)` for every term of the sum that
    /// defines the convolution, `c` being the weight's input-channel index
    /// within the group and `ci` below the absolute input channel.
    fn for_each_term(&self, mut f: impl FnMut([usize; 4], usize, [usize; 4])) {
        let [oh, ow] = self.out_hw();
        let cig = self.c_in / self.groups;
        let cog = self.c_out / self.groups;
        for n in 0..self.n {
            for o in 0..self.c_out {
                for c in 0..cig {
                    let ci = (o / cog) * cig + c;
                    for y in 0..oh {
                        for x in 0..ow {
                            for i in 0..self.kernel[0] {
                                for j in 0..self.kernel[1] {
                                    let iy = (y * self.stride[0] + i * self.dilation[0]) as isize
                                        - self.padding[0].0 as isize;
                                    let ix = (x * self.stride[1] + j * self.dilation[1]) as isize
                                        - self.padding[1].0 as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= self.hw[0] as isize
                                        || ix >= self.hw[1] as isize
                                    {
                                        continue;
                                    }
                                    f(
                                        [n, o, y, x],
                                        ci,
                                        [c, i, j, iy as usize * self.hw[1] + ix as usize],
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A 3x3 'same' convolution, stride 1, one group.
fn same3x3(n: usize, c_in: usize, c_out: usize, hw: [usize; 2]) -> Case {
    Case {
        n,
        c_in,
        c_out,
        hw,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [(1, 1); 2],
        dilation: [1, 1],
        groups: 1,
    }
}

#[test]
fn conv2d_forward_and_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    let same = |k: usize| [(k / 2, k / 2); 2];
    let cases = [
        // U-Net level: 3x3 same, batch 4 with 16 channels (the shape that
        // used to fall into burn-flex's small-channel path)
        same3x3(4, 16, 16, [12, 10]),
        // Winograd F(2x2, 3x3) path (3x3 same, 16+ channels on both sides,
        // 64+ 2x2 tiles per image): odd sizes (a half tile at the bottom and
        // right edges), unequal channels, batch below and above the thread
        // count
        same3x3(3, 16, 24, [17, 15]),
        same3x3(1, 24, 16, [15, 18]),
        // RGB input layer, batch 1
        same3x3(1, 3, 8, [9, 11]),
        // LinkNet stem 7x7/2, odd size
        Case {
            n: 2,
            c_in: 3,
            c_out: 4,
            hw: [13, 15],
            kernel: [7, 7],
            stride: [2, 2],
            padding: same(7),
            dilation: [1, 1],
            groups: 1,
        },
        // 1x1 projection and 1x1/2 shortcut
        Case {
            n: 3,
            c_in: 6,
            c_out: 5,
            hw: [7, 8],
            kernel: [1, 1],
            stride: [1, 1],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            groups: 1,
        },
        Case {
            n: 2,
            c_in: 4,
            c_out: 6,
            hw: [7, 9],
            kernel: [1, 1],
            stride: [2, 2],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            groups: 1,
        },
        // groups, dilation, unequal strides, asymmetric padding
        Case {
            n: 5,
            c_in: 4,
            c_out: 6,
            hw: [9, 7],
            kernel: [3, 2],
            stride: [2, 1],
            padding: [(1, 0), (0, 2)],
            dilation: [1, 2],
            groups: 2,
        },
        Case {
            n: 2,
            c_in: 4,
            c_out: 4,
            hw: [8, 8],
            kernel: [3, 3],
            stride: [1, 1],
            padding: same(3),
            dilation: [2, 2],
            groups: 4,
        },
        // kernel larger than the image
        Case {
            n: 1,
            c_in: 2,
            c_out: 2,
            hw: [3, 3],
            kernel: [5, 5],
            stride: [1, 1],
            padding: same(5),
            dilation: [1, 1],
            groups: 1,
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let [oh, ow] = case.out_hw();
        let x_shape = [case.n, case.c_in, case.hw[0], case.hw[1]];
        let w_shape = [
            case.c_out,
            case.c_in / case.groups,
            case.kernel[0],
            case.kernel[1],
        ];
        let y_shape = [case.n, case.c_out, oh, ow];
        let (xv, wv) = (
            values(x_shape.iter().product(), 3 * k as u64 + 1),
            values(w_shape.iter().product(), 3 * k as u64 + 2),
        );
        let yv = values(y_shape.iter().product(), 3 * k as u64 + 3);

        let x = tensor(&xv, x_shape, &device).require_grad();
        let w = tensor(&wv, w_shape, &device).require_grad();
        let options =
            ConvOptions::new_with_padding(case.stride, case.padding, case.dilation, case.groups);
        let out = conv2d(x.clone(), w.clone(), None, options);
        assert_eq!(out.dims(), y_shape, "case {k} {case:?}: output shape");
        let loss = (out.clone() * tensor(&yv, y_shape, &device)).sum();
        let grads = loss.backward();

        let mut fwd = vec![0f64; yv.len()];
        let mut dx = vec![0f64; xv.len()];
        let mut dw = vec![0f64; wv.len()];
        let plane = case.hw[0] * case.hw[1];
        let kk = case.kernel[0] * case.kernel[1];
        case.for_each_term(|[n, o, y, x_], ci, [c, i, j, pix]| {
            let out_i = ((n * case.c_out + o) * oh + y) * ow + x_;
            let x_i = (n * case.c_in + ci) * plane + pix;
            let w_i = (o * (case.c_in / case.groups) + c) * kk + i * case.kernel[1] + j;
            fwd[out_i] += wv[w_i] as f64 * xv[x_i] as f64;
            dx[x_i] += wv[w_i] as f64 * yv[out_i] as f64;
            dw[w_i] += xv[x_i] as f64 * yv[out_i] as f64;
        });
        let what = |s: &str| format!("case {k} {case:?}: {s}");
        assert_close(&what("forward"), &to_vec(out), &fwd);
        assert_close(
            &what("input gradient"),
            &to_vec(x.grad(&grads).unwrap()),
            &dx,
        );
        assert_close(
            &what("weight gradient"),
            &to_vec(w.grad(&grads).unwrap()),
            &dw,
        );
    }
}

#[test]
fn conv_transpose2d_forward_and_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    // (n, c_in, c_out, hw, kernel, stride, padding, padding_out, dilation, groups)
    let cases = [
        // U-Net up-sampling 2x2/2, batch 4
        (4, 16, 8, [5, 6], [2, 2], [2, 2], [0, 0], [0, 0], [1, 1], 1),
        // LinkNet decoder 3x3/2, padding 1, output padding 1
        (2, 8, 4, [4, 5], [3, 3], [2, 2], [1, 1], [1, 1], [1, 1], 1),
        // groups, dilation, unequal strides
        (3, 4, 6, [3, 4], [3, 2], [1, 2], [1, 0], [0, 1], [2, 1], 2),
        // 3x3 stride 1 'same', 16+ channels, 64+ tiles: the Winograd path
        (
            2,
            16,
            20,
            [16, 15],
            [3, 3],
            [1, 1],
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        ),
        // batch 1, 1x1
        (1, 3, 2, [4, 4], [1, 1], [1, 1], [0, 0], [0, 0], [1, 1], 1),
    ];
    for (k, &(n, c_in, c_out, hw, kernel, stride, padding, padding_out, dilation, groups)) in
        cases.iter().enumerate()
    {
        let out_hw: [usize; 2] = std::array::from_fn(|a| {
            (hw[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + padding_out[a] + 1
                - 2 * padding[a]
        });
        let x_shape = [n, c_in, hw[0], hw[1]];
        let w_shape = [c_in, c_out / groups, kernel[0], kernel[1]];
        let y_shape = [n, c_out, out_hw[0], out_hw[1]];
        let xv = values(x_shape.iter().product(), 100 + k as u64);
        let wv = values(w_shape.iter().product(), 200 + k as u64);
        let yv = values(y_shape.iter().product(), 300 + k as u64);

        let x = tensor(&xv, x_shape, &device).require_grad();
        let w = tensor(&wv, w_shape, &device).require_grad();
        let options = ConvTransposeOptions::new(stride, padding, padding_out, dilation, groups);
        let out = conv_transpose2d(x.clone(), w.clone(), None, options);
        assert_eq!(out.dims(), y_shape, "case {k}: output shape");
        let loss = (out.clone() * tensor(&yv, y_shape, &device)).sum();
        let grads = loss.backward();

        let mut fwd = vec![0f64; yv.len()];
        let mut dx = vec![0f64; xv.len()];
        let mut dw = vec![0f64; wv.len()];
        let (cig, cog) = (c_in / groups, c_out / groups);
        for b in 0..n {
            for ci in 0..c_in {
                for o in 0..cog {
                    let co = (ci / cig) * cog + o;
                    for iy in 0..hw[0] {
                        for ix in 0..hw[1] {
                            for i in 0..kernel[0] {
                                for j in 0..kernel[1] {
                                    let oy = (iy * stride[0] + i * dilation[0]) as isize
                                        - padding[0] as isize;
                                    let ox = (ix * stride[1] + j * dilation[1]) as isize
                                        - padding[1] as isize;
                                    if oy < 0
                                        || ox < 0
                                        || oy >= out_hw[0] as isize
                                        || ox >= out_hw[1] as isize
                                    {
                                        continue;
                                    }
                                    let out_i = ((b * c_out + co) * out_hw[0] + oy as usize)
                                        * out_hw[1]
                                        + ox as usize;
                                    let x_i = ((b * c_in + ci) * hw[0] + iy) * hw[1] + ix;
                                    let w_i = ((ci * cog + o) * kernel[0] + i) * kernel[1] + j;
                                    fwd[out_i] += wv[w_i] as f64 * xv[x_i] as f64;
                                    dx[x_i] += wv[w_i] as f64 * yv[out_i] as f64;
                                    dw[w_i] += xv[x_i] as f64 * yv[out_i] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let what = |s: &str| format!("transposed case {k}: {s}");
        assert_close(&what("forward"), &to_vec(out), &fwd);
        assert_close(
            &what("input gradient"),
            &to_vec(x.grad(&grads).unwrap()),
            &dx,
        );
        assert_close(
            &what("weight gradient"),
            &to_vec(w.grad(&grads).unwrap()),
            &dw,
        );
    }
}

/// A bias is added per output channel, and its gradient is the output
/// gradient summed over batch and image, for both convolutions.
#[test]
fn conv_bias_is_added_per_channel_and_its_gradient_is_the_channel_sum() {
    let device = Device::flex().autodiff();
    let bias_values = [1.0f32, -2.0, 3.0, 0.5];
    let x = tensor(&values(2 * 3 * 5 * 5, 7), [2, 3, 5, 5], &device);
    for transposed in [false, true] {
        let bias = tensor(&bias_values, [4], &device).require_grad();
        let run = |bias: Option<Tensor<1>>| {
            if transposed {
                let w = tensor(&values(3 * 4 * 2 * 2, 9), [3, 4, 2, 2], &device);
                let options = ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
                conv_transpose2d(x.clone(), w, bias, options)
            } else {
                let w = tensor(&values(4 * 3 * 3 * 3, 8), [4, 3, 3, 3], &device);
                conv2d(
                    x.clone(),
                    w,
                    bias,
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                )
            }
        };
        let with = run(Some(bias.clone()));
        let dims = with.dims();
        let plane = dims[2] * dims[3];
        let r = values(dims.iter().product(), 10);
        let grads = (with.clone() * tensor(&r, dims, &device)).sum().backward();
        let (with, without) = (to_vec(with), to_vec(run(None)));
        let mut want_grad = [0f64; 4];
        for (i, (a, b)) in with.iter().zip(&without).enumerate() {
            let c = (i / plane) % 4;
            want_grad[c] += r[i] as f64;
            assert!(
                (a - b - bias_values[c]).abs() < 1e-5,
                "transposed {transposed}, element {i}: {a} - {b} != {}",
                bias_values[c]
            );
        }
        assert_close(
            &format!("transposed {transposed}: bias gradient"),
            &to_vec(bias.grad(&grads).unwrap()),
            &want_grad,
        );
    }
}

/// Batch normalisation with the batch's statistics against its definition:
/// the output, the returned mean and biased variance, and the gradients of
/// `Σ output · r` with respect to the input, `gamma` and `beta`. The cases
/// cover a plane shorter than the kernels' 8-lane chunks, planes longer than
/// their 1024-element chunks, batch 1 and a channel whose mean is far from 0
/// (where a one-pass variance loses precision).
#[test]
fn batch_norm_train_forward_statistics_and_gradients_match_the_definition() {
    let device = Device::flex().autodiff();
    let eps = 1e-5;
    for (k, shape) in [[4, 16, 9, 7], [1, 3, 5, 5], [3, 5, 40, 33], [2, 2, 1, 3]]
        .into_iter()
        .enumerate()
    {
        let [n, c, h, w] = shape;
        let s = h * w;
        let len = n * c * s;
        // Channel ch has mean about 10·ch and spread about 1 + ch/2.
        let xv: Vec<f32> = values(len, 10 * k as u64 + 1)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = (i / s) % c;
                10.0 * ch as f32 + v * (2.0 + ch as f32)
            })
            .collect();
        let gv: Vec<f32> = values(c, 10 * k as u64 + 2)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let bv = values(c, 10 * k as u64 + 3);
        let rv = values(len, 10 * k as u64 + 4);

        let x = tensor(&xv, shape, &device).require_grad();
        let gamma = tensor(&gv, [c], &device).require_grad();
        let beta = tensor(&bv, [c], &device).require_grad();
        let out = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), eps);
        let loss = (out.output.clone() * tensor(&rv, shape, &device)).sum();
        let grads = loss.backward();

        // The definition, in f64.
        let at = |b: usize, ch: usize, p: usize| (b * c + ch) * s + p;
        let count = (n * s) as f64;
        let mut mean = vec![0f64; c];
        let mut var = vec![0f64; c];
        let mut fwd = vec![0f64; len];
        let mut dx = vec![0f64; len];
        let mut dgamma = vec![0f64; c];
        let mut dbeta = vec![0f64; c];
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|b| (0..s).map(move |p| at(b, ch, p)))
                .collect();
            mean[ch] = idx.iter().map(|&i| xv[i] as f64).sum::<f64>() / count;
            var[ch] = idx
                .iter()
                .map(|&i| (xv[i] as f64 - mean[ch]).powi(2))
                .sum::<f64>()
                / count;
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let xhat = |i: usize| (xv[i] as f64 - mean[ch]) * inv_std;
            for &i in &idx {
                fwd[i] = gv[ch] as f64 * xhat(i) + bv[ch] as f64;
                dbeta[ch] += rv[i] as f64;
                dgamma[ch] += rv[i] as f64 * xhat(i);
            }
            let (mean_r, mean_r_xhat) = (dbeta[ch] / count, dgamma[ch] / count);
            for &i in &idx {
                dx[i] = gv[ch] as f64 * inv_std * (rv[i] as f64 - mean_r - xhat(i) * mean_r_xhat);
            }
        }
        let what = |s: &str| format!("case {k} {shape:?}: {s}");
        assert_close(&what("output"), &to_vec(out.output), &fwd);
        assert_close(&what("mean"), &to_vec(out.mean), &mean);
        assert_close(&what("variance"), &to_vec(out.variance), &var);
        assert_close(
            &what("input gradient"),
            &to_vec(x.grad(&grads).unwrap()),
            &dx,
        );
        assert_close(
            &what("gamma gradient"),
            &to_vec(gamma.grad(&grads).unwrap()),
            &dgamma,
        );
        assert_close(
            &what("beta gradient"),
            &to_vec(beta.grad(&grads).unwrap()),
            &dbeta,
        );
    }
}

/// Batch normalisation with given statistics (inference, and what an exported
/// model folds into its convolutions).
#[test]
fn batch_norm_with_given_statistics_matches_the_definition() {
    let device = Device::flex();
    let shape = [2, 3, 4, 5];
    let xv = values(120, 31);
    let [gamma, beta, mean, var] = [
        [1.5f32, -0.5, 2.0],
        [0.1, 0.2, -0.3],
        [0.05, -0.1, 0.2],
        [0.5, 2.0, 0.01],
    ];
    let vector = |v: [f32; 3]| tensor(&v, [3], &device);
    let out = batch_norm(
        tensor(&xv, shape, &device),
        vector(gamma),
        vector(beta),
        vector(mean),
        vector(var),
        1e-3,
    );
    let want: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / 20) % 3;
            (v as f64 - mean[ch] as f64) / (var[ch] as f64 + 1e-3).sqrt() * gamma[ch] as f64
                + beta[ch] as f64
        })
        .collect();
    assert_close("batch_norm", &to_vec(out), &want);
}
